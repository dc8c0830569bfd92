//! SPEC §9: what an attacker with no account must not be able to do, and what recovery
//! must undo — lockouts per (account, address), keys, session lifetimes, refresh retries,
//! bounded tables, clear 401s, a database that goes away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, fresh_pg_database, Backend, TestApp, TestDb, PASSWORD};
use crate::smtp_sink::{ReceivedMail, SmtpSink};
use crate::tcp_proxy::TcpProxy;

both_backends!(
    hostile_sign_ups_leave_health_fast_and_count_against_the_limit,
    a_guesser_locks_only_their_own_address,
    a_reset_clears_lockouts_and_kills_every_key,
    keys_need_the_password_and_tell_the_owner,
    logout_all_can_take_the_keys_too,
    an_administrator_unlocks_an_account,
    a_session_ends_at_its_absolute_age_whatever_the_refreshes,
    a_retried_refresh_is_not_theft_but_a_late_replay_is,
    expired_and_bad_tokens_say_so_with_a_challenge,
    an_invalid_cookie_is_401_before_the_origin_check,
    pruning_removes_old_rows_and_keeps_recent_ones,
);

/// A client whose connections come from `ip` (any 127.0.0.0/8 address on loopback).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .user_agent("authflow-tests")
        .build()
        .unwrap()
}

