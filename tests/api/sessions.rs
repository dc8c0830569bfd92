//! Access tokens, refresh rotation, logout and the session list.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp, PASSWORD, SECRET};
use crate::responses::Tokens;

both_backends!(
    forged_and_stale_access_tokens_are_rejected,
    logout_kills_the_access_token_at_once,
    refresh_rotates_and_a_replay_kills_the_session,
    concurrent_refreshes_of_one_token_let_one_through,
    sessions_are_listed_and_revoked_one_by_one_or_all,
    no_raw_token_is_stored,
);

fn sign(alg: Algorithm, key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

async fn forged_and_stale_access_tokens_are_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let claims = tokens.claims();
    for claim in [
        "sub", "sid", "role", "username", "email", "name", "iat", "exp", "iss", "jti",
    ] {
        assert!(!claims[claim].is_null(), "claim {claim} missing");
    }
    assert_eq!(claims["sub"], tokens.user_id.as_str());

    // A token signed exactly as ours is accepted: the forgeries below differ in one thing.
    let resigned = sign(Algorithm::HS256, SECRET, &claims);
    app.assert_signed_in(&resigned).await;

    let mut expired = claims.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 10);
    let mut foreign_issuer = claims.clone();
    foreign_issuer["iss"] = json!("https://evil.example");
    let mut admin = claims.clone();
    admin["role"] = json!("admin");
    let header_none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let parts: Vec<&str> = tokens.token.split('.').collect();
    let forgeries = [
        ("alg none", format!("{header_none}.{body}.")),
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                "another-key-another-key-another-key!!",
                &claims,
            ),
        ),
        ("HS512", sign(Algorithm::HS512, SECRET, &claims)),
        ("expired", sign(Algorithm::HS256, SECRET, &expired)),
        ("wrong iss", sign(Algorithm::HS256, SECRET, &foreign_issuer)),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(admin.to_string()),
                parts[2]
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, forged) in forgeries {
        let r = app.try_me(&forged).await;
        assert_eq!(r.status(), 401, "{what} was accepted");
        // Only a genuine token past its `exp` is "expired"; anything forged is just bad.
        let code = if what == "expired" {
            "token_expired"
        } else {
            "unauthorized"
        };
        assert_error(r, 401, code).await;
    }
    let r = app
        .client
        .get(app.url("/api/auth/me"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    assert_error(
        app.client
            .get(app.url("/api/auth/me"))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

async fn logout_kills_the_access_token_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    app.assert_signed_in(&tokens.token).await;
    app.logout(&tokens).await;
    app.assert_signed_out(&tokens.token).await;
    let r = app.try_refresh(&tokens.refresh_token).await;
    assert_error(r, 401, "unauthorized").await;
}

async fn refresh_rotates_and_a_replay_kills_the_session(backend: Backend) {
    // No grace: the replay below comes at once (hardening.rs covers the grace).
    let app = TestApp::builder(backend)
        .env("REFRESH_REUSE_GRACE_SECS", "0")
        .spawn()
        .await;
    let (user, first) = app.signed_in_user().await;
    let r = app.try_refresh(&first.refresh_token).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("auth.sid="));
    let second: Tokens = r.json().await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.user.username, user.username);
    assert_eq!(second.session_id(), first.session_id());
    app.assert_signed_in(&second.token).await;

    // The rotated token presented again: the whole session dies.
    let r = app.try_refresh(&first.refresh_token).await;
    assert_error(r, 401, "refresh_token_reused").await;
    app.assert_signed_out(&second.token).await;
    let r = app.try_refresh(&second.refresh_token).await;
    assert_error(r, 401, "unauthorized").await;
    // The session is over now: its tokens, rotated or not, are simply refused.
    let r = app.try_refresh(&first.refresh_token).await;
    assert_error(r, 401, "unauthorized").await;

    // Unknown and missing tokens.
    let r = app.try_refresh(&"x".repeat(43)).await;
    assert_error(r, 401, "unauthorized").await;
    let r = app.post("/api/auth/refresh", json!({})).await;
    assert_error(r, 400, "validation_failed").await;
}

async fn concurrent_refreshes_of_one_token_let_one_through(backend: Backend) {
    // Without the retry grace; with it, each would get its own new token (hardening.rs).
    let app = TestApp::builder(backend)
        .env("REFRESH_REUSE_GRACE_SECS", "0")
        .spawn()
        .await;
    let (_, tokens) = app.signed_in_user().await;
    let attempts = (0..8).map(|_| app.try_refresh(&tokens.refresh_token));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );
}

async fn sessions_are_listed_and_revoked_one_by_one_or_all(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (user, first) = app.signed_in_user().await;
    let second = app.sign_in(&user).await;
    let third = app.sign_in(&user).await;

    let sessions = app.sessions(&first).await.sessions;
    assert_eq!(sessions.len(), 3);
    let current: Vec<_> = sessions.iter().filter(|s| s.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].id, first.session_id());
    assert_eq!(current[0].ip.as_deref(), Some("127.0.0.1"));
    // created_at and last_used_at are always there; so is the user agent here.
    assert!(current[0].user_agent.is_some(), "user_agent");

    // Revoke the second session by id.
    let r = app.revoke_session(&first, &second.session_id()).await;
    assert_eq!(r.status(), 204);
    app.assert_signed_out(&second.token).await;
    let r = app.revoke_session(&first, &second.session_id()).await;
    assert_error(r, 404, "not_found").await;

    // Another user cannot revoke my session.
    let (_, other) = app.signed_in_user().await;
    let r = app.revoke_session(&other, &first.session_id()).await;
    assert_error(r, 404, "not_found").await;
    app.assert_signed_in(&first.token).await;

    // Log out everywhere.
    app.logout_all(&first).await;
    for tokens in [&first, &third] {
        app.assert_signed_out(&tokens.token).await;
    }
    app.assert_signed_in(&other.token).await;
}

async fn no_raw_token_is_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
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
    let dump = app.db.dump().await;
    assert!(dump.contains(&user.username), "the dump sees the data");
    for secret in [
        tokens.refresh_token.as_str(),
        rotated.refresh_token.as_str(),
        cookie.as_str(),
        rotated.token.as_str(),
        PASSWORD,
    ] {
        assert!(!dump.contains(secret), "a raw secret is stored");
    }
}
