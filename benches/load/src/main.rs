//! `paystream-load`: see the crate docs and `paystream-load --help`.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Quiet by default: the in-process processor and simulator would log every payment, and
    // librdkafka warns that a consumer property given to the shared settings means nothing to
    // a producer.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,librdkafka=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    paystream_load::suite::execute(paystream_load::cli::Cli::parse()).await
}
