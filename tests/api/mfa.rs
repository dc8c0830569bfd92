//! Two-factor authentication (SPEC §13): codes computed here from the secret, by the test's
//! own RFC 6238 (checked against the RFC's vectors), never by the service's code.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::{Method, Response};
use serde_json::json;

use crate::helpers::{assert_error, parse, Backend, TestApp, TestUser};
use crate::responses::{AuditList, Message, MfaRequired, RecoveryCodes, Tokens, TotpSetup};

/// RFC 4648 base32 (no padding), as in `otpauth://` URLs.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for c in text.trim_end_matches('=').chars() {
        let value = ALPHABET.find(c.to_ascii_uppercase()).expect("base32") as u64;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// RFC 6238 with HMAC-SHA-1: the `digits`-long code of `secret` at Unix time `at`.
pub fn totp(secret: &[u8], at: i64, digits: u32) -> String {
    let counter = (at / 30) as u64;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[o]) & 0x7f) << 24
        | u32::from(h[o + 1]) << 16
        | u32::from(h[o + 2]) << 8
        | u32::from(h[o + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

#[test]
fn the_tests_totp_matches_rfc6238_appendix_b() {
    let secret = b"12345678901234567890";
    for (at, code) in [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(totp(secret, at, 8), code, "at {at}");
    }
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), secret);
}

/// A user with two-factor on: the secret (raw) and the recovery codes.
pub struct TwoFactorUser {
    pub user: TestUser,
    pub tokens: Tokens,
    pub secret: Vec<u8>,
    pub recovery_codes: Vec<String>,
}

impl TestApp {
    pub async fn mfa_setup(&self, tokens: &Tokens, password: &str) -> Response {
        self.request(
            Method::POST,
            "/api/auth/mfa/totp/setup",
            Some(&tokens.token),
            Some(json!({ "password": password })),
        )
        .await
    }

    pub async fn mfa_confirm(&self, tokens: &Tokens, code: &str) -> Response {
        self.request(
            Method::POST,
            "/api/auth/mfa/totp/confirm",
            Some(&tokens.token),
            Some(json!({ "code": code })),
        )
        .await
    }

    pub async fn mfa_disable(&self, tokens: &Tokens, password: &str, code: &str) -> Response {
        self.request(
            Method::DELETE,
            "/api/auth/mfa/totp",
            Some(&tokens.token),
            Some(json!({ "password": password, "code": code })),
        )
        .await
    }

    pub async fn mfa_verify(&self, mfa_token: &str, code: &str) -> Response {
        self.post(
            "/api/auth/mfa/verify",
            json!({ "mfa_token": mfa_token, "code": code }),
        )
        .await
    }

    /// The current code of `secret` by the server's clock.
    pub fn code_now(&self, secret: &[u8]) -> String {
        totp(secret, self.server_now(), 6)
    }

    /// Sign-in of a two-factor user: the first step's answer.
    pub async fn first_step(&self, user: &TestUser) -> MfaRequired {
        let r = self.try_sign_in(&user.username, &user.password).await;
        assert!(
            r.headers().get("set-cookie").is_none(),
            "no cookie before the second step"
        );
        let answer: MfaRequired = parse(r, 200).await;
        assert!(answer.mfa_required);
        assert_eq!(answer.methods, ["totp", "recovery_code"]);
        answer
    }

    /// A new user who turned two-factor on; the clock is then moved past the step of the
    /// confirming code (which counts as used).
    pub async fn two_factor_user(&self) -> TwoFactorUser {
        let (user, tokens) = self.signed_in_user().await;
        let setup: TotpSetup = parse(self.mfa_setup(&tokens, &user.password).await, 200).await;
        let secret = base32_decode(&setup.secret);
        let codes: RecoveryCodes = parse(
            self.mfa_confirm(&tokens, &self.code_now(&secret)).await,
            200,
        )
        .await;
        self.advance(Duration::from_secs(30));
        TwoFactorUser {
            user,
            tokens,
            secret,
            recovery_codes: codes.recovery_codes,
        }
    }

    pub async fn audit_of(&self, token: &str, query: &str) -> AuditList {
        parse(
            self.get_with(&format!("/api/admin/audit?{query}"), token)
                .await,
            200,
        )
        .await
    }

    pub async fn security_events(&self, token: &str) -> AuditList {
        parse(
            self.get_with("/api/users/me/security-events", token).await,
            200,
        )
        .await
    }
}

