//! The harness: a real server on port 0 over a fresh PostgreSQL database or SQLite file.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use authflow::app::App;
use authflow::config::Config;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{PgPool, Row, SqlitePool};
use tempfile::TempDir;

pub const PASSWORD: &str = "correct-horse-battery-staple-42";
pub const SECRET: &str = "test-signing-key-test-signing-key-0123456789";
pub const ORIGIN: &str = "http://localhost:3000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body once per backend: `both_backends!(name, …)` expects `async fn name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )* };
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A PostgreSQL database made for one test, dropped when this is dropped (also when the
/// test fails). Named `authflow_test_<run>_<uuid>`: a run drops only its own databases.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(&admin_url())
                    .await
                    .ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await
                    .ok()?;
                admin.close().await;
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test database {}",
                self.name
            );
        }
    }
}

/// A fresh, empty PostgreSQL database, or `None` (with one visible line) when no server
/// answers outside CI. Under `CI` an unreachable server fails the test.
pub async fn fresh_pg_database() -> Option<PgDatabase> {
    let admin_url = admin_url();
    // Once PostgreSQL is known to be absent, later tests skip at once instead of each
    // waiting for the connection timeout.
    static ABSENT: OnceLock<String> = OnceLock::new();
    if let Some(why) = ABSENT.get() {
        if std::env::var_os("CI").is_none() {
            let _ = writeln!(std::io::stderr(), "SKIPPED (PostgreSQL): {why}");
            return None;
        }
    }
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&admin_url)
        .await;
    let admin = match admin {
        Ok(pool) => pool,
        Err(e) if std::env::var_os("CI").is_none() => {
            let why = format!(
                "no database answers at TEST_DATABASE_URL ({e}); set CI=1 to make this a failure"
            );
            // Not through the test's captured output: this must be seen.
            let _ = writeln!(std::io::stderr(), "SKIPPED (PostgreSQL): {why}");
            let _ = ABSENT.set(why);
            return None;
        }
        Err(e) => panic!("CI is set and PostgreSQL does not answer at {admin_url}: {e}"),
    };
    let name = format!("{}{}", run_prefix(), uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    Some(PgDatabase {
        url: format!("{base}/{name}"),
        name,
    })
}

/// The prefix of every database this run makes (and the only ones it ever drops).
pub fn run_prefix() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| {
        format!(
            "authflow_test_{}_",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    })
}

