//! Test harness: an isolated paystream per test, against the real local stack.
//!
//! Each [`TestStack`] gets its own Postgres schema, its own topics, consumer group and
//! transactional id, and in-process gateway and PSP simulator on ephemeral ports; it shares
//! the broker, the schema registry and Postgres started by `scripts/stack.sh up`. Tests can
//! therefore run in parallel.

pub mod jaeger;
pub mod otlp;
pub mod own_kafka;
pub mod third_party;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_core::avro::AvroCodec;
use paystream_core::config::{
    DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicProvisioning,
    TopicSettings,
};
use paystream_core::headers::RecordHeaders;
use paystream_core::kafka::{self, TopicSpec};
use paystream_core::processing::{Faults, LoopSettings, LoopStats};
use paystream_core::service::{ConsumerService, ServiceHandler, ServiceSettings};
use paystream_core::shutdown::Shutdown;
use paystream_psp_simulator::{ChargeFilter, ChargeRecord, SimulatorClient};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub const PARTITIONS: i32 = 3;

/// The gateway's admin bearer token in tests.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// Short retry delays, so tests see the whole chain in about a second.
pub const TEST_RETRY_DELAYS_MS: [u64; 3] = [200, 400, 800];

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

pub fn kafka_settings() -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: env_or("PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        provisioning: test_provisioning(),
        ..Default::default()
    }
}

/// Topics the services create in a test get [`PARTITIONS`] partitions, whatever the broker's
/// default: the harness's readers assign that many.
pub fn test_provisioning() -> TopicProvisioning {
    TopicProvisioning {
        partitions: PARTITIONS,
        ..Default::default()
    }
}

pub fn registry_url() -> String {
    env_or("PAYSTREAM_SCHEMA_REGISTRY__URL", "http://127.0.0.1:8081")
}

pub fn database_url() -> String {
    env_or(
        "PAYSTREAM_DATABASE__URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

async fn decoded<M: Message>(codec: &AvroCodec, message: &M) -> anyhow::Result<DecodedRecord> {
    Ok(DecodedRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        headers: RecordHeaders::from_kafka(message.headers()),
        value: codec.decode_json(message.payload()).await?,
    })
}

/// Key, value and headers of a record, as bytes.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>, RecordHeaders);

/// A consumed record with its value decoded to JSON.
#[derive(Debug, Clone)]
pub struct DecodedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: RecordHeaders,
    pub value: Value,
}

pub struct TestStack {
    pub id: String,
    /// The broker this stack's topics live on: the shared one, or a test's own.
    pub kafka: KafkaSettings,
    pub topics: TopicSettings,
    pub group_id: String,
    pub database: DatabaseSettings,
    pub pool: PgPool,
    pub gateway_url: String,
    pub psp: SimulatorClient,
    pub http: reqwest::Client,
    shutdown: Shutdown,
}

