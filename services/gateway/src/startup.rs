//! Settings and application wiring.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::events::PAYMENT_REQUESTED_SCHEMA;
use paystream_core::kafka;
use paystream_core::shutdown::Shutdown;
use rdkafka::producer::{FutureProducer, Producer};
use serde::Deserialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::trace::TraceLayer;
use tracing_opentelemetry_span::server_span;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, ApiKeys, AuthSettings};
use crate::idempotency::Purger;
use crate::outbox::OutboxRelay;
use crate::problem::ApiError;
use crate::rate_limit::{self, RateLimitSettings, RateLimiter};
use crate::routes;

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8080
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    #[serde(default)]
    pub topics: TopicSettings,
    /// Bearer token of the admin endpoints (`PAYSTREAM_ADMIN_TOKEN`); unset: they refuse all.
    #[serde(default)]
    pub admin_token: Option<secrecy::SecretString>,
}

impl Settings {
    pub fn load() -> anyhow::Result<Self> {
        paystream_core::config::load(DEFAULTS)
    }

    /// [`Self::load`] with the keys no setting reads (`--check-config`).
    pub fn load_checked() -> anyhow::Result<paystream_core::config::Loaded<Self>> {
        paystream_core::config::load_checked(DEFAULTS)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// How long an Idempotency-Key is remembered (the published retention).
    pub idempotency_retention_hours: i64,
    /// How often expired idempotency keys are deleted.
    pub idempotency_purge_interval_secs: u64,
    pub max_amount_minor: i64,
    pub max_body_bytes: usize,
    /// A request not answered within this time gets 503 and stores nothing.
    pub request_timeout_ms: u64,
    /// Run the outbox relay in this process (replicas may leave it to others).
    pub outbox_relay_enabled: bool,
    /// The relay also polls, so rows committed by another replica (or before a crash) go out.
    pub outbox_poll_interval_ms: u64,
    pub outbox_batch_size: i64,
    /// Bound on how long the broker may take to acknowledge a produced record.
    pub produce_timeout_ms: u64,
    /// How long shutdown waits for the producer to deliver what it still holds.
    pub shutdown_flush_timeout_ms: u64,
    /// Run the migrations at start-up (the local stack migrates with `paystream migrate`).
    pub migrate_on_start: bool,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            idempotency_retention_hours: 24,
            idempotency_purge_interval_secs: 300,
            max_amount_minor: 100_000_000,
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            outbox_relay_enabled: true,
            outbox_poll_interval_ms: 250,
            outbox_batch_size: 200,
            produce_timeout_ms: 10_000,
            shutdown_flush_timeout_ms: 5_000,
            migrate_on_start: false,
            auth: AuthSettings::default(),
            rate_limit: RateLimitSettings::default(),
        }
    }
}

