//! Use-cases of accounts, sign-in, tokens and sessions, over `&dyn Store`; nothing here knows HTTP.

mod admin;
mod api_keys;
pub mod password;
mod protection;
mod recovery;
pub mod tokens;

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
    AttemptResult, NewSession, NewUser, ProfileChange, RefreshOutcome, Role, Rotation, Session,
    SessionUser, Store, User,
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

pub struct Auth {
    store: Arc<dyn Store>,
    passwords: Passwords,
    jwt: Jwt,
    config: Arc<Config>,
    /// Nudges the outbox worker after a change queued an email.
    mail_wake: Arc<Notify>,
    geo: Arc<GeoLocator>,
    clock: Clock,
    background: Background,
}

/// What the use-cases are built from.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub passwords: Passwords,
    pub jwt: Jwt,
    pub config: Arc<Config>,
    pub mail_wake: Arc<Notify>,
    pub geo: Arc<GeoLocator>,
    pub clock: Clock,
    pub background: Background,
}

impl Auth {
    pub fn new(parts: Parts) -> Self {
        let Parts {
            store,
            passwords,
            jwt,
            config,
            mail_wake,
            geo,
            clock,
            background,
        } = parts;
        Self {
            store,
            passwords,
            jwt,
            config,
            mail_wake,
            geo,
            clock,
            background,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn register(
        &self,
        input: Registration,
        caller: Option<&Principal>,
        client: &ClientInfo,
    ) -> Result<User, Error> {
        let role = match input.role.as_deref().map(str::trim) {
            None | Some("") | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(_) => {
                return Err(Error::Validation(vec![crate::error::FieldError::new(
                    "role",
                    "Role must be \"user\" or \"admin\".",
                )]))
            }
        };
        // A signed-in administrator (not a key) may create administrators.
        let admin_caller =
            caller.is_some_and(|c| c.user.role == Role::Admin && c.session_id().is_ok());
        if role == Role::Admin && !admin_caller {
            return Err(Error::Forbidden(
                "Only an administrator can create administrator accounts.",
            ));
        }
        self.create_account(input, role, Some(client)).await
    }

    /// Validates and creates the account with its welcome email; `client` is counted
    /// against the sign-up limit (the command line has none).
    async fn create_account(
        &self,
        input: Registration,
        role: Role,
        client: Option<&ClientInfo>,
    ) -> Result<User, Error> {
        // The limit comes first: an invalid request costs a caller a try like any other.
        if let Some(client) = client {
            let ip = protection::ip_key(client);
            self.take_limits(
                "signup",
                &[(ip.as_str(), self.config.limits.signups_per_ip)],
            )
            .await?;
        }
        let mut errors = ValidationErrors::default();
        let name = errors.check("name", DisplayName::parse(&input.name));
        let username = errors.check("username", Username::parse(&input.username));
        let email = errors.check("email", Email::parse(&input.email));
        let phone = errors.check("phone", Phone::parse(input.phone.as_deref().unwrap_or("")));
        let user_inputs = vec![
            input.username.trim().to_owned(),
            input.name.trim().to_owned(),
            input.email.trim().to_owned(),
        ];
        let password = errors.check(
            "password",
            self.passwords.judge(input.password, user_inputs).await?,
        );
        let (Some(name), Some(username), Some(email), Some(phone), Some(password)) =
            (name, username, email, phone, password)
        else {
            return Err(errors.into());
        };
        let password_hash = self.passwords.hash(password.expose().to_owned()).await?;
        let (verification, welcome) = self.welcome(name.as_str(), email.as_str())?;
        let user = self
            .store
            .create_user(
                &NewUser {
                    uid: UserUid::new(uuid::Uuid::new_v4().to_string()),
                    username,
                    name,
                    email,
                    phone,
                    password_hash,
                    role,
                    now: self.clock.now(),
                },
                &verification,
                &welcome,
            )
            .await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "account created");
        Ok(user)
    }

    /// Unknown account, wrong password and deactivated account fail alike, after the same
    /// amount of hashing work.
    pub async fn sign_in(
        &self,
        identifier: &str,
        password: String,
        client: ClientInfo,
    ) -> Result<IssuedTokens, Error> {
        let identifier = normalize_identifier(identifier);
        let mut errors = ValidationErrors::default();
        if identifier.is_empty() {
            errors.push("username", "Username or email is required.");
        }
        if password.is_empty() {
            errors.push("password", "Password is required.");
        }
        errors.into_result()?;

        let credentials = self.store.find_credentials(&identifier).await?;
        let account = credentials.as_ref().map(|c| c.user.clone());
        let attempt = self
            .reserve_attempt(&identifier, account.as_ref(), &client)
            .await?;

        let stored_hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let verification = self
            .passwords
            .verify(password.clone(), stored_hash.clone())
            .await?;
        let (user, needs_rehash) = match (credentials, verification) {
            (Some(c), Verification::Valid { needs_rehash }) if c.user.active => {
                (c.user, needs_rehash)
            }
            _ => {
                self.finish_attempt(attempt, &client, account.as_ref(), AttemptResult::Failed)
                    .await?;
                return Err(Error::InvalidCredentials);
            }
        };
        if self.config.require_email_verification && !user.email_verified {
            self.finish_attempt(
                attempt,
                &client,
                Some(&user),
                AttemptResult::EmailNotVerified,
            )
            .await?;
            return Err(Error::EmailNotVerified);
        }
        if needs_rehash {
            if let Some(old) = stored_hash {
                self.rehash_in_background(user.db_id, old, password);
            }
        }
        let tokens = self.start_session(user, client, attempt).await?;
        tracing::info!(user = %tokens.user.uid, session = %tokens.session_id, "signed in");
        Ok(tokens)
    }

    /// Legacy bcrypt (or weaker argon2) hashes are upgraded after the answer is sent.
    fn rehash_in_background(&self, user_db_id: UserId, old_hash: String, password: String) {
        let passwords = self.passwords.clone();
        let store = Arc::clone(&self.store);
        self.background.spawn(async move {
            let result = match passwords.hash(password).await {
                Ok(hash) => store
                    .upgrade_password_hash(user_db_id, &old_hash, &hash)
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not upgrade a password hash");
            }
        });
    }

    /// Opens the session and records the successful attempt, in one transaction.
    async fn start_session(
        &self,
        mut user: User,
        client: ClientInfo,
        attempt: protection::AttemptId,
    ) -> Result<IssuedTokens, Error> {
        let now = self.clock.now();
        let session_cookie = random_token();
        let refresh_token = random_token();
        let session_id = SessionId::new(uuid::Uuid::new_v4().to_string());
        let (outcome, lookup) =
            self.outcome(attempt, &client, Some(&user), AttemptResult::Succeeded);
        let log_id = self
            .store
            .start_session(
                &NewSession {
                    id: session_id.clone(),
                    user_db_id: user.db_id,
                    cookie_hash: digest(&session_cookie),
                    refresh_hash: digest(&refresh_token),
                    ip: client.ip.map(|ip| ip.to_string()),
                    user_agent: client.user_agent,
                    now,
                    expires_at: now
                        + time::duration(
                            self.config
                                .refresh_token_ttl
                                .min(self.config.session_max_age),
                        ),
                },
                &outcome,
            )
            .await?;
        self.locate_later(log_id, lookup);
        user.last_login = Some(now);
        self.issue(user, session_id, session_cookie, refresh_token, now)
    }

    fn issue(
        &self,
        user: User,
        session_id: SessionId,
        session_cookie: String,
        refresh_token: String,
        now: Timestamp,
    ) -> Result<IssuedTokens, Error> {
        let ttl = self.config.access_token_ttl;
        Ok(IssuedTokens {
            access_token: self.jwt.issue(&user, &session_id, now, ttl)?,
            expires_in: ttl.as_secs(),
            refresh_token,
            session_cookie,
            session_id,
            user,
        })
    }

    /// Rotates the refresh token (and the session cookie); a replayed one kills the session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens, Error> {
        if refresh_token.is_empty() {
            return Err(Error::Validation(vec![crate::error::FieldError::new(
                "refresh_token",
                "Refresh token is required.",
            )]));
        }
        let now = self.clock.now();
        let new_refresh = random_token();
        let new_cookie = random_token();
        let outcome = self
            .store
            .rotate_refresh_token(&Rotation {
                old_refresh_hash: digest(refresh_token),
                new_refresh_hash: digest(&new_refresh),
                new_cookie_hash: digest(&new_cookie),
                now,
                expires_at: now + time::duration(self.config.refresh_token_ttl),
                max_age: time::duration(self.config.session_max_age),
                // A zero grace is none at all: a racing loser whose clock read came first must
                // still count as reuse.
                grace_since: (!self.config.refresh_reuse_grace.is_zero())
                    .then(|| now - time::duration(self.config.refresh_reuse_grace)),
            })
            .await?;
        match outcome {
            RefreshOutcome::Rotated(su) => {
                self.issue(su.user, su.session.id, new_cookie, new_refresh, now)
            }
            RefreshOutcome::Reused => {
                tracing::warn!("a rotated refresh token was presented again; session revoked");
                Err(Error::RefreshTokenReused)
            }
            RefreshOutcome::Invalid => Err(Error::Unauthorized),
        }
    }

