use paystream_analytics::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = paystream_core::telemetry::init("analytics")?;
    let settings = Settings::load()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
