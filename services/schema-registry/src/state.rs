//! The state every handler shares: the store over the registry's Postgres pool. Built by
//! `startup`, read by `routes`.

use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
}
