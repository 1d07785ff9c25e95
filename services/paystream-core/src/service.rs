//! Wiring shared by the consumer-group services (payment-processor, analytics, notifier): their
//! settings ([`ServiceSettings`]), the per-instance transactional id, building a
//! [`ProcessingLoop`] around a service's [`ServiceHandler`], and running it next to its
//! operations endpoints (`/health/live`, `/health/ready` with the loop's counters, Prometheus
//! `/metrics`), with the [`Pruner`] of the tables it owns. A service contributes its handler
//! and its own settings section, nothing else.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::avro::AvroCodec;
use crate::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicSettings,
};
use crate::processing::{Faults, Handler, LoopSettings, LoopStats, ProcessingLoop};
use crate::retention::{Pruner, RetentionSettings, Rule};
use crate::shutdown::Shutdown;

/// A name stable per instance: in Kubernetes the pod name (a StatefulSet ordinal keeps it
/// across restarts), elsewhere the host name. Shells do not always export `HOSTNAME`, so the
/// kernel's is the fallback.
pub fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// How many instances of one group may share a host before start-up gives up.
const MAX_INSTANCES_PER_HOST: u32 = 64;

/// The per-instance transactional id an instance with none configured holds for its lifetime:
/// `<group>-<instance name>`, or `-2`, `-3`… after it when other live instances on the same
/// host (two processes, a scaled compose service) hold the first ones. Two instances with one
/// id would fence each other in a loop.
///
/// Each id is claimed with a session-level Postgres advisory lock on a connection of its own,
/// released when the process dies: a restarted instance takes the lowest free id again, the
/// one its crashed predecessor held, so it still fences that predecessor's zombie producer.
pub struct TransactionalIdClaim {
    pub transactional_id: String,
    // Holds the advisory lock; dropping it (or the process dying) releases the id.
    _connection: sqlx::PgConnection,
}

impl TransactionalIdClaim {
    pub async fn take(pool: &PgPool, group_id: &str) -> anyhow::Result<Self> {
        let base = format!("{group_id}-{}", instance_name());
        let mut connection = pool
            .acquire()
            .await
            .context("a connection to hold the transactional id's claim")?
            .detach();
        for n in 1..=MAX_INSTANCES_PER_HOST {
            let candidate = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let claimed: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext('paystream.transactional_id'), \
                 hashtext($1))",
            )
            .bind(&candidate)
            .fetch_one(&mut connection)
            .await
            .context("claiming a transactional id")?;
            if claimed {
                return Ok(Self {
                    transactional_id: candidate,
                    _connection: connection,
                });
            }
        }
        anyhow::bail!(
            "{MAX_INSTANCES_PER_HOST} instances of group {group_id} already run on this host \
             (each holds a transactional id `{base}[-N]`); set consumer.transactional_id"
        )
    }
}

/// Settings of a consumer-group service: the sections every such service has, plus its own
/// (`S`, whose fields are top-level sections too, e.g. the processor's `[psp]`). Derefs to `S`,
/// so `settings.psp` reads the processor's section.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSettings<S> {
    /// Health and metrics endpoints.
    pub http: HttpSettings,
    #[serde(default)]
    pub consumer: LoopSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    #[serde(default)]
    pub topics: TopicSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    /// The service's own sections.
    #[serde(flatten)]
    pub own: S,
}

/// The sections every consumer-group service shares, read on their own: serde cannot say which
/// keys a flattened struct ignored, so [`ServiceSettings::load_checked`] reads these and the
/// service's own sections separately and puts them together.
#[derive(Deserialize)]
struct SharedSections {
    http: HttpSettings,
    #[serde(default)]
    consumer: LoopSettings,
    #[serde(default)]
    database: DatabaseSettings,
    #[serde(default)]
    kafka: KafkaSettings,
    #[serde(default)]
    schema_registry: SchemaRegistrySettings,
    #[serde(default)]
    topics: TopicSettings,
    #[serde(default)]
    retention: RetentionSettings,
}

impl<S: DeserializeOwned> ServiceSettings<S> {
    /// Defaults → file → `PAYSTREAM_*` environment (see [`crate::config::load`]). An unset
    /// transactional id stays unset: the instance claims one when it is built
    /// ([`TransactionalIdClaim`]).
    pub fn load(defaults: &str) -> anyhow::Result<Self> {
        Ok(Self::load_checked(defaults)?.warn_unknown())
    }

