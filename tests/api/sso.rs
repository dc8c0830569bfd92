//! Social sign-in (SPEC §11) against the fake provider: a real HTTP server in this binary.
//! Each flow is followed by hand, redirect by redirect, by a client that keeps cookies like a
//! browser.

use std::time::Duration;

use reqwest::{Client, Method, Response};
use serde_json::json;

use crate::both_backends;
use crate::fake_provider::{FakeProvider, IdTokenFault, Person};
use crate::helpers::{assert_error, parse, Backend, TestApp, TestUser, ORIGIN};
use crate::responses::{Identities, LinkUrl, Tokens};
use crate::smtp_sink::free_port;

/// Where the front-end of these tests wants the browser back.
fn front_end() -> String {
    format!("{ORIGIN}/auth/done")
}

/// A server with GitHub, Google and a generic OIDC provider `acme`, all played by `fake`.
async fn sso_app(backend: Backend) -> (TestApp, FakeProvider) {
    sso_app_with_limits(backend, "on").await
}

/// [`sso_app`] with `RATE_LIMITS` set to `rate_limits`.
async fn sso_app_with_limits(backend: Backend, rate_limits: &str) -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    let port = free_port().to_string();
    let app = TestApp::builder(backend)
        .env("RATE_LIMITS", rate_limits)
        .env("APP_PORT", &port)
        .env("APP_URL", &format!("http://127.0.0.1:{port}"))
        .env("GITHUB_CLIENT_ID", "gh-client")
        .env("GITHUB_CLIENT_SECRET", "gh-secret")
        .env("GITHUB_URL", &fake.url)
        .env("GITHUB_API_URL", &fake.url)
        .env("GOOGLE_CLIENT_ID", "google-client")
        .env("GOOGLE_CLIENT_SECRET", "google-secret")
        .env("GOOGLE_ISSUER", &fake.url)
        .env("OIDC_PROVIDERS", "acme")
        .env("OIDC_ACME_ISSUER", &fake.url)
        .env("OIDC_ACME_CLIENT_ID", "acme-client")
        .env("OIDC_ACME_CLIENT_SECRET", "acme-secret")
        .smtp_sink()
        .spawn()
        .await;
    (app, fake)
}

/// A browser: keeps cookies, follows nothing by itself.
fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("authflow-tests-browser")
        .build()
        .unwrap()
}

