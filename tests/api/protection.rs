//! Sign-in protection: client IPs, records, geolocation, rate limits, uniform failures, logs.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_backends;
use crate::helpers::{
    assert_error, captured_logs, eventually, parse, Backend, TestApp, TestAppBuilder, TestUser,
};
use crate::ipinfo_standin::IpinfoStandIn;
use crate::responses::{LoginAttempt, Tokens};

both_backends!(
    a_forwarded_public_ip_is_located_once_and_shown_in_the_history,
    a_slow_lookup_never_slows_the_sign_in,
    forwarded_for_from_an_untrusted_peer_is_ignored,
    five_failures_lock_the_identifier_not_other_accounts,
    one_ip_is_limited_across_accounts,
    sign_ups_and_recovery_emails_are_limited,
    rate_limits_off_disables_every_limit,
    unknown_account_and_wrong_password_take_the_same_time,
    the_log_holds_no_password_or_token,
    two_processes_share_logouts_and_failure_counts,
    production_sends_hsts_and_secure_cookies,
    parallel_guesses_cannot_slip_under_the_limit,
    username_and_email_count_as_one_account,
    current_password_checks_are_limited_too,
);

/// Behind a trusted proxy on 127.0.0.1, with ipinfo answered by the stand-in.
fn located_app(backend: Backend, ipinfo: &IpinfoStandIn) -> TestAppBuilder {
    TestApp::builder(backend)
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .env("TOKEN_IP", "test-ipinfo-token")
        .env("IPINFO_URL", &ipinfo.url)
}

async fn sign_in_from(
    app: &TestApp,
    forwarded_for: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/signin"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

/// The history once every entry's location is complete (no pending lookup).
async fn settled_history(app: &TestApp, token: &str, expected: usize) -> Vec<LoginAttempt> {
    eventually("the history to settle", Duration::from_secs(10), || async {
        let entries = app.login_history(token).await.entries;
        let settled = entries.iter().all(LoginAttempt::is_located);
        (entries.len() == expected && settled).then_some(entries)
    })
    .await
}

async fn a_forwarded_public_ip_is_located_once_and_shown_in_the_history(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    let app = located_app(backend, &ipinfo).spawn().await;
    let geo = TestUser::new();
    app.sign_up(&geo).await;
    let first = sign_in_from(&app, "8.8.8.8", &geo.username, &geo.password).await;
    let token = parse::<Tokens>(first, 200).await.token;
    settled_history(&app, &token, 1).await;
    assert_eq!(
        sign_in_from(&app, "8.8.8.8", &geo.username, "wrong password")
            .await
            .status(),
        401
    );
    let entries = settled_history(&app, &token, 2).await;

    assert_eq!(entries[0].status, "failure", "newest first");
    assert_eq!(entries[1].status, "success");
    for entry in &entries {
        assert_eq!(entry.ip, "8.8.8.8");
        assert_eq!(entry.location["city"], "Mountain View");
        assert_eq!(entry.user_agent.as_deref(), Some("authflow-tests"));
    }
    assert_eq!(
        ipinfo.lookups(),
        vec![("8.8.8.8".to_owned(), Some("test-ipinfo-token".to_owned()))]
    );

    // A private address is "Local", with no lookup.
    assert_eq!(
        sign_in_from(&app, "10.1.2.3", &geo.username, &geo.password)
            .await
            .status(),
        200
    );
    let entries = settled_history(&app, &token, 3).await;
    assert_eq!(entries[0].location["city"], "Local");
    assert_eq!(entries[0].location["bogon"], true);
    assert_eq!(ipinfo.lookups().len(), 1);
    let r = app
        .get_with("/api/users/me/login-history?limit=1", &token)
        .await;
    let limited: crate::responses::LoginHistory = parse(r, 200).await;
    assert_eq!(limited.entries.len(), 1);
}

async fn a_slow_lookup_never_slows_the_sign_in(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    ipinfo.answer_after(Duration::from_secs(5));
    let app = located_app(backend, &ipinfo).spawn().await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let started = Instant::now();
    let r = sign_in_from(&app, "1.1.1.1", &user.username, &user.password).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(took < Duration::from_millis(1500), "sign-in took {took:?}");
    let token = r.json::<Tokens>().await.unwrap().token;
    // The lookup gives up after 2 s and the record says why.
    let entries = settled_history(&app, &token, 1).await;
    assert_eq!(entries[0].location["ip"], "1.1.1.1");
    assert!(entries[0].location["error"].is_string(), "{:?}", entries[0]);
}

async fn forwarded_for_from_an_untrusted_peer_is_ignored(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    let app = TestApp::builder(backend)
        .env("TOKEN_IP", "t")
        .env("IPINFO_URL", &ipinfo.url)
        .spawn()
        .await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let r = sign_in_from(&app, "8.8.8.8", &user.username, &user.password).await;
    let token = r.json::<Tokens>().await.unwrap().token;
    let entries = settled_history(&app, &token, 1).await;
    assert_eq!(entries[0].ip, "127.0.0.1");
    assert_eq!(entries[0].location["city"], "Local");
    assert!(ipinfo.lookups().is_empty());
}

async fn five_failures_lock_the_identifier_not_other_accounts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let target = TestUser::named("lock.target").with_email("lock@example.com");
    let bystander = TestUser::new();
    app.sign_up(&target).await;
    app.sign_up(&bystander).await;
    let attempt = |username: &str, password: &str| {
        let (username, password) = (username.to_owned(), password.to_owned());
        let app = &app;
        async move { app.try_sign_in(&username, &password).await }
    };
    let right = target.password.as_str();
    // A success clears the count: four failures, a success, four more are still 401.
    for _ in 0..4 {
        assert_eq!(attempt("lock.target", "wrong").await.status(), 401);
    }
    assert_eq!(attempt("lock.target", right).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(attempt("lock.target", "wrong").await.status(), 401);
    }
    // The sixth is refused, even with the right password, by email as well as username.
    let r = attempt("lock.target", right).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_error(r, 429, "too_many_requests").await;
    let r = attempt("LOCK.TARGET", right).await;
    assert_error(r, 429, "too_many_requests").await;
    let r = attempt("lock@example.com", right).await;
    assert_error(r, 429, "too_many_requests").await;
    // Unknown identifiers behave the same.
    for _ in 0..5 {
        assert_eq!(attempt("no.such.user", "wrong").await.status(), 401);
    }
    assert_error(
        attempt("no.such.user", "wrong").await,
        429,
        "too_many_requests",
    )
    .await;
    // Another account is unaffected.
    app.sign_in(&bystander).await;
}

