//! Email over real SMTP: verification, recovery, password change, the outbox under failure.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp, TestDb, PASSWORD};
use crate::smtp_sink::{free_port, SmtpSink};

const WAIT: Duration = Duration::from_secs(15);
const NEW_PASSWORD: &str = "a brand new passphrase 77";

both_backends!(
    welcome_mail_has_both_parts_and_its_link_verifies,
    forgot_password_answers_alike_and_mails_only_real_accounts,
    reset_revokes_sessions_sends_notice_and_is_single_use,
    eight_concurrent_resets_with_one_token_give_one_success,
    expired_tokens_are_invalid,
    smtp_down_does_not_block_sign_up_and_mail_arrives_later,
    two_workers_on_one_database_deliver_each_mail_once,
    change_password_keeps_this_session_and_ends_the_others,
    resend_verification_and_required_verification,
    development_mailbox_writes_eml_files,
);

async fn app_with_sink(backend: Backend) -> Option<(TestApp, SmtpSink)> {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(backend, &[("SMTP_URL", &sink.url())]).await?;
    Some((app, sink))
}

async fn welcome_mail_has_both_parts_and_its_link_verifies(backend: Backend) {
    let Some((app, sink)) = app_with_sink(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("wendy.welcome", "wendy@example.com")
            .await
            .status(),
        201
    );
    let mail = sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(mail.to, vec!["wendy@example.com".to_owned()]);
    assert!(mail.from.contains("no-reply@localhost"), "{}", mail.from);
    assert!(mail.subject().contains("Auth Flow"), "{}", mail.subject());
    let token = mail.token().expect("a token in the link");
    assert_eq!(token.len(), 43);
    assert!(mail
        .text()
        .contains(&format!("/api/auth/verify-email?token={token}")));
    assert!(mail.html().contains(&token));
    assert!(mail.html().contains("Test User"));
    assert!(!mail.text().contains(PASSWORD) && !mail.html().contains(PASSWORD));

    // The delivered email's body, and so its token, is gone from the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dump = app.db.dump().await;
    assert!(dump.contains("wendy@example.com"));
    assert!(!dump.contains(&token), "a raw token is stored");

    let page = app
        .client
        .get(app.url(&format!("/api/auth/verify-email?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("Email verified"));
    let session = app.sign_in("wendy.welcome", PASSWORD).await;
    assert_eq!(session["user"]["email_verified"], true);

    // Single use: the link opened again says the address is already verified (a mail
    // scanner may have opened it first); the API says invalid_token; a made-up link is a 400 page.
    let again = app
        .client
        .get(app.url(&format!("/api/auth/verify-email?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert!(again.text().await.unwrap().contains("already verified"));
    let bogus = app
        .client
        .get(app.url("/api/auth/verify-email?token=made-up"))
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 400);
    assert!(bogus.text().await.unwrap().contains("not valid"));
    let r = app
        .post("/api/auth/verify-email", json!({"token": token}))
        .await;
    assert_error(r, 400, "invalid_token").await;
}

async fn forgot_password_answers_alike_and_mails_only_real_accounts(backend: Backend) {
    let Some((app, sink)) = app_with_sink(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("fiona.forgot", "fiona@example.com")
            .await
            .status(),
        201
    );
    sink.wait_for(1, WAIT).await;

    let known = app
        .post(
            "/api/password/forgot-password",
            json!({"email": "FIONA@example.com"}),
        )
        .await;
    let unknown = app
        .post(
            "/api/password/forgot-password",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(known.status(), 200);
    assert_eq!(unknown.status(), 200);
    let known: Value = known.json().await.unwrap();
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(known, unknown);

    let mails = sink.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.messages().len(), 2, "only the real account gets mail");
    let reset = &mails[1];
    assert_eq!(reset.to, vec!["fiona@example.com".to_owned()]);
    assert!(
        reset
            .text()
            .contains("http://127.0.0.1/reset-password?token="),
        "{}",
        reset.text()
    );

    let r = app
        .post(
            "/api/password/forgot-password",
            json!({"email": "not an address"}),
        )
        .await;
    assert_error(r, 400, "validation_failed").await;
}

/// Asks for a reset and returns the token of the email that arrives as mail number `n`.
async fn reset_token(app: &TestApp, sink: &SmtpSink, email: &str, n: usize) -> String {
    let r = app
        .post("/api/password/forgot-password", json!({"email": email}))
        .await;
    assert_eq!(r.status(), 200);
    sink.wait_for(n, WAIT).await[n - 1].token().unwrap()
}

async fn reset_revokes_sessions_sends_notice_and_is_single_use(backend: Backend) {
    let Some((app, sink)) = app_with_sink(backend).await else {
        return;
    };
    let session = app.signed_in_user("rosa.reset").await;
    sink.wait_for(1, WAIT).await;
    let first = reset_token(&app, &sink, "rosa.reset@example.com", 2).await;
    let second = reset_token(&app, &sink, "rosa.reset@example.com", 3).await;

    // The earlier link stopped working when the later one was sent.
    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": first, "password": NEW_PASSWORD}),
        )
        .await;
    assert_error(r, 400, "invalid_token").await;
    // A weak password is refused without using the token up.
    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": second, "password": "password1"}),
        )
        .await;
    assert_error(r, 400, "validation_failed").await;

    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": second, "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Password updated successfully!");

    let notice = sink.wait_for(4, WAIT).await.remove(3);
    assert!(
        notice.subject().to_lowercase().contains("password"),
        "{}",
        notice.subject()
    );
    assert!(!notice.text().contains(NEW_PASSWORD));
    app.assert_signed_out(session["token"].as_str().unwrap())
        .await;
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "rosa.reset", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 401, "invalid_credentials").await;
    app.sign_in("rosa.reset", NEW_PASSWORD).await;

    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": second, "password": NEW_PASSWORD}),
        )
        .await;
    assert_error(r, 400, "invalid_token").await;
    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": "made-up", "password": NEW_PASSWORD}),
        )
        .await;
    assert_error(r, 400, "invalid_token").await;
}