    /// [`Self::load`], with the keys that neither the shared sections nor the service's own
    /// read.
    pub fn load_checked(defaults: &str) -> anyhow::Result<crate::config::Loaded<Self>> {
        use crate::config::{deserialize_tracking, read_sources, unknown_keys};
        let raw = read_sources(defaults)?;
        let (shared, shared_ignored) = deserialize_tracking::<SharedSections>(&raw)?;
        let (own, own_ignored) = deserialize_tracking::<S>(&raw)?;
        let settings = Self {
            http: shared.http,
            consumer: shared.consumer,
            database: shared.database,
            kafka: shared.kafka,
            schema_registry: shared.schema_registry,
            topics: shared.topics,
            retention: shared.retention,
            own,
        };
        Ok(crate::config::Loaded {
            settings,
            unknown: unknown_keys(&raw, &[shared_ignored, own_ignored]),
        })
    }
}

impl<S> Deref for ServiceSettings<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.own
    }
}

impl<S> DerefMut for ServiceSettings<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.own
    }
}

/// A consumer-group service's business logic and what it needs around it: its name, its
/// defaults, the topics it consumes, and how its handler is built (creating the service's
/// output topics and registering their schemas on the way).
pub trait ServiceHandler: Handler + Sized {
    /// The service's own settings sections.
    type Own: DeserializeOwned + Clone + Send + Sync;
    /// Name in logs and metrics.
    const NAME: &'static str;
    /// Compiled-in defaults, TOML: at least `[http] port` and `[consumer] group_id`.
    const DEFAULTS: &'static str;

    /// Topics the group consumes.
    fn input_topics(settings: &ServiceSettings<Self::Own>) -> Vec<String>;

    /// Prepares the service's outputs (topics, schemas) and builds the handler.
    fn build(
        settings: &ServiceSettings<Self::Own>,
        pool: &PgPool,
        codec: &AvroCodec,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The retention rules of the tables the service owns besides its group's
    /// `processed_events` (which every service prunes).
    fn retention_rules(_settings: &ServiceSettings<Self::Own>) -> Vec<Rule> {
        Vec::new()
    }
}

/// A consumer group instance: its processing loop, its tables' pruner and its bound health
/// listener.
pub struct ConsumerService<H: Handler> {
    name: &'static str,
    processing: ProcessingLoop<H>,
    pruner: Pruner,
    listener: TcpListener,
    port: u16,
    transactional_id: String,
    // The instance's claim on its default transactional id, held while it lives.
    _claim: Option<TransactionalIdClaim>,
}

impl<H: ServiceHandler> ConsumerService<H> {
    /// The service's name in logs, traces and metrics.
    pub const NAME: &'static str = H::NAME;

    /// The service's settings: its defaults, the configuration file and the environment.
    pub fn load_settings() -> anyhow::Result<ServiceSettings<H::Own>> {
        ServiceSettings::load(H::DEFAULTS)
    }

    /// [`Self::load_settings`] with the keys no setting reads (`--check-config`).
    pub fn load_settings_checked() -> anyhow::Result<crate::config::Loaded<ServiceSettings<H::Own>>>
    {
        ServiceSettings::load_checked(H::DEFAULTS)
    }

