//! The outbox worker: one step (`try_send_next`) plus a loop that sleeps when nothing is due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::transport::Transport;
use crate::store::{Delivery, Store, StoreError};
use crate::time::{self, Clock, Timestamp};
use lettre::message::Mailbox;

/// A claimed email is another worker's to retry after this (ours crashed mid-send).
const LEASE: Duration = Duration::from_secs(300);
/// One SMTP conversation may take at most this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often to look for due emails when nobody wakes us (other instances' emails, retries).
const POLL: Duration = Duration::from_secs(2);
/// Retries stop once an email is this old: SMTP down for a day loses nothing before that.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How long a stopping worker keeps delivering what is due.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Retrying,
    GaveUp,
    Empty,
}

/// The wait before try number `attempts + 1`: `first`, doubling, at most 10 minutes.
pub fn backoff(first: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    first.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

pub struct Outbox {
    store: Arc<dyn Store>,
    transport: Transport,
    from: Mailbox,
    first_retry: Duration,
    wake: Arc<Notify>,
    clock: Clock,
}

impl Outbox {
    pub fn new(
        store: Arc<dyn Store>,
        transport: Transport,
        from: Mailbox,
        first_retry: Duration,
        wake: Arc<Notify>,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            transport,
            from,
            first_retry,
            wake,
            clock,
        }
    }

    /// Claims one due email and tries to deliver it.
    pub async fn try_send_next(&self) -> Result<Outcome, StoreError> {
        let now = self.clock.now();
        let Some(email) = self
            .store
            .claim_email(now, now + time::duration(LEASE))
            .await?
        else {
            return Ok(Outcome::Empty);
        };
        let (Some(text), Some(html)) = (&email.text_body, &email.html_body) else {
            let delivery = Delivery::GiveUp {
                error: "no body to send".into(),
            };
            self.store.finish_email(email.id, &delivery, now).await?;
            return Ok(Outcome::GaveUp);
        };
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            self.transport
                .send(&self.from, &email.to_address, &email.subject, text, html),
        )
        .await;
        let (error, permanent) = match sent {
            Ok(Ok(())) => {
                self.store
                    .finish_email(email.id, &Delivery::Sent, self.clock.now())
                    .await?;
                tracing::info!(email = email.id, "email delivered");
                return Ok(Outcome::Sent);
            }
            Ok(Err(e)) => (e.to_string(), e.is_permanent()),
            Err(_) => ("timed out".to_owned(), false),
        };
        let now = self.clock.now();
        let (delivery, outcome) = if permanent || self.too_old(email.created_at, now) {
            tracing::error!(email = email.id, attempts = email.attempts, %error, "email given up");
            (Delivery::GiveUp { error }, Outcome::GaveUp)
        } else {
            let wait = backoff(self.first_retry, email.attempts);
            tracing::warn!(email = email.id, attempts = email.attempts, retry_in_secs = wait.as_secs(), %error, "email not delivered");
            let at = now + time::duration(wait);
            (Delivery::Retry { at, error }, Outcome::Retrying)
        };
        self.store.finish_email(email.id, &delivery, now).await?;
        Ok(outcome)
    }

    fn too_old(&self, created_at: Timestamp, now: Timestamp) -> bool {
        now - created_at >= time::duration(GIVE_UP_AFTER)
    }

    /// Delivers until `stop` turns true, then drains what is due for at most 30 s.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            match self.try_send_next().await {
                Ok(Outcome::Sent | Outcome::GaveUp | Outcome::Retrying) => continue,
                Ok(Outcome::Empty) => {}
                Err(e) => tracing::warn!(error = %e, "outbox unavailable"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                changed = stop.changed() => {
                    // The server is gone without a word: stop as if told to.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        let drain = async {
            while let Ok(Outcome::Sent | Outcome::GaveUp | Outcome::Retrying) =
                self.try_send_next().await
            {}
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!("outbox not drained within 30 s; the rest is sent after restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_30_seconds_and_is_capped_at_10_minutes() {
        let first = Duration::from_secs(15);
        assert_eq!(backoff(first, 1), Duration::from_secs(15));
        assert_eq!(backoff(first, 2), Duration::from_secs(30));
        assert_eq!(backoff(first, 3), Duration::from_secs(60));
        assert_eq!(backoff(first, 7), Duration::from_secs(600));
        assert_eq!(backoff(first, 500), Duration::from_secs(600));
        // Tries over the first 24 hours: enough that an hour-long outage loses nothing.
        let mut elapsed = Duration::ZERO;
        let mut tries = 0;
        while elapsed < GIVE_UP_AFTER {
            tries += 1;
            elapsed += backoff(first, tries);
        }
        assert!(tries > 100, "{tries}");
    }
}
