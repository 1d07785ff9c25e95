//! `make chaos`: the chaos soak ([`paystream_e2e_tests::chaos`]) with `CHAOS_PAYMENTS`
//! payments (default 100,000). Prints the verdict table, writes it to `.chaos/<time>.md`, and
//! exits 1 on any miss (2 when the soak could not run or its settings are wrong).

use std::process::ExitCode;

use paystream_e2e_tests::chaos::{self, ChaosPlan};

const DEFAULT_PAYMENTS: usize = 100_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let payments = match std::env::var("CHAOS_PAYMENTS") {
        Ok(s) => match s.replace('_', "").parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("chaos: CHAOS_PAYMENTS must be a whole number, not `{s}`");
                return ExitCode::from(2);
            }
        },
        Err(_) => DEFAULT_PAYMENTS,
    };
    let plan = match ChaosPlan::from_env(payments) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let verdict = match chaos::run(&plan).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("chaos: the soak could not run: {e:#}");
            return ExitCode::from(2);
        }
    };
    let table = verdict.table();
    println!("\n{table}");
    let dir = paystream_e2e_tests::repo_root().join(".chaos");
    let file = dir.join(format!(
        "{}-{}.md",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        plan.payments
    ));
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, &table)) {
        Ok(()) => println!("verdict written to {}", file.display()),
        Err(e) => eprintln!("chaos: could not write {}: {e}", file.display()),
    }
    if verdict.passed() {
        println!("chaos: PASSED");
        ExitCode::SUCCESS
    } else {
        println!("chaos: FAILED (see the MISS lines)");
        ExitCode::FAILURE
    }
}
