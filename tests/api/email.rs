//! Email over real SMTP: verification, recovery, password change, the outbox under failure.

use std::time::{Duration, Instant};

use crate::both_backends;
use crate::helpers::{
    assert_error, eventually, parse, Backend, TestApp, TestAppBuilder, TestUser, WAIT,
};
use crate::responses::Message;
use crate::smtp_sink::{free_port, ReceivedMail, SmtpSink};

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

fn with_mail(backend: Backend) -> TestAppBuilder {
    TestApp::builder(backend).smtp_sink()
}

/// Asks for a reset and returns the token of the email that arrives as mail number `n`.
async fn reset_token(app: &TestApp, email: &str, n: usize) -> String {
    assert_eq!(app.forgot_password(email).await.status(), 200);
    app.email(n).await.token().unwrap()
}

async fn welcome_mail_has_both_parts_and_its_link_verifies(backend: Backend) {
    let app = with_mail(backend).spawn().await;
    let wendy = TestUser::new();
    app.sign_up(&wendy).await;
    app.deliver_all_emails().await;
    let mail = app.email(1).await;
    assert_eq!(mail.to, vec![wendy.email.clone()]);
    assert!(mail.from.contains("no-reply@localhost"), "{}", mail.from);
    assert!(mail.subject().contains("Auth Flow"), "{}", mail.subject());
    let token = mail.token().expect("a token in the link");
    assert_eq!(token.len(), 43);
    assert!(mail
        .text()
        .contains(&format!("/api/auth/verify-email?token={token}")));
    assert!(mail.html().contains(&token));
    assert!(mail.html().contains("Test User"));
    assert!(!mail.text().contains(&wendy.password) && !mail.html().contains(&wendy.password));

    // The delivered email's body, and so its token, is gone from the outbox.
    let dump = app.db.dump().await;
    assert!(dump.contains(&wendy.email));
    assert!(!dump.contains(&token), "a raw token is stored");

    let page = app.open_verification_link(&token).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("Email verified"));
    assert!(app.sign_in(&wendy).await.user.email_verified);

    // Single use: the link opened again says the address is already verified (a mail
    // scanner may have opened it first); the API says invalid_token; a made-up link is a 400 page.
    let again = app.open_verification_link(&token).await;
    assert_eq!(again.status(), 200);
    assert!(again.text().await.unwrap().contains("already verified"));
    let bogus = app.open_verification_link("made-up").await;
    assert_eq!(bogus.status(), 400);
    assert!(bogus.text().await.unwrap().contains("not valid"));
    assert_error(app.verify_email(&token).await, 400, "invalid_token").await;
}

async fn forgot_password_answers_alike_and_mails_only_real_accounts(backend: Backend) {
    let app = with_mail(backend).spawn().await;
    let fiona = TestUser::new();
    app.sign_up(&fiona).await;
    app.wait_for_emails(1).await;

    // The unknown address is asked for first: its (mail-less) work is queued before the
    // known one's, so once the known one's mail is in, the unknown one has had its turn.
    let unknown = app.forgot_password("nobody@example.com").await;
    let known = app.forgot_password(&fiona.email.to_uppercase()).await;
    let known: Message = parse(known, 200).await;
    let unknown: Message = parse(unknown, 200).await;
    assert_eq!(known, unknown);

    let reset = app.email(2).await;
    app.deliver_all_emails().await;
    assert_eq!(app.emails().len(), 2, "only the real account gets mail");
    assert_eq!(reset.to, vec![fiona.email.clone()]);
    assert!(
        reset
            .text()
            .contains("http://127.0.0.1/reset-password?token="),
        "{}",
        reset.text()
    );

    let r = app.forgot_password("not an address").await;
    assert_error(r, 400, "validation_failed").await;
}

