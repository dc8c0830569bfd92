//! `SqliteStore`: the embedded default store, the same schema and behaviour as `PgStore`.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Sqlite, SqlitePool, Transaction};
use std::str::FromStr;
use std::time::Duration;

use super::{
    AdminChange, ApiKey, AttemptOutcome, AttemptReservation, Credentials, Delivery, KeyOwner,
    LoginRecord, NewApiKey, NewEmail, NewSession, NewToken, NewUser, OutboxEmail, ProfileChange,
    RefreshOutcome, Reservation, Role, Rotation, Session, SessionUser, Store, StoreError,
    TokenKind, User,
};
use crate::time::Timestamp;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

/// Timestamps are TEXT in the RFC 3339 form sqlx writes for `DateTime<Utc>` (always `+00:00`,
/// 0, 3, 6 or 9 fraction digits), which sorts as the instants do: comparing the text in SQL is
/// comparing the times.
const USER_COLUMNS: &str = "u.user_db_id AS db_id, u.user_uid, u.username, u.full_name, \
     u.email, u.phone, r.name AS role_name, COALESCE(u.email_verified, FALSE) AS email_verified, \
     COALESCE(u.active, TRUE) AS active, u.created_at, u.last_login";

const SESSION_COLUMNS: &str = "s.session_id, s.created_at AS session_created_at, \
     s.last_used_at AS session_last_used_at, s.expires_at AS session_expires_at, \
     s.ip_address AS session_ip, s.user_agent AS session_user_agent";

/// Under WAL a deferred transaction that reads before it writes fails with SQLITE_BUSY
/// (no busy-handler retry) when another writer committed in between; taking the write lock
/// up front makes writers queue on `busy_timeout` instead.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

#[derive(sqlx::FromRow)]
struct UserRow {
    db_id: i64,
    user_uid: String,
    username: String,
    full_name: String,
    email: String,
    phone: Option<String>,
    role_name: Option<String>,
    email_verified: bool,
    active: bool,
    created_at: Timestamp,
    last_login: Option<Timestamp>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            db_id: r.db_id,
            uid: r.user_uid,
            username: r.username,
            name: r.full_name,
            email: r.email,
            phone: r.phone,
            role: Role::from_name(r.role_name.as_deref()),
            email_verified: r.email_verified,
            active: r.active,
            created_at: r.created_at,
            last_login: r.last_login,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password: String,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: String,
    session_created_at: Timestamp,
    session_last_used_at: Timestamp,
    session_expires_at: Timestamp,
    session_ip: Option<String>,
    session_user_agent: Option<String>,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            id: r.session_id,
            created_at: r.session_created_at,
            last_used_at: r.session_last_used_at,
            expires_at: r.session_expires_at,
            ip: r.session_ip,
            user_agent: r.session_user_agent,
        }
    }
}

#[derive(sqlx::FromRow)]
struct SessionUserRow {
    #[sqlx(flatten)]
    session: SessionRow,
    #[sqlx(flatten)]
    user: UserRow,
}

