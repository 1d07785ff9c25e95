//! The six targets of `make bench` (issue 15) and how one measurement is judged against
//! one: `report.json`'s `targets` array, one object per target with `name`, `value`, `unit`,
//! `target` and `met` (plus the ceilings of the same run and, when missed, the reason).
//! Pure: the stages measure, [`super::verdicts`] picks the numbers, this judges them.

use serde::Serialize;

/// How a value is compared with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparator {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
}

impl Comparator {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparator::AtLeast => value >= threshold,
            Comparator::Below => value < threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Comparator::AtLeast => ">=",
            Comparator::Below => "<",
        }
    }
}

/// One target as the issue states it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub unit: &'static str,
    pub comparator: Comparator,
    pub threshold: f64,
    /// Under what conditions it is measured.
    pub conditions: &'static str,
}

pub const PROCESSOR_TARGET_PER_S: f64 = 5_000.0;
pub const PROCESSOR_PSP50_TARGET_PER_S: f64 = 2_000.0;
pub const GATEWAY_TARGET_PER_S: f64 = 5_000.0;
pub const E2E_TARGET_RATE: f64 = 1_000.0;
pub const E2E_TARGET_P99_MS: f64 = 100.0;
pub const E2E_TARGET_DURATION_S: u64 = 60;
pub const ANALYTICS_TARGET_PER_S: f64 = 5_000.0;
pub const NOTIFIER_TARGET_PER_S: f64 = 1_000.0;

/// The targets, in the order the report lists them.
pub const SPECS: [Spec; 6] = [
    Spec {
        name: "processor_rps_psp0",
        unit: "records/s",
        comparator: Comparator::AtLeast,
        threshold: PROCESSOR_TARGET_PER_S,
        conditions: "payment processor, exactly-once, PSP at 0 ms",
    },
    Spec {
        name: "processor_rps_psp50",
        unit: "records/s",
        comparator: Comparator::AtLeast,
        threshold: PROCESSOR_PSP50_TARGET_PER_S,
        conditions: "payment processor, exactly-once, every PSP call taking 50 ms",
    },
    Spec {
        name: "gateway_rps",
        unit: "payments/s",
        comparator: Comparator::AtLeast,
        threshold: GATEWAY_TARGET_PER_S,
        conditions: "accepted payments, idempotency + durable outbox",
    },
    Spec {
        name: "e2e_p99_ms_at_1000",
        unit: "ms",
        comparator: Comparator::Below,
        threshold: E2E_TARGET_P99_MS,
        conditions: "p99 request → committed outcome, 1,000 payments/s for 60 s, PSP 10 ms, \
                     processor, analytics and notifier running",
    },
    Spec {
        name: "analytics_rps",
        unit: "events/s",
        comparator: Comparator::AtLeast,
        threshold: ANALYTICS_TARGET_PER_S,
        conditions: "analytics, exactly-once, pre-filled outcomes",
    },
    Spec {
        name: "notifier_rps_webhook20",
        unit: "outcomes/s",
        comparator: Comparator::AtLeast,
        threshold: NOTIFIER_TARGET_PER_S,
        conditions: "notifier, exactly-once, each webhook taking 20 ms",
    },
];

/// A ceiling measured in the same run (a probe), shown beside every target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ceiling {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// One target's verdict. `name`, `value`, `unit`, `target` and `met` are the issue's keys.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    /// `None` (JSON `null`): not measured in this run.
    pub value: Option<f64>,
    pub unit: String,
    /// The comparator and threshold as text, e.g. `>= 5000`.
    pub target: String,
    pub met: bool,
    pub comparator: Comparator,
    pub threshold: f64,
    pub conditions: String,
    /// How the value was obtained (stage, sizes, settings).
    pub measured: String,
    /// Cargo profile of the services measured.
    pub profile: String,
    pub ceilings: Vec<Ceiling>,
    /// For a missed target: why, from this run's numbers (CPU by process, profile, stage).
    pub reason: Option<String>,
}

/// What a stage measured for one target.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    pub value: Option<f64>,
    /// A condition of the target the stage did not fulfil (e.g. outcomes missing, a rate
    /// below the one the target is judged at): the target is not met whatever the value.
    pub problem: Option<String>,
    pub measured: String,
    /// Where the time or the CPU went, for the reason of a miss.
    pub why: String,
}

impl Target {
    pub fn judge(spec: &Spec, m: Measurement, profile: &str, ceilings: Vec<Ceiling>) -> Self {
        let holds = m
            .value
            .is_some_and(|v| v.is_finite() && spec.comparator.holds(v, spec.threshold));
        let met = holds && m.problem.is_none();
        let reason = (!met).then(|| {
            let mut parts = Vec::new();
            if m.value.is_none() {
                parts.push(format!("not measured: {}", m.measured));
            }
            parts.extend(m.problem.clone());
            if !m.why.is_empty() {
                parts.push(m.why.clone());
            }
            parts.push(format!("services built with the {profile} profile"));
            parts.join("; ")
        });
        Self {
            name: spec.name.to_string(),
            value: m.value,
            unit: spec.unit.to_string(),
            target: format!("{} {}", spec.comparator.symbol(), spec.threshold),
            met,
            comparator: spec.comparator,
            threshold: spec.threshold,
            conditions: spec.conditions.to_string(),
            measured: m.measured,
            profile: profile.to_string(),
            ceilings,
            reason,
        }
    }

