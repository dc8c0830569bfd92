//! Security notices (SPEC §13): a sign-in from a new place or device is emailed with a
//! one-click "this wasn't me" link, which ends every session and sends a password reset.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use lru::LruCache;

use super::*;
use crate::mail::templates::{Email, EmailKind};
use crate::store::{LocationLogId, NewSignInNotice};

/// A "this wasn't me" link works for a week.
const NOTICE_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Earlier sign-ins compared with a new one (history is pruned after 90 days anyway).
const EARLIER_COMPARED: i64 = 200;
/// The most recent ones, read first: a known place and device are nearly always among them,
/// and the other 190 rows (with their locations' JSON) are read only when they are not.
const RECENT_COMPARED: i64 = 10;
/// How long what the history showed of an account is trusted without reading it again.
const KNOWN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Accounts remembered at most (least recently signed in go first).
const KNOWN_ACCOUNTS: usize = 10_000;
/// Places, and devices, remembered per account at most; a sign-in from any other is judged
/// by the history.
const KNOWN_PER_ACCOUNT: usize = 8;

/// Country and city of a located sign-in.
type Place = (String, String);

/// The places and devices that each account's history of successful sign-ins was seen to
/// hold, so that a sign-in from a known place with a known device (nearly all of them) is
/// judged without reading the history. This memory knows no more than the history would
/// tell: the history only grows (other instances add to it too) until rows are pruned
/// after `LOGIN_HISTORY_RETENTION_DAYS`, and what was read is trusted for an hour only.
/// Within that hour, an account signed in to more than 200 times could push a place or
/// device out of the 200 latest sign-ins the look-back compares, while this memory still
/// knows it. What it does not know is asked of the history, as before.
///
/// Places and devices are kept as keyed 64-bit digests (a key of this process's own), so an
/// account costs about 200 bytes however long the user agents a client sends.
pub(crate) struct KnownSignIns {
    key: RandomState,
    accounts: Mutex<LruCache<UserId, Known>>,
}

struct Known {
    read_at: Timestamp,
    places: Vec<u64>,
    devices: Vec<u64>,
}

