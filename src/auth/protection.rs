//! Sign-in records and rate limits. Counters live in the database, so several instances
//! behind a load balancer share them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Auth, ClientInfo};
use crate::error::Error;
use crate::geo::ipinfo::Located;
pub(super) use crate::store::Reservation;
use crate::store::{AccountAttempt, AttemptOutcome, AttemptReservation, User};
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
        let before = time::now() - time::duration(HOUR);
        Ok(self.store.prune_rate_limits(before).await?)
    }

    /// Records the attempt before the password is judged, counted as a failure until it
    /// ends otherwise, atomically with the check of the limits: parallel guesses cannot all
    /// slip under them. For an account, failures by its username and its email count together.
    pub(super) async fn reserve_attempt(
        &self,
        identifier: &str,
        account: Option<&User>,
        client: &ClientInfo,
    ) -> Result<Reservation, Error> {
        let limits = &self.config.limits;
        let now = time::now();
        let counted_as = match account {
            Some(user) => [user.username.to_lowercase(), user.email.to_lowercase()],
            None => [identifier.to_owned(), identifier.to_owned()],
        };
        let reservation = self
            .store
            .reserve_sign_in(&AttemptReservation {
                identifier: identifier.to_owned(),
                counted_as,
                ip: ip_key(client),
                limits: limits
                    .enabled
                    .then_some((limits.login_max_failures, limits.login_max_failures_per_ip)),
                since: now - time::duration(limits.login_window),
                now,
            })
            .await?;
        Ok(reservation)
    }

    /// `Err(TooManyRequests)` (after recording it) when the reservation was refused.
    pub(super) async fn refuse_if_limited(
        &self,
        reservation: &Reservation,
        account: Option<&User>,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let Some(oldest) = reservation.refused else {
            return Ok(());
        };
        self.finish_attempt(reservation, client, account, false, false)
            .await?;
        Err(retry_after(
            Some(oldest),
            self.config.limits.login_window,
            time::now(),
        ))
    }

    /// One call of a limited action (`bucket`) for each key, within an hour; refused calls
    /// are not counted.
    pub(super) async fn take_limits(
        &self,
        bucket: &str,
        keys: &[(&str, i64)],
    ) -> Result<(), Error> {
        if !self.config.limits.enabled {
            return Ok(());
        }
        let now = time::now();
        let since = now - time::duration(HOUR);
        match self.store.take_rate_limit(bucket, keys, since, now).await? {
            None => Ok(()),
            Some(oldest) => {
                tracing::warn!(bucket, "rate limit reached");
                Err(retry_after(Some(oldest), HOUR, now))
            }
        }
    }

    /// How the attempt ended, as stored, and the address still to be located (if any).
    pub(super) fn outcome(
        &self,
        reservation: &Reservation,
        client: &ClientInfo,
        account: Option<&User>,
        success: bool,
        counted: bool,
    ) -> (AttemptOutcome, Option<IpAddr>) {
        let ip = ip_key(client);
        let (location, lookup) = match (account, client.ip) {
            (Some(_), Some(addr)) => match self.geo.locate_now(addr) {
                Located::Known(location) => (location, None),
                Located::Pending(location) => (location, Some(addr)),
            },
            _ => (serde_json::json!({"ip": ip}), None),
        };
        let outcome = AttemptOutcome {
            attempt_id: reservation.attempt_id,
            success,
            counted,
            ip,
            now: time::now(),
            account: account.map(|user| AccountAttempt {
                user_db_id: user.db_id,
                location,
                user_agent: client.user_agent.clone(),
            }),
        };
        (outcome, lookup)
    }

    /// A location that needs a lookup is completed in the background, so a slow or failing
    /// lookup never delays the answer.
    pub(super) fn locate_later(&self, log_id: Option<i64>, lookup: Option<IpAddr>) {
        if let (Some(log_id), Some(addr)) = (log_id, lookup) {
            self.complete_location(log_id, addr);
        }
    }

    /// Records how the attempt ended (a failure, or a success that opens no session).
    pub(super) async fn finish_attempt(
        &self,
        reservation: &Reservation,
        client: &ClientInfo,
        account: Option<&User>,
        success: bool,
        counted: bool,
    ) -> Result<(), Error> {
        let (outcome, lookup) = self.outcome(reservation, client, account, success, counted);
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
        let reservation = self
            .reserve_attempt(&identifier, Some(user), client)
            .await?;
        self.refuse_if_limited(&reservation, Some(user), client)
            .await?;
        let stored = self
            .store
            .credentials_by_id(user.db_id)
            .await?
            .map(|c| c.password_hash);
        let valid = matches!(
            self.passwords.verify(password, stored).await?,
            super::password::Verification::Valid { .. }
        );
        self.finish_attempt(&reservation, client, Some(user), valid, true)
            .await?;
        if valid {
            Ok(())
        } else {
            Err(Error::InvalidCredentials)
        }
    }

    fn complete_location(&self, log_id: i64, addr: IpAddr) {
        let geo = Arc::clone(&self.geo);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let location = geo.lookup(addr).await;
            if let Err(e) = store.set_location(log_id, &location).await {
                tracing::warn!(error = %e, "could not record a sign-in location");
            }
        });
    }
}
