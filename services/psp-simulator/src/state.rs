//! The state every handler shares: the ledger and the behaviour knobs. Built by `startup`,
//! read by `routes`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::configuration::{ConfigPatch, InvalidSettings, SimulatorSettings};
use crate::ledger::Ledger;

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
    pub(crate) fn new(knobs: SimulatorSettings) -> Self {
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
