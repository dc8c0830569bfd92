//! Roles, administration and API keys.

use std::process::Command;

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp, TestDb, PASSWORD};

both_backends!(
    create_admin_command_creates_and_promotes,
    non_admins_get_403_from_admin_routes_and_admin_scopes,
    admin_read_key_lists_but_cannot_change,
    admins_change_deactivate_and_delete_accounts,
    revoked_keys_inactive_owners_and_changed_roles_are_refused_at_once,
    keys_expire_record_use_and_are_never_stored_in_plain_text,
    write_keys_change_accounts_but_not_roles_nor_their_owner,
);

/// Runs `authflow create-admin` against the test's database; its stdout is the id.
fn create_admin(
    app: &TestApp,
    username: &str,
    email: &str,
    password: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_authflow"))
        .args([
            "create-admin",
            "--username",
            username,
            "--email",
            email,
            "--name",
            "Ada Admin",
        ])
        .env_clear()
        .env("DATABASE_URL", app.database_url())
        .env("JWT_SECRET", crate::helpers::SECRET)
        .env("DATA_DIR", app.data_dir())
        .env("ADMIN_PASSWORD", password)
        .output()
        .unwrap()
}

/// An administrator made with the command, signed in: the sign-in answer.
async fn admin_session(app: &TestApp, username: &str) -> Value {
    let out = create_admin(app, username, &format!("{username}@example.com"), PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.sign_in(username, PASSWORD).await
}

async fn with_key(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Response {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("x-api-key", key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn new_key(app: &TestApp, token: &str, mut body: Value) -> Value {
    if body.get("password").is_none() {
        body["password"] = json!(PASSWORD);
    }
    let r = app
        .request(Method::POST, "/api/keys", Some(token), Some(body))
        .await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn create_admin_command_creates_and_promotes(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let out = create_admin(&app, "root.admin", "root@example.com", PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let session = app.sign_in("root.admin", PASSWORD).await;
    assert_eq!(session["userId"], id.as_str());
    assert_eq!(session["role"], "admin");
    assert_eq!(session["name"], "Ada Admin");
    // The operator who ran the command vouches for the address.
    assert_eq!(session["user"]["email_verified"], true);

    // An existing account is promoted, keeping its id; its sessions end (the role changed).
    let user = app.signed_in_user("plain.user").await;
    let out = create_admin(&app, "PLAIN.user", "ignored@example.com", "ignored");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        user["userId"].as_str().unwrap()
    );
    app.assert_signed_out(user["token"].as_str().unwrap()).await;
    assert_eq!(app.sign_in("plain.user", PASSWORD).await["role"], "admin");

    // A weak password is refused with the reason, and nothing is created.
    let out = create_admin(&app, "weak.admin", "weak@example.com", "password1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "weak.admin", "password": "password1"}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;

    // An administrator may create administrators through create-account.
    let r = app
        .request(
            Method::POST,
            "/api/users/create-account",
            session["token"].as_str(),
            Some(json!({"name": "Second Admin", "username": "second.admin", "email": "second@example.com",
                        "password": PASSWORD, "role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["user"]["role"], "admin");
}

async fn non_admins_get_403_from_admin_routes_and_admin_scopes(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.signed_in_user("nosy.user").await;
    let token = user["token"].as_str().unwrap();
    let target = user["userId"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, "/api/users/users".to_owned()),
        (Method::GET, format!("/api/admin/users/{target}")),
        (Method::PATCH, format!("/api/admin/users/{target}")),
        (Method::DELETE, format!("/api/admin/users/{target}")),
        (
            Method::POST,
            format!("/api/admin/users/{target}/logout-all"),
        ),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"role": "admin"}));
        let r = app.request(method.clone(), &path, Some(token), body).await;
        assert_error(r, 403, "forbidden").await;
    }
    assert_error(
        app.get_with("/api/users/users", "").await,
        401,
        "unauthorized",
    )
    .await;
    // A non-admin cannot make an admin-scoped key…
    let r = app
        .request(
            Method::POST,
            "/api/keys",
            Some(token),
            Some(json!({"name": "x", "scopes": ["users:read"], "password": PASSWORD})),
        )
        .await;
    assert_error(r, 403, "forbidden").await;
    let r = app
        .request(
            Method::POST,
            "/api/keys",
            Some(token),
            Some(json!({"name": "x", "scopes": ["everything"], "password": PASSWORD})),
        )
        .await;
    assert_error(r, 400, "validation_failed").await;
    // …and a profile key reads the profile but nothing else, and manages nothing.
    let created = new_key(&app, token, json!({"name": "my script"})).await;
    assert_eq!(created["scopes"], json!(["profile:read"]));
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("afk_"));
    let me = with_key(&app, Method::GET, "/api/users/me", key, None).await;
    assert_eq!(me.status(), 200);
    app.assert_signed_in(key).await;
    assert_eq!(
        with_key(&app, Method::GET, "/api/users/me/login-history", key, None)
            .await
            .status(),
        200
    );
    assert_error(
        with_key(&app, Method::GET, "/api/users/users", key, None).await,
        403,
        "forbidden",
    )
    .await;
    for (method, path, body) in [
        (Method::GET, "/api/keys", None),
        (
            Method::POST,
            "/api/keys",
            Some(json!({"name": "child", "password": PASSWORD})),
        ),
        (
            Method::POST,
            "/api/password/change",
            Some(json!({"current_password": PASSWORD, "new_password": "x y z w v u"})),
        ),
        (Method::POST, "/api/auth/logout", None),
        (Method::POST, "/api/auth/logout-all", None),
        (Method::GET, "/api/auth/sessions", None),
        (
            Method::PATCH,
            "/api/users/me",
            Some(json!({"name": "Hijacked"})),
        ),
        (
            Method::DELETE,
            "/api/users/me",
            Some(json!({"password": PASSWORD})),
        ),
    ] {
        let r = with_key(&app, method.clone(), path, key, body).await;
        assert_error(r, 403, "forbidden").await;
    }
    app.assert_signed_in(token).await;
}

async fn admin_read_key_lists_but_cannot_change(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = admin_session(&app, "read.admin").await;
    for name in ["zed.alpha", "zed.beta", "other.gamma"] {
        assert_eq!(
            app.create_account(name, &format!("{name}@example.com"))
                .await
                .status(),
            201
        );
    }
    let key = new_key(
        &app,
        admin["token"].as_str().unwrap(),
        json!({"name": "dashboard", "scopes": ["users:read"]}),
    )
    .await;
    let key = key["key"].as_str().unwrap();

    let r = with_key(
        &app,
        Method::GET,
        "/api/users/users?page=1&per_page=2",
        key,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["total"], 4);
    assert_eq!(page["per_page"], 2);
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let page2: Value = with_key(
        &app,
        Method::GET,
        "/api/users/users?page=2&per_page=2",
        key,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page2["users"].as_array().unwrap().len(), 2);
    assert_ne!(page["users"][0]["id"], page2["users"][0]["id"]);
    let found: Value = with_key(&app, Method::GET, "/api/users/users?q=ZED", key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["total"], 2);
    let none: Value = with_key(&app, Method::GET, "/api/users/users?q=%25", key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0, "% is a character, not a wildcard");
    assert_error(
        with_key(
            &app,
            Method::GET,
            "/api/users/users?per_page=1000",
            key,
            None,
        )
        .await,
        400,
        "validation_failed",
    )
    .await;

    let target = found["users"][0]["id"].as_str().unwrap().to_owned();
    let one = with_key(
        &app,
        Method::GET,
        &format!("/api/admin/users/{target}"),
        key,
        None,
    )
    .await;
    assert_eq!(one.status(), 200);
    assert_error(
        with_key(&app, Method::GET, "/api/admin/users/nobody", key, None).await,
        404,
        "not_found",
    )
    .await;
    let r = with_key(
        &app,
        Method::PATCH,
        &format!("/api/admin/users/{target}"),
        key,
        Some(json!({"active": false})),
    )
    .await;
    assert_error(r, 403, "forbidden").await;
    let r = with_key(
        &app,
        Method::DELETE,
        &format!("/api/admin/users/{target}"),
        key,
        None,
    )
    .await;
    assert_error(r, 403, "forbidden").await;
    assert_eq!(
        with_key(
            &app,
            Method::GET,
            &format!("/api/admin/users/{target}"),
            key,
            None
        )
        .await
        .status(),
        200
    );
}

async fn admins_change_deactivate_and_delete_accounts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = admin_session(&app, "boss.admin").await;
    let token = admin["token"].as_str().unwrap();
    let user = app.signed_in_user("managed.user").await;
    let id = user["userId"].as_str().unwrap();
    let path = format!("/api/admin/users/{id}");

    let r = app
        .request(
            Method::PATCH,
            &path,
            Some(token),
            Some(json!({"email_verified": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["email_verified"], true);
    app.assert_signed_in(user["token"].as_str().unwrap()).await;
    let r = app
        .request(
            Method::PATCH,
            &path,
            Some(token),
            Some(json!({"role": "superuser"})),
        )
        .await;
    assert_error(r, 400, "invalid_body").await;

    let r = app
        .request(
            Method::POST,
            &format!("{path}/logout-all"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(user["token"].as_str().unwrap()).await;

    // An administrator cannot lock themselves out.
    let own = format!("/api/admin/users/{}", admin["userId"].as_str().unwrap());
    let r = app
        .request(
            Method::PATCH,
            &own,
            Some(token),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_error(r, 403, "forbidden").await;
    assert_error(
        app.request(Method::DELETE, &own, Some(token), None).await,
        403,
        "forbidden",
    )
    .await;

    assert_eq!(
        app.request(Method::DELETE, &path, Some(token), None)
            .await
            .status(),
        204
    );
    assert_error(
        app.request(Method::GET, &path, Some(token), None).await,
        404,
        "not_found",
    )
    .await;
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "managed.user", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
}

async fn revoked_keys_inactive_owners_and_changed_roles_are_refused_at_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = admin_session(&app, "guard.admin").await;
    let admin_token = admin["token"].as_str().unwrap();
    let user = app.signed_in_user("keyed.user").await;
    let user_token = user["token"].as_str().unwrap();
    let first = new_key(&app, user_token, json!({"name": "one"})).await;
    let second = new_key(&app, user_token, json!({"name": "two"})).await;
    let first_key = first["key"].as_str().unwrap();
    let second_key = second["key"].as_str().unwrap();

    // Deleted: refused at once; the other key keeps working.
    let r = app
        .request(
            Method::DELETE,
            &format!("/api/keys/{}", first["id"].as_str().unwrap()),
            Some(user_token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_error(
        with_key(&app, Method::GET, "/api/users/me", first_key, None).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        with_key(&app, Method::GET, "/api/users/me", second_key, None)
            .await
            .status(),
        200
    );
    let r = app
        .request(
            Method::DELETE,
            &format!("/api/keys/{}", first["id"].as_str().unwrap()),
            Some(user_token),
            None,
        )
        .await;
    assert_error(r, 404, "not_found").await;
    // A made-up secret for a real id is refused.
    let forged = format!("{}_{}", &second_key[..20], "A".repeat(43));
    assert_error(
        with_key(&app, Method::GET, "/api/users/me", &forged, None).await,
        401,
        "unauthorized",
    )
    .await;

    // Deactivated owner: sessions and keys refused at once; reactivated: the key works again.
    let path = format!("/api/admin/users/{}", user["userId"].as_str().unwrap());
    let r = app
        .request(
            Method::PATCH,
            &path,
            Some(admin_token),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(user_token).await;
    assert_error(
        with_key(&app, Method::GET, "/api/users/me", second_key, None).await,
        401,
        "unauthorized",
    )
    .await;
    let r = app
        .request(
            Method::PATCH,
            &path,
            Some(admin_token),
            Some(json!({"active": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        with_key(&app, Method::GET, "/api/users/me", second_key, None)
            .await
            .status(),
        200
    );
    app.assert_signed_out(user_token).await;

    // A role change ends the sessions of that user at once, and a demoted admin's
    // users:* key stops reaching the admin routes.
    let other = admin_session(&app, "other.admin").await;
    let other_key = new_key(
        &app,
        other["token"].as_str().unwrap(),
        json!({"name": "ops", "scopes": ["users:read"]}),
    )
    .await;
    let other_key = other_key["key"].as_str().unwrap();
    assert_eq!(
        with_key(&app, Method::GET, "/api/users/users", other_key, None)
            .await
            .status(),
        200
    );
    let r = app
        .request(
            Method::PATCH,
            &format!("/api/admin/users/{}", other["userId"].as_str().unwrap()),
            Some(admin_token),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(other["token"].as_str().unwrap())
        .await;
    assert_error(
        with_key(&app, Method::GET, "/api/users/users", other_key, None).await,
        403,
        "forbidden",
    )
    .await;
}

async fn keys_expire_record_use_and_are_never_stored_in_plain_text(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let user = app.signed_in_user("key.keeper").await;
    let token = user["token"].as_str().unwrap();
    let created = new_key(
        &app,
        token,
        json!({"name": "expiring", "expires_in_days": 30}),
    )
    .await;
    let key = created["key"].as_str().unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.1).contains(&days), "{days}");
    assert_eq!(
        with_key(&app, Method::GET, "/api/users/me", key, None)
            .await
            .status(),
        200
    );

    // Listed without the secret, with when it was last used (recorded in the background).
    let mut listed = Value::Null;
    for _ in 0..50 {
        listed = app.get_with("/api/keys", token).await.json().await.unwrap();
        if listed["keys"][0]["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed["keys"][0]["id"], created["id"]);
    assert!(listed["keys"][0]["last_used_at"].is_string(), "{listed}");
    assert!(!listed.to_string().contains(&key[21..]));

    let dump = app.db.dump().await;
    assert!(dump.contains(created["id"].as_str().unwrap()));
    assert!(
        !dump.contains(key) && !dump.contains(&key[21..]),
        "an API key is stored in plain text"
    );

    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    match &app.db {
        TestDb::Postgres(p) => sqlx::query("UPDATE api_keys SET expires_at = $1")
            .bind(past)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
        TestDb::Sqlite(p) => sqlx::query("UPDATE api_keys SET expires_at = $1")
            .bind(past)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
    }
    assert_error(
        with_key(&app, Method::GET, "/api/users/me", key, None).await,
        401,
        "unauthorized",
    )
    .await;
}

async fn write_keys_change_accounts_but_not_roles_nor_their_owner(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = admin_session(&app, "write.admin").await;
    let key = new_key(
        &app,
        admin["token"].as_str().unwrap(),
        json!({"name": "ops", "scopes": ["users:write"]}),
    )
    .await;
    let key = key["key"].as_str().unwrap();
    let user = app.signed_in_user("written.user").await;
    let path = format!("/api/admin/users/{}", user["userId"].as_str().unwrap());

    // users:write changes accounts (and reads them)…
    let r = with_key(
        &app,
        Method::PATCH,
        &path,
        key,
        Some(json!({"email_verified": true})),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["email_verified"], true);
    assert_eq!(
        with_key(&app, Method::GET, &path, key, None).await.status(),
        200
    );
    assert_eq!(
        with_key(&app, Method::POST, &format!("{path}/logout-all"), key, None)
            .await
            .status(),
        200
    );
    app.assert_signed_out(user["token"].as_str().unwrap()).await;
    // …but never mints an administrator, and never manages its own owner.
    let r = with_key(
        &app,
        Method::PATCH,
        &path,
        key,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_error(r, 403, "forbidden").await;
    assert_eq!(app.sign_in("written.user", PASSWORD).await["role"], "user");
    let own = format!("/api/admin/users/{}", admin["userId"].as_str().unwrap());
    assert_error(
        with_key(&app, Method::POST, &format!("{own}/logout-all"), key, None).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        with_key(
            &app,
            Method::PATCH,
            &own,
            key,
            Some(json!({"email_verified": true})),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    app.assert_signed_in(admin["token"].as_str().unwrap()).await;
}
