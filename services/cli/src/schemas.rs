//! `paystream schemas check | register`: governance of the event contracts in `schemas/`.
//!
//! Each `<topic>.avsc` is the value schema of `<topic>` (subject `<topic>-value`,
//! TopicNameStrategy). `check` is read-only: every record must carry a `doc`, every field too,
//! the subject's level on the registry must be the declared one, and the registry must judge
//! the schema compatible with the subject's versions (the same check a registration runs).
//! `register` sets the declared level on each subject, runs the same checks for all schemas,
//! and registers them only if every one passed, so an incompatible edit changes nothing.
//!
//! The registry is any Confluent-compatible one, driven over its REST API.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

/// The contracts compiled into the binary (`schemas/*.avsc` at build time), for hosts without
/// the source tree, such as the Helm chart's install hook.
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/embedded_schemas.rs"));

/// Confluent's levels; the CLI refuses anything else before talking to the registry.
pub const LEVELS: [&str; 7] = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
];

/// The level paystream's subjects are kept at: records of any version may be read by
/// consumers of any version, since topics (and dead-letter queues, which are replayed) retain
/// old records and consumers upgrade after producers or before them.
pub const DEFAULT_LEVEL: &str = "FULL_TRANSITIVE";

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// One schema file and the subject it governs.
#[derive(Debug, Clone)]
pub struct Contract {
    pub file: String,
    pub subject: String,
    pub schema: String,
}

/// Where the contracts come from and how topics are named.
pub struct Options<'a> {
    pub registry_url: &'a str,
    /// `None`: the contracts compiled into the binary.
    pub dir: Option<&'a Path>,
    pub level: &'a str,
    /// (shipped topic name, topic name in use): the file `payments.requested.v1.avsc` feeds
    /// the subject of whatever topic replaces `payments.requested.v1`.
    pub topic_overrides: &'a [(&'a str, &'a str)],
}

/// `paystream schemas check`.
pub async fn check(options: &Options<'_>) -> anyhow::Result<()> {
    let contracts = load(options)?;
    let registry = Registry::new(options.registry_url)?;
    let failures = check_all(&registry, &contracts, options.level, true).await?;
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} schemas failed the check",
        contracts.len()
    );
    Ok(())
}

/// `paystream schemas register`.
pub async fn register(options: &Options<'_>) -> anyhow::Result<()> {
    let contracts = load(options)?;
    let registry = Registry::new(options.registry_url)?;
    for contract in &contracts {
        registry
            .set_level(&contract.subject, options.level)
            .await
            .with_context(|| format!("setting the level of {}", contract.subject))?;
    }
    let failures = check_all(&registry, &contracts, options.level, false).await?;
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} schemas failed the check; nothing was registered",
        contracts.len()
    );
    for contract in &contracts {
        let (id, version) = registry
            .register(&contract.subject, &contract.schema)
            .await
            .with_context(|| format!("registering {}", contract.file))?;
        println!(
            "registered {} → schema id {id}, version {version}",
            contract.subject
        );
    }
    Ok(())
}

/// Checks every contract: one line per passing contract on stdout, one block per failing one
/// on stderr (so scripts that silence stdout still show why); returns the failures.
async fn check_all(
    registry: &Registry,
    contracts: &[Contract],
    level: &str,
    level_must_match: bool,
) -> anyhow::Result<usize> {
    let mut failures = 0;
    for contract in contracts {
        let problems = check_one(registry, contract, level, level_must_match)
            .await
            .with_context(|| format!("checking {}", contract.file))?;
        match problems {
            Verdict::Ok(note) => {
                println!("ok    {} ({}): {note}", contract.subject, contract.file);
            }
            Verdict::Failed(problems) => {
                failures += 1;
                let mut block = format!("FAIL  {} ({}):\n", contract.subject, contract.file);
                for p in problems {
                    let _ = writeln!(block, "      - {p}");
                }
                eprint!("{block}");
            }
        }
    }
    Ok(failures)
}

enum Verdict {
    Ok(String),
    Failed(Vec<String>),
}

async fn check_one(
    registry: &Registry,
    contract: &Contract,
    level: &str,
    level_must_match: bool,
) -> anyhow::Result<Verdict> {
    let mut problems = missing_docs(&contract.schema)?;
    let subject = &contract.subject;
    let own_level = registry.subject_level(subject).await?;
    if level_must_match {
        if let Some(own) = own_level.as_deref().filter(|own| *own != level) {
            problems.push(format!(
                "the registry keeps this subject at {own}, the contracts declare {level} \
                 (`paystream schemas register` sets it)"
            ));
        }
    }
    if let Some((version, id)) = registry.lookup(subject, &contract.schema).await? {
        return Ok(verdict(
            problems,
            format!("registered as version {version}, id {id}"),
        ));
    }
    let messages = registry
        .incompatibilities(subject, &contract.schema)
        .await?;
    if !messages.is_empty() {
        let effective = registry.effective_level(subject).await?;
        problems.push(format!("incompatible under {effective}:"));
        problems.extend(messages.into_iter().map(|m| format!("  {m}")));
    }
    let note = match own_level {
        Some(_) => "compatible, new version".to_string(),
        None => format!("new subject or no level yet; `register` sets {level}"),
    };
    Ok(verdict(problems, note))
}