async fn one_ip_is_limited_across_accounts(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("LOGIN_MAX_FAILURES_PER_IP", "3")
        .spawn()
        .await;
    let victim = TestUser::new();
    app.sign_up(&victim).await;
    for username in ["stuff.one", "stuff.two", "stuff.three"] {
        assert_eq!(app.try_sign_in(username, "guess").await.status(), 401);
    }
    let r = app.try_sign_in(&victim.username, &victim.password).await;
    assert_error(r, 429, "too_many_requests").await;
}

async fn sign_ups_and_recovery_emails_are_limited(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("RATE_LIMIT_SIGNUPS_PER_IP", "2")
        .env("RATE_LIMIT_RECOVERY_PER_EMAIL", "2")
        .env("RATE_LIMIT_RECOVERY_PER_IP", "3")
        .spawn()
        .await;
    let first = TestUser::new();
    app.sign_up(&first).await;
    app.sign_up(&TestUser::new()).await;
    let r = app.try_sign_up(&TestUser::new()).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, 429, "too_many_requests").await;

    // Forgot-password and resend-verification share the per-address limit…
    assert_eq!(app.forgot_password(&first.email).await.status(), 200);
    assert_eq!(app.resend_verification(&first.email).await.status(), 200);
    let r = app.forgot_password(&first.email).await;
    assert_error(r, 429, "too_many_requests").await;
    // …and the per-IP one, whatever the address (known or not).
    assert_eq!(
        app.forgot_password("nobody@example.com").await.status(),
        200
    );
    let r = app.forgot_password("other@example.com").await;
    assert_error(r, 429, "too_many_requests").await;
}

async fn rate_limits_off_disables_every_limit(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("RATE_LIMITS", "off")
        .env("RATE_LIMIT_SIGNUPS_PER_IP", "1")
        .spawn()
        .await;
    let free = TestUser::new();
    app.sign_up(&free).await;
    app.sign_up(&TestUser::new()).await;
    let before = app.db.attempts().await;
    for _ in 0..7 {
        assert_eq!(app.try_sign_in(&free.username, "x").await.status(), 401);
    }
    app.sign_in(&free).await;
    // Nothing counts early, but every attempt is on record once, as it ended.
    let after = app.db.attempts().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 7));
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn unknown_account_and_wrong_password_take_the_same_time(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("RATE_LIMITS", "off")
        .spawn()
        .await;
    let real = TestUser::new();
    app.sign_up(&real).await;
    let app = &app;
    let time = |username: &str| {
        let username = username.to_owned();
        async move {
            let started = Instant::now();
            let r = app.try_sign_in(&username, "not the password").await;
            assert_eq!(r.status(), 401);
            started.elapsed()
        }
    };
    let ghost = TestUser::new();
    // Warm up, then interleave so that load on the machine hits both alike.
    time(&real.username).await;
    time(&ghost.username).await;
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        wrong.push(time(&real.username).await);
        unknown.push(time(&ghost.username).await);
    }
    let (wrong, unknown) = (median(wrong), median(unknown));
    let ratio = wrong.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.7..=1.3).contains(&ratio),
        "wrong password {wrong:?} vs unknown account {unknown:?}"
    );
}

