//! The pages of SPEC §13: sign-in's second step, two-factor setup on `/account` (QR code as
//! inline SVG, recovery codes shown once), turning it off, and the "this wasn't me" link.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::public::session_started;
use super::{allowed_redirect, redirect_origin, see_other, PageCtx, PageForm, Visit};
use crate::error::Error;
use crate::http::extract::Client;
use crate::http::AppState;

#[derive(Template)]
#[template(path = "pages/signin_mfa.html")]
struct SecondStepPage {
    page: PageCtx,
    mfa_token: String,
    redirect_to: String,
    error: Option<String>,
}

/// The second step of a sign-in: the code, with the `mfa_token` carried in the form.
pub(super) fn second_step(
    visit: &Visit,
    status: StatusCode,
    mfa_token: &str,
    redirect_to: &str,
    error: Option<String>,
) -> Response {
    let page = SecondStepPage {
        page: visit.ctx(),
        mfa_token: mfa_token.to_owned(),
        redirect_to: redirect_to.to_owned(),
        error,
    };
    let target = redirect_origin(redirect_to);
    let mut response = super::html(status, &page, target.as_deref());
    if visit.new_csrf_cookie {
        let cookie = super::cookie(super::CSRF_COOKIE, &visit.csrf, None, visit.secure_cookies);
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /signin/mfa`: the second step of a social sign-in made through the pages, whose
/// callback left the `mfa_token` in a short-lived cookie for this page alone.
pub async fn resume(visit: Visit, jar: axum_extra::extract::cookie::CookieJar) -> Response {
    let Some(token) = jar
        .get(crate::http::sso::MFA_COOKIE)
        .map(|c| c.value().to_owned())
    else {
        return see_other("/signin");
    };
    let mut response = second_step(&visit, StatusCode::OK, &token, "", None);
    let clear = format!(
        "{}=; HttpOnly; SameSite=Lax; Path=/signin/mfa; Max-Age=0",
        crate::http::sso::MFA_COOKIE
    );
    if let Ok(clear) = header::HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

/// `POST /signin/mfa`.
pub async fn verify(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let mfa_token = form.take("mfa_token");
    let redirect_to = allowed_redirect(&state, form.get("redirect_to")).unwrap_or_default();
    match state
        .auth
        .mfa()
        .verify(&mfa_token, form.get("code"), client)
        .await
    {
        Ok(tokens) => session_started(&state, &tokens.session_cookie, &redirect_to),
        Err(Error::InvalidToken) => visit.message(
            StatusCode::BAD_REQUEST,
            "Sign in again",
            &["This sign-in has expired or had too many wrong codes. Please sign in again."],
            Some(("/signin", "Sign in")),
        ),
        Err(
            e @ (Error::InvalidCredentials | Error::Validation(_) | Error::TooManyRequests { .. }),
        ) => {
            let message = match e {
                Error::InvalidCredentials => "That code is not right.".to_owned(),
                ref other => super::form_message(other),
            };
            second_step(&visit, e.status(), &mfa_token, &redirect_to, Some(message))
        }
        Err(e) => visit.error(e),
    }
}

/// The two-factor section of `/account`.
#[derive(Debug, Default)]
pub struct MfaSection {
    pub enabled: bool,
    pub codes_left: i64,
    /// While setting up: the secret in base32 and its QR code (SVG markup, made here).
    pub setup: Option<(String, String)>,
    /// Right after confirming: the recovery codes, shown this once.
    pub recovery_codes: Vec<String>,
}

/// One row of the security events on `/account` and of the audit list on `/admin`.
pub struct EventRow {
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub target: String,
    pub ip: String,
    pub details: String,
}

impl From<crate::store::AuditEvent> for EventRow {
    fn from(e: crate::store::AuditEvent) -> Self {
        EventRow {
            at: e.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            kind: e.kind,
            actor: e.actor.unwrap_or_default(),
            target: e.target.unwrap_or_default(),
            ip: e.ip.unwrap_or_default(),
            details: match &e.details {
                serde_json::Value::Object(map) if map.is_empty() => String::new(),
                other => other.to_string(),
            },
        }
    }
}

/// The QR code of an `otpauth://` URL as SVG markup (no image, no data: URL: the CSP stays).
fn qr_svg(url: &str) -> Result<String, Error> {
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| anyhow::anyhow!("drawing a QR code: {e}"))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // Inline in HTML: the XML declaration has no place there.
    Ok(match svg.find("<svg") {
        Some(start) => svg[start..].to_owned(),
        None => svg,
    })
}

/// `POST /account/mfa/setup`: a new secret, shown with its QR code.
pub async fn setup(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    let started = state
        .auth
        .mfa()
        .setup(principal, form.take("password"), &client)
        .await
        .and_then(|s| Ok((qr_svg(&s.otpauth_url)?, s.secret)));
    match started {
        Ok((svg, secret)) => {
            let mfa = MfaSection {
                setup: Some((secret, svg)),
                ..MfaSection::default()
            };
            super::account::show_with_mfa(
                &state,
                &visit,
                principal,
                StatusCode::OK,
                None,
                None,
                mfa,
            )
            .await
        }
        Err(e) => super::account::refused(&state, &visit, principal, e).await,
    }
}

/// `POST /account/mfa/confirm`: two-factor on, and the recovery codes shown once.
pub async fn confirm(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    match state
        .auth
        .mfa()
        .confirm(principal, form.get("code"), &client)
        .await
    {
        Ok(codes) => {
            let mfa = MfaSection {
                enabled: true,
                codes_left: i64::try_from(codes.len()).unwrap_or(0),
                recovery_codes: codes,
                ..MfaSection::default()
            };
            super::account::show_with_mfa(
                &state,
                &visit,
                principal,
                StatusCode::OK,
                Some("Two-factor authentication is on. Keep your recovery codes somewhere safe: they are shown only now."),
                None,
                mfa,
            )
            .await
        }
        Err(e) => super::account::refused(&state, &visit, principal, e).await,
    }
}

/// `POST /account/mfa/disable`.
pub async fn disable(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    match state
        .auth
        .mfa()
        .disable(principal, form.take("password"), form.get("code"), &client)
        .await
    {
        Ok(()) => see_other("/account?notice=mfa-off"),
        Err(e) => super::account::refused(&state, &visit, principal, e).await,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NotMeQuery {
    token: String,
}

#[derive(Template)]
#[template(path = "pages/not_me.html")]
struct NotMePage {
    page: PageCtx,
    token: String,
}

/// `GET /not-me?token=…`, the link of a new-sign-in email: one button, so that a mail
/// scanner opening the link signs nobody out.
pub async fn not_me_form(visit: Visit, Query(query): Query<NotMeQuery>) -> Response {
    let page = NotMePage {
        page: visit.ctx(),
        token: query.token,
    };
    visit.render(StatusCode::OK, &page)
}

/// `POST /not-me`: every session ends, and a reset link is on its way.
pub async fn not_me(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    match state.auth.not_me(form.get("token"), &client).await {
        Ok(()) => {
            let page = super::message_page(
                PageCtx {
                    csrf: visit.csrf.clone(),
                    ..PageCtx::default()
                },
                "Signed out everywhere",
                &[
                    "Every session of your account is signed out, this one included.",
                    "We sent you an email with a link to choose a new password: do it now, so that whoever signed in cannot again.",
                ],
                Some(("/forgot-password", "Send another reset link")),
            );
            let mut response = visit.render(StatusCode::OK, &page);
            response.headers_mut().append(
                header::SET_COOKIE,
                super::session_cookie(&state, "", 0),
            );
            response
        }
        Err(Error::InvalidToken) => visit.message(
            StatusCode::BAD_REQUEST,
            "Link not valid",
            &["This link was already used, has expired, or is not complete. If you still think someone else is in your account, reset your password."],
            Some(("/forgot-password", "Reset your password")),
        ),
        Err(e) => visit.error(e),
    }
}