fn verdict(problems: Vec<String>, note: String) -> Verdict {
    if problems.is_empty() {
        Verdict::Ok(note)
    } else {
        Verdict::Failed(problems)
    }
}

/// The contracts of `options`, sorted by file name.
pub fn load(options: &Options<'_>) -> anyhow::Result<Vec<Contract>> {
    let mut files: Vec<(String, String)> = match options.dir {
        None => EMBEDDED
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect(),
        Some(dir) => read_dir(dir)?,
    };
    anyhow::ensure!(!files.is_empty(), "no .avsc files found");
    files.sort();
    Ok(files
        .into_iter()
        .map(|(file, schema)| {
            let shipped = file.trim_end_matches(".avsc");
            let topic = options
                .topic_overrides
                .iter()
                .find(|(from, _)| *from == shipped)
                .map_or(shipped, |(_, to)| *to);
            Contract {
                subject: format!("{topic}-value"),
                file,
                schema,
            }
        })
        .collect())
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path: PathBuf = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("avsc") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("file name of {}", path.display()))?
            .to_string();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        files.push((name, text));
    }
    Ok(files)
}

/// Every record, and every field of a record, must say what it is: the `.avsc` files are the
/// contracts other teams read.
pub fn missing_docs(schema: &str) -> anyhow::Result<Vec<String>> {
    let json: Value = serde_json::from_str(schema).context("the schema is not JSON")?;
    let mut missing = Vec::new();
    walk_docs(&json, &mut missing);
    Ok(missing)
}

fn walk_docs(value: &Value, missing: &mut Vec<String>) {
    match value {
        Value::Array(branches) => branches.iter().for_each(|b| walk_docs(b, missing)),
        Value::Object(map) => {
            let has_doc = |m: &serde_json::Map<String, Value>| {
                m.get("doc")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty())
            };
            let kind = map.get("type").and_then(Value::as_str);
            if kind == Some("record") {
                let name = map.get("name").and_then(Value::as_str).unwrap_or("?");
                if !has_doc(map) {
                    missing.push(format!("record {name} has no doc"));
                }
                for field in map
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(field) = field.as_object() {
                        if !has_doc(field) {
                            let f = field.get("name").and_then(Value::as_str).unwrap_or("?");
                            missing.push(format!("field {name}.{f} has no doc"));
                        }
                        if let Some(t) = field.get("type") {
                            walk_docs(t, missing);
                        }
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(inner) = map.get(key) {
                    walk_docs(inner, missing);
                }
            }
            if kind.is_none() {
                if let Some(inner) = map.get("type") {
                    walk_docs(inner, missing);
                }
            }
        }
        _ => {}
    }
}

