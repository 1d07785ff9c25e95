//! Building and running the HTTP server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use anyhow::Context;
use paystream_core::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::configuration::{ConfigPatch, InvalidSettings, Settings, SimulatorSettings};
use crate::ledger::Ledger;
use crate::routes::router;

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

pub(crate) type SharedState = Arc<AppState>;

pub(crate) struct AppState {
    /// A std mutex on purpose: every critical section is synchronous (decide and record,
    /// list, clear) and no `.await` ever happens under it — the simulated latency is slept
    /// before locking. Holding one map-level lock while deciding is also what guarantees
    /// that concurrent calls with one key charge once: the second caller sees the first's
    /// charge. The sections are microseconds long, so a per-key lock would buy nothing.
    ledger: Mutex<Ledger>,
    knobs: RwLock<SimulatorSettings>,
}

impl AppState {
    fn new(knobs: SimulatorSettings) -> Self {
        Self {
            ledger: Mutex::new(Ledger::default()),
            knobs: RwLock::new(knobs),
        }
    }

    // Poisoning is ignored: a panicking handler cannot leave the ledger half-updated in a
    // way that matters more than a simulator that stops answering.
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn knobs(&self) -> SimulatorSettings {
        self.knobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `patch` atomically with respect to other updates.
    pub(crate) fn update_knobs(
        &self,
        patch: &ConfigPatch,
    ) -> Result<SimulatorSettings, InvalidSettings> {
        let mut knobs = self.knobs.write().unwrap_or_else(PoisonError::into_inner);
        let next = patch.apply(&knobs)?;
        *knobs = next.clone();
        Ok(next)
    }
}