fn location(r: &Response) -> String {
    assert_eq!(r.status(), 302, "expected a redirect from {}", r.url());
    r.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Starts a flow: the provider's authorization URL.
async fn start(b: &Client, app: &TestApp, provider: &str) -> String {
    let to = url::form_urlencoded::byte_serialize(front_end().as_bytes()).collect::<String>();
    let r = b
        .get(app.url(&format!("/api/auth/sso/{provider}?redirect_to={to}")))
        .send()
        .await
        .unwrap();
    location(&r)
}

/// The provider approves: the callback URL it sends the browser to.
async fn approve(b: &Client, authorize_url: &str) -> String {
    location(&b.get(authorize_url).send().await.unwrap())
}

/// Where the browser lands after the provider approves the flow at `authorize_url`.
async fn landing(b: &Client, authorize_url: &str) -> String {
    location(&callback(b, &approve(b, authorize_url).await).await)
}

/// The landing URL carries `name=expected`.
fn assert_param(landed: &str, name: &str, expected: &str) {
    assert_eq!(param(landed, name).as_deref(), Some(expected), "{landed}");
}

/// Where the callback sends the browser.
async fn callback(b: &Client, callback_url: &str) -> Response {
    b.get(callback_url).send().await.unwrap()
}

/// A whole flow in a fresh browser: where the callback sent it (with `code` or `error`).
async fn through(app: &TestApp, provider: &str) -> String {
    let b = browser();
    let authorize = start(&b, app, provider).await;
    landing(&b, &authorize).await
}

async fn try_exchange(app: &TestApp, code: &str) -> Response {
    app.post("/api/auth/sso/exchange", json!({ "code": code }))
        .await
}

/// A whole sign-in: the tokens of the exchanged code.
async fn sign_in_with(app: &TestApp, provider: &str) -> Tokens {
    let landed = through(app, provider).await;
    assert!(landed.starts_with(&front_end()), "{landed}");
    let code = param(&landed, "code").unwrap_or_else(|| panic!("no code: {landed}"));
    parse(try_exchange(app, &code).await, 200).await
}

/// The sign-in refused: the error code the front-end is sent back with.
async fn refused(app: &TestApp, provider: &str) -> String {
    let landed = through(app, provider).await;
    assert!(landed.starts_with(&front_end()), "{landed}");
    assert_eq!(param(&landed, "code"), None, "{landed}");
    param(&landed, "error").unwrap_or_else(|| panic!("no error: {landed}"))
}

async fn identities(app: &TestApp, tokens: &Tokens) -> Vec<String> {
    let list: Identities = parse(
        app.get_with("/api/users/me/identities", &tokens.token)
            .await,
        200,
    )
    .await;
    list.identities.into_iter().map(|i| i.provider).collect()
}

/// `POST /api/auth/sso/{provider}/link` from this browser, with this body.
async fn ask_link(
    b: &Client,
    app: &TestApp,
    tokens: &Tokens,
    provider: &str,
    body: serde_json::Value,
) -> Response {
    b.post(app.url(&format!("/api/auth/sso/{provider}/link")))
        .bearer_auth(&tokens.token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A link started with the right password: the provider's authorization URL.
async fn start_link(
    b: &Client,
    app: &TestApp,
    tokens: &Tokens,
    password: &str,
    provider: &str,
) -> String {
    let body = json!({ "password": password, "redirect_to": front_end() });
    let link: LinkUrl = parse(ask_link(b, app, tokens, provider, body).await, 200).await;
    link.url
}

/// A local account with a password and a verified email, signed in through the API.
async fn verified_user(app: &TestApp) -> (TestUser, Tokens) {
    let (user, tokens) = app.signed_in_user().await;
    verify_email_in_db(app, &user.email).await;
    (user, tokens)
}

async fn verify_email_in_db(app: &TestApp, email: &str) {
    app.db
        .execute(&format!(
            "UPDATE users SET email_verified = TRUE WHERE email = '{email}'"
        ))
        .await;
}

async fn users(app: &TestApp) -> i64 {
    app.db.count("SELECT count(*) FROM users").await
}

both_backends!(
    a_new_user_signs_up_with_github,
    a_new_user_signs_up_with_openid_connect,
    a_returning_user_gets_the_same_account,
    a_verified_local_account_is_linked_and_its_owner_told,
    an_email_the_provider_does_not_verify_never_links_nor_creates,
    an_unverified_local_account_is_never_linked,
    wrong_missing_replayed_or_foreign_state_is_refused,
    a_code_injected_into_another_flow_fails_pkce,
    bad_id_tokens_are_refused,
    redirect_to_must_be_an_allowed_origin,
    the_one_time_code_is_single_use_and_short_lived,
    a_signed_in_user_links_lists_and_unlinks,
    the_last_way_in_cannot_be_unlinked,
    a_deactivated_account_cannot_sign_in_socially,
    with_the_limits_off_a_social_sign_in_is_recorded_once,
    unconfigured_providers_are_not_found,
    social_sign_in_counts_for_the_limits,
    the_pages_sign_in_directly_and_link_from_the_account,
    linking_needs_the_current_password,
    linking_needs_a_verified_email_and_a_password_of_its_own,
    a_link_dies_with_the_session_that_started_it,
    social_sign_in_asks_for_the_second_step_too,
    overlong_provider_data_is_refused_not_stored,
);

async fn a_new_user_signs_up_with_github(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("4242", "Octo@Example.com"));
    let tokens = sign_in_with(&app, "github").await;
    assert_eq!(tokens.user.email, "octo@example.com");
    assert!(
        tokens.user.email_verified,
        "GitHub verified the primary email"
    );
    assert_eq!(tokens.user.username, "login4242");
    app.assert_signed_in(&tokens.token).await;

    // What was sent to the provider: state and PKCE S256, no nonce for plain OAuth.
    let sent = &fake.authorizations()[0].params;
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(sent["client_id"], "gh-client");
    assert!(sent["state"].len() >= 32);
    assert!(!sent.contains_key("nonce"));

    assert_eq!(identities(&app, &tokens).await, ["github"]);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM users WHERE github_id = '4242'")
            .await,
        1,
        "the old github_id column is filled"
    );
    let history = app.login_history(&tokens.token).await;
    assert_eq!(history.entries[0].method.as_deref(), Some("github"));
    assert_eq!(history.entries[0].status, "success");

    // No usable password: any password is refused like a wrong one.
    assert_error(
        app.try_sign_in("login4242", "").await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.try_sign_in("login4242", "!no-password:github").await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_error(
        app.try_sign_in("octo@example.com", crate::helpers::PASSWORD)
            .await,
        401,
        "invalid_credentials",
    )
    .await;
}

async fn a_new_user_signs_up_with_openid_connect(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("google-sub-1", "ada@example.com"));
    let tokens = sign_in_with(&app, "google").await;
    assert_eq!(tokens.user.email, "ada@example.com");
    assert_eq!(identities(&app, &tokens).await, ["google"]);
    let sent = &fake.authorizations()[0].params;
    assert_eq!(sent["code_challenge_method"], "S256");
    assert!(
        sent["scope"].split(' ').any(|s| s == "openid"),
        "{}",
        sent["scope"]
    );
    assert!(sent["nonce"].len() >= 32);

    fake.sign_in_as(Person::new("acme-sub-1", "grace@example.com"));
    let tokens = sign_in_with(&app, "acme").await;
    assert_eq!(identities(&app, &tokens).await, ["oidc:acme"]);
    let history = app.login_history(&tokens.token).await;
    assert_eq!(history.entries[0].method.as_deref(), Some("oidc:acme"));
    assert_eq!(users(&app).await, 2);
}

async fn a_returning_user_gets_the_same_account(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("77", "kim@example.com"));
    let first = sign_in_with(&app, "github").await;
    // The provider's email changed meanwhile: the identity, not the email, finds the account.
    fake.sign_in_as(Person::new("77", "kim.new@example.com"));
    let second = sign_in_with(&app, "github").await;
    assert_eq!(first.user.id, second.user.id);
    assert_ne!(first.session_id(), second.session_id());
    assert_eq!(users(&app).await, 1);
    assert_eq!(app.login_history(&second.token).await.entries.len(), 2);
}

