//! Rate limits counted in the database (shared by every instance), and the pruning of what
//! has outlived its use.

use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Encode, Executor, IntoArguments, Type};

use super::{SqlStore, Value};
use crate::store::dialect::{Dialect, LegacyTime, Lock, LockClass};
use crate::store::{Prune, RateKey, StoreError};
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
    pub(super) async fn take_rate_limit(
        &self,
        bucket: &str,
        keys: &[RateKey<'_>],
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // Calls for one key are counted one at a time (locks taken in a fixed order).
        let mut locks: Vec<Lock> = keys
            .iter()
            .map(|k| Lock {
                class: LockClass::RateLimit,
                key: format!("{bucket}:{}", k.key),
            })
            .collect();
        locks.sort();
        DB::lock(&mut tx, &locks).await?;
        for RateKey { key, limit } in keys {
            // Calls that left the window are of no more use.
            sqlx::query(
                "DELETE FROM rate_limit_hits WHERE bucket = $1 AND key = $2 AND hit_at <= $3",
            )
            .bind(bucket)
            .bind(*key)
            .bind(since)
            .execute(&mut *tx)
            .await?;
            let (count, oldest): (i64, Option<Timestamp>) = sqlx::query_as(
                "SELECT count(*), min(hit_at) FROM rate_limit_hits WHERE bucket = $1 AND key = $2",
            )
            .bind(bucket)
            .bind(*key)
            .fetch_one(&mut *tx)
            .await?;
            if count >= *limit {
                tx.commit().await?;
                return Ok(Some(oldest.unwrap_or(now)));
            }
        }
        for RateKey { key, .. } in keys {
            sqlx::query("INSERT INTO rate_limit_hits (bucket, key, hit_at) VALUES ($1, $2, $3)")
                .bind(bucket)
                .bind(*key)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    pub(super) async fn prune_rate_limits(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM rate_limit_hits WHERE hit_at <= $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    pub(super) async fn prune(&self, what: Prune, batch: i64) -> Result<u64, StoreError> {
        // Each statement deletes one bounded batch, so a large backlog never holds a long
        // transaction or lock; the caller repeats until a batch comes back short.
        let done = match what {
            Prune::History { before } => {
                let attempts = self
                    .execute(
                        sqlx::query(
                            "DELETE FROM login_attempts WHERE attempt_id IN (SELECT attempt_id \
                     FROM login_attempts WHERE attempted_at < $1 LIMIT $2)",
                        )
                        .bind(LegacyTime(before))
                        .bind(batch),
                    )
                    .await?;
                let logs = self
                    .execute(
                        sqlx::query(
                            "DELETE FROM user_location_logs WHERE log_id IN (SELECT log_id \
                     FROM user_location_logs WHERE created_at < $1 LIMIT $2)",
                        )
                        .bind(LegacyTime(before))
                        .bind(batch),
                    )
                    .await?;
                attempts + logs
            }
            Prune::RotatedTokens { now } => {
                self.execute(
                    sqlx::query(
                        "DELETE FROM refresh_tokens WHERE token_hash IN (SELECT t.token_hash \
                 FROM refresh_tokens t JOIN auth_sessions s ON s.session_id = t.session_id \
                 WHERE s.revoked_at IS NOT NULL OR s.expires_at <= $1 LIMIT $2)",
                    )
                    .bind(now)
                    .bind(batch),
                )
                .await?
            }
            Prune::EndedSessions { before } => {
                self.execute(
                    sqlx::query(
                        "DELETE FROM auth_sessions WHERE session_id IN (SELECT session_id \
                 FROM auth_sessions WHERE revoked_at < $1 OR expires_at < $1 LIMIT $2)",
                    )
                    .bind(before)
                    .bind(batch),
                )
                .await?
            }
            Prune::FinishedEmails { before } => {
                self.execute(
                    sqlx::query(
                        "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox \
                 WHERE status IN ('sent', 'failed') AND created_at < $1 LIMIT $2)",
                    )
                    .bind(before)
                    .bind(batch),
                )
                .await?
            }
            Prune::ExpiredMfaTokens { now } => {
                let challenges = self
                    .execute(
                        sqlx::query(
                            "DELETE FROM mfa_challenges WHERE token_hash IN (SELECT token_hash \
                 FROM mfa_challenges WHERE expires_at < $1 LIMIT $2)",
                        )
                        .bind(now)
                        .bind(batch),
                    )
                    .await?;
                let notices = self
                    .execute(
                        sqlx::query(
                            "DELETE FROM sign_in_notices WHERE token_hash IN (SELECT token_hash \
                 FROM sign_in_notices WHERE expires_at < $1 LIMIT $2)",
                        )
                        .bind(now)
                        .bind(batch),
                    )
                    .await?;
                challenges + notices
            }
        };
        Ok(done)
    }

    /// Runs the statement on the pool; returns how many rows it changed.
    async fn execute<'q>(
        &self,
        query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    ) -> Result<u64, StoreError> {
        let done = query.execute(&self.pool).await?;
        Ok(DB::rows_affected(&done))
    }
}
