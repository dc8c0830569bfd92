//! Storage: `trait Store`, its models and errors; one implementation per backend, chosen from the URL.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::time::Timestamp;

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
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// Roles other than `admin` in an adopted database (or none) are plain users.
    pub fn from_name(name: Option<&str>) -> Self {
        match name {
            Some("admin") => Role::Admin,
            _ => Role::User,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// An account as the service sees it. `db_id` is internal and never leaves the service.
#[derive(Debug, Clone)]
pub struct User {
    pub db_id: i64,
    pub uid: String,
    pub username: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub role: Role,
    pub email_verified: bool,
    pub active: bool,
    pub created_at: Timestamp,
    pub last_login: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub uid: String,
    pub username: String,
    pub name: String,
    /// Lower-cased.
    pub email: String,
    pub phone: Option<String>,
    pub password_hash: String,
    pub role: Role,
    pub now: Timestamp,
}

/// A user with the stored password hash, for sign-in and re-authentication.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub user_db_id: i64,
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
    pub id: String,
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
    /// The session's new end (sliding lifetime).
    pub expires_at: Timestamp,
}

#[derive(Debug)]
pub enum RefreshOutcome {
    Rotated(Box<SessionUser>),
    /// The token had already been rotated: its session is now revoked.
    Reused,
    /// Unknown token, or its session is revoked, expired, or its user inactive.
    Invalid,
}

#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub name: Option<String>,
    /// `Some(None)` clears the phone.
    pub phone: Option<Option<String>>,
}

/// Everything the service keeps. Implementations turn unique-key violations into
/// `UsernameTaken` / `EmailTaken` and run multi-step changes in one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_user(&self, user: &NewUser) -> Result<User, StoreError>;
    /// By username or email, case-insensitively; `identifier` is already lower-cased.
    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, StoreError>;
    async fn credentials_by_id(&self, user_db_id: i64) -> Result<Option<Credentials>, StoreError>;
    async fn set_password_hash(&self, user_db_id: i64, hash: &str) -> Result<(), StoreError>;
    async fn update_profile(
        &self,
        user_db_id: i64,
        change: &ProfileChange,
    ) -> Result<User, StoreError>;
    /// The account and everything of it (sessions, tokens, logs, its sign-in attempts).
    async fn delete_user(&self, user_db_id: i64) -> Result<(), StoreError>;

    /// Inserts the session and its first refresh token and sets the user's `last_login`.
    async fn start_session(&self, session: &NewSession) -> Result<(), StoreError>;
    /// The session if it is neither revoked nor expired at `now` and its user is active.
    async fn session_by_id(
        &self,
        session_id: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError>;
    async fn session_by_cookie(
        &self,
        cookie_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError>;
    /// Single-use even under concurrency: of two rotations of one token, one gets `Rotated`.
    async fn rotate_refresh_token(&self, rotation: &Rotation)
        -> Result<RefreshOutcome, StoreError>;
    async fn touch_session(&self, session_id: &str, now: Timestamp) -> Result<(), StoreError>;
    /// Active sessions of the user, newest first.
    async fn list_sessions(
        &self,
        user_db_id: i64,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError>;
    /// `false` when the user has no such active session.
    async fn revoke_session(
        &self,
        user_db_id: i64,
        session_id: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    async fn revoke_all_sessions(&self, user_db_id: i64, now: Timestamp)
        -> Result<u64, StoreError>;
}

/// Connects to the database named by the configuration and brings its schema up to date.
pub async fn connect(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.database_url.expose();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else {
        Ok(Arc::new(
            postgres::PgStore::connect(url, config.database_ca_pem.as_deref()).await?,
        ))
    }
}
