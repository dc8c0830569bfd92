//! Create-account, validation, conflicts and the caller's own account.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, parse, Backend, TestApp, TestUser, PASSWORD};
use crate::responses::{CreatedAccount, User};

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
    let app = TestApp::spawn(backend).await;
    let r = app
        .try_sign_up_with(
            json!({"name": "  Zoë  O'Brien-Łukasz ", "username": "zoe.obrien", "email": "Zoe@Example.COM",
                   "password": PASSWORD, "phone": "+1 555 0100"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let keys: Vec<&String> = body["user"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(!body.to_string().contains("argon2"));
    let created: CreatedAccount = serde_json::from_value(body).unwrap();
    assert_eq!(created.message, "User registered successfully!");
    let user = created.user;
    assert_eq!(user.username, "zoe.obrien");
    assert_eq!(user.name, "Zoë O'Brien-Łukasz");
    assert_eq!(user.email, "zoe@example.com");
    assert_eq!(user.phone.as_deref(), Some("+1 555 0100"));
    assert_eq!(user.role, "user");
    assert!(!user.email_verified);
    assert!(user.active);
    assert!(user.last_login.is_none());
    assert_eq!(user.id.len(), 36);
    // The stored password is an argon2id hash at the documented cost.
    assert!(app
        .db
        .password_hash("zoe.obrien")
        .await
        .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
}

async fn invalid_fields_are_all_reported(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .try_sign_up_with(
            json!({"name": "R2-D2 <b>", "username": "ab", "email": "not-an-email", "password": "short", "phone": "call me"}),
        )
        .await;
    let error = assert_error(r, 400, "validation_failed").await;
    let fields = error.fields();
    for field in ["name", "username", "email", "password", "phone"] {
        assert!(fields.contains(&field), "{field} missing in {fields:?}");
    }
    // Missing fields are validation errors too, not a parse failure.
    let r = app.try_sign_up_with(json!({})).await;
    assert_error(r, 400, "validation_failed").await;
}

async fn weak_passwords_carry_zxcvbn_feedback(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for password in ["password123", "maryjane.doe1", "qwertyuiop"] {
        let mary = TestUser {
            password: password.to_owned(),
            name: "Mary Jane".to_owned(),
            ..TestUser::named("maryjane.doe1").with_email("mj@example.com")
        };
        let error = assert_error(app.try_sign_up(&mary).await, 400, "validation_failed").await;
        let detail = &error.details[0];
        assert_eq!(detail.field, "password");
        assert!(
            detail.message.starts_with("Password is too easy to guess."),
            "{}",
            detail.message
        );
    }
}

async fn usernames_and_emails_are_unique_ignoring_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.sign_up(&TestUser::named("alice.smith").with_email("alice@example.com"))
        .await;
    let same_name = TestUser::named("ALICE.smith").with_email("other@example.com");
    assert_error(app.try_sign_up(&same_name).await, 409, "username_taken").await;
    let same_email = TestUser::named("alice.jones").with_email("ALICE@example.com");
    assert_error(app.try_sign_up(&same_email).await, 409, "email_taken").await;
}

async fn public_sign_up_cannot_create_an_admin(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .try_sign_up_with(
            json!({"name": "Eve", "username": "eve.admin", "email": "eve@example.com", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_error(r, 403, "forbidden").await;
    // And nothing was written.
    let r = app.try_sign_in("eve.admin", PASSWORD).await;
    assert_error(r, 401, "invalid_credentials").await;
    // An explicit "user" role is fine.
    let r = app
        .try_sign_up_with(
            json!({"name": "Eve", "username": "eve.user", "email": "eve@example.com", "password": PASSWORD, "role": "user"}),
        )
        .await;
    assert_eq!(r.status(), 201);
}

async fn concurrent_sign_ups_with_one_email_give_one_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let racers: Vec<TestUser> = (0..10)
        .map(|i| TestUser::named(&format!("racer{i:02}x")).with_email("same@example.com"))
        .collect();
    let responses = futures::future::join_all(racers.iter().map(|u| app.try_sign_up(u))).await;
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
    let app = TestApp::spawn(backend).await;
    let (user, tokens) = app.signed_in_user().await;

    let me = app.profile(&tokens).await;
    assert_eq!(me.username, user.username);
    assert!(me.last_login.is_some());

    let changes = json!({"name": "Patricia Profile", "phone": "555 0199"});
    let changed: User = parse(app.update_profile(&tokens, changes).await, 200).await;
    assert_eq!(changed.name, "Patricia Profile");
    assert_eq!(changed.phone.as_deref(), Some("555 0199"));
    let cleared: User = parse(app.update_profile(&tokens, json!({"phone": ""})).await, 200).await;
    assert!(cleared.phone.is_none());
    assert_eq!(cleared.name, "Patricia Profile");
    let r = app
        .update_profile(&tokens, json!({"name": "<script>"}))
        .await;
    assert_error(r, 400, "validation_failed").await;

    // Deleting needs the password.
    let r = app.delete_account(&tokens, "wrong password!").await;
    assert_error(r, 401, "invalid_credentials").await;
    let r = app.delete_account(&tokens, &user.password).await;
    assert_eq!(r.status(), 204);
    // The account and everything of it is gone (its emails' metadata included)…
    assert!(!app.db.dump().await.contains(&user.username));
    // …and so are its sessions.
    app.assert_signed_out(&tokens.token).await;
    let r = app.try_sign_in(&user.username, &user.password).await;
    assert_error(r, 401, "invalid_credentials").await;
}
