//! Two-factor authentication: sealed TOTP secrets with their last used step, recovery-code
//! digests, and the `mfa_token` challenges of sign-in's second step.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};

use super::{SqlStore, Value};
use crate::domain::UserId;
use crate::store::dialect::Dialect;
use crate::store::{AttemptId, MfaChallenge, NewAuditEvent, NewEmail, StoreError, TotpRecord};
use crate::time::Timestamp;

#[derive(sqlx::FromRow)]
struct TotpRow {
    secret_sealed: String,
    confirmed_at: Option<Timestamp>,
    last_step: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ChallengeRow {
    user_id: i64,
    attempt_id: i64,
    method: String,
    failures: i32,
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
    pub(super) async fn totp(&self, user_db_id: UserId) -> Result<Option<TotpRecord>, StoreError> {
        let row: Option<TotpRow> = sqlx::query_as(
            "SELECT secret_sealed, confirmed_at, last_step FROM mfa_totp WHERE user_id = $1",
        )
        .bind(user_db_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TotpRecord {
            secret_sealed: r.secret_sealed,
            confirmed: r.confirmed_at.is_some(),
            last_step: r.last_step,
        }))
    }

    pub(super) async fn begin_totp(
        &self,
        user_db_id: UserId,
        sealed: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        // A secret in force stays: the insert then finds its row and changes nothing.
        let done = sqlx::query(
            "INSERT INTO mfa_totp (user_id, secret_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_db_id)
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(super) async fn confirm_totp(
        &self,
        user_db_id: UserId,
        step: i64,
        recovery_hashes: &[String],
        audit: &NewAuditEvent,
        notice: &NewEmail,
    ) -> Result<bool, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE mfa_totp SET confirmed_at = $2, last_step = $3 \
             WHERE user_id = $1 AND confirmed_at IS NULL",
        )
        .bind(user_db_id)
        .bind(audit.now)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&done) == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        for hash in recovery_hashes {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (code_hash, user_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(hash)
            .bind(user_db_id)
            .bind(audit.now)
            .execute(&mut *tx)
            .await?;
        }
        Self::append_audit(&mut tx, audit).await?;
        Self::enqueue(&mut tx, notice, audit.now).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn accept_totp_step(
        &self,
        user_db_id: UserId,
        step: i64,
    ) -> Result<bool, StoreError> {
        // One statement: of two requests with the same code, one moves `last_step`.
        let done = sqlx::query(
            "UPDATE mfa_totp SET last_step = $2 WHERE user_id = $1 AND confirmed_at IS NOT NULL \
             AND (last_step IS NULL OR last_step < $2)",
        )
        .bind(user_db_id)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(super) async fn use_recovery_code(
        &self,
        user_db_id: UserId,
        hash: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $3 \
             WHERE code_hash = $1 AND user_id = $2 AND used_at IS NULL",
        )
        .bind(hash)
        .bind(user_db_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(super) async fn recovery_codes_left(&self, user_db_id: UserId) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_db_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    pub(super) async fn remove_totp(
        &self,
        user_db_id: UserId,
        audit: &NewAuditEvent,
        notice: &NewEmail,
    ) -> Result<bool, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let done = sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Ok(false);
        }
        Self::append_audit(&mut tx, audit).await?;
        Self::enqueue(&mut tx, notice, audit.now).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn create_mfa_challenge(
        &self,
        hash: &str,
        c: &MfaChallenge,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mfa_challenges (token_hash, user_id, attempt_id, method, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hash)
        .bind(c.user_db_id)
        .bind(c.attempt_id.0)
        .bind(&c.method)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn mfa_challenge(
        &self,
        hash: &str,
        now: Timestamp,
        max_failures: i32,
    ) -> Result<Option<MfaChallenge>, StoreError> {
        // Counted before the code is judged, in the statement that checks the count: parallel
        // guesses cannot all see a count under the limit.
        let row: Option<ChallengeRow> = sqlx::query_as(
            "UPDATE mfa_challenges SET failures = failures + 1 \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 AND failures < $3 \
             RETURNING CAST(user_id AS BIGINT) AS user_id, CAST(attempt_id AS BIGINT) AS attempt_id, \
             method, failures",
        )
        .bind(hash)
        .bind(now)
        .bind(max_failures)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| MfaChallenge {
            user_db_id: UserId::new(r.user_id),
            attempt_id: AttemptId(r.attempt_id),
            method: r.method,
            failures: r.failures,
        }))
    }

    pub(super) async fn use_mfa_challenge(
        &self,
        hash: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mfa_challenges SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
        )
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) > 0)
    }
}