impl Default for KnownSignIns {
    fn default() -> Self {
        Self {
            key: RandomState::new(),
            accounts: Mutex::new(LruCache::new(
                NonZeroUsize::new(KNOWN_ACCOUNTS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl KnownSignIns {
    /// Whether the account's history is known to hold this place (if the sign-in has one)
    /// and this device.
    fn knows(&self, user: UserId, place: Option<&Place>, device: &str, now: Timestamp) -> bool {
        let place = place.map(|p| self.key.hash_one(p));
        let device = self.key.hash_one(device);
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts.get(&user).is_some_and(|known| {
            // A clock set back does not stretch the hour.
            (known.read_at..known.read_at + time::duration(KNOWN_TTL)).contains(&now)
                && place.is_none_or(|p| known.places.contains(&p))
                && known.devices.contains(&device)
        })
    }

    /// Remembers what these sign-ins of the account's history show, in place of what was
    /// remembered before.
    fn learn<'a>(
        &self,
        user: UserId,
        history: impl IntoIterator<Item = &'a LoginRecord>,
        now: Timestamp,
    ) {
        let mut known = Known {
            read_at: now,
            places: Vec::new(),
            devices: Vec::new(),
        };
        let remember = |digests: &mut Vec<u64>, digest: u64| {
            if digests.len() < KNOWN_PER_ACCOUNT && !digests.contains(&digest) {
                digests.push(digest);
            }
        };
        for record in history {
            if let Some(place) = place_of(&record.location) {
                remember(&mut known.places, self.key.hash_one(&place));
            }
            let device = device_family(record.user_agent.as_deref());
            remember(&mut known.devices, self.key.hash_one(device.as_str()));
        }
        self.accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(user, known);
    }
}

/// Country and city of a located sign-in; `None` when the location is not known (no
/// geolocation configured, or the lookup failed).
pub(crate) fn place_of(location: &serde_json::Value) -> Option<Place> {
    let country = location.get("country")?.as_str()?;
    let city = location.get("city").and_then(|c| c.as_str()).unwrap_or("");
    Some((country.to_owned(), city.to_owned()))
}

/// The browser and system a user agent names, coarsely: a browser update is not a new device.
pub(crate) fn device_family(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|ua| !ua.trim().is_empty()) else {
        return "unknown".to_owned();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
    ]
    .iter()
    .find(|(marker, _)| ua.contains(marker))
    .map_or_else(
        || ua.split(['/', ' ']).next().unwrap_or("").to_owned(),
        |(_, name)| (*name).to_owned(),
    );
    let system = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(marker, _)| ua.contains(marker))
    .map_or("", |(_, name)| name);
    format!("{browser} {system}").trim().to_owned()
}

fn describe_place(location: &serde_json::Value) -> Option<String> {
    let parts: Vec<&str> = ["city", "region", "country"]
        .iter()
        .filter_map(|k| location.get(*k).and_then(|v| v.as_str()))
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

impl Auth {
    /// After a session opened: completes the location of its history row (in the background,
    /// so the answer never waits), then emails a notice if the account has signed in before
    /// but never from this place or with this kind of device.
    pub(super) fn locate_and_notice(
        self: &Arc<Self>,
        user: &User,
        session_id: &SessionId,
        logged: Option<(LocationLogId, LoginRecord)>,
        lookup: Option<IpAddr>,
    ) {
        if !self.config.new_signin_alerts {
            self.locate_later(logged.map(|(log_id, _)| log_id), lookup);
            return;
        }
        let Some((log_id, this)) = logged else {
            return;
        };
        let auth = Arc::clone(self);
        let (user, session_id) = (user.clone(), session_id.clone());
        self.background.spawn(async move {
            if let Err(e) = auth
                .notice_if_new(&user, &session_id, log_id, this, lookup)
                .await
            {
                tracing::warn!(error = %e, "could not judge a sign-in for a notice");
            }
        });
    }

    async fn notice_if_new(
        &self,
        user: &User,
        session_id: &SessionId,
        log_id: LocationLogId,
        mut this: LoginRecord,
        lookup: Option<IpAddr>,
    ) -> Result<(), Error> {
        if let Some(addr) = lookup {
            let location = self.geo.lookup(addr).await;
            self.store.set_location(log_id, &location).await?;
            this.location = location;
        }
        let place = place_of(&this.location);
        let device = device_family(this.user_agent.as_deref());
        let now = self.clock.now();
        if self
            .known_sign_ins
            .knows(user.db_id, place.as_ref(), &device, now)
        {
            return Ok(());
        }
        let mut earlier = self
            .store
            .earlier_sign_ins(user.db_id, log_id, RECENT_COMPARED)
            .await?;
        let judge = |earlier: &[LoginRecord]| {
            let new_place = place.is_some()
                && !earlier
                    .iter()
                    .any(|r: &LoginRecord| place_of(&r.location) == place);
            let new_device = !earlier
                .iter()
                .any(|r| device_family(r.user_agent.as_deref()) == device);
            (new_place, new_device)
        };
        let (mut new_place, mut new_device) = judge(&earlier);
        if (new_place || new_device) && earlier.len() >= RECENT_COMPARED as usize {
            earlier = self
                .store
                .earlier_sign_ins(user.db_id, log_id, EARLIER_COMPARED)
                .await?;
            (new_place, new_device) = judge(&earlier);
        }
        // This sign-in is in the history now, beside the ones read.
        self.known_sign_ins
            .learn(user.db_id, earlier.iter().chain([&this]), now);
        // The first sign-in of an account is new by definition, and no news.
        if earlier.is_empty() || (!new_place && !new_device) {
            return Ok(());
        }
        self.send_sign_in_notice(user, session_id, &this, new_place)
            .await
    }

    async fn send_sign_in_notice(
        &self,
        user: &User,
        session_id: &SessionId,
        this: &LoginRecord,
        new_place: bool,
    ) -> Result<(), Error> {
        let token = random_token();
        let link = format!("{}/not-me?token={token}", self.config.app_url);
        let mut facts = vec![format!("Time: {} (UTC)", time::rfc3339(this.created_at))];
        if let Some(place) = describe_place(&this.location) {
            facts.push(format!("Place: {place} (approximate)"));
        }
        facts.push(format!("IP address: {}", this.ip));
        if let Some(ua) = &this.user_agent {
            facts.push(format!("Device: {ua}"));
        }
        let what = if new_place {
            "Your Auth Flow account was just signed in to from a place it has not been signed in from before."
        } else {
            "Your Auth Flow account was just signed in to from a device it has not been signed in from before."
        };
        let email = self.render(
            &user.email,
            &Email::Notice {
                kind: EmailKind::NewSignIn,
                name: &user.name,
                what,
                facts: &facts,
                action: Some(("this wasn't me: sign out everywhere", &link)),
            },
        )?;
        let now = self.clock.now();
        self.store
            .create_sign_in_notice(
                &NewSignInNotice {
                    token_hash: digest(&token),
                    user_db_id: user.db_id,
                    session_id: session_id.clone(),
                    now,
                    expires_at: now + time::duration(NOTICE_LINK_TTL),
                },
                &email,
            )
            .await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "new-sign-in notice queued");
        Ok(())
    }

    /// "This wasn't me": ends every session of the account (once per link) and emails a
    /// password-reset link. `Err(InvalidToken)` for an unknown, used or expired link.
    pub async fn not_me(self: &Arc<Self>, token: &str, client: &ClientInfo) -> Result<(), Error> {
        if token.trim().is_empty() {
            return Err(Error::InvalidToken);
        }
        let audit = self.audit_event(
            "signed_out_by_notice",
            None,
            None,
            client,
            serde_json::json!({"reason": "this wasn't me"}),
        );
        let user = self
            .store
            .use_sign_in_notice(&digest(token.trim()), self.clock.now(), &audit)
            .await?
            .ok_or(Error::InvalidToken)?;
        tracing::warn!(user = %user.uid, "\"this wasn't me\": every session ended");
        // Found as the forgot-password form finds it: by the lower-cased address (accounts
        // of the old service can hold mixed case).
        self.send_reset(&user.email.to_lowercase()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_families_ignore_versions() {
        let a = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        let b = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";
        let c = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
        assert_eq!(device_family(Some(a)), device_family(Some(b)));
        assert_eq!(device_family(Some(a)), "Chrome Linux");
        assert_eq!(device_family(Some(c)), "Firefox Windows");
        assert_eq!(device_family(None), "unknown");
        assert_eq!(device_family(Some("curl/8.5.0")), "curl");
    }

    /// Known for an hour after the history was read, and only for what it showed; a clock
    /// set back does not stretch the hour.
    #[test]
    fn the_memory_knows_what_the_history_showed_for_an_hour() {
        let known = KnownSignIns::default();
        let (user, other) = (UserId::new(1), UserId::new(2));
        let read_at = Clock::system().now();
        let paris = serde_json::json!({"ip": "81.2.69.142", "city": "Paris", "country": "FR"});
        let record = LoginRecord {
            ip: "81.2.69.142".into(),
            location: paris.clone(),
            user_agent: Some("curl/8.5.0".into()),
            success: true,
            created_at: read_at,
            method: None,
        };
        known.learn(user, [&record], read_at);
        let place = place_of(&paris);
        let minutes = |m: i64| read_at + chrono::Duration::minutes(m);
        assert!(known.knows(user, place.as_ref(), "curl", minutes(59)));
        assert!(
            known.knows(user, None, "curl", minutes(0)),
            "an unknown place"
        );
        assert!(!known.knows(user, place.as_ref(), "Firefox Windows", minutes(1)));
        let berlin = Some(("DE".to_owned(), "Berlin".to_owned()));
        assert!(!known.knows(user, berlin.as_ref(), "curl", minutes(1)));
        assert!(!known.knows(other, place.as_ref(), "curl", minutes(1)));
        assert!(!known.knows(user, place.as_ref(), "curl", minutes(61)));
        assert!(!known.knows(user, place.as_ref(), "curl", minutes(-1)));
    }

    #[test]
    fn places_need_a_country() {
        assert_eq!(place_of(&serde_json::json!({"ip": "8.8.8.8"})), None);
        assert_eq!(
            place_of(&serde_json::json!({"ip": "1.1.1.1", "city": "Paris", "country": "FR"})),
            Some(("FR".into(), "Paris".into()))
        );
    }
}
