//! Sign-in protection: client IPs, records, geolocation, rate limits, uniform failures, logs.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, captured_logs, Backend, TestApp, PASSWORD};
use crate::ipinfo_standin::IpinfoStandIn;
use crate::smtp_sink::SmtpSink;

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

async fn located_app(
    backend: Backend,
    ipinfo: &IpinfoStandIn,
    extra: &[(&str, &str)],
) -> Option<TestApp> {
    let mut vars = vec![
        ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ("TOKEN_IP", "test-ipinfo-token"),
        ("IPINFO_URL", ipinfo.url.as_str()),
    ];
    vars.extend_from_slice(extra);
    TestApp::spawn_with(backend, &vars).await
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
async fn settled_history(app: &TestApp, token: &str, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = app
            .get_with("/api/users/me/login-history", token)
            .await
            .json()
            .await
            .unwrap();
        let entries = body["entries"].as_array().unwrap().clone();
        let settled = entries
            .iter()
            .all(|e| e["location"].as_object().is_some_and(|l| l.len() > 1));
        if entries.len() == expected && settled {
            return entries;
        }
        assert!(Instant::now() < deadline, "history never settled: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_forwarded_public_ip_is_located_once_and_shown_in_the_history(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    let Some(app) = located_app(backend, &ipinfo, &[]).await else {
        return;
    };
    assert_eq!(
        app.create_account("geo.person", "geo@example.com")
            .await
            .status(),
        201
    );
    let first = sign_in_from(&app, "8.8.8.8", "geo.person", PASSWORD).await;
    assert_eq!(first.status(), 200);
    let token = first.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    settled_history(&app, &token, 1).await;
    assert_eq!(
        sign_in_from(&app, "8.8.8.8", "geo.person", "wrong password")
            .await
            .status(),
        401
    );
    let entries = settled_history(&app, &token, 2).await;

    assert_eq!(entries[0]["status"], "failure", "newest first");
    assert_eq!(entries[1]["status"], "success");
    for entry in &entries {
        assert_eq!(entry["ip"], "8.8.8.8");
        assert_eq!(entry["location"]["city"], "Mountain View");
        assert_eq!(entry["user_agent"], "authflow-tests");
        assert!(entry["created_at"].is_string());
    }
    assert_eq!(
        ipinfo.lookups(),
        vec![("8.8.8.8".to_owned(), Some("test-ipinfo-token".to_owned()))]
    );

    // A private address is "Local", with no lookup.
    assert_eq!(
        sign_in_from(&app, "10.1.2.3", "geo.person", PASSWORD)
            .await
            .status(),
        200
    );
    let entries = settled_history(&app, &token, 3).await;
    assert_eq!(entries[0]["location"]["city"], "Local");
    assert_eq!(entries[0]["location"]["bogon"], true);
    assert_eq!(ipinfo.lookups().len(), 1);
    let limited: Value = app
        .get_with("/api/users/me/login-history?limit=1", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(limited["entries"].as_array().unwrap().len(), 1);
}

async fn a_slow_lookup_never_slows_the_sign_in(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    ipinfo.answer_after(Duration::from_secs(5));
    let Some(app) = located_app(backend, &ipinfo, &[]).await else {
        return;
    };
    assert_eq!(
        app.create_account("slow.lookup", "slow@example.com")
            .await
            .status(),
        201
    );
    let started = Instant::now();
    let r = sign_in_from(&app, "1.1.1.1", "slow.lookup", PASSWORD).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(took < Duration::from_millis(1500), "sign-in took {took:?}");
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The lookup gives up after 2 s and the record says why.
    let entries = settled_history(&app, &token, 1).await;
    assert_eq!(entries[0]["location"]["ip"], "1.1.1.1");
    assert!(
        entries[0]["location"]["error"].is_string(),
        "{}",
        entries[0]
    );
}

async fn forwarded_for_from_an_untrusted_peer_is_ignored(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    let Some(app) =
        TestApp::spawn_with(backend, &[("TOKEN_IP", "t"), ("IPINFO_URL", &ipinfo.url)]).await
    else {
        return;
    };
    assert_eq!(
        app.create_account("spoof.check", "spoof@example.com")
            .await
            .status(),
        201
    );
    let r = sign_in_from(&app, "8.8.8.8", "spoof.check", PASSWORD).await;
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let entries = settled_history(&app, &token, 1).await;
    assert_eq!(entries[0]["ip"], "127.0.0.1");
    assert_eq!(entries[0]["location"]["city"], "Local");
    assert!(ipinfo.lookups().is_empty());
}

async fn five_failures_lock_the_identifier_not_other_accounts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("lock.target", "lock@example.com")
            .await
            .status(),
        201
    );
    assert_eq!(
        app.create_account("lock.bystander", "bystander@example.com")
            .await
            .status(),
        201
    );
    let attempt = |username: &'static str, password: &'static str| {
        app.post(
            "/api/auth/signin",
            json!({"username": username, "password": password}),
        )
    };
    // A success clears the count: four failures, a success, four more are still 401.
    for _ in 0..4 {
        assert_eq!(attempt("lock.target", "wrong").await.status(), 401);
    }
    assert_eq!(attempt("lock.target", PASSWORD).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(attempt("lock.target", "wrong").await.status(), 401);
    }
    // The sixth is refused, even with the right password, by email as well as username.
    let r = attempt("lock.target", PASSWORD).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_error(r, 429, "too_many_requests").await;
    let r = attempt("LOCK.TARGET", PASSWORD).await;
    assert_error(r, 429, "too_many_requests").await;
    let r = attempt("lock@example.com", PASSWORD).await;
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
    assert_eq!(attempt("lock.bystander", PASSWORD).await.status(), 200);
}

