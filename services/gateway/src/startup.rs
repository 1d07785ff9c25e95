//! Application wiring: the router with its layers, the background tasks, serving and
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use paystream_core::avro::AvroCodec;
use paystream_core::config::DatabaseSettings;
use paystream_core::events::PAYMENT_REQUESTED_SCHEMA;
use paystream_core::kafka;
use paystream_core::retention::Pruner;
use paystream_core::shutdown::Shutdown;
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use tracing_opentelemetry_span::server_span;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, ApiKeys};
use crate::idempotency::Purger;
use crate::outbox::{Announcer, Listener, OutboxRelay, Wakeup};
use crate::problem::{ApiError, Deadline};
use crate::rate_limit::{self, RateLimiter};
use crate::routes;
use crate::settings::Settings;
use crate::state::AppState;

pub struct Application {
    listener: TcpListener,
    router: Router,
    relay: Option<OutboxRelay>,
    outbox_listener: Option<Listener>,
    announcer: Announcer,
    purger: Purger,
    pruner: Pruner,
    producer: FutureProducer,
    flush_timeout: Duration,
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.check()?;
        let secrets = paystream_core::secrets::SecretBox::from_settings(&settings.secrets)?;
        crate::metrics::install()?;
        let api_keys = Arc::new(ApiKeys::from_settings(&settings.gateway.auth)?);
        let rate_limiter = Arc::new(RateLimiter::new(&settings.gateway.rate_limit)?);
        let address_limiter = Arc::new(RateLimiter::per_ip(&settings.gateway.rate_limit)?);
        let pool = connect(&settings.database).await?;
        if settings.gateway.migrate_on_start {
            paystream_core::db::migrate(&pool).await?;
        }
        routes::merchants::seal_plaintext_secrets(&pool, &secrets).await?;
        if settings.kafka.provisioning.create_topics {
            kafka::verify_connection(&settings.kafka).await?;
        } else {
            // Reads the metadata too: a security failure stops start-up here just the same.
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

        let outbox_wakeup = Arc::new(Wakeup::default());
        let channel = crate::outbox::channel(&pool).await?;
        let instance = uuid::Uuid::new_v4().to_string();
        let announcer = Announcer {
            pool: pool.clone(),
            channel: channel.clone(),
            instance: instance.clone(),
            wakeup: outbox_wakeup.clone(),
        };
        let outbox_listener = settings.gateway.outbox_relay_enabled.then(|| Listener {
            pool: pool.clone(),
            channel,
            instance,
            wakeup: outbox_wakeup.clone(),
        });
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
        let pruner = Pruner::new(
            pool.clone(),
            &settings.retention,
            vec![crate::outbox::retention_rule(&settings.retention)],
        )?;
        let (api, admin, openapi) = api_router(&settings);
        let state = AppState {
            pool,
            settings: settings.clone(),
            producer: producer.clone(),
            outbox_wakeup,
            secrets,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building the HTTP client")?,
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
            // Innermost first: the per-client limit needs the client that authentication found.
            .route_layer(middleware::from_fn_with_state(
                rate_limiter,
                rate_limit::limit_client,
            ))
            .route_layer(middleware::from_fn_with_state(api_keys, auth::authenticate))
            // Merged after the client layers: the admin API authenticates with its own token.
            .merge(admin)
            // Before any authentication (client and admin), so failed logins count too.
            .layer(middleware::from_fn_with_state(
                address_limiter,
                rate_limit::limit_address,
            ))
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
            outbox_listener,
            announcer,
            purger,
            pruner,
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
        let outbox_listener = self
            .outbox_listener
            .map(|listener| tokio::spawn(listener.run(background.clone())));
        let announcer = tokio::spawn(self.announcer.run(background.clone()));
        let purger = tokio::spawn(self.purger.run(background.clone()));
        let pruner = tokio::spawn(self.pruner.run(background.clone()));
        // The peer address is what the per-address rate limit keys on.
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("serving HTTP");
        // Also when serving failed: the background tasks must stop and drain either way.
        background.cancel();
        if let Some(relay) = relay {
            relay.await.context("outbox relay panicked")?;
        }
        if let Some(listener) = outbox_listener {
            listener.await.context("outbox listener panicked")?;
        }
        announcer.await.context("outbox announcer panicked")?;
        purger.await.context("idempotency purger panicked")?;
        pruner.await.context("retention pruner panicked")?;
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

/// A connection that sat in the pool longer than this is pinged before use.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The shared pool (`paystream_core::db::connect`: schema, search path, sizes), except for its
/// liveness check. sqlx pings every connection it hands out, an extra round trip before each
/// request's statement; here only a connection idle for more than [`PING_IDLE_AFTER`] is
/// pinged, so a busy gateway's payment costs its one round trip, and a connection that may have
/// died while idle (a database restart, a proxy's idle cut-off) is still found out before use.
async fn connect(database: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let shared = paystream_core::db::connect(database).await?;
    let pool = shared
        .options()
        .clone()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with((*shared.connect_options()).clone())
        .await
        .context("connecting to Postgres")?;
    shared.close().await;
    Ok(pool)
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
        .routes(routes!(routes::clients::bind, routes::clients::unbind))
        .routes(routes!(routes::clients::list))
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
        .routes(routes!(routes::metrics::render))
        .routes(routes!(routes::openapi))
}

fn operations_router() -> Router<AppState> {
    let (router, _) = operations_api().split_for_parts();
    router.layer(middleware::from_fn(crate::metrics::track))
}

/// Answers 503 when the handler takes longer than `limit`, and hands the handler its
/// [`Deadline`]: a payment's database call stops waiting for locks just before it passes
/// (`idempotency::DEADLINE_MARGIN`), so a request answered 503 does not commit later, nothing is
/// stored and a retry with the same key is safe.
async fn time_limit(State(limit): State<Duration>, mut request: Request, next: Next) -> Response {
    let deadline = Deadline::after(limit);
    request.extensions_mut().insert(deadline);
    match tokio::time::timeout_at(deadline.at(), next.run(request)).await {
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
