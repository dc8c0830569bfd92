//! `Dialect`: everything in which the two backends' SQL and transactions differ, and nothing
//! else. `SqlStore<DB>` writes every statement once, over any `DB: Dialect`.

use std::future::Future;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Pool, Transaction, Type};

use super::StoreError;
use crate::time::Timestamp;

/// What one backend does its own way. Implemented for `sqlx::Postgres` and `sqlx::Sqlite`
/// (in `postgres.rs` and `sqlite.rs`), so the database type is the dialect: a store is a
/// `SqlStore<Postgres>` or a `SqlStore<Sqlite>`.
pub trait Dialect: Database {
    /// What the old tables' timestamp columns are read and written as (see [`LegacyTime`]).
    type LegacyTs: for<'q> Encode<'q, Self>
        + for<'r> Decode<'r, Self>
        + Type<Self>
        + Copy
        + Send
        + Sync
        + 'static;

    /// Appended to a text parameter compared with, or written to, `tokens.type`.
    const TOKEN_TYPE: &'static str;
    /// Appended to a text parameter written to `user_location_logs.access_status`.
    const ACCESS_STATUS: &'static str;
    /// Appended to a text parameter written to a JSON column.
    const JSONB: &'static str;
    /// Ends the sub-select that picks the outbox row to claim.
    const SKIP_LOCKED: &'static str;
    /// Ends a `SELECT` that locks the rows it reads until the transaction ends.
    const FOR_UPDATE: &'static str;
    /// The rows of `select(condition)` for each text of the JSON array bound as `$1`, where
    /// `condition` compares `column` with that text: one index look-up per text, whatever
    /// the statistics say.
    fn for_each_json_text(column: &str, select: &dyn Fn(&str) -> String) -> String;
    /// Whether the planner may read and sort an account's whole sign-in history for its
    /// latest rows when it expects few: if so, that read calls a function that keeps the
    /// history index's order (PostgreSQL, migration 12).
    const SORTS_WHOLE_HISTORY: bool;
    /// Whether concurrent session look-ups are worth combining into one statement: yes over
    /// a network round trip, no for an embedded database.
    const COALESCE_LOOKUPS: bool;
    /// Whether `INSERT`/`UPDATE` may run inside `WITH`, so that a change of several tables is
    /// one statement (one round trip, its own transaction); without, it is one batch of
    /// statements inside a write transaction.
    const WRITES_IN_WITH: bool;

    fn legacy(t: Timestamp) -> Self::LegacyTs;
    fn from_legacy(t: Self::LegacyTs) -> Timestamp;

    /// Rows changed by a statement (sqlx offers this per backend, not on `Database`).
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// Unique violations become the conflict they mean; everything else stays a database error.
    fn conflict(e: sqlx::Error) -> StoreError;

    /// A transaction for a change: writers that must see each other's result queue here or
    /// on the locks they take.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, StoreError>> + Send;

    /// Takes the locks, in the order given, until the transaction ends.
    fn lock(
        tx: &mut Transaction<'_, Self>,
        locks: &[Lock],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Kinds of key never share a lock, whatever text a caller chooses. The values are the
/// PostgreSQL advisory lock classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockClass {
    SignInAccount = 7001,
    SignInIp = 7002,
    RateLimit = 7003,
}

/// A lock on one key of one class, held until the transaction ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lock {
    pub class: LockClass,
    pub key: String,
}

/// A timestamp of the old service's tables, bound and read through the dialect's
/// [`Dialect::LegacyTs`]: zone-less `TIMESTAMP` on PostgreSQL, the common text form on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyTime(pub Timestamp);

impl<DB: Dialect> Type<DB> for LegacyTime {
    fn type_info() -> DB::TypeInfo {
        DB::LegacyTs::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        DB::LegacyTs::compatible(ty)
    }
}

impl<'q, DB: Dialect> Encode<'q, DB> for LegacyTime {
    fn encode_by_ref(
        &self,
        buf: &mut <DB as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        DB::legacy(self.0).encode(buf)
    }
}

impl<'r, DB: Dialect> Decode<'r, DB> for LegacyTime {
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(DB::from_legacy(DB::LegacyTs::decode(value)?)))
    }
}
