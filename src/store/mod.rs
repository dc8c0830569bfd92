//! Storage: `trait Store`, its models and errors; one implementation per backend, chosen from the URL.

mod dialect;
pub(crate) mod postgres;
mod sql;
pub(crate) mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::{
    ApiKeyId, DisplayName, Email, Phone, Scope, SessionId, UserId, UserUid, Username,
};
use crate::mail::templates::EmailKind;
use crate::time::Timestamp;

pub use dialect::Dialect;
pub use sql::SqlStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username taken")]
    UsernameTaken,
    #[error("email taken")]
    EmailTaken,
    #[error("not found")]
    NotFound,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Setup(String),
    /// The identity is linked to an account already, or the account has one of this provider.
    #[error("identity already linked")]
    IdentityTaken,
}

pub use crate::domain::{Role, User};

#[derive(Debug, Clone)]
pub struct NewUser {
    pub uid: UserUid,
    pub username: Username,
    pub name: DisplayName,
    pub email: Email,
    pub phone: Option<Phone>,
    pub password_hash: String,
    pub role: Role,
    pub now: Timestamp,
}

/// A user with the stored password hash, for sign-in and re-authentication.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// Whether a confirmed TOTP is in force on the account, read in the same statement so
    /// that a password sign-in needs no look-up of its own for the second-factor gate (read
    /// before the hash: a second factor confirmed during it applies from the next sign-in).
    pub two_factor: bool,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub user_db_id: UserId,
    /// SHA-256 hex digests; the raw values only ever reach the client.
    pub cookie_hash: String,
    pub refresh_hash: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An active session together with its (active) user: what one authenticated request needs.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub session: Session,
    pub user: User,
}

/// Exchange of a refresh token for a new one (and a new session cookie).
#[derive(Debug, Clone)]
pub struct Rotation {
    pub old_refresh_hash: String,
    pub new_refresh_hash: String,
    pub new_cookie_hash: String,
    pub now: Timestamp,
    /// The session's new end (sliding lifetime), before the absolute cap.
    pub expires_at: Timestamp,
    /// `SESSION_MAX_AGE_SECS`: no refresh carries a session past `created_at + max_age`.
    pub max_age: chrono::Duration,
    /// A token rotated after this is presented again by a retry: answered, not punished.
    /// `None`: no grace (every second presentation is reuse).
    pub grace_since: Option<Timestamp>,
}

#[derive(Debug)]
pub enum RefreshOutcome {
    Rotated(Box<SessionUser>),
    /// The token had already been rotated: its session is now revoked.
    Reused,
    /// Unknown token, or its session is revoked, expired, or its user inactive.
    Invalid,
}

/// The single-use tokens of the old `tokens` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    PasswordReset,
    EmailVerification,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::PasswordReset => "password_reset",
            TokenKind::EmailVerification => "email_verification",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub kind: TokenKind,
    /// SHA-256 hex digest of the token that goes out in the email link.
    pub hash: String,
    pub expires_at: Timestamp,
}

