//! `PaymentOutcome` → a signed webhook to the merchant and an e-mail to the customer, each at
//! most once per outcome event → `NotificationSent` receipts.
//!
//! Per channel: claim (committed) → send → record the result (committed); see
//! [`crate::deliveries`]. Both channels are attempted even if one fails, so one receiver's
//! outage does not hold back the other; the record then fails as a whole (transient if any
//! channel failed transiently) and the retry skips the channel already delivered. Receipts are
//! outputs of the successful run, so each is produced exactly once with a deterministic id.

use std::future::Future;

use async_trait::async_trait;
use paystream_core::events::{NotificationSent, PaymentOutcome, NOTIFICATION_SENT_SCHEMA};
use paystream_core::processing::{event_output, Handler, HandlerContext, HandlerError, Output};
use sqlx::PgPool;
use uuid::Uuid;

use crate::deliveries::{self, Channel, Claim, Delivered};
use crate::email::Mailer;
use crate::webhook::{self, SendError, WebhookClient};

pub struct NotifierHandler {
    /// For the delivery ledger, whose writes must outlive the handler's transaction.
    pub pool: PgPool,
    pub webhooks: WebhookClient,
    pub mailer: Mailer,
    pub receipts_topic: String,
}

#[derive(sqlx::FromRow)]
struct Merchant {
    webhook_url: Option<String>,
    notification_email: Option<String>,
    webhook_secret: String,
}

/// The receipt id of `channel`'s notification of event `source`.
pub fn receipt_id(source: Uuid, channel: Channel) -> Uuid {
    Uuid::new_v5(
        &paystream_core::events::EVENT_ID_NAMESPACE,
        format!("{source}/notification/{}", channel.as_str()).as_bytes(),
    )
}

impl NotifierHandler {
    /// Claims, sends and records one channel. The outer error is the ledger's (the record is
    /// retried); the inner one is the receiver's answer.
    async fn deliver<F, Fut>(
        &self,
        channel: Channel,
        event_id: Uuid,
        payment_id: Uuid,
        target: &str,
        send: F,
    ) -> Result<Result<Delivered, SendError>, HandlerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), SendError>>,
    {
        let claim = deliveries::claim(&self.pool, event_id, channel, payment_id, target).await?;
        let (attempts, in_doubt) = match claim {
            Claim::Delivered(d) => return Ok(Ok(d)),
            Claim::Send { attempts, in_doubt } => (attempts, in_doubt),
        };
        if in_doubt {
            tracing::warn!(%event_id, channel = channel.as_str(), attempts,
                "an earlier send was never resolved (crash); resending with the same id");
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

    async fn handle(
        &self,
        outcome: PaymentOutcome,
        ctx: &mut HandlerContext<'_>,
    ) -> Result<Vec<Output>, HandlerError> {
        let payment_id = Uuid::parse_str(&outcome.payment_id).map_err(|e| {
            HandlerError::Permanent(anyhow::anyhow!("payment_id is not a UUID: {e}"))
        })?;
        let event_id = ctx.event_id;
        let merchant: Option<Merchant> = sqlx::query_as(
            "SELECT webhook_url, notification_email, webhook_secret
             FROM merchants WHERE merchant_id = $1",
        )
        .bind(&outcome.merchant_id)
        .fetch_optional(&mut *ctx.db)
        .await?;
        let customer_email: Option<String> =
            sqlx::query_scalar("SELECT customer_email FROM payments WHERE id = $1")
                .bind(payment_id)
                .fetch_optional(&mut *ctx.db)
                .await?
                .flatten();

        let mut delivered = Vec::new();
        let mut failures = Vec::new();
        if let Some(m) = &merchant {
            if let Some(url) = &m.webhook_url {
                let body = webhook::body(&outcome);
                let id = event_id.to_string();
                let sent = self
                    .deliver(Channel::Webhook, event_id, payment_id, url, || {
                        self.webhooks.send(url, &m.webhook_secret, &id, body)
                    })
                    .await?;
                match sent {
                    Ok(d) => delivered.push((Channel::Webhook, d)),
                    Err(e) => failures.push((Channel::Webhook, e)),
                }
            }
        }
        if let Some(to) = &customer_email {
            let reply_to = merchant
                .as_ref()
                .and_then(|m| m.notification_email.as_deref());
            let sent = self
                .deliver(Channel::Email, event_id, payment_id, to, || {
                    self.mailer.send(to, reply_to, &outcome)
                })
                .await?;
            match sent {
                Ok(d) => delivered.push((Channel::Email, d)),
                Err(e) => failures.push((Channel::Email, e)),
            }
        }

        if !failures.is_empty() {
            let message = failures
                .iter()
                .map(|(c, e)| format!("{}: {e}", c.as_str()))
                .collect::<Vec<_>>()
                .join("; ");
            let transient = failures
                .iter()
                .any(|(_, e)| matches!(e, SendError::Transient(_)));
            return Err(if transient {
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
        Ok(outputs)
    }
}
