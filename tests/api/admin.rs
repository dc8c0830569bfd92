//! Roles, administration and API keys.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{assert_error, eventually, parse, Backend, TestApp, TestUser, WAIT};
use crate::responses::{CreatedAccount, User, UserList};

both_backends!(
    create_admin_command_creates_and_promotes,
    non_admins_get_403_from_admin_routes_and_admin_scopes,
    admin_read_key_lists_but_cannot_change,
    admins_change_deactivate_and_delete_accounts,
    revoked_keys_inactive_owners_and_changed_roles_are_refused_at_once,
    keys_expire_record_use_and_are_never_stored_in_plain_text,
    write_keys_change_accounts_but_not_roles_nor_their_owner,
);

async fn create_admin_command_creates_and_promotes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let root = TestUser::new();
    let out = app.run_create_admin(&root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let admin = app.sign_in(&root).await;
    assert_eq!(admin.user_id, id);
    assert_eq!(admin.role, "admin");
    assert_eq!(admin.name, "Ada Admin");
    // The operator who ran the command vouches for the address.
    assert!(admin.user.email_verified);

    // An existing account is promoted, keeping its id; its sessions end (the role changed).
    let (plain, tokens) = app.signed_in_user().await;
    let promoted = TestUser {
        password: "ignored".to_owned(),
        ..TestUser::named(&plain.username.to_uppercase()).with_email("ignored@example.com")
    };
    let out = app.run_create_admin(&promoted);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        tokens.user_id
    );
    app.assert_signed_out(&tokens.token).await;
    assert_eq!(app.sign_in(&plain).await.role, "admin");

    // A weak password is refused with the reason, and nothing is created.
    let weak = TestUser {
        password: "password1".to_owned(),
        ..TestUser::new()
    };
    let out = app.run_create_admin(&weak);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
    let r = app.try_sign_in(&weak.username, &weak.password).await;
    assert_error(r, 401, "invalid_credentials").await;

    // An administrator may create administrators through create-account.
    let r = app
        .request(
            Method::POST,
            "/api/users/create-account",
            Some(&admin.token),
            Some(json!({"name": "Second Admin", "username": "second.admin", "email": "second@example.com",
                        "password": root.password, "role": "admin"})),
        )
        .await;
    let created: CreatedAccount = parse(r, 201).await;
    assert_eq!(created.user.role, "admin");
}

async fn non_admins_get_403_from_admin_routes_and_admin_scopes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (user, tokens) = app.signed_in_user().await;
    let target = tokens.user_id.as_str();
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
        let r = app
            .request(method.clone(), &path, Some(&tokens.token), body)
            .await;
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
        .try_create_key(&tokens, json!({"name": "x", "scopes": ["users:read"]}))
        .await;
    assert_error(r, 403, "forbidden").await;
    let r = app
        .try_create_key(&tokens, json!({"name": "x", "scopes": ["everything"]}))
        .await;
    assert_error(r, 400, "validation_failed").await;
    // …and a profile key reads the profile but nothing else, and manages nothing.
    let created = app.create_key(&tokens, json!({"name": "my script"})).await;
    assert_eq!(created.scopes, ["profile:read"]);
    let key = created.key.as_str();
    assert!(key.starts_with("afk_"));
    let me = app.with_key(key, Method::GET, "/api/users/me", None).await;
    assert_eq!(me.status(), 200);
    app.assert_signed_in(key).await;
    let history = app
        .with_key(key, Method::GET, "/api/users/me/login-history", None)
        .await;
    assert_eq!(history.status(), 200);
    assert_error(
        app.with_key(key, Method::GET, "/api/users/users", None)
            .await,
        403,
        "forbidden",
    )
    .await;
    for (method, path, body) in [
        (Method::GET, "/api/keys", None),
        (
            Method::POST,
            "/api/keys",
            Some(json!({"name": "child", "password": user.password})),
        ),
        (
            Method::POST,
            "/api/password/change",
            Some(json!({"current_password": user.password, "new_password": "x y z w v u"})),
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
            Some(json!({"password": user.password})),
        ),
    ] {
        let r = app.with_key(key, method.clone(), path, body).await;
        assert_error(r, 403, "forbidden").await;
    }
    app.assert_signed_in(&tokens.token).await;
}