async fn setup_confirm_and_sign_in_with_the_second_step(backend: Backend) {
    // Room for the wrong codes this story tries (they count as failed sign-ins).
    let app = TestApp::builder(backend)
        .smtp_sink()
        .env("LOGIN_MAX_FAILURES", "20")
        .spawn()
        .await;
    let (user, tokens) = app.signed_in_user().await;

    assert_error(
        app.mfa_setup(&tokens, "not-the-password").await,
        401,
        "invalid_credentials",
    )
    .await;
    let setup: TotpSetup = parse(app.mfa_setup(&tokens, &user.password).await, 200).await;
    assert!(setup.otpauth_url.starts_with("otpauth://totp/Auth%20Flow:"));
    assert!(setup
        .otpauth_url
        .contains(&format!("secret={}", setup.secret)));
    let secret = base32_decode(&setup.secret);
    assert_eq!(secret.len(), 20);

    // Not in force before it is confirmed.
    app.sign_in(&user).await;
    let wrong = format!(
        "{:06}",
        (app.code_now(&secret).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    assert_error(
        app.mfa_confirm(&tokens, &wrong).await,
        400,
        "validation_failed",
    )
    .await;
    let confirming = app.code_now(&secret);
    let codes: RecoveryCodes = parse(app.mfa_confirm(&tokens, &confirming).await, 200).await;
    assert_eq!(codes.recovery_codes.len(), 10);
    let unique: std::collections::HashSet<_> = codes.recovery_codes.iter().collect();
    assert_eq!(unique.len(), 10);
    // Confirmed once: a second confirmation has nothing to confirm.
    assert_error(
        app.mfa_confirm(&tokens, &confirming).await,
        400,
        "validation_failed",
    )
    .await;
    // And setting up again is refused while it is on.
    assert_error(
        app.mfa_setup(&tokens, &user.password).await,
        403,
        "forbidden",
    )
    .await;

    let step = app.first_step(&user).await;
    // The code that confirmed the setup counts as used.
    assert_error(
        app.mfa_verify(&step.mfa_token, &confirming).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_error(
        app.mfa_verify(&step.mfa_token, &wrong).await,
        401,
        "invalid_credentials",
    )
    .await;
    app.advance(Duration::from_secs(30));
    let code = app.code_now(&secret);
    let r = app.mfa_verify(&step.mfa_token, &code).await;
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(cookie.is_some_and(|c| c.starts_with("auth.sid=") && c.contains("HttpOnly")));
    let signed_in: Tokens = parse(r, 200).await;
    assert_eq!(signed_in.username, user.username);
    app.assert_signed_in(&signed_in.token).await;

    // The mfa_token is single-use, and the code is not accepted twice (no replay).
    assert_error(
        app.mfa_verify(&step.mfa_token, &code).await,
        400,
        "invalid_token",
    )
    .await;
    let again = app.first_step(&user).await;
    assert_error(
        app.mfa_verify(&again.mfa_token, &code).await,
        401,
        "invalid_credentials",
    )
    .await;
    app.advance(Duration::from_secs(30));
    parse::<Tokens>(
        app.mfa_verify(&again.mfa_token, &app.code_now(&secret))
            .await,
        200,
    )
    .await;

    // "Two-factor is on" was emailed.
    let subjects: Vec<String> = crate::notices::delivered(&app)
        .await
        .iter()
        .map(|m| m.subject())
        .collect();
    assert_eq!(
        subjects
            .iter()
            .filter(|s| s.contains("Two-factor authentication is on"))
            .count(),
        1,
        "{subjects:?}"
    );
}

async fn an_mfa_token_lives_five_minutes_and_five_wrong_codes(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("LOGIN_MAX_FAILURES", "20")
        .spawn()
        .await;
    let u = app.two_factor_user().await;

    let step = app.first_step(&u.user).await;
    app.advance(Duration::from_secs(301));
    assert_error(
        app.mfa_verify(&step.mfa_token, &app.code_now(&u.secret))
            .await,
        400,
        "invalid_token",
    )
    .await;

    let step = app.first_step(&u.user).await;
    for _ in 0..5 {
        assert_error(
            app.mfa_verify(&step.mfa_token, "000000").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    // Dead after the fifth, even with the right code.
    assert_error(
        app.mfa_verify(&step.mfa_token, &app.code_now(&u.secret))
            .await,
        400,
        "invalid_token",
    )
    .await;
    assert_error(
        app.mfa_verify("not-a-token", "123456").await,
        400,
        "invalid_token",
    )
    .await;
    assert_error(app.mfa_verify("", "").await, 400, "validation_failed").await;
}

/// With the failure limits off an attempt is written only when it ends; the password step
/// of a two-factor sign-in ends with a challenge, so it is written then, and the second step
/// finds it and ends it as a success.
async fn the_second_step_ends_the_password_step_with_the_limits_off(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("RATE_LIMITS", "off")
        .spawn()
        .await;
    let u = app.two_factor_user().await;
    let before = app.db.attempts().await;
    let step = app.first_step(&u.user).await;
    assert_eq!(app.db.attempts().await, (before.0, before.1 + 1));
    let tokens: Tokens = parse(
        app.mfa_verify(&step.mfa_token, &app.code_now(&u.secret))
            .await,
        200,
    )
    .await;
    app.me(&tokens).await;
    // The password step's attempt and the code's, both succeeded.
    assert_eq!(app.db.attempts().await, (before.0 + 2, before.1));
}

async fn wrong_codes_count_toward_the_sign_in_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let u = app.two_factor_user().await;
    let step = app.first_step(&u.user).await;
    // The password step is one counted attempt until the second completes; four wrong codes
    // make five failures.
    for _ in 0..4 {
        assert_error(
            app.mfa_verify(&step.mfa_token, "000000").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    assert_error(
        app.mfa_verify(&step.mfa_token, &app.code_now(&u.secret))
            .await,
        429,
        "too_many_requests",
    )
    .await;
    assert_error(
        app.try_sign_in(&u.user.username, &u.user.password).await,
        429,
        "too_many_requests",
    )
    .await;
}

async fn a_recovery_code_works_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let u = app.two_factor_user().await;
    let code = &u.recovery_codes[3];

    let step = app.first_step(&u.user).await;
    // Typed loosely: capitals and a space instead of the dash.
    let typed = code.to_uppercase().replace('-', " ");
    let tokens: Tokens = parse(app.mfa_verify(&step.mfa_token, &typed).await, 200).await;
    app.assert_signed_in(&tokens.token).await;

    let step = app.first_step(&u.user).await;
    assert_error(
        app.mfa_verify(&step.mfa_token, code).await,
        401,
        "invalid_credentials",
    )
    .await;
    // Another one still works.
    parse::<Tokens>(
        app.mfa_verify(&step.mfa_token, &u.recovery_codes[4]).await,
        200,
    )
    .await;

    let events = app.security_events(&tokens.token).await;
    let used = events
        .events
        .iter()
        .filter(|e| e.kind == "recovery_code_used")
        .count();
    assert_eq!(used, 2);
}

async fn disable_needs_the_password_and_a_code(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let u = app.two_factor_user().await;
    let code = app.code_now(&u.secret);
    assert_error(
        app.mfa_disable(&u.tokens, &u.user.password, "000000").await,
        400,
        "validation_failed",
    )
    .await;
    assert_error(
        app.mfa_disable(&u.tokens, "wrong-password", &code).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_error(
        app.mfa_disable(&u.tokens, "", "").await,
        400,
        "validation_failed",
    )
    .await;
    let off: Message = parse(
        app.mfa_disable(&u.tokens, &u.user.password, &code).await,
        200,
    )
    .await;
    assert_eq!(off.message, "Two-factor authentication is off");
    assert_error(
        app.mfa_disable(&u.tokens, &u.user.password, &code).await,
        404,
        "not_found",
    )
    .await;

    // The password alone signs in again.
    app.sign_in(&u.user).await;
    let subjects: Vec<String> = crate::notices::delivered(&app)
        .await
        .iter()
        .map(|m| m.subject())
        .collect();
    assert!(
        subjects.iter().any(|s| s.contains("was turned off")),
        "{subjects:?}"
    );
}

async fn an_administrator_removes_two_factor(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let (_, admin) = app.signed_in_admin().await;
    let u = app.two_factor_user().await;
    let id = u.tokens.user.id.clone();

    // Not for a non-administrator.
    let (_, other) = app.signed_in_user().await;
    assert_error(
        app.admin(&other, Method::DELETE, &id, "/mfa", None).await,
        403,
        "forbidden",
    )
    .await;

    let r = app.admin(&admin, Method::DELETE, &id, "/mfa", None).await;
    assert_eq!(r.status(), 204);
    assert_error(
        app.admin(&admin, Method::DELETE, &id, "/mfa", None).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.admin(&admin, Method::DELETE, "no-such-user", "/mfa", None)
            .await,
        404,
        "not_found",
    )
    .await;
    app.sign_in(&u.user).await;

    let to_user: Vec<_> = crate::notices::delivered(&app)
        .await
        .into_iter()
        .filter(|m| m.to == [u.user.email.clone()])
        .map(|m| m.subject())
        .collect();
    assert!(
        to_user
            .iter()
            .any(|s| s.contains("administrator removed two-factor")),
        "{to_user:?}"
    );
    let audit = app
        .audit_of(
            &admin.token,
            &format!("kind=mfa_removed_by_admin&user={id}"),
        )
        .await;
    assert_eq!(audit.total, 1);
    assert_eq!(
        audit.events[0].actor.as_deref(),
        Some(admin.user.id.as_str())
    );
    assert_eq!(audit.events[0].target.as_deref(), Some(id.as_str()));
}

async fn secrets_and_recovery_codes_are_not_stored_in_the_clear(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let u = app.two_factor_user().await;
    let dump = app.db.dump().await;
    // The secret as the service shows it (base32), and as raw hex.
    let encoded = base32_encode(&u.secret);
    assert!(!dump.contains(&encoded), "the base32 secret is stored");
    assert!(
        !dump.contains(&hex::encode(&u.secret)),
        "the raw secret is stored"
    );
    for code in &u.recovery_codes {
        assert!(!dump.contains(code.as_str()), "a recovery code is stored");
    }
}

/// The encoder for the dump check (the test's own, so it does not trust the service's).
pub fn base32_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut out) = (0u32, 0u32, String::new());
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

async fn expired_second_steps_are_pruned(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let u = app.two_factor_user().await;
    let live = app.first_step(&u.user).await;
    app.first_step(&u.user).await;
    let count = "SELECT count(*) FROM mfa_challenges";
    assert_eq!(app.db.count(count).await, 2);
    app.db.expire_all("mfa_challenges").await;

    let mut vars = std::collections::HashMap::new();
    vars.insert("DATABASE_URL".to_owned(), app.database_url());
    vars.insert("JWT_SECRET".to_owned(), crate::helpers::SECRET.to_owned());
    vars.insert("DATA_DIR".to_owned(), app.data_dir().display().to_string());
    let config = authflow::config::Config::from_vars(&vars).unwrap();
    let services = authflow::app::Services::connect(config).await.unwrap();
    assert!(services.auth.prune_expired().await.unwrap() >= 2);
    assert_eq!(app.db.count(count).await, 0);
    assert_error(
        app.mfa_verify(&live.mfa_token, &app.code_now(&u.secret))
            .await,
        400,
        "invalid_token",
    )
    .await;
}

crate::both_backends!(
    expired_second_steps_are_pruned,
    setup_confirm_and_sign_in_with_the_second_step,
    an_mfa_token_lives_five_minutes_and_five_wrong_codes,
    the_second_step_ends_the_password_step_with_the_limits_off,
    wrong_codes_count_toward_the_sign_in_limit,
    a_recovery_code_works_once,
    disable_needs_the_password_and_a_code,
    an_administrator_removes_two_factor,
    secrets_and_recovery_codes_are_not_stored_in_the_clear,
);

async fn sign_in_on_page(browser: &crate::browser::Browser, app: &TestApp, user: &TestUser) {
    browser.goto(&app.url("/signin")).await;
    browser
        .fill("form#signin input[name=username]", &user.username)
        .await;
    browser
        .fill("form#signin input[name=password]", &user.password)
        .await;
    browser.submit("form#signin").await;
}

/// SPEC §13 in a real browser: two-factor set up on `/account` from the secret the page shows,
/// then a sign-in through the second step of `/signin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_sets_up_two_factor_on_the_account_page_and_signs_in_with_it_in_a_browser() {
    use crate::browser::Browser;
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let user = TestUser::new();
    app.sign_up(&user).await;

    sign_in_on_page(&browser, &app, &user).await;
    assert!(browser.cookie("auth.sid").await.is_some());

    browser.goto(&app.url("/account")).await;
    browser
        .fill("form#mfa-setup input[name=password]", &user.password)
        .await;
    browser.submit("form#mfa-setup").await;
    let secret = browser.text("code#mfa-secret").await.trim().to_owned();
    assert_eq!(
        browser.all("#mfa-qr svg").await.len(),
        1,
        "the QR code is inline SVG"
    );
    browser.screenshots("account-mfa-setup").await;
    let secret = base32_decode(&secret);
    browser
        .fill("form#mfa-confirm input[name=code]", &app.code_now(&secret))
        .await;
    browser.submit("form#mfa-confirm").await;
    browser.wait_for_count("#recovery-codes li", 10).await;
    browser.screenshots("account-mfa-on").await;
    let recovery = browser.text("#recovery-codes li").await;
    assert_eq!(recovery.trim().len(), 19, "{recovery}");
    // Shown once: the page opened again has none.
    browser.goto(&app.url("/account")).await;
    browser.wait_for("form#mfa-disable").await;
    assert!(browser.all("#recovery-codes li").await.is_empty());

    // A new sign-in asks for the code; no session before it.
    browser.forget_cookies().await;
    sign_in_on_page(&browser, &app, &user).await;
    browser.wait_for("form#signin-mfa").await;
    assert!(browser.cookie("auth.sid").await.is_none());
    browser.screenshots("signin-mfa").await;
    app.advance(Duration::from_secs(30));
    browser
        .fill("form#signin-mfa input[name=code]", &app.code_now(&secret))
        .await;
    browser.submit("form#signin-mfa").await;
    browser.wait_for("form#mfa-disable").await;
    assert!(browser.cookie("auth.sid").await.is_some());
    assert_eq!(browser.url().await.path(), "/account");
    browser.close().await;
}
