//! Security notices (SPEC §13): a sign-in from a new place (through a trusted proxy, located
//! by the ipinfo stand-in) or a new device is emailed once, with a "this wasn't me" link that
//! ends every session, once; an administrator's role change is emailed.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, parse, Backend, TestApp, TestAppBuilder, TestUser};
use crate::ipinfo_standin::IpinfoStandIn;
use crate::responses::{Message, Tokens};

const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";

fn located_app(backend: Backend, ipinfo: &IpinfoStandIn) -> TestAppBuilder {
    TestApp::builder(backend)
        .smtp_sink()
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .env("TOKEN_IP", "test-ipinfo-token")
        .env("IPINFO_URL", &ipinfo.url)
}

async fn sign_in_from(
    app: &TestApp,
    user: &TestUser,
    ip: &str,
    user_agent: Option<&str>,
) -> Tokens {
    let mut req = app
        .client
        .post(app.url("/api/auth/signin"))
        .header("x-forwarded-for", ip)
        .json(&json!({"username": user.username, "password": user.password}));
    if let Some(ua) = user_agent {
        req = req.header("user-agent", ua);
    }
    let tokens = parse(req.send().await.unwrap(), 200).await;
    // The notice is judged once the location is known, in the background.
    delivered(app).await;
    tokens
}

/// Every email queued so far, once delivered and received: the server's own outbox worker may
/// be the one sending one, and the sink holds it only once its SMTP transaction is done.
pub async fn delivered(app: &TestApp) -> Vec<crate::smtp_sink::ReceivedMail> {
    app.deliver_all_emails().await;
    let sent = app
        .db
        .count("SELECT count(*) FROM email_outbox WHERE status = 'sent'")
        .await;
    app.wait_for_emails(usize::try_from(sent).unwrap()).await
}

fn notices(app: &TestApp) -> Vec<crate::smtp_sink::ReceivedMail> {
    app.emails()
        .into_iter()
        .filter(|m| m.subject().contains("New sign-in"))
        .collect()
}

