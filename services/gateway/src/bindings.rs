//! Client ↔ merchant bindings (`client_merchants`): the merchants an authenticated API client
//! may act for. With authentication on, `POST /v1/payments` and
//! `GET /v1/analytics/merchants/{id}/stats` for a merchant the client is not bound to are `403`
//! (`ApiError::MerchantForbidden`), the same answer whether or not the merchant exists. With
//! authentication off every request is the anonymous client and nothing is checked
//! ([`crate::auth::ClientId::merchant_to_check`]). The admin API (`routes::clients`) binds,
//! unbinds and lists through this module.
//!
//! Where the check runs, and why it needs no cache: the payment check is folded into the one
//! database call of a payment, before it takes the request's Idempotency-Key lock
//! (`idempotency::execute`, the function `idempotent_payment`): a lookup of this table's
//! primary key inside the round trip the request makes anyway, so a new payment costs no extra
//! round trip for it. Reading the table on every request (rather than caching
//! bindings per replica with a TTL) also makes an unbind effective at once on every replica:
//! a request whose check runs after the `DELETE` committed is refused. A request already past
//! its check may still commit (at most `gateway.request_timeout_ms` later). The statistics
//! route, not a hot path, checks with [`is_bound`] before its query.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A binding as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Binding {
    pub client_id: String,
    pub merchant_id: String,
    /// When the binding was made (a repeated `PUT` keeps the first time).
    pub bound_at: DateTime<Utc>,
}

/// Whether `client` may act for `merchant`.
pub async fn is_bound(pool: &PgPool, client: &str, merchant: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM client_merchants WHERE client_id = $1 AND merchant_id = $2)",
    )
    .bind(client)
    .bind(merchant)
    .fetch_one(pool)
    .await
}

/// Binds `client` to `merchant`; idempotent. Returns the binding and whether this call made it.
pub async fn bind(
    pool: &PgPool,
    client: &str,
    merchant: &str,
) -> Result<(Binding, bool), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Bound {
        #[sqlx(flatten)]
        binding: Binding,
        created: bool,
    }
    // The no-op update lets RETURNING yield an existing row too (DO NOTHING returns none), and
    // xmax = 0 only on a freshly inserted row: creation and repetition told apart in one
    // statement, also when two admins bind at once.
    let Bound { binding, created } = sqlx::query_as(
        "INSERT INTO client_merchants (client_id, merchant_id) VALUES ($1, $2)
         ON CONFLICT (client_id, merchant_id) DO UPDATE SET client_id = excluded.client_id
         RETURNING client_id, merchant_id, created_at AS bound_at, (xmax = 0) AS created",
    )
    .bind(client)
    .bind(merchant)
    .fetch_one(pool)
    .await?;
    Ok((binding, created))
}

/// Removes the binding; idempotent. Returns whether there was one.
pub async fn unbind(pool: &PgPool, client: &str, merchant: &str) -> Result<bool, sqlx::Error> {
    let deleted =
        sqlx::query("DELETE FROM client_merchants WHERE client_id = $1 AND merchant_id = $2")
            .bind(client)
            .bind(merchant)
            .execute(pool)
            .await?
            .rows_affected();
    Ok(deleted > 0)
}

/// Up to `limit` of `client`'s bindings in merchant id order, those after `after` (a page's
/// last merchant id) when given.
pub async fn list(
    pool: &PgPool,
    client: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Binding>, sqlx::Error> {
    sqlx::query_as(
        "SELECT client_id, merchant_id, created_at AS bound_at FROM client_merchants
         WHERE client_id = $1 AND ($2::text IS NULL OR merchant_id > $2)
         ORDER BY merchant_id LIMIT $3",
    )
    .bind(client)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