async fn reset_revokes_sessions_sends_notice_and_is_single_use(backend: Backend) {
    let app = with_mail(backend).spawn().await;
    let (rosa, tokens) = app.signed_in_user().await;
    app.wait_for_emails(1).await;
    let first = reset_token(&app, &rosa.email, 2).await;
    let second = reset_token(&app, &rosa.email, 3).await;

    // The earlier link stopped working when the later one was sent.
    let r = app.reset_password(&first, NEW_PASSWORD).await;
    assert_error(r, 400, "invalid_token").await;
    // A weak password is refused without using the token up.
    let r = app.reset_password(&second, "password1").await;
    assert_error(r, 400, "validation_failed").await;

    let r = app.reset_password(&second, NEW_PASSWORD).await;
    let body: Message = parse(r, 200).await;
    assert_eq!(body.message, "Password updated successfully!");

    let notice = app.email(4).await;
    assert!(
        notice.subject().to_lowercase().contains("password"),
        "{}",
        notice.subject()
    );
    assert!(!notice.text().contains(NEW_PASSWORD));
    app.assert_signed_out(&tokens.token).await;
    let r = app.try_sign_in(&rosa.username, &rosa.password).await;
    assert_error(r, 401, "invalid_credentials").await;
    app.sign_in_as(&rosa.username, NEW_PASSWORD).await;

    let r = app.reset_password(&second, NEW_PASSWORD).await;
    assert_error(r, 400, "invalid_token").await;
    let r = app.reset_password("made-up", NEW_PASSWORD).await;
    assert_error(r, 400, "invalid_token").await;
}

async fn eight_concurrent_resets_with_one_token_give_one_success(backend: Backend) {
    let app = with_mail(backend).spawn().await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    app.wait_for_emails(1).await;
    let token = reset_token(&app, &user.email, 2).await;
    let passwords: Vec<String> = (0..8).map(|i| format!("{NEW_PASSWORD} {i}")).collect();
    let attempts = passwords.iter().map(|p| app.reset_password(&token, p));
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
    let app = with_mail(backend).spawn().await;
    let ed = TestUser::new();
    app.sign_up(&ed).await;
    let verify = app.email(1).await.token().unwrap();
    let reset = reset_token(&app, &ed.email, 2).await;
    app.db.expire_all("tokens").await;
    let r = app.reset_password(&reset, NEW_PASSWORD).await;
    assert_error(r, 400, "invalid_token").await;
    assert_error(app.verify_email(&verify).await, 400, "invalid_token").await;
}

async fn smtp_down_does_not_block_sign_up_and_mail_arrives_later(backend: Backend) {
    let port = free_port();
    let app = TestApp::builder(backend)
        .env("SMTP_URL", &format!("smtp://127.0.0.1:{port}"))
        .env("MAIL_FIRST_RETRY_SECS", "1")
        .spawn()
        .await;
    let dora = TestUser::new();
    let started = Instant::now();
    app.sign_up(&dora).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sign-up waited for SMTP"
    );
    // Let a delivery fail, then bring SMTP up.
    eventually("a failed delivery", WAIT, || async {
        let failed = app
            .db
            .count("SELECT count(*) FROM email_outbox WHERE attempts >= 1 AND status = 'pending'")
            .await;
        (failed > 0).then_some(())
    })
    .await;
    let sink = SmtpSink::start_on(port).await;
    let mail = sink.wait_for(1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(mail.to, vec![dora.email]);
    assert!(mail.token().is_some());
}

async fn two_workers_on_one_database_deliver_each_mail_once(backend: Backend) {
    let first = with_mail(backend).spawn().await;
    let second = first.twin(backend).spawn().await;
    let twins: Vec<TestUser> = (0..12).map(|_| TestUser::new()).collect();
    let sign_ups = twins.iter().enumerate().map(|(i, twin)| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.try_sign_up(twin)
    });
    for r in futures::future::join_all(sign_ups).await {
        assert_eq!(r.status(), 201);
    }
    first.wait_for_emails(12).await;
    // Once nothing is left to send, no duplicate can come any more.
    first.deliver_all_emails().await;
    let mut recipients: Vec<String> = first.emails().iter().map(|m| m.to.join(",")).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(first.emails().len(), 12);
    assert_eq!(recipients.len(), 12);
}

