//! Create-account, validation, conflicts and the caller's own account.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp, PASSWORD};

both_backends!(
    create_account_returns_the_user_without_internals,
    invalid_fields_are_all_reported,
    weak_passwords_carry_zxcvbn_feedback,
    usernames_and_emails_are_unique_ignoring_case,
    public_sign_up_cannot_create_an_admin,
    concurrent_sign_ups_with_one_email_give_one_account,
    profile_can_be_read_changed_and_deleted,
);

async fn create_account_returns_the_user_without_internals(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let r = app
        .post(
            "/api/users/create-account",
            json!({"name": "  Zoë  O'Brien-Łukasz ", "username": "zoe.obrien", "email": "Zoe@Example.COM",
                   "password": PASSWORD, "phone": "+1 555 0100"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "User registered successfully!");
    let user = &body["user"];
    assert_eq!(user["username"], "zoe.obrien");
    assert_eq!(user["name"], "Zoë O'Brien-Łukasz");
    assert_eq!(user["email"], "zoe@example.com");
    assert_eq!(user["phone"], "+1 555 0100");
    assert_eq!(user["role"], "user");
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["active"], true);
    assert!(user["last_login"].is_null());
    assert_eq!(user["id"].as_str().unwrap().len(), 36);
    let keys: Vec<&String> = user.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(!body.to_string().contains("argon2"));
    // The stored password is an argon2id hash at the documented cost.
    assert!(app
        .db
        .password_hash("zoe.obrien")
        .await
        .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
}

async fn invalid_fields_are_all_reported(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let r = app
        .post(
            "/api/users/create-account",
            json!({"name": "R2-D2 <b>", "username": "ab", "email": "not-an-email", "password": "short", "phone": "call me"}),
        )
        .await;
    let error = assert_error(r, 400, "validation_failed").await;
    let fields: Vec<&str> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for field in ["name", "username", "email", "password", "phone"] {
        assert!(fields.contains(&field), "{field} missing in {fields:?}");
    }
    // Missing fields are validation errors too, not a parse failure.
    let r = app.post("/api/users/create-account", json!({})).await;
    assert_error(r, 400, "validation_failed").await;
}

async fn weak_passwords_carry_zxcvbn_feedback(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for password in ["password123", "maryjane.doe1", "qwertyuiop"] {
        let r = app
            .post(
                "/api/users/create-account",
                json!({"name": "Mary Jane", "username": "maryjane.doe1", "email": "mj@example.com", "password": password}),
            )
            .await;
        let error = assert_error(r, 400, "validation_failed").await;
        let detail = &error["details"][0];
        assert_eq!(detail["field"], "password");
        let message = detail["message"].as_str().unwrap();
        assert!(
            message.starts_with("Password is too easy to guess."),
            "{message}"
        );
    }
}

async fn usernames_and_emails_are_unique_ignoring_case(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("alice.smith", "alice@example.com")
            .await
            .status(),
        201
    );
    let r = app.create_account("ALICE.smith", "other@example.com").await;
    assert_error(r, 409, "username_taken").await;
    let r = app.create_account("alice.jones", "ALICE@example.com").await;
    assert_error(r, 409, "email_taken").await;
}

async fn public_sign_up_cannot_create_an_admin(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let r = app
        .post(
            "/api/users/create-account",
            json!({"name": "Eve", "username": "eve.admin", "email": "eve@example.com", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_error(r, 403, "forbidden").await;
    // And nothing was written.
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "eve.admin", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
    // An explicit "user" role is fine.
    let r = app
        .post(
            "/api/users/create-account",
            json!({"name": "Eve", "username": "eve.user", "email": "eve@example.com", "password": PASSWORD, "role": "user"}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

async fn concurrent_sign_ups_with_one_email_give_one_account(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let requests = (0..10).map(|i| {
        let app = &app;
        async move {
            app.create_account(&format!("racer{i:02}x"), "same@example.com")
                .await
        }
    });
    let responses = futures::future::join_all(requests).await;
    let mut created = 0;
    let mut conflicts = 0;
    for r in responses {
        match r.status().as_u16() {
            201 => created += 1,
            409 => {
                assert_error(r, 409, "email_taken").await;
                conflicts += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, conflicts), (1, 9));
}

async fn profile_can_be_read_changed_and_deleted(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let session = app.signed_in_user("pat.profile").await;
    let token = session["token"].as_str().unwrap();

    let me: Value = app
        .get_with("/api/users/me", token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "pat.profile");
    assert!(me["last_login"].is_string());

    let r = app
        .request(
            Method::PATCH,
            "/api/users/me",
            Some(token),
            Some(json!({"name": "Patricia Profile", "phone": "555 0199"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let changed: Value = r.json().await.unwrap();
    assert_eq!(changed["name"], "Patricia Profile");
    assert_eq!(changed["phone"], "555 0199");
    let r = app
        .request(
            Method::PATCH,
            "/api/users/me",
            Some(token),
            Some(json!({"phone": ""})),
        )
        .await;
    let cleared: Value = r.json().await.unwrap();
    assert!(cleared["phone"].is_null());
    assert_eq!(cleared["name"], "Patricia Profile");
    let r = app
        .request(
            Method::PATCH,
            "/api/users/me",
            Some(token),
            Some(json!({"name": "<script>"})),
        )
        .await;
    assert_error(r, 400, "validation_failed").await;

    // Deleting needs the password.
    let r = app
        .request(
            Method::DELETE,
            "/api/users/me",
            Some(token),
            Some(json!({"password": "wrong password!"})),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
    let r = app
        .request(
            Method::DELETE,
            "/api/users/me",
            Some(token),
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status(), 204);
    // The account and everything of it is gone (its emails' metadata included)…
    assert!(!app.db.dump().await.contains("pat.profile"));
    // …and so are its sessions.
    app.assert_signed_out(token).await;
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "pat.profile", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
}