async fn admin_read_key_lists_but_cannot_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.signed_in_admin().await;
    for name in ["zed.alpha", "zed.beta", "other.gamma"] {
        app.sign_up(&TestUser::named(name)).await;
    }
    let key = app
        .create_key(
            &admin,
            json!({"name": "dashboard", "scopes": ["users:read"]}),
        )
        .await
        .key;
    let list = |query: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            app.with_key(key, Method::GET, &format!("/api/users/users{query}"), None)
                .await
        }
    };

    let page: UserList = parse(list("?page=1&per_page=2").await, 200).await;
    assert_eq!(page.total, 4);
    assert_eq!(page.per_page, 2);
    assert_eq!(page.users.len(), 2);
    let page2: UserList = parse(list("?page=2&per_page=2").await, 200).await;
    assert_eq!(page2.users.len(), 2);
    assert_ne!(page.users[0].id, page2.users[0].id);
    let found: UserList = parse(list("?q=ZED").await, 200).await;
    assert_eq!(found.total, 2);
    let none: UserList = parse(list("?q=%25").await, 200).await;
    assert_eq!(none.total, 0, "% is a character, not a wildcard");
    assert_error(list("?per_page=1000").await, 400, "validation_failed").await;

    let path = format!("/api/admin/users/{}", found.users[0].id);
    let one = app.with_key(&key, Method::GET, &path, None).await;
    assert_eq!(one.status(), 200);
    assert_error(
        app.with_key(&key, Method::GET, "/api/admin/users/nobody", None)
            .await,
        404,
        "not_found",
    )
    .await;
    let r = app
        .with_key(&key, Method::PATCH, &path, Some(json!({"active": false})))
        .await;
    assert_error(r, 403, "forbidden").await;
    let r = app.with_key(&key, Method::DELETE, &path, None).await;
    assert_error(r, 403, "forbidden").await;
    assert_eq!(
        app.with_key(&key, Method::GET, &path, None).await.status(),
        200
    );
}

async fn admins_change_deactivate_and_delete_accounts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.signed_in_admin().await;
    let (user, tokens) = app.signed_in_user().await;
    let id = tokens.user_id.as_str();

    let r = app
        .admin(
            &admin,
            Method::PATCH,
            id,
            "",
            Some(json!({"email_verified": true})),
        )
        .await;
    assert!(parse::<User>(r, 200).await.email_verified);
    app.assert_signed_in(&tokens.token).await;
    let r = app
        .admin(
            &admin,
            Method::PATCH,
            id,
            "",
            Some(json!({"role": "superuser"})),
        )
        .await;
    assert_error(r, 400, "invalid_body").await;

    let r = app
        .admin(&admin, Method::POST, id, "/logout-all", None)
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(&tokens.token).await;

    // An administrator cannot lock themselves out.
    let own = admin.user_id.as_str();
    let r = app
        .admin(
            &admin,
            Method::PATCH,
            own,
            "",
            Some(json!({"role": "user"})),
        )
        .await;
    assert_error(r, 403, "forbidden").await;
    assert_error(
        app.admin(&admin, Method::DELETE, own, "", None).await,
        403,
        "forbidden",
    )
    .await;

    assert_eq!(
        app.admin(&admin, Method::DELETE, id, "", None)
            .await
            .status(),
        204
    );
    assert_error(
        app.admin(&admin, Method::GET, id, "", None).await,
        404,
        "not_found",
    )
    .await;
    let r = app.try_sign_in(&user.username, &user.password).await;
    assert_error(r, 401, "invalid_credentials").await;
}

