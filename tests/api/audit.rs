//! The audit log (SPEC §13): each audited action once, with actor, target and IP; one's own
//! events only; the administrators' list with its filters and pages.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, parse, Backend, TestApp, TestUser};
use crate::responses::{AuditEvent, AuditList, Tokens, TotpSetup};

/// Every request of this story comes through a trusted proxy for this address.
const CLIENT_IP: &str = "203.0.113.9";

impl TestApp {
    async fn as_client(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("x-forwarded-for", CLIENT_IP)
            .json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }
}

fn one<'a>(events: &'a [AuditEvent], kind: &str) -> &'a AuditEvent {
    let found: Vec<_> = events.iter().filter(|e| e.kind == kind).collect();
    assert_eq!(found.len(), 1, "{kind}: {events:#?}");
    found[0]
}

async fn each_audited_action_appears_once_with_actor_target_and_ip(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .env("REFRESH_REUSE_GRACE_SECS", "0")
        .spawn()
        .await;
    let (admin_user, admin) = app.signed_in_admin().await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let me = |password: &str| json!({"username": user.username, "password": password});

    // A failure, then a sign-in.
    let r = app
        .as_client(Method::POST, "/api/auth/signin", None, me("wrong-password"))
        .await;
    assert_eq!(r.status(), 401);
    let tokens: Tokens = parse(
        app.as_client(Method::POST, "/api/auth/signin", None, me(&user.password))
            .await,
        200,
    )
    .await;
    let uid = tokens.user.id.clone();

    // Refresh-token reuse.
    let rotated: Tokens = parse(
        app.as_client(
            Method::POST,
            "/api/auth/refresh",
            None,
            json!({"refresh_token": tokens.refresh_token}),
        )
        .await,
        200,
    )
    .await;
    let r = app
        .as_client(
            Method::POST,
            "/api/auth/refresh",
            None,
            json!({"refresh_token": tokens.refresh_token}),
        )
        .await;
    assert_error(r, 401, "refresh_token_reused").await;
    // That session is gone: sign in again.
    app.assert_signed_out(&rotated.token).await;
    let tokens: Tokens = parse(
        app.as_client(Method::POST, "/api/auth/signin", None, me(&user.password))
            .await,
        200,
    )
    .await;
    let bearer = Some(tokens.token.as_str());

    // A key, created and revoked.
    let key: crate::responses::CreatedKey = parse(
        app.as_client(
            Method::POST,
            "/api/keys",
            bearer,
            json!({"name": "ci", "password": user.password}),
        )
        .await,
        201,
    )
    .await;
    let r = app
        .as_client(
            Method::DELETE,
            &format!("/api/keys/{}", key.id),
            bearer,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);

    // Two-factor on and off.
    let setup: TotpSetup = parse(
        app.as_client(
            Method::POST,
            "/api/auth/mfa/totp/setup",
            bearer,
            json!({"password": user.password}),
        )
        .await,
        200,
    )
    .await;
    let secret = crate::mfa::base32_decode(&setup.secret);
    let r = app
        .as_client(
            Method::POST,
            "/api/auth/mfa/totp/confirm",
            bearer,
            json!({"code": app.code_now(&secret)}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.advance(Duration::from_secs(30));
    let r = app
        .as_client(
            Method::DELETE,
            "/api/auth/mfa/totp",
            bearer,
            json!({"password": user.password, "code": app.code_now(&secret)}),
        )
        .await;
    assert_eq!(r.status(), 200);

    // A password change.
    let new_password = "another-horse-battery-staple-43";
    let r = app
        .as_client(
            Method::POST,
            "/api/password/change",
            bearer,
            json!({"current_password": user.password, "new_password": new_password}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // An administrator changes the role, then deactivates the account.
    let path = format!("/api/admin/users/{uid}");
    let r = app
        .as_client(
            Method::PATCH,
            &path,
            Some(&admin.token),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .as_client(
            Method::PATCH,
            &path,
            Some(&admin.token),
            json!({"active": false}),
        )
        .await;
    assert_eq!(r.status(), 200);

    // A lockout: failures until the limit refuses, then a few more refusals, recorded once.
    let mut failures = 1;
    loop {
        let r = app
            .as_client(Method::POST, "/api/auth/signin", None, me("wrong-password"))
            .await;
        match r.status().as_u16() {
            401 => failures += 1,
            429 => break,
            other => panic!("{other}"),
        }
        assert!(failures <= 7, "the limit never refused");
    }
    for _ in 0..2 {
        let r = app
            .as_client(Method::POST, "/api/auth/signin", None, me("wrong-password"))
            .await;
        assert_eq!(r.status(), 429);
    }

    let audit = app
        .audit_of(&admin.token, &format!("user={uid}&per_page=100"))
        .await;
    let events = &audit.events;
    let admin_id = admin.user.id.as_str();
    for (kind, actor) in [
        ("sign_in_locked", None),
        ("refresh_token_reused", None),
        ("api_key_created", Some(uid.as_str())),
        ("api_key_revoked", Some(uid.as_str())),
        ("mfa_enabled", Some(uid.as_str())),
        ("mfa_disabled", Some(uid.as_str())),
        ("password_changed", Some(uid.as_str())),
        ("role_changed", Some(admin_id)),
        ("account_deactivated", Some(admin_id)),
    ] {
        let e = one(events, kind);
        assert_eq!(e.actor.as_deref(), actor, "{kind}");
        assert_eq!(e.target.as_deref(), Some(uid.as_str()), "{kind}");
        assert_eq!(e.ip.as_deref(), Some(CLIENT_IP), "{kind}");
    }
    let sign_ins: Vec<_> = events.iter().filter(|e| e.kind == "sign_in").collect();
    assert_eq!(sign_ins.len(), 2);
    assert!(sign_ins.iter().all(|e| e.ip.as_deref() == Some(CLIENT_IP)
        && e.actor.as_deref() == Some(uid.as_str())
        && e.target.as_deref() == Some(uid.as_str())));
    let failures_counted = failures;
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "sign_in_failed")
        .collect();
    assert_eq!(failures.len(), failures_counted);
    assert!(failures
        .iter()
        .all(|e| e.actor.is_none() && e.ip.as_deref() == Some(CLIENT_IP)));
    assert_eq!(
        one(events, "role_changed").details,
        json!({"from": "user", "to": "admin"})
    );
    assert_eq!(audit.total, i64::try_from(events.len()).unwrap());
    let _ = admin_user;
}

async fn a_reset_is_audited_with_its_address(backend: Backend) {
    let app = TestApp::builder(backend)
        .smtp_sink()
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .spawn()
        .await;
    let (_, admin) = app.signed_in_admin().await;
    let (user, tokens) = app.signed_in_user().await;
    app.forgot_password(&user.email).await;
    let token = crate::notices::delivered(&app)
        .await
        .iter()
        .rev()
        .find(|m| m.subject().contains("Reset"))
        .and_then(|m| m.token())
        .unwrap();
    let r = app
        .as_client(
            Method::POST,
            "/api/password/reset-password",
            None,
            json!({"token": token, "password": "another-horse-battery-staple-43"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let audit = app
        .audit_of(
            &admin.token,
            &format!("user={}&kind=password_reset", tokens.user.id),
        )
        .await;
    assert_eq!(audit.total, 1);
    assert_eq!(audit.events[0].ip.as_deref(), Some(CLIENT_IP));
}

async fn a_user_sees_only_their_own_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, a_tokens) = app.signed_in_user().await;
    let (b, b_tokens) = app.signed_in_user().await;
    assert_eq!(
        app.try_sign_in(&b.username, "wrong-password")
            .await
            .status(),
        401
    );
    assert_eq!(
        app.try_sign_in(&a.username, "wrong-password")
            .await
            .status(),
        401
    );

    let mine = app.security_events(&a_tokens.token).await;
    assert!(!mine.events.is_empty());
    assert!(mine
        .events
        .iter()
        .all(|e| e.target.as_deref() == Some(a_tokens.user.id.as_str())));
    assert!(mine.events.iter().any(|e| e.kind == "sign_in_failed"));
    let theirs = app.security_events(&b_tokens.token).await;
    assert!(theirs
        .events
        .iter()
        .all(|e| e.target.as_deref() == Some(b_tokens.user.id.as_str())));
    // Newest first.
    assert!(mine.events.windows(2).all(|w| w[0].id > w[1].id));

    // Only administrators read the whole log.
    assert_error(
        app.get_with("/api/admin/audit", &a_tokens.token).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.request(Method::GET, "/api/users/me/security-events", None, None)
            .await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.get_with("/api/users/me/security-events?per_page=0", &a_tokens.token)
            .await,
        400,
        "validation_failed",
    )
    .await;
}

async fn the_admin_list_filters_and_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.signed_in_admin().await;
    let (user, tokens) = app.signed_in_user().await;
    for _ in 0..3 {
        assert_eq!(
            app.try_sign_in(&user.username, "wrong-password")
                .await
                .status(),
            401
        );
    }
    let id = &tokens.user.id;
    let failed = app
        .audit_of(
            &admin.token,
            &format!("user={id}&kind=sign_in_failed&per_page=2"),
        )
        .await;
    assert_eq!(
        (
            failed.total,
            failed.events.len(),
            failed.page,
            failed.per_page
        ),
        (3, 2, 1, 2)
    );
    let second: AuditList = app
        .audit_of(
            &admin.token,
            &format!("user={id}&kind=sign_in_failed&per_page=2&page=2"),
        )
        .await;
    assert_eq!(second.events.len(), 1);
    assert!(second.events[0].id < failed.events[1].id);

    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = app
        .audit_of(&admin.token, &format!("user={id}&from={later}"))
        .await;
    assert_eq!(none.total, 0);
    let all_before = app
        .audit_of(&admin.token, &format!("user={id}&to={later}"))
        .await;
    assert_eq!(all_before.total, 4);
    assert_error(
        app.get_with("/api/admin/audit?from=yesterday", &admin.token)
            .await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.get_with("/api/admin/audit?per_page=101", &admin.token)
            .await,
        400,
        "validation_failed",
    )
    .await;
}

crate::both_backends!(
    each_audited_action_appears_once_with_actor_target_and_ip,
    a_reset_is_audited_with_its_address,
    a_user_sees_only_their_own_events,
    the_admin_list_filters_and_pages,
);