/// An email for the outbox, written in the same transaction as the change that causes it.
#[derive(Clone)]
pub struct NewEmail {
    pub kind: EmailKind,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl std::fmt::Debug for NewEmail {
    /// Bodies carry tokens: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEmail")
            .field("kind", &self.kind)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// An email claimed from the outbox for delivery.
#[derive(Clone, sqlx::FromRow)]
pub struct OutboxEmail {
    pub id: i64,
    pub to_address: String,
    pub subject: String,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    /// Including this one.
    pub attempts: i32,
    pub created_at: Timestamp,
}

/// What became of a delivery attempt.
#[derive(Debug, Clone)]
pub enum Delivery {
    Sent,
    /// Try again at the given time.
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Given up: the body is removed, the row kept as `failed`.
    GiveUp {
        error: String,
    },
}

/// A sign-in attempt about to be judged. Reserving it counts it as a failure up front, under
/// a lock per account (or identifier) and per IP, so parallel guesses cannot all slip under
/// the limit before any of them is recorded.
#[derive(Debug, Clone)]
pub struct AttemptReservation {
    /// As given: lower-cased, without NUL characters, at most 200 characters.
    pub identifier: String,
    pub counted_as: CountedAs,
    pub ip: String,
    /// `None`: limits are off.
    pub limits: Option<SignInLimits>,
    /// Start of the failure-counting window.
    pub since: Timestamp,
    /// An address that signed in successfully after this is known to the account.
    pub known_since: Timestamp,
    pub now: Timestamp,
}

/// Whose failures a sign-in attempt counts against.
#[derive(Debug, Clone)]
pub enum CountedAs {
    /// An existing account: failures by its username and by its email count together (so
    /// switching between them gains nothing). Both lower-cased.
    Account { username: String, email: String },
    /// No such account: the identifier as given.
    Identifier(String),
}

impl CountedAs {
    /// The two identifiers whose failures count (the same one twice for `Identifier`).
    pub fn identifiers(&self) -> [&str; 2] {
        match self {
            CountedAs::Account { username, email } => [username, email],
            CountedAs::Identifier(identifier) => [identifier, identifier],
        }
    }
}

/// Failures allowed within the window (SPEC §9).
#[derive(Debug, Clone, Copy)]
pub struct SignInLimits {
    /// For one account from one address: a guesser blocks only their own address.
    pub per_account_and_ip: i64,
    /// For one account from every address, except addresses known to the account.
    pub per_account: i64,
    /// From one address across every account (credential stuffing).
    pub per_ip: i64,
}

#[derive(Debug, Clone)]
pub enum Reservation {
    /// Recorded as a counted failure until its outcome says otherwise.
    Granted { attempt_id: AttemptId },
    /// Refused by a limit, and not recorded: the oldest counted failure of the full window,
    /// which frees a slot when it leaves it.
    Refused { oldest: Timestamp },
}

/// A sign-in attempt recorded in `login_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptId(pub i64);

/// A sign-in attempt as its outcome finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Written before the password was judged, counted as a failure until it ends.
    Reserved(AttemptId),
    /// Not written yet: with the failure limits off nothing has to count it early, so its
    /// outcome writes it once, with the identifier as typed, attempted when it ended.
    Deferred { identifier: String },
}

/// A row of the sign-in history (`user_location_logs`), whose location may come later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocationLogId(pub i64);

/// How a sign-in attempt (or a check of the current password) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    /// A failure that counts toward the limits.
    Failed,
    /// The right password on an unverified email: refused, but not counted as a failure.
    EmailNotVerified,
}

impl AttemptResult {
    pub fn succeeded(self) -> bool {
        self == AttemptResult::Succeeded
    }
    /// Whether the attempt counts toward the limits (only failures are ever counted).
    pub fn counted(self) -> bool {
        self != AttemptResult::EmailNotVerified
    }
    /// As the history (`user_location_logs.access_status`) and the sign-in metric name it.
    pub fn status(self) -> &'static str {
        if self.succeeded() {
            "success"
        } else {
            "failure"
        }
    }
}

/// How an attempt ended; for an existing account, its history row.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub attempt: Attempt,
    pub result: AttemptResult,
    pub ip: String,
    pub now: Timestamp,
    pub account: Option<AccountAttempt>,
    /// How the sign-in was made, for the history: `password`, `github`, `google`,
    /// `oidc:<name>`.
    pub method: String,
    /// Its audit entry, written in the same transaction.
    pub audit: Option<NewAuditEvent>,
}

#[derive(Debug, Clone)]
pub struct AccountAttempt {
    pub user_db_id: UserId,
    pub location: serde_json::Value,
    /// At most 255 characters.
    pub user_agent: Option<String>,
}

/// A row of the user's sign-in history.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub ip: String,
    pub location: serde_json::Value,
    pub user_agent: Option<String>,
    pub success: bool,
    pub created_at: Timestamp,
    /// `password`, `github`, `google`, `oidc:<name>`; `None` on rows older than social sign-in.
    pub method: Option<String>,
}

/// An API key as its owner sees it (never its secret).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub user_db_id: UserId,
    pub name: String,
    pub secret_hash: String,
    pub scopes: Vec<Scope>,
    pub now: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// A live key (unexpired, owner active) with what is needed to check and use it.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub key: ApiKey,
    pub secret_hash: String,
    pub user: User,
}

/// What an administrator may change about an account.
#[derive(Debug, Clone, Default)]
pub struct AdminChange {
    pub role: Option<Role>,
    pub active: Option<bool>,
    pub email_verified: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub name: Option<DisplayName>,
    /// `Some(None)` clears the phone.
    pub phone: Option<Option<Phone>>,
}

/// One page of accounts, with the count of all that match.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<User>,
    pub total: i64,
}

