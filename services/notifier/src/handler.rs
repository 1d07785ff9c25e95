//! `PaymentOutcome` → a signed webhook to the merchant and an e-mail to the customer, each at
//! most once per outcome event → `NotificationSent` receipts.
//!
//! Per channel: a send slot toward the target host ([`crate::limits`]) → claim with a lease
//! (committed) → send, outside any transaction → record the result (committed); see
//! [`crate::deliveries`]. A channel another live instance has claimed is not sent: it fails
//! transiently (below), so its record comes back through the retry chain. Both channels are attempted even if one fails, so one receiver's
//! outage does not hold back the other, and each channel is judged on its own:
//!
//! - every channel attempted failed, and failed alike (both transient, both permanent, or the
//!   only one there is): the record fails as a whole, transient or permanent, and the loop
//!   retries or dead-letters it; nothing is applied, and the retry (or an operator's replay)
//!   skips whatever the ledger already has as delivered;
//! - otherwise (a channel delivered next to a failed one, or one failed transiently and the
//!   other permanently): the record is applied. The delivered channels' receipts are its
//!   outputs, committed with its offset, and each failed channel is *split off*
//!   ([`split_off`]): a copy of the record for that channel alone, routed by the group's
//!   [`RetryPolicy`] exactly as the loop routes a failed record (next retry topic or the
//!   dead-letter topic, standard failure headers), produced in the same transaction. The loop
//!   cannot return outputs and dead-letter a record at once, so the handler addresses the
//!   failed part itself.
//!
//! A split-off record carries [`CHANNEL_HEADER`], [`SOURCE_EVENT_HEADER`] and an event id of its
//! own ([`channel_record_id`]; the outcome's is now recorded as applied, so a copy carrying it
//! would be skipped as a duplicate), and notifies only its channel, under the outcome's event id:
//! the same ledger row, webhook event id, Message-ID and receipt id. Receipts are outputs of the
//! run that delivers (or finds delivered) their channel, so each is produced exactly once with a
//! deterministic id.

use std::future::Future;

use async_trait::async_trait;
use paystream_core::events::{NotificationSent, PaymentOutcome, NOTIFICATION_SENT_SCHEMA};
use paystream_core::headers;
use paystream_core::processing::Record;
use paystream_core::processing::{
    event_output, Handled, Handler, HandlerContext, HandlerError, Output,
};
use paystream_core::retry::{Failure, FailureClass, RetryPolicy};
use paystream_core::secrets::SecretBox;
use sqlx::PgPool;
use uuid::Uuid;

use crate::deliveries::{self, Channel, Claim, Delivered};
use crate::email::Mailer;
use crate::limits::HostLimits;
use crate::webhook::{self, SendError, WebhookClient};

pub struct NotifierHandler {
    /// For the delivery ledger, whose writes must outlive the handler's transaction.
    pub pool: PgPool,
    /// Opens the merchants' sealed webhook secrets.
    pub secrets: SecretBox,
    pub webhooks: WebhookClient,
    pub mailer: Mailer,
    pub receipts_topic: String,
    /// The group's retry chain and dead-letter topic, where a failed channel of a mixed result
    /// is sent on its own ([`split_off`]).
    pub retry: RetryPolicy,
    /// How long a delivery claim keeps other instances from resending (`notifier.claim_lease_ms`).
    pub lease: std::time::Duration,
    /// Send slots per target host (`notifier.max_concurrent_per_host`).
    pub hosts: HostLimits,
    /// The SMTP relay every e-mail goes through: the e-mail channel's target host.
    pub smtp_host: String,
}

#[derive(sqlx::FromRow)]
struct Merchant {
    webhook_url: Option<String>,
    notification_email: Option<String>,
    /// Sealed (see [`paystream_core::secrets`]).
    webhook_secret: String,
    /// The secret a rotation replaced, sealed, while its overlap window lasts.
    previous_webhook_secret: Option<String>,
}