async fn sign_in_with(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(app.url("/api/auth/signin"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn mail_with_subject(sink: &SmtpSink, n: usize, subject: &str) -> ReceivedMail {
    sink.wait_for(n, Duration::from_secs(30))
        .await
        .into_iter()
        .find(|m| m.subject().contains(subject))
        .unwrap_or_else(|| panic!("no mail about {subject:?}"))
}

/// Asks for a reset link by email and sets `new_password` with it.
async fn reset_by_email(app: &TestApp, sink: &SmtpSink, email: &str, mails_before: usize) {
    let r = app
        .post("/api/password/forgot-password", json!({"email": email}))
        .await;
    assert_eq!(r.status(), 200);
    let mail = mail_with_subject(sink, mails_before + 1, "Reset").await;
    let token = mail.token().expect("the reset mail carries a token");
    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": token, "password": "a brand new secret 2026"}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn create_key(app: &TestApp, token: &str) -> String {
    let r = app
        .request(
            Method::POST,
            "/api/keys",
            Some(token),
            Some(json!({"name": "script", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn hostile_sign_ups_leave_health_fast_and_count_against_the_limit(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("RATE_LIMIT_SIGNUPS_PER_IP", "100000")]).await
    else {
        return;
    };
    // What zxcvbn finds most expensive: long, and every character a look-alike of a letter.
    let password: String = "4@8({[<3&69!|170$5+%2".chars().cycle().take(128).collect();
    let hostile = json!({"name": "Mallory", "username": "mallory", "email": "not an email",
        "password": password});
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let (client, url, body, stop) = (
            app.client.clone(),
            app.url("/api/users/create-account"),
            hostile.clone(),
            std::sync::Arc::clone(&stop),
        );
        attackers.push(tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 400);
                answered += 1;
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for _ in 0..150 {
        let started = Instant::now();
        let r = app.client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hostile_answered = 0;
    for attacker in attackers {
        hostile_answered += attacker.await.unwrap();
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!("/health during 4 hostile sign-up loops ({hostile_answered} answered): p50 {p50:?}, p99 {p99:?}");
    assert!(hostile_answered >= 4, "the hostile sign-ups were answered");
    assert!(p99 < Duration::from_millis(50), "/health p99 {p99:?}");

    // A 400 costs the caller a try like any other answer.
    let Some(limited) = TestApp::spawn_with(backend, &[("RATE_LIMIT_SIGNUPS_PER_IP", "2")]).await
    else {
        return;
    };
    for _ in 0..2 {
        let r = limited
            .post("/api/users/create-account", hostile.clone())
            .await;
        assert_error(r, 400, "validation_failed").await;
    }
    let r = limited
        .post("/api/users/create-account", hostile.clone())
        .await;
    assert_error(r, 429, "too_many_requests").await;
}

async fn a_guesser_locks_only_their_own_address(backend: Backend) {
    let Some(app) = TestApp::spawn_with(
        backend,
        &[
            ("LOGIN_MAX_FAILURES", "3"),
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "6"),
        ],
    )
    .await
    else {
        return;
    };
    let home = client_from([127, 0, 0, 1]);
    let attacker = client_from([127, 0, 0, 2]);
    app.signed_in_user("victim.user").await; // from 127.0.0.1: a known address

    for _ in 0..3 {
        let r = sign_in_with(&app, &attacker, "victim.user", "wrong password").await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    // The guesser's address is blocked for this account, even with the right password…
    let r = sign_in_with(&app, &attacker, "victim.user", PASSWORD).await;
    assert!(r.headers().contains_key("retry-after"));
    let error = assert_error(r, 429, "too_many_requests").await;
    assert!(
        error["message"].as_str().unwrap().contains("try again in"),
        "{error}"
    );
    // …but the owner at home signs in.
    assert_eq!(
        sign_in_with(&app, &home, "victim.user", PASSWORD)
            .await
            .status(),
        200
    );

    // Refused attempts write nothing: a flood cannot grow the tables or the history.
    let before = sign_in_rows(&app.db).await;
    for _ in 0..15 {
        let r = sign_in_with(&app, &attacker, "victim.user", "wrong password").await;
        assert_eq!(r.status(), 429);
    }
    assert_eq!(sign_in_rows(&app.db).await, before, "429s wrote rows");

    // Across addresses the account is limited too (6 counted failures in the window)…
    let second = client_from([127, 0, 0, 3]);
    for _ in 0..3 {
        let r = sign_in_with(&app, &second, "victim.user", "wrong password").await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    let third = client_from([127, 0, 0, 4]);
    let r = sign_in_with(&app, &third, "victim.user", PASSWORD).await;
    assert_error(r, 429, "too_many_requests").await;
    // …except for an address that signed in to it recently.
    assert_eq!(
        sign_in_with(&app, &home, "victim.user", PASSWORD)
            .await
            .status(),
        200
    );
}

/// Rows that sign-in attempts write.
async fn sign_in_rows(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM login_attempts").await
        + db.count("SELECT count(*) FROM user_location_logs").await
}

async fn a_reset_clears_lockouts_and_kills_every_key(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(app) = TestApp::spawn_with(
        backend,
        &[("SMTP_URL", &sink.url()), ("LOGIN_MAX_FAILURES", "2")],
    )
    .await
    else {
        return;
    };
    let session = app.signed_in_user("reset.victim").await;
    let token = session["token"].as_str().unwrap();
    let key = create_key(&app, token).await;
    app.assert_signed_in(&key).await;
    let attacker = client_from([127, 0, 0, 2]);
    for _ in 0..2 {
        sign_in_with(&app, &attacker, "reset.victim", "wrong password").await;
    }
    assert_eq!(
        sign_in_with(&app, &attacker, "reset.victim", PASSWORD)
            .await
            .status(),
        429
    );

    // Welcome and new-key notices came before the reset mail.
    reset_by_email(&app, &sink, "reset.victim@example.com", 2).await;

    app.assert_signed_out(token).await;
    app.assert_signed_out(&key).await;
    assert_eq!(app.db.count("SELECT count(*) FROM api_keys").await, 0);
    // The lockout is gone: the address may try again (and the new password works).
    assert_eq!(
        sign_in_with(&app, &attacker, "reset.victim", "a brand new secret 2026")
            .await
            .status(),
        200
    );
}

async fn keys_need_the_password_and_tell_the_owner(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(app) = TestApp::spawn_with(backend, &[("SMTP_URL", &sink.url())]).await else {
        return;
    };
    let session = app.signed_in_user("key.owner").await;
    let token = session["token"].as_str().unwrap();
    let r = app
        .request(
            Method::POST,
            "/api/keys",
            Some(token),
            Some(json!({"name": "stolen"})),
        )
        .await;
    let error = assert_error(r, 400, "validation_failed").await;
    assert_eq!(error["details"][0]["field"], "password");
    let r = app
        .request(
            Method::POST,
            "/api/keys",
            Some(token),
            Some(json!({"name": "stolen", "password": "not the password"})),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
    assert_eq!(app.db.count("SELECT count(*) FROM api_keys").await, 0);

    create_key(&app, token).await;
    let notice = mail_with_subject(&sink, 2, "API key").await;
    assert_eq!(notice.to, vec!["key.owner@example.com".to_owned()]);
    assert!(notice.text().contains("\"script\""), "{}", notice.text());
    assert!(
        !notice.raw.contains("afk_"),
        "the key itself is never mailed"
    );
}

async fn logout_all_can_take_the_keys_too(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let session = app.signed_in_user("everywhere").await;
    let key = create_key(&app, session["token"].as_str().unwrap()).await;
    // Without a body, keys stay.
    let r = app
        .request(
            Method::POST,
            "/api/auth/logout-all",
            session["token"].as_str(),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_in(&key).await;

    let session = app.sign_in("everywhere", PASSWORD).await;
    let r = app
        .request(
            Method::POST,
            "/api/auth/logout-all",
            session["token"].as_str(),
            Some(json!({"api_keys": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(session["token"].as_str().unwrap())
        .await;
    app.assert_signed_out(&key).await;
}

async fn an_administrator_unlocks_an_account(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("LOGIN_MAX_FAILURES", "2")]).await else {
        return;
    };
    app.signed_in_user("the.admin").await;
    app.db
        .execute(
            "UPDATE users SET role_id = (SELECT role_id FROM roles WHERE name = 'admin') \
             WHERE username = 'the.admin'",
        )
        .await;
    let admin = app.sign_in("the.admin", PASSWORD).await;
    let user = app.signed_in_user("locked.out").await;
    let attacker = client_from([127, 0, 0, 2]);
    for _ in 0..2 {
        sign_in_with(&app, &attacker, "locked.out", "wrong password").await;
    }
    assert_eq!(
        sign_in_with(&app, &attacker, "locked.out", PASSWORD)
            .await
            .status(),
        429
    );
    let path = format!(
        "/api/admin/users/{}/unlock",
        user["userId"].as_str().unwrap()
    );
    // Only an administrator may.
    let r = app
        .request(Method::POST, &path, user["token"].as_str(), None)
        .await;
    assert_error(r, 403, "forbidden").await;
    let r = app
        .request(Method::POST, &path, admin["token"].as_str(), None)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        sign_in_with(&app, &attacker, "locked.out", PASSWORD)
            .await
            .status(),
        200
    );
}

async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.post("/api/auth/refresh", json!({"refresh_token": refresh_token}))
        .await
}

async fn a_session_ends_at_its_absolute_age_whatever_the_refreshes(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("SESSION_MAX_AGE_SECS", "3")]).await else {
        return;
    };
    let mut tokens = app.signed_in_user("short.lived").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = refresh(&app, tokens["refresh_token"].as_str().unwrap()).await;
        assert_eq!(r.status(), 200);
        tokens = r.json().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = refresh(&app, tokens["refresh_token"].as_str().unwrap()).await;
    assert_error(r, 401, "unauthorized").await;
    app.assert_signed_out(tokens["token"].as_str().unwrap())
        .await;
}

async fn a_retried_refresh_is_not_theft_but_a_late_replay_is(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("REFRESH_REUSE_GRACE_SECS", "1")]).await else {
        return;
    };
    let first = app.signed_in_user("two.tabs").await;
    let original = first["refresh_token"].as_str().unwrap();
    let r = refresh(&app, original).await;
    assert_eq!(r.status(), 200);
    let tab_one: Value = r.json().await.unwrap();
    // The same token again at once (a second tab, a lost answer): a new token, same session.
    let r = refresh(&app, original).await;
    assert_eq!(r.status(), 200);
    let tab_two: Value = r.json().await.unwrap();
    assert_ne!(tab_one["refresh_token"], tab_two["refresh_token"]);
    app.assert_signed_in(tab_two["token"].as_str().unwrap())
        .await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = refresh(&app, original).await;
    assert_error(r, 401, "refresh_token_reused").await;
    app.assert_signed_out(tab_one["token"].as_str().unwrap())
        .await;
    let r = refresh(&app, tab_two["refresh_token"].as_str().unwrap()).await;
    assert_error(r, 401, "unauthorized").await;
}

async fn expired_and_bad_tokens_say_so_with_a_challenge(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("ACCESS_TOKEN_TTL_SECS", "1")]).await else {
        return;
    };
    let session = app.signed_in_user("expiring").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = app
        .get_with("/api/auth/me", session["token"].as_str().unwrap())
        .await;
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_error(r, 401, "token_expired").await;
    let r = app.get_with("/api/auth/me", "not-a-token").await;
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_error(r, 401, "unauthorized").await;
    // A wrong password is not a bearer problem: no challenge.
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "expiring", "password": "wrong password"}),
        )
        .await;
    assert!(r.headers().get("www-authenticate").is_none());
    assert_error(r, 401, "invalid_credentials").await;
}

async fn an_invalid_cookie_is_401_before_the_origin_check(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let r = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("cookie", "auth.sid=forged-or-expired")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

async fn pruning_removes_old_rows_and_keeps_recent_ones(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("REFRESH_REUSE_GRACE_SECS", "0")]).await else {
        return;
    };
    let session = app.signed_in_user("history.keeper").await;
    let refreshed: Value = refresh(&app, session["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let ended = app.sign_in("history.keeper", PASSWORD).await;
    let r = app
        .request(
            Method::POST,
            "/api/auth/logout",
            ended["token"].as_str(),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);

    let old = match backend {
        Backend::Sqlite => "'2020-01-01T00:00:00+00:00'",
        Backend::Postgres => "'2020-01-01 00:00:00+00'",
    };
    let user = "(SELECT user_db_id FROM users WHERE username = 'history.keeper')";
    for sql in [
        format!("INSERT INTO login_attempts (ip_address, email_or_username, attempted_at, success, counted) VALUES ('203.0.113.9', 'history.keeper', {old}, FALSE, TRUE)"),
        format!("INSERT INTO user_location_logs (user_id, ip_address, location, created_at, user_agent, access_status) VALUES ({user}, '203.0.113.9', '{{}}', {old}, 'old', 'failure')"),
        format!("INSERT INTO auth_sessions (session_id, user_id, cookie_hash, created_at, last_used_at, expires_at, revoked_at) VALUES ('old-session', {user}, '{}', {old}, {old}, {old}, {old})", "c".repeat(64)),
        format!("INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ('{}', 'old-session', {old})", "d".repeat(64)),
        format!("INSERT INTO email_outbox (kind, to_address, subject, status, next_attempt_at, created_at) VALUES ('welcome', 'old@example.com', 'old', 'sent', {old}, {old})"),
    ] {
        app.db.execute(&sql).await;
    }
    let before = table_counts(&app.db).await;

    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DATABASE_URL".into(), app.database_url());
    vars.insert("JWT_SECRET".into(), crate::helpers::SECRET.into());
    vars.insert("DATA_DIR".into(), app.data_dir().display().to_string());
    let config = authflow::config::Config::from_vars(&vars).unwrap();
    let services = authflow::app::Services::connect(config).await.unwrap();
    let removed = services.auth.prune_expired().await.unwrap();

    let after = table_counts(&app.db).await;
    // The old attempt and history row, the ended session and its token, and the old email
    // are gone, plus the tokens of the session that was signed out just now (the session
    // itself is kept until 30 days after it ended).
    assert_eq!(after["attempts"], before["attempts"] - 1);
    assert_eq!(after["history"], before["history"] - 1);
    assert_eq!(after["sessions"], before["sessions"] - 1);
    assert_eq!(after["emails"], before["emails"] - 1);
    assert_eq!(
        after["refresh tokens"],
        before["refresh tokens"] - 2,
        "the old session's and the signed-out session's tokens"
    );
    assert_eq!(removed, 6);
    // The live session (with its rotated token, so a replay is still caught) is untouched.
    let r = refresh(&app, session["refresh_token"].as_str().unwrap()).await;
    assert_error(r, 401, "refresh_token_reused").await;
    let _ = refreshed;
}

async fn table_counts(db: &TestDb) -> HashMap<&'static str, i64> {
    let queries = [
        ("attempts", "SELECT count(*) FROM login_attempts"),
        ("history", "SELECT count(*) FROM user_location_logs"),
        ("sessions", "SELECT count(*) FROM auth_sessions"),
        ("refresh tokens", "SELECT count(*) FROM refresh_tokens"),
        ("emails", "SELECT count(*) FROM email_outbox"),
    ];
    let mut out = HashMap::new();
    for (name, sql) in queries {
        out.insert(name, db.count(sql).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_503_and_comes_back_by_itself() {
    let Some(database) = fresh_pg_database().await else {
        return;
    };
    let url = reqwest::Url::parse(&database.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    let mut proxied = url.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.port)).unwrap();
    let app = TestApp::spawn_on(
        Backend::Postgres,
        proxied.as_str(),
        tempfile::tempdir().unwrap(),
        &[],
    )
    .await
    .unwrap();
    let session = app.signed_in_user("db.watcher").await;
    let token = session["token"].as_str().unwrap();

    proxy.cut();
    // Aborting the forwarding tasks takes effect at their next poll.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = app.get_with("/api/auth/me", token).await;
    let waited = started.elapsed();
    assert!(r.headers().contains_key("retry-after"), "{r:?}");
    assert_error(r, 503, "unavailable").await;
    assert!(waited < Duration::from_secs(2), "503 after {waited:?}");
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get_with("/api/auth/me", token).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503, "only 503 while it comes back");
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..20 {
        app.assert_signed_in(token).await;
    }
}
