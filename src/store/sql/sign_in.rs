//! Sign-in attempts: reserved under the failure limits, finished with their outcome, kept
//! as the account's sign-in history.

use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Transaction, Type};

use super::rows::LoginRecordRow;
use super::{SqlStore, Value};
use crate::domain::UserId;
use crate::store::dialect::{Dialect, LegacyTime, Lock, LockClass};
use crate::store::{
    Attempt, AttemptId, AttemptOutcome, AttemptReservation, LocationLogId, LoginRecord,
    Reservation, SignInLimits, StoreError,
};
use crate::time::Timestamp;

/// An attempt written only once it has ended (see [`Attempt::Deferred`]).
const INSERT_ENDED_ATTEMPT: &str = "INSERT INTO login_attempts (ip_address, email_or_username, \
     attempted_at, success, counted) VALUES ($1, $2, $3, $4, $5)";

/// Counted failures since `$4` for identifiers `$1`/`$2` from IP `$3` (after that address's
/// last success), for the identifiers from anywhere, and from the IP on any account, each
/// with its oldest; and whether the IP signed in to the account after `$5`.
const COUNT_FAILURES: &str = "\
    WITH last_success AS ( \
        SELECT max(attempted_at) AS at FROM login_attempts \
        WHERE email_or_username IN ($1, $2) AND ip_address = $3 AND success \
    ), by_pair AS ( \
        SELECT count(*) AS n, min(a.attempted_at) AS oldest FROM login_attempts a, last_success l \
        WHERE a.email_or_username IN ($1, $2) AND a.ip_address = $3 AND NOT a.success \
        AND a.counted AND a.attempted_at > $4 AND (l.at IS NULL OR a.attempted_at > l.at) \
    ), by_account AS ( \
        SELECT count(*) AS n, min(attempted_at) AS oldest FROM login_attempts \
        WHERE email_or_username IN ($1, $2) AND NOT success AND counted AND attempted_at > $4 \
    ), by_ip AS ( \
        SELECT count(*) AS n, min(attempted_at) AS oldest FROM login_attempts \
        WHERE ip_address = $3 AND NOT success AND counted AND attempted_at > $4 \
    ) \
    SELECT p.n, p.oldest, a.n, a.oldest, i.n, i.oldest, \
        (l.at IS NOT NULL AND l.at > $5) AS known \
    FROM by_pair p, by_account a, by_ip i, last_success l";

/// Counted failures in one scope, and the oldest of them.
struct Failures {
    count: i64,
    oldest: Option<LegacyTime>,
}

/// What `COUNT_FAILURES` reads: counted failures per (account, IP), per account and per IP,
/// and whether the IP is known to the account.
struct FailureCounts {
    by_pair: Failures,
    by_account: Failures,
    by_ip: Failures,
    known: bool,
}

impl<'r, R> sqlx::FromRow<'r, R> for FailureCounts
where
    R: sqlx::Row,
    usize: ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    LegacyTime: sqlx::Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let failures = |at: usize| -> Result<Failures, sqlx::Error> {
            Ok(Failures {
                count: row.try_get(at)?,
                oldest: row.try_get(at + 1)?,
            })
        };
        Ok(Self {
            by_pair: failures(0)?,
            by_account: failures(2)?,
            by_ip: failures(4)?,
            known: row.try_get(6)?,
        })
    }
}