    /// The line `make bench` prints for this target.
    pub fn line(&self) -> String {
        let value = self.value.map_or("not measured".to_string(), |v| {
            format!("{v:.1} {}", self.unit)
        });
        let ceilings: Vec<String> = self
            .ceilings
            .iter()
            .map(|c| format!("{} {:.0} {}", c.name, c.value, c.unit))
            .collect();
        format!(
            "{:<24} {:>22}  target {:<8} {:<8} [{} build; ceilings: {}]",
            self.name,
            value,
            self.target,
            if self.met { "met" } else { "NOT MET" },
            self.profile,
            if ceilings.is_empty() {
                "not measured".to_string()
            } else {
                ceilings.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> Spec {
        *SPECS.iter().find(|s| s.name == name).unwrap()
    }

    fn measured(value: f64) -> Measurement {
        Measurement {
            value: Some(value),
            measured: "test".into(),
            why: "CPU: postgres 0.9".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_six_targets_of_the_issue() {
        let names: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "processor_rps_psp0",
                "processor_rps_psp50",
                "gateway_rps",
                "e2e_p99_ms_at_1000",
                "analytics_rps",
                "notifier_rps_webhook20"
            ]
        );
    }

    #[test]
    fn at_least_targets_are_met_at_the_threshold() {
        let s = spec("processor_rps_psp0");
        let t = Target::judge(&s, measured(5_000.0), "release", Vec::new());
        assert!(t.met);
        assert_eq!(t.reason, None);
        let t = Target::judge(&s, measured(4_999.9), "release", Vec::new());
        assert!(!t.met);
        let reason = t.reason.unwrap();
        assert!(reason.contains("postgres 0.9"), "{reason}");
        assert!(reason.contains("release profile"), "{reason}");
    }

    #[test]
    fn below_targets_are_missed_at_the_threshold() {
        let s = spec("e2e_p99_ms_at_1000");
        assert!(Target::judge(&s, measured(99.9), "release", Vec::new()).met);
        assert!(!Target::judge(&s, measured(100.0), "release", Vec::new()).met);
    }

    #[test]
    fn a_problem_or_no_value_is_a_miss() {
        let s = spec("e2e_p99_ms_at_1000");
        let m = Measurement {
            problem: Some("12 outcomes missing".into()),
            ..measured(10.0)
        };
        let t = Target::judge(&s, m, "release", Vec::new());
        assert!(!t.met);
        assert!(t.reason.unwrap().contains("12 outcomes missing"));

        let m = Measurement {
            measured: "stage failed: no broker".into(),
            ..Default::default()
        };
        let t = Target::judge(&spec("gateway_rps"), m, "dev", Vec::new());
        assert!(!t.met);
        assert_eq!(t.value, None);
        assert!(t.reason.unwrap().starts_with("not measured: stage failed"));
        assert!(!Target::judge(&s, measured(f64::NAN), "release", Vec::new()).met);
    }

    #[test]
    fn json_has_the_issue_keys() {
        let ceilings = vec![Ceiling {
            name: "Kafka produce".into(),
            value: 300_000.0,
            unit: "records/s".into(),
        }];
        let t = Target::judge(
            &spec("notifier_rps_webhook20"),
            measured(1_200.0),
            "release",
            ceilings,
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["name"], "notifier_rps_webhook20");
        assert_eq!(json["value"], 1_200.0);
        assert_eq!(json["unit"], "outcomes/s");
        assert_eq!(json["target"], ">= 1000");
        assert_eq!(json["met"], true);
        assert_eq!(json["comparator"], ">=");
        assert_eq!(json["reason"], serde_json::Value::Null);
        assert_eq!(json["ceilings"][0]["name"], "Kafka produce");
        let unmeasured = Target::judge(
            &spec("gateway_rps"),
            Measurement::default(),
            "release",
            Vec::new(),
        );
        assert_eq!(
            serde_json::to_value(&unmeasured).unwrap()["value"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn lines_say_met_or_not() {
        let s = spec("analytics_rps");
        let line = Target::judge(&s, measured(6_000.0), "release", Vec::new()).line();
        assert!(line.starts_with("analytics_rps"), "{line}");
        assert!(
            line.contains("6000.0 events/s") && line.contains(" met "),
            "{line}"
        );
        let line = Target::judge(&s, measured(60.0), "release", Vec::new()).line();
        assert!(line.contains("NOT MET"), "{line}");
    }
}