async fn the_log_holds_no_password_or_token(backend: Backend) {
    let logs = captured_logs();
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let (user, tokens) = app.signed_in_user().await;
    let r = app.try_refresh(&tokens.refresh_token).await;
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()["auth.sid=".len()..]
        .to_owned();
    let rotated: Tokens = r.json().await.unwrap();
    let welcome = app.email(1).await.token().unwrap();
    assert_eq!(app.open_verification_link(&welcome).await.status(), 200);
    app.forgot_password(&user.email).await;
    let reset = app.email(2).await.token().unwrap();
    let new_password = "another fine passphrase 9";
    assert_eq!(app.reset_password(&reset, new_password).await.status(), 200);
    let r = app.try_logout(&rotated.token).await;
    assert_eq!(r.status(), 401, "the reset revoked every session");
    app.wait_for_emails(3).await;

    let text = logs.contents();
    assert!(text.contains("signed in"), "the log was captured");
    let secrets = [
        ("password", user.password.as_str()),
        ("new password", new_password),
        ("access token", tokens.token.as_str()),
        ("refresh token", tokens.refresh_token.as_str()),
        ("rotated refresh token", rotated.refresh_token.as_str()),
        ("cookie", cookie.as_str()),
        ("verification token", welcome.as_str()),
        ("reset token", reset.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!text.contains(secret), "the log holds the {what}");
    }
    // Not even part of a JWT (its signature).
    assert!(!text.contains(tokens.token.rsplit('.').next().unwrap()));
}

async fn two_processes_share_logouts_and_failure_counts(backend: Backend) {
    let first = TestApp::spawn(backend).await;
    let second = first.twin(backend).spawn().await;
    let (user, tokens) = first.signed_in_user().await;
    second.assert_signed_in(&tokens.token).await;
    second.logout(&tokens).await;
    first.assert_signed_out(&tokens.token).await;

    for i in 0..5 {
        let app = if i % 2 == 0 { &first } else { &second };
        assert_eq!(app.try_sign_in(&user.username, "wrong").await.status(), 401);
    }
    for app in [&first, &second] {
        let r = app.try_sign_in(&user.username, &user.password).await;
        assert_error(r, 429, "too_many_requests").await;
    }
}

async fn production_sends_hsts_and_secure_cookies(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("APP_ENV", "production")
        .env("APP_URL", "https://auth.example.com")
        .smtp_sink()
        .spawn()
        .await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let r = app.try_sign_in(&user.username, &user.password).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["strict-transport-security"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    // Production: any localhost origin is no longer allowed.
    let r = app
        .client
        .get(app.url("/health"))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

async fn parallel_guesses_cannot_slip_under_the_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let target = TestUser::new();
    app.sign_up(&target).await;
    let guesses: Vec<String> = (0..20).map(|i| format!("guess number {i}")).collect();
    let attempts = guesses.iter().map(|g| app.try_sign_in(&target.username, g));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let judged = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(judged, 5, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        15,
        "{statuses:?}"
    );
}

async fn username_and_email_count_as_one_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = TestUser::named("two.names");
    app.sign_up(&user).await;
    for identifier in [
        "two.names",
        "two.names@example.com",
        "TWO.NAMES",
        "Two.Names@Example.com",
        "two.names",
    ] {
        assert_eq!(app.try_sign_in(identifier, "wrong").await.status(), 401);
    }
    let r = app
        .try_sign_in_with(json!({"email": user.email, "password": user.password}))
        .await;
    assert_error(r, 429, "too_many_requests").await;
    // Identifiers that lengthen when lower-cased are cut safely, not a 500.
    let r = app.try_sign_in(&"İ".repeat(200), "x").await;
    assert_error(r, 401, "invalid_credentials").await;
}

async fn current_password_checks_are_limited_too(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (user, tokens) = app.signed_in_user().await;
    for i in 0..5 {
        let r = app
            .change_password(&tokens, &format!("guess {i}"), "a fresh passphrase 31")
            .await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    let r = app.delete_account(&tokens, &user.password).await;
    assert_error(r, 429, "too_many_requests").await;
    let failures = app
        .login_history(&tokens.token)
        .await
        .entries
        .iter()
        .filter(|e| e.status == "failure")
        .count();
    // Each judged check is in the history; the refused one wrote nothing (SPEC §9).
    assert_eq!(failures, 5, "each judged check is in the history");
}
