use paystream_schema_registry::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before telemetry: the verdict is the only line on stdout.
    if paystream_core::config::check_requested() {
        std::process::exit(paystream_core::config::report_check(
            Settings::load_checked(),
        ));
    }
    let _guard = paystream_core::telemetry::init("schema-registry")?;
    let settings = Settings::load()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
