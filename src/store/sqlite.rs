//! SQLite, the embedded default backend, with the same schema and behaviour as PostgreSQL:
//! its `Dialect` and connecting to it. Every statement is in `sql/`.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::str::FromStr;
use std::time::Duration;

use super::dialect::{Dialect, Lock};
use super::{SqlStore, StoreError};
use crate::time::Timestamp;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub type SqliteStore = SqlStore<Sqlite>;

/// Under WAL a deferred transaction that reads before it writes fails with SQLITE_BUSY
/// (no busy-handler retry) when another writer committed in between; taking the write lock
/// up front makes writers queue on `busy_timeout` instead.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

impl Dialect for Sqlite {
    /// Timestamps are TEXT in the RFC 3339 form sqlx writes for `DateTime<Utc>` (always
    /// `+00:00`, 0, 3, 6 or 9 fraction digits), which sorts as the instants do: comparing the
    /// text in SQL is comparing the times. The old tables' columns are no different here.
    type LegacyTs = Timestamp;

    const TOKEN_TYPE: &'static str = "";
    const ACCESS_STATUS: &'static str = "";
    const JSONB: &'static str = "";
    /// One writer at a time: the `UPDATE … WHERE id = (SELECT …)` claim is atomic as it is.
    const SKIP_LOCKED: &'static str = "";
    /// Rows cannot be locked one by one: the write transaction already excludes other writers.
    const FOR_UPDATE: &'static str = "";
    /// SQLite's planner reads the history index in order for it (`EXPLAIN QUERY PLAN`).
    const SORTS_WHOLE_HISTORY: bool = false;
    const COALESCE_LOOKUPS: bool = false;
    const WRITES_IN_WITH: bool = false;

    fn for_each_json_text(column: &str, select: &dyn Fn(&str) -> String) -> String {
        select(&format!("{column} IN (SELECT value FROM json_each($1))"))
    }

    fn legacy(t: Timestamp) -> Timestamp {
        t
    }

    fn from_legacy(t: Timestamp) -> Timestamp {
        t
    }

