use paystream_payment_processor::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before telemetry: the verdict is the only line on stdout.
    if paystream_core::config::check_requested() {
        std::process::exit(paystream_core::config::report_check(
            Application::load_settings_checked(),
        ));
    }
    let _telemetry = paystream_core::telemetry::init(Application::NAME)?;
    let settings = Application::load_settings()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(paystream_core::shutdown::on_signal())
        .await
}
