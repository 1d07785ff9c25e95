//! Building and stopping the application.

use paystream_core::config::HttpSettings;
use paystream_core::shutdown::Shutdown;
use paystream_psp_simulator::{Application, Settings, SimulatorSettings};

#[tokio::test]
async fn build_refuses_invalid_knobs() {
    let settings = Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        psp: SimulatorSettings {
            decline_rate: 2.0,
            ..Default::default()
        },
    };
    assert!(Application::build(settings).await.is_err());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let settings = Settings {
        http: HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        psp: SimulatorSettings::default(),
    };
    let app = Application::build(settings).await.unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    shutdown.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(result.is_ok());
}
