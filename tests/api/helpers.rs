//! The harness: a real server on port 0 over a fresh PostgreSQL database or SQLite file,
//! the test-user fixture, email delivery on demand, and the skip for an absent PostgreSQL.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use authflow::app::App;
use authflow::config::Config;
use authflow::mail::outbox::{Outbox, Outcome};
use authflow::mail::transport::Transport;
use authflow::tasks::Background;
use authflow::time::Clock;
use reqwest::{Method, Response};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{PgPool, Row, SqlitePool};
use tempfile::TempDir;

use crate::responses::{ApiError, ErrorEnvelope};
use crate::smtp_sink::{ReceivedMail, SmtpSink};

pub const PASSWORD: &str = "correct-horse-battery-staple-42";
pub const SECRET: &str = "test-signing-key-test-signing-key-0123456789";
pub const ORIGIN: &str = "http://localhost:3000";
/// How long a test waits for something that happens in the background (an email, a lookup).
pub const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body once per backend: `both_backends!(name, …)` expects `async fn name(Backend)`.
/// The PostgreSQL run is skipped here, once, when no PostgreSQL answers (a failure under `CI`):
/// a body always gets a server to talk to.
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
                if $crate::helpers::postgres_is_absent().await {
                    return;
                }
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )* };
}

/// A test that only means something on PostgreSQL: `postgres_only!(name, …)` expects
/// `async fn name()`, skipped like the PostgreSQL half of `both_backends!`.
#[macro_export]
macro_rules! postgres_only {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_is_absent().await {
                    return;
                }
                super::$name().await
            }
        }
    )* };
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether the tests run in CI (`CI` set): there an absent service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Whether the test should be skipped because no PostgreSQL answers: then it says so on
/// stderr (`SKIPPED (PostgreSQL): …`, not captured) and answers `true`. Under `CI` an
/// absent PostgreSQL fails the test instead.
pub async fn postgres_is_absent() -> bool {
    // Once PostgreSQL is known to be absent, later tests skip at once instead of each
    // waiting for the connection timeout.
    static ABSENT: OnceLock<String> = OnceLock::new();
    let why = match ABSENT.get() {
        Some(why) => why.clone(),
        None => {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(3))
                .connect(&admin_url())
                .await;
            match admin {
                Ok(pool) => {
                    pool.close().await;
                    return false;
                }
                Err(e) => {
                    let why = format!(
                        "no database answers at TEST_DATABASE_URL ({e}); set CI=1 to make this a failure"
                    );
                    let _ = ABSENT.set(why.clone());
                    why
                }
            }
        }
    };
    assert!(
        !in_ci(),
        "CI is set and PostgreSQL does not answer at {}: {why}",
        admin_url()
    );
    // Not through the test's captured output: this must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED (PostgreSQL): {why}");
    true
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

