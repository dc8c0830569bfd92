//! Accounts: creating, finding, changing and deleting them; the administrator's view.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Transaction, Type};

use super::rows::{CredentialsRow, UserRow, CREDENTIAL_COLUMNS, USER_COLUMNS};
use super::{SqlStore, Value};
use crate::domain::{SessionId, UserId, UserUid};
use crate::store::dialect::{Dialect, LegacyTime};
use crate::store::{
    AdminChange, Credentials, NewAuditEvent, NewEmail, NewToken, NewUser, ProfileChange,
    StoreError, User, UserPage,
};
use crate::time::Timestamp;

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
    pub(super) async fn create_user(
        &self,
        user: &NewUser,
        verification: &NewToken,
        welcome: &NewEmail,
    ) -> Result<User, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let (db_id,): (UserId,) = sqlx::query_as(
            "INSERT INTO users (user_uid, full_name, email, phone, password, username, role_id, \
             created_at, email_verified, active) \
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT role_id FROM roles WHERE name = $7), $8, FALSE, TRUE) \
             RETURNING CAST(user_db_id AS BIGINT)",
        )
        .bind(&user.uid)
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(user.phone.as_ref().map(|p| p.as_str().to_owned()))
        .bind(&user.password_hash)
        .bind(user.username.as_str())
        .bind(user.role.as_str())
        .bind(LegacyTime(user.now))
        .fetch_one(&mut *tx)
        .await
        .map_err(DB::conflict)?;
        Self::insert_token(&mut tx, db_id, verification, user.now).await?;
        Self::enqueue(&mut tx, welcome, user.now).await?;
        tx.commit().await?;
        Ok(User {
            db_id,
            uid: user.uid.clone(),
            username: user.username.as_str().to_owned(),
            name: user.name.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            phone: user.phone.as_ref().map(|p| p.as_str().to_owned()),
            role: user.role,
            email_verified: false,
            active: true,
            created_at: user.now,
            last_login: None,
        })
    }

    pub(super) async fn find_credentials(
        &self,
        identifier: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, {CREDENTIAL_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE lower(u.username) = $1 OR lower(u.email) = $1 LIMIT 1"
        );
        let row: Option<CredentialsRow> = sqlx::query_as(&sql)
            .bind(identifier)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn credentials_by_id(
        &self,
        user_db_id: UserId,
    ) -> Result<Option<Credentials>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, {CREDENTIAL_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_db_id = $1"
        );
        let row: Option<CredentialsRow> = sqlx::query_as(&sql)
            .bind(user_db_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn upgrade_password_hash(
        &self,
        user_db_id: UserId,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password = $3 WHERE user_db_id = $1 AND password = $2")
            .bind(user_db_id)
            .bind(old)
            .bind(new)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn update_profile(
        &self,
        user_db_id: UserId,
        change: &ProfileChange,
    ) -> Result<User, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE users SET full_name = COALESCE($2, full_name), \
             phone = CASE WHEN $3 THEN $4 ELSE phone END WHERE user_db_id = $1",
        )
        .bind(user_db_id)
        .bind(change.name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(change.phone.is_some())
        .bind(
            change
                .phone
                .as_ref()
                .and_then(|p| p.as_ref().map(|p| p.as_str().to_owned())),
        )
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(user)
    }

    pub(super) async fn delete_user(&self, user_db_id: UserId) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // Sign-in attempts are keyed by the identifier as typed, not by the account.
        sqlx::query(
            "DELETE FROM login_attempts WHERE email_or_username IN \
             (SELECT lower(username) FROM users WHERE user_db_id = $1 \
              UNION SELECT lower(email) FROM users WHERE user_db_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM email_outbox WHERE lower(to_address) = \
             (SELECT lower(email) FROM users WHERE user_db_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        // Refresh tokens, then sessions, then the account: the order a rotation locks them
        // in, so a refresh racing the deletion waits instead of deadlocking.
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT session_id FROM auth_sessions WHERE user_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM auth_sessions WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM users WHERE user_db_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets the password, revokes every session but `keep_session`, queues the notice.
    pub(super) async fn change_password(
        &self,
        user_db_id: UserId,
        password_hash: &str,
        keep_session: &SessionId,
        notice: &NewEmail,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        sqlx::query("UPDATE users SET password = $2 WHERE user_db_id = $1")
            .bind(user_db_id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $3 WHERE user_id = $1 AND session_id <> $2 \
             AND revoked_at IS NULL",
        )
        .bind(user_db_id)
        .bind(keep_session)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::enqueue(&mut tx, notice, now).await?;
        Self::append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn user_by_uid(&self, uid: &UserUid) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_uid = $1"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(uid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn list_users(
        &self,
        query: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<UserPage, StoreError> {
        let pattern = query.map(contains_pattern);
        let filter = "(CAST($1 AS TEXT) IS NULL OR lower(u.username) LIKE $1 ESCAPE '\\' \
             OR lower(u.email) LIKE $1 ESCAPE '\\' OR lower(u.full_name) LIKE $1 ESCAPE '\\')";
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE {filter} ORDER BY u.created_at, u.user_db_id LIMIT $2 OFFSET $3"
        );
        let rows: Vec<UserRow> = sqlx::query_as(&sql)
            .bind(&pattern)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let (total,): (i64,) =
            sqlx::query_as(&format!("SELECT count(*) FROM users u WHERE {filter}"))
                .bind(&pattern)
                .fetch_one(&self.pool)
                .await?;
        Ok(UserPage {
            users: rows.into_iter().map(Into::into).collect(),
            total,
        })
    }

    pub(super) async fn admin_update_user(
        &self,
        user_db_id: UserId,
        change: &AdminChange,
        now: Timestamp,
    ) -> Result<User, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // Two concurrent changes are applied one after the other, each seeing the other's
        // result, so a role change always revokes the sessions opened before it.
        let for_update = DB::FOR_UPDATE;
        sqlx::query(&format!(
            "SELECT 1 FROM users WHERE user_db_id = $1 {for_update}"
        ))
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        let before = Self::user_by_id(&mut tx, user_db_id).await?;
        sqlx::query(
            "UPDATE users SET \
             role_id = CASE WHEN CAST($2 AS TEXT) IS NULL THEN role_id \
                       ELSE (SELECT role_id FROM roles WHERE name = $2) END, \
             active = COALESCE($3, active), email_verified = COALESCE($4, email_verified) \
             WHERE user_db_id = $1",
        )
        .bind(user_db_id)
        .bind(change.role.map(|r| r.as_str().to_owned()))
        .bind(change.active)
        .bind(change.email_verified)
        .execute(&mut *tx)
        .await?;
        let after = Self::user_by_id(&mut tx, user_db_id).await?;
        if after.role != before.role || (before.active && !after.active) {
            Self::revoke_sessions_in(&mut tx, user_db_id, now).await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    /// The account, inside the caller's transaction.
    pub(super) async fn user_by_id(
        tx: &mut Transaction<'_, DB>,
        user_db_id: UserId,
    ) -> Result<User, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_db_id = $1"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(user_db_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(Into::into).ok_or(StoreError::NotFound)
    }
}

impl From<CredentialsRow> for Credentials {
    fn from(r: CredentialsRow) -> Self {
        Credentials {
            user: r.user.into(),
            password_hash: r.password,
            two_factor: r.two_factor,
        }
    }
}

/// A `LIKE … ESCAPE '\\'` pattern matching values that contain `query` (lower-cased).
fn contains_pattern(query: &str) -> String {
    let escaped = query
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}
