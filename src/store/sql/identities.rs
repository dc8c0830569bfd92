//! Social sign-in: identities linked to accounts, flows in progress and one-time codes.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Transaction, Type};

use super::rows::{UserRow, USER_COLUMNS};
use super::{SqlStore, Value};
use crate::domain::{SessionId, UserId};
use crate::store::dialect::{Dialect, LegacyTime};
use crate::store::{
    password_is_usable, AttemptId, Identity, NewEmail, NewIdentity, NewSsoCode, NewSsoFlow,
    NewUser, SsoCode, SsoFlow, StoreError, Unlink, User,
};
use crate::time::Timestamp;

/// The provider whose id also fills the old `users.github_id` column.
const GITHUB: &str = "github";

fn identity_conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::IdentityTaken,
        _ => StoreError::Database(e),
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    String: Value<DB>,
    i64: Value<DB>,
    i32: Value<DB>,
    bool: Value<DB>,
    Timestamp: Value<DB>,
    Option<String>: Value<DB>,
    Option<bool>: Value<DB>,
    Option<Timestamp>: Value<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    pub(super) async fn identity_user(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM user_identities i JOIN users u ON u.user_db_id = i.user_id \
             LEFT JOIN roles r ON r.role_id = u.role_id WHERE i.provider = $1 AND i.subject = $2"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(provider)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE lower(u.email) = $1 LIMIT 1"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn create_social_user(
        &self,
        user: &NewUser,
        email_verified: bool,
        identity: &NewIdentity,
    ) -> Result<User, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let (db_id,): (UserId,) = sqlx::query_as(
            "INSERT INTO users (user_uid, full_name, email, phone, password, username, role_id, \
             created_at, email_verified, active) \
             VALUES ($1, $2, $3, NULL, $4, $5, (SELECT role_id FROM roles WHERE name = $6), $7, $8, TRUE) \
             RETURNING CAST(user_db_id AS BIGINT)",
        )
        .bind(&user.uid)
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(&user.password_hash)
        .bind(user.username.as_str())
        .bind(user.role.as_str())
        .bind(LegacyTime(user.now))
        .bind(email_verified)
        .fetch_one(&mut *tx)
        .await
        .map_err(DB::conflict)?;
        Self::insert_identity(&mut tx, db_id, identity).await?;
        let created = Self::user_by_id(&mut tx, db_id).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn insert_identity(
        tx: &mut Transaction<'_, DB>,
        user_db_id: UserId,
        identity: &NewIdentity,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO user_identities (user_id, provider, subject, email, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user_db_id)
        .bind(&identity.provider)
        .bind(&identity.subject)
        .bind(&identity.email)
        .bind(identity.now)
        .execute(&mut **tx)
        .await
        .map_err(identity_conflict)?;
        if identity.provider == GITHUB {
            sqlx::query("UPDATE users SET github_id = $2 WHERE user_db_id = $1")
                .bind(user_db_id)
                .bind(&identity.subject)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn link_identity(
        &self,
        user_db_id: UserId,
        identity: &NewIdentity,
        notice: &NewEmail,
    ) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        Self::insert_identity(&mut tx, user_db_id, identity).await?;
        Self::enqueue(&mut tx, notice, identity.now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn list_identities(
        &self,
        user_db_id: UserId,
    ) -> Result<Vec<Identity>, StoreError> {
        let rows: Vec<(String, Option<String>, Timestamp)> = sqlx::query_as(
            "SELECT provider, email, created_at FROM user_identities WHERE user_id = $1 \
             ORDER BY created_at, identity_id",
        )
        .bind(user_db_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(provider, email, created_at)| Identity {
                provider,
                email,
                created_at,
            })
            .collect())
    }

    pub(super) async fn unlink_identity(
        &self,
        user_db_id: UserId,
        provider: &str,
    ) -> Result<Unlink, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // The account row is locked first (PostgreSQL), so that two unlinks of its last two
        // identities cannot both see the other one still there.
        let sql = format!(
            "SELECT password FROM users WHERE user_db_id = $1 {}",
            DB::FOR_UPDATE
        );
        let account: Option<(String,)> = sqlx::query_as(&sql)
            .bind(user_db_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((password,)) = account else {
            return Ok(Unlink::NotLinked);
        };
        let providers: Vec<(String,)> =
            sqlx::query_as("SELECT provider FROM user_identities WHERE user_id = $1")
                .bind(user_db_id)
                .fetch_all(&mut *tx)
                .await?;
        if !providers.iter().any(|(p,)| p == provider) {
            return Ok(Unlink::NotLinked);
        }
        if providers.len() == 1 && !password_is_usable(&password) {
            return Ok(Unlink::LastWayIn);
        }
        sqlx::query("DELETE FROM user_identities WHERE user_id = $1 AND provider = $2")
            .bind(user_db_id)
            .bind(provider)
            .execute(&mut *tx)
            .await?;
        if provider == GITHUB {
            sqlx::query("UPDATE users SET github_id = NULL WHERE user_db_id = $1")
                .bind(user_db_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Unlink::Unlinked)
    }

    pub(super) async fn create_sso_flow(&self, flow: &NewSsoFlow) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // Abandoned flows and unexchanged codes go as new ones come: neither table grows.
        sqlx::query("DELETE FROM sso_flows WHERE expires_at < $1")
            .bind(flow.now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sso_codes WHERE expires_at < $1")
            .bind(flow.now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sso_flows (state_hash, browser_hash, provider, redirect_to, link_user_id, \
             link_session_id, created_at, expires_at) VALUES ($1, $2, $3, $4, NULLIF($5, 0), $6, $7, $8)",
        )
        .bind(&flow.state_hash)
        .bind(&flow.browser_hash)
        .bind(&flow.provider)
        .bind(&flow.redirect_to)
        .bind(flow.link_user.map_or(0, UserId::get))
        .bind(flow.link_session.as_ref().map(|s| s.as_str().to_owned()))
        .bind(flow.now)
        .bind(flow.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn take_sso_flow(
        &self,
        state_hash: &str,
    ) -> Result<Option<SsoFlow>, StoreError> {
        type Row = (
            String,
            String,
            Option<String>,
            i64,
            Option<String>,
            Timestamp,
        );
        let row: Option<Row> = sqlx::query_as(
            "DELETE FROM sso_flows WHERE state_hash = $1 RETURNING browser_hash, provider, \
             redirect_to, COALESCE(CAST(link_user_id AS BIGINT), 0), link_session_id, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(browser_hash, provider, redirect_to, link_user, link_session, expires_at)| SsoFlow {
                browser_hash,
                provider,
                redirect_to,
                link_user: (link_user != 0).then(|| UserId::new(link_user)),
                link_session: link_session.map(SessionId::new),
                expires_at,
            },
        ))
    }

    pub(super) async fn create_sso_code(&self, code: &NewSsoCode) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sso_codes (code_hash, user_id, method, attempt_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&code.code_hash)
        .bind(code.user_db_id)
        .bind(&code.method)
        .bind(code.attempt.0)
        .bind(code.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn take_sso_code(
        &self,
        code_hash: &str,
    ) -> Result<Option<SsoCode>, StoreError> {
        let row: Option<(i64, String, i64, Timestamp)> = sqlx::query_as(
            "DELETE FROM sso_codes WHERE code_hash = $1 RETURNING CAST(user_id AS BIGINT), method, \
             CAST(attempt_id AS BIGINT), expires_at",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(user, method, attempt, expires_at)| SsoCode {
            user_db_id: UserId::new(user),
            method,
            attempt: AttemptId(attempt),
            expires_at,
        }))
    }
}