async fn a_verified_local_account_is_linked_and_its_owner_told(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let user = TestUser::new();
    let local = app.sign_up(&user).await;
    verify_email_in_db(&app, &user.email).await;
    app.deliver_all_emails().await;
    let before = app.emails().len();

    fake.sign_in_as(Person::new("9001", &user.email.to_uppercase()));
    let tokens = sign_in_with(&app, "github").await;
    assert_eq!(tokens.user.id, local.id, "linked to the existing account");
    assert_eq!(identities(&app, &tokens).await, ["github"]);
    // The password still works.
    app.sign_in(&user).await;

    app.deliver_all_emails().await;
    let mail = app.email(before + 1).await;
    assert_eq!(mail.to, [user.email.as_str()]);
    assert!(
        mail.subject().contains("new sign-in method"),
        "{}",
        mail.subject()
    );
    assert!(mail.text().contains("GitHub"), "{}", mail.text());
}

async fn an_email_the_provider_does_not_verify_never_links_nor_creates(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    verify_email_in_db(&app, &user.email).await;

    // An account with that email exists: no link (on GitHub and on OIDC).
    fake.sign_in_as(Person::new("666", &user.email).unverified());
    assert_eq!(refused(&app, "github").await, "provider_email_unverified");
    fake.sign_in_as(Person::new("oidc-666", &user.email).unverified());
    assert_eq!(refused(&app, "acme").await, "provider_email_unverified");
    // No account with it: none is created either.
    fake.sign_in_as(Person::new("667", "nobody@example.com").unverified());
    assert_eq!(refused(&app, "github").await, "provider_email_unverified");

    assert_eq!(
        app.db.count("SELECT count(*) FROM user_identities").await,
        0
    );
    assert_eq!(users(&app).await, 1);
}

async fn an_unverified_local_account_is_never_linked(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    // An attacker pre-registers the victim's address and never verifies it.
    let squatter = TestUser::new().with_email("victim@example.com");
    let squatted = app.sign_up(&squatter).await;
    assert!(!squatted.email_verified);

    fake.sign_in_as(Person::new("31337", "victim@example.com"));
    assert_eq!(refused(&app, "github").await, "sign_in_with_password_first");
    fake.sign_in_as(Person::new("g-31337", "victim@example.com"));
    assert_eq!(refused(&app, "google").await, "sign_in_with_password_first");
    assert_eq!(
        app.db.count("SELECT count(*) FROM user_identities").await,
        0
    );
    assert_eq!(users(&app).await, 1);
}

async fn wrong_missing_replayed_or_foreign_state_is_refused(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let b = browser();

    // Wrong state.
    let back = approve(&b, &start(&b, &app, "github").await).await;
    let state = param(&back, "state").unwrap();
    let wrong = back.replace(&state, "not-the-state");
    assert_error(callback(&b, &wrong).await, 400, "invalid_state").await;
    // Missing state.
    let missing = back.replace(&format!("state={state}"), "x=1");
    assert_error(callback(&b, &missing).await, 400, "invalid_state").await;
    // Another browser (the victim's) cannot finish a flow started here.
    assert_error(callback(&browser(), &back).await, 400, "invalid_state").await;
    // A flow is deleted by its first callback: the real one, now, is too late.
    assert_error(callback(&b, &back).await, 400, "invalid_state").await;

    // Replayed: the first callback works, the same URL again fails.
    let b = browser();
    let back = approve(&b, &start(&b, &app, "github").await).await;
    let landed = location(&callback(&b, &back).await);
    assert!(param(&landed, "code").is_some(), "{landed}");
    assert_error(callback(&b, &back).await, 400, "invalid_state").await;

    // Expired: a flow waits 10 minutes at most.
    let b = browser();
    let back = approve(&b, &start(&b, &app, "google").await).await;
    app.advance(Duration::from_secs(601));
    assert_error(callback(&b, &back).await, 400, "invalid_state").await;

    // Only the one good callback reached the provider's token endpoint.
    assert_eq!(fake.token_requests(), 1);
}