async fn eight_concurrent_resets_with_one_token_give_one_success(backend: Backend) {
    let Some((app, sink)) = app_with_sink(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("conc.reset", "conc.reset@example.com")
            .await
            .status(),
        201
    );
    sink.wait_for(1, WAIT).await;
    let token = reset_token(&app, &sink, "conc.reset@example.com", 2).await;
    let attempts = (0..8).map(|i| {
        app.post(
            "/api/password/reset-password",
            json!({"token": token, "password": format!("{NEW_PASSWORD} {i}")}),
        )
    });
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
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        7,
        "{statuses:?}"
    );
}

async fn expired_tokens_are_invalid(backend: Backend) {
    let Some((app, sink)) = app_with_sink(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("ed.expired", "ed@example.com")
            .await
            .status(),
        201
    );
    let verify = sink.wait_for(1, WAIT).await[0].token().unwrap();
    let reset = reset_token(&app, &sink, "ed@example.com", 2).await;
    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    match &app.db {
        TestDb::Postgres(p) => {
            sqlx::query("UPDATE tokens SET expires_at = $1")
                .bind(past.naive_utc())
                .execute(p)
                .await
                .unwrap();
        }
        TestDb::Sqlite(p) => {
            sqlx::query("UPDATE tokens SET expires_at = $1")
                .bind(past)
                .execute(p)
                .await
                .unwrap();
        }
    }
    let r = app
        .post(
            "/api/password/reset-password",
            json!({"token": reset, "password": NEW_PASSWORD}),
        )
        .await;
    assert_error(r, 400, "invalid_token").await;
    let r = app
        .post("/api/auth/verify-email", json!({"token": verify}))
        .await;
    assert_error(r, 400, "invalid_token").await;
}

async fn smtp_down_does_not_block_sign_up_and_mail_arrives_later(backend: Backend) {
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    let Some(app) = TestApp::spawn_with(
        backend,
        &[("SMTP_URL", &url), ("MAIL_FIRST_RETRY_SECS", "1")],
    )
    .await
    else {
        return;
    };
    let started = Instant::now();
    assert_eq!(
        app.create_account("dora.down", "dora@example.com")
            .await
            .status(),
        201
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sign-up waited for SMTP"
    );
    // Let a delivery or two fail, then bring SMTP up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sink = SmtpSink::start_on(port).await;
    let mail = sink.wait_for(1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(mail.to, vec!["dora@example.com".to_owned()]);
    assert!(mail.token().is_some());
}

async fn two_workers_on_one_database_deliver_each_mail_once(backend: Backend) {
    let Some((first, sink)) = app_with_sink(backend).await else {
        return;
    };
    let url = first.database_url();
    let second = TestApp::spawn_on(
        backend,
        &url,
        tempfile::tempdir().unwrap(),
        &[("SMTP_URL", &sink.url())],
    )
    .await
    .unwrap();
    let sign_ups = (0..12).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        async move {
            app.create_account(&format!("twin.{i:02}xx"), &format!("twin{i}@example.com"))
                .await
        }
    });
    for r in futures::future::join_all(sign_ups).await {
        assert_eq!(r.status(), 201);
    }
    sink.wait_for(12, WAIT).await;
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut recipients: Vec<String> = sink.messages().iter().map(|m| m.to.join(",")).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(sink.messages().len(), 12);
    assert_eq!(recipients.len(), 12);
}

