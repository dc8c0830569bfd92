//! SPEC §14: the bounded hashing queue (503 `overloaded` at once, nothing recorded against
//! the account) and `GET /metrics` on its own listener, counted by the real binary.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    captured_logs, fresh_pg_database, parse, Backend, PgDatabase, TestApp, TestUser, PASSWORD,
};
use crate::responses::ErrorEnvelope;
use crate::smtp_sink::free_port;
use crate::tcp_proxy::{RoundTrip, TcpProxy};

/// With no wait allowed, a burst of sign-ins beyond the hashing slots is refused at once
/// with 503 `overloaded`, `Retry-After` and `Connection: close`; the refused ones leave no
/// sign-in record (so a storm cannot lock the account) and no error line in the log (a storm
/// would flood it), and the rest sign in.
async fn a_full_hashing_queue_answers_503_at_once(backend: Backend) {
    let logs = captured_logs();
    let app = TestApp::builder(backend)
        .env("HASH_QUEUE_MAX_WAIT_MS", "0")
        .spawn()
        .await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let attempts = (0..48).map(|_| app.try_sign_in(&user.username, &user.password));
    let answers = futures::future::join_all(attempts).await;
    let (mut signed_in, mut overloaded) = (0, 0);
    let mut refused_ids = Vec::new();
    for r in answers {
        match r.status().as_u16() {
            200 => signed_in += 1,
            503 => {
                refused_ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
                let retry_after: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry_after >= 1);
                // The client is told to come back later, and its connection is not kept.
                assert_eq!(r.headers()["connection"], "close");
                let body: ErrorEnvelope = parse(r, 503).await;
                assert_eq!(body.error.code, "overloaded");
                overloaded += 1;
            }
            other => panic!("a sign-in answered {other}"),
        }
    }
    assert!(
        overloaded > 0,
        "48 sign-ins at once on 2 slots with no wait: none refused"
    );
    assert!(signed_in > 0, "every sign-in refused");
    // Each refusal's request is in the log (its INFO line: the log is captured), and none at
    // ERROR: they are counted, and summed up in one warning every 10 s.
    let logs = logs.contents();
    for id in &refused_ids {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains(id.as_str()))
            .collect();
        assert!(!lines.is_empty(), "refused request {id} is not in the log");
        assert!(
            lines.iter().all(|line| !line.contains("ERROR")),
            "refused request {id} was logged as an error: {lines:?}"
        );
    }
    let recorded = app.db.count("SELECT count(*) FROM login_attempts").await;
    assert_eq!(
        recorded, signed_in,
        "refused sign-ins must leave no attempt behind"
    );
    // Once the burst is over the queue is empty again.
    let r = app.try_sign_in(&user.username, &user.password).await;
    assert_eq!(r.status(), 200);
}

crate::both_backends!(a_full_hashing_queue_answers_503_at_once);

/// The real binary, with metrics on a port of their own.
struct Server {
    child: Child,
    base: String,
    metrics: String,
}