async fn a_code_injected_into_another_flow_fails_pkce(backend: Backend) {
    let (app, _fake) = sso_app(backend).await;
    // The attacker's own flow gives them a code bound to their PKCE challenge…
    let attacker = browser();
    let attackers_code = param(
        &approve(&attacker, &start(&attacker, &app, "github").await).await,
        "code",
    )
    .unwrap();
    // …which they slip into the victim's callback (valid state, the victim's browser).
    let victim = browser();
    let back = approve(&victim, &start(&victim, &app, "github").await).await;
    let victims_code = param(&back, "code").unwrap();
    let injected = back.replace(&victims_code, &attackers_code);
    let landed = location(&callback(&victim, &injected).await);
    assert_param(&landed, "error", "provider_refused");
    assert_eq!(param(&landed, "code"), None);
    assert_eq!(users(&app).await, 0);

    // Same on OpenID Connect.
    let attacker = browser();
    let attackers_code = param(
        &approve(&attacker, &start(&attacker, &app, "acme").await).await,
        "code",
    )
    .unwrap();
    let victim = browser();
    let back = approve(&victim, &start(&victim, &app, "acme").await).await;
    let injected = back.replace(&param(&back, "code").unwrap(), &attackers_code);
    let landed = location(&callback(&victim, &injected).await);
    assert_param(&landed, "error", "provider_refused");
    assert_eq!(users(&app).await, 0);
}

async fn bad_id_tokens_are_refused(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    for fault in [
        IdTokenFault::BadSignature,
        IdTokenFault::WrongAudience,
        IdTokenFault::WrongNonce,
        IdTokenFault::Expired,
    ] {
        fake.fault(fault);
        for provider in ["google", "acme"] {
            assert_eq!(
                refused(&app, provider).await,
                "provider_error",
                "{fault:?} on {provider}"
            );
        }
    }
    assert_eq!(users(&app).await, 0);
    // The same provider, answering right, works.
    fake.fault(IdTokenFault::None);
    sign_in_with(&app, "google").await;
    assert_eq!(users(&app).await, 1);
}

async fn redirect_to_must_be_an_allowed_origin(backend: Backend) {
    let (app, _fake) = sso_app(backend).await;
    let b = browser();
    for foreign in [
        "https://evil.example/steal",
        "http://localhost.evil.example:3000/",
        "javascript:alert(1)",
        "//evil.example/",
        "/relative",
        "https://user@localhost:3000/",
    ] {
        let to: String = url::form_urlencoded::byte_serialize(foreign.as_bytes()).collect();
        let r = b
            .get(app.url(&format!("/api/auth/sso/github?redirect_to={to}")))
            .send()
            .await
            .unwrap();
        let e = assert_error(r, 400, "validation_failed").await;
        assert_eq!(e.details[0].field, "redirect_to", "{foreign}");
    }
    // APP_URL itself and an allowed origin are fine.
    for allowed in [app.url("/done"), front_end()] {
        let to: String = url::form_urlencoded::byte_serialize(allowed.as_bytes()).collect();
        let r = b
            .get(app.url(&format!("/api/auth/sso/github?redirect_to={to}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{allowed}");
    }
}

async fn the_one_time_code_is_single_use_and_short_lived(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("5", "five@example.com"));
    let landed = through(&app, "github").await;
    let code = param(&landed, "code").unwrap();
    let _: Tokens = parse(try_exchange(&app, &code).await, 200).await;
    assert_error(try_exchange(&app, &code).await, 400, "invalid_token").await;

    let landed = through(&app, "github").await;
    let code = param(&landed, "code").unwrap();
    app.advance(Duration::from_secs(61));
    assert_error(try_exchange(&app, &code).await, 400, "invalid_token").await;
    assert_error(try_exchange(&app, "made-up").await, 400, "invalid_token").await;
    assert_error(try_exchange(&app, " ").await, 400, "validation_failed").await;
    // Only digests are kept.
    assert!(!app.db.dump().await.contains(&code));
}

async fn a_signed_in_user_links_lists_and_unlinks(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let (user, tokens) = verified_user(&app).await;
    app.deliver_all_emails().await;
    let before = app.emails().len();
    let b = browser();
    let link_url = start_link(&b, &app, &tokens, &user.password, "github").await;
    fake.sign_in_as(Person::new("1234", "someone.else@example.org"));
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "linked", "github");
    assert_eq!(identities(&app, &tokens).await, ["github"]);
    app.deliver_all_emails().await;
    let mail = app.email(before + 1).await;
    assert_eq!(mail.to, [user.email.as_str()]);
    assert!(mail.subject().contains("new sign-in method"));

    // Signing in with that GitHub account now opens this account.
    let social = sign_in_with(&app, "github").await;
    assert_eq!(social.user.id, tokens.user.id);

    // The identity cannot be linked to a second account.
    let (other_user, other) = verified_user(&app).await;
    let b = browser();
    let link_url = start_link(&b, &app, &other, &other_user.password, "github").await;
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "error", "identity_taken");

    // With a password, the only identity can go.
    let r = app
        .request(
            Method::DELETE,
            "/api/users/me/identities/github",
            Some(&tokens.token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);
    assert!(identities(&app, &tokens).await.is_empty());
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM users WHERE github_id IS NOT NULL")
            .await,
        0
    );
    let r = app
        .request(
            Method::DELETE,
            "/api/users/me/identities/github",
            Some(&tokens.token),
            None,
        )
        .await;
    assert_error(r, 404, "not_found").await;
    // Linking needs a signed-in person.
    assert_error(
        app.post(
            "/api/auth/sso/github/link",
            json!({ "password": user.password }),
        )
        .await,
        401,
        "unauthorized",
    )
    .await;
}