async fn change_password_keeps_this_session_and_ends_the_others(backend: Backend) {
    let app = with_mail(backend).spawn().await;
    let (cora, this) = app.signed_in_user().await;
    let other = app.sign_in(&cora).await;
    let r = app
        .change_password(&this, "wrong password", NEW_PASSWORD)
        .await;
    assert_error(r, 401, "invalid_credentials").await;
    let r = app
        .change_password(&this, &cora.password, &cora.username)
        .await;
    assert_error(r, 400, "validation_failed").await;
    let r = app
        .change_password(&this, &cora.password, NEW_PASSWORD)
        .await;
    assert_eq!(r.status(), 200);

    app.assert_signed_in(&this.token).await;
    app.assert_signed_out(&other.token).await;
    app.sign_in_as(&cora.username, NEW_PASSWORD).await;
    let notice = app.email(2).await;
    assert!(notice.subject().to_lowercase().contains("password"));
    let r = app
        .post(
            "/api/password/change",
            serde_json::json!({"current_password": cora.password, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_error(r, 401, "unauthorized").await;
}

async fn resend_verification_and_required_verification(backend: Backend) {
    let app = with_mail(backend)
        .env("REQUIRE_EMAIL_VERIFICATION", "true")
        .spawn()
        .await;
    let vera = TestUser::new();
    app.sign_up(&vera).await;
    let first = app.email(1).await.token().unwrap();
    let r = app.try_sign_in(&vera.username, &vera.password).await;
    assert_error(r, 403, "email_not_verified").await;

    let known = app.resend_verification(&vera.email).await;
    let unknown = app.resend_verification("ghost@example.com").await;
    let known: Message = parse(known, 200).await;
    assert_eq!(known, unknown.json::<Message>().await.unwrap());
    let second = app.email(2).await.token().unwrap();
    assert_ne!(first, second);
    // The newer link replaces the older.
    assert_error(app.verify_email(&first).await, 400, "invalid_token").await;
    assert_eq!(app.verify_email(&second).await.status(), 200);
    app.sign_in(&vera).await;
    // Verified: no more verification mail. A reset asked for afterwards is queued after
    // the resend's (mail-less) work: once it is in, the resend has had its turn.
    app.resend_verification(&vera.email).await;
    let reset = reset_mail_after(&app, &vera, 3).await;
    app.deliver_all_emails().await;
    let verifications = app
        .emails()
        .iter()
        .filter(|m| m.text().contains("/api/auth/verify-email?token="))
        .count();
    assert_eq!(verifications, 2);
    assert_eq!(app.emails().len(), 3, "{reset:?}");
}

/// Asks for a reset for `user` and waits for it as mail number `n`.
async fn reset_mail_after(app: &TestApp, user: &TestUser, n: usize) -> ReceivedMail {
    assert_eq!(app.forgot_password(&user.email).await.status(), 200);
    let mail = app.email(n).await;
    assert!(mail.text().contains("/reset-password?token="), "{mail:?}");
    mail
}

async fn development_mailbox_writes_eml_files(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let molly = TestUser::new();
    app.sign_up(&molly).await;
    app.deliver_all_emails().await;
    let mailbox = app.data_dir().join("mail");
    let file = std::fs::read_dir(&mailbox)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "eml"))
        .unwrap_or_else(|| panic!("no .eml file in {}", mailbox.display()));
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains(&molly.username), "{name}");
    let mail = ReceivedMail {
        from: String::new(),
        to: vec![],
        raw: std::fs::read_to_string(&file).unwrap(),
    };
    assert!(mail.token().is_some());
    assert!(!mail.html().is_empty());
}
