//! The SQL both stores share, written once. `shared_store!` expands, inside `postgres.rs` and
//! `sqlite.rs`, to the row types, the transaction helpers and the whole `Store` implementation,
//! whose statements differ between the backends only through the dialect hooks each of those
//! files defines next to its invocation: `Db`, `LegacyTs` with `legacy()` / `from_legacy()`
//! (the old tables' zone-less timestamps), the casts `TOKEN_TYPE`, `ACCESS_STATUS` and
//! `JSONB`, `SKIP_LOCKED`, `FOR_UPDATE`, `lock_keys()`, `begin_write()` and `conflict()`. Connecting (and
//! tuning the connection) is each backend's own.

/// Classes of the locks `lock_keys` takes (advisory lock class ids on PostgreSQL): kinds of key
/// never share a lock, whatever text a caller chooses.
pub(crate) const LOCK_SIGN_IN_ACCOUNT: i32 = 7001;
pub(crate) const LOCK_SIGN_IN_IP: i32 = 7002;
pub(crate) const LOCK_RATE_LIMIT: i32 = 7003;

/// The columns of a user, with its role's name (`u` is `users`, `r` is `roles`).
pub(crate) const USER_COLUMNS: &str = "CAST(u.user_db_id AS BIGINT) AS db_id, u.user_uid, \
     u.username, u.full_name, u.email, u.phone, r.name AS role_name, \
     COALESCE(u.email_verified, FALSE) AS email_verified, COALESCE(u.active, TRUE) AS active, \
     u.created_at, u.last_login";

/// The columns of a session (`s` is `auth_sessions`), named apart from the user's.
pub(crate) const SESSION_COLUMNS: &str = "s.session_id, s.created_at AS session_created_at, \
     s.last_used_at AS session_last_used_at, s.expires_at AS session_expires_at, \
     s.ip_address AS session_ip, s.user_agent AS session_user_agent";

macro_rules! shared_store {
    ($store:ident) => {
        use $crate::store::shared::{
            LOCK_RATE_LIMIT, LOCK_SIGN_IN_ACCOUNT, LOCK_SIGN_IN_IP, SESSION_COLUMNS, USER_COLUMNS,
        };
        use $crate::store::{
            AdminChange, ApiKey, AttemptOutcome, AttemptReservation, Credentials, Delivery,
            KeyOwner, LoginRecord, NewApiKey, NewEmail, NewSession, NewToken, NewUser,
            OutboxEmail, ProfileChange, Prune, RefreshOutcome, Reservation, Role, Rotation,
            Session, SessionUser, SignInLimits, Store, TokenKind, User,
        };

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
    created_at: LegacyTs,
    last_login: Option<LegacyTs>,
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
            created_at: from_legacy(r.created_at),
            last_login: r.last_login.map(from_legacy),
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

/// What `COUNT_FAILURES` reads: counted failures (and the oldest) per (account, IP), per
/// account and per IP, and whether the IP is known to the account.
struct FailureCounts {
    by_pair: (i64, Option<LegacyTs>),
    by_account: (i64, Option<LegacyTs>),
    by_ip: (i64, Option<LegacyTs>),
    known: bool,
}

impl<'r> sqlx::FromRow<'r, <Db as sqlx::Database>::Row> for FailureCounts {
    fn from_row(row: &'r <Db as sqlx::Database>::Row) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            by_pair: (row.try_get(0)?, row.try_get(1)?),
            by_account: (row.try_get(2)?, row.try_get(3)?),
            by_ip: (row.try_get(4)?, row.try_get(5)?),
            known: row.try_get(6)?,
        })
    }
}