/// One key a rate-limited call counts against, and how many calls it allows in the window.
#[derive(Debug, Clone, Copy)]
pub struct RateKey<'a> {
    pub key: &'a str,
    pub limit: i64,
}

/// An entry of the audit log (SPEC §13), about to be written.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub kind: &'static str,
    /// Who did it (`None`: no signed-in person, e.g. a failed sign-in).
    pub actor: Option<UserUid>,
    /// Whose account it concerns.
    pub target: Option<UserUid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
    pub now: Timestamp,
}

/// An entry of the audit log as read back.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: i64,
    pub created_at: Timestamp,
    pub kind: String,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
}

/// Which audit entries to read; every `Some` narrows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Entries whose target (or, with `or_actor`, actor) is this user.
    pub user: Option<UserUid>,
    pub or_actor: bool,
    pub kind: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// A TOTP secret as stored: sealed; in force once confirmed.
#[derive(Debug, Clone)]
pub struct TotpRecord {
    pub secret_sealed: String,
    pub confirmed: bool,
    pub last_step: Option<i64>,
}

/// The second step of a sign-in waiting for its code.
#[derive(Debug, Clone)]
pub struct MfaChallenge {
    pub user_db_id: UserId,
    /// The first factor's attempt this step completes.
    pub attempt_id: AttemptId,
    /// How the first factor was proved: `password`, or a social sign-in's provider.
    pub method: String,
    pub failures: i32,
}