impl From<SessionUserRow> for SessionUser {
    fn from(r: SessionUserRow) -> Self {
        SessionUser {
            session: r.session.into(),
            user: r.user.into(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct KeyOwnerRow {
    key_id: String,
    key_name: String,
    scopes: String,
    key_created_at: Timestamp,
    key_expires_at: Option<Timestamp>,
    key_last_used_at: Option<Timestamp>,
    secret_hash: String,
    #[sqlx(flatten)]
    user: UserRow,
}

impl From<KeyOwnerRow> for KeyOwner {
    fn from(r: KeyOwnerRow) -> Self {
        KeyOwner {
            key: ApiKey {
                id: r.key_id,
                name: r.key_name,
                scopes: r.scopes,
                created_at: r.key_created_at,
                expires_at: r.key_expires_at,
                last_used_at: r.key_last_used_at,
            },
            secret_hash: r.secret_hash.trim_end().to_owned(),
            user: r.user.into(),
        }
    }
}

/// Unique violations become the conflict they mean; everything else stays a database error.
/// SQLite names no constraint, only the message does: `UNIQUE constraint failed: index
/// 'users_username_lower_key'` (or `users.username` for a column constraint).
fn conflict(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            let message = db.message();
            if message.contains("username") {
                return StoreError::UsernameTaken;
            }
            if message.contains("email") {
                return StoreError::EmailTaken;
            }
        }
    }
    StoreError::Database(e)
}

impl SqliteStore {
    /// `sqlite://relative/path.db`, `sqlite:///absolute/path.db` or `sqlite:path.db`; the
    /// file and its folder are created if missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(folder) = options.get_filename().parent() {
            if !folder.as_os_str().is_empty() && !folder.exists() {
                std::fs::create_dir_all(folder).map_err(|e| {
                    StoreError::Setup(format!("cannot create {}: {e}", folder.display()))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with(BEGIN_WRITE).await?)
    }

    async fn session_where(
        &self,
        condition: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, {USER_COLUMNS} FROM auth_sessions s \
             JOIN users u ON u.user_db_id = s.user_id LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE {condition} = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
             AND COALESCE(u.active, TRUE)"
        );
        let row: Option<SessionUserRow> = sqlx::query_as(&sql)
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    async fn user_by_id(
        tx: &mut Transaction<'_, Sqlite>,
        user_db_id: i64,
    ) -> Result<User, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_db_id = $1"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(user_db_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(Into::into).ok_or(StoreError::NotFound)
    }

    /// The session with its user, unfiltered: for reading back a row just updated.
    async fn session_user_by_id<'e, E>(
        executor: E,
        session_id: &str,
    ) -> Result<Option<SessionUserRow>, StoreError>
    where
        E: Executor<'e, Database = Sqlite>,
    {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, {USER_COLUMNS} FROM auth_sessions s \
             JOIN users u ON u.user_db_id = s.user_id LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE s.session_id = $1"
        );
        Ok(sqlx::query_as(&sql)
            .bind(session_id)
            .fetch_optional(executor)
            .await?)
    }

