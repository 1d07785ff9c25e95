//! What a consumer group's business logic implements ([`Handler`]) and what the loop gives it.
//!
//! A record is handled in two parts:
//! - [`Handler::handle`] runs outside any database transaction, concurrently with the batch's
//!   records of other keys. It makes the outside calls (PSP, webhooks), each idempotent at its
//!   target or guarded by a claim, and returns the record's outputs and its *effect*.
//! - [`Handler::commit`] writes the effects of the batch's applied records in the one database
//!   transaction that records their event ids in `processed_events`, so exactly-once writes
//!   (counters, ledgers) commit together with the dedupe rows, in a few statements per batch.
//!
//! `handle` may run again for a record whose batch was aborted or cut short by its deadline;
//! what it does outside `commit` must be safe to repeat.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::avro::AvroCodec;
use crate::record::{Output, Record};

pub use super::settings::CallBudget;

/// How a handler failed; decides between retrying and dead-lettering.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later: timeouts, 5xx, a dependency down.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
    /// Will fail the same way every time: invalid data, a business rule.
    #[error("permanent failure: {0:#}")]
    Permanent(anyhow::Error),
    /// A dependency of every record is unreachable (the database: no connection, a restart).
    /// Not this record's fault: the loop aborts the batch and redoes it after a back-off,
    /// rather than spend the record's retry attempts (and dead-letter it) on an outage.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        if connection_lost(&e) {
            HandlerError::Unavailable(e.into())
        } else {
            HandlerError::Transient(e.into())
        }
    }
}

/// Whether `e` says the database cannot be reached, rather than that a statement failed: no
/// pooled connection in time, a broken connection, or SQLSTATE class 08 (connection
/// exception) / 57P (operator intervention: shutdown, restart).
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// What a handler sees besides its decoded event.
pub struct HandlerContext<'a> {
    /// For short statements of its own (claims, reads); never held across an outside call.
    pub pool: &'a PgPool,
    pub record: &'a Record,
    pub event_id: Uuid,
    /// Failed attempts before this one (0 on the input topic, k on `<group>.retry.k`).
    pub attempt: u32,
    pub codec: &'a AvroCodec,
    /// This instance's transactional id: the owner of the claims it takes. Only one live
    /// instance has it (a newer one fences the older), so a claim it holds is its own to redo.
    pub instance: &'a str,
}

/// What handling one record produced.
#[derive(Debug)]
pub struct Handled<E> {
    /// Records to produce with the record's offset; stored with its event id, so a redelivery
    /// of the same record re-produces exactly these.
    pub outputs: Vec<Output>,
    /// Written by [`Handler::commit`] with the record's `processed_events` row.
    pub effect: Option<E>,
    /// Keys of state records ([`Handler::state_outputs`]) this record changed.
    pub state_keys: Vec<String>,
}

impl<E> Handled<E> {
    pub fn outputs(outputs: Vec<Output>) -> Self {
        Self {
            outputs,
            effect: None,
            state_keys: Vec::new(),
        }
    }

    pub fn effect(effect: E) -> Self {
        Self {
            outputs: Vec::new(),
            effect: Some(effect),
            state_keys: Vec::new(),
        }
    }

    pub fn with_state_keys(mut self, keys: Vec<String>) -> Self {
        self.state_keys = keys;
        self
    }
}

/// The business logic of one consumer group.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    type Event: DeserializeOwned + Send + 'static;
    /// What [`Handler::commit`] writes for one applied record; `()` for handlers with none.
    type Effect: Send + 'static;

    /// The longest one record's outside calls can take, for the start-up check that a batch
    /// fits its transaction ([`super::LoopSettings::check_fits`]).
    fn call_budget(&self) -> Option<CallBudget> {
        None
    }

    /// Handles `event` outside any database transaction (see the module docs).
    async fn handle(
        &self,
        event: Self::Event,
        ctx: &HandlerContext<'_>,
    ) -> Result<Handled<Self::Effect>, HandlerError>;

    /// Writes the effects of the batch's newly applied records, in batch order, inside the
    /// transaction that records them as applied. An error aborts the whole batch.
    async fn commit(
        &self,
        _effects: Vec<Self::Effect>,
        _db: &mut sqlx::PgConnection,
    ) -> Result<(), HandlerError> {
        Ok(())
    }

    /// The current state records for `keys`, produced after the batch's database commit while
    /// the loop holds a lock per key until its Kafka transaction ends: whoever produces a key
    /// next reads a state at least as new, so a compacted topic never ends on an older one.
    async fn state_outputs(
        &self,
        _keys: &[String],
        _db: &mut sqlx::PgConnection,
        _codec: &AvroCodec,
    ) -> Result<Vec<Output>, HandlerError> {
        Ok(Vec::new())
    }
}

/// Encodes `value` and wraps it as an event [`Output`]; a convenience for handlers.
pub async fn event_output<T: Serialize>(
    codec: &AvroCodec,
    topic: &str,
    schema: &crate::events::SchemaFile,
    key: &str,
    event_id: Uuid,
    value: &T,
) -> Result<Output, HandlerError> {
    let bytes = codec.encode(topic, schema, value).await.map_err(|e| {
        if e.is_transient() {
            HandlerError::Transient(e.into())
        } else {
            HandlerError::Permanent(e.into())
        }
    })?;
    Ok(Output::event(topic, key, bytes, event_id, schema.full_name))
}