/// A "this wasn't me" link of a new-sign-in notice.
#[derive(Debug, Clone)]
pub struct NewSignInNotice {
    pub token_hash: String,
    pub user_db_id: UserId,
    pub session_id: SessionId,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// Everything the service keeps. Implementations turn unique-key violations into
/// `UsernameTaken` / `EmailTaken` and run multi-step changes in one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates the account with its email-verification token and welcome email, atomically.
    async fn create_user(
        &self,
        user: &NewUser,
        verification: &NewToken,
        welcome: &NewEmail,
    ) -> Result<User, StoreError>;
    /// By username or email, case-insensitively; `identifier` is already lower-cased.
    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, StoreError>;
    async fn credentials_by_id(
        &self,
        user_db_id: UserId,
    ) -> Result<Option<Credentials>, StoreError>;
    /// Replaces the hash only if it is still `old` (a reset or change in between wins).
    async fn upgrade_password_hash(
        &self,
        user_db_id: UserId,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError>;
    async fn update_profile(
        &self,
        user_db_id: UserId,
        change: &ProfileChange,
    ) -> Result<User, StoreError>;
    /// The account and everything of it (sessions, tokens, logs, its sign-in attempts).
    async fn delete_user(&self, user_db_id: UserId) -> Result<(), StoreError>;

    /// Counted sign-in failures of the account no longer count (a completed reset, an
    /// administrator's unlock).
    async fn clear_sign_in_failures(&self, user_db_id: UserId) -> Result<u64, StoreError>;

    /// Inserts the session and its first refresh token and sets the user's `last_login`.
    /// …together with the outcome of the sign-in attempt that opened it (one transaction);
    /// returns the attempt's location-log id.
    async fn start_session(
        &self,
        session: &NewSession,
        attempt: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError>;
    /// The session if it is neither revoked nor expired at `now` and its user is active.
    async fn session_by_id(
        &self,
        session_id: &SessionId,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError>;
    /// The active sessions among `ids`, in one statement (see [`Store::coalesces_lookups`]).
    async fn sessions_by_ids(
        &self,
        ids: &[SessionId],
        now: Timestamp,
    ) -> Result<Vec<SessionUser>, StoreError>;
    /// Whether look-ups arriving together are better sent as one statement (a database over
    /// the network) than one by one (an embedded one).
    fn coalesces_lookups(&self) -> bool;
    async fn session_by_cookie(
        &self,
        cookie_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError>;
    /// Single-use even under concurrency: of two rotations of one token, one gets `Rotated`.
    async fn rotate_refresh_token(&self, rotation: &Rotation)
        -> Result<RefreshOutcome, StoreError>;
    async fn touch_session(&self, session_id: &SessionId, now: Timestamp)
        -> Result<(), StoreError>;
    /// Active sessions of the user, newest first.
    async fn list_sessions(
        &self,
        user_db_id: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError>;
    /// `false` when the user has no such active session.
    async fn revoke_session(
        &self,
        user_db_id: UserId,
        session_id: &SessionId,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Every session of the user, and with `api_keys` every key too, in one transaction;
    /// returns the number of sessions ended.
    async fn revoke_all_sessions(
        &self,
        user_db_id: UserId,
        api_keys: bool,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Replaces the user's earlier tokens of this kind with a new one and queues its email.
    async fn issue_token(
        &self,
        user_db_id: UserId,
        token: &NewToken,
        email: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// The (active) user of an active, unexpired token.
    async fn token_user(
        &self,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError>;
    /// Uses a reset token (single use under concurrency), sets the password, revokes every
    /// session and every API key, clears the sign-in failures and queues the notice; `None`
    /// when the token is unknown, used or expired.
    async fn reset_password(
        &self,
        hash: &str,
        password_hash: &str,
        notice: &NewEmail,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError>;
    /// Whether the account of an email-verification token (used or not) is verified: a link
    /// opened again (or first by a mail scanner) finds its address already verified.
    async fn verified_by_token(&self, hash: &str) -> Result<bool, StoreError>;
    /// Uses a verification token and marks the email verified; `None` as for reset.
    async fn verify_email(&self, hash: &str, now: Timestamp) -> Result<Option<User>, StoreError>;
    /// Sets the password, revokes every session but `keep_session`, queues the notice.
    async fn change_password(
        &self,
        user_db_id: UserId,
        password_hash: &str,
        keep_session: &SessionId,
        notice: &NewEmail,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Records the attempt (as a counted failure unless refused) atomically with the check
    /// of the limits.
    async fn reserve_sign_in(
        &self,
        attempt: &AttemptReservation,
    ) -> Result<Reservation, StoreError>;
    /// Records how the attempt ended; returns the location-log id, if any.
    async fn finish_sign_in(
        &self,
        outcome: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError>;
    /// Completes a location-log row once the geolocation lookup is done.
    async fn set_location(
        &self,
        log_id: LocationLogId,
        location: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Counts one call against each `(key, limit)` in the window since `since`: `None` if
    /// every key is under its limit (the call is then recorded for all of them), else the
    /// oldest counted call of a full key (the window frees a slot after it).
    async fn take_rate_limit(
        &self,
        bucket: &str,
        keys: &[RateKey<'_>],
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError>;
    /// Removes rate-limit records older than `before` (no window reaches back that far).
    async fn prune_rate_limits(&self, before: Timestamp) -> Result<u64, StoreError>;
    /// Deletes at most `batch` rows of one kind of expired data; returns how many went.
    async fn prune(&self, what: Prune, batch: i64) -> Result<u64, StoreError>;
    /// Newest first.
    async fn login_history(
        &self,
        user_db_id: UserId,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError>;

    /// By public id (`user_uid`).
    async fn user_by_uid(&self, uid: &UserUid) -> Result<Option<User>, StoreError>;
    /// Accounts whose username, email or name contains `query` (case-insensitively), oldest
    /// first, with the total count of matches.
    async fn list_users(
        &self,
        query: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<UserPage, StoreError>;
    /// Applies the change; a changed role or a deactivation revokes every session, atomically.
    async fn admin_update_user(
        &self,
        user_db_id: UserId,
        change: &AdminChange,
        now: Timestamp,
    ) -> Result<User, StoreError>;

    /// Stores the key and queues its notice email, atomically.
    async fn create_api_key(
        &self,
        key: &NewApiKey,
        notice: &NewEmail,
        audit: &NewAuditEvent,
    ) -> Result<(), StoreError>;
    /// Newest first.
    async fn list_api_keys(&self, user_db_id: UserId) -> Result<Vec<ApiKey>, StoreError>;
    /// `false` when the user has no such key.
    /// With its audit entry, atomically (none when there was no such key).
    async fn delete_api_key(
        &self,
        user_db_id: UserId,
        key_id: &ApiKeyId,
        audit: &NewAuditEvent,
    ) -> Result<bool, StoreError>;
    /// The key and its owner if the key exists, has not expired and the owner is active: one
    /// round trip.
    async fn api_key_owner(
        &self,
        key_id: &ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<KeyOwner>, StoreError>;
    async fn touch_api_key(&self, key_id: &ApiKeyId, now: Timestamp) -> Result<(), StoreError>;

    /// Claims the next due email until `lease_until` (after which another worker may take
    /// it again), or `None` when nothing is due.
    async fn claim_email(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<OutboxEmail>, StoreError>;
    async fn finish_email(
        &self,
        id: i64,
        delivery: &Delivery,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    // Social sign-in (SPEC §11).

    /// The account an identity is linked to (active or not).
    async fn identity_user(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<User>, StoreError>;
    /// By email, case-insensitively; `email` is already lower-cased.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// Creates an account for a social identity, with the identity (and `users.github_id`
    /// for GitHub), atomically. `user.password_hash` is an unusable one.
    async fn create_social_user(
        &self,
        user: &NewUser,
        email_verified: bool,
        identity: &NewIdentity,
    ) -> Result<User, StoreError>;
    /// Links the identity to the account and queues the notice, atomically; `IdentityTaken`
    /// when the identity is linked already or the account has one of this provider.
    async fn link_identity(
        &self,
        user_db_id: UserId,
        identity: &NewIdentity,
        notice: &NewEmail,
    ) -> Result<(), StoreError>;
    /// Oldest first.
    async fn list_identities(&self, user_db_id: UserId) -> Result<Vec<Identity>, StoreError>;
    /// Removes the account's identity of `provider` unless that would leave the account no
    /// way to sign in (no usable password and no other identity), judged in the same
    /// transaction as the removal.
    async fn unlink_identity(
        &self,
        user_db_id: UserId,
        provider: &str,
    ) -> Result<Unlink, StoreError>;
    /// Stores a started flow and drops expired flows and codes.
    async fn create_sso_flow(&self, flow: &NewSsoFlow) -> Result<(), StoreError>;
    /// Removes and returns the flow of this state digest: single use under concurrency. The
    /// caller checks its browser binding and expiry.
    async fn take_sso_flow(&self, state_hash: &str) -> Result<Option<SsoFlow>, StoreError>;
    async fn create_sso_code(&self, code: &NewSsoCode) -> Result<(), StoreError>;
    /// Removes and returns the code of this digest (single use); the caller checks expiry.
    async fn take_sso_code(&self, code_hash: &str) -> Result<Option<SsoCode>, StoreError>;

    // Two-factor authentication (SPEC §13).
    async fn totp(&self, user_db_id: UserId) -> Result<Option<TotpRecord>, StoreError>;
    /// Replaces an unconfirmed secret (or creates one); `false` when one is already in force.
    async fn begin_totp(
        &self,
        user_db_id: UserId,
        sealed: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Puts the unconfirmed secret in force with `step` as used, replaces the recovery codes,
    /// and writes the audit entry and notice, in one transaction; `false` if nothing was pending.
    async fn confirm_totp(
        &self,
        user_db_id: UserId,
        step: i64,
        recovery_hashes: &[String],
        audit: &NewAuditEvent,
        notice: &NewEmail,
    ) -> Result<bool, StoreError>;
    /// Records `step` as used if it is later than the last used one: `false` is a replay.
    async fn accept_totp_step(&self, user_db_id: UserId, step: i64) -> Result<bool, StoreError>;
    /// Uses a recovery code once; `false` when unknown or used.
    async fn use_recovery_code(
        &self,
        user_db_id: UserId,
        hash: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    async fn recovery_codes_left(&self, user_db_id: UserId) -> Result<i64, StoreError>;
    /// Removes the secret and recovery codes with the audit entry and notice, atomically;
    /// `false` when two-factor was not on.
    async fn remove_totp(
        &self,
        user_db_id: UserId,
        audit: &NewAuditEvent,
        notice: &NewEmail,
    ) -> Result<bool, StoreError>;
    async fn create_mfa_challenge(
        &self,
        hash: &str,
        challenge: &MfaChallenge,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// The challenge if unused, unexpired and with fewer than `max_failures` wrong codes.
    async fn mfa_challenge(
        &self,
        hash: &str,
        now: Timestamp,
        max_failures: i32,
    ) -> Result<Option<MfaChallenge>, StoreError>;
    /// Single use under concurrency: `false` when already used.
    async fn use_mfa_challenge(&self, hash: &str, now: Timestamp) -> Result<bool, StoreError>;

    // Audit log and security notices (SPEC §13).
    /// Appends the entry, with its notice if any, in one transaction.
    async fn record_audit(
        &self,
        event: &NewAuditEvent,
        notice: Option<&NewEmail>,
    ) -> Result<(), StoreError>;
    /// Newest first, with the count of all that match.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AuditEvent>, i64), StoreError>;
    /// Whether an entry of `kind` about `target` from `ip` exists since `since`.
    async fn audit_exists_since(
        &self,
        kind: &str,
        target: &UserUid,
        ip: &str,
        since: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Location and user agent of the account's successful sign-ins other than `except`,
    /// newest first.
    async fn earlier_sign_ins(
        &self,
        user_db_id: UserId,
        except: LocationLogId,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError>;
    /// Stores the "this wasn't me" link with its notice email, atomically.
    async fn create_sign_in_notice(
        &self,
        notice: &NewSignInNotice,
        email: &NewEmail,
    ) -> Result<(), StoreError>;
    /// Uses the link once and ends every session of its account, with the audit entry, in
    /// one transaction (the entry's `actor` and `target` become the account); the account, or
    /// `None` when unknown, used or expired.
    async fn use_sign_in_notice(
        &self,
        hash: &str,
        now: Timestamp,
        audit: &NewAuditEvent,
    ) -> Result<Option<User>, StoreError>;
    /// The account of a refresh token (rotated or not), for the record of its reuse.
    async fn refresh_token_owner(&self, hash: &str) -> Result<Option<UserUid>, StoreError>;

    /// The outbox's backlog, for `/metrics`.
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;
    /// The connection pool's connections, for `/metrics`.
    fn pool_stats(&self) -> PoolStats;
}

/// Emails waiting to be sent, given up, and when the oldest waiting one was queued.
#[derive(Debug, Clone, Default)]
pub struct OutboxStats {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending: Option<Timestamp>,
}

/// Open connections of the pool: lent to a query, or idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
}

/// A social identity to store: `provider` is the sign-in method (`github`, `google`,
/// `oidc:<name>`), `subject` the provider's stable id of the person.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub now: Timestamp,
}

/// A linked identity as its owner sees it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub provider: String,
    pub email: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlink {
    Unlinked,
    NotLinked,
    /// Refused: it is the last way in.
    LastWayIn,
}

/// The hash stored for an account that has no password (created by social sign-in). It is
/// no PHC string, so nothing ever verifies against it; sign-in with a password then hashes
/// against the dummy hash instead, at the same cost as a wrong password.
pub const NO_PASSWORD_PREFIX: &str = "!no-password:";

/// Whether a stored password hash can ever verify.
pub fn password_is_usable(hash: &str) -> bool {
    !hash.starts_with(NO_PASSWORD_PREFIX) && !hash.is_empty()
}

#[derive(Debug, Clone)]
pub struct NewSsoFlow {
    pub state_hash: String,
    pub browser_hash: String,
    pub provider: String,
    pub redirect_to: Option<String>,
    pub link_user: Option<UserId>,
    /// For a link: the session that started it (the callback needs it still active).
    pub link_session: Option<SessionId>,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct SsoFlow {
    pub browser_hash: String,
    pub provider: String,
    pub redirect_to: Option<String>,
    pub link_user: Option<UserId>,
    pub link_session: Option<SessionId>,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewSsoCode {
    pub code_hash: String,
    pub user_db_id: UserId,
    pub method: String,
    pub attempt: AttemptId,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct SsoCode {
    pub user_db_id: UserId,
    pub method: String,
    pub attempt: AttemptId,
    pub expires_at: Timestamp,
}

/// One kind of data that outlives its use, pruned in the background (SPEC §9).
#[derive(Debug, Clone, Copy)]
pub enum Prune {
    /// `login_attempts` and `user_location_logs` rows older than the retention.
    History { before: Timestamp },
    /// Refresh tokens of sessions that have ended (revoked or expired) — never of a live
    /// session, where a replay must stay detectable.
    RotatedTokens { now: Timestamp },
    /// Sessions that ended before `before`.
    EndedSessions { before: Timestamp },
    /// Delivered or given-up emails created before `before`.
    FinishedEmails { before: Timestamp },
    /// Second-step challenges and "this wasn't me" links that expired before `now` (used or
    /// not: a used one is single-use by its `used_at`, an expired one by its `expires_at`).
    ExpiredMfaTokens { now: Timestamp },
}

/// Connects to the database named by the configuration and brings its schema up to date.
pub async fn connect(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.database_url.expose();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::connect(url).await?))
    } else {
        Ok(Arc::new(
            postgres::connect(url, config.database_ca_pem.as_deref()).await?,
        ))
    }
}
