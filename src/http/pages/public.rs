//! The pages anyone may open: landing, sign-up, sign-in and out, forgotten password, reset and
//! email verification.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::{
    allowed_redirect, redirect_origin, see_other, session_cookie, PageCtx, PageForm, Visit,
};
use crate::auth::mfa::SignIn;
use crate::auth::Registration;
use crate::error::{Error, FieldError};
use crate::http::extract::Client;
use crate::http::password::RECOVERY_MESSAGE;
use crate::http::AppState;

#[derive(Template)]
#[template(path = "pages/landing.html")]
struct LandingPage {
    page: PageCtx,
}

pub async fn landing(visit: Visit) -> Response {
    visit.render(StatusCode::OK, &LandingPage { page: visit.ctx() })
}

/// A form's fields as typed (never a password) and what was wrong with them.
#[derive(Default)]
struct Feedback {
    error: Option<String>,
    fields: Vec<FieldError>,
}

impl Feedback {
    fn from_error(error: &Error) -> Self {
        let parts = error.parts();
        let fields = match error {
            Error::UsernameTaken => vec![FieldError::new("username", parts.message.clone())],
            Error::EmailTaken => vec![FieldError::new("email", parts.message.clone())],
            _ => parts.details,
        };
        let error = if fields.is_empty() {
            parts.message
        } else {
            "Please correct the fields marked below.".to_owned()
        };
        Self {
            error: Some(error),
            fields,
        }
    }

    /// The message for `field`, or "" (templates show nothing then).
    fn of(&self, field: &str) -> &str {
        self.fields
            .iter()
            .find(|f| f.field == field)
            .map_or("", |f| f.message.as_str())
    }
}

/// Errors a form shows next to itself; anything else (the database away) is an error page.
fn is_form_error(error: &Error) -> bool {
    !matches!(error, Error::Internal(_) | Error::Unavailable(_))
}

#[derive(Template)]
#[template(path = "pages/signup.html")]
struct SignupPage {
    page: PageCtx,
    name: String,
    username: String,
    email: String,
    feedback: Feedback,
}

pub async fn signup_form(visit: Visit) -> Response {
    let page = SignupPage {
        page: visit.ctx(),
        name: String::new(),
        username: String::new(),
        email: String::new(),
        feedback: Feedback::default(),
    };
    visit.render(StatusCode::OK, &page)
}

pub async fn signup(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let registration = Registration {
        name: form.take("name"),
        username: form.take("username"),
        email: form.take("email"),
        password: form.take("password"),
        phone: None,
        role: None,
    };
    match state
        .auth
        .accounts()
        .register(registration, None, &client)
        .await
    {
        Ok(user) => visit.message(
            StatusCode::CREATED,
            "Check your email",
            &[
                &format!(
                    "Your account {} is created. We sent a link to {} to verify the address.",
                    user.username, user.email
                ),
                "You can sign in now.",
            ],
            Some(("/signin", "Sign in")),
        ),
        Err(e) if is_form_error(&e) => {
            let page = SignupPage {
                page: visit.ctx(),
                name: form.take("name"),
                username: form.take("username"),
                email: form.take("email"),
                feedback: Feedback::from_error(&e),
            };
            visit.render(e.status(), &page)
        }
        Err(e) => visit.error(e),
    }
}

