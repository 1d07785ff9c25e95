//! Wiring: database pool and migrations, listener, router, graceful shutdown.

use anyhow::Context;
use paystream_core::shutdown::Shutdown;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::configuration::Settings;
use crate::routes::router;
use crate::state::AppState;
use crate::store::Store;

/// A built registry: migrated database, bound listener. [`Application::run_until_stopped`]
/// serves it.
pub struct Application {
    listener: TcpListener,
    port: u16,
    pool: PgPool,
}

impl Application {
    /// Connects to Postgres, applies migrations and binds the listener (port 0 picks a free
    /// port; read it back with [`Application::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let pool = paystream_core::db::connect(&settings.database).await?;
        paystream_core::db::migrate(&pool).await?;
        let upgrade = Store::new(pool.clone())
            .upgrade_identities()
            .await
            .context("re-keying schemas stored under older identity rules")?;
        if upgrade != Default::default() {
            tracing::info!(
                rekeyed = upgrade.rekeyed,
                superseded = upgrade.superseded,
                "schema identities upgraded"
            );
        }
        let address = settings.http.address();
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let port = listener
            .local_addr()
            .context("reading the bound address")?
            .port();
        Ok(Application {
            listener,
            port,
            pool,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests and closes the
    /// pool.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let app = router(AppState {
            store: Store::new(self.pool.clone()),
        });
        tracing::info!(
            address = %self.listener.local_addr().context("reading the bound address")?,
            "schema registry listening"
        );
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving HTTP")?;
        self.pool.close().await;
        tracing::info!("schema registry stopped");
        Ok(())
    }
}