impl Merchant {
    /// The secrets to sign with, opened: the current one, then the previous one during a
    /// rotation's overlap window. A value that does not open is a transient failure of the
    /// channel (e.g. a row the gateway has not sealed yet, or a key being fixed).
    fn signing_secrets(
        &self,
        merchant_id: &str,
        box_: &SecretBox,
    ) -> Result<Vec<String>, SendError> {
        std::iter::once(&self.webhook_secret)
            .chain(self.previous_webhook_secret.as_ref())
            .map(|sealed| {
                box_.open(sealed, merchant_id).map_err(|e| {
                    SendError::Transient(format!("webhook secret of {merchant_id}: {e}"))
                })
            })
            .collect()
    }
}

/// The receipt id of `channel`'s notification of event `source`.
pub fn receipt_id(source: Uuid, channel: Channel) -> Uuid {
    Uuid::new_v5(
        &paystream_core::events::EVENT_ID_NAMESPACE,
        format!("{source}/notification/{}", channel.as_str()).as_bytes(),
    )
}

/// On a record split off for one channel: which channel ([`Channel::as_str`]).
pub const CHANNEL_HEADER: &str = "paystream.notifier.channel";
/// On a record split off for one channel: the outcome event id it notifies.
pub const SOURCE_EVENT_HEADER: &str = "paystream.notifier.source_event_id";

/// The event id of the record that carries `channel`'s notification of event `source` alone.
pub fn channel_record_id(source: Uuid, channel: Channel) -> Uuid {
    Uuid::new_v5(
        &paystream_core::events::EVENT_ID_NAMESPACE,
        format!("{source}/notification/{}/split", channel.as_str()).as_bytes(),
    )
}

/// What a record asks the notifier to do: notify outcome event `source` on every channel, or,
/// split off ([`split_off`]), on `only` that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub source: Uuid,
    pub only: Option<Channel>,
}

impl Scope {
    /// The scope of `record`, whose event id is `event_id`.
    pub fn of(record: &Record, event_id: Uuid) -> Result<Self, HandlerError> {
        let Some(name) = record.headers.get(CHANNEL_HEADER) else {
            return Ok(Self {
                source: event_id,
                only: None,
            });
        };
        let bad = |what: String| HandlerError::Permanent(anyhow::anyhow!(what));
        let channel =
            Channel::parse(name).ok_or_else(|| bad(format!("{CHANNEL_HEADER}: {name:?}")))?;
        let source = record
            .headers
            .get(SOURCE_EVENT_HEADER)
            .and_then(|v| Uuid::parse_str(v).ok())
            .ok_or_else(|| bad(format!("{SOURCE_EVENT_HEADER} missing or not a UUID")))?;
        Ok(Self {
            source,
            only: Some(channel),
        })
    }

    pub fn includes(&self, channel: Channel) -> bool {
        self.only.is_none_or(|c| c == channel)
    }
}

/// `record` (notifying event `source`), for `channel` alone, readdressed after that channel
/// failed with `error`: the retry chain's next topic or the dead-letter topic, with the standard
/// failure headers ([`RetryPolicy::route`]), so retries and `paystream dlq replay` handle it like
/// any failed record, and deliver that channel only.
pub fn split_off(
    policy: &RetryPolicy,
    record: &Record,
    source: Uuid,
    channel: Channel,
    error: &SendError,
) -> Output {
    let mut single = record.clone();
    single.headers.set(CHANNEL_HEADER, channel.as_str());
    single.headers.set(SOURCE_EVENT_HEADER, source.to_string());
    single.headers.set(
        headers::EVENT_ID,
        channel_record_id(source, channel).to_string(),
    );
    let failure = Failure {
        class: match error {
            SendError::Transient(_) => FailureClass::Transient,
            SendError::Permanent(_) => FailureClass::Permanent,
        },
        message: format!("{}: {error}", channel.as_str()),
    };
    let forward = policy.route(&single, &failure, chrono::Utc::now().timestamp_millis());
    tracing::warn!(event_id = %source, channel = channel.as_str(), to = %forward.output.topic,
        error = %failure.message, "notification channel failed; split off from the delivered one");
    forward.output
}