impl FailureCounts {
    /// `Some(oldest counted failure of the full window)` when a limit refuses the attempt.
    fn refusal(&self, limits: &SignInLimits) -> Option<Option<LegacyTs>> {
        if self.by_pair.0 >= limits.per_account_and_ip {
            return Some(self.by_pair.1);
        }
        // The owner's own address is never locked out by what others do.
        if !self.known && self.by_account.0 >= limits.per_account {
            return Some(self.by_account.1);
        }
        if self.by_ip.0 >= limits.per_ip {
            return Some(self.by_ip.1);
        }
        None
    }
}

impl $store {
    /// The session with its user, unfiltered: for reading back a row just updated.
    async fn session_user_by_id<'e, E>(
        executor: E,
        session_id: &str,
    ) -> Result<Option<SessionUserRow>, StoreError>
    where
        E: sqlx::Executor<'e, Database = Db>,
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
        tx: &mut Transaction<'_, Db>,
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

    /// Records how a reserved sign-in attempt ended, inside the caller's transaction.
    async fn record_outcome(
        tx: &mut Transaction<'_, Db>,
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
            let (id,): (i64,) = sqlx::query_as(&format!(
                "INSERT INTO user_location_logs (user_id, ip_address, location, created_at, \
                 user_agent, access_status) VALUES ($1, $2, $3{JSONB}, $4, $5, $6{ACCESS_STATUS}) \
                 RETURNING CAST(log_id AS BIGINT)"
            ))
            .bind(account.user_db_id)
            .bind(&o.ip)
            .bind(account.location.to_string())
            .bind(legacy(o.now))
            .bind(&account.user_agent)
            .bind(if o.success { "success" } else { "failure" })
            .fetch_one(&mut **tx)
            .await?;
            log_id = Some(id);
        }
        Ok(log_id)
    }

    async fn enqueue(
        tx: &mut Transaction<'_, Db>,
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
        tx: &mut Transaction<'_, Db>,
        user_db_id: i64,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            &format!(
                "UPDATE tokens SET active = FALSE WHERE user_id = $1 \
                 AND type = $2{TOKEN_TYPE} AND COALESCE(active, TRUE)"
            ),
        )
        .bind(user_db_id)
        .bind(token.kind.as_str())
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            &format!(
                "INSERT INTO tokens (user_id, token, type, created_at, expires_at, active) \
                 VALUES ($1, $2, $3{TOKEN_TYPE}, $4, $5, TRUE)"
            ),
        )
        .bind(user_db_id)
        .bind(&token.hash)
        .bind(token.kind.as_str())
        .bind(legacy(now))
        .bind(legacy(token.expires_at))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The account's counted failures stop counting, inside the caller's transaction.
    async fn clear_failures_in(
        tx: &mut Transaction<'_, Db>,
        user_db_id: i64,
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
        Ok(done.rows_affected())
    }

    async fn revoke_sessions_in(
        tx: &mut Transaction<'_, Db>,
        user_db_id: i64,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_db_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected())
    }

    /// Marks the token used and returns its user's id. The row lock makes it single-use: a
    /// concurrent second use waits, then finds it inactive.
    async fn consume_token(
        tx: &mut Transaction<'_, Db>,
        kind: TokenKind,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            &format!(
                "UPDATE tokens SET active = FALSE WHERE token = $1 AND type = $2{TOKEN_TYPE} \
                 AND COALESCE(active, TRUE) AND expires_at > $3 RETURNING CAST(user_id AS BIGINT)"
            ),
        )
        .bind(hash)
        .bind(kind.as_str())
        .bind(legacy(now))
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(id,)| id))
    }
}

