use paystream_psp_simulator::{Application, Settings, DEFAULTS_TOML};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before telemetry: the verdict is the only line on stdout.
    if paystream_core::config::check_requested() {
        std::process::exit(paystream_core::config::report_check(
            paystream_core::config::load_checked::<Settings>(DEFAULTS_TOML),
        ));
    }
    let _guard = paystream_core::telemetry::init("psp-simulator")?;
    let settings = paystream_core::config::load::<Settings>(DEFAULTS_TOML)?;
    let application = Application::build(settings).await?;
    application
        .run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