#[derive(Template)]
#[template(path = "pages/signin.html")]
struct SigninPage {
    page: PageCtx,
    username: String,
    redirect_to: String,
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SigninQuery {
    redirect_to: Option<String>,
}

fn signin_page(
    state: &AppState,
    visit: &Visit,
    status: StatusCode,
    username: String,
    redirect_to: &str,
    error: Option<String>,
) -> Response {
    let redirect_to = allowed_redirect(state, redirect_to).unwrap_or_default();
    // form-action also governs where the sign-in's redirect may lead.
    let target = redirect_origin(&redirect_to);
    let page = SigninPage {
        page: visit.ctx(),
        username,
        redirect_to,
        error,
    };
    let mut response = super::html(status, &page, target.as_deref());
    if visit.new_csrf_cookie {
        let cookie = super::cookie(
            super::CSRF_COOKIE,
            &visit.csrf,
            None,
            state.config.secure_cookies(),
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

pub async fn signin_form(
    State(state): State<AppState>,
    visit: Visit,
    Query(query): Query<SigninQuery>,
) -> Response {
    let redirect_to = query.redirect_to.unwrap_or_default();
    signin_page(
        &state,
        &visit,
        StatusCode::OK,
        String::new(),
        &redirect_to,
        None,
    )
}

pub async fn signin(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let username = form.take("username");
    match state
        .auth
        .sessions()
        .sign_in(&username, form.take("password"), client)
        .await
    {
        Ok(SignIn::Done(tokens)) => {
            session_started(&state, &tokens.session_cookie, form.get("redirect_to"))
        }
        Ok(SignIn::MfaRequired { mfa_token }) => {
            let redirect_to = allowed_redirect(&state, form.get("redirect_to")).unwrap_or_default();
            super::mfa::second_step(&visit, StatusCode::OK, &mfa_token, &redirect_to, None)
        }
        Err(e) if is_form_error(&e) => {
            let status = e.status();
            let retry = match e {
                Error::TooManyRequests { retry_after_secs } => Some(retry_after_secs),
                _ => None,
            };
            let mut response = signin_page(
                &state,
                &visit,
                status,
                username,
                form.get("redirect_to"),
                Some(e.parts().message),
            );
            if let Some(secs) = retry {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.max(1).into());
            }
            response
        }
        Err(e) => visit.error(e),
    }
}

/// A session began: its cookie, and on to where the person was going (or their account).
pub(super) fn session_started(state: &AppState, cookie: &str, redirect_to: &str) -> Response {
    let target = allowed_redirect(state, redirect_to).unwrap_or_else(|| "/account".to_owned());
    let mut response = see_other(&target);
    response.headers_mut().append(
        header::SET_COOKIE,
        session_cookie(state, cookie, state.config.refresh_token_ttl.as_secs()),
    );
    response
}

/// Ends the session of this browser (if any) and forgets its cookie.
pub async fn signout(State(state): State<AppState>, visit: Visit, _form: PageForm) -> Response {
    if let Some(principal) = &visit.principal {
        if let Err(e) = state.auth.sessions().logout(principal).await {
            return visit.error(e);
        }
    }
    signed_out(&state, "/signin")
}

/// A redirect that also removes the session cookie.
pub fn signed_out(state: &AppState, to: &str) -> Response {
    let mut response = see_other(to);
    response
        .headers_mut()
        .append(header::SET_COOKIE, session_cookie(state, "", 0));
    response
}

#[derive(Template)]
#[template(path = "pages/forgot.html")]
struct ForgotPage {
    page: PageCtx,
    email: String,
    error: Option<String>,
}

pub async fn forgot_form(visit: Visit) -> Response {
    let page = ForgotPage {
        page: visit.ctx(),
        email: String::new(),
        error: None,
    };
    visit.render(StatusCode::OK, &page)
}

pub async fn forgot(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let email = form.take("email");
    match state.auth.recovery().forgot_password(&email, &client).await {
        Ok(()) => visit.message(
            StatusCode::OK,
            "Check your email",
            &[
                RECOVERY_MESSAGE,
                "The link in it is valid for 1 hour and can be used once.",
            ],
            Some(("/signin", "Back to sign-in")),
        ),
        Err(e) if is_form_error(&e) => {
            let error = super::form_message(&e);
            let page = ForgotPage {
                page: visit.ctx(),
                email,
                error: Some(error),
            };
            visit.render(e.status(), &page)
        }
        Err(e) => visit.error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TokenQuery {
    token: String,
}

#[derive(Template)]
#[template(path = "pages/reset.html")]
struct ResetPage {
    page: PageCtx,
    token: String,
    error: Option<String>,
}

fn link_not_valid(visit: &Visit) -> Response {
    visit.message(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        &[
            "This password reset link is unknown, was already used, or has expired (links are valid for 1 hour and work once).",
            "Ask for a new link: it is sent to the address of your account.",
        ],
        Some(("/forgot-password", "Send me a new link")),
    )
}

pub async fn reset_form(
    State(state): State<AppState>,
    visit: Visit,
    Query(query): Query<TokenQuery>,
) -> Response {
    match state
        .auth
        .recovery()
        .reset_token_is_valid(&query.token)
        .await
    {
        Ok(true) => {
            let page = ResetPage {
                page: visit.ctx(),
                token: query.token.trim().to_owned(),
                error: None,
            };
            visit.render(StatusCode::OK, &page)
        }
        Ok(false) => link_not_valid(&visit),
        Err(e) => visit.error(e),
    }
}

pub async fn reset(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let token = form.take("token");
    let again = |status: StatusCode, error: String| {
        let page = ResetPage {
            page: visit.ctx(),
            token: token.clone(),
            error: Some(error),
        };
        visit.render(status, &page)
    };
    if form.get("password") != form.get("password_confirm") {
        return again(
            StatusCode::BAD_REQUEST,
            "The two passwords are not the same.".to_owned(),
        );
    }
    match state
        .auth
        .recovery()
        .reset_password(&token, form.get("password"), &client)
        .await
    {
        Ok(()) => visit.message(
            StatusCode::OK,
            "Password changed",
            &["Your new password is set. Every session of your account was signed out."],
            Some(("/signin", "Sign in")),
        ),
        Err(Error::InvalidToken) => link_not_valid(&visit),
        Err(Error::Validation(details)) if details.iter().any(|d| d.field == "token") => {
            link_not_valid(&visit)
        }
        Err(Error::Validation(details)) => again(
            StatusCode::BAD_REQUEST,
            details
                .iter()
                .map(|d| d.message.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Err(e) => visit.error(e),
    }
}

pub async fn verify_email(
    State(state): State<AppState>,
    visit: Visit,
    Query(query): Query<TokenQuery>,
) -> Response {
    verify_email_page(&state, &query.token, visit.ctx()).await
}

/// The result of an emailed verification link, as a page: also what the API's
/// `GET /api/auth/verify-email` answers.
pub async fn verify_email_page(state: &AppState, token: &str, page: PageCtx) -> Response {
    let (status, title, text, link) = match state.auth.recovery().verify_email_link(token).await {
        Ok(true) => (
            StatusCode::OK,
            "Email verified",
            "Your email address is verified. You can close this page.",
            ("/signin", "Sign in"),
        ),
        Ok(false) => (
            StatusCode::OK,
            "Email verified",
            "Your email address is already verified. You can close this page.",
            ("/signin", "Sign in"),
        ),
        Err(Error::InvalidToken | Error::Validation(_)) => (
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "This verification link is invalid, was already used, or has expired. Ask for a new one from the app.",
            ("/", "Home"),
        ),
        Err(e) => {
            super::log_error(&e);
            let status = e.status();
            let message = e.parts().message;
            return super::html(
                status,
                &super::message_page(page, "Something went wrong", &[&message], None),
                None,
            );
        }
    };
    // With the pages off (API only) there is no sign-in page to lead to.
    let link = state.config.pages.then_some(link);
    super::html(
        status,
        &super::message_page(page, title, &[text], link),
        None,
    )
}
