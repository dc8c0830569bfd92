//! Sign-in records and rate limits. Counters live in the database, so several instances
//! behind a load balancer share them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Auth, ClientInfo};
use crate::error::Error;
use crate::geo::ipinfo::Located;
use crate::store::{AccountAttempt, SignInAttempt, User};
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
    /// `Err(TooManyRequests)` when the identifier or the IP has too many failures in the window.
    pub(super) async fn check_sign_in_limits(
        &self,
        identifier: &str,
        ip: &str,
    ) -> Result<(), Error> {
        let limits = &self.config.limits;
        if !limits.enabled {
            return Ok(());
        }
        let now = time::now();
        let since = now - time::duration(limits.login_window);
        let counts = self.store.sign_in_failures(identifier, ip, since).await?;
        if counts.identifier >= limits.login_max_failures {
            return Err(retry_after(
                counts.identifier_oldest,
                limits.login_window,
                now,
            ));
        }
        if counts.ip >= limits.login_max_failures_per_ip {
            return Err(retry_after(counts.ip_oldest, limits.login_window, now));
        }
        Ok(())
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

    /// Writes the attempt's rows; for an account, its location is completed in the background
    /// when it needs a lookup, so a slow or failing lookup never delays the answer.
    pub(super) async fn record_attempt(
        &self,
        identifier: &str,
        client: &ClientInfo,
        account: Option<&User>,
        success: bool,
        counted: bool,
    ) -> Result<(), Error> {
        let ip = ip_key(client);
        let (location, lookup) = match (account, client.ip) {
            (Some(_), Some(addr)) => match self.geo.locate_now(addr) {
                Located::Known(location) => (location, None),
                Located::Pending(location) => (location, Some(addr)),
            },
            _ => (serde_json::json!({"ip": ip}), None),
        };
        let log_id = self
            .store
            .record_sign_in(&SignInAttempt {
                ip,
                identifier: identifier.to_owned(),
                success,
                counted,
                now: time::now(),
                account: account.map(|user| AccountAttempt {
                    user_db_id: user.db_id,
                    location,
                    user_agent: client
                        .user_agent
                        .as_ref()
                        .map(|ua| ua.chars().take(255).collect()),
                }),
            })
            .await?;
        if let (Some(log_id), Some(addr)) = (log_id, lookup) {
            self.complete_location(log_id, addr);
        }
        Ok(())
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
