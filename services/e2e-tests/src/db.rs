//! Database helpers on a test's schema: counts and [`PaymentsLock`], which holds requests inside
//! their transaction.

use std::time::Duration;

use sqlx::PgPool;

/// The result of a `SELECT count(*) …` in the test's schema.
pub async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Holds `LOCK TABLE payments IN EXCLUSIVE MODE` in the stack's schema until dropped or
/// [`PaymentsLock::release`]d: requests block inside their transaction, so a test can act while
/// one is in flight.
pub struct PaymentsLock(sqlx::Transaction<'static, sqlx::Postgres>);

impl PaymentsLock {
    pub async fn take(pool: &PgPool) -> anyhow::Result<Self> {
        let mut tx = pool.begin().await?;
        sqlx::query("LOCK TABLE payments IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        Ok(Self(tx))
    }

    /// Waits until `n` sessions wait for this lock.
    pub async fn wait_for_waiters(
        &self,
        pool: &PgPool,
        n: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                 WHERE NOT granted AND relation = to_regclass(current_schema() || '.payments')",
            )
            .fetch_one(pool)
            .await?;
            if waiting >= n {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{waiting} of {n} requests waiting on the payments lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn release(self) -> anyhow::Result<()> {
        Ok(self.0.commit().await?)
    }
}
