//! The audit log (append-only: inserted and read here, never updated or deleted) and the
//! "this wasn't me" links of new-sign-in notices.

use sqlx::query::Query;
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Transaction, Type};

use super::rows::{LoginRecordRow, UserRow, USER_COLUMNS};
use super::{SqlStore, Value};
use crate::domain::{UserId, UserUid};
use crate::store::dialect::Dialect;
use crate::store::{
    AuditEvent, AuditFilter, LocationLogId, LoginRecord, NewAuditEvent, NewEmail, NewSignInNotice,
    StoreError, User,
};
use crate::time::Timestamp;

/// An account's latest successful sign-ins (`$1`) but one history row (`$2`), at most `$3`,
/// newest first, in the columns a history row is read as ([`LoginRecordRow`]).
const EARLIER_SIGN_INS: &str = "SELECT ip_address, CAST(location AS TEXT), user_agent, \
    CAST(access_status AS TEXT), created_at, method FROM user_location_logs \
    WHERE user_id = $1 AND log_id <> $2 AND access_status = 'success' \
    ORDER BY created_at DESC, log_id DESC LIMIT $3";

/// [`EARLIER_SIGN_INS`] where the planner would sort the whole history for it: the same
/// query in a function with sorting off (PostgreSQL's migration 12), which leaves the history
/// index's order as the one plan.
const EARLIER_SIGN_INS_IN_INDEX_ORDER: &str = "SELECT * FROM authflow_earlier_sign_ins($1, $2, $3)";

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    created_at: Timestamp,
    kind: String,
    actor_uid: Option<String>,
    target_uid: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    details: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> Self {
        AuditEvent {
            id: r.id,
            created_at: r.created_at,
            kind: r.kind,
            actor: r.actor_uid,
            target: r.target_uid,
            ip: r.ip,
            user_agent: r.user_agent,
            details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The `WHERE` of a filtered read, with its parameters in order (all text or time).
enum Param {
    Text(String),
    Time(Timestamp),
}

fn audit_condition(filter: &AuditFilter) -> (String, Vec<Param>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    if let Some(user) = &filter.user {
        params.push(Param::Text(user.as_str().to_owned()));
        let n = params.len();
        if filter.or_actor {
            clauses.push(format!("(target_uid = ${n} OR actor_uid = ${n})"));
        } else {
            clauses.push(format!("target_uid = ${n}"));
        }
    }
    if let Some(kind) = &filter.kind {
        params.push(Param::Text(kind.clone()));
        clauses.push(format!("kind = ${}", params.len()));
    }
    if let Some(from) = filter.from {
        params.push(Param::Time(from));
        clauses.push(format!("created_at >= ${}", params.len()));
    }
    if let Some(to) = filter.to {
        params.push(Param::Time(to));
        clauses.push(format!("created_at < ${}", params.len()));
    }
    let condition = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (condition, params)
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
    /// Appends an entry inside the caller's transaction.
    pub(super) async fn append_audit(
        tx: &mut Transaction<'_, DB>,
        e: &NewAuditEvent,
    ) -> Result<(), StoreError> {
        let jsonb = DB::JSONB;
        let sql = format!(
            "INSERT INTO audit_log (created_at, kind, actor_uid, target_uid, ip, user_agent, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7{jsonb})"
        );
        Self::bind_audit(sqlx::query(&sql), e)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// An entry's seven columns in the order `audit_log` is written everywhere (here, and
    /// within the statement that opens a session on PostgreSQL).
    pub(super) fn bind_audit<'q>(
        query: Query<'q, DB, DB::Arguments<'q>>,
        e: &'q NewAuditEvent,
    ) -> Query<'q, DB, DB::Arguments<'q>> {
        query
            .bind(e.now)
            .bind(e.kind)
            .bind(e.actor.as_ref().map(|u| u.as_str().to_owned()))
            .bind(e.target.as_ref().map(|u| u.as_str().to_owned()))
            .bind(&e.ip)
            .bind(&e.user_agent)
            .bind(e.details.to_string())
    }

    pub(super) async fn record_audit(
        &self,
        event: &NewAuditEvent,
        notice: Option<&NewEmail>,
    ) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        Self::append_audit(&mut tx, event).await?;
        if let Some(notice) = notice {
            Self::enqueue(&mut tx, notice, event.now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn list_audit(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AuditEvent>, i64), StoreError> {
        let (condition, params) = audit_condition(filter);
        let count_sql = format!("SELECT COUNT(*) FROM audit_log {condition}");
        let mut count = sqlx::query_as::<_, (i64,)>(&count_sql);
        for p in &params {
            count = match p {
                Param::Text(t) => count.bind(t.clone()),
                Param::Time(t) => count.bind(*t),
            };
        }
        let (total,) = count.fetch_one(&self.pool).await?;
        let n = params.len();
        let sql = format!(
            "SELECT CAST(id AS BIGINT) AS id, created_at, kind, actor_uid, target_uid, ip, \
             user_agent, CAST(details AS TEXT) AS details FROM audit_log {condition} \
             ORDER BY id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut query = sqlx::query_as::<_, AuditRow>(&sql);
        for p in &params {
            query = match p {
                Param::Text(t) => query.bind(t.clone()),
                Param::Time(t) => query.bind(*t),
            };
        }
        let rows = query.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok((rows.into_iter().map(Into::into).collect(), total))
    }

    pub(super) async fn audit_exists_since(
        &self,
        kind: &str,
        target: &UserUid,
        ip: &str,
        since: Timestamp,
    ) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT CAST(id AS BIGINT) FROM audit_log WHERE target_uid = $1 AND kind = $2 \
             AND ip = $3 AND created_at >= $4 LIMIT 1",
        )
        .bind(target.as_str())
        .bind(kind)
        .bind(ip)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    pub(super) async fn earlier_sign_ins(
        &self,
        user_db_id: UserId,
        except: LocationLogId,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        let sql = if DB::SORTS_WHOLE_HISTORY {
            EARLIER_SIGN_INS_IN_INDEX_ORDER
        } else {
            EARLIER_SIGN_INS
        };
        let rows: Vec<LoginRecordRow> = sqlx::query_as(sql)
            .bind(user_db_id)
            .bind(except.0)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn create_sign_in_notice(
        &self,
        n: &NewSignInNotice,
        email: &NewEmail,
    ) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        sqlx::query(
            "INSERT INTO sign_in_notices (token_hash, user_id, session_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&n.token_hash)
        .bind(n.user_db_id)
        .bind(&n.session_id)
        .bind(n.now)
        .bind(n.expires_at)
        .execute(&mut *tx)
        .await?;
        Self::enqueue(&mut tx, email, n.now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn use_sign_in_notice(
        &self,
        hash: &str,
        now: Timestamp,
        audit: &NewAuditEvent,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let used: Option<(i64,)> = sqlx::query_as(
            "UPDATE sign_in_notices SET used_at = $2 \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING CAST(user_id AS BIGINT)",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id,)) = used else {
            return Ok(None);
        };
        let user_id = UserId::new(user_id);
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_db_id = $1"
        );
        let user: Option<UserRow> = sqlx::query_as(&sql)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(user) = user.map(User::from) else {
            return Ok(None);
        };
        Self::revoke_sessions_in(&mut tx, user_id, now).await?;
        // Links of other notices of this account name sessions that are gone now.
        sqlx::query(
            "UPDATE sign_in_notices SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut audit = audit.clone();
        audit.target = Some(user.uid.clone());
        audit.actor = Some(user.uid.clone());
        Self::append_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    pub(super) async fn refresh_token_owner(
        &self,
        hash: &str,
    ) -> Result<Option<UserUid>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT u.user_uid FROM refresh_tokens t JOIN auth_sessions s ON s.session_id = t.session_id \
             JOIN users u ON u.user_db_id = s.user_id WHERE t.token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(uid,)| UserUid::new(uid)))
    }
}