    /// Records how a reserved sign-in attempt ended, inside the caller's transaction.
    async fn record_outcome(
        tx: &mut Transaction<'_, Sqlite>,
        o: &AttemptOutcome,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query("UPDATE login_attempts SET success = $2, counted = $3 WHERE attempt_id = $1")
            .bind(o.attempt_id)
            .bind(o.success)
            .bind(o.counted)
            .execute(&mut **tx)
            .await?;
        let mut log_id = None;
        if let Some(account) = &o.account {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO user_location_logs (user_id, ip_address, location, created_at, \
                 user_agent, access_status) VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING log_id",
            )
            .bind(account.user_db_id)
            .bind(&o.ip)
            .bind(account.location.to_string())
            .bind(o.now)
            .bind(&account.user_agent)
            .bind(if o.success { "success" } else { "failure" })
            .fetch_one(&mut **tx)
            .await?;
            log_id = Some(id);
        }
        Ok(log_id)
    }

    async fn enqueue(
        tx: &mut Transaction<'_, Sqlite>,
        email: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO email_outbox (kind, to_address, subject, text_body, html_body, \
             next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(email.kind)
        .bind(&email.to)
        .bind(&email.subject)
        .bind(&email.text)
        .bind(&email.html)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Earlier tokens of the kind stop working; the new one is stored as its digest.
    async fn insert_token(
        tx: &mut Transaction<'_, Sqlite>,
        user_db_id: i64,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tokens SET active = FALSE WHERE user_id = $1 \
             AND type = $2 AND COALESCE(active, TRUE)",
        )
        .bind(user_db_id)
        .bind(token.kind.as_str())
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO tokens (user_id, token, type, created_at, expires_at, active) \
             VALUES ($1, $2, $3, $4, $5, TRUE)",
        )
        .bind(user_db_id)
        .bind(&token.hash)
        .bind(token.kind.as_str())
        .bind(now)
        .bind(token.expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Marks the token used and returns its user's id. Writers are serialised (BEGIN
    /// IMMEDIATE), so a second use finds it inactive.
    async fn consume_token(
        tx: &mut Transaction<'_, Sqlite>,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE tokens SET active = FALSE WHERE token = $1 AND type = $2 \
             AND COALESCE(active, TRUE) AND expires_at > $3 RETURNING user_id",
        )
        .bind(hash)
        .bind(kind.as_str())
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(id,)| id))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(
        &self,
        user: &NewUser,
        verification: &NewToken,
        welcome: &NewEmail,
    ) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let (db_id,): (i64,) = sqlx::query_as(
            "INSERT INTO users (user_uid, full_name, email, phone, password, username, role_id, \
             created_at, email_verified, active) \
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT role_id FROM roles WHERE name = $7), $8, FALSE, TRUE) \
             RETURNING user_db_id",
        )
        .bind(&user.uid)
        .bind(&user.name)
        .bind(&user.email)
        .bind(&user.phone)
        .bind(&user.password_hash)
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(user.now)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict)?;
        Self::insert_token(&mut tx, db_id, verification, user.now).await?;
        Self::enqueue(&mut tx, welcome, user.now).await?;
        tx.commit().await?;
        Ok(User {
            db_id,
            uid: user.uid.clone(),
            username: user.username.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            phone: user.phone.clone(),
            role: user.role,
            email_verified: false,
            active: true,
            created_at: user.now,
            last_login: None,
        })
    }

    async fn find_credentials(&self, identifier: &str) -> Result<Option<Credentials>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, u.password FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE lower(u.username) = $1 OR lower(u.email) = $1 LIMIT 1"
        );
        let row: Option<CredentialsRow> = sqlx::query_as(&sql)
            .bind(identifier)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Credentials {
            user: r.user.into(),
            password_hash: r.password,
        }))
    }

    async fn credentials_by_id(&self, user_db_id: i64) -> Result<Option<Credentials>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, u.password FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_db_id = $1"
        );
        let row: Option<CredentialsRow> = sqlx::query_as(&sql)
            .bind(user_db_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Credentials {
            user: r.user.into(),
            password_hash: r.password,
        }))
    }

    async fn upgrade_password_hash(
        &self,
        user_db_id: i64,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password = $3 WHERE user_db_id = $1 AND password = $2")
            .bind(user_db_id)
            .bind(old)
            .bind(new)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn update_profile(
        &self,
        user_db_id: i64,
        change: &ProfileChange,
    ) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE users SET full_name = COALESCE($2, full_name), \
             phone = CASE WHEN $3 THEN $4 ELSE phone END WHERE user_db_id = $1",
        )
        .bind(user_db_id)
        .bind(&change.name)
        .bind(change.phone.is_some())
        .bind(change.phone.clone().flatten())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn delete_user(&self, user_db_id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Sign-in attempts are keyed by the identifier as typed, not by the account.
        sqlx::query(
            "DELETE FROM login_attempts WHERE email_or_username IN \
             (SELECT lower(username) FROM users WHERE user_db_id = $1 \
              UNION SELECT lower(email) FROM users WHERE user_db_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM email_outbox WHERE lower(to_address) = \
             (SELECT lower(email) FROM users WHERE user_db_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM users WHERE user_db_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn start_session(
        &self,
        s: &NewSession,
        attempt: &AttemptOutcome,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO auth_sessions (session_id, user_id, cookie_hash, created_at, last_used_at, \
             expires_at, ip_address, user_agent) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
        )
        .bind(&s.id)
        .bind(s.user_db_id)
        .bind(&s.cookie_hash)
        .bind(s.now)
        .bind(s.expires_at)
        .bind(&s.ip)
        .bind(&s.user_agent)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&s.refresh_hash)
        .bind(&s.id)
        .bind(s.now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE users SET last_login = $2 WHERE user_db_id = $1")
            .bind(s.user_db_id)
            .bind(s.now)
            .execute(&mut *tx)
            .await?;
        let log_id = Self::record_outcome(&mut tx, attempt).await?;
        tx.commit().await?;
        Ok(log_id)
    }

    async fn session_by_id(
        &self,
        session_id: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        self.session_where("s.session_id", session_id, now).await
    }

    async fn session_by_cookie(
        &self,
        cookie_hash: &str,
        now: Timestamp,
    ) -> Result<Option<SessionUser>, StoreError> {
        self.session_where("s.cookie_hash", cookie_hash, now).await
    }

    async fn rotate_refresh_token(&self, r: &Rotation) -> Result<RefreshOutcome, StoreError> {
        // BEGIN IMMEDIATE serialises rotations: the first to claim the token wins, every
        // later one finds it used.
        let mut tx = self.begin_write().await?;
        let claimed: Option<(String,)> = sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             RETURNING session_id",
        )
        .bind(&r.old_refresh_hash)
        .bind(r.now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id,)) = claimed else {
            let used: Option<(String,)> =
                sqlx::query_as("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(&r.old_refresh_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((session_id,)) = used else {
                return Ok(RefreshOutcome::Invalid);
            };
            sqlx::query(
                "UPDATE auth_sessions SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL",
            )
            .bind(&session_id)
            .bind(r.now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused);
        };
        // SQLite's RETURNING cannot name the FROM tables, so the row is read back after.
        let done = sqlx::query(
            "UPDATE auth_sessions AS s SET cookie_hash = $2, last_used_at = $3, expires_at = $4 \
             FROM users u \
             WHERE s.session_id = $1 AND u.user_db_id = s.user_id AND s.revoked_at IS NULL \
             AND s.expires_at > $3 AND COALESCE(u.active, TRUE)",
        )
        .bind(&session_id)
        .bind(&r.new_cookie_hash)
        .bind(r.now)
        .bind(r.expires_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // Dropping the transaction rolls back the claim, as on PostgreSQL.
            return Ok(RefreshOutcome::Invalid);
        }
        let Some(row) = Self::session_user_by_id(&mut *tx, &session_id).await? else {
            return Ok(RefreshOutcome::Invalid);
        };
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&r.new_refresh_hash)
        .bind(&session_id)
        .bind(r.now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated(Box::new(row.into())))
    }

    async fn touch_session(&self, session_id: &str, now: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE auth_sessions SET last_used_at = $2 WHERE session_id = $1 AND last_used_at < $2")
            .bind(session_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_sessions(
        &self,
        user_db_id: i64,
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

    async fn revoke_session(
        &self,
        user_db_id: i64,
        session_id: &str,
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
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_all_sessions(
        &self,
        user_db_id: i64,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_db_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn issue_token(
        &self,
        user_db_id: i64,
        token: &NewToken,
        email: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        Self::insert_token(&mut tx, user_db_id, token, now).await?;
        Self::enqueue(&mut tx, email, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn token_user(
        &self,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM tokens t JOIN users u ON u.user_db_id = t.user_id \
             LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE t.token = $1 AND t.type = $2 AND COALESCE(t.active, TRUE) \
             AND t.expires_at > $3 AND COALESCE(u.active, TRUE)"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(hash)
            .bind(kind.as_str())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    async fn reset_password(
        &self,
        hash: &str,
        password_hash: &str,
        notice: &NewEmail,
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(user_db_id) =
            Self::consume_token(&mut tx, TokenKind::PasswordReset, hash, now).await?
        else {
            return Ok(None);
        };
        let done = sqlx::query(
            "UPDATE users SET password = $2 WHERE user_db_id = $1 AND COALESCE(active, TRUE)",
        )
        .bind(user_db_id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_db_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::enqueue(&mut tx, notice, now).await?;
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn verified_by_token(&self, hash: &str) -> Result<bool, StoreError> {
        let row: Option<(bool,)> = sqlx::query_as(
            "SELECT COALESCE(u.email_verified, FALSE) FROM tokens t \
             JOIN users u ON u.user_db_id = t.user_id \
             WHERE t.token = $1 AND t.type = 'email_verification' LIMIT 1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some_and(|(verified,)| verified))
    }

    async fn verify_email(&self, hash: &str, now: Timestamp) -> Result<Option<User>, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(user_db_id) =
            Self::consume_token(&mut tx, TokenKind::EmailVerification, hash, now).await?
        else {
            return Ok(None);
        };
        let done = sqlx::query(
            "UPDATE users SET email_verified = TRUE WHERE user_db_id = $1 AND COALESCE(active, TRUE)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn change_password(
        &self,
        user_db_id: i64,
        password_hash: &str,
        keep_session: &str,
        notice: &NewEmail,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE users SET password = $2 WHERE user_db_id = $1")
            .bind(user_db_id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $3 WHERE user_id = $1 AND session_id <> $2 \
             AND revoked_at IS NULL",
        )
        .bind(user_db_id)
        .bind(keep_session)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::enqueue(&mut tx, notice, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_email(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<OutboxEmail>, StoreError> {
        // One writer at a time: the UPDATE … WHERE id = (SELECT …) claims atomically.
        Ok(sqlx::query_as(
            "UPDATE email_outbox SET status = 'sending', attempts = attempts + 1, \
             next_attempt_at = $2 \
             WHERE id = (SELECT id FROM email_outbox WHERE status IN ('pending', 'sending') \
                         AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT 1) \
             RETURNING id, to_address, subject, text_body, html_body, attempts, created_at",
        )
        .bind(now)
        .bind(lease_until)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn finish_email(
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

    async fn reserve_sign_in(&self, a: &AttemptReservation) -> Result<Reservation, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut refused = None;
        if let Some((per_identifier, per_ip)) = a.limits {
            // BEGIN IMMEDIATE: attempts are judged one at a time.
            let (by_identifier, identifier_oldest, by_ip, ip_oldest): (
                i64,
                Option<Timestamp>,
                i64,
                Option<Timestamp>,
            ) = sqlx::query_as(super::COUNT_FAILURES)
                .bind(&a.counted_as[0])
                .bind(&a.counted_as[1])
                .bind(&a.ip)
                .bind(a.since)
                .fetch_one(&mut *tx)
                .await?;
            if by_identifier >= per_identifier {
                refused = Some(identifier_oldest.unwrap_or(a.now));
            } else if by_ip >= per_ip {
                refused = Some(ip_oldest.unwrap_or(a.now));
            }
        }
        let (attempt_id,): (i64,) = sqlx::query_as(
            "INSERT INTO login_attempts (ip_address, email_or_username, attempted_at, success, \
             counted) VALUES ($1, $2, $3, FALSE, $4) RETURNING attempt_id",
        )
        .bind(&a.ip)
        .bind(&a.identifier)
        .bind(a.now)
        .bind(refused.is_none())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reservation {
            attempt_id,
            refused,
        })
    }

    async fn finish_sign_in(&self, o: &AttemptOutcome) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        let log_id = Self::record_outcome(&mut tx, o).await?;
        tx.commit().await?;
        Ok(log_id)
    }

    async fn set_location(
        &self,
        log_id: i64,
        location: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE user_location_logs SET location = $2 WHERE log_id = $1")
            .bind(log_id)
            .bind(location.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take_rate_limit(
        &self,
        bucket: &str,
        keys: &[(&str, i64)],
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let mut tx = self.begin_write().await?;
        for (key, limit) in keys {
            // Calls that left the window are of no more use.
            sqlx::query(
                "DELETE FROM rate_limit_hits WHERE bucket = $1 AND key = $2 AND hit_at <= $3",
            )
            .bind(bucket)
            .bind(key)
            .bind(since)
            .execute(&mut *tx)
            .await?;
            let (count, oldest): (i64, Option<Timestamp>) = sqlx::query_as(
                "SELECT count(*), min(hit_at) FROM rate_limit_hits WHERE bucket = $1 AND key = $2",
            )
            .bind(bucket)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            if count >= *limit {
                tx.commit().await?;
                return Ok(Some(oldest.unwrap_or(now)));
            }
        }
        for (key, _) in keys {
            sqlx::query("INSERT INTO rate_limit_hits (bucket, key, hit_at) VALUES ($1, $2, $3)")
                .bind(bucket)
                .bind(key)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn login_history(
        &self,
        user_db_id: i64,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        let rows: Vec<(String, String, Option<String>, String, Timestamp)> = sqlx::query_as(
            "SELECT ip_address, location, user_agent, access_status, created_at \
                 FROM user_location_logs WHERE user_id = $1 ORDER BY created_at DESC, log_id DESC \
                 LIMIT $2",
        )
        .bind(user_db_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(ip, location, user_agent, status, created_at)| LoginRecord {
                    ip,
                    location: serde_json::from_str(&location).unwrap_or(serde_json::Value::Null),
                    user_agent,
                    success: status == "success",
                    created_at,
                },
            )
            .collect())
    }

    async fn user_by_uid(&self, uid: &str) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE u.user_uid = $1"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(uid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    async fn list_users(
        &self,
        query: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<User>, i64), StoreError> {
        let pattern = query.map(super::contains_pattern);
        let filter = "($1 IS NULL OR lower(u.username) LIKE $1 ESCAPE '\\' \
             OR lower(u.email) LIKE $1 ESCAPE '\\' OR lower(u.full_name) LIKE $1 ESCAPE '\\')";
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u LEFT JOIN roles r ON r.role_id = u.role_id \
             WHERE {filter} ORDER BY u.created_at, u.user_db_id LIMIT $2 OFFSET $3"
        );
        let rows: Vec<UserRow> = sqlx::query_as(&sql)
            .bind(&pattern)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let (total,): (i64,) =
            sqlx::query_as(&format!("SELECT count(*) FROM users u WHERE {filter}"))
                .bind(&pattern)
                .fetch_one(&self.pool)
                .await?;
        Ok((rows.into_iter().map(Into::into).collect(), total))
    }

    async fn admin_update_user(
        &self,
        user_db_id: i64,
        change: &AdminChange,
        now: Timestamp,
    ) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let before = Self::user_by_id(&mut tx, user_db_id).await?;
        sqlx::query(
            "UPDATE users SET \
             role_id = CASE WHEN $2 IS NULL THEN role_id \
                       ELSE (SELECT role_id FROM roles WHERE name = $2) END, \
             active = COALESCE($3, active), email_verified = COALESCE($4, email_verified) \
             WHERE user_db_id = $1",
        )
        .bind(user_db_id)
        .bind(change.role.map(Role::as_str))
        .bind(change.active)
        .bind(change.email_verified)
        .execute(&mut *tx)
        .await?;
        let after = Self::user_by_id(&mut tx, user_db_id).await?;
        if after.role != before.role || (before.active && !after.active) {
            sqlx::query(
                "UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user_db_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, user_id, name, secret_hash, scopes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(key.user_db_id)
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(&key.scopes)
        .bind(key.now)
        .bind(key.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_api_keys(&self, user_db_id: i64) -> Result<Vec<ApiKey>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT key_id, name, scopes, created_at, expires_at, last_used_at FROM api_keys \
             WHERE user_id = $1 ORDER BY created_at DESC, key_id",
        )
        .bind(user_db_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_api_key(&self, user_db_id: i64, key_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE user_id = $1 AND key_id = $2")
            .bind(user_db_id)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn api_key_owner(
        &self,
        key_id: &str,
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

    async fn touch_api_key(&self, key_id: &str, now: Timestamp) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        // A missing folder on the way is created too.
        let url = format!("sqlite://{}", dir.path().join("data/authflow.db").display());
        SqliteStore::connect(&url).await.unwrap()
    }

    fn token() -> NewToken {
        NewToken {
            kind: TokenKind::EmailVerification,
            hash: crate::auth::tokens::digest(&crate::auth::tokens::random_token()),
            expires_at: crate::time::now() + chrono::Duration::hours(24),
        }
    }

    fn welcome() -> NewEmail {
        NewEmail {
            kind: "welcome",
            to: "someone@example.com".into(),
            subject: "Welcome".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        }
    }

    trait CreatePlain {
        async fn create_user_plain(&self, user: &NewUser) -> Result<User, StoreError>;
    }

    impl CreatePlain for SqliteStore {
        async fn create_user_plain(&self, user: &NewUser) -> Result<User, StoreError> {
            self.create_user(user, &token(), &welcome()).await
        }
    }

    /// Starts a session the way a sign-in does: reserve the attempt, then open it.
    async fn start(s: &SqliteStore, session: &NewSession) {
        let reservation = s
            .reserve_sign_in(&AttemptReservation {
                identifier: "someone".into(),
                counted_as: ["someone".into(), "someone".into()],
                ip: "127.0.0.1".into(),
                limits: None,
                since: session.now,
                now: session.now,
            })
            .await
            .unwrap();
        let outcome = AttemptOutcome {
            attempt_id: reservation.attempt_id,
            success: true,
            counted: true,
            ip: "127.0.0.1".into(),
            now: session.now,
            account: None,
        };
        s.start_session(session, &outcome).await.unwrap();
    }

    fn new_user(username: &str, email: &str) -> NewUser {
        NewUser {
            uid: uuid::Uuid::new_v4().to_string(),
            username: username.into(),
            name: "Test User".into(),
            email: email.into(),
            phone: None,
            password_hash: "hash".into(),
            role: Role::User,
            now: crate::time::now(),
        }
    }

    fn new_session(user: &User, id: &str, now: Timestamp) -> NewSession {
        NewSession {
            id: id.into(),
            user_db_id: user.db_id,
            cookie_hash: format!("cookie-{id}"),
            refresh_hash: format!("refresh-{id}"),
            ip: Some("127.0.0.1".into()),
            user_agent: Some("tests".into()),
            now,
            expires_at: now + chrono::Duration::days(30),
        }
    }

    fn rotation(old: &str, new: &str, now: Timestamp) -> Rotation {
        Rotation {
            old_refresh_hash: old.into(),
            new_refresh_hash: new.into(),
            new_cookie_hash: format!("cookie-of-{new}"),
            now,
            expires_at: now + chrono::Duration::days(30),
        }
    }

    #[tokio::test]
    async fn migrations_run_again_on_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(&dir).await;
        first
            .create_user(
                &new_user("alice", "alice@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        first.pool().close().await;
        let second = store(&dir).await;
        second.ping().await.unwrap();
        assert!(second.find_credentials("alice").await.unwrap().is_some());
        let roles: Vec<(String,)> = sqlx::query_as("SELECT name FROM roles ORDER BY name")
            .fetch_all(second.pool())
            .await
            .unwrap();
        assert_eq!(roles, vec![("admin".to_string(),), ("user".to_string(),)]);
    }

    #[tokio::test]
    async fn case_insensitive_conflicts_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let alice = s
            .create_user(
                &new_user("Alice", "alice@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        assert_eq!(alice.role, Role::User);
        let e = s
            .create_user(
                &new_user("aLICE", "other@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::UsernameTaken), "{e:?}");
        let e = s
            .create_user(&new_user("bob", "ALICE@example.COM"), &token(), &welcome())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::EmailTaken), "{e:?}");
        // Both found by the lower-cased identifier.
        let c = s.find_credentials("alice").await.unwrap().unwrap();
        assert_eq!(c.user.db_id, alice.db_id);
        assert_eq!(c.user.created_at, alice.created_at);
        assert_eq!(c.password_hash, "hash");
        assert!(s
            .find_credentials("alice@example.com")
            .await
            .unwrap()
            .is_some());
        let admin = s
            .create_user_plain(&NewUser {
                role: Role::Admin,
                ..new_user("root", "root@example.com")
            })
            .await
            .unwrap();
        let c = s.credentials_by_id(admin.db_id).await.unwrap().unwrap();
        assert_eq!(c.user.role, Role::Admin);
        assert!(c.user.active && !c.user.email_verified);
    }

    #[tokio::test]
    async fn profile_change_and_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let u = s
            .create_user(
                &new_user("carol", "carol@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        let changed = s
            .update_profile(
                u.db_id,
                &ProfileChange {
                    name: Some("Carol C".into()),
                    phone: Some(Some("+123".into())),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (changed.name.as_str(), changed.phone.as_deref()),
            ("Carol C", Some("+123"))
        );
        let changed = s
            .update_profile(
                u.db_id,
                &ProfileChange {
                    name: None,
                    phone: Some(None),
                },
            )
            .await
            .unwrap();
        assert_eq!((changed.name.as_str(), changed.phone), ("Carol C", None));
        let (updated_at,): (Option<Timestamp>,) =
            sqlx::query_as("SELECT updated_at FROM users WHERE user_db_id = $1")
                .bind(u.db_id)
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert!(updated_at.is_some());
        assert!(matches!(
            s.update_profile(u.db_id + 100, &ProfileChange::default())
                .await,
            Err(StoreError::NotFound)
        ));

        start(&s, &new_session(&u, "s1", crate::time::now())).await;
        for who in ["carol", "carol@example.com", "someone-else"] {
            sqlx::query(
                "INSERT INTO login_attempts (ip_address, email_or_username) VALUES ('1.2.3.4', $1)",
            )
            .bind(who)
            .execute(s.pool())
            .await
            .unwrap();
        }
        s.delete_user(u.db_id).await.unwrap();
        let left: Vec<(String,)> = sqlx::query_as(
            "SELECT email_or_username FROM login_attempts WHERE ip_address = '1.2.3.4'",
        )
        .fetch_all(s.pool())
        .await
        .unwrap();
        assert_eq!(left, vec![("someone-else".to_string(),)]);
        let (sessions, tokens): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM auth_sessions), (SELECT count(*) FROM refresh_tokens)",
        )
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!((sessions, tokens), (0, 0));
        assert!(matches!(
            s.delete_user(u.db_id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn sessions_are_found_listed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let u = s
            .create_user(&new_user("dave", "dave@example.com"), &token(), &welcome())
            .await
            .unwrap();
        let now = crate::time::now();
        let ns = new_session(&u, "s1", now);
        start(&s, &ns).await;

        let by_id = s.session_by_id("s1", now).await.unwrap().unwrap();
        assert_eq!(by_id.session.id, "s1");
        assert_eq!(by_id.session.created_at, now);
        assert_eq!(by_id.session.expires_at, ns.expires_at);
        assert_eq!(by_id.session.user_agent.as_deref(), Some("tests"));
        assert_eq!(by_id.user.db_id, u.db_id);
        assert_eq!(by_id.user.last_login, Some(now));
        let by_cookie = s
            .session_by_cookie("cookie-s1", now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_cookie.session.id, "s1");
        assert!(s.session_by_cookie("nope", now).await.unwrap().is_none());
        // Expired at its end.
        assert!(s
            .session_by_id("s1", ns.expires_at)
            .await
            .unwrap()
            .is_none());

        let later = now + chrono::Duration::seconds(5);
        s.touch_session("s1", later).await.unwrap();
        s.touch_session("s1", now).await.unwrap(); // never moves back
        let touched = s.session_by_id("s1", later).await.unwrap().unwrap();
        assert_eq!(touched.session.last_used_at, later);

        start(&s, &new_session(&u, "s2", later)).await;
        let ids: Vec<String> = s
            .list_sessions(u.db_id, later)
            .await
            .unwrap()
            .into_iter()
            .map(|x| x.id)
            .collect();
        assert_eq!(ids, vec!["s2", "s1"]);
        assert!(s.revoke_session(u.db_id, "s1", later).await.unwrap());
        assert!(!s.revoke_session(u.db_id, "s1", later).await.unwrap());
        assert!(s.session_by_id("s1", later).await.unwrap().is_none());
        assert_eq!(s.revoke_all_sessions(u.db_id, later).await.unwrap(), 1);
        assert!(s.list_sessions(u.db_id, later).await.unwrap().is_empty());

        // An inactive user's sessions do not count.
        start(&s, &new_session(&u, "s3", later)).await;
        sqlx::query("UPDATE users SET active = FALSE WHERE user_db_id = $1")
            .bind(u.db_id)
            .execute(s.pool())
            .await
            .unwrap();
        assert!(s.session_by_id("s3", later).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rotation_then_replay_revokes_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let u = s
            .create_user(&new_user("erin", "erin@example.com"), &token(), &welcome())
            .await
            .unwrap();
        let now = crate::time::now();
        start(&s, &new_session(&u, "s1", now)).await;

        let later = now + chrono::Duration::seconds(60);
        let r = rotation("refresh-s1", "r2", later);
        let RefreshOutcome::Rotated(su) = s.rotate_refresh_token(&r).await.unwrap() else {
            panic!("expected Rotated");
        };
        assert_eq!(su.session.id, "s1");
        assert_eq!(su.session.last_used_at, later);
        assert_eq!(su.session.expires_at, r.expires_at);
        assert_eq!(su.user.db_id, u.db_id);
        assert!(s
            .session_by_cookie("cookie-s1", later)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .session_by_cookie("cookie-of-r2", later)
            .await
            .unwrap()
            .is_some());

        let replay = s
            .rotate_refresh_token(&rotation("refresh-s1", "r3", later))
            .await
            .unwrap();
        assert!(matches!(replay, RefreshOutcome::Reused), "{replay:?}");
        assert!(s.session_by_id("s1", later).await.unwrap().is_none());
        // The newest token of a revoked session is no good either, and is not spent by trying.
        let after = s
            .rotate_refresh_token(&rotation("r2", "r4", later))
            .await
            .unwrap();
        assert!(matches!(after, RefreshOutcome::Invalid), "{after:?}");
        let (used,): (Option<Timestamp>,) =
            sqlx::query_as("SELECT used_at FROM refresh_tokens WHERE token_hash = 'r2'")
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert!(used.is_none());
        let unknown = s
            .rotate_refresh_token(&rotation("unknown", "r5", later))
            .await
            .unwrap();
        assert!(matches!(unknown, RefreshOutcome::Invalid), "{unknown:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_rotations_of_one_token_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(store(&dir).await);
        let u = s
            .create_user(
                &new_user("frank", "frank@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        for round in 0..5 {
            let now = crate::time::now();
            let id = format!("s{round}");
            start(&s, &new_session(&u, &id, now)).await;
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let s = Arc::clone(&s);
                    let r = rotation(&format!("refresh-{id}"), &format!("{id}-new{i}"), now);
                    tokio::spawn(async move { s.rotate_refresh_token(&r).await })
                })
                .collect();
            let (mut rotated, mut reused) = (0, 0);
            for t in tasks {
                match t.await.unwrap().unwrap() {
                    RefreshOutcome::Rotated(_) => rotated += 1,
                    RefreshOutcome::Reused => reused += 1,
                    RefreshOutcome::Invalid => panic!("Invalid in round {round}"),
                }
            }
            assert_eq!((rotated, reused), (1, 7), "round {round}");
            assert!(s.session_by_id(&id, now).await.unwrap().is_none());
        }
    }
}