async fn the_last_way_in_cannot_be_unlinked(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("808", "solo@example.com"));
    let tokens = sign_in_with(&app, "github").await;
    async fn unlink_from(app: &TestApp, tokens: &Tokens, provider: &str) -> Response {
        let path = format!("/api/users/me/identities/{provider}");
        app.request(Method::DELETE, &path, Some(&tokens.token), None)
            .await
    }
    let unlink = |provider: &'static str| unlink_from(&app, &tokens, provider);
    assert_error(unlink("github").await, 409, "last_sign_in_method").await;

    // Explicit linking needs a password this account does not have…
    let b = browser();
    let r = ask_link(
        &b,
        &app,
        &tokens,
        "acme",
        json!({ "password": "anything at all 1" }),
    )
    .await;
    assert_error(r, 403, "password_not_set").await;
    // …but the same verified email at a second provider links by itself: either may go,
    // but not both.
    fake.sign_in_as(Person::new("acme-808", "solo@example.com"));
    let social = sign_in_with(&app, "acme").await;
    assert_eq!(social.user.id, tokens.user.id);
    assert_eq!(identities(&app, &tokens).await, ["github", "oidc:acme"]);
    assert_eq!(unlink("github").await.status(), 204);
    assert_error(unlink("acme").await, 409, "last_sign_in_method").await;
    assert_eq!(identities(&app, &tokens).await, ["oidc:acme"]);
}

async fn a_deactivated_account_cannot_sign_in_socially(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("13", "gone@example.com"));
    sign_in_with(&app, "github").await;
    app.db
        .execute("UPDATE users SET active = FALSE WHERE email = 'gone@example.com'")
        .await;
    assert_eq!(refused(&app, "github").await, "account_disabled");

    // Deactivated between the callback and the exchange: the code is worth nothing.
    app.db
        .execute("UPDATE users SET active = TRUE WHERE email = 'gone@example.com'")
        .await;
    let code = param(&through(&app, "github").await, "code").unwrap();
    app.db
        .execute("UPDATE users SET active = FALSE WHERE email = 'gone@example.com'")
        .await;
    assert_error(try_exchange(&app, &code).await, 403, "account_disabled").await;
    // The refusals are in the sign-in records, as failures.
    assert!(
        app.db
            .count("SELECT count(*) FROM login_attempts WHERE NOT success")
            .await
            >= 2
    );
}

/// With the failure limits off an attempt is written only when it ends, or when a step
/// keeps its id: the callback hands out a one-time code, so it writes the attempt then, and
/// the exchange ends that same row as a success.
async fn with_the_limits_off_a_social_sign_in_is_recorded_once(backend: Backend) {
    let (app, fake) = sso_app_with_limits(backend, "off").await;
    fake.sign_in_as(Person::new("31", "sol@example.com"));
    let code = param(&through(&app, "github").await, "code").unwrap();
    assert_eq!(app.db.attempts().await, (0, 1));
    let tokens: Tokens = parse(try_exchange(&app, &code).await, 200).await;
    app.me(&tokens).await;
    assert_eq!(app.db.attempts().await, (1, 0));
    assert_eq!(app.login_history(&tokens.token).await.entries.len(), 1);
}

