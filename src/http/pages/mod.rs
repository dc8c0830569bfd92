//! The server-rendered pages of SPEC §10: askama templates in `templates/pages/`, in the look
//! of the emails, under a strict CSP, every form with a CSRF token, through the same use-cases.

mod account;
mod admin;
pub mod csrf;
mod mailbox;
mod mfa;
mod public;
mod sso;

use std::sync::LazyLock;

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::CookieJar;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::error::FinalBody;
use super::extract::SESSION_COOKIE;
use super::AppState;
use crate::auth::Principal;
use crate::error::Error;
use crate::store::Role;
use csrf::CSRF_COOKIE;

pub use public::verify_email_page;

/// The pages' one stylesheet, inlined in every page and allowed by its hash.
pub const STYLE: &str = include_str!("../../../templates/pages/style.css");

/// `'sha256-…'` of [`STYLE`]: the only style the pages' CSP admits.
static STYLE_HASH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "'sha256-{}'",
        STANDARD.encode(Sha256::digest(STYLE.as_bytes()))
    )
});

pub fn router(production: bool) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(public::landing))
        .route("/signup", get(public::signup_form).post(public::signup))
        .route("/signin", get(public::signin_form).post(public::signin))
        .route("/signout", post(public::signout))
        .route(
            "/forgot-password",
            get(public::forgot_form).post(public::forgot),
        )
        .route(
            "/reset-password",
            get(public::reset_form).post(public::reset),
        )
        .route("/verify-email", get(public::verify_email))
        .route("/account", get(account::page))
        .route("/account/profile", post(account::profile))
        .route("/account/password", post(account::password))
        .route("/account/sessions/signout", post(account::sign_out_session))
        .route(
            "/account/signout-everywhere",
            post(account::sign_out_everywhere),
        )
        .route("/account/keys", post(account::create_key))
        .route("/account/keys/revoke", post(account::revoke_key))
        .route("/account/delete", post(account::delete))
        .route("/admin", get(admin::page))
        .route("/admin/users/{id}/{action}", post(admin::act))
        .route("/account/identities/link", post(sso::link))
        .route("/account/identities/unlink", post(sso::unlink))
        .route("/signin/mfa", get(mfa::resume).post(mfa::verify))
        .route("/account/mfa/setup", post(mfa::setup))
        .route("/account/mfa/confirm", post(mfa::confirm))
        .route("/account/mfa/disable", post(mfa::disable))
        .route("/not-me", get(mfa::not_me_form).post(mfa::not_me));
    // The development mailbox holds every reset link: never served in production.
    if production {
        pages
    } else {
        pages.route("/dev/mailbox", get(mailbox::page))
    }
}

/// With `PAGES=off`, the one page an email still links to: "this wasn't me" (SPEC §13).
pub fn not_me_router() -> Router<AppState> {
    Router::new().route("/not-me", get(mfa::not_me_form).post(mfa::not_me))
}

/// What the layout of every page needs: the form token and who is signed in.
#[derive(Debug, Clone, Default)]
pub struct PageCtx {
    pub csrf: String,
    pub username: Option<String>,
    pub admin: bool,
    /// Social sign-in buttons (`_sso_buttons.html`), one per configured provider.
    pub sso_providers: Vec<sso::SsoButton>,
    /// A failed social sign-in or link, from the `?error=` (or `?sso_error=`) code.
    pub sso_error: Option<String>,
    /// A link or unlink that just succeeded (`?linked=` / `?unlinked=`).
    pub sso_notice: Option<&'static str>,
}

