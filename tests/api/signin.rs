//! Sign-in: identifiers, uniform failures, cookies and the Origin rule.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{assert_error, parse, Backend, TestApp, TestUser, ORIGIN};
use crate::responses::{Message, Tokens, User};

both_backends!(
    sign_in_answers_with_tokens_cookie_and_the_old_fields,
    sign_in_accepts_username_or_email_in_any_case,
    every_failure_is_the_same_invalid_credentials,
    unverified_email_is_refused_when_verification_is_required,
    cookie_authenticates_and_state_changes_need_an_allowed_origin,
);

async fn sign_in_answers_with_tokens_cookie_and_the_old_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let sam = TestUser::new();
    app.sign_up(&sam).await;
    let r = app.try_sign_in(&sam.username, &sam.password).await;
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
    let tokens: Tokens = r.json().await.unwrap();
    assert_eq!(tokens.message, "Login successful!");
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 3600);
    assert_eq!(tokens.refresh_token.len(), 43);
    assert_eq!(tokens.user_id, tokens.user.id);
    assert_eq!(tokens.username, sam.username);
    assert_eq!(tokens.email, sam.email);
    assert_eq!(tokens.name, "Test User");
    assert_eq!(tokens.role, "user");
    assert!(tokens.user.last_login.is_some());

    assert_eq!(app.me(&tokens).await.id, tokens.user_id);
}

async fn sign_in_accepts_username_or_email_in_any_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let person = TestUser::named("Case.Person").with_email("case@example.com");
    app.sign_up(&person).await;
    for body in [
        json!({"username": "case.person", "password": person.password}),
        json!({"username": "CASE@EXAMPLE.COM", "password": person.password}),
        json!({"email": "case@example.com", "password": person.password}),
    ] {
        let r = app.try_sign_in_with(body.clone()).await;
        assert_eq!(r.status(), 200, "{body}");
    }
    let r = app
        .try_sign_in_with(json!({"password": person.password}))
        .await;
    assert_error(r, 400, "validation_failed").await;
}

async fn every_failure_is_the_same_invalid_credentials(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let real = TestUser::new();
    let gone = TestUser::new();
    app.sign_up(&real).await;
    app.sign_up(&gone).await;
    app.db
        .execute(&format!(
            "UPDATE users SET active = FALSE WHERE username = '{}'",
            gone.username
        ))
        .await;
    let mut messages = Vec::new();
    for (username, password) in [
        (real.username.as_str(), "not the password"),
        ("nobody.here", real.password.as_str()),
        (gone.username.as_str(), gone.password.as_str()),
    ] {
        let r = app.try_sign_in(username, password).await;
        let error = assert_error(r, 401, "invalid_credentials").await;
        messages.push(error.message);
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
}

async fn unverified_email_is_refused_when_verification_is_required(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("REQUIRE_EMAIL_VERIFICATION", "true")
        .spawn()
        .await;
    let unverified = TestUser::new();
    app.sign_up(&unverified).await;
    let r = app
        .try_sign_in(&unverified.username, &unverified.password)
        .await;
    assert_error(r, 403, "email_not_verified").await;
    // The wrong password still says nothing about the account's state.
    let r = app
        .try_sign_in(&unverified.username, "wrong password")
        .await;
    assert_error(r, 401, "invalid_credentials").await;
}

async fn cookie_authenticates_and_state_changes_need_an_allowed_origin(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let r = app.try_sign_in(&user.username, &user.password).await;
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let me = app
        .client
        .get(app.url("/api/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let me: User = parse(me, 200).await;
    assert_eq!(me.username, user.username);

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
    let body: Message = r.json().await.unwrap();
    assert_eq!(body.message, "Logout successful");
    let me = app
        .client
        .get(app.url("/api/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_error(me, 401, "unauthorized").await;
}