    /// SQLite names no constraint, only the message does: `UNIQUE constraint failed: index
    /// 'users_username_lower_key'` (or `users.username` for a column constraint).
    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

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

    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(pool.begin_with(BEGIN_WRITE).await?)
    }

    /// Nothing to lock: `BEGIN IMMEDIATE` already makes writers queue one at a time.
    async fn lock(_tx: &mut Transaction<'_, Sqlite>, _locks: &[Lock]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `sqlite://relative/path.db`, `sqlite:///absolute/path.db` or `sqlite:path.db`; the file
/// and its folder are created if missing, the schema brought up to date.
pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // 512 KiB of page cache per connection instead of SQLite's 2 MiB: the file stays in
        // the system's cache anyway, and each connection's cache is memory held while it lives.
        .pragma("cache_size", "-512");
    if !(url.contains(":memory:") || url.contains("mode=memory")) {
        keep_private(options.get_filename())?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        // Connections opened for a burst close after 10 s unused, with their caches.
        .idle_timeout(Duration::from_secs(10))
        // An embedded database does not go away under a connection: no ping (a hop to the
        // connection's thread and back) before each checkout.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(SqlStore::new(pool))
}

/// The database holds password hashes and session digests: its folder (if we make it) is
/// 0700, the file 0600 — created so before SQLite opens it, since SQLite gives its `-wal` and
/// `-shm` files the database file's mode. Files left more open by an earlier version are
/// narrowed.
fn keep_private(database: &std::path::Path) -> Result<(), StoreError> {
    let failed = |path: &std::path::Path, e: std::io::Error| {
        StoreError::Setup(format!("cannot create {}: {e}", path.display()))
    };
    if let Some(folder) = database.parent() {
        crate::files::create_private_dir(folder).map_err(|e| failed(folder, e))?;
    }
    crate::files::ensure_private_file(database).map_err(|e| failed(database, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        if path.exists() {
            crate::files::ensure_private_file(&path).map_err(|e| failed(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DisplayName, Email, Phone, SessionId, UserId, UserUid, Username};
    use crate::mail::templates::EmailKind;
    use crate::store::{
        Attempt, AttemptOutcome, AttemptReservation, AttemptResult, CountedAs, NewEmail,
        NewSession, NewToken, NewUser, ProfileChange, RateKey, RefreshOutcome, Reservation, Role,
        Rotation, Store, TokenKind, User,
    };
    use std::sync::Arc;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        // A missing folder on the way is created too.
        let url = format!("sqlite://{}", dir.path().join("data/authflow.db").display());
        connect(&url).await.unwrap()
    }

    fn token() -> NewToken {
        NewToken {
            kind: TokenKind::EmailVerification,
            hash: crate::auth::tokens::digest(&crate::auth::tokens::random_token()),
            expires_at: crate::time::Clock::system().now() + chrono::Duration::hours(24),
        }
    }

    fn welcome() -> NewEmail {
        NewEmail {
            kind: EmailKind::Welcome,
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
                counted_as: CountedAs::Identifier("someone".into()),
                ip: "127.0.0.1".into(),
                limits: None,
                since: session.now,
                known_since: session.now,
                now: session.now,
            })
            .await
            .unwrap();
        let Reservation::Granted { attempt_id } = reservation else {
            panic!("without limits every attempt is granted");
        };
        let outcome = AttemptOutcome {
            attempt: Attempt::Reserved(attempt_id),
            result: AttemptResult::Succeeded,
            ip: "127.0.0.1".into(),
            now: session.now,
            account: None,
            method: "password".into(),
            audit: None,
        };
        s.start_session(session, &outcome).await.unwrap();
    }

    fn sid(id: &str) -> SessionId {
        SessionId::new(id)
    }

    fn new_user(username: &str, email: &str) -> NewUser {
        NewUser {
            uid: UserUid::new(uuid::Uuid::new_v4().to_string()),
            username: Username::parse(username).unwrap(),
            name: DisplayName::parse("Test User").unwrap(),
            email: Email::parse(email).unwrap(),
            phone: None,
            password_hash: "hash".into(),
            role: Role::User,
            now: crate::time::Clock::system().now(),
        }
    }

    fn new_session(user: &User, id: &str, now: Timestamp) -> NewSession {
        NewSession {
            id: SessionId::new(id),
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
            max_age: chrono::Duration::days(90),
            grace_since: None,
        }
    }

    #[tokio::test]
    async fn rate_limits_count_in_their_window_and_old_records_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let now = crate::time::Clock::system().now();
        let hour = chrono::Duration::hours(1);
        let two_hours_ago = now - hour * 2;
        // One call two hours ago, two now: with a limit of 2 per hour, the third is refused.
        for at in [two_hours_ago, now, now] {
            let refused = s
                .take_rate_limit(
                    "signup",
                    &[RateKey {
                        key: "ip:1",
                        limit: 2,
                    }],
                    at - hour,
                    at,
                )
                .await
                .unwrap();
            assert!(refused.is_none());
        }
        let refused = s
            .take_rate_limit(
                "signup",
                &[RateKey {
                    key: "ip:1",
                    limit: 2,
                }],
                now - hour,
                now,
            )
            .await
            .unwrap();
        assert!(refused.is_some());
        // A key that is never used again keeps its rows until the prune.
        s.take_rate_limit(
            "signup",
            &[RateKey {
                key: "ip:2",
                limit: 2,
            }],
            two_hours_ago - hour,
            two_hours_ago,
        )
        .await
        .unwrap();
        assert_eq!(s.prune_rate_limits(now - hour).await.unwrap(), 1);
        let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM rate_limit_hits")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(left, 2);
    }

    #[tokio::test]
    async fn migrations_run_again_on_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(&dir).await;
        first
            .create_user(
                &new_user("alice1", "alice@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        first.pool().close().await;
        let second = store(&dir).await;
        second.ping().await.unwrap();
        assert!(second.find_credentials("alice1").await.unwrap().is_some());
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
                &new_user("Alice1", "alice@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        assert_eq!(alice.role, Role::User);
        let e = s
            .create_user(
                &new_user("aLICE1", "other@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::UsernameTaken), "{e:?}");
        let e = s
            .create_user(
                &new_user("bobby1", "ALICE@example.COM"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::EmailTaken), "{e:?}");
        // Both found by the lower-cased identifier.
        let c = s.find_credentials("alice1").await.unwrap().unwrap();
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
                ..new_user("rooted", "root@example.com")
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
                &new_user("carol1", "carol@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        let changed = s
            .update_profile(
                u.db_id,
                &ProfileChange {
                    name: Some(DisplayName::parse("Carol C").unwrap()),
                    phone: Some(Phone::parse("+1234").unwrap()),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (changed.name.as_str(), changed.phone.as_deref()),
            ("Carol C", Some("+1234"))
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
            s.update_profile(UserId::new(u.db_id.get() + 100), &ProfileChange::default())
                .await,
            Err(StoreError::NotFound)
        ));

        start(
            &s,
            &new_session(&u, "s1", crate::time::Clock::system().now()),
        )
        .await;
        for who in ["carol1", "carol@example.com", "someone-else"] {
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
            .create_user(
                &new_user("dave01", "dave@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        let now = crate::time::Clock::system().now();
        let ns = new_session(&u, "s1", now);
        start(&s, &ns).await;

        let by_id = s.session_by_id(&sid("s1"), now).await.unwrap().unwrap();
        assert_eq!(by_id.session.id.as_str(), "s1");
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
        assert_eq!(by_cookie.session.id.as_str(), "s1");
        assert!(s.session_by_cookie("nope", now).await.unwrap().is_none());
        // Expired at its end.
        assert!(s
            .session_by_id(&sid("s1"), ns.expires_at)
            .await
            .unwrap()
            .is_none());

        let later = now + chrono::Duration::seconds(5);
        s.touch_session(&sid("s1"), later).await.unwrap();
        s.touch_session(&sid("s1"), now).await.unwrap(); // never moves back
        let touched = s.session_by_id(&sid("s1"), later).await.unwrap().unwrap();
        assert_eq!(touched.session.last_used_at, later);

        start(&s, &new_session(&u, "s2", later)).await;
        let ids: Vec<String> = s
            .list_sessions(u.db_id, later)
            .await
            .unwrap()
            .into_iter()
            .map(|x| x.id.to_string())
            .collect();
        assert_eq!(ids, vec!["s2", "s1"]);
        assert!(s.revoke_session(u.db_id, &sid("s1"), later).await.unwrap());
        assert!(!s.revoke_session(u.db_id, &sid("s1"), later).await.unwrap());
        assert!(s.session_by_id(&sid("s1"), later).await.unwrap().is_none());
        assert_eq!(
            s.revoke_all_sessions(u.db_id, false, later).await.unwrap(),
            1
        );
        assert!(s.list_sessions(u.db_id, later).await.unwrap().is_empty());

        // An inactive user's sessions do not count.
        start(&s, &new_session(&u, "s3", later)).await;
        sqlx::query("UPDATE users SET active = FALSE WHERE user_db_id = $1")
            .bind(u.db_id)
            .execute(s.pool())
            .await
            .unwrap();
        assert!(s.session_by_id(&sid("s3"), later).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rotation_then_replay_revokes_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let u = s
            .create_user(
                &new_user("erin01", "erin@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        let now = crate::time::Clock::system().now();
        start(&s, &new_session(&u, "s1", now)).await;

        let later = now + chrono::Duration::seconds(60);
        let r = rotation("refresh-s1", "r2", later);
        let RefreshOutcome::Rotated(su) = s.rotate_refresh_token(&r).await.unwrap() else {
            panic!("expected Rotated");
        };
        assert_eq!(su.session.id.as_str(), "s1");
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
        assert!(s.session_by_id(&sid("s1"), later).await.unwrap().is_none());
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
                &new_user("frank1", "frank@example.com"),
                &token(),
                &welcome(),
            )
            .await
            .unwrap();
        for round in 0..5 {
            let now = crate::time::Clock::system().now();
            let id = format!("s{round}");
            start(&s, &new_session(&u, &id, now)).await;
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let s = Arc::clone(&s);
                    let r = rotation(&format!("refresh-{id}"), &format!("{id}-new{i}"), now);
                    #[allow(clippy::disallowed_methods)] // racing rotations on purpose
                    tokio::spawn(async move { s.rotate_refresh_token(&r).await })
                })
                .collect();
            // One wins; the first replay after it kills the session; later ones find the
            // session over. Never an error.
            let (mut rotated, mut reused, mut refused) = (0, 0, 0);
            for t in tasks {
                match t.await.unwrap().unwrap() {
                    RefreshOutcome::Rotated(_) => rotated += 1,
                    RefreshOutcome::Reused => reused += 1,
                    RefreshOutcome::Invalid => refused += 1,
                }
            }
            assert_eq!((rotated, reused, refused), (1, 1, 6), "round {round}");
            assert!(s.session_by_id(&sid(&id), now).await.unwrap().is_none());
        }
    }
}