/// One visit to a page: the signed-in person (by the `auth.sid` cookie), if any, and the
/// CSRF token the page's forms carry (a new one is set as a cookie when there was none).
pub struct Visit {
    pub principal: Option<Principal>,
    pub csrf: String,
    new_csrf_cookie: bool,
    /// Whether its cookies carry `Secure` ([`crate::config::Config::secure_cookies`]).
    secure_cookies: bool,
    /// What the pages show of social sign-in.
    sso: (Vec<sso::SsoButton>, Option<String>, Option<&'static str>),
}

impl FromRequestParts<AppState> for Visit {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let jar = CookieJar::from_headers(&parts.headers);
        let secure_cookies = state.config.secure_cookies();
        let principal = match jar.get(SESSION_COOKIE) {
            None => None,
            Some(cookie) => match state
                .auth
                .sessions()
                .authenticate_cookie(cookie.value())
                .await
            {
                Ok(principal) => Some(principal),
                Err(Error::Unauthorized) => None,
                Err(e) => {
                    let visit = Visit {
                        principal: None,
                        csrf: String::new(),
                        new_csrf_cookie: false,
                        secure_cookies,
                        sso: Default::default(),
                    };
                    return Err(visit.error(e));
                }
            },
        };
        let existing = jar
            .get(CSRF_COOKIE)
            .map(|c| c.value().to_owned())
            .filter(|v| state.csrf.is_genuine(v));
        let (csrf, new_csrf_cookie) = match existing {
            Some(token) => (token, false),
            None => (state.csrf.issue(), true),
        };
        let query = parts.uri.query().unwrap_or("");
        let param = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let sso_error = param("sso_error")
            .or_else(|| param("error"))
            .map(|code| sso::error_message(&code));
        let sso_notice = if param("linked").is_some() {
            Some("The sign-in method is linked.")
        } else if param("unlinked").is_some() {
            Some("The sign-in method is unlinked.")
        } else {
            None
        };
        let buttons = state
            .auth
            .sso()
            .providers()
            .into_iter()
            .map(sso::SsoButton::from)
            .collect();
        Ok(Self {
            principal,
            csrf,
            new_csrf_cookie,
            secure_cookies,
            sso: (buttons, sso_error, sso_notice),
        })
    }
}

impl Visit {
    pub fn ctx(&self) -> PageCtx {
        PageCtx {
            csrf: self.csrf.clone(),
            username: self.principal.as_ref().map(|p| p.user.username.clone()),
            admin: self
                .principal
                .as_ref()
                .is_some_and(|p| p.user.role == Role::Admin),
            sso_providers: self.sso.0.clone(),
            sso_error: self.sso.1.clone(),
            sso_notice: self.sso.2,
        }
    }