async fn a_new_location_sends_one_notice_and_this_wasnt_me_ends_every_session(backend: Backend) {
    let ipinfo = IpinfoStandIn::start().await;
    let app = located_app(backend, &ipinfo).spawn().await;
    let user = TestUser::new();
    app.sign_up(&user).await;

    // The first sign-in of an account is no news; the same city again neither.
    let first = sign_in_from(&app, &user, "8.8.8.8", None).await;
    let second = sign_in_from(&app, &user, "8.8.4.4", None).await;
    assert!(notices(&app).is_empty());
    assert!(ipinfo.lookups().iter().any(|(ip, _)| ip == "8.8.4.4"));

    // Paris is new: exactly one notice.
    let third = sign_in_from(&app, &user, "81.2.69.142", None).await;
    let fourth = sign_in_from(&app, &user, "81.2.69.160", None).await;
    let sent = notices(&app);
    assert_eq!(
        sent.len(),
        1,
        "{:?}",
        app.emails().iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let notice = &sent[0];
    assert_eq!(notice.to, std::slice::from_ref(&user.email));
    let text = notice.text();
    assert!(text.contains("Paris, Île-de-France, FR"), "{text}");
    assert!(text.contains("81.2.69.142"), "{text}");
    assert!(notice.html().contains("/not-me?token="));
    let token = notice
        .token()
        .expect("the notice has a this-wasn't-me link");

    // The link's page asks before it acts (a mail scanner opening it ends nothing).
    let page = app
        .client
        .get(app.url(&format!("/not-me?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("name=\"token\""));
    app.assert_signed_in(&first.token).await;

    let done: Message = parse(
        app.post("/api/auth/not-me", json!({"token": token})).await,
        200,
    )
    .await;
    assert!(done.message.contains("signed out"));
    for tokens in [&first, &second, &third, &fourth] {
        app.assert_signed_out(&tokens.token).await;
    }
    assert_error(
        app.try_refresh(&fourth.refresh_token).await,
        401,
        "unauthorized",
    )
    .await;
    // Once only.
    assert_error(
        app.post("/api/auth/not-me", json!({"token": token})).await,
        400,
        "invalid_token",
    )
    .await;

    // …and it leads to a password reset.
    let reset = delivered(&app)
        .await
        .into_iter()
        .find(|m| m.subject().contains("Reset your Auth Flow password"))
        .expect("a reset email");
    let reset_token = reset.token().unwrap();
    let r = app
        .reset_password(&reset_token, "another-horse-battery-staple-43")
        .await;
    assert_eq!(r.status(), 200);
}

async fn a_new_device_is_noticed_unless_alerts_are_off(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    sign_in_from(&app, &user, "127.0.0.1", None).await;
    sign_in_from(&app, &user, "127.0.0.1", None).await;
    assert!(notices(&app).is_empty());
    sign_in_from(&app, &user, "127.0.0.1", Some(FIREFOX)).await;
    let sent = notices(&app);
    assert_eq!(sent.len(), 1);
    assert!(sent[0]
        .text()
        .contains("device it has not been signed in from before"));
    // A newer Firefox on the same system is the same device.
    sign_in_from(
        &app,
        &user,
        "127.0.0.1",
        Some(&FIREFOX.replace("133.0", "134.0")),
    )
    .await;
    assert_eq!(notices(&app).len(), 1);

    let quiet = TestApp::builder(backend)
        .smtp_sink()
        .env("NEW_SIGNIN_ALERTS", "off")
        .spawn()
        .await;
    let user = TestUser::new();
    quiet.sign_up(&user).await;
    sign_in_from(&quiet, &user, "127.0.0.1", None).await;
    sign_in_from(&quiet, &user, "127.0.0.1", Some(FIREFOX)).await;
    assert!(notices(&quiet).is_empty());
    assert_eq!(quiet.emails().len(), 1, "only the welcome email");
}

/// A known device is looked for among the 10 latest sign-ins first, then among 200: one used
/// only before the 10 latest is still known; one never used is still new.
async fn a_device_known_from_before_the_latest_sign_ins_is_not_new(backend: Backend) {
    let app = TestApp::builder(backend)
        .smtp_sink()
        .env("RATE_LIMITS", "off")
        .spawn()
        .await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    sign_in_from(&app, &user, "127.0.0.1", Some(FIREFOX)).await;
    for _ in 0..11 {
        sign_in_from(&app, &user, "127.0.0.1", None).await;
    }
    assert_eq!(notices(&app).len(), 1, "the first unknown-agent sign-in");
    sign_in_from(&app, &user, "127.0.0.1", Some(FIREFOX)).await;
    assert_eq!(notices(&app).len(), 1, "Firefox was used 12 sign-ins ago");
    let safari = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/17.0 Safari/605.1.15";
    sign_in_from(&app, &user, "127.0.0.1", Some(safari)).await;
    assert_eq!(notices(&app).len(), 2, "Safari on macOS was never used");
}

async fn a_role_changed_by_an_administrator_is_emailed(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let (_, admin) = app.signed_in_admin().await;
    let (user, tokens) = app.signed_in_user().await;
    let r = app
        .admin(
            &admin,
            Method::PATCH,
            &tokens.user.id,
            "",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Not for a change that is none.
    let r = app
        .admin(
            &admin,
            Method::PATCH,
            &tokens.user.id,
            "",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let changed: Vec<_> = delivered(&app)
        .await
        .into_iter()
        .filter(|m| m.to == [user.email.clone()] && m.subject().contains("administrator changed"))
        .collect();
    assert_eq!(changed.len(), 1);
    assert!(
        changed[0].text().contains("from user to admin"),
        "{}",
        changed[0].text()
    );
}

crate::both_backends!(
    a_new_location_sends_one_notice_and_this_wasnt_me_ends_every_session,
    a_new_device_is_noticed_unless_alerts_are_off,
    a_device_known_from_before_the_latest_sign_ins_is_not_new,
    a_role_changed_by_an_administrator_is_emailed,
);
