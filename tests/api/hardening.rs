//! SPEC §9: what an attacker with no account must not be able to do, and what recovery
//! must undo — lockouts per (account, address), keys, session lifetimes, refresh retries,
//! bounded tables, clear 401s, a database that goes away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    assert_error, eventually, fresh_pg_database, Backend, TestApp, TestDb, TestUser, SECRET,
};
use crate::responses::Tokens;
use crate::smtp_sink::ReceivedMail;
use crate::tcp_proxy::TcpProxy;
use crate::{both_backends, postgres_only};

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

postgres_only!(
    a_database_that_goes_away_is_503_and_comes_back_by_itself,
    a_test_drops_its_own_database_and_no_other,
);

const RESET_PASSWORD: &str = "a brand new secret 2026";

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

/// Waits for `n` emails and returns the one about `subject`.
async fn mail_with_subject(app: &TestApp, n: usize, subject: &str) -> ReceivedMail {
    app.wait_for_emails(n)
        .await
        .into_iter()
        .find(|m| m.subject().contains(subject))
        .unwrap_or_else(|| panic!("no mail about {subject:?}"))
}

/// Asks for a reset link by email and sets `RESET_PASSWORD` with it.
async fn reset_by_email(app: &TestApp, user: &TestUser, mails_before: usize) {
    assert_eq!(app.forgot_password(&user.email).await.status(), 200);
    let mail = mail_with_subject(app, mails_before + 1, "Reset").await;
    let token = mail.token().expect("the reset mail carries a token");
    let r = app.reset_password(&token, RESET_PASSWORD).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// A key named "script" with the default scope: its secret.
async fn create_key(app: &TestApp, tokens: &Tokens) -> String {
    app.create_key(tokens, json!({"name": "script"})).await.key
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn hostile_sign_ups_leave_health_fast_and_count_against_the_limit(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("RATE_LIMIT_SIGNUPS_PER_IP", "100000")
        .spawn()
        .await;
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
    // Load, not a wait for something: let the attackers get going, then sample at a pace.
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
    let limited = TestApp::builder(backend)
        .env("RATE_LIMIT_SIGNUPS_PER_IP", "2")
        .spawn()
        .await;
    for _ in 0..2 {
        let r = limited.try_sign_up_with(hostile.clone()).await;
        assert_error(r, 400, "validation_failed").await;
    }
    let r = limited.try_sign_up_with(hostile.clone()).await;
    assert_error(r, 429, "too_many_requests").await;
}

async fn a_guesser_locks_only_their_own_address(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("LOGIN_MAX_FAILURES", "3")
        .env("LOGIN_MAX_FAILURES_PER_ACCOUNT", "6")
        .spawn()
        .await;
    let home = client_from([127, 0, 0, 1]);
    let attacker = client_from([127, 0, 0, 2]);
    let (victim, _) = app.signed_in_user().await; // from 127.0.0.1: a known address
    let guess = |client| sign_in_with(&app, client, &victim.username, "wrong password");
    let right = |client| sign_in_with(&app, client, &victim.username, &victim.password);

    for _ in 0..3 {
        assert_error(guess(&attacker).await, 401, "invalid_credentials").await;
    }
    // The guesser's address is blocked for this account, even with the right password…
    let r = right(&attacker).await;
    assert!(r.headers().contains_key("retry-after"));
    let error = assert_error(r, 429, "too_many_requests").await;
    assert!(error.message.contains("try again in"), "{error:?}");
    // …but the owner at home signs in.
    assert_eq!(right(&home).await.status(), 200);

    // Refused attempts write nothing: a flood cannot grow the tables or the history.
    let before = sign_in_rows(&app.db).await;
    for _ in 0..15 {
        assert_eq!(guess(&attacker).await.status(), 429);
    }
    assert_eq!(sign_in_rows(&app.db).await, before, "429s wrote rows");

    // Across addresses the account is limited too (6 counted failures in the window)…
    let second = client_from([127, 0, 0, 3]);
    for _ in 0..3 {
        assert_error(guess(&second).await, 401, "invalid_credentials").await;
    }
    let third = client_from([127, 0, 0, 4]);
    assert_error(right(&third).await, 429, "too_many_requests").await;
    // …except for an address that signed in to it recently.
    assert_eq!(right(&home).await.status(), 200);
}

/// Rows that sign-in attempts write.
async fn sign_in_rows(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM login_attempts").await
        + db.count("SELECT count(*) FROM user_location_logs").await
}

async fn a_reset_clears_lockouts_and_kills_every_key(backend: Backend) {
    let app = TestApp::builder(backend)
        .smtp_sink()
        .env("LOGIN_MAX_FAILURES", "2")
        .spawn()
        .await;
    let (victim, tokens) = app.signed_in_user().await;
    let key = create_key(&app, &tokens).await;
    app.assert_signed_in(&key).await;
    let attacker = client_from([127, 0, 0, 2]);
    for _ in 0..2 {
        sign_in_with(&app, &attacker, &victim.username, "wrong password").await;
    }
    assert_eq!(
        sign_in_with(&app, &attacker, &victim.username, &victim.password)
            .await
            .status(),
        429
    );

    // Welcome and new-key notices came before the reset mail.
    reset_by_email(&app, &victim, 2).await;

    app.assert_signed_out(&tokens.token).await;
    app.assert_signed_out(&key).await;
    assert_eq!(app.db.count("SELECT count(*) FROM api_keys").await, 0);
    // The lockout is gone: the address may try again (and the new password works).
    assert_eq!(
        sign_in_with(&app, &attacker, &victim.username, RESET_PASSWORD)
            .await
            .status(),
        200
    );
}

async fn keys_need_the_password_and_tell_the_owner(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let (owner, tokens) = app.signed_in_user().await;
    let r = app
        .request(
            Method::POST,
            "/api/keys",
            Some(&tokens.token),
            Some(json!({"name": "stolen"})),
        )
        .await;
    let error = assert_error(r, 400, "validation_failed").await;
    assert_eq!(error.details[0].field, "password");
    let r = app
        .try_create_key(
            &tokens,
            json!({"name": "stolen", "password": "not the password"}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
    assert_eq!(app.db.count("SELECT count(*) FROM api_keys").await, 0);

    create_key(&app, &tokens).await;
    let notice = mail_with_subject(&app, 2, "API key").await;
    assert_eq!(notice.to, vec![owner.email]);
    assert!(notice.text().contains("\"script\""), "{}", notice.text());
    assert!(
        !notice.raw.contains("afk_"),
        "the key itself is never mailed"
    );
}

async fn logout_all_can_take_the_keys_too(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (user, tokens) = app.signed_in_user().await;
    let key = create_key(&app, &tokens).await;
    // Without a body, keys stay.
    app.logout_all(&tokens).await;
    app.assert_signed_in(&key).await;

    let tokens = app.sign_in(&user).await;
    app.logout_all_and_keys(&tokens).await;
    app.assert_signed_out(&tokens.token).await;
    app.assert_signed_out(&key).await;
}

async fn an_administrator_unlocks_an_account(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("LOGIN_MAX_FAILURES", "2")
        .spawn()
        .await;
    let (admin, _) = app.signed_in_user().await;
    app.db
        .execute(&format!(
            "UPDATE users SET role_id = (SELECT role_id FROM roles WHERE name = 'admin') \
             WHERE username = '{}'",
            admin.username
        ))
        .await;
    let admin = app.sign_in(&admin).await;
    let (locked, user) = app.signed_in_user().await;
    let attacker = client_from([127, 0, 0, 2]);
    for _ in 0..2 {
        sign_in_with(&app, &attacker, &locked.username, "wrong password").await;
    }
    assert_eq!(
        sign_in_with(&app, &attacker, &locked.username, &locked.password)
            .await
            .status(),
        429
    );
    // Only an administrator may.
    let r = app
        .admin(&user, Method::POST, &user.user_id, "/unlock", None)
        .await;
    assert_error(r, 403, "forbidden").await;
    let r = app
        .admin(&admin, Method::POST, &user.user_id, "/unlock", None)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        sign_in_with(&app, &attacker, &locked.username, &locked.password)
            .await
            .status(),
        200
    );
}

async fn a_session_ends_at_its_absolute_age_whatever_the_refreshes(backend: Backend) {
    // The defaults: 30-day sliding sessions, 90 days at most from sign-in.
    let app = TestApp::spawn(backend).await;
    let (_, mut tokens) = app.signed_in_user().await;
    let day = Duration::from_secs(86_400);
    // Refreshed every 29 days, the session lives on…
    for _ in 0..3 {
        app.advance(day * 29);
        tokens = app.refresh(&tokens).await;
    }
    // …until day 90 from sign-in, whatever the refreshes: a refresh on day 89 still works
    // but cannot carry the session further…
    app.advance(day * 2);
    let last = app.refresh(&tokens).await;
    app.assert_signed_in(&last.token).await;
    // …and on day 90 the session is over.
    app.advance(day * 2);
    let r = app.try_refresh(&last.refresh_token).await;
    assert_error(r, 401, "unauthorized").await;
}

async fn a_retried_refresh_is_not_theft_but_a_late_replay_is(backend: Backend) {
    // The default grace: 10 seconds.
    let app = TestApp::spawn(backend).await;
    let (_, first) = app.signed_in_user().await;
    let tab_one = app.refresh(&first).await;
    // The same token again at once (a second tab, a lost answer): a new token, same session.
    let tab_two = app.refresh(&first).await;
    assert_ne!(tab_one.refresh_token, tab_two.refresh_token);
    app.assert_signed_in(&tab_two.token).await;

    // Past the grace.
    app.advance(Duration::from_secs(11));
    let r = app.try_refresh(&first.refresh_token).await;
    assert_error(r, 401, "refresh_token_reused").await;
    app.assert_signed_out(&tab_one.token).await;
    let r = app.try_refresh(&tab_two.refresh_token).await;
    assert_error(r, 401, "unauthorized").await;
}

async fn expired_and_bad_tokens_say_so_with_a_challenge(backend: Backend) {
    // The default lifetime: an hour.
    let app = TestApp::spawn(backend).await;
    let (user, tokens) = app.signed_in_user().await;
    app.assert_signed_in(&tokens.token).await;
    app.advance(Duration::from_secs(3601));
    let r = app.try_me(&tokens.token).await;
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_error(r, 401, "token_expired").await;
    let r = app.try_me("not-a-token").await;
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_error(r, 401, "unauthorized").await;
    // A wrong password is not a bearer problem: no challenge.
    let r = app.try_sign_in(&user.username, "wrong password").await;
    assert!(r.headers().get("www-authenticate").is_none());
    assert_error(r, 401, "invalid_credentials").await;
}

async fn an_invalid_cookie_is_401_before_the_origin_check(backend: Backend) {
    let app = TestApp::spawn(backend).await;
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
    let app = TestApp::builder(backend)
        .env("REFRESH_REUSE_GRACE_SECS", "0")
        .spawn()
        .await;
    let (keeper, session) = app.signed_in_user().await;
    app.refresh(&session).await;
    let ended = app.sign_in(&keeper).await;
    app.logout(&ended).await;

    let old = match backend {
        Backend::Sqlite => "'2020-01-01T00:00:00+00:00'",
        Backend::Postgres => "'2020-01-01 00:00:00+00'",
    };
    let name = &keeper.username;
    let user = format!("(SELECT user_db_id FROM users WHERE username = '{name}')");
    for sql in [
        format!("INSERT INTO login_attempts (ip_address, email_or_username, attempted_at, success, counted) VALUES ('203.0.113.9', '{name}', {old}, FALSE, TRUE)"),
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
    vars.insert("JWT_SECRET".into(), SECRET.into());
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
    let r = app.try_refresh(&session.refresh_token).await;
    assert_error(r, 401, "refresh_token_reused").await;
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

async fn a_database_that_goes_away_is_503_and_comes_back_by_itself() {
    let database = fresh_pg_database().await;
    crate::helpers::captured_logs();
    let (proxy, proxied) = TcpProxy::in_front_of(&database.url).await;
    let app = TestApp::builder(Backend::Postgres)
        .database_url(proxied.as_str())
        .spawn()
        .await;
    let (_, tokens) = app.signed_in_user().await;

    proxy.cut();
    // Aborting the forwarding tasks takes effect at their next poll.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = app.try_me(&tokens.token).await;
    let waited = started.elapsed();
    if r.status() != 503 {
        let logs = crate::helpers::captured_logs().contents();
        let failed: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("request failed"))
            .collect();
        panic!("{r:?}: {failed:?}");
    }
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
    eventually(
        "the database to come back",
        Duration::from_secs(10),
        || async {
            let r = app.try_me(&tokens.token).await;
            if r.status() == 200 {
                return Some(());
            }
            assert_eq!(r.status(), 503, "only 503 while it comes back");
            None
        },
    )
    .await;
    for _ in 0..20 {
        app.assert_signed_in(&tokens.token).await;
    }
}

/// SPEC §9: each run's databases carry a prefix of its own; a test drops the one it made
/// (also when it fails) and never another run's.
async fn a_test_drops_its_own_database_and_no_other() {
    let admin = sqlx::PgPool::connect(&crate::helpers::admin_url())
        .await
        .unwrap();
    let foreign = format!("authflow_test_otherrun_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{foreign}\""))
        .execute(&admin)
        .await
        .unwrap();
    let exists = |name: String| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_one(&admin)
                .await
                .unwrap()
                == 1
        }
    };
    let database = fresh_pg_database().await;
    let own = database.url.rsplit('/').next().unwrap().to_owned();
    assert!(own.starts_with(crate::helpers::run_prefix()), "{own}");
    assert!(exists(own.clone()).await);
    drop(database);
    assert!(!exists(own).await, "the test's own database is dropped");
    assert!(
        exists(foreign.clone()).await,
        "another run's database is kept"
    );
    sqlx::query(&format!("DROP DATABASE \"{foreign}\""))
        .execute(&admin)
        .await
        .unwrap();
}
