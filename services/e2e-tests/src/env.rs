//! The harness's settings, read on the services' own road: `paystream_core::config` loads the
//! `kafka`, `schema_registry` and `database` sections from the same `PAYSTREAM_*` variables and
//! `PAYSTREAM_CONFIG_FILE` the services read (once per test process), and the harness adds its
//! own choices on top (topic provisioning, ephemeral HTTP listeners).

use std::sync::OnceLock;

use paystream_core::config::{
    self, DatabaseSettings, HttpSettings, KafkaSettings, SchemaRegistrySettings, TopicProvisioning,
};
use serde::Deserialize;

use crate::stack::PARTITIONS;

/// The sections of the services' configuration the harness reads; other keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct HarnessSettings {
    kafka: KafkaSettings,
    schema_registry: SchemaRegistrySettings,
    database: DatabaseSettings,
}

/// Loaded on first use, then shared by every test of the process.
fn harness_settings() -> &'static HarnessSettings {
    static SETTINGS: OnceLock<HarnessSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        config::load_checked::<HarnessSettings>("")
            .unwrap_or_else(|e| panic!("the harness's settings (PAYSTREAM_*): {e:#}"))
            .settings
    })
}

/// The shared broker, as the services see it, with [`test_provisioning`].
pub fn kafka_settings() -> KafkaSettings {
    KafkaSettings {
        provisioning: test_provisioning(),
        ..harness_settings().kafka.clone()
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

/// The schema registry's URL.
pub fn registry_url() -> String {
    harness_settings().schema_registry.url.clone()
}

/// The shared Postgres's URL (each [`crate::TestStack`] pins its own schema).
pub fn database_url() -> String {
    harness_settings().database.url().to_string()
}

/// A listener on an ephemeral port of 127.0.0.1.
pub(crate) fn ephemeral_http() -> HttpSettings {
    HttpSettings {
        host: "127.0.0.1".into(),
        port: 0,
    }
}
