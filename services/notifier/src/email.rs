//! The outcome e-mail to the customer, over SMTP (`lettre`), rendered from a template.
//!
//! The Message-ID is derived from the outcome's event id, so a resend after a crash carries the
//! same id and a receiving MTA or mailbox can drop the copy.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use paystream_core::currency::format_minor;
use paystream_core::events::{OutcomeStatus, PaymentOutcome};

use crate::webhook::SendError;

// `{amount}` is the amount with its currency code, in the currency's own decimals
// ("19.99 EUR", "1999 JPY", "1.999 KWD"): `paystream_core::currency::format_minor`.
const SUBJECT_SUCCEEDED: &str = "Your payment of {amount} to {merchant} succeeded";
const SUBJECT_FAILED: &str = "Your payment of {amount} to {merchant} failed";
const BODY: &str = "Hello,

your payment {payment_id} of {amount} to {merchant} {status_text}.
{reason_line}
Reference: {payment_id}

-- 
Paystream, on behalf of {merchant}
";

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |s, (k, v)| {
        s.replace(&format!("{{{k}}}"), v)
    })
}

/// Subject and text body of the outcome e-mail.
pub fn render(outcome: &PaymentOutcome) -> (String, String) {
    let amount = format_minor(outcome.amount_minor, &outcome.currency);
    let (subject, status_text, reason_line) = match outcome.status {
        OutcomeStatus::Succeeded => (SUBJECT_SUCCEEDED, "succeeded", String::new()),
        OutcomeStatus::Failed => (
            SUBJECT_FAILED,
            "failed",
            format!(
                "Reason: {}\n",
                outcome.failure_reason.as_deref().unwrap_or("unknown")
            ),
        ),
    };
    let values = [
        ("amount", amount.as_str()),
        ("merchant", outcome.merchant_id.as_str()),
        ("payment_id", outcome.payment_id.as_str()),
        ("status_text", status_text),
        ("reason_line", reason_line.as_str()),
    ];
    (fill(subject, &values), fill(BODY, &values))
}

/// The Message-ID of the outcome e-mail for event `event_id`.
pub fn message_id(event_id: &str) -> String {
    format!("<{event_id}.outcome@paystream.invalid>")
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// Plain SMTP to `host:port` (a local relay or MTA; TLS and credentials are the relay's
    /// business in this deployment).
    pub fn new(host: &str, port: u16, timeout: Duration, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid sender address {from:?}: {e}"))?;
        Ok(Self { transport, from })
    }

    #[tracing::instrument(name = "smtp send", skip_all, fields(
        otel.kind = "client", event.id = %outcome.event_id, error.type = tracing::field::Empty))]
    pub async fn send(
        &self,
        to: &str,
        reply_to: Option<&str>,
        outcome: &PaymentOutcome,
    ) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("invalid recipient {to:?}: {e}")))?;
        let (subject, body) = render(outcome);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id(&outcome.event_id)))
            .header(ContentType::TEXT_PLAIN);
        // The merchant's notification address, so a customer's reply reaches the merchant.
        if let Some(reply_to) = reply_to.and_then(|r| r.parse::<Mailbox>().ok()) {
            builder = builder.reply_to(reply_to);
        }
        let message = builder
            .body(body)
            .map_err(|e| SendError::Permanent(format!("building the e-mail: {e}")))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| {
            tracing::Span::current().record(
                "error.type",
                if e.is_permanent() {
                    "permanent"
                } else {
                    "transient"
                },
            );
            if e.is_permanent() {
                SendError::Permanent(format!("SMTP refused the e-mail: {e}"))
            } else {
                SendError::Transient(format!("SMTP delivery failed: {e}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_outcome_into_the_template() {
        let outcome = PaymentOutcome {
            event_id: "e-1".into(),
            payment_id: "p-1".into(),
            merchant_id: "m_1".into(),
            customer_id: "c_1".into(),
            amount_minor: 1905,
            currency: "EUR".into(),
            status: OutcomeStatus::Failed,
            failure_reason: Some("expired_card".into()),
            psp_charge_id: None,
            requested_at: 0,
            decided_at: 0,
        };
        let (subject, body) = render(&outcome);
        assert_eq!(subject, "Your payment of 19.05 EUR to m_1 failed");
        assert!(
            body.contains("payment p-1 of 19.05 EUR to m_1 failed."),
            "{body}"
        );
        assert!(body.contains("Reason: expired_card"));
        assert!(!body.contains('{'), "every placeholder filled: {body}");
        assert_eq!(message_id("e-1"), "<e-1.outcome@paystream.invalid>");
    }

    #[test]
    fn renders_the_amount_in_the_currency_s_minor_unit() {
        let outcome = |amount_minor, currency: &str| PaymentOutcome {
            event_id: "e-1".into(),
            payment_id: "p-1".into(),
            merchant_id: "m_1".into(),
            customer_id: "c_1".into(),
            amount_minor,
            currency: currency.into(),
            status: OutcomeStatus::Succeeded,
            failure_reason: None,
            psp_charge_id: None,
            requested_at: 0,
            decided_at: 0,
        };
        // JPY has no minor unit: 1999 minor units are 1999 yen, not 19.99.
        let (subject, body) = render(&outcome(1999, "JPY"));
        assert_eq!(subject, "Your payment of 1999 JPY to m_1 succeeded");
        assert!(
            body.contains("payment p-1 of 1999 JPY to m_1 succeeded."),
            "{body}"
        );
        // KWD has three decimals.
        let (subject, _) = render(&outcome(1999, "KWD"));
        assert_eq!(subject, "Your payment of 1.999 KWD to m_1 succeeded");
    }
}
