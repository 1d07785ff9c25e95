//! Criterion's results (`CRITERION_HOME`), read back for the report.

use std::path::Path;

use serde::Deserialize;

use super::MicroResult;

#[derive(Deserialize)]
struct CriterionBenchmark {
    full_id: String,
}

#[derive(Deserialize)]
struct CriterionEstimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct CriterionEstimates {
    mean: CriterionEstimate,
}

/// The latest result of every benchmark criterion left under `dir` (`CRITERION_HOME`).
pub fn read_criterion(dir: &Path) -> Vec<MicroResult> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    if let Some(r) = read_one(&path) {
                        found.push(r);
                    }
                } else {
                    stack.push(path);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn read_one(new_dir: &Path) -> Option<MicroResult> {
    let bench: CriterionBenchmark =
        serde_json::from_slice(&std::fs::read(new_dir.join("benchmark.json")).ok()?).ok()?;
    let est: CriterionEstimates =
        serde_json::from_slice(&std::fs::read(new_dir.join("estimates.json")).ok()?).ok()?;
    Some(MicroResult {
        id: bench.full_id,
        mean_ns: est.mean.point_estimate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_estimates() {
        let dir = std::env::temp_dir().join(format!("paystream-crit-{}", std::process::id()));
        let new = dir.join("avro").join("encode").join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"full_id":"avro/encode","x":1}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":1234.5,"standard_error":1.0}}"#,
        )
        .unwrap();
        let results = read_criterion(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].id, "avro/encode");
        assert_eq!(results[0].mean_ns, 1234.5);
    }
}
