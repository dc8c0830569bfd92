//! The web pages over HTTP, as a browser without JavaScript uses them: forms with CSRF
//! tokens, the session cookie, redirects that stay home, and the pages being off.

use reqwest::{Client, Response};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, TestUser};

const NEW_PASSWORD: &str = "a brand new passphrase 77";

both_backends!(
    every_page_is_html_under_a_strict_csp,
    sign_up_verify_sign_in_and_see_the_account,
    reset_by_the_emailed_link_then_the_link_is_refused,
    forms_without_the_right_csrf_token_change_nothing,
    redirect_to_leads_only_home_or_to_allowed_origins,
    admin_page_is_for_administrators_and_deactivates,
    keys_and_sessions_from_the_account_page,
);

/// A browser: keeps cookies, does not follow redirects (the tests look at them).
fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("authflow-page-tests")
        .build()
        .unwrap()
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).expect("a csrf field") + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn page(b: &Client, app: &TestApp, path: &str) -> (u16, String) {
    let r = b.get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Opens `page_path`, fills the form's token in, and posts `fields` to `action`.
async fn submit(
    b: &Client,
    app: &TestApp,
    page_path: &str,
    action: &str,
    fields: &[(&str, &str)],
) -> Response {
    let (_, html) = page(b, app, page_path).await;
    let csrf = csrf_of(&html);
    let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
    form.extend_from_slice(fields);
    b.post(app.url(action)).form(&form).send().await.unwrap()
}

fn location(r: &Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

async fn sign_in(b: &Client, app: &TestApp, user: &TestUser) -> Response {
    submit(
        b,
        app,
        "/signin",
        "/signin",
        &[("username", &user.username), ("password", &user.password)],
    )
    .await
}

async fn every_page_is_html_under_a_strict_csp(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let b = browser();
    for path in [
        "/",
        "/signup",
        "/signin",
        "/forgot-password",
        "/reset-password?token=made-up",
        "/verify-email?token=made-up",
        "/dev/mailbox",
    ] {
        let r = b.get(app.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        assert!(status == 200 || status == 400, "{path}: {status}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("style-src 'sha256-") && csp.contains("form-action 'self'"));
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let html = r.text().await.unwrap();
        assert_eq!(html.matches("<h1").count(), 1, "{path}");
        assert!(!html.contains("<script"), "{path}");
    }
    // Signed out, the account and admin pages lead to sign-in and back.
    let r = b.get(app.url("/account")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/signin?redirect_to=%2Faccount");
    // The API's own link page has the same look.
    let r = app.open_verification_link("made-up").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("class=\"brand\""));
}

async fn sign_up_verify_sign_in_and_see_the_account(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let b = browser();
    let user = TestUser::new();
    let r = submit(
        &b,
        &app,
        "/signup",
        "/signup",
        &[
            ("name", "Page Person"),
            ("username", &user.username),
            ("email", &user.email),
            ("password", &user.password),
        ],
    )
    .await;
    assert_eq!(r.status(), 201);
    assert!(r.text().await.unwrap().contains("Check your email"));
    // A weak password is refused on the form, with zxcvbn's words.
    let r = submit(
        &b,
        &app,
        "/signup",
        "/signup",
        &[
            ("name", "Other"),
            ("username", "other.person"),
            ("email", "other@example.com"),
            ("password", "password"),
        ],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("field-error"));

    app.deliver_all_emails().await;
    let token = app.email(1).await.token().unwrap();
    let (status, html) = page(&b, &app, &format!("/verify-email?token={token}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Email verified"));

    let r = sign_in(&b, &app, &user).await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/account");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("auth.sid="))
        .expect("the session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));

    let (status, html) = page(&b, &app, "/account").await;
    assert_eq!(status, 200);
    assert!(html.contains(&user.username) && html.contains("Page Person"));
    assert!(html.contains("id=\"profile\"") && html.contains("id=\"history\""));
    assert_eq!(html.matches("class=\"session current\"").count(), 1);
    assert!(html.contains("Local"), "the sign-in's location is shown");

    // A wrong password on the form: the form again, 401, no cookie.
    let other = browser();
    let mut wrong = user.clone();
    wrong.password = "not the password at all".into();
    let r = sign_in(&other, &app, &wrong).await;
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Invalid username or password"));
    assert_eq!(page(&other, &app, "/account").await.0, 303);

    // Signing out ends the session.
    let r = submit(&b, &app, "/account", "/signout", &[]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(page(&b, &app, "/account").await.0, 303);
}

async fn reset_by_the_emailed_link_then_the_link_is_refused(backend: Backend) {
    let app = TestApp::builder(backend).smtp_sink().spawn().await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let b = browser();
    let r = submit(
        &b,
        &app,
        "/forgot-password",
        "/forgot-password",
        &[("email", &user.email)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let unknown = submit(
        &b,
        &app,
        "/forgot-password",
        "/forgot-password",
        &[("email", "nobody.here@example.com")],
    )
    .await;
    assert_eq!(unknown.status(), 200);
    assert_eq!(
        r.text().await.unwrap().replace(&user.email, ""),
        unknown
            .text()
            .await
            .unwrap()
            .replace("nobody.here@example.com", "")
    );
    app.deliver_all_emails().await;
    let mail = app
        .wait_for_emails(2)
        .await
        .into_iter()
        .find(|m| m.subject().contains("Reset"))
        .unwrap();
    let token = mail.token().unwrap();
    let reset_page = format!("/reset-password?token={token}");
    let (status, html) = page(&b, &app, &reset_page).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"reset\""));

    // Mismatched and weak passwords are refused on the form, the token still good.
    let r = submit(
        &b,
        &app,
        &reset_page,
        "/reset-password",
        &[
            ("token", &token),
            ("password", NEW_PASSWORD),
            ("password_confirm", "something else"),
        ],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = submit(
        &b,
        &app,
        &reset_page,
        "/reset-password",
        &[
            ("token", &token),
            ("password", "qwerty123"),
            ("password_confirm", "qwerty123"),
        ],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));

    let r = submit(
        &b,
        &app,
        &reset_page,
        "/reset-password",
        &[
            ("token", &token),
            ("password", NEW_PASSWORD),
            ("password_confirm", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("Password changed") && html.contains("href=\"/signin\""));

    let mut renewed = user.clone();
    renewed.password = NEW_PASSWORD.into();
    assert_eq!(sign_in(&browser(), &app, &renewed).await.status(), 303);

    // The link is used: a page that says so and offers a new one.
    let (status, html) = page(&b, &app, &reset_page).await;
    assert_eq!(status, 400);
    assert!(html.contains("Link not valid") && html.contains("href=\"/forgot-password\""));
}

async fn forms_without_the_right_csrf_token_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let b = browser();
    assert_eq!(sign_in(&b, &app, &user).await.status(), 303);
    let (_, html) = page(&b, &app, "/account").await;
    let good = csrf_of(&html);
    let forged = format!("{}x", &good[..good.len() - 1]);
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![("name", "Changed")],
        vec![("csrf", ""), ("name", "Changed")],
        vec![("csrf", &forged), ("name", "Changed")],
    ];
    for fields in attempts {
        let r = b
            .post(app.url("/account/profile"))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    // The right token from another site's page is refused too.
    let r = b
        .post(app.url("/account/profile"))
        .header("origin", "https://evil.example")
        .form(&[("csrf", good.as_str()), ("name", "Changed")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another browser's token with this browser's cookie is refused.
    let other = browser();
    let (_, html) = page(&other, &app, "/signin").await;
    let theirs = csrf_of(&html);
    let r = b
        .post(app.url("/account/profile"))
        .form(&[("csrf", theirs.as_str()), ("name", "Changed")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, html) = page(&b, &app, "/account").await;
    assert!(!html.contains("Changed"));

    // With the token, it changes.
    let r = b
        .post(app.url("/account/profile"))
        .form(&[("csrf", good.as_str()), ("name", "Changed Name")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (_, html) = page(&b, &app, "/account").await;
    assert!(html.contains("Changed Name"));
}

async fn redirect_to_leads_only_home_or_to_allowed_origins(backend: Backend) {
    let app = TestApp::builder(backend)
        .env("ALLOWED_ORIGINS", "https://app.example.org")
        .spawn()
        .await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    for (asked, expected) in [
        ("https://evil.example", "/account"),
        ("//evil.example", "/account"),
        ("https://app.example.org@evil.example/", "/account"),
        ("/\\evil.example", "/account"),
        ("javascript:alert(1)", "/account"),
        ("/account?tab=keys", "/account?tab=keys"),
        (
            "https://app.example.org/home",
            "https://app.example.org/home",
        ),
    ] {
        let b = browser();
        let mut query = String::from("/signin?redirect_to=");
        query.extend(url_encode(asked));
        let (_, html) = page(&b, &app, &query).await;
        let csrf = csrf_of(&html);
        // The form carries it only when it is allowed; a forged field is checked again.
        let r = b
            .post(app.url("/signin"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", &user.username),
                ("password", &user.password),
                ("redirect_to", asked),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{asked}");
        assert_eq!(location(&r), expected, "{asked}");
    }
}

fn url_encode(s: &str) -> Vec<String> {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn admin_page_is_for_administrators_and_deactivates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (admin, _) = app.signed_in_admin().await;
    let user = TestUser::new();
    app.sign_up(&user).await;

    let ub = browser();
    assert_eq!(sign_in(&ub, &app, &user).await.status(), 303);
    let (status, html) = page(&ub, &app, "/admin").await;
    assert_eq!(status, 403);
    assert!(html.contains("administrator"));

    let ab = browser();
    assert_eq!(sign_in(&ab, &app, &admin).await.status(), 303);
    let (status, html) = page(&ab, &app, &format!("/admin?q={}", user.username)).await;
    assert_eq!(status, 200);
    assert_eq!(html.matches("<tr class=\"user\"").count(), 1, "{html}");
    let row_at = html
        .find(&format!("data-username=\"{}\"", user.username))
        .unwrap();
    let row = &html[row_at..];
    let action_at = row.find("action=\"/admin/users/").unwrap() + "action=\"".len();
    let action = row[action_at..].split('"').next().unwrap().to_owned();
    assert!(action.ends_with("/deactivate"), "{action}");
    let r = submit(&ab, &app, "/admin", &action, &[]).await;
    assert_eq!(r.status(), 303);
    // The user's session stopped working; the list says so.
    assert_eq!(page(&ub, &app, "/account").await.0, 303);
    let (_, html) = page(&ab, &app, &format!("/admin?q={}", user.username)).await;
    assert!(html.contains("class=\"activate\""));
}

async fn keys_and_sessions_from_the_account_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    let other_session = app.sign_in(&user).await;
    let b = browser();
    assert_eq!(sign_in(&b, &app, &user).await.status(), 303);

    let r = submit(
        &b,
        &app,
        "/account",
        "/account/keys",
        &[("name", "deploy bot"), ("password", &user.password)],
    )
    .await;
    assert_eq!(r.status(), 201);
    let html = r.text().await.unwrap();
    let at = html.find("<code id=\"new-key\">").unwrap() + "<code id=\"new-key\">".len();
    let key = html[at..].split('<').next().unwrap().to_owned();
    assert!(key.starts_with("afk_"));
    app.assert_signed_in(&key).await;
    let (_, html) = page(&b, &app, "/account").await;
    assert!(!html.contains(&key), "the key is shown once");
    assert_eq!(html.matches("<li class=\"key\"").count(), 1);

    let id_at = html.find("<li class=\"key\"").unwrap();
    let id_marker = "name=\"id\" value=\"";
    let id_start = html[id_at..].find(id_marker).unwrap() + id_at + id_marker.len();
    let key_id = html[id_start..].split('"').next().unwrap().to_owned();
    let r = submit(
        &b,
        &app,
        "/account",
        "/account/keys/revoke",
        &[("id", &key_id)],
    )
    .await;
    assert_eq!(r.status(), 303);
    app.assert_signed_out(&key).await;

    // Sign out the other session from the list.
    let (_, html) = page(&b, &app, "/account").await;
    assert_eq!(html.matches("<li class=\"session").count(), 2);
    let other_at = html.find("<li class=\"session\"").unwrap();
    let id_start = html[other_at..].find(id_marker).unwrap() + other_at + id_marker.len();
    let session_id = html[id_start..].split('"').next().unwrap().to_owned();
    let r = submit(
        &b,
        &app,
        "/account",
        "/account/sessions/signout",
        &[("id", &session_id)],
    )
    .await;
    assert_eq!(r.status(), 303);
    app.assert_signed_out(&other_session.token).await;
    let (status, html) = page(&b, &app, "/account").await;
    assert_eq!(status, 200);
    assert_eq!(html.matches("<li class=\"session").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_off_leaves_the_api_only() {
    let app = TestApp::builder(Backend::Sqlite)
        .env("PAGES", "off")
        .spawn()
        .await;
    for path in [
        "/",
        "/signin",
        "/account",
        "/reset-password?token=x",
        "/dev/mailbox",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Except the one page a security notice links to: "this wasn't me" still works.
    let r = app
        .client
        .get(app.url("/not-me?token=never-issued"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<form"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_page_shows_links_in_development_only() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let user = TestUser::new();
    app.sign_up(&user).await;
    app.deliver_all_emails().await;
    let (status, html) = page(&browser(), &app, "/dev/mailbox").await;
    assert_eq!(status, 200);
    assert_eq!(html.matches("<article class=\"mail\"").count(), 1, "{html}");
    assert!(html.contains("<h2>Welcome to Auth Flow"));
    assert!(html.contains("<a href=\"http://127.0.0.1/api/auth/verify-email?token="));

    let production = TestApp::builder(Backend::Sqlite)
        .env("APP_ENV", "production")
        .env("APP_URL", "https://auth.example.com")
        .smtp_sink()
        .spawn()
        .await;
    let r = production
        .client
        .get(production.url("/dev/mailbox"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
