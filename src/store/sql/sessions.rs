//! Sessions: opening one with its first refresh token, finding, rotating, listing, revoking.

use sqlx::query::Query;
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Row as _, Transaction, Type};

use super::rows::{SessionRow, SessionUserRow, SESSION_COLUMNS, USER_COLUMNS};
use super::{SqlStore, Value};
use crate::domain::{SessionId, UserId};
use crate::store::dialect::{Dialect, LegacyTime};
use crate::store::{
    AccountAttempt, Attempt, AttemptOutcome, LocationLogId, NewAuditEvent, NewSession,
    RefreshOutcome, Rotation, Session, SessionUser, StoreError,
};
use crate::time::Timestamp;

/// The look-ups every authenticated request makes, written out once per store.
pub(super) struct HotStatements {
    by_id: String,
    by_cookie: String,
    by_ids: String,
}

impl HotStatements {
    pub(super) fn new<DB: Dialect>() -> Self {
        // The session if it is neither revoked nor expired at `now` ($2) and its user is active.
        let active = |condition: &str| {
            format!(
                "SELECT {SESSION_COLUMNS}, {USER_COLUMNS} FROM auth_sessions s \
                 JOIN users u ON u.user_db_id = s.user_id \
                 LEFT JOIN roles r ON r.role_id = u.role_id \
                 WHERE {condition} AND s.revoked_at IS NULL AND s.expires_at > $2 \
                 AND COALESCE(u.active, TRUE)"
            )
        };
        Self {
            by_id: active("s.session_id = $1"),
            by_cookie: active("s.cookie_hash = $1"),
            by_ids: DB::for_each_json_text("s.session_id", &active),
        }
    }
}

/// What [`SqlStore::start_session`] writes: the session, its first refresh token, the
/// attempt's outcome (`$attempt`, with `$9` the attempt), its audit entry, the user's last
/// sign-in and the history row (whose id it returns), with the same parameters in both forms:
/// - `with`: one PostgreSQL statement of data-modifying CTEs, its own transaction. Foreign
///   keys are checked at the statement's end, when the session row is there.
/// - `batch`: for SQLite, whose `WITH` cannot write, the same statements one after another
///   in one batch, run inside a write transaction: one hop to the connection's thread for
///   all of them instead of one each.
macro_rules! start_session_at_once {
    (with $attempt:literal) => {
        start_session_at_once!(
            [
                "WITH session AS (",
                "), refresh AS (",
                "), attempt AS (",
                "), audit AS (",
                "), last_login AS (",
                ") "
            ],
            "::jsonb",
            "::access_status_enum",
            $attempt
        )
    };
    (batch $attempt:literal) => {
        start_session_at_once!(["", "; ", "; ", "; ", "; ", "; "], "", "", $attempt)
    };
    ([$a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $f:literal],
     $json:literal, $status:literal, $attempt:literal) => {
        concat!(
            $a,
            "INSERT INTO auth_sessions (session_id, user_id, cookie_hash, created_at, \
             last_used_at, expires_at, ip_address, user_agent) \
             VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
            $b,
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($8, $1, $4)",
            $c,
            $attempt,
            $d,
            "INSERT INTO audit_log (created_at, kind, actor_uid, target_uid, ip, user_agent, \
             details) VALUES ($12, $13, $14, $15, $16, $17, $18",
            $json,
            ")",
            $e,
            "UPDATE users SET last_login = $25 WHERE user_db_id = $2",
            $f,
            "INSERT INTO user_location_logs (user_id, ip_address, location, created_at, \
             user_agent, access_status, method) VALUES ($2, $19, $20",
            $json,
            ", $21, $22, $23",
            $status,
            ", $24) RETURNING CAST(log_id AS BIGINT)"
        )
    };
}

/// For an attempt reserved before the password was judged (`$9` its id).
macro_rules! reserved_attempt {
    ($form:ident) => {
        start_session_at_once!(
            $form "UPDATE login_attempts SET success = $10, counted = $11 WHERE attempt_id = $9"
        )
    };
}

/// For a deferred attempt (`$9` the identifier), written as it ends, at the history row's
/// address and time.
macro_rules! deferred_attempt {
    ($form:ident) => {
        start_session_at_once!(
            $form "INSERT INTO login_attempts (ip_address, email_or_username, attempted_at, \
            success, counted) VALUES ($19, $9, $21, $10, $11)"
        )
    };
}

/// [`start_session_at_once!`] for each kind of attempt, in each form.
const START_SESSION_RESERVED: &str = reserved_attempt!(with);
const START_SESSION_RESERVED_BATCH: &str = reserved_attempt!(batch);
const START_SESSION_DEFERRED: &str = deferred_attempt!(with);
const START_SESSION_DEFERRED_BATCH: &str = deferred_attempt!(batch);

