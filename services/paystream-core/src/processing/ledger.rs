//! The processed-events ledger (`processed_events`): which event ids a group applied, from
//! which record, and the outputs that record produced. Read and written a batch at a time, one
//! statement each, so a batch costs a handful of round trips whatever its size.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::{Output, Record};

/// An event the group already applied: where from, and what it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedEvent {
    pub position: (String, i32, i64),
    pub outputs: Vec<Output>,
    pub state_keys: Vec<String>,
}

impl AppliedEvent {
    /// Whether `record` is the very record that applied the event (a redelivery of it).
    pub fn applied_by(&self, record: &Record) -> bool {
        let (topic, partition, offset) = &self.position;
        *topic == record.topic && *partition == record.partition && *offset == record.offset
    }
}

/// The `outputs` column. Rows written before state keys existed hold a bare list of outputs.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Current {
        outputs: Vec<Output>,
        #[serde(default)]
        state_keys: Vec<String>,
    },
    OutputsOnly(Vec<Output>),
}

/// One applied record to write to the ledger.
pub struct Entry<'a> {
    pub event_id: Uuid,
    pub record: &'a Record,
    pub outputs: &'a [Output],
    pub state_keys: &'a [String],
}

/// The applied events among `event_ids`, in one query.
pub async fn applied(
    conn: &mut sqlx::PgConnection,
    group: &str,
    event_ids: &[Uuid],
) -> Result<HashMap<Uuid, AppliedEvent>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, String, i32, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT event_id, topic, partition, \"offset\", outputs FROM processed_events
         WHERE consumer_group = $1 AND event_id = ANY($2)",
    )
    .bind(group)
    .bind(event_ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, topic, partition, offset, stored)| {
            let (outputs, state_keys) = match serde_json::from_value(stored)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
            {
                Stored::Current {
                    outputs,
                    state_keys,
                } => (outputs, state_keys),
                Stored::OutputsOnly(outputs) => (outputs, Vec::new()),
            };
            Ok((
                id,
                AppliedEvent {
                    position: (topic, partition, offset),
                    outputs,
                    state_keys,
                },
            ))
        })
        .collect()
}

/// Records `entries` as applied, in one statement; returns the ids it inserted. An id missing
/// from the answer was recorded meanwhile by another instance (a zombie before it was fenced):
/// its effects and outputs stand, the caller's are dropped.
pub async fn record(
    conn: &mut sqlx::PgConnection,
    group: &str,
    entries: &[Entry<'_>],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ids = Vec::with_capacity(entries.len());
    let mut topics = Vec::with_capacity(entries.len());
    let mut partitions = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    let mut stored = Vec::with_capacity(entries.len());
    for e in entries {
        ids.push(e.event_id);
        topics.push(e.record.topic.clone());
        partitions.push(e.record.partition);
        offsets.push(e.record.offset);
        stored.push(
            serde_json::to_value(Stored::Current {
                outputs: e.outputs.to_vec(),
                state_keys: e.state_keys.to_vec(),
            })
            .map_err(|err| sqlx::Error::Encode(Box::new(err)))?,
        );
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer_group, event_id, topic, partition, \"offset\", outputs)
         SELECT $1, e.id, e.topic, e.partition, e.offset, e.outputs
         FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::int8[], $6::jsonb[])
              AS e(id, topic, partition, \"offset\", outputs)
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(group)
    .bind(&ids)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&stored)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_and_state_keys_survive_the_round_trip_and_old_rows_still_read() {
        let out = Output::event("t", "k", vec![0, 1, 2, 255], Uuid::nil(), "x.Y");
        let json = serde_json::to_value(Stored::Current {
            outputs: vec![out.clone()],
            state_keys: vec!["w".into()],
        })
        .unwrap();
        match serde_json::from_value(json).unwrap() {
            Stored::Current {
                outputs,
                state_keys,
            } => assert_eq!((outputs, state_keys), (vec![out.clone()], vec!["w".into()])),
            Stored::OutputsOnly(_) => panic!("read as the old form"),
        }
        let old = serde_json::to_value(vec![out.clone()]).unwrap();
        match serde_json::from_value(old).unwrap() {
            Stored::OutputsOnly(outputs) => assert_eq!(outputs, vec![out]),
            Stored::Current { .. } => panic!("old row read as the new form"),
        }
    }
}
