//! Test harness: an isolated paystream per test, against the real local stack.
//!
//! Each [`TestStack`] gets its own Postgres schema, its own topics, consumer group and
//! transactional id, and in-process gateway and PSP simulator on ephemeral ports; it shares
//! the broker, the schema registry and Postgres started by `scripts/stack.sh up`. Tests can
//! therefore run in parallel.
//!
//! One module per concern:
//!
//! - [`stack`]: [`TestStack`] (spawn, topics, teardown) and, one file per service, its settings,
//!   environment and helpers;
//! - [`process`]: service binaries as child processes ([`ServiceProcess`]), signals, paths;
//! - [`fakes`]: the webhook receiver and SMTP server the notifier delivers to;
//! - [`http`], [`db`]: request and assertion helpers, database counts and locks;
//! - [`env`]: the harness's settings, read through the services' own configuration loader;
//! - [`own_kafka`], [`own_postgres`], [`third_party`], [`otlp`], [`jaeger`]: a test's own
//!   broker and database, third-party oracles, an OTLP receiver and Jaeger queries;
//! - [`chaos`]: the chaos soak (`make chaos`, and its small version in `make test`).
//!
//! Everything a test uses is re-exported here.

pub mod chaos;
pub mod db;
pub mod env;
pub mod fakes;
pub mod http;
pub mod jaeger;
pub mod otlp;
pub mod own_kafka;
pub mod own_postgres;
pub mod process;
pub mod stack;
pub mod third_party;

pub use db::{count, PaymentsLock};
pub use env::{database_url, kafka_settings, registry_url, test_provisioning};
pub use fakes::{SmtpMessage, SmtpSink, WebhookDelivery, WebhookReceiver};
pub use http::{content_type, expect_problem, json_post};
pub use process::{
    free_port, kafka_tool, repo_root, send_signal, workspace_binary, ServiceProcess,
};
pub use stack::gateway::gateway_settings;
pub use stack::{
    init_test_logs, payment_body, require_api_keys, DecodedRecord, GatewayHandle, RawRecord,
    TestStack, WindowTotals, PARTITIONS, TEST_ADMIN_TOKEN, TEST_ENCRYPTION_KEY,
    TEST_RETRY_DELAYS_MS,
};