/// A refresh token that could not be claimed: its session, and when it was used.
#[derive(sqlx::FromRow)]
struct SpentToken {
    session_id: SessionId,
    used_at: Option<Timestamp>,
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
    pub(super) async fn start_session(
        &self,
        s: &NewSession,
        attempt: &AttemptOutcome,
    ) -> Result<Option<LocationLogId>, StoreError> {
        if let (Some(audit), Some(account)) = (&attempt.audit, &attempt.account) {
            return self.start_session_at_once(s, attempt, audit, account).await;
        }
        let mut tx = DB::begin_write(&self.pool).await?;
        Self::bind_session(
            sqlx::query(
                "INSERT INTO auth_sessions (session_id, user_id, cookie_hash, created_at, \
                 last_used_at, expires_at, ip_address, user_agent) \
                 VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
            ),
            s,
        )
        .execute(&mut *tx)
        .await?;
        Self::insert_refresh_token(&mut tx, &s.refresh_hash, &s.id, s.now).await?;
        let log_id = Self::record_outcome(&mut tx, attempt).await?;
        // Last: it locks the user's row until the commit, and sign-ins of one account queue
        // on that lock (a storm on one account held every pooled connection waiting for it).
        sqlx::query("UPDATE users SET last_login = $2 WHERE user_db_id = $1")
            .bind(s.user_db_id)
            .bind(LegacyTime(s.now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(log_id)
    }

    /// [`Self::start_session`] at once (see [`start_session_at_once!`]): on PostgreSQL one
    /// round trip instead of eight, and the user's row locked only while that statement
    /// runs; on SQLite three hops to the connection's thread (begin, the batch, commit)
    /// instead of eight.
    async fn start_session_at_once(
        &self,
        s: &NewSession,
        attempt: &AttemptOutcome,
        audit: &NewAuditEvent,
        account: &AccountAttempt,
    ) -> Result<Option<LocationLogId>, StoreError> {
        let sql = match (&attempt.attempt, DB::WRITES_IN_WITH) {
            (Attempt::Reserved(_), true) => START_SESSION_RESERVED,
            (Attempt::Reserved(_), false) => START_SESSION_RESERVED_BATCH,
            (Attempt::Deferred { .. }, true) => START_SESSION_DEFERRED,
            (Attempt::Deferred { .. }, false) => START_SESSION_DEFERRED_BATCH,
        };
        let query = Self::bind_session(sqlx::query(sql), s).bind(&s.refresh_hash);
        let query = match &attempt.attempt {
            Attempt::Reserved(id) => query.bind(id.0),
            Attempt::Deferred { identifier } => query.bind(identifier),
        };
        let query = query
            .bind(attempt.result.succeeded())
            .bind(attempt.result.counted());
        let query = Self::bind_audit(query, audit)
            .bind(&attempt.ip)
            .bind(account.location.to_string())
            .bind(LegacyTime(attempt.now))
            .bind(&account.user_agent)
            .bind(attempt.result.status())
            .bind(&attempt.method)
            .bind(LegacyTime(s.now));
        let row = if DB::WRITES_IN_WITH {
            query.fetch_one(&self.pool).await?
        } else {
            let mut tx = DB::begin_write(&self.pool).await?;
            let row = query.fetch_one(&mut *tx).await?;
            tx.commit().await?;
            row
        };
        Ok(Some(LocationLogId(row.try_get(0)?)))
    }

    /// The session's columns, `$1` to `$7`, as both ways of opening one insert them.
    fn bind_session<'q>(
        query: Query<'q, DB, DB::Arguments<'q>>,
        s: &'q NewSession,
    ) -> Query<'q, DB, DB::Arguments<'q>> {
        query
            .bind(&s.id)
            .bind(s.user_db_id)
            .bind(&s.cookie_hash)
            .bind(s.now)
            .bind(s.expires_at)
            .bind(&s.ip)
            .bind(&s.user_agent)
    }

    pub(super) async fn session_by_id(
        &self,
        session_id: &SessionId,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        self.active_session(&self.hot.by_id, session_id.as_str(), now)
            .await
    }

    /// The active sessions among `ids` (those revoked, expired, of an inactive user or
    /// unknown are left out), in one statement.
    pub(super) async fn sessions_by_ids(
        &self,
        ids: &[SessionId],
        now: Timestamp,
    ) -> Result<Vec<SessionUser>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(SessionId::as_str).collect();
        let list = serde_json::Value::from(ids).to_string();
        let rows: Vec<SessionUserRow> = sqlx::query_as(&self.hot.by_ids)
            .bind(list)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn session_by_cookie(
        &self,
        cookie_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        self.active_session(&self.hot.by_cookie, cookie_hash, now)
            .await
    }

    /// The session if it is neither revoked nor expired at `now` and its user is active.
    async fn active_session(
        &self,
        sql: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        let row: Option<SessionUserRow> = sqlx::query_as(sql)
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn rotate_refresh_token(
        &self,
        r: &Rotation,
    ) -> Result<RefreshOutcome, StoreError> {
        // The first to claim the token wins (a row lock on PostgreSQL, one writer at a time
        // on SQLite); every later one finds it used.
        let mut tx = DB::begin_write(&self.pool).await?;
        let claimed: Option<(SessionId,)> = sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             RETURNING session_id",
        )
        .bind(&r.old_refresh_hash)
        .bind(r.now)
        .fetch_optional(&mut *tx)
        .await?;
        let session_id = match claimed {
            Some((session_id,)) => session_id,
            None => {
                let spent: Option<SpentToken> = sqlx::query_as(
                    "SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(&r.old_refresh_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(SpentToken {
                    session_id,
                    used_at,
                }) = spent
                else {
                    return Ok(RefreshOutcome::Invalid);
                };
                // Rotated moments ago: the same client retrying (two tabs, a lost answer) is
                // given a fresh token for the same session; anything else is reuse.
                let retry = used_at
                    .zip(r.grace_since)
                    .is_some_and(|(at, since)| at > since);
                if !retry {
                    let revoked = sqlx::query(
                        "UPDATE auth_sessions SET revoked_at = $2 WHERE session_id = $1 \
                         AND revoked_at IS NULL AND expires_at > $2",
                    )
                    .bind(&session_id)
                    .bind(r.now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    // A replay kills a live session; a session already over just refuses it.
                    return Ok(if DB::rows_affected(&revoked) > 0 {
                        RefreshOutcome::Reused
                    } else {
                        RefreshOutcome::Invalid
                    });
                }
                session_id
            }
        };
        let started: Option<(Timestamp,)> =
            sqlx::query_as("SELECT created_at FROM auth_sessions WHERE session_id = $1")
                .bind(&session_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((started,)) = started else {
            return Ok(RefreshOutcome::Invalid);
        };
        // Sliding, but never past the absolute lifetime from sign-in.
        let expires_at = r.expires_at.min(started + r.max_age);
        // SQLite's RETURNING cannot name the FROM tables, so the row is read back after.
        let done = sqlx::query(
            "UPDATE auth_sessions AS s SET cookie_hash = $2, last_used_at = $3, expires_at = $4 \
             FROM users u \
             WHERE s.session_id = $1 AND u.user_db_id = s.user_id AND s.revoked_at IS NULL \
             AND s.expires_at > $3 AND $4 > $3 AND COALESCE(u.active, TRUE)",
        )
        .bind(&session_id)
        .bind(&r.new_cookie_hash)
        .bind(r.now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&done) == 0 {
            // Dropping the transaction rolls back the claim, as on PostgreSQL.
            return Ok(RefreshOutcome::Invalid);
        }
        let Some(row) = Self::session_user_in(&mut tx, &session_id).await? else {
            return Ok(RefreshOutcome::Invalid);
        };
        Self::insert_refresh_token(&mut tx, &r.new_refresh_hash, &session_id, r.now).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated(Box::new(row.into())))
    }

    /// The session with its user, unfiltered: for reading back a row just updated.
    async fn session_user_in(
        tx: &mut Transaction<'_, DB>,
        session_id: &SessionId,
    ) -> Result<Option<SessionUserRow>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, {USER_COLUMNS} FROM auth_sessions s \
             JOIN users u ON u.user_db_id = s.user_id LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE s.session_id = $1"
        );
        Ok(sqlx::query_as(&sql)
            .bind(session_id)
            .fetch_optional(&mut **tx)
            .await?)
    }

    async fn insert_refresh_token(
        tx: &mut Transaction<'_, DB>,
        hash: &str,
        session_id: &SessionId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(session_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub(super) async fn touch_session(
        &self,
        session_id: &SessionId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE auth_sessions SET last_used_at = $2 WHERE session_id = $1 AND last_used_at < $2",
        )
        .bind(session_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn list_sessions(
        &self,
        user_db_id: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM auth_sessions s WHERE s.user_id = $1 \
             AND s.revoked_at IS NULL AND s.expires_at > $2 ORDER BY s.created_at DESC"
        );
        let rows: Vec<SessionRow> = sqlx::query_as(&sql)
            .bind(user_db_id)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn revoke_session(
        &self,
        user_db_id: UserId,
        session_id: &SessionId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $3 WHERE user_id = $1 AND session_id = $2 \
             AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(user_db_id)
        .bind(session_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(super) async fn revoke_all_sessions(
        &self,
        user_db_id: UserId,
        api_keys: bool,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let ended = Self::revoke_sessions_in(&mut tx, user_db_id, now).await?;
        if api_keys {
            Self::delete_api_keys_in(&mut tx, user_db_id).await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    /// Every active session of the user ends, inside the caller's transaction.
    pub(super) async fn revoke_sessions_in(
        tx: &mut Transaction<'_, DB>,
        user_db_id: UserId,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_db_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(DB::rows_affected(&done))
    }
}