async fn unconfigured_providers_are_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let signin = app
        .request(Method::GET, "/signin", None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !signin.contains("/api/auth/sso/"),
        "no buttons without providers"
    );
    for path in [
        "/api/auth/sso/github",
        "/api/auth/sso/google/callback?state=x&code=y",
        "/api/auth/sso/nope",
    ] {
        assert_error(
            app.request(Method::GET, path, None, None).await,
            404,
            "not_found",
        )
        .await;
    }
    let (_, tokens) = app.signed_in_user().await;
    let r = app
        .request(
            Method::POST,
            "/api/auth/sso/github/link",
            Some(&tokens.token),
            Some(json!({})),
        )
        .await;
    assert_error(r, 404, "not_found").await;
    let list: Identities = parse(
        app.get_with("/api/users/me/identities", &tokens.token)
            .await,
        200,
    )
    .await;
    assert!(list.identities.is_empty());
}

async fn social_sign_in_counts_for_the_limits(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    fake.sign_in_as(Person::new("21", "limited@example.com"));
    let tokens = sign_in_with(&app, "github").await;
    // Five wrong passwords from this address lock the account for this address…
    for _ in 0..5 {
        let r = app
            .try_sign_in(&tokens.user.username, "wrong password 1234")
            .await;
        assert_eq!(r.status(), 401);
    }
    // …for social sign-in too.
    assert_eq!(refused(&app, "github").await, "too_many_requests");
}