impl Server {
    async fn start(dir: &std::path::Path, database_url: Option<&str>) -> Server {
        let (port, metrics_port) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_authflow"));
        command
            .current_dir(dir)
            .env_clear()
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", port.to_string())
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(url) = database_url {
            command.env("DATABASE_URL", url);
        }
        let mut child = command.spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client.get(format!("{base}/health")).send().await.is_ok() {
                return Server {
                    child,
                    base,
                    metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("authflow did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample line (`name{labels} value`) of the Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics_count_sign_ins_requests_and_the_queue(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(crate::helpers::fresh_pg_database().await),
    };
    let server = Server::start(dir.path(), database.as_ref().map(|d| d.url.as_str())).await;
    let client = reqwest::Client::new();
    let user = TestUser::new();
    let r = client
        .post(format!("{}/api/users/create-account", server.base))
        .json(&json!({"name": user.name, "username": user.username, "email": user.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (password, status) in [(PASSWORD, 200), ("not the password", 401)] {
        let r = client
            .post(format!("{}/api/auth/signin", server.base))
            .json(&json!({"username": user.username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    // Not on the service's own port.
    let r = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = client.get(&server.metrics).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    assert_eq!(value(r#"authflow_sign_ins_total{outcome="success"}"#), 1.0);
    assert_eq!(value(r#"authflow_sign_ins_total{outcome="failure"}"#), 1.0);
    assert_eq!(
        value(
            r#"authflow_http_requests_total{method="POST",route="/api/auth/signin",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"authflow_http_requests_total{method="POST",route="/api/auth/signin",status="401"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"authflow_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        1.0
    );
    assert!(
        value(
            r#"authflow_http_request_duration_seconds_count{method="POST",route="/api/users/create-account",status="201"}"#
        ) == 1.0
    );
    // One hash for the account, one verification per sign-in.
    assert_eq!(value("authflow_hash_queue_wait_seconds_count"), 3.0);
    assert_eq!(value("authflow_hash_queue_depth"), 0.0);
    // The welcome email is queued (no SMTP configured: the dev mailbox delivers it soon).
    assert!(value("authflow_outbox_pending") >= 0.0);
    assert_eq!(value("authflow_outbox_failed"), 0.0);
    assert!(value("authflow_outbox_oldest_pending_age_seconds") >= 0.0);
    assert!(value(r#"authflow_db_pool_connections{state="idle"}"#) >= 1.0);
    assert!(text.contains("# HELP authflow_sign_ins_total"));
}

crate::both_backends!(metrics_count_sign_ins_requests_and_the_queue);

/// Look-ups that share a statement refuse a session revoked on another instance from the
/// very next request: no answer may come from a statement that started before the request.
/// Two servers on one database; 16 clients hammer `/me` on the first with two sessions while
/// the second server signs one of them out.
async fn coalesced_look_ups_refuse_a_session_revoked_elsewhere_at_once(backend: Backend) {
    let first = TestApp::spawn(backend).await;
    let second = first.twin(backend).spawn().await;
    let user = TestUser::new();
    let doomed = first.sign_up_and_in(&user).await;
    let kept = first.sign_in(&user).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logged_out_at = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let first = std::sync::Arc::new(first);
    let clients = (0..16).map(|i| {
        let (first, stop) = (std::sync::Arc::clone(&first), std::sync::Arc::clone(&stop));
        let token = if i % 2 == 0 {
            doomed.token.clone()
        } else {
            kept.token.clone()
        };
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let status = first.try_me(&token).await.status().as_u16();
                seen.push((started, status));
            }
            (i % 2 == 0, seen)
        })
    });
    let clients: Vec<_> = clients.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.logout(&doomed).await;
    *logged_out_at.lock().unwrap() = Some(std::time::Instant::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let logged_out_at = logged_out_at.lock().unwrap().unwrap();
    let (mut before, mut after) = (0, 0);
    for client in clients {
        let (is_doomed, seen) = client.await.unwrap();
        for (started, status) in seen {
            if !is_doomed {
                assert_eq!(status, 200, "the other session must stay signed in");
            } else if started > logged_out_at {
                assert_eq!(status, 401, "a request after the logout was let in");
                after += 1;
            } else if status == 200 {
                before += 1;
            }
        }
    }
    assert!(before > 0 && after > 0, "before {before}, after {after}");
}

crate::both_backends!(coalesced_look_ups_refuse_a_session_revoked_elsewhere_at_once);

/// An app on a fresh PostgreSQL database reached through the test proxy, in plain text (no
/// TLS) so that the proxy can read the statements; the database lives as long as its guard.
async fn app_behind_a_reading_proxy(rate_limits: &str) -> (PgDatabase, TcpProxy, TestApp) {
    let database = fresh_pg_database().await;
    let (proxy, mut url) = TcpProxy::in_front_of(&database.url).await;
    url.query_pairs_mut().append_pair("sslmode", "disable");
    let app = TestApp::builder(Backend::Postgres)
        .database_url(url.as_str())
        .env("RATE_LIMITS", rate_limits)
        .spawn()
        .await;
    (database, proxy, app)
}

/// `GET /api/auth/me` is one round trip to PostgreSQL, read off the wire between the service
/// and the database: one statement checks the session and reads its user, and the
/// connection it runs on is not pinged first (sqlx's default: a second round trip) unless it
/// sat idle. sqlx's ping of a connection coming back to the pool runs after the answer, and
/// the outbox's poll every 2 s is no request's.
async fn me_is_one_round_trip_to_postgres() {
    let (_database, proxy, app) = app_behind_a_reading_proxy("on").await;
    let (_, tokens) = app.signed_in_user().await;
    // Requests one at a time go round the pool's idle connections: each prepares the
    // statement on its first look-up.
    for _ in 0..40 {
        app.me(&tokens).await;
    }
    app.settled().await;
    let warm_up = proxy.take_round_trips();
    assert!(
        warm_up
            .iter()
            .any(|(_, t)| matches!(t, RoundTrip::Prepare(_))),
        "the proxy reads the wire: {warm_up:?}"
    );

    const REQUESTS: usize = 20;
    for _ in 0..REQUESTS {
        let user = app.me(&tokens).await;
        assert_eq!(user.username, tokens.user.username);
    }
    app.settled().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let trips = proxy.take_round_trips();
    let mine = |sql: &str| !sql.contains("email_outbox");
    // Every look-up and nothing else: no statement-cache miss, no second statement.
    let statements: Vec<&RoundTrip> = trips
        .iter()
        .map(|(_, t)| t)
        .filter(|t| match t {
            RoundTrip::Statement(sql) | RoundTrip::Prepare(sql) => mine(sql),
            RoundTrip::Ping => false,
        })
        .collect();
    assert_eq!(statements.len(), REQUESTS, "{trips:#?}");
    assert!(
        statements
            .iter()
            .all(|t| matches!(t, RoundTrip::Statement(sql) if sql.contains("auth_sessions"))),
        "{statements:#?}"
    );
    // On one connection a use is [ping on checkout] statement, ping on release: a ping that
    // follows a ping is a checkout's. Back to back, a connection is idle (and pinged) only
    // before its first use here; a ping on every checkout would precede every look-up.
    let mut pinged_first = 0;
    let mut connections = std::collections::HashSet::new();
    for (i, (connection, trip)) in trips.iter().enumerate() {
        let RoundTrip::Statement(sql) = trip else {
            continue;
        };
        if !mine(sql) {
            continue;
        }
        connections.insert(*connection);
        let before: Vec<&RoundTrip> = trips[..i]
            .iter()
            .filter(|(c, _)| c == connection)
            .map(|(_, t)| t)
            .rev()
            .take(2)
            .collect();
        if matches!(
            before.as_slice(),
            [RoundTrip::Ping, RoundTrip::Ping] | [RoundTrip::Ping]
        ) {
            pinged_first += 1;
        }
    }
    assert!(
        pinged_first <= connections.len() && connections.len() < REQUESTS,
        "{pinged_first} of {REQUESTS} look-ups on {} connections were pinged first",
        connections.len()
    );
}

crate::postgres_only!(me_is_one_round_trip_to_postgres);

/// A sign-in on PostgreSQL opens its session in one statement: the session, its refresh
/// token, the attempt's outcome, the audit entry, the history row and the last sign-in go
/// to the database together, not as a transaction of eight round trips. Before it, one
/// statement reads the credentials with whether a second factor is on; with the failure
/// limits on, one transaction between them reserves the attempt, and with them off the
/// attempt is written only by the session's statement.
async fn sign_in_opens_its_session_in_one_statement_on_postgres() {
    for rate_limits in ["on", "off"] {
        let (_database, proxy, app) = app_behind_a_reading_proxy(rate_limits).await;
        let (user, _) = app.signed_in_user().await;
        app.settled().await;
        proxy.take_round_trips();

        let tokens = app.sign_in(&user).await;
        app.settled().await;
        let trips = proxy.take_round_trips();
        // Statements run (a connection's first use of one also prepares it, a round trip
        // apart).
        let statements: Vec<&str> = trips
            .iter()
            .filter_map(|(_, t)| match t {
                RoundTrip::Statement(sql) => Some(sql.as_str()),
                RoundTrip::Prepare(_) | RoundTrip::Ping => None,
            })
            .filter(|sql| !sql.contains("email_outbox"))
            .collect();
        let opening: Vec<usize> = (0..statements.len())
            .filter(|&i| statements[i].contains("INSERT INTO auth_sessions"))
            .collect();
        assert_eq!(opening.len(), 1, "{rate_limits}: {statements:#?}");
        let (request, opening) = (&statements[..=opening[0]], statements[opening[0]]);
        let attempt = match rate_limits {
            "on" => "UPDATE login_attempts",
            _ => "INSERT INTO login_attempts",
        };
        for part in [
            "INSERT INTO refresh_tokens",
            attempt,
            "INSERT INTO audit_log",
            "INSERT INTO user_location_logs",
            "UPDATE users SET last_login",
        ] {
            assert!(
                opening.contains(part),
                "{rate_limits}: {part} is not in {opening}"
            );
        }
        // First the credentials, read with the second-factor flag: no look-up of its own.
        assert!(
            request[0].contains("FROM users u") && request[0].contains("mfa_totp"),
            "{rate_limits}: {request:#?}"
        );
        assert!(
            !statements
                .iter()
                .any(|sql| sql.contains("FROM mfa_totp WHERE user_id")),
            "{rate_limits}: {statements:#?}"
        );
        // The security notice judges the row as written, without reading it back.
        assert!(
            !statements
                .iter()
                .any(|sql| sql.contains("WHERE log_id = $1")),
            "{rate_limits}: {statements:#?}"
        );
        // Only the attempt's reservation under the failure limits is a transaction; without
        // the limits the request makes two statements in all.
        let begins = statements
            .iter()
            .filter(|sql| sql.trim() == "BEGIN")
            .count();
        match rate_limits {
            "on" => assert_eq!(begins, 1, "{statements:#?}"),
            _ => assert_eq!((begins, request.len()), (0, 2), "{statements:#?}"),
        }
        // The session works, and shows in the history; the attempt is on record once.
        app.me(&tokens).await;
        assert_eq!(app.login_history(&tokens.token).await.entries.len(), 2);
        assert_eq!(
            app.db
                .count("SELECT count(*) FROM login_attempts WHERE success")
                .await,
            2,
            "{rate_limits}"
        );
    }
}

crate::postgres_only!(sign_in_opens_its_session_in_one_statement_on_postgres);

/// The security notice's look-back reads an account's latest sign-ins in the history index's
/// order and stops after them, however long the history and whatever the statistics say.
/// As a plain query on an analyzed table, the planner read the whole history (through the
/// legacy `user_id` index, or the whole table) and sorted it, on every sign-in: the status
/// filter hid the rows from its estimates. Without the function's settings this finds no
/// scan of the history index (measured: a sequential scan and a sort).
async fn the_notice_reads_only_the_latest_of_a_long_history() {
    use sqlx::{Connection, Row};

    let (database, proxy, app) = app_behind_a_reading_proxy("off").await;
    let (user, _) = app.signed_in_user().await;
    app.settled().await;
    // 400 earlier sign-ins, and the statistics a database in use has.
    app.db
        .execute(
            "INSERT INTO user_location_logs (user_id, ip_address, location, created_at, \
             user_agent, access_status, method) SELECT user_id, ip_address, location, \
             created_at - g * interval '1 hour', user_agent, access_status, method \
             FROM user_location_logs, generate_series(1, 400) g",
        )
        .await;
    app.db.execute("ANALYZE user_location_logs").await;

    // The service's look-back after a sign-in is the function's, once what the first
    // sign-in showed of the history is too old to be trusted (until then, a sign-in with the
    // same place and device reads no history: `a_known_place_and_device_read_no_history`).
    app.advance(Duration::from_secs(3601));
    proxy.take_round_trips();
    app.sign_in(&user).await;
    app.settled().await;
    assert_eq!(look_backs(&proxy), 1, "the look-back of one sign-in");

    // The function, called again and again on one connection as a pooled one does (past the
    // plan cache's first custom plans), with the newest row left out as the service does.
    // The scans counted are this transaction's own.
    let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let (account, newest): (i64, i64) = sqlx::query_as(
        "SELECT user_id::bigint, log_id::bigint FROM user_location_logs \
         ORDER BY created_at DESC, log_id DESC LIMIT 1",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let mut read = Vec::new();
    for _ in 0..10 {
        read = sqlx::query("SELECT * FROM authflow_earlier_sign_ins($1, $2, $3)")
            .bind(account)
            .bind(newest)
            .bind(10_i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<chrono::NaiveDateTime, _>(4))
            .collect();
    }
    let scans: (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_numscans('idx_user_id'::regclass), \
         pg_stat_get_xact_numscans('user_location_logs_user_recent_idx'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        scans,
        (0, 10),
        "scans of idx_user_id and of the history index"
    );
    // The rows are the ten before the newest, newest first.
    let expected: Vec<chrono::NaiveDateTime> = sqlx::query_scalar(
        "SELECT created_at FROM user_location_logs WHERE log_id <> $1 \
         ORDER BY created_at DESC, log_id DESC LIMIT 10",
    )
    .bind(newest)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(read, expected);
}

crate::postgres_only!(the_notice_reads_only_the_latest_of_a_long_history);

/// Calls of the notice's look-back at the history on the wire since the last look.
fn look_backs(proxy: &TcpProxy) -> usize {
    proxy
        .take_round_trips()
        .iter()
        .filter(|(_, t)| {
            matches!(t, RoundTrip::Statement(sql) if sql.contains("FROM authflow_earlier_sign_ins("))
        })
        .count()
}

/// A sign-in from a place and with a device that the account's history was seen to hold
/// is judged for a notice without reading the history again; a device it was not seen to
/// hold is looked for in the history, and known from then on.
async fn a_known_place_and_device_read_no_history() {
    let (_database, proxy, app) = app_behind_a_reading_proxy("off").await;
    let (user, _) = app.signed_in_user().await;
    app.settled().await;
    assert_eq!(look_backs(&proxy), 1, "the first sign-in reads the history");

    app.sign_in(&user).await;
    app.settled().await;
    assert_eq!(look_backs(&proxy), 0, "the same place and device again");

    let with_firefox = || {
        app.client
            .post(app.url("/api/auth/signin"))
            .header(
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
            )
            .json(&json!({"username": user.username, "password": user.password}))
            .send()
    };
    let notices = || app.db.count("SELECT count(*) FROM sign_in_notices");
    assert_eq!(notices().await, 0);
    assert_eq!(with_firefox().await.unwrap().status(), 200);
    app.settled().await;
    assert_eq!(look_backs(&proxy), 1, "a device not seen in the history");
    assert_eq!(notices().await, 1, "the new device is noticed");
    assert_eq!(with_firefox().await.unwrap().status(), 200);
    app.settled().await;
    assert_eq!(look_backs(&proxy), 0, "that device again");
    assert_eq!(notices().await, 1, "and not noticed again");
}

crate::postgres_only!(a_known_place_and_device_read_no_history);