async fn revoked_keys_inactive_owners_and_changed_roles_are_refused_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.signed_in_admin().await;
    let (_, user) = app.signed_in_user().await;
    let first = app.create_key(&user, json!({"name": "one"})).await;
    let second = app.create_key(&user, json!({"name": "two"})).await;

    // Deleted: refused at once; the other key keeps working.
    assert_eq!(app.delete_key(&user, &first.id).await.status(), 204);
    assert_error(app.profile_with_key(&first.key).await, 401, "unauthorized").await;
    assert_eq!(app.profile_with_key(&second.key).await.status(), 200);
    let r = app.delete_key(&user, &first.id).await;
    assert_error(r, 404, "not_found").await;
    // A made-up secret for a real id is refused.
    let forged = format!("{}_{}", &second.key[..20], "A".repeat(43));
    assert_error(app.profile_with_key(&forged).await, 401, "unauthorized").await;

    // Deactivated owner: sessions and keys refused at once; reactivated: the key works again.
    let set_active = |active: bool| {
        app.admin(
            &admin,
            Method::PATCH,
            &user.user_id,
            "",
            Some(json!({ "active": active })),
        )
    };
    assert_eq!(set_active(false).await.status(), 200);
    app.assert_signed_out(&user.token).await;
    assert_error(app.profile_with_key(&second.key).await, 401, "unauthorized").await;
    assert_eq!(set_active(true).await.status(), 200);
    assert_eq!(app.profile_with_key(&second.key).await.status(), 200);
    app.assert_signed_out(&user.token).await;

    // A role change ends the sessions of that user at once, and a demoted admin's
    // users:* key stops reaching the admin routes.
    let (_, other) = app.signed_in_admin().await;
    let other_key = app
        .create_key(&other, json!({"name": "ops", "scopes": ["users:read"]}))
        .await
        .key;
    assert_eq!(
        app.with_key(&other_key, Method::GET, "/api/users/users", None)
            .await
            .status(),
        200
    );
    let r = app
        .admin(
            &admin,
            Method::PATCH,
            &other.user_id,
            "",
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_signed_out(&other.token).await;
    assert_error(
        app.with_key(&other_key, Method::GET, "/api/users/users", None)
            .await,
        403,
        "forbidden",
    )
    .await;
}

async fn keys_expire_record_use_and_are_never_stored_in_plain_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let created = app
        .create_key(&tokens, json!({"name": "expiring", "expires_in_days": 30}))
        .await;
    let key = created.key.as_str();
    let expires =
        chrono::DateTime::parse_from_rfc3339(created.expires_at.as_deref().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.1).contains(&days), "{days}");
    assert_eq!(app.profile_with_key(key).await.status(), 200);

    // Listed without the secret, with when it was last used (recorded in the background).
    let listed = eventually("the key's use to be recorded", WAIT, || async {
        let keys = app.keys(&tokens).await;
        keys.keys[0].last_used_at.is_some().then_some(keys)
    })
    .await;
    assert_eq!(listed.keys[0].id, created.id);
    assert!(!format!("{listed:?}").contains(&key[21..]));

    let dump = app.db.dump().await;
    assert!(dump.contains(&created.id));
    assert!(
        !dump.contains(key) && !dump.contains(&key[21..]),
        "an API key is stored in plain text"
    );

    app.db.expire_all("api_keys").await;
    assert_error(app.profile_with_key(key).await, 401, "unauthorized").await;
}

async fn write_keys_change_accounts_but_not_roles_nor_their_owner(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.signed_in_admin().await;
    let key = app
        .create_key(&admin, json!({"name": "ops", "scopes": ["users:write"]}))
        .await
        .key;
    let (user, tokens) = app.signed_in_user().await;
    let path = format!("/api/admin/users/{}", tokens.user_id);

    // users:write changes accounts (and reads them)…
    let r = app
        .with_key(
            &key,
            Method::PATCH,
            &path,
            Some(json!({"email_verified": true})),
        )
        .await;
    assert!(parse::<User>(r, 200).await.email_verified);
    assert_eq!(
        app.with_key(&key, Method::GET, &path, None).await.status(),
        200
    );
    let logout_all = format!("{path}/logout-all");
    assert_eq!(
        app.with_key(&key, Method::POST, &logout_all, None)
            .await
            .status(),
        200
    );
    app.assert_signed_out(&tokens.token).await;
    // …but never mints an administrator, and never manages its own owner.
    let r = app
        .with_key(&key, Method::PATCH, &path, Some(json!({"role": "admin"})))
        .await;
    assert_error(r, 403, "forbidden").await;
    assert_eq!(app.sign_in(&user).await.role, "user");
    let own = format!("/api/admin/users/{}", admin.user_id);
    assert_error(
        app.with_key(&key, Method::POST, &format!("{own}/logout-all"), None)
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.with_key(
            &key,
            Method::PATCH,
            &own,
            Some(json!({"email_verified": true})),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    app.assert_signed_in(&admin.token).await;
}