async fn one_ip_is_limited_across_accounts(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("LOGIN_MAX_FAILURES_PER_IP", "3")]).await
    else {
        return;
    };
    assert_eq!(
        app.create_account("ip.victim1", "v1@example.com")
            .await
            .status(),
        201
    );
    for username in ["stuff.one", "stuff.two", "stuff.three"] {
        let r = app
            .post(
                "/api/auth/signin",
                json!({"username": username, "password": "guess"}),
            )
            .await;
        assert_eq!(r.status(), 401);
    }
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "ip.victim1", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 429, "too_many_requests").await;
}

async fn sign_ups_and_recovery_emails_are_limited(backend: Backend) {
    let Some(app) = TestApp::spawn_with(
        backend,
        &[
            ("RATE_LIMIT_SIGNUPS_PER_IP", "2"),
            ("RATE_LIMIT_RECOVERY_PER_EMAIL", "2"),
            ("RATE_LIMIT_RECOVERY_PER_IP", "3"),
        ],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        app.create_account("limit.one", "l1@example.com")
            .await
            .status(),
        201
    );
    assert_eq!(
        app.create_account("limit.two", "l2@example.com")
            .await
            .status(),
        201
    );
    let r = app.create_account("limit.three", "l3@example.com").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_error(r, 429, "too_many_requests").await;

    // Forgot-password and resend-verification share the per-address limit…
    assert_eq!(
        app.post(
            "/api/password/forgot-password",
            json!({"email": "l1@example.com"})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.post(
            "/api/auth/resend-verification",
            json!({"email": "l1@example.com"})
        )
        .await
        .status(),
        200
    );
    let r = app
        .post(
            "/api/password/forgot-password",
            json!({"email": "l1@example.com"}),
        )
        .await;
    assert_error(r, 429, "too_many_requests").await;
    // …and the per-IP one, whatever the address (known or not).
    assert_eq!(
        app.post(
            "/api/password/forgot-password",
            json!({"email": "nobody@example.com"})
        )
        .await
        .status(),
        200
    );
    let r = app
        .post(
            "/api/password/forgot-password",
            json!({"email": "other@example.com"}),
        )
        .await;
    assert_error(r, 429, "too_many_requests").await;
}

async fn rate_limits_off_disables_every_limit(backend: Backend) {
    let Some(app) = TestApp::spawn_with(
        backend,
        &[("RATE_LIMITS", "off"), ("RATE_LIMIT_SIGNUPS_PER_IP", "1")],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        app.create_account("free.one", "f1@example.com")
            .await
            .status(),
        201
    );
    assert_eq!(
        app.create_account("free.two", "f2@example.com")
            .await
            .status(),
        201
    );
    for _ in 0..7 {
        assert_eq!(
            app.post(
                "/api/auth/signin",
                json!({"username": "free.one", "password": "x"})
            )
            .await
            .status(),
            401
        );
    }
    assert_eq!(
        app.post(
            "/api/auth/signin",
            json!({"username": "free.one", "password": PASSWORD})
        )
        .await
        .status(),
        200
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn unknown_account_and_wrong_password_take_the_same_time(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("RATE_LIMITS", "off")]).await else {
        return;
    };
    assert_eq!(
        app.create_account("timing.real", "timing@example.com")
            .await
            .status(),
        201
    );
    let app = &app;
    let time = |username: &'static str| async move {
        let started = Instant::now();
        let r = app
            .post(
                "/api/auth/signin",
                json!({"username": username, "password": "not the password"}),
            )
            .await;
        assert_eq!(r.status(), 401);
        started.elapsed()
    };
    // Warm up, then interleave so that load on the machine hits both alike.
    time("timing.real").await;
    time("timing.ghost").await;
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        wrong.push(time("timing.real").await);
        unknown.push(time("timing.ghost").await);
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
    let sink = SmtpSink::start().await;
    let Some(app) = TestApp::spawn_with(backend, &[("SMTP_URL", &sink.url())]).await else {
        return;
    };
    let session = app.signed_in_user("log.watcher").await;
    let access = session["token"].as_str().unwrap().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let r = app
        .post("/api/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()["auth.sid=".len()..]
        .to_owned();
    let rotated: Value = r.json().await.unwrap();
    let welcome = sink.wait_for(1, Duration::from_secs(15)).await[0]
        .token()
        .unwrap();
    let r = app
        .client
        .get(app.url(&format!("/api/auth/verify-email?token={welcome}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.post(
        "/api/password/forgot-password",
        json!({"email": "log.watcher@example.com"}),
    )
    .await;
    let reset = sink.wait_for(2, Duration::from_secs(15)).await[1]
        .token()
        .unwrap();
    let new_password = "another fine passphrase 9";
    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": reset, "password": new_password}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .request(
            Method::POST,
            "/api/auth/logout",
            Some(rotated["token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status(), 401, "the reset revoked every session");
    sink.wait_for(3, Duration::from_secs(15)).await;

    let text = logs.contents();
    assert!(text.contains("signed in"), "the log was captured");
    let secrets = [
        ("password", PASSWORD),
        ("new password", new_password),
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        (
            "rotated refresh token",
            rotated["refresh_token"].as_str().unwrap(),
        ),
        ("cookie", cookie.as_str()),
        ("verification token", welcome.as_str()),
        ("reset token", reset.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!text.contains(secret), "the log holds the {what}");
    }
    // Not even part of a JWT (its signature).
    assert!(!text.contains(access.rsplit('.').next().unwrap()));
}

async fn two_processes_share_logouts_and_failure_counts(backend: Backend) {
    let Some(first) = TestApp::spawn(backend).await else {
        return;
    };
    let second = TestApp::spawn_on(
        backend,
        &first.database_url(),
        tempfile::tempdir().unwrap(),
        &[],
    )
    .await
    .unwrap();
    let session = first.signed_in_user("twin.process").await;
    let token = session["token"].as_str().unwrap();
    second.assert_signed_in(token).await;
    let r = second
        .request(Method::POST, "/api/auth/logout", Some(token), None)
        .await;
    assert_eq!(r.status(), 200);
    first.assert_signed_out(token).await;

    for i in 0..5 {
        let app = if i % 2 == 0 { &first } else { &second };
        let r = app
            .post(
                "/api/auth/signin",
                json!({"username": "twin.process", "password": "wrong"}),
            )
            .await;
        assert_eq!(r.status(), 401);
    }
    for app in [&first, &second] {
        let r = app
            .post(
                "/api/auth/signin",
                json!({"username": "twin.process", "password": PASSWORD}),
            )
            .await;
        assert_error(r, 429, "too_many_requests").await;
    }
}

async fn production_sends_hsts_and_secure_cookies(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(app) = TestApp::spawn_with(
        backend,
        &[
            ("APP_ENV", "production"),
            ("APP_URL", "https://auth.example.com"),
            ("SMTP_URL", &sink.url()),
        ],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        app.create_account("prod.user", "prod@example.com")
            .await
            .status(),
        201
    );
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "prod.user", "password": PASSWORD}),
        )
        .await;
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
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("burst.target", "burst@example.com")
            .await
            .status(),
        201
    );
    let guesses = (0..20).map(|i| {
        app.post(
            "/api/auth/signin",
            json!({"username": "burst.target", "password": format!("guess number {i}")}),
        )
    });
    let statuses: Vec<u16> = futures::future::join_all(guesses)
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
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("two.names", "two.names@example.com")
            .await
            .status(),
        201
    );
    for identifier in [
        "two.names",
        "two.names@example.com",
        "TWO.NAMES",
        "Two.Names@Example.com",
        "two.names",
    ] {
        let r = app
            .post(
                "/api/auth/signin",
                json!({"username": identifier, "password": "wrong"}),
            )
            .await;
        assert_eq!(r.status(), 401);
    }
    let r = app
        .post(
            "/api/auth/signin",
            json!({"email": "two.names@example.com", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 429, "too_many_requests").await;
    // Identifiers that lengthen when lower-cased are cut safely, not a 500.
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "İ".repeat(200), "password": "x"}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
}

async fn current_password_checks_are_limited_too(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let session = app.signed_in_user("stolen.session").await;
    let token = session["token"].as_str().unwrap();
    for i in 0..5 {
        let r = app
            .request(Method::POST, "/api/password/change", Some(token),
                Some(json!({"current_password": format!("guess {i}"), "new_password": "a fresh passphrase 31"})))
            .await;
        assert_error(r, 401, "invalid_credentials").await;
    }
    let r = app
        .request(
            Method::DELETE,
            "/api/users/me",
            Some(token),
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_error(r, 429, "too_many_requests").await;
    let entries: Value = app
        .get_with("/api/users/me/login-history", token)
        .await
        .json()
        .await
        .unwrap();
    let failures = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "failure")
        .count();
    // Each judged check is in the history; the refused one wrote nothing (SPEC §9).
    assert_eq!(failures, 5, "each judged check is in the history");
}
