//! `Error`: the one error type of the use-cases, in the product's words. It knows nothing of
//! HTTP: `http::error` maps it to a status and the JSON envelope.

pub use crate::domain::FieldError;
use crate::store::StoreError;

/// Everything that can go wrong, in the product's words. Use-cases return it; the HTTP
/// edge turns it into a status and an envelope.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// A request the HTTP layer cannot take as it is (an ambiguous head).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("authentication required")]
    Unauthorized,
    #[error("access token expired")]
    TokenExpired,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("refresh token reused")]
    RefreshTokenReused,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("email not verified")]
    EmailNotVerified,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("username taken")]
    UsernameTaken,
    #[error("email taken")]
    EmailTaken,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// The database does not answer: a transient condition, retried by the client.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Every password-hashing slot is taken for longer than `HASH_QUEUE_MAX_WAIT_MS`: answered
    /// at once rather than queued (SPEC §14).
    #[error("overloaded")]
    Overloaded { retry_after_secs: u64 },
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
    /// A social sign-in flow that is unknown, expired, already used or started in another
    /// browser (SPEC §11).
    #[error("invalid social sign-in state")]
    SsoState,
    /// Social sign-in refused for a reason the person can act on (403).
    #[error("social sign-in refused: {code}")]
    SsoRefused {
        code: &'static str,
        message: &'static str,
    },
    /// A social identity that cannot be linked or unlinked as asked (409).
    #[error("social identity conflict: {code}")]
    SsoConflict {
        code: &'static str,
        message: &'static str,
    },
    /// The identity provider failed, timed out or answered what cannot be trusted (an
    /// `id_token` that does not verify); the cause is logged, never sent.
    #[error("identity provider: {0}")]
    Provider(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => Error::UsernameTaken,
            StoreError::EmailTaken => Error::EmailTaken,
            StoreError::NotFound => Error::NotFound("resource"),
            StoreError::IdentityTaken => Error::SsoConflict {
                code: "identity_taken",
                message: "This sign-in method is already linked to an account, or this account already has one of this provider.",
            },
            StoreError::Database(e) if is_unavailable(&e) => Error::Unavailable(e.to_string()),
            other => Error::Internal(anyhow::Error::new(other)),
        }
    }
}

/// Errors that say the database cannot be reached right now (not that a query is wrong).
/// A connection cut mid-handshake or mid-answer reads as a protocol error (the bytes that
/// came, or did not, are not what PostgreSQL sends): the database is away, not the query wrong.
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
    }))
}

impl From<crate::domain::ValidationErrors> for Error {
    fn from(e: crate::domain::ValidationErrors) -> Self {
        Error::Validation(e.0)
    }
}
