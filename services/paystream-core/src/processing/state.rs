//! The lock that orders producers of state records ([`super::Handler::state_outputs`]).
//!
//! Two instances can change the same state key (an analytics window) in overlapping batches.
//! Each produces the key's *current* state after its database commit, under a session
//! advisory lock per key held until its Kafka transaction has committed or aborted. The next
//! producer of the key waits, then reads a state at least as new: records of one key reach the
//! compacted topic in revision order, and an aborted transaction leaves nothing older behind.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// How long a batch waits for another instance's lock on a key before it aborts and retries.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Session advisory locks on a batch's state keys, on one pooled connection.
pub struct StateLock {
    /// `None` once released. Dropped while still held (the batch's future cancelled), the
    /// connection is closed rather than returned to the pool, so the locks go with it.
    conn: Option<PoolConnection<Postgres>>,
}

impl StateLock {
    /// Locks `keys`, in hash order so that two batches never wait on each
    /// other in a cycle.
    pub async fn acquire(pool: &PgPool, keys: &BTreeSet<String>) -> Result<Self, sqlx::Error> {
        let mut lock = Self {
            conn: Some(pool.acquire().await?),
        };
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // The wait bound first, on its own: within one statement the order in which Postgres
        // evaluates a setting and a subquery is not promised.
        sqlx::query("SELECT set_config('lock_timeout', $1, false)")
            .bind(format!("{}ms", LOCK_WAIT.as_millis()))
            .execute(lock.conn())
            .await?;
        sqlx::query(
            "SELECT pg_advisory_lock(h) FROM (
                 SELECT DISTINCT hashtextextended('state|' || k, 0) AS h
                 FROM unnest($1::text[]) AS k ORDER BY h) AS ordered",
        )
        .bind(&keys)
        .execute(lock.conn())
        .await?;
        Ok(lock)
    }

    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.conn
            .as_mut()
            .expect("a state lock is used only until released")
    }

    /// Releases every lock of the session; on failure the connection is closed instead.
    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let released =
            sqlx::query("SELECT pg_advisory_unlock_all(), set_config('lock_timeout', '0', false)")
                .execute(&mut *conn)
                .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing state locks failed; closing their connection");
            drop(conn.detach());
        }
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
