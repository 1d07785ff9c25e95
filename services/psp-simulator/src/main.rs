use paystream_psp_simulator::{Application, Settings, DEFAULTS_TOML};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _guard = paystream_core::telemetry::init("psp-simulator")?;
    let settings = paystream_core::config::load::<Settings>(DEFAULTS_TOML)?;
    let application = Application::build(settings).await?;
    application
        .run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
