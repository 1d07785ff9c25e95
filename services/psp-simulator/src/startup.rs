//! Building and running the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use paystream_core::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::configuration::Settings;
use crate::routes::router;
use crate::state::{AppState, SharedState};

/// A bound, not yet serving, simulator.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: SharedState,
}

impl Application {
    /// Validates the knobs and binds the listener (`port = 0` picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.psp.validate().context("invalid [psp] settings")?;
        let address = settings.http.address();
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        Ok(Application {
            listener,
            addr,
            state: Arc::new(AppState::new(settings.psp)),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://host:port` to reach this instance from the same machine (a wildcard bind
    /// address is reached through loopback).
    pub fn base_url(&self) -> String {
        let ip = self.addr.ip();
        if ip.is_unspecified() {
            format!("http://127.0.0.1:{}", self.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        tracing::info!(address = %self.addr, "psp-simulator listening");
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving HTTP")?;
        tracing::info!("psp-simulator stopped");
        Ok(())
    }
}