impl TestStack {
    /// Topics, schema, PSP simulator and gateway for one test. The processor is started
    /// separately ([`TestStack::spawn_processor`] or as a child process) so tests control it.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with(|_| {}).await
    }

    /// [`TestStack::spawn`] with the gateway's settings adjusted by `configure`.
    pub async fn spawn_with(
        configure: impl FnOnce(&mut paystream_gateway::Settings),
    ) -> anyhow::Result<Self> {
        Self::spawn_on(kafka_settings(), configure).await
    }

    /// [`TestStack::spawn_with`] on the broker `kafka` (e.g. a test's [`own_kafka::OwnKafka`]).
    pub async fn spawn_on(
        kafka: KafkaSettings,
        configure: impl FnOnce(&mut paystream_gateway::Settings),
    ) -> anyhow::Result<Self> {
        init_test_logs();
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        let topics = TopicSettings {
            payments_requested: format!("test-{id}.payments.requested.v1"),
            payments_outcomes: format!("test-{id}.payments.outcomes.v1"),
            analytics_payment_stats: format!("test-{id}.analytics.payment-stats.v1"),
            notifications_sent: format!("test-{id}.notifications.sent.v1"),
        };
        let group_id = format!("test-{id}.payment-processor");
        kafka::ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.payments_requested, PARTITIONS),
                TopicSpec::new(&topics.payments_outcomes, PARTITIONS),
                TopicSpec::new(format!("{group_id}.dlq"), 1),
            ],
        )
        .await
        .context("creating test topics (is the stack up? `make up`)")?;

        let database = DatabaseSettings {
            url: database_url().into(),
            max_connections: 10,
            schema: Some(format!("test_{id}")),
        };
        let pool = paystream_core::db::connect(&database).await?;
        paystream_core::db::migrate(&pool).await?;

        let shutdown = Shutdown::new();
        let psp_app =
            paystream_psp_simulator::Application::build(paystream_psp_simulator::Settings {
                http: HttpSettings {
                    host: "127.0.0.1".into(),
                    port: 0,
                },
                psp: Default::default(),
            })
            .await?;
        let psp = SimulatorClient::new(format!("http://127.0.0.1:{}", psp_app.port()));
        tokio::spawn(psp_app.run_until_stopped(shutdown.clone()));

        let mut gateway_settings = gateway_settings(&database, &topics);
        gateway_settings.kafka = kafka.clone();
        configure(&mut gateway_settings);
        let gateway = paystream_gateway::Application::build(gateway_settings).await?;
        let gateway_url = format!("http://127.0.0.1:{}", gateway.port());
        tokio::spawn(gateway.run_until_stopped(shutdown.clone()));

        Ok(Self {
            id,
            kafka,
            topics,
            group_id,
            database,
            pool,
            gateway_url,
            psp,
            http: reqwest::Client::new(),
            shutdown,
        })
    }

    /// Settings for a payment processor wired to this stack.
    pub fn processor_settings(&self) -> paystream_payment_processor::Settings {
        ServiceSettings {
            http: HttpSettings {
                host: "127.0.0.1".into(),
                port: 0,
            },
            consumer: test_loop_settings::<paystream_payment_processor::handler::PaymentHandler>(
                self.group_id.clone(),
            ),
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistrySettings {
                url: registry_url(),
            },
            topics: self.topics.clone(),
            own: paystream_payment_processor::ProcessorSection {
                psp: paystream_payment_processor::psp::PspSettings {
                    url: self.psp.base_url().to_string(),
                    ..Default::default()
                },
            },
        }
    }

    /// Runs a payment processor in this process until teardown; returns its loop counters.
    pub async fn spawn_processor(&self) -> anyhow::Result<Arc<LoopStats>> {
        let (stats, _) = self
            .spawn_consumer::<paystream_payment_processor::handler::PaymentHandler>(
                self.processor_settings(),
            )
            .await?;
        Ok(stats)
    }

    /// Runs a consumer-group service in this process until teardown; returns its loop
    /// counters and chaos hooks.
    ///
    /// The harness is the instance's supervisor: as Kubernetes would restart a pod, it
    /// restarts an instance that stopped on a fatal Kafka error (the runtime stops rather than
    /// guess after a fencing or a broken idempotent producer) and says so on stderr. The new
    /// instance counts on in the same [`LoopStats`]; the test still judges the effects.
    pub async fn spawn_consumer<H: ServiceHandler>(
        &self,
        settings: ServiceSettings<H::Own>,
    ) -> anyhow::Result<(Arc<LoopStats>, Arc<Faults>)> {
        let app = ConsumerService::<H>::build(settings.clone()).await?;
        let (stats, faults) = (app.stats(), app.faults());
        let shutdown = self.shutdown.clone();
        let (counters, hooks) = (stats.clone(), faults.clone());
        tokio::spawn(async move {
            let mut app = app;
            loop {
                let Err(e) = app.run_until_stopped(shutdown.clone()).await else {
                    return;
                };
                eprintln!("{} stopped with an error: {e:#}", H::NAME);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match ConsumerService::<H>::build(settings.clone()).await {
                        Ok(next) => {
                            eprintln!("{} restarted by the test supervisor", H::NAME);
                            app = next.continuing(counters.clone(), hooks.clone());
                            break;
                        }
                        Err(e) => eprintln!("{} did not restart: {e:#}", H::NAME),
                    }
                }
            }
        });
        Ok((stats, faults))
    }

    /// The environment that points the `payment-processor` binary at this stack.
    pub fn processor_env(&self) -> Vec<(String, String)> {
        let s = self.processor_settings();
        let mut env = self.consumer_env(&s.consumer.group_id, &s.consumer.transactional_id);
        env.push(("PAYSTREAM_PSP__URL".into(), s.own.psp.url));
        env
    }

    /// The environment that points the `gateway` binary at this stack, listening on `port`.
    pub fn gateway_env(&self, port: u16) -> Vec<(String, String)> {
        let mut env = self.stack_env();
        env.extend([
            ("PAYSTREAM_HTTP__PORT".into(), port.to_string()),
            (
                "PAYSTREAM_GATEWAY__OUTBOX_POLL_INTERVAL_MS".into(),
                "100".into(),
            ),
            (
                "PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND".into(),
                "0".into(),
            ),
        ]);
        env
    }

    /// Database, broker, registry and topics of this stack, as every binary reads them.
    fn stack_env(&self) -> Vec<(String, String)> {
        let t = &self.topics;
        vec![
            ("PAYSTREAM_DATABASE__URL".into(), database_url()),
            (
                "PAYSTREAM_DATABASE__SCHEMA".into(),
                self.database.schema.clone().unwrap_or_default(),
            ),
            (
                "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS".into(),
                self.kafka.bootstrap_servers.clone(),
            ),
            (
                "PAYSTREAM_KAFKA__PROVISIONING__PARTITIONS".into(),
                self.kafka.provisioning.partitions.to_string(),
            ),
            ("PAYSTREAM_SCHEMA_REGISTRY__URL".into(), registry_url()),
            (
                "PAYSTREAM_TOPICS__PAYMENTS_REQUESTED".into(),
                t.payments_requested.clone(),
            ),
            (
                "PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES".into(),
                t.payments_outcomes.clone(),
            ),
            (
                "PAYSTREAM_TOPICS__ANALYTICS_PAYMENT_STATS".into(),
                t.analytics_payment_stats.clone(),
            ),
            (
                "PAYSTREAM_TOPICS__NOTIFICATIONS_SENT".into(),
                t.notifications_sent.clone(),
            ),
        ]
    }

    /// `POST /v1/payments` with a JSON body.
    pub async fn post_payment(
        &self,
        key: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .post(format!("{}/v1/payments", self.gateway_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            request = request.header("Idempotency-Key", k);
        }
        Ok(request.send().await?)
    }

    /// Accepts a payment and returns its id.
    pub async fn accept_payment(&self, body: &Value) -> anyhow::Result<Uuid> {
        let response = self
            .post_payment(Some(&Uuid::new_v4().to_string()), body)
            .await?;
        anyhow::ensure!(
            response.status() == 202,
            "expected 202, got {}",
            response.status()
        );
        let json: Value = response.json().await?;
        Ok(Uuid::parse_str(json["id"].as_str().context("no id")?)?)
    }

    pub async fn get_payment(&self, id: Uuid) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/payments/{id}", self.gateway_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Statuses of the payments that are no longer PENDING.
    pub async fn terminal_payments(&self) -> anyhow::Result<HashMap<Uuid, String>> {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM payments WHERE status <> 'PENDING'")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Waits until at least `n` payments are terminal.
    pub async fn wait_terminal(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<Uuid, String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = self.terminal_payments().await?;
            if done.len() >= n {
                return Ok(done);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} payments terminal after {timeout:?}",
                done.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn charges(&self) -> anyhow::Result<Vec<ChargeRecord>> {
        self.psp.charges(&ChargeFilter::all()).await
    }

    /// A read_committed consumer assigned to the first `partitions` partitions of `topic`,
    /// from the beginning; it joins no group and commits nothing.
    fn reader(&self, topic: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
        self.reader_with(topic, partitions, &[("isolation.level", "read_committed")])
    }

    /// [`TestStack::reader`] with other consumer properties (`extra`).
    fn reader_with(
        &self,
        topic: &str,
        partitions: i32,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<StreamConsumer> {
        let group = format!("test-{}-reader-{}", self.id, Uuid::new_v4());
        let mut properties = vec![
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
        ];
        properties.extend_from_slice(extra);
        let consumer: StreamConsumer = kafka::client_config(&self.kafka, &properties)?.create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(consumer)
    }

    /// Reads `topic` from the beginning (read_committed) until `until` holds for what was read,
    /// or `timeout` passes; returns everything read.
    pub async fn read_topic(
        &self,
        topic: &str,
        timeout: Duration,
        until: impl Fn(&[DecodedRecord]) -> bool,
    ) -> anyhow::Result<Vec<DecodedRecord>> {
        let consumer = self.reader(topic, PARTITIONS)?;
        let codec = AvroCodec::new(&registry_url());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while !until(&records) {
            let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => break,
            };
            records.push(decoded(&codec, &message).await?);
        }
        Ok(records)
    }

    /// Reads all of `topic` (read_committed): stops once nothing new arrived for `idle`.
    pub async fn read_all(
        &self,
        topic: &str,
        idle: Duration,
    ) -> anyhow::Result<Vec<DecodedRecord>> {
        let consumer = self.reader(topic, PARTITIONS)?;
        let codec = AvroCodec::new(&registry_url());
        let mut records = Vec::new();
        while let Ok(message) = tokio::time::timeout(idle, consumer.recv()).await {
            let message = message?;
            records.push(decoded(&codec, &message).await?);
        }
        Ok(records)
    }

    /// How many records `topic` holds under read_uncommitted: those of committed and of
    /// aborted transactions alike (not the transaction markers).
    pub async fn read_uncommitted_count(&self, topic: &str) -> anyhow::Result<usize> {
        let consumer = self.reader_with(
            topic,
            PARTITIONS,
            &[
                ("isolation.level", "read_uncommitted"),
                ("enable.partition.eof", "true"),
            ],
        )?;
        let (mut records, mut at_end) = (0, HashSet::new());
        while at_end.len() < PARTITIONS as usize {
            match tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .context("reading read_uncommitted")?
            {
                Ok(m) => {
                    at_end.remove(&m.partition());
                    records += 1;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    at_end.insert(p);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(records)
    }

    /// The offsets `group` has committed on `topic`, summed over its partitions: the broker's
    /// record of how far the group got (0 for a partition without a committed offset).
    pub async fn committed_offsets(&self, group: &str, topic: &str) -> anyhow::Result<i64> {
        let consumer: StreamConsumer =
            kafka::client_config(&self.kafka, &[("group.id", group)])?.create()?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            partitions.add_partition(topic, p);
        }
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(partitions, Duration::from_secs(10))
        })
        .await??;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .sum())
    }

    /// Records of `topic` that read_committed consumers cannot see yet: per partition, the
    /// high watermark minus the last stable offset, summed. Above zero while a transaction that
    /// wrote to the topic is open; an aborted or committed transaction no longer counts.
    pub async fn unstable_records(&self, topic: &str) -> anyhow::Result<i64> {
        let (kafka, group, topic) = (
            self.kafka.clone(),
            format!("test-{}-watermarks", self.id),
            topic.to_string(),
        );
        // fetch_watermarks blocks: off the async reactor.
        tokio::task::spawn_blocking(move || {
            let watermarks = |isolation: &str| -> anyhow::Result<Vec<i64>> {
                // librdkafka asks ListOffsets with the client's isolation level: under
                // read_committed the "high" offset it returns is the last stable offset.
                let consumer: rdkafka::consumer::BaseConsumer = kafka::client_config(
                    &kafka,
                    &[("group.id", &group), ("isolation.level", isolation)],
                )?
                .create()?;
                (0..PARTITIONS)
                    .map(|p| {
                        Ok(consumer
                            .fetch_watermarks(&topic, p, Duration::from_secs(10))?
                            .1)
                    })
                    .collect()
            };
            let high = watermarks("read_uncommitted")?;
            let stable = watermarks("read_committed")?;
            Ok(high.iter().zip(&stable).map(|(h, s)| h - s).sum())
        })
        .await?
    }

    /// Produces raw bytes, as a foreign or broken producer would.
    pub async fn produce_raw(&self, topic: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let producer: FutureProducer =
            kafka::client_config(&self.kafka, kafka::IDEMPOTENT_PRODUCER)?.create()?;
        let delivery = kafka::enqueue(
            &producer,
            topic,
            Some(key.as_bytes()),
            Some(value),
            RecordHeaders::default().to_kafka(),
        )
        .await?;
        kafka::delivered(delivery).await?;
        Ok(())
    }

    /// Reads up to `n` records of a single-partition topic without decoding them.
    pub async fn read_raw(
        &self,
        topic: &str,
        timeout: Duration,
        n: usize,
    ) -> anyhow::Result<Vec<RawRecord>> {
        let consumer = self.reader(topic, 1)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < n {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => {
                    let m = m?;
                    records.push((
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                        RecordHeaders::from_kafka(m.headers()),
                    ));
                }
                Err(_) => break,
            }
        }
        Ok(records)
    }

    /// Stops the in-process services and drops the test's database schema.
    pub async fn teardown(self) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(schema) = &self.database.schema {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&self.pool)
                .await;
        }
    }
}

