//! Use-cases of accounts, sign-in, tokens and sessions, over `&dyn Store`; nothing here knows HTTP.

mod accounts;
mod admin;
mod api_keys;
pub mod audit;
mod lookups;
pub mod mfa;
mod notices;
pub use lookups::SessionLookups;
pub(crate) use notices::KnownSignIns;
pub mod password;
mod protection;
mod recovery;
mod sessions;
pub mod sso;
pub(crate) mod tokens;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::domain::{
    ApiKeyId, DisplayName, Email, Phone, SessionId, UserId, UserUid, Username, ValidationErrors,
};
use crate::error::Error;
use crate::geo::ipinfo::GeoLocator;
use crate::store::{
    AttemptResult, LoginRecord, NewSession, NewUser, ProfileChange, RefreshOutcome, Role, Rotation,
    Session, SessionUser, Store, User,
};
use crate::tasks::Background;
use crate::time::{self, Clock, Timestamp};
pub use api_keys::{is_api_key, CreatedKey, KeyRequest, Scope};
use password::{Passwords, Verification};
use tokens::{digest, random_token, Jwt};

/// A request to create an account, as received.
#[derive(Debug, Default)]
pub struct Registration {
    pub name: String,
    pub username: String,
    pub email: String,
    pub password: String,
    pub phone: Option<String>,
    pub role: Option<String>,
}

/// Where a request came from, as recorded on sessions.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// What a successful sign-in or refresh hands back to the client.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
    /// The raw `auth.sid` cookie value.
    pub session_cookie: String,
    pub session_id: SessionId,
    pub user: User,
}

/// An authenticated caller: an active user, as of this request, and how they proved it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub credential: Credential,
}

#[derive(Debug, Clone)]
pub enum Credential {
    /// An active session (access token or cookie).
    Session(SessionId),
    /// An API key, limited to its scopes.
    ApiKey { id: ApiKeyId, scopes: Vec<Scope> },
}

impl Principal {
    /// The session, for what only a signed-in person (not an API key) may do.
    pub fn session_id(&self) -> Result<&SessionId, Error> {
        match &self.credential {
            Credential::Session(id) => Ok(id),
            Credential::ApiKey { .. } => Err(Error::Forbidden(
                "API keys cannot manage keys, passwords, sessions or the account.",
            )),
        }
    }

    /// Whether the caller may act within `scope`: a session may do what its user may, a key
    /// only what its scopes name — and never more than its owner (checked by the caller).
    pub fn has_scope(&self, scope: Scope) -> bool {
        match &self.credential {
            Credential::Session(_) => true,
            Credential::ApiKey { scopes, .. } => scopes.contains(&scope),
        }
    }
}

/// How long a session's `last_used_at` may lag behind before a request refreshes it.
const TOUCH_INTERVAL_SECS: i64 = 60;

/// The shared parts every use-case works with; built once by `app::Services::connect`.
pub struct Auth {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) passwords: Passwords,
    pub(crate) jwt: Jwt,
    pub(crate) config: Arc<Config>,
    /// Nudges the outbox worker after a change queued an email.
    pub(crate) mail_wake: Arc<Notify>,
    pub(crate) geo: Arc<GeoLocator>,
    pub(crate) clock: Clock,
    pub(crate) background: Background,
    /// For the identity providers of social sign-in: timeouts, no redirects followed.
    pub(crate) sso_http: reqwest::Client,
    /// Seals TOTP secrets at rest.
    pub(crate) sealing: mfa::SealingKey,
    /// Session look-ups in flight together share one statement.
    pub(crate) lookups: lookups::SessionLookups,
    /// What the security notices learnt of each account's sign-in history.
    pub(crate) known_sign_ins: notices::KnownSignIns,
}

impl Auth {
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// The use-cases of one concern, over the shared parts of [`Auth`] (reached through `Deref`),
/// so that each concern's methods are found in one place: `auth.sessions().refresh(…)`.
macro_rules! concern {
    ($(#[$doc:meta])* $name:ident, $accessor:ident) => {
        $(#[$doc])*
        pub struct $name<'a>(&'a Arc<Auth>);

        impl std::ops::Deref for $name<'_> {
            type Target = Arc<Auth>;
            fn deref(&self) -> &Arc<Auth> {
                self.0
            }
        }

        impl Auth {
            pub fn $accessor(self: &Arc<Self>) -> $name<'_> {
                $name(self)
            }
        }
    };
}

concern!(
    /// Sign-up, one's own profile and history, deleting one's account.
    Accounts,
    accounts
);
concern!(
    /// Sign-in, refresh, authenticating a request, signing out, listing sessions.
    Sessions,
    sessions
);
concern!(
    /// Email verification, forgotten and changed passwords.
    Recovery,
    recovery
);
concern!(
    /// API keys: creating, listing, revoking and authenticating with them.
    ApiKeys,
    keys
);
concern!(
    /// What administrators do to other accounts.
    Administration,
    admin
);
concern!(
    /// Social sign-in: flows, the one-time code exchange, linked identities.
    SocialSignIn,
    sso
);
concern!(
    /// Two-factor authentication: setting it up, turning it off, and sign-in's second step.
    Mfa,
    mfa
);
concern!(
    /// Reading the audit log.
    Audit,
    audit
);

/// Identifiers are compared lower-cased, trimmed, without NUL characters, at most 200 characters.
pub fn normalize_identifier(raw: &str) -> String {
    let cleaned: String = raw.chars().filter(|c| *c != '\0').collect();
    // Lower-casing can lengthen a string ('İ' becomes two characters): cut after it, and
    // trim again so that a cut never leaves a trailing space.
    let lowered: String = cleaned.trim().to_lowercase().chars().take(200).collect();
    lowered.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::normalize_identifier;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn identifiers_are_short_lower_case_nul_free_and_stable(s in "\\PC{0,300}") {
            let id = normalize_identifier(&s);
            prop_assert!(id.chars().count() <= 200);
            prop_assert!(!id.contains('\0'));
            prop_assert_eq!(normalize_identifier(&id), id.clone());
        }
    }

    #[test]
    fn lengthening_lower_case_is_cut_after_lowering() {
        let id = normalize_identifier(&"İ".repeat(200));
        assert_eq!(id.chars().count(), 200);
    }
}
