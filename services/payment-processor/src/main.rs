use paystream_payment_processor::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = paystream_core::telemetry::init(Application::NAME)?;
    let settings = Application::load_settings()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