impl FailureCounts {
    /// The full window of the first limit that refuses the attempt, if one does.
    fn refusal(&self, limits: &SignInLimits) -> Option<&Failures> {
        if self.by_pair.count >= limits.per_account_and_ip {
            return Some(&self.by_pair);
        }
        // The owner's own address is never locked out by what others do.
        if !self.known && self.by_account.count >= limits.per_account {
            return Some(&self.by_account);
        }
        if self.by_ip.count >= limits.per_ip {
            return Some(&self.by_ip);
        }
        None
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
    pub(super) async fn reserve_sign_in(
        &self,
        a: &AttemptReservation,
    ) -> Result<Reservation, StoreError> {
        const INSERT: &str = "INSERT INTO login_attempts (ip_address, email_or_username, \
             attempted_at, success, counted) VALUES ($1, $2, $3, FALSE, TRUE) \
             RETURNING CAST(attempt_id AS BIGINT)";
        let insert = || {
            sqlx::query_as::<_, (i64,)>(INSERT)
                .bind(&a.ip)
                .bind(&a.identifier)
                .bind(LegacyTime(a.now))
        };
        let Some(limits) = a.limits else {
            // Nothing to count first: the insert alone, in no transaction of its own.
            let (attempt_id,) = insert().fetch_one(&self.pool).await?;
            return Ok(Reservation::Granted {
                attempt_id: AttemptId(attempt_id),
            });
        };
        let mut tx = DB::begin_write(&self.pool).await?;
        let [first, second] = a.counted_as.identifiers();
        // Attempts on one account (or identifier), and from one IP, are judged one at a
        // time; the locks are always taken in this order, so they cannot deadlock.
        let locks = [
            Lock {
                class: LockClass::SignInAccount,
                key: first.to_owned(),
            },
            Lock {
                class: LockClass::SignInIp,
                key: a.ip.clone(),
            },
        ];
        DB::lock(&mut tx, &locks).await?;
        let counts: FailureCounts = sqlx::query_as(COUNT_FAILURES)
            .bind(first)
            .bind(second)
            .bind(&a.ip)
            .bind(LegacyTime(a.since))
            .bind(LegacyTime(a.known_since))
            .fetch_one(&mut *tx)
            .await?;
        if let Some(full) = counts.refusal(&limits) {
            // A refused attempt writes nothing: a flood of them cannot grow the tables.
            tx.rollback().await?;
            return Ok(Reservation::Refused {
                oldest: full.oldest.map_or(a.now, |t| t.0),
            });
        }
        let (attempt_id,) = insert().fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(Reservation::Granted {
            attempt_id: AttemptId(attempt_id),
        })
    }

    pub(super) async fn finish_sign_in(
        &self,
        o: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let log_id = Self::record_outcome(&mut tx, o).await?;
        tx.commit().await?;
        Ok(log_id)
    }

    /// Records how a sign-in attempt ended (writing it, if it was deferred), inside the
    /// caller's transaction.
    pub(super) async fn record_outcome(
        tx: &mut Transaction<'_, DB>,
        o: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError> {
        match &o.attempt {
            Attempt::Reserved(id) => {
                sqlx::query(
                    "UPDATE login_attempts SET success = $2, counted = $3 WHERE attempt_id = $1",
                )
                .bind(id.0)
                .bind(o.result.succeeded())
                .bind(o.result.counted())
                .execute(&mut **tx)
                .await?;
            }
            Attempt::Deferred { identifier } => {
                sqlx::query(INSERT_ENDED_ATTEMPT)
                    .bind(&o.ip)
                    .bind(identifier)
                    .bind(LegacyTime(o.now))
                    .bind(o.result.succeeded())
                    .bind(o.result.counted())
                    .execute(&mut **tx)
                    .await?;
            }
        }
        if let Some(audit) = &o.audit {
            Self::append_audit(tx, audit).await?;
        }
        let Some(account) = &o.account else {
            return Ok(None);
        };
        let (jsonb, access_status) = (DB::JSONB, DB::ACCESS_STATUS);
        let (id,): (i64,) = sqlx::query_as(&format!(
            "INSERT INTO user_location_logs (user_id, ip_address, location, created_at, \
             user_agent, access_status, method) \
             VALUES ($1, $2, $3{jsonb}, $4, $5, $6{access_status}, $7) \
             RETURNING CAST(log_id AS BIGINT)"
        ))
        .bind(account.user_db_id)
        .bind(&o.ip)
        .bind(account.location.to_string())
        .bind(LegacyTime(o.now))
        .bind(&account.user_agent)
        .bind(o.result.status())
        .bind(&o.method)
        .fetch_one(&mut **tx)
        .await?;
        Ok(Some(LocationLogId(id)))
    }

    pub(super) async fn set_location(
        &self,
        log_id: LocationLogId,
        location: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let jsonb = DB::JSONB;
        sqlx::query(&format!(
            "UPDATE user_location_logs SET location = $2{jsonb} WHERE log_id = $1"
        ))
        .bind(log_id.0)
        .bind(location.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn login_history(
        &self,
        user_db_id: UserId,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        let rows: Vec<LoginRecordRow> = sqlx::query_as(
            "SELECT ip_address, CAST(location AS TEXT), user_agent, CAST(access_status AS TEXT), created_at, \
                 method FROM user_location_logs WHERE user_id = $1 ORDER BY created_at DESC, log_id DESC \
                 LIMIT $2",
        )
        .bind(user_db_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn clear_sign_in_failures(
        &self,
        user_db_id: UserId,
    ) -> Result<u64, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let cleared = Self::clear_failures_in(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(cleared)
    }

    /// The account's counted failures stop counting, inside the caller's transaction.
    pub(super) async fn clear_failures_in(
        tx: &mut Transaction<'_, DB>,
        user_db_id: UserId,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE login_attempts SET counted = FALSE WHERE counted AND NOT success \
             AND email_or_username IN \
             (SELECT lower(username) FROM users WHERE user_db_id = $1 \
              UNION SELECT lower(email) FROM users WHERE user_db_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut **tx)
        .await?;
        Ok(DB::rows_affected(&done))
    }
}