impl NotifierHandler {
    /// Claims, sends and records one channel, sending to `host` (`target`'s host). The outer
    /// error is the ledger's (the record is retried); the inner one is the receiver's answer,
    /// or a transient failure when another live instance holds the claim.
    #[allow(clippy::too_many_arguments)]
    async fn deliver<F, Fut>(
        &self,
        ctx: &HandlerContext<'_>,
        channel: Channel,
        event_id: Uuid,
        payment_id: Uuid,
        target: &str,
        host: &str,
        send: F,
    ) -> Result<Result<Delivered, SendError>, HandlerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), SendError>>,
    {
        // The slot first: the lease then covers the send alone, not the wait for a slot.
        let _slot = self.hosts.acquire(host).await;
        let claim = deliveries::claim(
            &self.pool,
            event_id,
            channel,
            payment_id,
            target,
            ctx.instance,
            self.lease,
        )
        .await?;
        let (attempts, in_doubt) = match claim {
            Claim::Delivered(d) => return Ok(Ok(d)),
            Claim::Held { by, until } => {
                return Ok(Err(SendError::Transient(format!(
                    "{} notification of {event_id} is being sent by {by} (claimed until {until})",
                    channel.as_str()
                ))))
            }
            Claim::Send { attempts, in_doubt } => (attempts, in_doubt),
        };
        if in_doubt {
            tracing::warn!(%event_id, channel = channel.as_str(), attempts,
                "an earlier send was never resolved (its sender died or its batch aborted); \
                 resending with the same id");
        }
        match send().await {
            Ok(()) => {
                let d = deliveries::delivered(&self.pool, event_id, channel).await?;
                tracing::info!(%event_id, %payment_id, channel = channel.as_str(), attempts,
                    "notification delivered");
                Ok(Ok(d))
            }
            Err(e) => {
                deliveries::failed(&self.pool, event_id, channel, &e.to_string()).await?;
                Ok(Err(e))
            }
        }
    }
}

#[async_trait]
impl Handler for NotifierHandler {
    type Event = PaymentOutcome;
    type Effect = ();

    async fn handle(
        &self,
        outcome: PaymentOutcome,
        ctx: &HandlerContext<'_>,
    ) -> Result<Handled<()>, HandlerError> {
        let payment_id = Uuid::parse_str(&outcome.payment_id).map_err(|e| {
            HandlerError::Permanent(anyhow::anyhow!("payment_id is not a UUID: {e}"))
        })?;
        // The outcome event this record notifies, and on which channels.
        let scope = Scope::of(ctx.record, ctx.event_id)?;
        let event_id = scope.source;
        let merchant: Option<Merchant> = sqlx::query_as(
            "SELECT webhook_url, notification_email, webhook_secret,
                 CASE WHEN previous_secret_expires_at > now() THEN previous_webhook_secret END
                     AS previous_webhook_secret
             FROM merchants WHERE merchant_id = $1",
        )
        .bind(&outcome.merchant_id)
        .fetch_optional(ctx.pool)
        .await?;
        let customer_email: Option<String> =
            sqlx::query_scalar("SELECT customer_email FROM payments WHERE id = $1")
                .bind(payment_id)
                .fetch_optional(ctx.pool)
                .await?
                .flatten();

        let mut delivered = Vec::new();
        let mut failures = Vec::new();
        if let Some(m) = merchant
            .as_ref()
            .filter(|_| scope.includes(Channel::Webhook))
        {
            if let Some(url) = &m.webhook_url {
                let body = webhook::body(&outcome);
                let id = event_id.to_string();
                let sent = match m.signing_secrets(&outcome.merchant_id, &self.secrets) {
                    Ok(secrets) => {
                        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
                        let host = crate::limits::url_host(url);
                        self.deliver(
                            ctx,
                            Channel::Webhook,
                            event_id,
                            payment_id,
                            url,
                            &host,
                            || self.webhooks.send(url, &secrets, &id, body),
                        )
                        .await?
                    }
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(d) => delivered.push((Channel::Webhook, d)),
                    Err(e) => failures.push((Channel::Webhook, e)),
                }
            }
        }
        if let Some(to) = customer_email
            .as_ref()
            .filter(|_| scope.includes(Channel::Email))
        {
            let reply_to = merchant
                .as_ref()
                .and_then(|m| m.notification_email.as_deref());
            let sent = self
                .deliver(
                    ctx,
                    Channel::Email,
                    event_id,
                    payment_id,
                    to,
                    &self.smtp_host,
                    || self.mailer.send(to, reply_to, &outcome),
                )
                .await?;
            match sent {
                Ok(d) => delivered.push((Channel::Email, d)),
                Err(e) => failures.push((Channel::Email, e)),
            }
        }

        // Each channel is judged on its own: the record fails as a whole only when nothing was
        // delivered and every failure is of one kind; otherwise see `split_off` below.
        let transient = |e: &SendError| matches!(e, SendError::Transient(_));
        let alike = failures.iter().all(|(_, e)| {
            failures
                .first()
                .is_some_and(|(_, f)| transient(e) == transient(f))
        });
        if delivered.is_empty() && !failures.is_empty() && alike {
            let message = failures
                .iter()
                .map(|(c, e)| format!("{}: {e}", c.as_str()))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(if transient(&failures[0].1) {
                HandlerError::Transient(anyhow::anyhow!(message))
            } else {
                HandlerError::Permanent(anyhow::anyhow!(message))
            });
        }

        let mut outputs = Vec::with_capacity(delivered.len());
        for (channel, d) in delivered {
            let id = receipt_id(event_id, channel);
            let receipt = NotificationSent {
                event_id: id.to_string(),
                source_event_id: event_id.to_string(),
                payment_id: outcome.payment_id.clone(),
                merchant_id: outcome.merchant_id.clone(),
                channel: channel.as_str().to_string(),
                target: d.target,
                attempts: d.attempts,
                in_doubt_resends: d.in_doubt_resends,
                delivered_at: d.delivered_at.timestamp_millis(),
            };
            outputs.push(
                event_output(
                    ctx.codec,
                    &self.receipts_topic,
                    &NOTIFICATION_SENT_SCHEMA,
                    &outcome.payment_id,
                    id,
                    &receipt,
                )
                .await?,
            );
        }
        // Each failed channel goes on alone, in this transaction: the delivered channels'
        // receipts do not wait for it, and its retries and replays do not touch them.
        for (channel, error) in &failures {
            outputs.push(split_off(
                &self.retry,
                ctx.record,
                event_id,
                *channel,
                error,
            ));
        }
        Ok(Handled::outputs(outputs))
    }
}

