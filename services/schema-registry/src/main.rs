use paystream_schema_registry::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _guard = paystream_core::telemetry::init("schema-registry")?;
    let settings = Settings::load()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
