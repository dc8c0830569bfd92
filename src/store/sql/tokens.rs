//! The single-use tokens of the old `tokens` table: email verification and password reset.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Transaction, Type};

use super::rows::{UserRow, USER_COLUMNS};
use super::{SqlStore, Value};
use crate::domain::UserId;
use crate::store::dialect::{Dialect, LegacyTime};
use crate::store::{NewAuditEvent, NewEmail, NewToken, StoreError, TokenKind, User};
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
    pub(super) async fn issue_token(
        &self,
        user_db_id: UserId,
        token: &NewToken,
        email: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        Self::insert_token(&mut tx, user_db_id, token, now).await?;
        Self::enqueue(&mut tx, email, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn token_user(
        &self,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        let token_type = DB::TOKEN_TYPE;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM tokens t JOIN users u ON u.user_db_id = t.user_id \
             LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE t.token = $1 AND t.type = $2{token_type} AND COALESCE(t.active, TRUE) \
             AND t.expires_at > $3 AND COALESCE(u.active, TRUE)"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(hash)
            .bind(kind.as_str())
            .bind(LegacyTime(now))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn reset_password(
        &self,
        hash: &str,
        password_hash: &str,
        notice: &NewEmail,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let Some(user_db_id) =
            Self::consume_token(&mut tx, TokenKind::PasswordReset, hash, now).await?
        else {
            return Ok(None);
        };
        let done = sqlx::query(
            "UPDATE users SET password = $2 WHERE user_db_id = $1 AND COALESCE(active, TRUE)",
        )
        .bind(user_db_id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&done) == 0 {
            return Ok(None);
        }
        // Recovery undoes whatever a thief set up: every session, every key, every lockout.
        Self::revoke_sessions_in(&mut tx, user_db_id, now).await?;
        Self::delete_api_keys_in(&mut tx, user_db_id).await?;
        Self::clear_failures_in(&mut tx, user_db_id).await?;
        Self::enqueue(&mut tx, notice, now).await?;
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        let mut audit = audit.clone();
        audit.actor = Some(user.uid.clone());
        audit.target = Some(user.uid.clone());
        Self::append_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    pub(super) async fn verified_by_token(&self, hash: &str) -> Result<bool, StoreError> {
        let token_type = DB::TOKEN_TYPE;
        let row: Option<(bool,)> = sqlx::query_as(&format!(
            "SELECT COALESCE(u.email_verified, FALSE) FROM tokens t \
             JOIN users u ON u.user_db_id = t.user_id \
             WHERE t.token = $1 AND t.type = 'email_verification'{token_type} LIMIT 1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some_and(|(verified,)| verified))
    }

    pub(super) async fn verify_email(
        &self,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let Some(user_db_id) =
            Self::consume_token(&mut tx, TokenKind::EmailVerification, hash, now).await?
        else {
            return Ok(None);
        };
        let done = sqlx::query(
            "UPDATE users SET email_verified = TRUE WHERE user_db_id = $1 AND COALESCE(active, TRUE)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&done) == 0 {
            return Ok(None);
        }
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    /// Earlier tokens of the kind stop working; the new one is stored as its digest.
    pub(super) async fn insert_token(
        tx: &mut Transaction<'_, DB>,
        user_db_id: UserId,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let token_type = DB::TOKEN_TYPE;
        sqlx::query(&format!(
            "UPDATE tokens SET active = FALSE WHERE user_id = $1 \
             AND type = $2{token_type} AND COALESCE(active, TRUE)"
        ))
        .bind(user_db_id)
        .bind(token.kind.as_str())
        .execute(&mut **tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO tokens (user_id, token, type, created_at, expires_at, active) \
             VALUES ($1, $2, $3{token_type}, $4, $5, TRUE)"
        ))
        .bind(user_db_id)
        .bind(&token.hash)
        .bind(token.kind.as_str())
        .bind(LegacyTime(now))
        .bind(LegacyTime(token.expires_at))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Marks the token used and returns its user's id. The row lock makes it single-use: a
    /// concurrent second use waits, then finds it inactive.
    async fn consume_token(
        tx: &mut Transaction<'_, DB>,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<UserId>, StoreError> {
        let token_type = DB::TOKEN_TYPE;
        let row: Option<(UserId,)> = sqlx::query_as(&format!(
            "UPDATE tokens SET active = FALSE WHERE token = $1 AND type = $2{token_type} \
             AND COALESCE(active, TRUE) AND expires_at > $3 RETURNING CAST(user_id AS BIGINT)"
        ))
        .bind(hash)
        .bind(kind.as_str())
        .bind(LegacyTime(now))
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(id,)| id))
    }
}