/// A fresh, empty PostgreSQL database. Tests reach here through `both_backends!` or
/// `postgres_only!`, which have already skipped when PostgreSQL is absent.
pub async fn fresh_pg_database() -> PgDatabase {
    let admin_url = admin_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL does not answer at {admin_url}: {e}"));
    let name = format!("{}{}", run_prefix(), uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    PgDatabase {
        url: format!("{base}/{name}"),
        name,
    }
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

/// Polls `check` until it answers `Some`, for at most `timeout`; panics saying `what` never
/// happened. For what the service does in the background: waits for the thing, not a guess.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An account the test owns: a unique username and email, and the known password.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub username: String,
    pub email: String,
    pub password: String,
    pub name: String,
}

impl TestUser {
    /// A user no other test (nor any earlier one in this database) has.
    pub fn new() -> Self {
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..10];
        Self::named(&format!("user.{unique}"))
    }

    /// A user with this username, `<username>@example.com` and the known password, where
    /// the name itself is part of the story (case rules, the log, the database dump).
    pub fn named(username: &str) -> Self {
        Self {
            username: username.to_owned(),
            email: format!("{username}@example.com"),
            password: PASSWORD.to_owned(),
            name: "Test User".to_owned(),
        }
    }

    /// The same user with another address.
    pub fn with_email(mut self, email: &str) -> Self {
        email.clone_into(&mut self.email);
        self
    }
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

    /// The sign-in attempts on record: those that succeeded, and the others.
    pub async fn attempts(&self) -> (i64, i64) {
        (
            self.count("SELECT count(*) FROM login_attempts WHERE success")
                .await,
            self.count("SELECT count(*) FROM login_attempts WHERE NOT success")
                .await,
        )
    }

    /// Moves every `expires_at` of `table` (`tokens`, `api_keys`) a minute into the past.
    pub async fn expire_all(&self, table: &str) {
        let past = chrono::Utc::now() - chrono::Duration::minutes(1);
        let sql = format!("UPDATE {table} SET expires_at = $1");
        match self {
            // The old service's `tokens` table has `timestamp` columns, ours `timestamptz`.
            TestDb::Postgres(p) if table == "tokens" => sqlx::query(&sql)
                .bind(past.naive_utc())
                .execute(p)
                .await
                .map(|_| ()),
            TestDb::Postgres(p) => sqlx::query(&sql).bind(past).execute(p).await.map(|_| ()),
            TestDb::Sqlite(p) => sqlx::query(&sql).bind(past).execute(p).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
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

/// How a test's server is started: `TestApp::builder(backend).env("X", "Y").spawn()`.
pub struct TestAppBuilder {
    backend: Backend,
    vars: Vec<(String, String)>,
    smtp_sink: bool,
    database_url: Option<String>,
    dir: Option<TempDir>,
}

impl TestAppBuilder {
    /// A variable on top of the test defaults.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Emails go over SMTP to a sink the app owns (`app.emails()`), not to the mailbox folder.
    pub fn smtp_sink(mut self) -> Self {
        self.smtp_sink = true;
        self
    }

    /// On an existing database (a second server, an adopted database) instead of a fresh one.
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// With this temporary folder as `DATA_DIR` (and for the SQLite file of a fresh database).
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    pub async fn spawn(self) -> TestApp {
        self.try_spawn()
            .await
            .unwrap_or_else(|e| panic!("the server did not start: {e:#}"))
    }

    /// Starts the real server; the error when it refuses to.
    pub async fn try_spawn(self) -> anyhow::Result<TestApp> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::tempdir()?,
        };
        let (database_url, database) = match (self.database_url, self.backend) {
            (Some(url), _) => (url, None),
            (None, Backend::Sqlite) => (
                format!("sqlite://{}", dir.path().join("authflow.db").display()),
                None,
            ),
            (None, Backend::Postgres) => {
                let database = fresh_pg_database().await;
                (database.url.clone(), Some(database))
            }
        };
        let sink = if self.smtp_sink {
            Some(SmtpSink::start().await)
        } else {
            None
        };
        let mut vars: HashMap<String, String> = [
            ("APP_HOST", "127.0.0.1"),
            ("APP_PORT", "0"),
            ("APP_URL", "http://127.0.0.1"),
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", &database_url),
            ("DATA_DIR", &dir.path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(sink) = &sink {
            vars.insert("SMTP_URL".to_owned(), sink.url());
        }
        vars.extend(self.vars);
        let config = Config::from_vars(&vars)?;
        let app = App::build(config.clone()).await?;
        let port = app.port();
        let (clock, background) = (app.clock(), app.background());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let db = match self.backend {
            Backend::Sqlite => TestDb::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&database_url)
                    .await?,
            ),
            Backend::Postgres => TestDb::Postgres(
                PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&database_url)
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
            config,
            outbox: tokio::sync::OnceCell::new(),
            sink,
            shutdown: Some(tx),
            server: Some(server),
            dir,
            clock,
            background,
            _database: database,
        })
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    /// The configuration the server runs with (for the test's own outbox worker).
    config: Config,
    /// A second outbox worker on the server's database, made on first use.
    outbox: tokio::sync::OnceCell<Outbox>,
    sink: Option<SmtpSink>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: TempDir,
    /// The server's clock: `app.advance(…)` moves it instead of sleeping.
    clock: Clock,
    /// The server's background work: `app.settled()` waits for it.
    background: Background,
    /// The PostgreSQL database this app made, dropped with it (after the server's own fields).
    _database: Option<PgDatabase>,
}

impl TestApp {
    /// The server with the test defaults.
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::builder(backend).spawn().await
    }

    /// The server with settings of the test's own.
    pub fn builder(backend: Backend) -> TestAppBuilder {
        TestAppBuilder {
            backend,
            vars: Vec::new(),
            smtp_sink: false,
            database_url: None,
            dir: None,
        }
    }

    /// A second server on this one's database (and mail relay), as another process would be.
    pub fn twin(&self, backend: Backend) -> TestAppBuilder {
        let builder = Self::builder(backend).database_url(&self.database_url());
        match &self.sink {
            Some(sink) => builder.env("SMTP_URL", &sink.url()),
            None => builder,
        }
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.dir
    }

    /// The database this server runs on, for a second server on the same one.
    pub fn database_url(&self) -> String {
        self.config.database_url.expose().to_owned()
    }

    /// The `DATA_DIR` of this server (signing key, development mailbox).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Moves the server's clock forward: expiries, windows and lifetimes pass without a sleep.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The server's time, as Unix seconds (what its TOTP codes are judged at).
    pub fn server_now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// Waits until the server's background work (rehashes, location lookups, session and
    /// key touches, emails queued after an answer) has finished.
    pub async fn settled(&self) {
        self.background.settled().await;
    }

    /// Delivers every email that is due now, and waits for those another worker (the
    /// server's own) is sending: afterwards nothing that was queued is still on its way.
    /// Emails queued after the answer (forgot-password, resend-verification) are queued by
    /// tracked background work, which this waits for first.
    pub async fn deliver_all_emails(&self) {
        self.settled().await;
        let outbox = self
            .outbox
            .get_or_init(|| async {
                let store = authflow::store::connect(&self.config).await.unwrap();
                let transport =
                    Transport::from_settings(&self.config.mail, self.config.is_production())
                        .unwrap();
                Outbox::new(
                    store,
                    transport,
                    self.config.mail.from.clone(),
                    self.config.mail.first_retry,
                    std::sync::Arc::new(tokio::sync::Notify::new()),
                    self.clock.clone(),
                )
            })
            .await;
        // On PostgreSQL a claim skips a row another worker is claiming at that moment, so
        // "none to take" can come while a new email is still 'pending': it is done only when
        // no email is being sent and none has yet to be tried.
        eventually("the emails being sent to be sent", WAIT, || async {
            while outbox.try_send_next().await.unwrap() != Outcome::Empty {}
            let unsent = self
                .db
                .count(
                    "SELECT count(*) FROM email_outbox \
                     WHERE status = 'sending' OR (status = 'pending' AND attempts = 0)",
                )
                .await;
            (unsent == 0).then_some(())
        })
        .await;
    }

    fn sink(&self) -> &SmtpSink {
        self.sink
            .as_ref()
            .expect("this app has no SMTP sink: start it with .smtp_sink()")
    }

    /// Every email the SMTP sink received so far, oldest first.
    pub fn emails(&self) -> Vec<ReceivedMail> {
        self.sink().messages()
    }

    /// Waits until `n` emails have arrived (at most `WAIT`) and returns them all.
    pub async fn wait_for_emails(&self, n: usize) -> Vec<ReceivedMail> {
        self.sink().wait_for(n, WAIT).await
    }

    /// Waits for email number `n` (from 1) and returns it.
    pub async fn email(&self, n: usize) -> ReceivedMail {
        self.wait_for_emails(n).await.swap_remove(n - 1)
    }

    /// Any request, for what the route helpers do not cover (odd bodies, odd headers).
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
        assert_error(self.try_me(token).await, 401, "unauthorized").await;
    }

    /// The access token (or key) still authenticates.
    pub async fn assert_signed_in(&self, token: &str) {
        let r = self.try_me(token).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
}

/// The answer's body as `T`, after checking its status; the body in the message if not.
pub async fn parse<T: serde::de::DeserializeOwned>(response: Response, status: u16) -> T {
    let url = response.url().path().to_owned();
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e} in {text}"))
}

/// Asserts the envelope of SPEC §4 and returns its `error` object.
pub async fn assert_error(response: Response, status: u16, code: &str) -> ApiError {
    assert_eq!(
        response.status().as_u16(),
        status,
        "expected {status} {code}"
    );
    let method_path = response.url().path().to_owned();
    let text = response.text().await.unwrap();
    let error = serde_json::from_str::<ErrorEnvelope>(&text)
        .unwrap_or_else(|e| panic!("not the error envelope ({e}): {text}"))
        .error;
    assert_eq!(error.code, code, "{text}");
    assert_eq!(error.status, status);
    assert_eq!(error.path, method_path);
    assert!(!error.message.is_empty());
    assert!(error.timestamp.ends_with('Z'));
    assert!(!error.request_id.is_empty());
    error
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
