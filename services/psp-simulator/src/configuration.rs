//! Settings: the HTTP listener and the simulator's behaviour knobs.

use std::time::Duration;

use paystream_core::config::HttpSettings;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Compiled-in defaults, the bottom layer under the optional file and `PAYSTREAM_*` env.
pub const DEFAULTS_TOML: &str = r#"
[http]
host = "127.0.0.1"
port = 8090

[psp]
latency_ms = 0
latency_jitter_ms = 0
decline_rate = 0.0
transient_failure_rate = 0.0
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    #[serde(default)]
    pub psp: SimulatorSettings,
}

impl Settings {
    /// Defaults → `PAYSTREAM_CONFIG_FILE` → `PAYSTREAM_*` environment.
    pub fn load() -> anyhow::Result<Self> {
        paystream_core::config::load(DEFAULTS_TOML)
    }
}

/// The behaviour knobs. See the crate docs for what each one does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimulatorSettings {
    /// Fixed latency added to every charge call.
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from `0..=latency_jitter_ms` per call.
    pub latency_jitter_ms: u64,
    /// Share (0.0–1.0) of new charges declined.
    pub decline_rate: f64,
    /// Share (0.0–1.0) of calls answered 503 before anything is charged.
    pub transient_failure_rate: f64,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            decline_rate: 0.0,
            transient_failure_rate: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{knob} must be between 0.0 and 1.0, got {value}")]
pub struct InvalidSettings {
    pub knob: &'static str,
    pub value: f64,
}

impl SimulatorSettings {
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        for (knob, value) in [
            ("decline_rate", self.decline_rate),
            ("transient_failure_rate", self.transient_failure_rate),
        ] {
            // Written so NaN fails too.
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidSettings { knob, value });
            }
        }
        Ok(())
    }

    /// The latency for one call: the fixed part plus a fresh jitter draw.
    pub fn draw_latency(&self) -> Duration {
        let jitter = if self.latency_jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=self.latency_jitter_ms)
        };
        Duration::from_millis(self.latency_ms.saturating_add(jitter))
    }
}

/// A partial update of the knobs (`PUT /admin/config`): absent fields keep their value.
/// Unknown fields are refused so a misspelt knob is an error rather than a silent no-op.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_jitter_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transient_failure_rate: Option<f64>,
}

impl ConfigPatch {
    /// The knobs after this patch, validated; `current` is left untouched on error.
    pub fn apply(&self, current: &SimulatorSettings) -> Result<SimulatorSettings, InvalidSettings> {
        let next = SimulatorSettings {
            latency_ms: self.latency_ms.unwrap_or(current.latency_ms),
            latency_jitter_ms: self.latency_jitter_ms.unwrap_or(current.latency_jitter_ms),
            decline_rate: self.decline_rate.unwrap_or(current.decline_rate),
            transient_failure_rate: self
                .transient_failure_rate
                .unwrap_or(current.transient_failure_rate),
        };
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_environment() {
        // Env is process-global; this is the only test in the crate that loads settings.
        std::env::set_var("PAYSTREAM_PSP__DECLINE_RATE", "0.25");
        std::env::set_var("PAYSTREAM_PSP__LATENCY_MS", "7");
        let loaded = Settings::load();
        std::env::remove_var("PAYSTREAM_PSP__DECLINE_RATE");
        std::env::remove_var("PAYSTREAM_PSP__LATENCY_MS");
        let settings = loaded.unwrap();
        assert_eq!(settings.psp.decline_rate, 0.25);
        assert_eq!(settings.psp.latency_ms, 7);
        assert_eq!(settings.psp.transient_failure_rate, 0.0);
    }

    #[test]
    fn rates_outside_unit_interval_are_refused() {
        let ok = SimulatorSettings::default();
        assert!(ok.validate().is_ok());
        for bad in [-0.1, 1.5, f64::NAN] {
            let s = SimulatorSettings {
                decline_rate: bad,
                ..Default::default()
            };
            assert!(s.validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn patch_keeps_absent_fields_and_validates() {
        let current = SimulatorSettings {
            latency_ms: 5,
            ..Default::default()
        };
        let patch = ConfigPatch {
            decline_rate: Some(1.0),
            ..Default::default()
        };
        let next = patch.apply(&current).unwrap();
        assert_eq!(next.latency_ms, 5);
        assert_eq!(next.decline_rate, 1.0);

        let bad = ConfigPatch {
            transient_failure_rate: Some(2.0),
            ..Default::default()
        };
        assert_eq!(
            bad.apply(&current).unwrap_err().knob,
            "transient_failure_rate"
        );
    }

    #[test]
    fn misspelt_knob_is_refused() {
        assert!(serde_json::from_str::<ConfigPatch>(r#"{"decline_rte": 1.0}"#).is_err());
    }

    #[test]
    fn latency_stays_within_jitter_bounds() {
        let s = SimulatorSettings {
            latency_ms: 10,
            latency_jitter_ms: 5,
            ..Default::default()
        };
        for _ in 0..100 {
            let d = s.draw_latency().as_millis();
            assert!((10..=15).contains(&d), "{d}");
        }
        assert_eq!(SimulatorSettings::default().draw_latency(), Duration::ZERO);
    }
}
