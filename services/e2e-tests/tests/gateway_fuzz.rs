//! Property test: no request body or header value makes the gateway answer 5xx or panic, and
//! every refusal is problem+json. Runs against the in-process gateway on the real Postgres.

use std::collections::BTreeMap;
use std::sync::Mutex;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use paystream_e2e_tests::{content_type, require_api_keys, TestStack};

const CASES: u32 = 2000;
const API_KEY: &str = "fuzz-secret";
const FIELDS: &[&str] = &[
    "merchant_id",
    "amount_minor",
    "currency",
    "customer_id",
    "payment_method",
];

fn valid_body() -> Value {
    json!({"merchant_id": "m_fuzz", "amount_minor": 1999, "currency": "EUR",
           "customer_id": "c_fuzz", "payment_method": "card"})
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[A-Z]{3}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        prop::sample::select(FIELDS).prop_map(str::to_string),
        any::<String>()
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies from plausible to hostile.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // A valid body with one field replaced, removed, or one field added.
        (prop::sample::select(FIELDS), any_json()).prop_map(|(field, value)| {
            let mut body = valid_body();
            body[field] = value;
            body.to_string().into_bytes()
        }),
        prop::sample::select(FIELDS).prop_map(|field| {
            let mut body = valid_body();
            body.as_object_mut().unwrap().remove(field);
            body.to_string().into_bytes()
        }),
        (any::<String>(), any_json()).prop_map(|(field, value)| {
            let mut body = valid_body();
            body[field] = value;
            body.to_string().into_bytes()
        }),
        // Arbitrary JSON, arbitrary bytes, and a valid body cut or corrupted at any point.
        any_json().prop_map(|v| v.to_string().into_bytes()),
        vec(any::<u8>(), 0..512),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| {
            let mut bytes = valid_body().to_string().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes
        }),
        any::<prop::sample::Index>().prop_map(|at| {
            let bytes = valid_body().to_string().into_bytes();
            bytes[..at.index(bytes.len())].to_vec()
        }),
        Just(valid_body().to_string().into_bytes()),
        // A valid body for a merchant the client is not bound to (403).
        "m_[a-z0-9]{1,8}".prop_map(|merchant| {
            let mut body = valid_body();
            body["merchant_id"] = merchant.into();
            body.to_string().into_bytes()
        }),
    ]
}

/// Bytes a header value may carry on the wire (visible ASCII, space, tab and obs-text).
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            8 => 0x21u8..0x7f,
            1 => Just(b' '),
            1 => Just(b'\t'),
            1 => Just(b'"'),
            1 => Just(b'\\'),
            1 => 0x80u8..=0xff,
        ],
        0..max,
    )
}

/// Mostly the valid key (so most cases reach the handler), else anything.
fn authorization() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => Just(format!("Bearer {API_KEY}").into_bytes()),
        1 => header_bytes(80),
        1 => header_bytes(40).prop_map(|token| [b"Bearer ".as_slice(), &token].concat()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let key = prop_oneof![
        header_bytes(300),
        "[a-z0-9-]{1,40}".prop_map(|k| format!("\"{k}\"").into_bytes()),
        "[a-z0-9-]{1,40}".prop_map(String::into_bytes),
    ];
    let content_type = prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"application/json; charset=utf-8".to_vec()),
        Just(b"application/merge-patch+json".to_vec()),
        Just(b"text/plain".to_vec()),
        header_bytes(60),
    ];
    (
        prop::option::weighted(0.9, key),
        prop::option::weighted(0.9, content_type),
        prop::option::weighted(0.95, authorization()),
    )
        .prop_map(|(key, content_type, auth)| {
            let mut h = Vec::new();
            h.extend(key.map(|v| ("idempotency-key", v)));
            h.extend(content_type.map(|v| ("content-type", v)));
            h.extend(auth.map(|v| ("authorization", v)));
            h
        })
}

#[derive(Debug, Clone)]
enum Probe {
    Post(Vec<u8>, Vec<(&'static str, Vec<u8>)>),
    Get(String),
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        9 => (body(), headers()).prop_map(|(b, h)| Probe::Post(b, h)),
        1 => "([A-Za-z0-9._~-]|%[0-9A-Fa-f]{2}){0,80}".prop_map(Probe::Get),
    ]
}

async fn check(stack: &TestStack, probe: &Probe) -> Result<Option<u16>, TestCaseError> {
    let request = match probe {
        Probe::Post(body, headers) => {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                // reqwest cannot send what is not a header value at all (e.g. trailing spaces
                // are still fine, control characters are not).
                let Ok(value) = HeaderValue::from_bytes(value) else {
                    return Ok(None);
                };
                map.insert(HeaderName::from_static(name), value);
            }
            stack
                .http
                .post(format!("{}/v1/payments", stack.gateway_url))
                .headers(map)
                .body(body.clone())
        }
        Probe::Get(id) => stack
            .http
            .get(format!("{}/v1/payments/{id}", stack.gateway_url))
            .bearer_auth(API_KEY),
    };
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no response (did the gateway panic?): {e}")))?;
    let status = response.status();
    let content_type = content_type(&response);
    let text = response.text().await.unwrap_or_default();
    prop_assert!(status.as_u16() < 500, "{status} for {probe:?}: {text}");
    if status.is_client_error() {
        prop_assert_eq!(&content_type, "application/problem+json", "{}", text);
        let problem: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("problem is not JSON: {e}: {text}")))?;
        prop_assert!(problem["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://paystream.dev/problems/")));
        prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status.as_u16())));
    }
    Ok(Some(status.as_u16()))
}

#[test]
fn no_body_or_header_makes_the_gateway_fail() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Authentication on, so the Authorization header is parsed too; no rate limit, so every
    // authenticated case reaches the handler.
    let stack = runtime.block_on(TestStack::spawn_with(|s| {
        s.gateway.rate_limit.requests_per_second = 0.0;
        require_api_keys(s, &[("fuzzer", API_KEY)]);
    }))?;
    // The valid body's merchant; a mutated merchant id is 422 or, when valid, 403.
    runtime.block_on(stack.bind_client("fuzzer", &["m_fuzz"]))?;
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = Mutex::new(BTreeMap::<u16, u32>::new());
    let result = runner.run(&probe(), |probe| {
        if let Some(status) = runtime.block_on(check(&stack, &probe))? {
            *statuses.lock().unwrap().entry(status).or_default() += 1;
        }
        Ok(())
    });
    runtime.block_on(stack.teardown());
    result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let statuses = statuses.into_inner().unwrap();
    let sent: u32 = statuses.values().sum();
    let class = |range: std::ops::Range<u16>| -> u32 {
        statuses
            .iter()
            .filter(|(s, _)| range.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    // Cases reqwest cannot send (a header value with control characters) are tried but not sent.
    eprintln!(
        "{CASES} cases tried, {sent} sent ({} not sendable as HTTP): {} accepted (2xx), {} refused \
         with problem+json (4xx), {} 5xx; statuses: {statuses:?}",
        CASES - sent,
        class(200..300),
        class(400..500),
        class(500..600),
    );
    // The generators reach both the accepting path and the refusals.
    anyhow::ensure!(statuses.contains_key(&202), "no case was accepted");
    anyhow::ensure!(
        statuses.contains_key(&403),
        "no case reached the merchant check"
    );
    anyhow::ensure!(
        statuses.keys().filter(|s| **s >= 400).count() >= 4,
        "too few kinds of refusal"
    );
    Ok(())
}