/// A minimal Confluent Schema Registry REST client for the calls above.
struct Registry {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct RegistryError {
    error_code: i64,
    message: String,
}

#[derive(Deserialize)]
struct VersionBody {
    version: i32,
    id: i32,
}

impl Registry {
    fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; `Ok(Err(..))` is the registry's own error answer.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<Result<Value, RegistryError>> {
        let response = request
            .header("accept", CONTENT_TYPE)
            .send()
            .await
            .with_context(|| format!("reaching the schema registry at {}", self.base))?;
        let status = response.status();
        let text = response.text().await.context("reading the response")?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map(Ok)
                .with_context(|| format!("unexpected registry answer: {text}"));
        }
        match serde_json::from_str::<RegistryError>(&text) {
            Ok(error) => Ok(Err(error)),
            Err(_) => anyhow::bail!("schema registry answered {status}: {text}"),
        }
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string())
    }

    async fn set_level(&self, subject: &str, level: &str) -> anyhow::Result<()> {
        let request = self
            .http
            .put(self.url(&format!("/config/{}", encode(subject))))
            .header("content-type", CONTENT_TYPE)
            .body(json!({ "compatibility": level }).to_string());
        self.send(request).await?.map_err(into_anyhow)?;
        Ok(())
    }

    /// The subject's own level; `None` when it has none (Confluent's 40408, or 40401).
    async fn subject_level(&self, subject: &str) -> anyhow::Result<Option<String>> {
        let request = self
            .http
            .get(self.url(&format!("/config/{}", encode(subject))));
        match self.send(request).await? {
            Ok(body) => Ok(body["compatibilityLevel"].as_str().map(str::to_string)),
            Err(e) if matches!(e.error_code, 40401 | 40408) => Ok(None),
            Err(e) => Err(into_anyhow(e)),
        }
    }

    /// The level a registration under `subject` faces.
    async fn effective_level(&self, subject: &str) -> anyhow::Result<String> {
        let request = self
            .http
            .get(self.url(&format!("/config/{}?defaultToGlobal=true", encode(subject))));
        let body = self.send(request).await?.map_err(into_anyhow)?;
        Ok(body["compatibilityLevel"]
            .as_str()
            .unwrap_or("unknown")
            .to_string())
    }

    /// (version, id) if `schema` is registered under `subject`.
    async fn lookup(&self, subject: &str, schema: &str) -> anyhow::Result<Option<(i32, i32)>> {
        let request = self.post(
            &format!("/subjects/{}", encode(subject)),
            &json!({ "schema": schema }),
        );
        match self.send(request).await? {
            Ok(body) => {
                let found: VersionBody =
                    serde_json::from_value(body).context("unexpected lookup answer")?;
                Ok(Some((found.version, found.id)))
            }
            Err(e) if matches!(e.error_code, 40401 | 40403) => Ok(None),
            Err(e) => Err(into_anyhow(e)),
        }
    }

    /// The registry's reasons the schema cannot be registered (empty: it can).
    async fn incompatibilities(&self, subject: &str, schema: &str) -> anyhow::Result<Vec<String>> {
        let request = self.post(
            &format!(
                "/compatibility/subjects/{}/versions?verbose=true",
                encode(subject)
            ),
            &json!({ "schema": schema }),
        );
        let body = self.send(request).await?.map_err(into_anyhow)?;
        if body["is_compatible"].as_bool() == Some(true) {
            return Ok(Vec::new());
        }
        let messages: Vec<String> = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
            .collect();
        Ok(if messages.is_empty() {
            vec!["the registry reports the schema incompatible".into()]
        } else {
            messages
        })
    }

    /// Registers and returns (id, version).
    async fn register(&self, subject: &str, schema: &str) -> anyhow::Result<(i32, i32)> {
        let body = json!({ "schema": schema });
        let request = self.post(&format!("/subjects/{}/versions", encode(subject)), &body);
        let id = self.send(request).await?.map_err(into_anyhow)?["id"]
            .as_i64()
            .context("the registry answered without an id")?;
        let version = self
            .lookup(subject, schema)
            .await?
            .map_or(0, |(version, _)| version);
        Ok((
            i32::try_from(id).context("schema id out of range")?,
            version,
        ))
    }
}

fn into_anyhow(e: RegistryError) -> anyhow::Error {
    anyhow::anyhow!("schema registry error {}: {}", e.error_code, e.message)
}

/// Percent-encodes a subject for a URL path segment.
fn encode(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for byte in subject.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_contracts_are_embedded_and_documented() {
        let contracts = load(&Options {
            registry_url: "http://unused",
            dir: None,
            level: DEFAULT_LEVEL,
            topic_overrides: &[("payments.requested.v1", "custom.requested")],
        })
        .unwrap();
        let subjects: Vec<&str> = contracts.iter().map(|c| c.subject.as_str()).collect();
        assert!(subjects.contains(&"custom.requested-value"), "{subjects:?}");
        assert!(
            subjects.contains(&"payments.outcomes.v1-value"),
            "{subjects:?}"
        );
        for c in &contracts {
            assert_eq!(
                missing_docs(&c.schema).unwrap(),
                Vec::<String>::new(),
                "{}",
                c.file
            );
        }
    }

    #[test]
    fn undocumented_records_and_fields_are_reported() {
        let schema = r#"{"type":"record","name":"A","fields":[
            {"name":"x","type":"int","doc":"ok"},
            {"name":"y","type":{"type":"array","items":{"type":"record","name":"B","doc":"b",
              "fields":[{"name":"z","type":"int"}]}},"doc":" "},
            {"name":"u","doc":"u","type":["null",{"type":"record","name":"C","fields":[]}]}]}"#;
        assert_eq!(
            missing_docs(schema).unwrap(),
            vec![
                "record A has no doc",
                "field A.y has no doc",
                "field B.z has no doc",
                "record C has no doc",
            ]
        );
        assert!(missing_docs("{not json").is_err());
    }

    #[test]
    fn subjects_are_percent_encoded() {
        assert_eq!(
            encode("payments.requested.v1-value"),
            "payments.requested.v1-value"
        );
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