/// A valid payment body for `merchant`.
pub fn payment_body(merchant: &str, customer: &str, amount_minor: i64) -> Value {
    serde_json::json!({
        "merchant_id": merchant,
        "amount_minor": amount_minor,
        "currency": "EUR",
        "customer_id": customer,
        "payment_method": "card",
    })
}

/// A port nothing listens on right now, for a child process to bind.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Path of a workspace binary built by `cargo build --workspace --bins` (`make up` does).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("PAYSTREAM_BIN_DIR") {
        Ok(d) => PathBuf::from(d),
        // Test binaries live in <target>/debug/deps; service binaries one level up.
        Err(_) => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("no target dir")?
            .to_path_buf(),
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins`",
        path.display()
    );
    Ok(path)
}

/// Sends `signal` (a `kill` name: `TERM`, `KILL`, `STOP`, `CONT`) to process `pid`.
pub async fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let sent = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(sent.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// The repository's root (scripts, README and the broker's configuration live there).
///
/// Read from the environment cargo and nextest give the test process, not baked in with
/// `env!`: a test binary reused from a shared target dir may have been built in another
/// checkout.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("../..")
}

/// A service binary run as a child process, logging JSON to its own file.
pub struct ServiceProcess {
    child: tokio::process::Child,
    pub log_path: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `envs`; its output goes to `<temp>/<log_name>.log`.
    pub fn start(
        binary: &str,
        envs: Vec<(String, String)>,
        log_name: &str,
    ) -> anyhow::Result<Self> {
        let log_path = std::env::temp_dir().join(format!("{log_name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut command = tokio::process::Command::new(workspace_binary(binary)?);
        if !envs.iter().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let child = command
            .envs(envs)
            .stdout(std::process::Stdio::from(log.try_clone()?))
            .stderr(std::process::Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, log_path })
    }

    /// A payment processor with `transactional_id`; `run` names its log file.
    pub fn spawn(stack: &TestStack, transactional_id: &str, run: &str) -> anyhow::Result<Self> {
        Self::spawn_with(stack, transactional_id, run, Vec::new())
    }

    /// Like [`ServiceProcess::spawn`], with extra environment (e.g. `OTEL_*`).
    pub fn spawn_with(
        stack: &TestStack,
        transactional_id: &str,
        run: &str,
        extra: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut envs = stack.processor_env();
        envs.extend(extra);
        Self::spawn_binary(
            "payment-processor",
            envs,
            &stack.group_id,
            transactional_id,
            run,
        )
    }

    /// Starts the consumer-group binary `binary` with `env` and `transactional_id`; `group` and
    /// `run` name its log file.
    pub fn spawn_binary(
        binary: &str,
        mut env: Vec<(String, String)>,
        group: &str,
        transactional_id: &str,
        run: &str,
    ) -> anyhow::Result<Self> {
        env.push((
            "PAYSTREAM_CONSUMER__TRANSACTIONAL_ID".into(),
            transactional_id.into(),
        ));
        Self::start(binary, env, &format!("{group}-{run}"))
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits up to `deadline` for the exit.
    pub async fn terminate(
        &mut self,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM").await?;
        self.wait_exit(deadline).await
    }

    /// Sends `signal` (a `kill` name such as `STOP` or `CONT`) to the process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.child.id().context("already exited")?, signal).await
    }

    /// Waits up to `deadline` for the process to exit on its own.
    pub async fn wait_exit(
        &mut self,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(deadline, self.child.wait())
            .await
            .context("no exit before the deadline")??)
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The JSON log lines this run wrote.
    pub fn log_lines(&self) -> anyhow::Result<Vec<Value>> {
        Ok(std::fs::read_to_string(&self.log_path)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Gateway settings for a test's schema and topics, on an ephemeral port, against the shared
/// broker and registry.
pub fn gateway_settings(
    database: &DatabaseSettings,
    topics: &TopicSettings,
) -> paystream_gateway::Settings {
    paystream_gateway::Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        gateway: paystream_gateway::GatewaySettings {
            outbox_poll_interval_ms: 100,
            // Tests drive thousands of anonymous requests; the limiter has its own tests.
            rate_limit: paystream_gateway::RateLimitSettings {
                requests_per_second: 0.0,
                ..Default::default()
            },
            ..Default::default()
        },
        database: database.clone(),
        kafka: kafka_settings(),
        schema_registry: SchemaRegistrySettings {
            url: registry_url(),
        },
        topics: topics.clone(),
        admin_token: Some(TEST_ADMIN_TOKEN.to_string().into()),
    }
}

/// A gateway the test runs and stops on its own: a second replica on a stack's schema, or one
/// whose graceful shutdown is under test.
pub struct GatewayHandle {
    pub url: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl GatewayHandle {
    pub async fn spawn(settings: paystream_gateway::Settings) -> anyhow::Result<Self> {
        let app = paystream_gateway::Application::build(settings).await?;
        let url = format!("http://127.0.0.1:{}", app.port());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Ok(Self {
            url,
            shutdown,
            task,
        })
    }

    /// Signals shutdown and waits (bounded) until the gateway has drained and stopped.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(timeout, self.task)
            .await
            .context("gateway did not stop in time")??
    }
}

/// A request to `{base}{path}` with a JSON body, an optional Idempotency-Key and optional
/// bearer API key.
pub fn json_post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    api_key: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        request = request.header("Idempotency-Key", k);
    }
    if let Some(k) = api_key {
        request = request.bearer_auth(k);
    }
    request
}

/// Asserts a problem+json response with `status` and problem type `slug`; returns the body.
pub async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    slug: &str,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        response.status().as_u16() == status,
        "expected {status} {slug}, got {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    let content_type = content_type(&response);
    anyhow::ensure!(
        content_type == "application/problem+json",
        "content type {content_type}"
    );
    let body: Value = response.json().await?;
    anyhow::ensure!(
        body["type"] == format!("https://paystream.dev/problems/{slug}")
            && body["status"] == status,
        "unexpected problem {body}"
    );
    Ok(body)
}

/// Holds `LOCK TABLE payments IN EXCLUSIVE MODE` in the stack's schema until dropped or
/// [`PaymentsLock::release`]d: requests block inside their transaction, so a test can act while
/// one is in flight.
pub struct PaymentsLock(sqlx::Transaction<'static, sqlx::Postgres>);

impl PaymentsLock {
    pub async fn take(pool: &PgPool) -> anyhow::Result<Self> {
        let mut tx = pool.begin().await?;
        sqlx::query("LOCK TABLE payments IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        Ok(Self(tx))
    }

    /// Waits until `n` sessions wait for this lock.
    pub async fn wait_for_waiters(
        &self,
        pool: &PgPool,
        n: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                 WHERE NOT granted AND relation = to_regclass(current_schema() || '.payments')",
            )
            .fetch_one(pool)
            .await?;
            if waiting >= n {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{waiting} of {n} requests waiting on the payments lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn release(self) -> anyhow::Result<()> {
        Ok(self.0.commit().await?)
    }
}

/// The response's `Content-Type`, or "" without one.
pub fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The result of a `SELECT count(*) …` in the test's schema.
pub async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Turns API-key authentication on with one key per client: `(client id, secret key)`.
/// The gateway is configured with the SHA-256 of each key, as in production.
pub fn require_api_keys(settings: &mut paystream_gateway::Settings, keys: &[(&str, &str)]) {
    use sha2::Digest;
    settings.gateway.auth.enabled = true;
    for (client, key) in keys {
        let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        settings
            .gateway
            .auth
            .api_keys
            .entry(client.to_string())
            .and_modify(|hashes| *hashes = format!("{hashes},{hash}"))
            .or_insert(hash);
    }
}

/// Logs of the services a test runs in its own process go to the test's captured output, so a
/// failing test shows them (e.g. the reason of a fatal Kafka error). Level from
/// `PAYSTREAM_TEST_LOG` (an `EnvFilter`), default `warn` without `rdkafka::client`, whose
/// "Global error" lines repeat librdkafka's own log lines (target `librdkafka`) every second
/// while a broker is down.
pub fn init_test_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("PAYSTREAM_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rdkafka::client=off"));
        // A test that installed its own subscriber keeps it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// The loop settings service `H` ships with (e.g. the notifier's small batches and long
/// transaction timeout, sized for slow receivers), on this test's group, with short retry
/// delays.
fn test_loop_settings<H: ServiceHandler>(group_id: String) -> LoopSettings {
    let defaults = ConsumerService::<H>::load_settings()
        .unwrap_or_else(|e| panic!("{}'s defaults: {e:#}", H::NAME));
    LoopSettings {
        transactional_id: format!("{group_id}-0"),
        group_id,
        retry_delays_ms: TEST_RETRY_DELAYS_MS.to_vec(),
        // Dead letters in one partition, read in order by the tests.
        dlq_topic_partitions: 1,
        ..defaults.consumer
    }
}

fn ephemeral_http() -> HttpSettings {
    HttpSettings {
        host: "127.0.0.1".into(),
        port: 0,
    }
}

/// Totals of one merchant × currency summed over windows of one granularity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowTotals {
    pub requested_count: i64,
    pub requested_amount_minor: i64,
    pub succeeded_count: i64,
    pub succeeded_amount_minor: i64,
    pub failed_count: i64,
    pub failed_by_reason: std::collections::BTreeMap<String, i64>,
}

impl TestStack {
    /// The analytics consumer group of this stack.
    pub fn analytics_group(&self) -> String {
        format!("test-{}.analytics", self.id)
    }

    /// Settings for an analytics instance wired to this stack.
    pub fn analytics_settings(&self) -> paystream_analytics::Settings {
        ServiceSettings {
            http: ephemeral_http(),
            consumer: test_loop_settings::<paystream_analytics::handler::AnalyticsHandler>(
                self.analytics_group(),
            ),
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistrySettings {
                url: registry_url(),
            },
            topics: self.topics.clone(),
            own: Default::default(),
        }
    }

    /// Runs an analytics instance in this process until teardown; returns its loop counters
    /// and chaos hooks.
    pub async fn spawn_analytics(&self) -> anyhow::Result<(Arc<LoopStats>, Arc<Faults>)> {
        self.spawn_consumer::<paystream_analytics::handler::AnalyticsHandler>(
            self.analytics_settings(),
        )
        .await
    }

    /// Analytics windows of `granularity` summed per (merchant, currency).
    pub async fn analytics_totals(
        &self,
        granularity: &str,
    ) -> anyhow::Result<HashMap<(String, String), WindowTotals>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            merchant_id: String,
            currency: String,
            requested_count: i64,
            requested_amount_minor: i64,
            succeeded_count: i64,
            succeeded_amount_minor: i64,
            failed_count: i64,
            failed_by_reason: sqlx::types::Json<HashMap<String, i64>>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT merchant_id, currency, requested_count, requested_amount_minor,
                    succeeded_count, succeeded_amount_minor, failed_count, failed_by_reason
             FROM analytics_windows WHERE granularity = $1",
        )
        .bind(granularity)
        .fetch_all(&self.pool)
        .await?;
        let mut totals: HashMap<(String, String), WindowTotals> = HashMap::new();
        for row in rows {
            let t = totals.entry((row.merchant_id, row.currency)).or_default();
            t.requested_count += row.requested_count;
            t.requested_amount_minor += row.requested_amount_minor;
            t.succeeded_count += row.succeeded_count;
            t.succeeded_amount_minor += row.succeeded_amount_minor;
            t.failed_count += row.failed_count;
            for (reason, n) in row.failed_by_reason.0 {
                *t.failed_by_reason.entry(reason).or_default() += n;
            }
        }
        Ok(totals)
    }

    /// The same totals as the PSP simulator's ledger sees them (its own count of charges).
    pub async fn psp_totals(&self) -> anyhow::Result<HashMap<(String, String), WindowTotals>> {
        let mut totals: HashMap<(String, String), WindowTotals> = HashMap::new();
        for charge in self.charges().await?.into_iter().filter(|c| c.has_charge()) {
            let t = totals
                .entry((charge.merchant_id.clone(), charge.currency.clone()))
                .or_default();
            t.requested_count += 1;
            t.requested_amount_minor += charge.amount_minor;
            match charge.decline_code {
                None => {
                    t.succeeded_count += 1;
                    t.succeeded_amount_minor += charge.amount_minor;
                }
                Some(code) => {
                    t.failed_count += 1;
                    *t.failed_by_reason.entry(code).or_default() += 1;
                }
            }
        }
        Ok(totals)
    }
}

impl TestStack {
    /// Produces an already encoded event with its `event_id` header, as a service would.
    pub async fn produce_event(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        event_id: Uuid,
    ) -> anyhow::Result<()> {
        let producer: FutureProducer =
            kafka::client_config(&self.kafka, kafka::IDEMPOTENT_PRODUCER)?.create()?;
        let mut headers = RecordHeaders::default();
        headers.set(paystream_core::headers::EVENT_ID, event_id.to_string());
        let delivery = kafka::enqueue(
            &producer,
            topic,
            Some(key.as_bytes()),
            Some(value),
            headers.to_kafka(),
        )
        .await?;
        kafka::delivered(delivery).await?;
        Ok(())
    }

    /// Polls `probe` every 200 ms until it returns `Some`; fails after `timeout`.
    pub async fn eventually<T, F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        probe: F,
    ) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = probe().await? {
                return Ok(v);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: not reached after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One request the [`WebhookReceiver`] accepted.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub body: Value,
}

#[derive(Default)]
struct ReceiverState {
    /// Signing secret per merchant id (the body's `data.merchant_id`).
    secrets: std::sync::Mutex<HashMap<String, String>>,
    answer: std::sync::atomic::AtomicU16,
    accepted: std::sync::Mutex<Vec<WebhookDelivery>>,
    refused: std::sync::atomic::AtomicU64,
    bad_signatures: std::sync::atomic::AtomicU64,
}

/// A real HTTP webhook receiver: verifies every signature (as documented in the README) and
/// answers with a configurable status; counts what it accepted.
#[derive(Clone)]
pub struct WebhookReceiver {
    state: Arc<ReceiverState>,
    pub url: String,
}

impl WebhookReceiver {
    pub async fn start(shutdown: Shutdown) -> anyhow::Result<Self> {
        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::Ordering::SeqCst;

        async fn receive(
            State(state): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let merchant = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["data"]["merchant_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            let secret = state
                .secrets
                .lock()
                .unwrap()
                .get(&merchant)
                .cloned()
                .unwrap_or_default();
            let verified = paystream_notifier::signature::verify(
                &secret,
                &header(paystream_notifier::signature::SIGNATURE_HEADER),
                &body,
                chrono::Utc::now().timestamp(),
                paystream_notifier::signature::DEFAULT_TOLERANCE_SECS,
            );
            if verified.is_err() || header("content-type") != "application/json" {
                state.bad_signatures.fetch_add(1, SeqCst);
                return StatusCode::UNAUTHORIZED;
            }
            let answer = StatusCode::from_u16(state.answer.load(SeqCst)).unwrap_or(StatusCode::OK);
            if !answer.is_success() {
                state.refused.fetch_add(1, SeqCst);
                return answer;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return StatusCode::BAD_REQUEST;
            };
            state.accepted.lock().unwrap().push(WebhookDelivery {
                event_id: header(paystream_notifier::signature::EVENT_ID_HEADER),
                body,
            });
            StatusCode::OK
        }

        let state = Arc::new(ReceiverState::default());
        state.answer.store(200, SeqCst);
        let router = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://127.0.0.1:{}/hooks", listener.local_addr()?.port());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Ok(Self { state, url })
    }

    /// The signing secret the receiver verifies `merchant_id`'s webhooks against.
    pub fn set_secret(&self, merchant_id: &str, secret: &str) {
        self.state
            .secrets
            .lock()
            .unwrap()
            .insert(merchant_id.to_string(), secret.to_string());
    }

    /// The status answered to correctly signed requests from now on.
    pub fn answer(&self, status: u16) {
        self.state
            .answer
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn accepted(&self) -> Vec<WebhookDelivery> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Correctly signed requests answered with a non-2xx status.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.state
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One message the [`SmtpSink`] received.
#[derive(Debug, Clone)]
pub struct SmtpMessage {
    pub recipients: Vec<String>,
    pub message_id: String,
    pub subject: String,
    pub data: String,
}

/// A real SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that
/// keeps every message it accepted.
#[derive(Clone)]
pub struct SmtpSink {
    messages: Arc<std::sync::Mutex<Vec<SmtpMessage>>>,
    pub port: u16,
}

impl SmtpSink {
    pub async fn start(shutdown: Shutdown) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let messages: Arc<std::sync::Mutex<Vec<SmtpMessage>>> = Arc::default();
        let store = messages.clone();
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                    _ = shutdown.cancelled() => return,
                };
                let store = store.clone();
                tokio::spawn(async move {
                    if let Err(e) = Self::session(socket, store).await {
                        eprintln!("smtp sink session failed: {e:#}");
                    }
                });
            }
        });
        Ok(Self { messages, port })
    }

    async fn session(
        socket: tokio::net::TcpStream,
        store: Arc<std::sync::Mutex<Vec<SmtpMessage>>>,
    ) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 sink ESMTP ready\r\n").await?;
        let mut recipients = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250 sink\r\n",
                "MAIL" => {
                    recipients.clear();
                    b"250 OK\r\n"
                }
                "RCPT" => {
                    let to = line
                        .split_once(':')
                        .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_string())
                        .unwrap_or_default();
                    recipients.push(to);
                    b"250 OK\r\n"
                }
                "DATA" => {
                    write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    let mut data = String::new();
                    while let Some(l) = lines.next_line().await? {
                        if l == "." {
                            break;
                        }
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                        data.push('\n');
                    }
                    let header = |name: &str| {
                        data.lines()
                            .take_while(|l| !l.is_empty())
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let message = SmtpMessage {
                        recipients: std::mem::take(&mut recipients),
                        message_id: header("Message-ID"),
                        subject: header("Subject"),
                        data: data.clone(),
                    };
                    store.lock().unwrap().push(message);
                    b"250 OK queued\r\n"
                }
                "RSET" => {
                    recipients.clear();
                    b"250 OK\r\n"
                }
                "NOOP" => b"250 OK\r\n",
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => b"502 command not implemented\r\n",
            };
            write.write_all(reply).await?;
        }
        Ok(())
    }

    pub fn messages(&self) -> Vec<SmtpMessage> {
        self.messages.lock().unwrap().clone()
    }
}

impl TestStack {
    /// The notifier consumer group of this stack.
    pub fn notifier_group(&self) -> String {
        format!("test-{}.notifier", self.id)
    }

    /// Settings for a notifier wired to this stack, mailing through `smtp_port`; loopback
    /// webhook targets are allowed (the receivers run on 127.0.0.1).
    pub fn notifier_settings(&self, smtp_port: u16) -> paystream_notifier::Settings {
        ServiceSettings {
            http: ephemeral_http(),
            consumer: test_loop_settings::<paystream_notifier::handler::NotifierHandler>(
                self.notifier_group(),
            ),
            database: self.database.clone(),
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistrySettings {
                url: registry_url(),
            },
            topics: self.topics.clone(),
            own: paystream_notifier::NotifierSection {
                notifier: paystream_notifier::NotifierSettings {
                    allow_loopback_targets: true,
                    smtp_port,
                    webhook_timeout_ms: 2_000,
                    smtp_timeout_ms: 5_000,
                    ..Default::default()
                },
            },
        }
    }

    /// Runs a notifier in this process until teardown; returns its loop counters.
    pub async fn spawn_notifier(
        &self,
        settings: paystream_notifier::Settings,
    ) -> anyhow::Result<Arc<LoopStats>> {
        let (stats, _) = self
            .spawn_consumer::<paystream_notifier::handler::NotifierHandler>(settings)
            .await?;
        Ok(stats)
    }

    /// A webhook receiver and an SMTP sink living until teardown.
    pub async fn receivers(&self) -> anyhow::Result<(WebhookReceiver, SmtpSink)> {
        Ok((
            WebhookReceiver::start(self.shutdown.clone()).await?,
            SmtpSink::start(self.shutdown.clone()).await?,
        ))
    }
}

impl TestStack {
    /// `PUT /v1/merchants/{id}` with the admin token; returns status and JSON body.
    pub async fn put_merchant(
        &self,
        merchant_id: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .put(format!("{}/v1/merchants/{merchant_id}", self.gateway_url))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .json(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Creates (or updates) a merchant notifying `webhook_url`; returns its signing secret
    /// when the call created it.
    pub async fn merchant_with_webhook(
        &self,
        merchant_id: &str,
        webhook_url: &str,
    ) -> anyhow::Result<Option<String>> {
        let (status, body) = self
            .put_merchant(
                merchant_id,
                &serde_json::json!({
                    "webhook_url": webhook_url,
                    "notification_email": format!("ops@{merchant_id}.example"),
                }),
            )
            .await?;
        anyhow::ensure!(
            status == 200 || status == 201,
            "PUT merchant: {status} {body}"
        );
        Ok(body["webhook_secret"].as_str().map(str::to_string))
    }
}

impl TestStack {
    /// The environment every consumer-group binary needs to run against this stack.
    pub fn consumer_env(&self, group_id: &str, transactional_id: &str) -> Vec<(String, String)> {
        let mut env = self.stack_env();
        env.extend([
            ("PAYSTREAM_HTTP__PORT".into(), "0".into()),
            ("PAYSTREAM_CONSUMER__GROUP_ID".into(), group_id.into()),
            (
                "PAYSTREAM_CONSUMER__TRANSACTIONAL_ID".into(),
                transactional_id.into(),
            ),
            (
                "PAYSTREAM_CONSUMER__RETRY_DELAYS_MS".into(),
                TEST_RETRY_DELAYS_MS.map(|d| d.to_string()).join(","),
            ),
            // Dead letters in one partition, read in order by the tests.
            (
                "PAYSTREAM_CONSUMER__DLQ_TOPIC_PARTITIONS".into(),
                "1".into(),
            ),
        ]);
        env
    }

    /// The environment of a `notifier` binary mailing through `smtp_port`.
    pub fn notifier_env(&self, smtp_port: u16, transactional_id: &str) -> Vec<(String, String)> {
        let mut env = self.consumer_env(&self.notifier_group(), transactional_id);
        env.extend([
            (
                "PAYSTREAM_NOTIFIER__SMTP_PORT".into(),
                smtp_port.to_string(),
            ),
            (
                "PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS".into(),
                "true".into(),
            ),
            (
                "PAYSTREAM_NOTIFIER__WEBHOOK_TIMEOUT_MS".into(),
                "2000".into(),
            ),
        ]);
        env
    }
}
