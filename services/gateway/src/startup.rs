//! Settings and application wiring.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use paystream_core::events::PAYMENT_REQUESTED_SCHEMA;
use paystream_core::kafka;
use paystream_core::shutdown::Shutdown;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::trace::TraceLayer;
use tracing_opentelemetry_span::server_span;

use crate::outbox::OutboxRelay;
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// How long an Idempotency-Key is remembered (the published retention).
    pub idempotency_retention_hours: i64,
    pub max_amount_minor: i64,
    pub max_body_bytes: usize,
    /// The relay also polls, so rows committed by another replica (or before a crash) go out.
    pub outbox_poll_interval_ms: u64,
    pub outbox_batch_size: i64,
    /// Bound on how long the broker may take to acknowledge a produced record.
    pub produce_timeout_ms: u64,
    /// Run the migrations at start-up (the local stack migrates with `paystream migrate`).
    pub migrate_on_start: bool,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            idempotency_retention_hours: 24,
            max_amount_minor: 100_000_000,
            max_body_bytes: 64 * 1024,
            outbox_poll_interval_ms: 250,
            outbox_batch_size: 200,
            produce_timeout_ms: 10_000,
            migrate_on_start: false,
        }
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
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    relay: OutboxRelay,
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = paystream_core::db::connect(&settings.database).await?;
        if settings.gateway.migrate_on_start {
            paystream_core::db::migrate(&pool).await?;
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
        let relay = OutboxRelay::new(
            pool.clone(),
            producer.clone(),
            codec,
            outbox_wakeup.clone(),
            Duration::from_millis(settings.gateway.outbox_poll_interval_ms),
            settings.gateway.outbox_batch_size,
        );
        let state = AppState {
            pool,
            settings: settings.clone(),
            producer,
            outbox_wakeup,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building the HTTP client")?,
        };
        let router = Router::new()
            .route("/v1/payments", post(routes::payments::create))
            .route("/v1/payments/{id}", get(routes::payments::get))
            .route(
                "/v1/merchants/{id}",
                get(routes::merchants::get).put(routes::merchants::put),
            )
            .route(
                "/v1/merchants/{id}/rotate-secret",
                post(routes::merchants::rotate_secret),
            )
            .route(
                "/v1/analytics/merchants/{id}/stats",
                get(routes::analytics::merchant_stats),
            )
            .route("/health/live", get(routes::health::live))
            .route("/health/ready", get(routes::health::ready))
            .fallback(routes::not_found)
            // The handler reads the body itself and enforces the limit with a problem answer.
            .layer(DefaultBodyLimit::disable())
            .layer(TraceLayer::new_for_http().make_span_with(server_span))
            .with_state(state);

        let listener = TcpListener::bind(settings.http.address())
            .await
            .with_context(|| format!("binding {}", settings.http.address()))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            router,
            relay,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`, then drains in-flight requests and the outbox relay.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "gateway listening");
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("serving HTTP")?;
        shutdown.cancel();
        relay.await.context("outbox relay panicked")?;
        Ok(())
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
