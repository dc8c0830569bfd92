//! API keys: stored as a digest of their secret, listed, deleted, found with their owner.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Transaction, Type};

use super::rows::{ApiKeyRow, KeyOwnerRow, USER_COLUMNS};
use super::{SqlStore, Value};
use crate::domain::{ApiKeyId, Scope, UserId};
use crate::store::dialect::Dialect;
use crate::store::{ApiKey, KeyOwner, NewApiKey, NewAuditEvent, NewEmail, StoreError};
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
    pub(super) async fn create_api_key(
        &self,
        key: &NewApiKey,
        notice: &NewEmail,
        audit: &NewAuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        sqlx::query(
            "INSERT INTO api_keys (key_id, user_id, name, secret_hash, scopes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(key.user_db_id)
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(Scope::join(&key.scopes))
        .bind(key.now)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await?;
        Self::enqueue(&mut tx, notice, key.now).await?;
        Self::append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn list_api_keys(
        &self,
        user_db_id: UserId,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(
            "SELECT key_id, name, scopes, created_at, expires_at, last_used_at FROM api_keys \
             WHERE user_id = $1 ORDER BY created_at DESC, key_id",
        )
        .bind(user_db_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn delete_api_key(
        &self,
        user_db_id: UserId,
        key_id: &ApiKeyId,
        audit: &NewAuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let done = sqlx::query("DELETE FROM api_keys WHERE user_id = $1 AND key_id = $2")
            .bind(user_db_id)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        let deleted = DB::rows_affected(&done) > 0;
        if deleted {
            Self::append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Every key of the user, inside the caller's transaction.
    pub(super) async fn delete_api_keys_in(
        tx: &mut Transaction<'_, DB>,
        user_db_id: UserId,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(super) async fn api_key_owner(
        &self,
        key_id: &ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<KeyOwner>, StoreError> {
        let sql = format!(
            "SELECT k.key_id, k.name AS key_name, k.scopes, k.created_at AS key_created_at, \
             k.expires_at AS key_expires_at, k.last_used_at AS key_last_used_at, k.secret_hash, \
             {USER_COLUMNS} FROM api_keys k JOIN users u ON u.user_db_id = k.user_id \
             LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE k.key_id = $1 AND (k.expires_at IS NULL OR k.expires_at > $2) \
             AND COALESCE(u.active, TRUE)"
        );
        let row: Option<KeyOwnerRow> = sqlx::query_as(&sql)
            .bind(key_id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn touch_api_key(
        &self,
        key_id: &ApiKeyId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE key_id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(key_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