impl GatewaySettings {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=i64::from(i32::MAX)).contains(&self.idempotency_retention_hours),
            "gateway.idempotency_retention_hours must be positive"
        );
        anyhow::ensure!(
            self.max_amount_minor > 0,
            "gateway.max_amount_minor must be positive"
        );
        anyhow::ensure!(
            self.outbox_batch_size > 0,
            "gateway.outbox_batch_size must be positive"
        );
        anyhow::ensure!(
            self.request_timeout_ms > 0 && self.idempotency_purge_interval_secs > 0,
            "gateway.request_timeout_ms and idempotency_purge_interval_secs must be positive"
        );
        Ok(())
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub producer: FutureProducer,
    pub outbox_wakeup: Arc<Notify>,
    pub http: reqwest::Client,
    pub api_keys: Arc<ApiKeys>,
    pub rate_limiter: Arc<RateLimiter>,
    /// The OpenAPI document, serialised once.
    pub openapi: Bytes,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    relay: Option<OutboxRelay>,
    purger: Purger,
    producer: FutureProducer,
    flush_timeout: Duration,
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.gateway.check()?;
        crate::metrics::install()?;
        let api_keys = Arc::new(ApiKeys::from_settings(&settings.gateway.auth)?);
        let rate_limiter = Arc::new(RateLimiter::new(&settings.gateway.rate_limit)?);
        let pool = paystream_core::db::connect(&settings.database).await?;
        if settings.gateway.migrate_on_start {
            paystream_core::db::migrate(&pool).await?;
        }
        kafka::verify_connection(&settings.kafka).await?;
        if !settings.kafka.provisioning.create_topics {
            kafka::require_topics(
                &settings.kafka,
                std::slice::from_ref(&settings.topics.payments_requested),
            )
            .await?;
        }
        let timeout = settings.gateway.produce_timeout_ms.to_string();
        let mut props = kafka::IDEMPOTENT_PRODUCER.to_vec();
        props.push(("message.timeout.ms", &timeout));
        let producer: FutureProducer = kafka::client_config(&settings.kafka, &props)?
            .create()
            .context("creating the Kafka producer")?;
        let codec = Arc::new(AvroCodec::new(&settings.schema_registry.url));
        // Fail fast when the registry rejects our schema; a transient error is retried by
        // the relay, so the gateway still accepts payments while the registry is down.
        if let Err(e) = codec
            .register(
                &settings.topics.payments_requested,
                &PAYMENT_REQUESTED_SCHEMA,
            )
            .await
        {
            anyhow::ensure!(
                e.is_transient(),
                "schema registry rejected PaymentRequested: {e}"
            );
            tracing::warn!(error = %e, "schema registry unavailable at start-up");
        }

        let outbox_wakeup = Arc::new(Notify::new());
        let settings = Arc::new(settings);
        let relay = settings.gateway.outbox_relay_enabled.then(|| {
            OutboxRelay::new(
                pool.clone(),
                producer.clone(),
                codec,
                outbox_wakeup.clone(),
                Duration::from_millis(settings.gateway.outbox_poll_interval_ms),
                settings.gateway.outbox_batch_size,
            )
        });
        let purger = Purger {
            pool: pool.clone(),
            interval: Duration::from_secs(settings.gateway.idempotency_purge_interval_secs),
        };
        let (api, admin, openapi) = api_router(&settings);
        let state = AppState {
            pool,
            settings: settings.clone(),
            producer: producer.clone(),
            outbox_wakeup,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building the HTTP client")?,
            api_keys,
            rate_limiter,
            openapi: Bytes::from(
                openapi
                    .to_json()
                    .context("rendering the OpenAPI document")?,
            ),
        };
        let request_timeout = Duration::from_millis(settings.gateway.request_timeout_ms);
        let router = api
            .fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            // Innermost first: rate limiting needs the client that authentication found.
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                rate_limit::limit,
            ))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            ))
            // Merged after the client layers: the admin API authenticates with its own token.
            .merge(admin)
            .layer(middleware::from_fn_with_state(request_timeout, time_limit))
            // The handler reads the body itself and enforces the limit with a problem answer.
            .layer(DefaultBodyLimit::disable())
            .layer(TraceLayer::new_for_http().make_span_with(server_span))
            .layer(middleware::from_fn(crate::metrics::track))
            .merge(operations_router())
            .with_state(state);

        let listener = TcpListener::bind(settings.http.address())
            .await
            .with_context(|| format!("binding {}", settings.http.address()))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            router,
            relay,
            purger,
            producer,
            flush_timeout: Duration::from_millis(settings.gateway.shutdown_flush_timeout_ms),
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`; then stops accepting connections, finishes the requests in
    /// flight, lets the outbox relay make its last pass and flushes the producer.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "gateway listening");
        // The relay stops only after the last request committed, so its final pass publishes
        // the payments accepted during shutdown too.
        let background = Shutdown::new();
        let relay = self
            .relay
            .map(|relay| tokio::spawn(relay.run(background.clone())));
        let purger = tokio::spawn(self.purger.run(background.clone()));
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("serving HTTP");
        // Also when serving failed: the background tasks must stop and drain either way.
        background.cancel();
        if let Some(relay) = relay {
            relay.await.context("outbox relay panicked")?;
        }
        purger.await.context("idempotency purger panicked")?;
        let producer = self.producer;
        let flush_timeout = self.flush_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(flush_timeout))
            .await
            .context("producer flush panicked")?;
        if let Err(e) = flushed {
            // Unflushed records belong to rows not marked published: the next start sends them.
            tracing::warn!(error = %e, "producer not flushed at shutdown");
        }
        tracing::info!("gateway stopped");
        served
    }
}

/// The documented API: every route registers its OpenAPI path as it is added, so the
/// document cannot miss a route.
/// Returns the client API (authenticated and rate-limited by the caller's layers), the admin
/// API (its own bearer token, checked by each handler) and the document of both.
fn api_router(
    settings: &Settings,
) -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(routes::ApiDoc::openapi())
        .routes(routes!(routes::payments::create))
        .routes(routes!(routes::payments::get))
        .routes(routes!(routes::analytics::merchant_stats))
        .split_for_parts();
    let (admin, admin_doc) = OpenApiRouter::new()
        .routes(routes!(routes::merchants::get, routes::merchants::put))
        .routes(routes!(routes::merchants::rotate_secret))
        .split_for_parts();
    openapi.merge(admin_doc);
    let (_, operations) = operations_api().split_for_parts();
    openapi.merge(operations);
    if let Some(description) = openapi.info.description.as_mut() {
        description.push_str(&format!(
            "\n\n**Retention.** This gateway remembers an Idempotency-Key for {} hours after its \
             first response; expired keys are purged every {} s and a reused expired key starts \
             a new request.",
            settings.gateway.idempotency_retention_hours,
            settings.gateway.idempotency_purge_interval_secs
        ));
    }
    (router, admin, openapi)
}

/// Health, metrics and the document itself: no authentication, rate limit or timeout.
fn operations_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::health::live))
        .routes(routes!(routes::health::ready))
        .routes(routes!(crate::metrics::render))
        .routes(routes!(routes::openapi))
}

fn operations_router() -> Router<AppState> {
    let (router, _) = operations_api().split_for_parts();
    router.layer(middleware::from_fn(crate::metrics::track))
}

/// Answers 503 when the handler takes longer than `limit`. Dropping the handler's future rolls
/// its transaction back, so nothing is stored and a retry with the same key is safe.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

mod tracing_opentelemetry_span {
    use axum::http::Request;
    use opentelemetry::propagation::Extractor;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    /// The HTTP server span, continuing the client's W3C trace context when it sent one.
    pub fn server_span<B>(request: &Request<B>) -> tracing::Span {
        let route = request.uri().path().to_string();
        let span = tracing::info_span!(
            "request",
            otel.name = %format!("{} {}", request.method(), route),
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = %route,
            payment.id = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_settings_come_from_the_environment() {
        // Env is process-global: only this test of the crate sets PAYSTREAM_* variables.
        let hash = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
        let vars = [
            ("PAYSTREAM_GATEWAY__AUTH__ENABLED", "true"),
            ("PAYSTREAM_GATEWAY__AUTH__API_KEYS__ACME", hash),
            ("PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND", "50"),
            ("PAYSTREAM_GATEWAY__RATE_LIMIT__BURST", "7"),
            ("PAYSTREAM_GATEWAY__REQUEST_TIMEOUT_MS", "1500"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let settings = Settings::load();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let gateway = settings.unwrap().gateway;
        assert!(gateway.auth.enabled);
        assert_eq!(gateway.auth.api_keys["acme"], hash);
        assert_eq!(gateway.rate_limit.requests_per_second, 50.0);
        assert_eq!(gateway.rate_limit.burst, 7);
        assert_eq!(gateway.request_timeout_ms, 1500);
        assert_eq!(gateway.idempotency_retention_hours, 24);
        assert!(ApiKeys::from_settings(&gateway.auth).is_ok());
        gateway.check().unwrap();
    }
}