/// A direct connection to the test's database, to look at what the service stored.
pub enum TestDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl TestDb {
    /// Every value of every table as text, to search for secrets that must not be there.
    pub async fn dump(&self) -> String {
        let mut out = String::new();
        match self {
            TestDb::Postgres(pool) => {
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
                )
                .fetch_all(pool)
                .await
                .unwrap();
                for (table,) in tables {
                    let rows: Vec<(String,)> =
                        sqlx::query_as(&format!("SELECT t::text FROM \"{table}\" t"))
                            .fetch_all(pool)
                            .await
                            .unwrap();
                    for (row,) in rows {
                        out.push_str(&row);
                        out.push('\n');
                    }
                }
            }
            TestDb::Sqlite(pool) => {
                let tables: Vec<(String,)> =
                    sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'")
                        .fetch_all(pool)
                        .await
                        .unwrap();
                for (table,) in tables {
                    let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
                        .fetch_all(pool)
                        .await
                        .unwrap();
                    for row in rows {
                        for i in 0..row.columns().len() {
                            let v: Option<String> = row.try_get_unchecked(i).unwrap_or(None);
                            out.push_str(&v.unwrap_or_default());
                            out.push('|');
                        }
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// Runs one statement the test wrote itself (no user input in it).
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDb::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            TestDb::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The single number a `SELECT count(*) …` of the test answers.
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            TestDb::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            TestDb::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn password_hash(&self, username: &str) -> String {
        let sql = "SELECT password FROM users WHERE username = $1";
        match self {
            TestDb::Postgres(p) => sqlx::query_scalar(sql)
                .bind(username)
                .fetch_one(p)
                .await
                .unwrap(),
            TestDb::Sqlite(p) => sqlx::query_scalar(sql)
                .bind(username)
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
    /// The PostgreSQL database this app made, dropped with it (after the server's own fields).
    database: Option<PgDatabase>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the real server with these variables on top of the test defaults.
    pub async fn spawn_with(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, database) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("authflow.db").display()),
                None,
            ),
            Backend::Postgres => {
                let database = fresh_pg_database().await?;
                (database.url.clone(), Some(database))
            }
        };
        let mut app = Self::spawn_on(backend, &database_url, dir, extra)
            .await
            .unwrap();
        app.database = database;
        Some(app)
    }

    pub async fn spawn_on(
        backend: Backend,
        database_url: &str,
        dir: TempDir,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<TestApp> {
        let mut vars: HashMap<String, String> = [
            ("APP_HOST", "127.0.0.1"),
            ("APP_PORT", "0"),
            ("APP_URL", "http://127.0.0.1"),
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", database_url),
            ("DATA_DIR", &dir.path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = Config::from_vars(&vars)?;
        let app = App::build(config).await?;
        let port = app.port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let db = match backend {
            Backend::Sqlite => TestDb::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(database_url)
                    .await?,
            ),
            Backend::Postgres => TestDb::Postgres(
                PgPoolOptions::new()
                    .max_connections(2)
                    .connect(database_url)
                    .await?,
            ),
        };
        Ok(TestApp {
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .user_agent("authflow-tests")
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            db,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
            database: None,
        })
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self._dir
    }

    /// The database this server runs on, for a second server on the same one.
    pub fn database_url(&self) -> String {
        match &self.db {
            TestDb::Postgres(p) => {
                let name = p
                    .connect_options()
                    .get_database()
                    .unwrap_or_default()
                    .to_owned();
                let admin = admin_url();
                format!(
                    "{}/{name}",
                    admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b)
                )
            }
            TestDb::Sqlite(p) => {
                format!("sqlite://{}", p.connect_options().get_filename().display())
            }
        }
    }

    /// The `DATA_DIR` of this server (signing key, development mailbox).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.request(Method::POST, path, None, Some(body)).await
    }

    pub async fn get_with(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    /// The access token (or key) is refused: its session is over.
    pub async fn assert_signed_out(&self, token: &str) {
        assert_error(
            self.get_with("/api/auth/me", token).await,
            401,
            "unauthorized",
        )
        .await;
    }

    /// The access token (or key) still authenticates.
    pub async fn assert_signed_in(&self, token: &str) {
        let r = self.get_with("/api/auth/me", token).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }

    pub async fn create_account(&self, username: &str, email: &str) -> Response {
        self.post(
            "/api/users/create-account",
            json!({"name": "Test User", "username": username, "email": email, "password": PASSWORD}),
        )
        .await
    }

    /// Creates the account and signs in: the sign-in answer.
    pub async fn signed_in_user(&self, username: &str) -> Value {
        let email = format!("{username}@example.com");
        let created = self.create_account(username, &email).await;
        assert_eq!(
            created.status(),
            StatusCode::CREATED,
            "{}",
            created.text().await.unwrap()
        );
        self.sign_in(username, PASSWORD).await
    }

    pub async fn sign_in(&self, username: &str, password: &str) -> Value {
        let r = self
            .post(
                "/api/auth/signin",
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "sign-in of {username}");
        r.json().await.unwrap()
    }
}

/// Asserts the envelope of SPEC §4 and returns its `error` object.
pub async fn assert_error(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "expected {status} {code}"
    );
    let method_path = response.url().path().to_owned();
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["status"], status);
    assert_eq!(error["path"], method_path);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(error["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert!(error["method"].is_string());
    assert!(error["details"].is_array());
    error.clone()
}

/// Everything the service logs in this test process (from the first call on), to look for
/// secrets that must never be written.
#[derive(Clone, Default)]
pub struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn captured_logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        // The most verbose level the service would ever run at.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(buffer.clone())
            .with_ansi(false)
            .try_init();
        buffer
    })
}