    /// The page, with the headers every page carries (and the CSRF cookie if it is new).
    pub fn render(&self, status: StatusCode, template: &impl Template) -> Response {
        let mut response = html(status, template, None);
        if self.new_csrf_cookie {
            let cookie = cookie(CSRF_COOKIE, &self.csrf, None, self.secure_cookies);
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }

    /// A page with a title, a few sentences and a link onward.
    pub fn message(
        &self,
        status: StatusCode,
        title: &str,
        paragraphs: &[&str],
        link: Option<(&str, &str)>,
    ) -> Response {
        self.render(status, &message_page(self.ctx(), title, paragraphs, link))
    }

    /// What went wrong, as a page with the error's status (never internal details).
    pub fn error(&self, error: Error) -> Response {
        let status = error.status();
        let title = match status.as_u16() {
            400 => "Not valid",
            401 => "Sign-in needed",
            403 => "Not allowed",
            404 => "Not found",
            409 => "Already taken",
            429 => "Too many attempts",
            _ => "Something went wrong",
        };
        log_error(&error);
        let message = error.parts().message;
        let mut response = self.message(status, title, &[&message], Some(("/", "Home")));
        if let Error::TooManyRequests { retry_after_secs } = error {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }

    /// To the sign-in page, coming back to `back` afterwards.
    pub fn sign_in_first(back: &str) -> Response {
        let mut target = String::from("/signin?redirect_to=");
        target.extend(form_urlencoded::byte_serialize(back.as_bytes()));
        see_other(&target)
    }
}

/// Internal and unavailable errors are logged with their cause, as the API logs them.
/// What a refused form says above it: each field's message, or the error's own.
pub fn form_message(error: &Error) -> String {
    match error {
        Error::Validation(details) if !details.is_empty() => details
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => error.parts().message,
    }
}

fn log_error(error: &Error) {
    match error {
        Error::Internal(cause) => tracing::error!(error = format!("{cause:#}"), "page failed"),
        Error::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
        _ => {}
    }
}

#[derive(Template)]
#[template(path = "pages/message.html")]
pub struct MessagePage {
    pub page: PageCtx,
    pub title: String,
    pub paragraphs: Vec<String>,
    pub link: Option<(String, String)>,
}

pub fn message_page(
    page: PageCtx,
    title: &str,
    paragraphs: &[&str],
    link: Option<(&str, &str)>,
) -> MessagePage {
    MessagePage {
        page,
        title: title.to_owned(),
        paragraphs: paragraphs.iter().map(|p| (*p).to_owned()).collect(),
        link: link.map(|(href, text)| (href.to_owned(), text.to_owned())),
    }
}

/// `default-src 'none'`, the stylesheet by its hash, forms posting only here (and, after
/// sign-in, to where `redirect_to` leads).
fn content_security_policy(form_target: Option<&str>) -> HeaderValue {
    let extra = form_target.map(|o| format!(" {o}")).unwrap_or_default();
    let policy = format!(
        "default-src 'none'; style-src {}; img-src 'self' data:; form-action 'self'{extra}; \
         frame-ancestors 'none'; base-uri 'none'",
        *STYLE_HASH
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// A rendered page with its CSP, `Referrer-Policy: same-origin` (so that a browser sends
/// `Origin` with our own forms, and a reset link's token never leaves the site), marked
/// final so the error middleware keeps it HTML.
pub fn html(status: StatusCode, template: &impl Template, form_target: Option<&str>) -> Response {
    let body = match template.render() {
        Ok(body) => body,
        Err(e) => {
            return Error::Internal(anyhow::anyhow!("rendering a page: {e}")).into_response();
        }
    };
    let mut response = (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                content_security_policy(form_target),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
        .into_response();
    response.extensions_mut().insert(FinalBody);
    response
}

pub fn see_other(location: &str) -> Response {
    let location =
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn cookie(name: &str, value: &str, max_age_secs: Option<u64>, secure: bool) -> HeaderValue {
    let max_age = max_age_secs
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    let secure = if secure { "; Secure" } else { "" };
    // Lax, not Strict: a link opened from an email must not replace the token the site's
    // other tabs hold (a Strict cookie is not sent on that first request).
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Lax; Path=/{max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The fields of a submitted form, after its CSRF token (and `Origin`, when the browser sent
/// one) was checked: what every page's POST handler takes.
pub struct PageForm(Vec<(String, String)>);

impl PageForm {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// A copy of the field, for what the use-cases take by value (passwords).
    pub fn take(&self, name: &str) -> String {
        self.get(name).to_owned()
    }
}

impl FromRequest<AppState> for PageForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let refused = |why: &str| {
            let page = message_page(
                PageCtx::default(),
                "Form refused",
                &[why, "Go back, reload the page and try again."],
                Some(("/", "Home")),
            );
            html(StatusCode::FORBIDDEN, &page, None)
        };
        let headers: &HeaderMap = req.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin.to_str().is_ok_and(|o| state.origins.allows(o));
            if !allowed {
                return Err(refused("This form was sent from another site."));
            }
        }
        let jar = CookieJar::from_headers(headers);
        let cookie = jar.get(CSRF_COOKIE).map(|c| c.value().to_owned());
        let body = axum::body::to_bytes(req.into_body(), super::BODY_LIMIT)
            .await
            .map_err(|_| Error::PayloadTooLarge.into_response())?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let form = Self(fields);
        let token = Some(form.get("csrf")).filter(|t| !t.is_empty());
        if !state.csrf.accepts(cookie.as_deref(), token) {
            return Err(refused(
                "This form has expired or did not come from this site.",
            ));
        }
        Ok(form)
    }
}

/// `redirect_to` when it leads to this site (a path) or to `APP_URL` or an allowed origin;
/// anything else is ignored (no open redirect).
pub fn allowed_redirect(state: &AppState, target: &str) -> Option<String> {
    let target = target.trim();
    if target.is_empty()
        || target.len() > 2000
        || target
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    if target.starts_with('/') {
        return (!target.starts_with("//")).then(|| target.to_owned());
    }
    redirect_origin(target)
        .filter(|origin| state.origins.allows(origin))
        .map(|_| target.to_owned())
}

/// `scheme://host[:port]` of an absolute http(s) URL without user information.
fn redirect_origin(target: &str) -> Option<String> {
    let lower = target.to_ascii_lowercase();
    let scheme_len = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return None;
    };
    let authority = lower[scheme_len..].split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(lower[..scheme_len + authority.len()].to_owned())
}

/// The session cookie of a page sign-in, or its removal: exactly the API's.
pub fn session_cookie(state: &AppState, value: &str, max_age_secs: u64) -> HeaderValue {
    super::auth::session_cookie(state, value, max_age_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_origins_are_scheme_and_host_only() {
        assert_eq!(
            redirect_origin("https://App.example.org/x?y").as_deref(),
            Some("https://app.example.org")
        );
        assert_eq!(redirect_origin("https://a@evil.example/"), None);
        assert_eq!(redirect_origin("javascript:alert(1)"), None);
        assert_eq!(redirect_origin("https:///path"), None);
    }

    #[test]
    fn the_style_hash_is_a_csp_source() {
        assert!(STYLE_HASH.starts_with("'sha256-") && STYLE_HASH.ends_with("='"));
    }
}
