//! The email outbox: queued in the transaction of the change that causes the email, claimed
//! by one worker at a time, finished as sent, retried or given up.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Row as _, Transaction, Type};

use super::{SqlStore, Value};
use crate::store::dialect::Dialect;
use crate::store::{Delivery, NewEmail, OutboxEmail, OutboxStats, StoreError};
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
    /// Queues the email inside the caller's transaction.
    pub(super) async fn enqueue(
        tx: &mut Transaction<'_, DB>,
        email: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO email_outbox (kind, to_address, subject, text_body, html_body, \
             next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(email.kind.as_str())
        .bind(&email.to)
        .bind(&email.subject)
        .bind(&email.text)
        .bind(&email.html)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub(super) async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT \
             COALESCE(SUM(CASE WHEN status IN ('pending', 'sending') THEN 1 ELSE 0 END), 0) \
             AS pending, \
             COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed, \
             MIN(CASE WHEN status IN ('pending', 'sending') THEN created_at END) AS oldest \
             FROM email_outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxStats {
            pending: row.try_get("pending")?,
            failed: row.try_get("failed")?,
            oldest_pending: row.try_get("oldest")?,
        })
    }

    pub(super) async fn claim_email(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<OutboxEmail>, StoreError> {
        // Several workers (instances) each take a different row, never the same one:
        // SKIP LOCKED on PostgreSQL, one writer at a time on SQLite.
        let skip_locked = DB::SKIP_LOCKED;
        Ok(sqlx::query_as(&format!(
            "UPDATE email_outbox SET status = 'sending', attempts = attempts + 1, \
             next_attempt_at = $2 \
             WHERE id = (SELECT id FROM email_outbox WHERE status IN ('pending', 'sending') \
                         AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT 1 \
                         {skip_locked}) \
             RETURNING id, to_address, subject, text_body, html_body, attempts, created_at"
        ))
        .bind(now)
        .bind(lease_until)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn finish_email(
        &self,
        id: i64,
        delivery: &Delivery,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let query = match delivery {
            Delivery::Sent => sqlx::query(
                "UPDATE email_outbox SET status = 'sent', sent_at = $2, text_body = NULL, \
                 html_body = NULL, last_error = NULL WHERE id = $1 AND status = 'sending'",
            )
            .bind(id)
            .bind(now),
            Delivery::Retry { at, error } => sqlx::query(
                "UPDATE email_outbox SET status = 'pending', next_attempt_at = $2, \
                 last_error = $3 WHERE id = $1 AND status = 'sending'",
            )
            .bind(id)
            .bind(*at)
            .bind(error),
            Delivery::GiveUp { error } => sqlx::query(
                "UPDATE email_outbox SET status = 'failed', text_body = NULL, html_body = NULL, \
                 last_error = $2 WHERE id = $1 AND status = 'sending'",
            )
            .bind(id)
            .bind(error),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }
}