async fn change_password_keeps_this_session_and_ends_the_others(backend: Backend) {
    let Some((app, sink)) = app_with_sink(backend).await else {
        return;
    };
    let this = app.signed_in_user("cora.change").await;
    let other = app.sign_in("cora.change", PASSWORD).await;
    let token = this["token"].as_str().unwrap();
    let change = |current: &str, new: &str| {
        app.request(
            Method::POST,
            "/api/password/change",
            Some(token),
            Some(json!({"current_password": current, "new_password": new})),
        )
    };
    assert_error(
        change("wrong password", NEW_PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_error(
        change(PASSWORD, "cora.change").await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(change(PASSWORD, NEW_PASSWORD).await.status(), 200);

    app.assert_signed_in(token).await;
    app.assert_signed_out(other["token"].as_str().unwrap())
        .await;
    app.sign_in("cora.change", NEW_PASSWORD).await;
    let notice = sink.wait_for(2, WAIT).await.remove(1);
    assert!(notice.subject().to_lowercase().contains("password"));
    let r = app
        .post(
            "/api/password/change",
            json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_error(r, 401, "unauthorized").await;
}

async fn resend_verification_and_required_verification(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(app) = TestApp::spawn_with(
        backend,
        &[
            ("SMTP_URL", &sink.url()),
            ("REQUIRE_EMAIL_VERIFICATION", "true"),
        ],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        app.create_account("vera.verify", "vera@example.com")
            .await
            .status(),
        201
    );
    let first = sink.wait_for(1, WAIT).await[0].token().unwrap();
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "vera.verify", "password": PASSWORD}),
        )
        .await;
    assert_error(r, 403, "email_not_verified").await;

    let known = app
        .post(
            "/api/auth/resend-verification",
            json!({"email": "vera@example.com"}),
        )
        .await;
    let unknown = app
        .post(
            "/api/auth/resend-verification",
            json!({"email": "ghost@example.com"}),
        )
        .await;
    assert_eq!(known.status(), 200);
    assert_eq!(
        known.json::<Value>().await.unwrap(),
        unknown.json::<Value>().await.unwrap()
    );
    let second = sink.wait_for(2, WAIT).await[1].token().unwrap();
    assert_ne!(first, second);
    // The newer link replaces the older.
    let r = app
        .post("/api/auth/verify-email", json!({"token": first}))
        .await;
    assert_error(r, 400, "invalid_token").await;
    let r = app
        .post("/api/auth/verify-email", json!({"token": second}))
        .await;
    assert_eq!(r.status(), 200);
    app.sign_in("vera.verify", PASSWORD).await;
    // Verified: no more verification mail.
    app.post(
        "/api/auth/resend-verification",
        json!({"email": "vera@example.com"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.messages().len(), 2);
}

async fn development_mailbox_writes_eml_files(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(
        app.create_account("molly.mailbox", "molly@example.com")
            .await
            .status(),
        201
    );
    let mailbox = app.data_dir().join("mail");
    let deadline = Instant::now() + WAIT;
    let file = loop {
        let found = std::fs::read_dir(&mailbox).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "eml"))
        });
        if let Some(file) = found {
            break file;
        }
        assert!(
            Instant::now() < deadline,
            "no .eml file in {}",
            mailbox.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains("molly"), "{name}");
    let mail = crate::smtp_sink::ReceivedMail {
        from: String::new(),
        to: vec![],
        raw: std::fs::read_to_string(&file).unwrap(),
    };
    assert!(mail.token().is_some());
    assert!(!mail.html().is_empty());
}
