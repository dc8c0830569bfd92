//! PostgreSQL, the production backend, on the old service's schema plus our additions: its
//! `Dialect` and connecting to it. Every statement is in `sql/`.

use chrono::NaiveDateTime;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;

use super::dialect::{Dialect, Lock};
use super::{SqlStore, StoreError};
use crate::time::Timestamp;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub type PgStore = SqlStore<Postgres>;

impl Dialect for Postgres {
    /// The old tables keep `TIMESTAMP` (no zone) columns; every connection runs in UTC so that
    /// they hold UTC, and we convert at this edge.
    type LegacyTs = NaiveDateTime;

    const TOKEN_TYPE: &'static str = "::token_type_enum";
    const ACCESS_STATUS: &'static str = "::access_status_enum";
    const JSONB: &'static str = "::jsonb";
    const SKIP_LOCKED: &'static str = "FOR UPDATE SKIP LOCKED";
    const FOR_UPDATE: &'static str = "FOR UPDATE";
    /// Its statistics, young or blind to the status filter, expected a row or two.
    const SORTS_WHOLE_HISTORY: bool = true;
    const COALESCE_LOOKUPS: bool = true;
    const WRITES_IN_WITH: bool = true;

    /// A lateral sub-select per text, kept apart by its `LIMIT`: each is the single look-up's
    /// plan, an index scan on `column`. Written as `column IN (SELECT jsonb_array_elements_text(…))`
    /// (or `= ANY(…)`), the planner, misled by young statistics or a generic plan, scanned
    /// every session or every session of the user (0.3–0.8 ms at a few hundred, growing with
    /// the table) instead of 0.05 ms.
    fn for_each_json_text(column: &str, select: &dyn Fn(&str) -> String) -> String {
        format!(
            "SELECT x.* FROM jsonb_array_elements_text($1::jsonb) AS k(text) \
             CROSS JOIN LATERAL ({} LIMIT 1) AS x",
            select(&format!("{column} = k.text"))
        )
    }

    fn legacy(t: Timestamp) -> NaiveDateTime {
        t.naive_utc()
    }

    fn from_legacy(t: NaiveDateTime) -> Timestamp {
        t.and_utc()
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn conflict(e: sqlx::Error) -> StoreError {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                let constraint = db.constraint().unwrap_or_default();
                if constraint.contains("username") {
                    return StoreError::UsernameTaken;
                }
                if constraint.contains("email") {
                    return StoreError::EmailTaken;
                }
            }
        }
        StoreError::Database(e)
    }

    /// READ COMMITTED; row locks and advisory locks serialise what must be.
    async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(pool.begin().await?)
    }

    /// Transaction-scoped advisory locks `(class, key)`.
    async fn lock(tx: &mut Transaction<'_, Postgres>, locks: &[Lock]) -> Result<(), StoreError> {
        for lock in locks {
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(lock.class as i32)
                .bind(&lock.key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// How long a pooled connection may sit idle and still be handed out without a ping.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_millis(50);

/// Connects (in UTC, with the CA if one is given) and brings the schema up to date.
pub async fn connect(url: &str, ca_pem: Option<&str>) -> Result<PgStore, StoreError> {
    let mut options = PgConnectOptions::from_str(url)?.options([("timezone", "UTC")]);
    if let Some(pem) = ca_pem {
        options = options
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert_from_pem(pem.as_bytes().to_vec());
    }
    let pool = PgPoolOptions::new()
        .max_connections(16)
        // Connections opened for a burst close after 10 s unused: their buffers here and
        // their backends in PostgreSQL do not outlive it.
        .idle_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out by default: a second round trip for
        // every checkout, `/me` included. A connection that was in use moments ago (and
        // pinged by sqlx when it came back) is handed out as is; one idle for a while is
        // pinged first, and replaced if the database went away meanwhile.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        // A database that does not answer is reported (503 `unavailable`) within 2 s,
        // not after a long wait; the pool reconnects by itself when it returns.
        .acquire_timeout(Duration::from_millis(1500))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(SqlStore::new(pool))
}
