//! `PgStore`: the production store, on the old service's schema plus our additions. The SQL it
//! shares with SQLite is in `shared.rs`; what is PostgreSQL's own is here.

use chrono::NaiveDateTime;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;

use super::shared::shared_store;
use super::StoreError;
use crate::time::Timestamp;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
}

// Dialect hooks for `shared_store!`.
type Db = Postgres;
/// The old tables keep `TIMESTAMP` (no zone) columns; every connection runs in UTC so that
/// they hold UTC, and we convert at this edge.
type LegacyTs = NaiveDateTime;
const TOKEN_TYPE: &str = "::token_type_enum";
const ACCESS_STATUS: &str = "::access_status_enum";
const JSONB: &str = "::jsonb";
const SKIP_LOCKED: &str = "FOR UPDATE SKIP LOCKED";

fn legacy(t: Timestamp) -> LegacyTs {
    t.naive_utc()
}

fn from_legacy(t: LegacyTs) -> Timestamp {
    t.and_utc()
}

const FOR_UPDATE: &str = "FOR UPDATE";

/// Transaction-scoped advisory locks `(class, key)`, taken in the order given.
async fn lock_keys(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[(i32, String)],
) -> Result<(), StoreError> {
    for (class, key) in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(class)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Unique violations become the conflict they mean; everything else stays a database error.
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

impl PgStore {
    pub async fn connect(url: &str, ca_pem: Option<&str>) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)?.options([("timezone", "UTC")]);
        if let Some(pem) = ca_pem {
            options = options
                .ssl_mode(PgSslMode::VerifyFull)
                .ssl_root_cert_from_pem(pem.as_bytes().to_vec());
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A database that does not answer is reported (503 `unavailable`) within 2 s,
            // not after a long wait; the pool reconnects by itself when it returns.
            .acquire_timeout(Duration::from_millis(1500))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// READ COMMITTED; row locks and advisory locks serialise what must be.
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

shared_store!(PgStore);
