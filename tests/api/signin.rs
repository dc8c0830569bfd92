//! Sign-in: identifiers, uniform failures, cookies and the Origin rule.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp, TestDb, ORIGIN, PASSWORD};

both_backends!(
    sign_in_answers_with_tokens_cookie_and_the_old_fields,
    sign_in_accepts_username_or_email_in_any_case,
    every_failure_is_the_same_invalid_credentials,
    unverified_email_is_refused_when_verification_is_required,
    cookie_authenticates_and_state_changes_need_an_allowed_origin,
);

async fn sign_in_answers_with_tokens_cookie_and_the_old_fields(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("sam.signin", "sam@example.com")
            .await
            .status(),
        201
    );
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "sam.signin", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("auth.sid="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "development cookies are not Secure"
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Login successful!");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["refresh_token"].as_str().unwrap().len(), 43);
    assert_eq!(body["userId"], body["user"]["id"]);
    assert_eq!(body["username"], "sam.signin");
    assert_eq!(body["email"], "sam@example.com");
    assert_eq!(body["name"], "Test User");
    assert_eq!(body["role"], "user");
    assert!(body["user"]["last_login"].is_string());

    let me: Value = app
        .get_with("/api/auth/me", body["token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], body["userId"]);
}

async fn sign_in_accepts_username_or_email_in_any_case(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("Case.Person", "case@example.com")
            .await
            .status(),
        201
    );
    for body in [
        json!({"username": "case.person", "password": PASSWORD}),
        json!({"username": "CASE@EXAMPLE.COM", "password": PASSWORD}),
        json!({"email": "case@example.com", "password": PASSWORD}),
    ] {
        let r = app.post("/api/auth/signin", body.clone()).await;
        assert_eq!(r.status(), 200, "{body}");
    }
    let r = app
        .post("/api/auth/signin", json!({"password": PASSWORD}))
        .await;
    assert_error(r, 400, "validation_failed").await;
}

async fn every_failure_is_the_same_invalid_credentials(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("real.person", "real@example.com")
            .await
            .status(),
        201
    );
    assert_eq!(
        app.create_account("gone.person", "gone@example.com")
            .await
            .status(),
        201
    );
    let sql = "UPDATE users SET active = FALSE WHERE username = 'gone.person'";
    match &app.db {
        TestDb::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()).unwrap(),
        TestDb::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()).unwrap(),
    }
    let mut messages = Vec::new();
    for (username, password) in [
        ("real.person", "not the password"),
        ("nobody.here", PASSWORD),
        ("gone.person", PASSWORD),
    ] {
        let r = app
            .post(
                "/api/auth/signin",
                json!({"username": username, "password": password}),
            )
            .await;
        let error = assert_error(r, 401, "invalid_credentials").await;
        messages.push(error["message"].clone());
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
}

async fn unverified_email_is_refused_when_verification_is_required(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &[("REQUIRE_EMAIL_VERIFICATION", "true")]).await
    else {
        return;
    };
    assert_eq!(
        app.create_account("unverified", "unverified@example.com")
            .await
            .status(),
        201
    );
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "unverified", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 403, "email_not_verified").await;
    // The wrong password still says nothing about the account's state.
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "unverified", "password": "wrong password"}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
}

async fn cookie_authenticates_and_state_changes_need_an_allowed_origin(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("cookie.user", "cookie@example.com")
            .await
            .status(),
        201
    );
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "cookie.user", "password": PASSWORD}),
        )
        .await;
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let me = app
        .client
        .get(app.url("/api/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["username"], "cookie.user");

    // A state change by cookie from no Origin or a foreign one is refused…
    for origin in [None, Some("https://evil.example")] {
        let mut req = app
            .client
            .post(app.url("/api/auth/logout"))
            .header("cookie", &cookie);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        assert_error(req.send().await.unwrap(), 403, "forbidden").await;
    }
    // …and accepted from an allowed one, after which the cookie is dead.
    let r = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("cookie", &cookie)
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Logout successful");
    let me = app
        .client
        .get(app.url("/api/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_error(me, 401, "unauthorized").await;
}