async fn page(b: &Client, app: &TestApp, path: &str) -> String {
    let r = b.get(app.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

/// The form's token on a page.
fn csrf_of(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned()
}

async fn the_pages_sign_in_directly_and_link_from_the_account(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let b = browser();
    let signin = page(&b, &app, "/signin").await;
    assert!(
        signin.contains(r#"href="/api/auth/sso/github""#),
        "{signin}"
    );
    assert!(signin.contains("Sign in with Google"));
    assert!(signin.contains("Sign in with acme"));
    assert!(page(&b, &app, "/signup")
        .await
        .contains(r#"id="sso-github""#));

    // The button: no redirect_to, so the pages' flow, which ends signed in on /account (a
    // local account with a password, linked by its verified email).
    let (user, _) = verified_user(&app).await;
    fake.sign_in_as(Person::new("31", &user.email));
    let r = b.get(app.url("/api/auth/sso/github")).send().await.unwrap();
    let back = approve(&b, &location(&r)).await;
    let r = callback(&b, &back).await;
    assert_eq!(location(&r), "/account");
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("auth.sid=") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
    let account = page(&b, &app, "/account").await;
    assert!(account.contains("Linked sign-in methods"), "{account}");
    assert!(account.contains(r#"id="unlink-github""#));
    assert!(account.contains(r#"id="link-acme-password""#), "{account}");
    let csrf = csrf_of(&account);
    let link_form = |password: &str, csrf: &str| {
        b.post(app.url("/account/identities/link"))
            .form(&[("csrf", csrf), ("provider", "acme"), ("password", password)])
            .send()
    };

    // A wrong password, or none, starts nothing.
    for wrong in ["not my password 1", ""] {
        let r = link_form(wrong, &csrf).await.unwrap();
        assert_eq!(r.status(), 303);
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(to.starts_with("/account?sso_error="), "{to}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    assert!(page(&b, &app, "/account?sso_error=invalid_credentials")
        .await
        .contains("That is not your current password"));
    assert_eq!(app.db.count("SELECT count(*) FROM sso_flows").await, 0);
    // Without the page's token the form is refused.
    let r = link_form(&user.password, "forged").await.unwrap();
    assert_eq!(r.status(), 403);
    // The old link (a GET) starts nothing either.
    let r = b
        .get(app.url(&format!("/account/identities/acme/link?csrf={csrf}")))
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_redirection(), "{}", r.status());
    assert_eq!(app.db.count("SELECT count(*) FROM sso_flows").await, 0);

    // The password: a page whose link leads on to the provider (a form's redirect to
    // another origin would break the pages' form-action policy).
    let r = link_form(&user.password, &csrf).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("authflow.sso=")));
    let onward = r.text().await.unwrap();
    assert!(onward.contains("Continue to acme"), "{onward}");
    let to_provider = onward
        .split(r#"<a class="button" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    assert!(to_provider.starts_with(&fake.url), "{to_provider}");
    fake.sign_in_as(Person::new("acme-31", &user.email));
    let back = approve(&b, &to_provider).await;
    let landed = location(&callback(&b, &back).await);
    assert_eq!(landed, "/account?linked=acme");
    let account = page(&b, &app, &landed).await;
    assert!(
        account.contains("The sign-in method is linked."),
        "{account}"
    );
    assert!(account.contains(r#"id="unlink-acme""#));

    // A refusal lands on /signin with the reason in words.
    let b = browser();
    fake.sign_in_as(Person::new("32", "pages@example.com").unverified());
    let r = b.get(app.url("/api/auth/sso/github")).send().await.unwrap();
    let back = approve(&b, &location(&r)).await;
    let landed = location(&callback(&b, &back).await);
    assert_eq!(landed, "/signin?error=provider_email_unverified");
    assert!(page(&b, &app, &landed)
        .await
        .contains("does not say your email address is verified"));
}

/// SPEC §9: a stolen session or token alone cannot add a lasting way in.
async fn linking_needs_the_current_password(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let (user, tokens) = verified_user(&app).await;
    let b = browser();
    let r = ask_link(
        &b,
        &app,
        &tokens,
        "github",
        json!({ "password": "not my password 1", "redirect_to": front_end() }),
    )
    .await;
    assert!(r.headers().get("set-cookie").is_none());
    assert_error(r, 401, "invalid_credentials").await;
    let r = ask_link(
        &b,
        &app,
        &tokens,
        "github",
        json!({ "redirect_to": front_end() }),
    )
    .await;
    assert_error(r, 400, "validation_failed").await;
    let r = ask_link(&b, &app, &tokens, "github", json!({ "password": "" })).await;
    assert_error(r, 400, "validation_failed").await;
    // No flow started, nothing linked, and the wrong password is on record like a sign-in's.
    assert_eq!(app.db.count("SELECT count(*) FROM sso_flows").await, 0);
    assert!(identities(&app, &tokens).await.is_empty());
    assert!(
        app.db
            .count("SELECT count(*) FROM login_attempts WHERE NOT success")
            .await
            >= 1
    );
    // An API key cannot link, even with the password.
    let key = app
        .create_key(&tokens, json!({ "name": "bot", "password": user.password }))
        .await;
    let r = b
        .post(app.url("/api/auth/sso/github/link"))
        .bearer_auth(&key.key)
        .json(&json!({ "password": user.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The right password: the link goes through.
    fake.sign_in_as(Person::new("2001", "mine@example.org"));
    let link_url = start_link(&b, &app, &tokens, &user.password, "github").await;
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "linked", "github");
    assert_eq!(identities(&app, &tokens).await, ["github"]);
}

/// An attacker who pre-registered the victim's email (unverified) cannot link their own
/// provider; an account made by social sign-in must set a password first.
async fn linking_needs_a_verified_email_and_a_password_of_its_own(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let (user, tokens) = app.signed_in_user().await;
    let b = browser();
    let r = ask_link(
        &b,
        &app,
        &tokens,
        "github",
        json!({ "password": user.password, "redirect_to": front_end() }),
    )
    .await;
    assert_error(r, 403, "email_not_verified").await;
    assert_eq!(app.db.count("SELECT count(*) FROM sso_flows").await, 0);

    // Verified after the flow started, then unverified again before the callback: refused.
    verify_email_in_db(&app, &user.email).await;
    let link_url = start_link(&b, &app, &tokens, &user.password, "github").await;
    app.db
        .execute(&format!(
            "UPDATE users SET email_verified = FALSE WHERE email = '{}'",
            user.email
        ))
        .await;
    fake.sign_in_as(Person::new("2002", "attacker@example.org"));
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "error", "email_not_verified");
    assert!(identities(&app, &tokens).await.is_empty());

    // An account without a password (made by social sign-in).
    fake.sign_in_as(Person::new("2003", "social.only@example.com"));
    let social = sign_in_with(&app, "github").await;
    let r = ask_link(
        &b,
        &app,
        &social,
        "acme",
        json!({ "password": "guess it 12345" }),
    )
    .await;
    assert_error(r, 403, "password_not_set").await;
    assert_eq!(identities(&app, &social).await, ["github"]);
}

/// A flow started by a session that is then signed out (logout, a password reset) links
/// nothing at the callback.
async fn a_link_dies_with_the_session_that_started_it(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let (user, tokens) = verified_user(&app).await;
    let linked = |uid: String| {
        let db = &app.db;
        async move {
            db.count(&format!(
                "SELECT count(*) FROM user_identities i JOIN users u ON u.user_db_id = i.user_id \
                 WHERE u.user_uid = '{uid}'"
            ))
            .await
        }
    };

    // Logout between the start and the callback.
    let b = browser();
    let link_url = start_link(&b, &app, &tokens, &user.password, "github").await;
    app.logout(&tokens).await;
    fake.sign_in_as(Person::new("3001", "attacker@example.org"));
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "error", "link_session_ended");
    assert_eq!(linked(tokens.user.id.clone()).await, 0);

    // A password reset between the start and the callback.
    let tokens = app.sign_in(&user).await;
    let b = browser();
    let link_url = start_link(&b, &app, &tokens, &user.password, "github").await;
    app.deliver_all_emails().await;
    let n = app.emails().len();
    assert_eq!(app.forgot_password(&user.email).await.status(), 200);
    let token = app.email(n + 1).await.token().unwrap();
    let r = app.reset_password(&token, "a brand new password 42").await;
    assert_eq!(r.status(), 200);
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "error", "link_session_ended");
    assert_eq!(linked(tokens.user.id.clone()).await, 0);
    // The person, signed in again, links fine.
    let tokens = app
        .sign_in_as(&user.username, "a brand new password 42")
        .await;
    let b = browser();
    let link_url = start_link(&b, &app, &tokens, "a brand new password 42", "github").await;
    let landed = landing(&b, &link_url).await;
    assert_param(&landed, "linked", "github");
    assert_eq!(linked(tokens.user.id.clone()).await, 1);
}

/// A subject or an email longer than their columns is the provider's fault: a clear refusal,
/// never an internal error, and nothing stored.
async fn overlong_provider_data_is_refused_not_stored(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let before = users(&app).await;
    fake.sign_in_as(Person::new(&"s".repeat(300), "long-subject@example.com"));
    assert_eq!(refused(&app, "acme").await, "provider_error");
    let long_email = format!("{}@example.com", "e".repeat(240));
    fake.sign_in_as(Person::new("acme-long-email", &long_email));
    let error = refused(&app, "acme").await;
    assert_ne!(error, "internal_error");
    assert_eq!(users(&app).await, before, "no account made");
}

/// With two-factor on, a social sign-in is a first factor like a password (SPEC §13): the
/// API exchange answers `mfa_required` with no token or cookie, and the pages' flow goes to
/// the second step with the `mfa_token` in a cookie for `/signin/mfa` alone — never a session.
async fn social_sign_in_asks_for_the_second_step_too(backend: Backend) {
    let (app, fake) = sso_app(backend).await;
    let two = app.two_factor_user().await;
    verify_email_in_db(&app, &two.user.email).await;
    fake.sign_in_as(Person::new("41", &two.user.email));

    // The API flow: linked by the verified email, then the second step.
    let landed = through(&app, "github").await;
    let code = param(&landed, "code").unwrap_or_else(|| panic!("no code: {landed}"));
    let r = try_exchange(&app, &code).await;
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no cookie before the second step"
    );
    let answer: crate::responses::MfaRequired = parse(r, 200).await;
    assert!(answer.mfa_required);
    let tokens: Tokens = parse(
        app.mfa_verify(&answer.mfa_token, &app.code_now(&two.secret))
            .await,
        200,
    )
    .await;
    assert_eq!(tokens.user.email, two.user.email);

    // The pages' flow: to the second step, not signed in.
    let b = browser();
    let r = b.get(app.url("/api/auth/sso/github")).send().await.unwrap();
    let back = approve(&b, &location(&r)).await;
    let r = callback(&b, &back).await;
    assert_eq!(location(&r), "/signin/mfa");
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        !cookies.iter().any(|c| c.starts_with("auth.sid=")),
        "a session before the second step: {cookies:?}"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("authflow.mfa=") && c.contains("Path=/signin/mfa")),
        "{cookies:?}"
    );
    let second = page(&b, &app, "/signin/mfa").await;
    assert!(second.contains(r#"name="mfa_token""#), "{second}");
    // The cookie served its one purpose: the page again, without it, is the sign-in page.
    let r = b.get(app.url("/signin/mfa")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = b.get(app.url("/account")).send().await.unwrap();
    assert_eq!(r.status(), 303, "not signed in by the first factor alone");
}

/// The button on `/signin`, clicked in a real Chromium, through the fake provider and back
/// to `/account` signed in; then a second provider linked from the account page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_signs_in_with_github_and_links_acme_in_a_browser() {
    use crate::browser::Browser;
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let (app, fake) = sso_app(Backend::Sqlite).await;
    // A local account with a password and a verified email: GitHub links to it by email.
    let (user, _) = verified_user(&app).await;
    fake.sign_in_as(Person::new("4711", &user.email));
    browser.goto(&app.url("/signin")).await;
    assert_eq!(browser.text("a#sso-github").await, "Sign in with GitHub");
    browser.screenshots("signin-social").await;
    browser.click_and_wait("a#sso-github").await;
    browser.wait_for("section#identities").await;
    assert_eq!(browser.url().await.path(), "/account");
    assert!(browser.cookie("auth.sid").await.is_some());
    assert!(browser.text("section#identities").await.contains("GitHub"));

    fake.sign_in_as(Person::new("acme-4711", &user.email));
    browser.fill("#link-acme-password", &user.password).await;
    browser.click_and_wait("button#link-acme").await;
    assert_eq!(browser.text("h1").await, "Continue to acme");
    browser.click_and_wait("a.button").await;
    browser.wait_for("section#identities p.notice").await;
    let section = browser.text("section#identities").await;
    assert!(
        section.contains("The sign-in method is linked."),
        "{section}"
    );
    assert!(section.contains("acme"), "{section}");
    browser.screenshots("account-identities").await;
    browser.close().await;
}