#[cfg(test)]
mod split_off_tests {
    use std::time::Duration;

    use paystream_core::headers::RecordHeaders;
    use paystream_core::retry;

    use super::*;

    fn outcome_record(event_id: Uuid) -> Record {
        let mut headers = RecordHeaders::default();
        headers.set(headers::EVENT_ID, event_id.to_string());
        Record {
            topic: "payments.outcomes.v1".into(),
            partition: 3,
            offset: 17,
            timestamp_ms: Some(1_000),
            key: Some(b"p-1".to_vec()),
            payload: Some(vec![0, 0, 0, 0, 1, 2, 3]),
            headers,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new("notifier", vec![Duration::from_secs(1)], "notifier.dlq")
    }

    /// The record an output becomes once consumed from `topic`.
    fn consumed(output: &Output, topic: &str, headers: RecordHeaders) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            offset: 90,
            timestamp_ms: Some(2_000),
            key: output.key.clone(),
            payload: output.value.clone(),
            headers,
        }
    }

    #[test]
    fn an_outcome_as_published_is_for_every_channel() {
        let id = Uuid::new_v4();
        let scope = Scope::of(&outcome_record(id), id).unwrap();
        assert_eq!(
            scope,
            Scope {
                source: id,
                only: None
            }
        );
        assert!(scope.includes(Channel::Webhook) && scope.includes(Channel::Email));
    }

    #[test]
    fn a_permanently_failed_channel_is_dead_lettered_alone_and_replays_as_itself() {
        let source = Uuid::new_v4();
        let record = outcome_record(source);
        let error = SendError::Permanent("webhook answered HTTP 400 Bad Request".into());
        let dead = split_off(&policy(), &record, source, Channel::Webhook, &error);
        assert_eq!(dead.topic, "notifier.dlq");
        assert_eq!((&dead.key, &dead.value), (&record.key, &record.payload));
        let h = &dead.headers;
        assert_eq!(h.get(CHANNEL_HEADER), Some("webhook"));
        assert_eq!(
            h.get(SOURCE_EVENT_HEADER),
            Some(source.to_string().as_str())
        );
        let own = channel_record_id(source, Channel::Webhook);
        assert_eq!(h.get(headers::EVENT_ID), Some(own.to_string().as_str()));
        for other in [
            source,
            channel_record_id(source, Channel::Email),
            receipt_id(source, Channel::Webhook),
        ] {
            assert_ne!(own, other);
        }
        // The standard failure headers, as the loop sets them on a dead letter.
        assert_eq!(h.get(headers::ERROR_CLASS), Some("permanent"));
        assert_eq!(
            h.get(headers::ERROR_MESSAGE),
            Some("webhook: webhook answered HTTP 400 Bad Request")
        );
        assert_eq!(h.get(headers::ATTEMPT), Some("1"));
        assert_eq!(h.get(headers::ORIGINAL_TOPIC), Some("payments.outcomes.v1"));
        assert_eq!(h.get(headers::ORIGINAL_PARTITION), Some("3"));
        assert_eq!(h.get(headers::ORIGINAL_OFFSET), Some("17"));
        assert_eq!(h.get(headers::CONSUMER_GROUP), Some("notifier"));
        // An operator's replay puts it back on the outcomes topic, a fresh chain, with an event
        // id the loop has not applied, still for the webhook alone, of the same outcome.
        let replayed = consumed(
            &dead,
            "payments.outcomes.v1",
            retry::replay_headers(&dead.headers, own, 1),
        );
        assert_eq!(replayed.event_id(), own);
        assert_eq!(retry::attempt_of(&replayed.headers), 0);
        let scope = Scope::of(&replayed, replayed.event_id()).unwrap();
        assert_eq!(
            scope,
            Scope {
                source,
                only: Some(Channel::Webhook)
            }
        );
        assert!(!scope.includes(Channel::Email));
    }

    #[test]
    fn a_transiently_failed_channel_walks_the_retry_chain_alone() {
        let source = Uuid::new_v4();
        let error = SendError::Transient("SMTP delivery failed: timed out".into());
        let first = split_off(
            &policy(),
            &outcome_record(source),
            source,
            Channel::Email,
            &error,
        );
        assert_eq!(first.topic, "notifier.retry.1");
        assert!(first.headers.get(headers::DUE_AT_MS).is_some());
        assert_eq!(first.headers.get(headers::ERROR_CLASS), Some("transient"));
        // Failing again there, the record (handled as a whole: it has one channel) goes on as it
        // stands: to the dead-letter topic, channel and outcome kept.
        let on_retry = consumed(&first, "notifier.retry.1", first.headers.clone());
        let scope = Scope::of(&on_retry, on_retry.event_id()).unwrap();
        assert_eq!(
            scope,
            Scope {
                source,
                only: Some(Channel::Email)
            }
        );
        let failure = Failure {
            class: FailureClass::Transient,
            message: "email: SMTP delivery failed".into(),
        };
        let dead = policy().route(&on_retry, &failure, 0).output;
        assert_eq!(dead.topic, "notifier.dlq");
        assert_eq!(dead.headers.get(CHANNEL_HEADER), Some("email"));
        assert_eq!(dead.headers.get(headers::ATTEMPT), Some("2"));
        assert_eq!(
            dead.headers.get(headers::ORIGINAL_TOPIC),
            Some("payments.outcomes.v1")
        );
    }

    #[test]
    fn a_malformed_split_off_record_is_a_permanent_failure() {
        let id = Uuid::new_v4();
        let mut unknown = outcome_record(id);
        unknown.headers.set(CHANNEL_HEADER, "pigeon");
        unknown.headers.set(SOURCE_EVENT_HEADER, id.to_string());
        let mut sourceless = outcome_record(id);
        sourceless.headers.set(CHANNEL_HEADER, "email");
        for record in [unknown, sourceless] {
            assert!(matches!(
                Scope::of(&record, id),
                Err(HandlerError::Permanent(_))
            ));
        }
    }
}