#[async_trait::async_trait]
impl Store for $store {

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
             RETURNING CAST(user_db_id AS BIGINT)",
        )
        .bind(&user.uid)
        .bind(&user.name)
        .bind(&user.email)
        .bind(&user.phone)
        .bind(&user.password_hash)
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(legacy(user.now))
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
        // Refresh tokens, then sessions, then the account: the order a rotation locks them
        // in, so a refresh racing the deletion waits instead of deadlocking.
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT session_id FROM auth_sessions WHERE user_id = $1)",
        )
        .bind(user_db_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM auth_sessions WHERE user_id = $1")
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
            .bind(legacy(s.now))
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
        // The first to claim the token wins (a row lock on PostgreSQL, one writer at a time
        // on SQLite); every later one finds it used.
        let mut tx = self.begin_write().await?;
        let claimed: Option<(String,)> = sqlx::query_as(
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
                let used: Option<(String, Option<Timestamp>)> = sqlx::query_as(
                    "SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(&r.old_refresh_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((session_id, used_at)) = used else {
                    return Ok(RefreshOutcome::Invalid);
                };
                // Rotated moments ago: the same client retrying (two tabs, a lost answer) is
                // given a fresh token for the same session.
                if !used_at.is_some_and(|at| at > r.grace_since) {
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
                    return Ok(if revoked.rows_affected() > 0 {
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
        api_keys: bool,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let ended = Self::revoke_sessions_in(&mut tx, user_db_id, now).await?;
        if api_keys {
            sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
                .bind(user_db_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    async fn clear_sign_in_failures(&self, user_db_id: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let cleared = Self::clear_failures_in(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(cleared)
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
             WHERE t.token = $1 AND t.type = $2{TOKEN_TYPE} AND COALESCE(t.active, TRUE) \
             AND t.expires_at > $3 AND COALESCE(u.active, TRUE)"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(hash)
            .bind(kind.as_str())
            .bind(legacy(now))
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
        // Recovery undoes whatever a thief set up: every session, every key, every lockout.
        Self::revoke_sessions_in(&mut tx, user_db_id, now).await?;
        sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        Self::clear_failures_in(&mut tx, user_db_id).await?;
        Self::enqueue(&mut tx, notice, now).await?;
        let user = Self::user_by_id(&mut tx, user_db_id).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn verified_by_token(&self, hash: &str) -> Result<bool, StoreError> {
        let row: Option<(bool,)> = sqlx::query_as(
            &format!(
                "SELECT COALESCE(u.email_verified, FALSE) FROM tokens t \
                 JOIN users u ON u.user_db_id = t.user_id \
                 WHERE t.token = $1 AND t.type = 'email_verification'{TOKEN_TYPE} LIMIT 1"
            ),
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
        // Several workers (instances) each take a different row, never the same one:
        // SKIP LOCKED on PostgreSQL, one writer at a time on SQLite.
        Ok(sqlx::query_as(&format!(
            "UPDATE email_outbox SET status = 'sending', attempts = attempts + 1, \
             next_attempt_at = $2 \
             WHERE id = (SELECT id FROM email_outbox WHERE status IN ('pending', 'sending') \
                         AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT 1 \
                         {SKIP_LOCKED}) \
             RETURNING id, to_address, subject, text_body, html_body, attempts, created_at"
        ))
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
        if let Some(limits) = a.limits {
            // Attempts on one account (or identifier), and from one IP, are judged one at a
            // time; the locks are always taken in this order, so they cannot deadlock.
            let locks = [
                (LOCK_SIGN_IN_ACCOUNT, a.counted_as[0].clone()),
                (LOCK_SIGN_IN_IP, a.ip.clone()),
            ];
            lock_keys(&mut tx, &locks).await?;
            let counts: FailureCounts = sqlx::query_as(crate::store::COUNT_FAILURES)
                .bind(&a.counted_as[0])
                .bind(&a.counted_as[1])
                .bind(&a.ip)
                .bind(legacy(a.since))
                .bind(legacy(a.known_since))
                .fetch_one(&mut *tx)
                .await?;
            if let Some(oldest) = counts.refusal(&limits) {
                // A refused attempt writes nothing: a flood of them cannot grow the tables.
                tx.rollback().await?;
                return Ok(Reservation::Refused {
                    oldest: oldest.map_or(a.now, from_legacy),
                });
            }
        }
        let (attempt_id,): (i64,) = sqlx::query_as(
            "INSERT INTO login_attempts (ip_address, email_or_username, attempted_at, success, \
             counted) VALUES ($1, $2, $3, FALSE, TRUE) RETURNING CAST(attempt_id AS BIGINT)",
        )
        .bind(&a.ip)
        .bind(&a.identifier)
        .bind(legacy(a.now))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reservation::Granted { attempt_id })
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
        sqlx::query(&format!(
            "UPDATE user_location_logs SET location = $2{JSONB} WHERE log_id = $1"
        ))
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
        // Calls for one key are counted one at a time (locks taken in a fixed order).
        let mut locks: Vec<(i32, String)> = keys
            .iter()
            .map(|(k, _)| (LOCK_RATE_LIMIT, format!("{bucket}:{k}")))
            .collect();
        locks.sort();
        lock_keys(&mut tx, &locks).await?;
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

    async fn prune_rate_limits(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM rate_limit_hits WHERE hit_at <= $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn prune(&self, what: Prune, batch: i64) -> Result<u64, StoreError> {
        // Each statement deletes one bounded batch, so a large backlog never holds a long
        // transaction or lock; the caller repeats until a batch comes back short.
        let done = match what {
            Prune::History { before } => {
                let attempts = sqlx::query(
                    "DELETE FROM login_attempts WHERE attempt_id IN (SELECT attempt_id \
                     FROM login_attempts WHERE attempted_at < $1 LIMIT $2)",
                )
                .bind(legacy(before))
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
                let logs = sqlx::query(
                    "DELETE FROM user_location_logs WHERE log_id IN (SELECT log_id \
                     FROM user_location_logs WHERE created_at < $1 LIMIT $2)",
                )
                .bind(legacy(before))
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
                attempts + logs
            }
            Prune::RotatedTokens { now } => sqlx::query(
                "DELETE FROM refresh_tokens WHERE token_hash IN (SELECT t.token_hash \
                 FROM refresh_tokens t JOIN auth_sessions s ON s.session_id = t.session_id \
                 WHERE s.revoked_at IS NOT NULL OR s.expires_at <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected(),
            Prune::EndedSessions { before } => sqlx::query(
                "DELETE FROM auth_sessions WHERE session_id IN (SELECT session_id \
                 FROM auth_sessions WHERE revoked_at < $1 OR expires_at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected(),
            Prune::FinishedEmails { before } => sqlx::query(
                "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox \
                 WHERE status IN ('sent', 'failed') AND created_at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    async fn login_history(
        &self,
        user_db_id: i64,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        let rows: Vec<(
            String,
            String,
            Option<String>,
            String,
            LegacyTs,
        )> = sqlx::query_as(
            "SELECT ip_address, CAST(location AS TEXT), user_agent, CAST(access_status AS TEXT), created_at \
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
                    created_at: from_legacy(created_at),
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
        let pattern = query.map(crate::store::contains_pattern);
        let filter = "(CAST($1 AS TEXT) IS NULL OR lower(u.username) LIKE $1 ESCAPE '\\' \
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
        // Two concurrent changes are applied one after the other, each seeing the other's
        // result, so a role change always revokes the sessions opened before it.
        sqlx::query(&format!("SELECT 1 FROM users WHERE user_db_id = $1 {FOR_UPDATE}"))
            .bind(user_db_id)
            .execute(&mut *tx)
            .await?;
        let before = Self::user_by_id(&mut tx, user_db_id).await?;
        sqlx::query(
            "UPDATE users SET \
             role_id = CASE WHEN CAST($2 AS TEXT) IS NULL THEN role_id \
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
            Self::revoke_sessions_in(&mut tx, user_db_id, now).await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    async fn create_api_key(&self, key: &NewApiKey, notice: &NewEmail) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
        .execute(&mut *tx)
        .await?;
        Self::enqueue(&mut tx, notice, key.now).await?;
        tx.commit().await?;
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
    };
}

pub(crate) use shared_store;
