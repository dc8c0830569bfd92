//! Rows as the statements read them, and how they become the store's models.

use super::super::dialect::LegacyTime;
use super::super::{ApiKey, KeyOwner, LoginRecord, Role, Session, SessionUser, User};
use crate::domain::{ApiKeyId, Scope, SessionId, UserId, UserUid};
use crate::time::Timestamp;

/// The columns of a user, with its role's name (`u` is `users`, `r` is `roles`).
pub(super) const USER_COLUMNS: &str = "CAST(u.user_db_id AS BIGINT) AS db_id, u.user_uid, \
     u.username, u.full_name, u.email, u.phone, r.name AS role_name, \
     COALESCE(u.email_verified, FALSE) AS email_verified, COALESCE(u.active, TRUE) AS active, \
     u.created_at, u.last_login";

/// The columns of a session (`s` is `auth_sessions`), named apart from the user's.
pub(super) const SESSION_COLUMNS: &str = "s.session_id, s.created_at AS session_created_at, \
     s.last_used_at AS session_last_used_at, s.expires_at AS session_expires_at, \
     s.ip_address AS session_ip, s.user_agent AS session_user_agent";

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    db_id: UserId,
    user_uid: UserUid,
    username: String,
    full_name: String,
    email: String,
    phone: Option<String>,
    role_name: Option<String>,
    email_verified: bool,
    active: bool,
    created_at: LegacyTime,
    last_login: Option<LegacyTime>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            db_id: r.db_id,
            uid: r.user_uid,
            username: r.username,
            name: r.full_name,
            email: r.email,
            phone: r.phone,
            role: Role::from_name(r.role_name.as_deref()),
            email_verified: r.email_verified,
            active: r.active,
            created_at: r.created_at.0,
            last_login: r.last_login.map(|t| t.0),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct CredentialsRow {
    #[sqlx(flatten)]
    pub user: UserRow,
    pub password: String,
    pub two_factor: bool,
}

/// The columns of [`CredentialsRow`] after the user's: the password hash, and whether a
/// confirmed TOTP is in force.
pub(super) const CREDENTIAL_COLUMNS: &str = "u.password, EXISTS (SELECT 1 FROM mfa_totp t \
     WHERE t.user_id = u.user_db_id AND t.confirmed_at IS NOT NULL) AS two_factor";

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    session_id: SessionId,
    session_created_at: Timestamp,
    session_last_used_at: Timestamp,
    session_expires_at: Timestamp,
    session_ip: Option<String>,
    session_user_agent: Option<String>,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            id: r.session_id,
            created_at: r.session_created_at,
            last_used_at: r.session_last_used_at,
            expires_at: r.session_expires_at,
            ip: r.session_ip,
            user_agent: r.session_user_agent,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionUserRow {
    #[sqlx(flatten)]
    session: SessionRow,
    #[sqlx(flatten)]
    user: UserRow,
}

impl From<SessionUserRow> for SessionUser {
    fn from(r: SessionUserRow) -> Self {
        SessionUser {
            session: r.session.into(),
            user: r.user.into(),
        }
    }
}

/// An API key as stored: its scopes one space-separated text.
#[derive(sqlx::FromRow)]
pub(super) struct ApiKeyRow {
    key_id: ApiKeyId,
    name: String,
    scopes: String,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
    last_used_at: Option<Timestamp>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> Self {
        ApiKey {
            id: r.key_id,
            name: r.name,
            scopes: Scope::parse_list(&r.scopes),
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct KeyOwnerRow {
    key_id: ApiKeyId,
    key_name: String,
    scopes: String,
    key_created_at: Timestamp,
    key_expires_at: Option<Timestamp>,
    key_last_used_at: Option<Timestamp>,
    secret_hash: String,
    #[sqlx(flatten)]
    user: UserRow,
}

impl From<KeyOwnerRow> for KeyOwner {
    fn from(r: KeyOwnerRow) -> Self {
        KeyOwner {
            key: ApiKey {
                id: r.key_id,
                name: r.key_name,
                scopes: Scope::parse_list(&r.scopes),
                created_at: r.key_created_at,
                expires_at: r.key_expires_at,
                last_used_at: r.key_last_used_at,
            },
            secret_hash: r.secret_hash.trim_end().to_owned(),
            user: r.user.into(),
        }
    }
}

/// A row of `user_location_logs`, its JSON and status read as text, by position (casts and
/// a function's result name the columns differently).
pub(super) struct LoginRecordRow {
    ip_address: String,
    location: String,
    user_agent: Option<String>,
    access_status: String,
    created_at: LegacyTime,
    method: Option<String>,
}

impl<'r, R> sqlx::FromRow<'r, R> for LoginRecordRow
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    LegacyTime: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            ip_address: row.try_get(0)?,
            location: row.try_get(1)?,
            user_agent: row.try_get(2)?,
            access_status: row.try_get(3)?,
            created_at: row.try_get(4)?,
            method: row.try_get(5)?,
        })
    }
}

impl From<LoginRecordRow> for LoginRecord {
    fn from(r: LoginRecordRow) -> Self {
        LoginRecord {
            ip: r.ip_address,
            location: serde_json::from_str(&r.location).unwrap_or(serde_json::Value::Null),
            user_agent: r.user_agent,
            success: r.access_status == "success",
            created_at: r.created_at.0,
            method: r.method,
        }
    }
}