    /// An access token is good while its signature, `exp` and `iss` hold and its session is
    /// active: one database round trip, which also returns the current user.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Principal, Error> {
        let claims = self.jwt.verify(token, self.clock.now())?;
        let found = self
            .store
            .session_by_id(&SessionId::new(claims.sid), self.clock.now())
            .await?;
        match found {
            Some(su) if su.user.uid.as_str() == claims.sub => Ok(self.principal(su)),
            _ => Err(Error::Unauthorized),
        }
    }

    pub async fn authenticate_cookie(&self, cookie: &str) -> Result<Principal, Error> {
        let found = self
            .store
            .session_by_cookie(&digest(cookie), self.clock.now())
            .await?;
        found
            .map(|su| self.principal(su))
            .ok_or(Error::Unauthorized)
    }

    fn principal(&self, su: SessionUser) -> Principal {
        let now = self.clock.now();
        if (now - su.session.last_used_at).num_seconds() >= TOUCH_INTERVAL_SECS {
            let store = Arc::clone(&self.store);
            let id = su.session.id.clone();
            self.background.spawn(async move {
                if let Err(e) = store.touch_session(&id, now).await {
                    tracing::warn!(error = %e, "could not record session use");
                }
            });
        }
        Principal {
            user: su.user,
            credential: Credential::Session(su.session.id),
        }
    }

    pub async fn logout(&self, principal: &Principal) -> Result<(), Error> {
        self.store
            .revoke_session(
                principal.user.db_id,
                principal.session_id()?,
                self.clock.now(),
            )
            .await?;
        Ok(())
    }

    /// Ends every session of the caller, and with `api_keys` revokes every key too.
    pub async fn logout_all(&self, principal: &Principal, api_keys: bool) -> Result<u64, Error> {
        principal.session_id()?;
        let ended = self
            .store
            .revoke_all_sessions(principal.user.db_id, api_keys, self.clock.now())
            .await?;
        tracing::info!(user = %principal.user.uid, sessions = ended, api_keys, "signed out everywhere");
        Ok(ended)
    }

    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<Session>, Error> {
        principal.session_id()?;
        Ok(self
            .store
            .list_sessions(principal.user.db_id, self.clock.now())
            .await?)
    }

    pub async fn revoke_session(
        &self,
        principal: &Principal,
        session_id: &str,
    ) -> Result<(), Error> {
        principal.session_id()?;
        // Session ids are UUIDs; anything else names no session (and never reaches SQL).
        if uuid::Uuid::parse_str(session_id).is_err() {
            return Err(Error::NotFound("session"));
        }
        if self
            .store
            .revoke_session(
                principal.user.db_id,
                &SessionId::new(session_id),
                self.clock.now(),
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound("session"))
        }
    }

    pub async fn update_profile(
        &self,
        principal: &Principal,
        name: Option<&str>,
        phone: Option<&str>,
    ) -> Result<User, Error> {
        principal.session_id()?;
        let mut errors = ValidationErrors::default();
        let name = name.and_then(|n| errors.check("name", DisplayName::parse(n)));
        let phone = phone.and_then(|p| errors.check("phone", Phone::parse(p)));
        errors.into_result()?;
        let change = ProfileChange { name, phone };
        Ok(self
            .store
            .update_profile(principal.user.db_id, &change)
            .await?)
    }

    /// The caller's sign-in history, newest first.
    pub async fn login_history(
        &self,
        principal: &Principal,
        limit: i64,
    ) -> Result<Vec<crate::store::LoginRecord>, Error> {
        self.own_profile(principal)?;
        Ok(self
            .store
            .login_history(principal.user.db_id, limit.clamp(1, 200))
            .await?)
    }

    /// Deleting the account needs the password again.
    pub async fn delete_account(
        &self,
        principal: &Principal,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        principal.session_id()?;
        if password.is_empty() {
            return Err(Error::Validation(vec![crate::error::FieldError::new(
                "password",
                "Password is required.",
            )]));
        }
        self.verify_current_password(&principal.user, password, client)
            .await?;
        self.store.delete_user(principal.user.db_id).await?;
        tracing::info!(user = %principal.user.uid, "account deleted");
        Ok(())
    }
}

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