    /// Connects to Postgres, builds the handler and the processing loop, and binds the health
    /// listener (port 0 binds an ephemeral port, see [`Self::port`]).
    pub async fn build(settings: ServiceSettings<H::Own>) -> anyhow::Result<Self> {
        crate::kafka::verify_connection(&settings.kafka).await?;
        let pool = crate::db::connect(&settings.database).await?;
        let mut consumer = settings.consumer.clone();
        let claim = if consumer.transactional_id.is_empty() {
            let claim = TransactionalIdClaim::take(&pool, &consumer.group_id).await?;
            consumer.transactional_id = claim.transactional_id.clone();
            Some(claim)
        } else {
            None
        };
        let input_topics = H::input_topics(&settings);
        let mut rules = vec![Rule::processed_events(
            &settings.retention,
            &consumer.group_id,
        )];
        rules.extend(H::retention_rules(&settings));
        let pruner = Pruner::new(pool.clone(), &settings.retention, rules)?;
        // Every topic that can hand an event back: inputs, retry chain, dead letters.
        let policy = consumer.retry_policy();
        let mut replayable = input_topics.clone();
        replayable.extend(policy.retry_topics());
        replayable.push(policy.dlq_topic().to_string());
        crate::retention::guard_replays(
            &settings.kafka,
            &settings.retention,
            &replayable,
            pruner.rules(),
        )
        .await?;
        let codec = Arc::new(AvroCodec::new(&settings.schema_registry.url));
        let handler = H::build(&settings, &pool, &codec).await?;
        let transactional_id = consumer.transactional_id.clone();
        let processing = ProcessingLoop::new(
            &settings.kafka,
            consumer,
            input_topics,
            pool,
            codec,
            handler,
        )?;
        Self::bind(
            H::NAME,
            &settings.http,
            processing,
            pruner,
            (transactional_id, claim),
        )
        .await
    }
}

impl<H: Handler> ConsumerService<H> {
    /// Binds the health listener (port 0 binds an ephemeral port).
    async fn bind(
        name: &'static str,
        http: &HttpSettings,
        processing: ProcessingLoop<H>,
        pruner: Pruner,
        (transactional_id, claim): (String, Option<TransactionalIdClaim>),
    ) -> anyhow::Result<Self> {
        crate::metrics::install()?;
        let listener = TcpListener::bind(http.address())
            .await
            .with_context(|| format!("binding {}", http.address()))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            name,
            processing,
            pruner,
            listener,
            port,
            transactional_id,
            _claim: claim,
        })
    }

    /// The transactional id this instance produces with (configured, or claimed at build).
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Port of the health endpoints.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stats(&self) -> Arc<LoopStats> {
        self.processing.stats()
    }

    /// The loop's chaos hooks (abort injection), for tests and game days.
    pub fn faults(&self) -> Arc<Faults> {
        self.processing.faults()
    }

    /// This instance replaces `stats`' and `faults`' previous owner, a stopped instance of
    /// the same service in this process: it counts on where that one stopped.
    pub fn continuing(mut self, stats: Arc<LoopStats>, faults: Arc<Faults>) -> Self {
        self.processing.continue_from(stats, faults);
        self
    }

    /// Processes until `shutdown` (the current batch is finished and committed) or a fatal
    /// error, which is returned so the process exits non-zero and its supervisor restarts it.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let ready = Arc::new(AtomicBool::new(false));
        let stats = self.processing.stats();
        let router = Router::new()
            .route(
                "/health/live",
                get(|| async { Json(json!({"status": "live"})) }),
            )
            .route("/health/ready", get(health_ready))
            .route("/metrics", get(metrics))
            .with_state((ready.clone(), stats));
        // A child token: stopping this service's listener (after a fatal error, say) must not
        // cancel the caller's token, which may stop other services or a supervisor too.
        let stop_http = shutdown.child_token();
        let http_shutdown = stop_http.clone();
        let listener = self.listener;
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
        });
        // Stops with the loop, whichever way the loop ends.
        let stop_pruner = shutdown.child_token();
        let pruner = tokio::spawn(self.pruner.run(stop_pruner.clone()));
        ready.store(true, Ordering::Relaxed);
        tracing::info!(
            port = self.port,
            service = self.name,
            "consumer service started"
        );
        let result = self.processing.run(shutdown.clone()).await;
        ready.store(false, Ordering::Relaxed);
        stop_http.cancel();
        stop_pruner.cancel();
        pruner.await.context("retention pruner panicked")?;
        server.await.context("health server panicked")??;
        result.map_err(Into::into)
    }
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(),
    )
}

async fn health_ready(
    State((ready, stats)): State<(Arc<AtomicBool>, Arc<LoopStats>)>,
) -> (StatusCode, Json<serde_json::Value>) {
    let is_ready = ready.load(Ordering::Relaxed);
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"status": if is_ready { "ready" } else { "not ready" }, "stats": stats.snapshot()}),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Own {
        #[serde(default)]
        widget: WidgetSettings,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct WidgetSettings {
        timeout_ms: u64,
        name: String,
    }

    #[test]
    fn own_sections_sit_beside_the_shared_ones() {
        let settings: ServiceSettings<Own> = ServiceSettings::load(
            r#"
[http]
host = "127.0.0.1"
port = 8099

[consumer]
group_id = "widgets"

[widget]
timeout_ms = 250
name = "w"
"#,
        )
        .unwrap();
        assert_eq!(settings.http.port, 8099);
        assert_eq!(settings.widget.timeout_ms, 250, "reached through Deref");
        assert_eq!(settings.own.widget.name, "w");
        assert!(
            settings.consumer.transactional_id.is_empty(),
            "claimed per instance at build, not defaulted at load: {}",
            settings.consumer.transactional_id
        );
    }

    #[test]
    fn the_retention_section_is_shared() {
        let loaded = ServiceSettings::<Own>::load_checked(
            "[http]\nhost = \"::1\"\nport = 1\n[consumer]\ngroup_id = \"g\"\n\
             [retention]\nprocessed_events_days = 20\nbatch_size = 10\n",
        )
        .unwrap();
        assert!(loaded.unknown.is_empty(), "{:?}", loaded.unknown);
        let retention = &loaded.settings.retention;
        assert_eq!(retention.processed_events_days, 20);
        assert_eq!(retention.batch_size, 10);
        assert_eq!(retention.replay_margin_days, 1, "the default");
    }

    #[test]
    fn an_absent_own_section_takes_its_defaults() {
        let settings: ServiceSettings<Own> =
            crate::config::load("[http]\nhost = \"::1\"\nport = 1\n[consumer]\ngroup_id = \"g\"\n")
                .unwrap();
        assert_eq!(settings.widget.timeout_ms, 0);
        assert!(settings.widget.name.is_empty());
    }
}
