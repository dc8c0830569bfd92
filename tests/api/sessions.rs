//! Access tokens, refresh rotation, logout and the session list.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp, SECRET};

both_backends!(
    forged_and_stale_access_tokens_are_rejected,
    logout_kills_the_access_token_at_once,
    refresh_rotates_and_a_replay_kills_the_session,
    concurrent_refreshes_of_one_token_let_one_through,
    sessions_are_listed_and_revoked_one_by_one_or_all,
    no_raw_token_is_stored,
);

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sign(alg: Algorithm, key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

async fn forged_and_stale_access_tokens_are_rejected(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let session = app.signed_in_user("jwt.target").await;
    let token = session["token"].as_str().unwrap();
    let claims = claims_of(token);
    for claim in [
        "sub", "sid", "role", "username", "email", "name", "iat", "exp", "iss", "jti",
    ] {
        assert!(!claims[claim].is_null(), "claim {claim} missing");
    }
    assert_eq!(claims["sub"], session["userId"]);

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
    let parts: Vec<&str> = token.split('.').collect();
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
        let r = app.get_with("/api/auth/me", &forged).await;
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
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let session = app.signed_in_user("lou.logout").await;
    let token = session["token"].as_str().unwrap();
    let refresh = session["refresh_token"].as_str().unwrap();
    app.assert_signed_in(token).await;
    let r = app
        .request(Method::POST, "/api/auth/logout", Some(token), None)
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(token).await;
    let r = app
        .post("/api/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_error(r, 401, "unauthorized").await;
}

async fn refresh_rotates_and_a_replay_kills_the_session(backend: Backend) {
    // No grace: the replay below comes at once (hardening.rs covers the grace).
    let Some(app) = TestApp::spawn_with(backend, &[("REFRESH_REUSE_GRACE_SECS", "0")]).await else {
        return;
    };
    let first = app.signed_in_user("rita.refresh").await;
    let r = app
        .post(
            "/api/auth/refresh",
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("auth.sid="));
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["user"]["username"], "rita.refresh");
    assert_eq!(
        claims_of(second["token"].as_str().unwrap())["sid"],
        claims_of(first["token"].as_str().unwrap())["sid"]
    );
    let token = second["token"].as_str().unwrap();
    app.assert_signed_in(token).await;

    // The rotated token presented again: the whole session dies.
    let r = app
        .post(
            "/api/auth/refresh",
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_error(r, 401, "refresh_token_reused").await;
    app.assert_signed_out(token).await;
    let r = app
        .post(
            "/api/auth/refresh",
            json!({"refresh_token": second["refresh_token"]}),
        )
        .await;
    assert_error(r, 401, "unauthorized").await;
    // The session is over now: its tokens, rotated or not, are simply refused.
    let r = app
        .post(
            "/api/auth/refresh",
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_error(r, 401, "unauthorized").await;

    // Unknown and missing tokens.
    let r = app
        .post(
            "/api/auth/refresh",
            json!({"refresh_token": "x".repeat(43)}),
        )
        .await;
    assert_error(r, 401, "unauthorized").await;
    let r = app.post("/api/auth/refresh", json!({})).await;
    assert_error(r, 400, "validation_failed").await;
}

async fn concurrent_refreshes_of_one_token_let_one_through(backend: Backend) {
    // Without the retry grace; with it, each would get its own new token (hardening.rs).
    let Some(app) = TestApp::spawn_with(backend, &[("REFRESH_REUSE_GRACE_SECS", "0")]).await else {
        return;
    };
    let session = app.signed_in_user("conc.refresh").await;
    let refresh = session["refresh_token"].clone();
    let attempts = (0..8).map(|_| app.post("/api/auth/refresh", json!({"refresh_token": refresh})));
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
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let first = app.signed_in_user("sid.sessions").await;
    let second = app.sign_in("sid.sessions", crate::helpers::PASSWORD).await;
    let third = app.sign_in("sid.sessions", crate::helpers::PASSWORD).await;
    let token = first["token"].as_str().unwrap();

    let list: Value = app
        .get_with("/api/auth/sessions", token)
        .await
        .json()
        .await
        .unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], claims_of(token)["sid"]);
    assert_eq!(current[0]["ip"], "127.0.0.1");
    for field in ["created_at", "last_used_at", "user_agent"] {
        assert!(current[0][field].is_string(), "{field}");
    }

    // Revoke the second session by id.
    let second_sid = claims_of(second["token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .request(
            Method::DELETE,
            &format!("/api/auth/sessions/{second_sid}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    app.assert_signed_out(second["token"].as_str().unwrap())
        .await;
    let r = app
        .request(
            Method::DELETE,
            &format!("/api/auth/sessions/{second_sid}"),
            Some(token),
            None,
        )
        .await;
    assert_error(r, 404, "not_found").await;

    // Another user cannot revoke my session.
    let other = app.signed_in_user("oth.sessions").await;
    let first_sid = claims_of(token)["sid"].as_str().unwrap().to_owned();
    let r = app
        .request(
            Method::DELETE,
            &format!("/api/auth/sessions/{first_sid}"),
            other["token"].as_str(),
            None,
        )
        .await;
    assert_error(r, 404, "not_found").await;
    app.assert_signed_in(token).await;

    // Log out everywhere.
    let r = app
        .request(Method::POST, "/api/auth/logout-all", Some(token), None)
        .await;
    assert_eq!(r.status(), 200);
    for t in [&first, &third] {
        app.assert_signed_out(t["token"].as_str().unwrap()).await;
    }
    app.assert_signed_in(other["token"].as_str().unwrap()).await;
}

async fn no_raw_token_is_stored(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let session = app.signed_in_user("dump.check").await;
    let r = app
        .post(
            "/api/auth/refresh",
            json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()["auth.sid=".len()..]
        .to_owned();
    let rotated: Value = r.json().await.unwrap();
    let dump = app.db.dump().await;
    assert!(dump.contains("dump.check"), "the dump sees the data");
    for secret in [
        session["refresh_token"].as_str().unwrap(),
        rotated["refresh_token"].as_str().unwrap(),
        cookie.as_str(),
        rotated["token"].as_str().unwrap(),
        crate::helpers::PASSWORD,
    ] {
        assert!(!dump.contains(secret), "a raw secret is stored");
    }
}
