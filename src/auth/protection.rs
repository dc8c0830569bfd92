//! Sign-in records and rate limits. Counters live in the database, so several instances
//! behind a load balancer share them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Auth, ClientInfo};
use crate::error::Error;
use crate::geo::ipinfo::Located;
use crate::store::{
    AccountAttempt, AttemptOutcome, AttemptReservation, AttemptResult, CountedAs, LocationLogId,
    Prune, RateKey, Reservation, SignInLimits, User,
};
pub(super) use crate::store::{Attempt, AttemptId};
use crate::time::{self, Timestamp};

/// Create-account, forgot-password and resend-verification limits count per hour.
const HOUR: Duration = Duration::from_secs(3600);

/// `Retry-After` for a window that frees when its oldest counted event leaves it.
fn retry_after(oldest: Option<Timestamp>, window: Duration, now: Timestamp) -> Error {
    let frees_at = oldest.unwrap_or(now) + time::duration(window);
    let secs = (frees_at - now).num_seconds().max(1);
    Error::TooManyRequests {
        retry_after_secs: u64::try_from(secs).unwrap_or(1),
    }
}

/// The key under which a client is counted; a request without a peer address (not over TCP)
/// is counted as one anonymous client.
pub(super) fn ip_key(client: &ClientInfo) -> String {
    client
        .ip
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

impl Auth {
    /// Drops rate-limit records that no window reaches any more (a key that is never used
    /// again would otherwise keep its rows for ever).
    pub async fn prune_rate_limits(&self) -> Result<u64, Error> {
        let before = self.clock.now() - time::duration(HOUR);
        Ok(self.store.prune_rate_limits(before).await?)
    }

    /// Records the attempt before the password is judged, counted as a failure until it
    /// ends otherwise, atomically with the check of the limits: parallel guesses cannot all
    /// slip under them. For an account, failures by its username and its email count
    /// together. A refused attempt is answered 429 and recorded nowhere. With the limits off
    /// nothing needs to count it early: it is written once, when it ends.
    pub(super) async fn reserve_attempt(
        &self,
        identifier: &str,
        account: Option<&User>,
        client: &ClientInfo,
    ) -> Result<Attempt, Error> {
        if !self.config.limits.enabled {
            return Ok(Attempt::Deferred {
                identifier: identifier.to_owned(),
            });
        }
        Ok(Attempt::Reserved(
            self.write_attempt(identifier, account, client).await?,
        ))
    }

    /// A deferred attempt written now, for a step that keeps its id (a second-factor
    /// challenge, a social sign-in's one-time code).
    pub(super) async fn written_attempt(
        &self,
        attempt: Attempt,
        client: &ClientInfo,
    ) -> Result<AttemptId, Error> {
        match attempt {
            Attempt::Reserved(id) => Ok(id),
            Attempt::Deferred { identifier } => {
                // Only with the limits off, where nothing counts by account.
                debug_assert!(!self.config.limits.enabled);
                self.write_attempt(&identifier, None, client).await
            }
        }
    }

    /// Writes the attempt as a counted failure, checking the limits first when they are on.
    async fn write_attempt(
        &self,
        identifier: &str,
        account: Option<&User>,
        client: &ClientInfo,
    ) -> Result<AttemptId, Error> {
        let limits = &self.config.limits;
        let now = self.clock.now();
        let counted_as = match account {
            Some(user) => CountedAs::Account {
                username: user.username.to_lowercase(),
                email: user.email.to_lowercase(),
            },
            None => CountedAs::Identifier(identifier.to_owned()),
        };
        let reservation = self
            .store
            .reserve_sign_in(&AttemptReservation {
                identifier: identifier.to_owned(),
                counted_as,
                ip: ip_key(client),
                limits: limits.enabled.then_some(SignInLimits {
                    per_account_and_ip: limits.login_max_failures,
                    per_account: limits.login_max_failures_per_account,
                    per_ip: limits.login_max_failures_per_ip,
                }),
                since: now - time::duration(limits.login_window),
                known_since: now - time::duration(self.config.refresh_token_ttl),
                now,
            })
            .await?;
        match reservation {
            Reservation::Granted { attempt_id } => Ok(attempt_id),
            Reservation::Refused { oldest } => {
                metrics::counter!("authflow_sign_ins_total", "outcome" => "locked").increment(1);
                tracing::info!("sign-in refused by a failure limit");
                if let Some(user) = account {
                    self.record_lockout(user, client, now - time::duration(limits.login_window))
                        .await;
                }
                Err(retry_after(Some(oldest), limits.login_window, now))
            }
        }
    }

    /// A lockout is recorded once per account, address and window: refused attempts write
    /// nothing else, and a flood of them must not grow the log.
    async fn record_lockout(&self, user: &User, client: &ClientInfo, since: Timestamp) {
        let ip = ip_key(client);
        match self
            .store
            .audit_exists_since("sign_in_locked", &user.uid, &ip, since)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let mut event = self.audit_event(
                    "sign_in_locked",
                    None,
                    Some(user),
                    client,
                    serde_json::json!({}),
                );
                event.ip = Some(ip);
                self.record(&event, None).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not check the audit log"),
        }
    }

    /// Clears the account's sign-in failures (an administrator's unlock).
    pub(super) async fn clear_sign_in_failures(&self, user: &User) -> Result<u64, Error> {
        Ok(self.store.clear_sign_in_failures(user.db_id).await?)
    }

    /// Deletes what has outlived its use (SPEC §9), a bounded batch at a time; returns the
    /// number of rows removed.
    pub async fn prune_expired(&self) -> Result<u64, Error> {
        const BATCH: i64 = 1000;
        const ENDED_KEPT: chrono::Duration = chrono::Duration::days(30);
        let now = self.clock.now();
        let kinds = [
            Prune::History {
                before: now - time::duration(self.config.login_history_retention),
            },
            Prune::RotatedTokens { now },
            Prune::EndedSessions {
                before: now - ENDED_KEPT,
            },
            Prune::FinishedEmails {
                before: now - ENDED_KEPT,
            },
            Prune::ExpiredMfaTokens { now },
        ];
        let mut total = 0;
        for kind in kinds {
            loop {
                let n = self.store.prune(kind, BATCH).await?;
                total += n;
                if n < BATCH.unsigned_abs() {
                    break;
                }
                // Let requests through between batches.
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    /// One call of a limited action (`bucket`) for each key, within an hour; refused calls
    /// are not counted.
    pub(super) async fn take_limits(
        &self,
        bucket: &'static str,
        keys: &[(&str, i64)],
    ) -> Result<(), Error> {
        if !self.config.limits.enabled {
            return Ok(());
        }
        let now = self.clock.now();
        let since = now - time::duration(HOUR);
        let keys: Vec<RateKey<'_>> = keys
            .iter()
            .map(|&(key, limit)| RateKey { key, limit })
            .collect();
        match self
            .store
            .take_rate_limit(bucket, &keys, since, now)
            .await?
        {
            None => Ok(()),
            Some(oldest) => {
                tracing::warn!(bucket, "rate limit reached");
                metrics::counter!("authflow_rate_limited_total", "limit" => bucket).increment(1);
                Err(retry_after(Some(oldest), HOUR, now))
            }
        }
    }

    /// How the attempt ended, as stored, and the address still to be located (if any).
    pub(super) fn outcome(
        &self,
        attempt: Attempt,
        client: &ClientInfo,
        account: Option<&User>,
        result: AttemptResult,
    ) -> (AttemptOutcome, Option<IpAddr>) {
        metrics::counter!("authflow_sign_ins_total", "outcome" => result.status()).increment(1);
        let ip = ip_key(client);
        let (location, lookup) = match (account, client.ip) {
            (Some(_), Some(addr)) => match self.geo.locate_now(addr) {
                Located::Known(location) => (location, None),
                Located::Pending(location) => (location, Some(addr)),
            },
            _ => (serde_json::json!({"ip": ip}), None),
        };
        let audit = account.map(|user| {
            let kind = match result {
                AttemptResult::Succeeded => "sign_in",
                AttemptResult::Failed => "sign_in_failed",
                AttemptResult::EmailNotVerified => "sign_in_refused_unverified",
            };
            let actor = result.succeeded().then_some(user);
            self.audit_event(kind, actor, Some(user), client, serde_json::json!({}))
        });
        let outcome = AttemptOutcome {
            attempt,
            result,
            ip,
            now: self.clock.now(),
            audit,
            account: account.map(|user| AccountAttempt {
                user_db_id: user.db_id,
                location,
                user_agent: client.user_agent.clone(),
            }),
            method: "password".to_owned(),
        };
        (outcome, lookup)
    }

    /// A location that needs a lookup is completed in the background, so a slow or failing
    /// lookup never delays the answer.
    pub(super) fn locate_later(&self, log_id: Option<LocationLogId>, lookup: Option<IpAddr>) {
        if let (Some(log_id), Some(addr)) = (log_id, lookup) {
            self.complete_location(log_id, addr);
        }
    }

    /// Records how the attempt ended (a failure, or a success that opens no session).
    pub(super) async fn finish_attempt(
        &self,
        attempt: Attempt,
        client: &ClientInfo,
        account: Option<&User>,
        result: AttemptResult,
    ) -> Result<(), Error> {
        let (outcome, lookup) = self.outcome(attempt, client, account, result);
        let log_id = self.store.finish_sign_in(&outcome).await?;
        self.locate_later(log_id, lookup);
        Ok(())
    }

    /// As [`Self::finish_attempt`], recorded in the audit log as `kind` (`None`: not at all).
    pub(super) async fn finish_attempt_as(
        &self,
        attempt: Attempt,
        client: &ClientInfo,
        account: Option<&User>,
        result: AttemptResult,
        kind: impl Into<Option<&'static str>>,
    ) -> Result<(), Error> {
        let (mut outcome, lookup) = self.outcome(attempt, client, account, result);
        match (kind.into(), outcome.audit.as_mut()) {
            (Some(kind), Some(audit)) => audit.kind = kind,
            (None, _) => outcome.audit = None,
            _ => {}
        }
        let log_id = self.store.finish_sign_in(&outcome).await?;
        self.locate_later(log_id, lookup);
        Ok(())
    }

    /// Checks the signed-in user's password again (account deletion, password change), under
    /// the same limits and records as a sign-in: a stolen session cannot guess it freely.
    pub(super) async fn verify_current_password(
        &self,
        user: &User,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let identifier = user.username.to_lowercase();
        let admission = self.passwords.admit()?;
        let attempt = self
            .reserve_attempt(&identifier, Some(user), client)
            .await?;
        let stored = self
            .store
            .credentials_by_id(user.db_id)
            .await?
            .map(|c| c.password_hash);
        let valid = matches!(
            self.passwords
                .verify_admitted(admission, password, stored)
                .await?,
            super::password::Verification::Valid { .. }
        );
        let (result, kind) = if valid {
            (AttemptResult::Succeeded, None)
        } else {
            (AttemptResult::Failed, Some("password_check_failed"))
        };
        self.finish_attempt_as(attempt, client, Some(user), result, kind)
            .await?;
        if valid {
            Ok(())
        } else {
            Err(Error::InvalidCredentials)
        }
    }

    fn complete_location(&self, log_id: LocationLogId, addr: IpAddr) {
        let geo = Arc::clone(&self.geo);
        let store = Arc::clone(&self.store);
        self.background.spawn(async move {
            let location = geo.lookup(addr).await;
            if let Err(e) = store.set_location(log_id, &location).await {
                tracing::warn!(error = %e, "could not record a sign-in location");
            }
        });
    }
}
