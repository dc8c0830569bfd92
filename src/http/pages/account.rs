//! `/account`: one's profile, password, sessions, sign-in history, API keys and deletion.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::public::signed_out;
use super::{see_other, PageCtx, PageForm, Visit};
use crate::auth::{KeyRequest, Principal};
use crate::error::Error;
use crate::http::extract::Client;
use crate::http::AppState;

const HISTORY_SHOWN: i64 = 20;

struct SessionRow {
    id: String,
    created_at: String,
    last_used_at: String,
    ip: String,
    user_agent: String,
    current: bool,
}

struct HistoryRow {
    at: String,
    ip: String,
    location: String,
    user_agent: String,
    success: bool,
}

struct KeyRow {
    id: String,
    name: String,
    scopes: String,
    created_at: String,
    expires_at: String,
    last_used_at: String,
}

#[derive(Template)]
#[template(path = "pages/account.html")]
struct AccountPage {
    page: PageCtx,
    username: String,
    name: String,
    email: String,
    email_verified: bool,
    phone: String,
    role: &'static str,
    sessions: Vec<SessionRow>,
    history: Vec<HistoryRow>,
    keys: Vec<KeyRow>,
    notice: Option<&'static str>,
    error: Option<String>,
    new_key: Option<String>,
    /// Linked social sign-in methods and those that can be linked (`_identities.html`).
    sso: super::sso::SsoSection,
    /// Two-factor authentication (templates/pages/_mfa.html).
    mfa: super::mfa::MfaSection,
    /// Security events (templates/pages/_security_events.html).
    events: Vec<super::mfa::EventRow>,
}

/// How many security events the account page shows.
const EVENTS_SHOWN: i64 = 20;

/// "2024-05-01 12:30 UTC": readable at a glance.
fn when(t: crate::time::Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// "Lyon, Auvergne-Rhône-Alpes, FR" from what the geolocation stored; "Local" for a private
/// address; "Unknown" when nothing is known (yet).
fn place(location: &serde_json::Value) -> String {
    let parts: Vec<&str> = ["city", "region", "country"]
        .iter()
        .filter_map(|k| location.get(*k).and_then(|v| v.as_str()))
        .filter(|v| !v.is_empty())
        .collect();
    let mut unique: Vec<&str> = Vec::new();
    for p in parts {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    if unique.is_empty() {
        "Unknown".to_owned()
    } else {
        unique.join(", ")
    }
}

async fn account_page(
    state: &AppState,
    visit: &Visit,
    principal: &Principal,
    notice: Option<&'static str>,
    error: Option<String>,
    new_key: Option<String>,
) -> Result<AccountPage, Error> {
    let current = principal.session_id()?.clone();
    let sessions = state.auth.sessions().list(principal).await?;
    let history = state
        .auth
        .accounts()
        .login_history(principal, HISTORY_SHOWN)
        .await?;
    let keys = state.auth.keys().list(principal).await?;
    let sso = super::sso::section(state, principal).await?;
    let (mfa_on, codes_left) = state.auth.mfa().status(principal).await?;
    let events = state
        .auth
        .audit()
        .own_events(principal, 1, EVENTS_SHOWN)
        .await?
        .events;
    let user = &principal.user;
    Ok(AccountPage {
        page: visit.ctx(),
        username: user.username.clone(),
        name: user.name.clone(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        phone: user.phone.clone().unwrap_or_default(),
        role: user.role.as_str(),
        sessions: sessions
            .into_iter()
            .map(|s| SessionRow {
                current: s.id == current,
                id: s.id.to_string(),
                created_at: when(s.created_at),
                last_used_at: when(s.last_used_at),
                ip: s.ip.unwrap_or_else(|| "unknown address".to_owned()),
                user_agent: s.user_agent.unwrap_or_else(|| "unknown browser".to_owned()),
            })
            .collect(),
        history: history
            .into_iter()
            .map(|r| HistoryRow {
                at: when(r.created_at),
                location: place(&r.location),
                ip: r.ip,
                user_agent: r.user_agent.unwrap_or_default(),
                success: r.success,
            })
            .collect(),
        keys: keys
            .into_iter()
            .map(|k| KeyRow {
                id: k.id.to_string(),
                name: k.name,
                scopes: k
                    .scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                created_at: when(k.created_at),
                expires_at: k.expires_at.map_or_else(|| "never".to_owned(), when),
                last_used_at: k.last_used_at.map_or_else(|| "never".to_owned(), when),
            })
            .collect(),
        notice,
        error,
        new_key,
        sso,
        mfa: super::mfa::MfaSection {
            enabled: mfa_on,
            codes_left,
            ..Default::default()
        },
        events: events.into_iter().map(Into::into).collect(),
    })
}

/// The account page with what the two-factor forms just produced (a secret to confirm, or
/// recovery codes to keep).
pub(super) async fn show_with_mfa(
    state: &AppState,
    visit: &Visit,
    principal: &Principal,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    mfa: super::mfa::MfaSection,
) -> Response {
    match account_page(state, visit, principal, notice, error, None).await {
        Ok(mut page) => {
            if mfa.setup.is_some() {
                page.mfa.setup = mfa.setup;
            }
            if !mfa.recovery_codes.is_empty() {
                page.mfa.recovery_codes = mfa.recovery_codes;
            }
            visit.render(status, &page)
        }
        Err(e) => visit.error(e),
    }
}

/// A refused form: the account page again, saying why, with the refusal's status. A failure
/// of ours gets the error page instead.
pub(super) async fn refused(
    state: &AppState,
    visit: &Visit,
    principal: &Principal,
    e: Error,
) -> Response {
    if matches!(e, Error::Internal(_) | Error::Unavailable(_)) {
        return visit.error(e);
    }
    let message = super::form_message(&e);
    show(
        state,
        visit,
        principal,
        e.status(),
        None,
        Some(message),
        None,
    )
    .await
}

/// The account page, or why it cannot be shown.
async fn show(
    state: &AppState,
    visit: &Visit,
    principal: &Principal,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    new_key: Option<String>,
) -> Response {
    match account_page(state, visit, principal, notice, error, new_key).await {
        Ok(page) => visit.render(status, &page),
        Err(e) => visit.error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AccountQuery {
    notice: Option<String>,
}

/// What a finished change says, by a fixed code in the redirect (never text from the URL).
fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "profile" => "Your profile is saved.",
        "password" => "Your password is changed. Your other sessions were signed out.",
        "session" => "That session is signed out.",
        "key-revoked" => "The key is revoked.",
        "mfa-off" => "Two-factor authentication is off.",
        _ => return None,
    })
}

pub async fn page(
    State(state): State<AppState>,
    visit: Visit,
    Query(query): Query<AccountQuery>,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    let notice = query.notice.as_deref().and_then(notice);
    show(
        &state,
        &visit,
        principal,
        StatusCode::OK,
        notice,
        None,
        None,
    )
    .await
}

/// Runs a change for the signed-in person: on success back to the page with a notice, on a
/// refusal the page again with the reason.
async fn change<F, Fut>(state: &AppState, visit: &Visit, notice_code: &str, run: F) -> Response
where
    F: FnOnce(Principal) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let Some(principal) = visit.principal.clone() else {
        return Visit::sign_in_first("/account");
    };
    match run(principal.clone()).await {
        Ok(()) => see_other(&format!("/account?notice={notice_code}")),
        Err(e) => refused(state, visit, &principal, e).await,
    }
}

pub async fn profile(State(state): State<AppState>, visit: Visit, form: PageForm) -> Response {
    let auth = state.auth.clone();
    change(&state, &visit, "profile", |p| async move {
        auth.accounts()
            .update_profile(&p, Some(form.get("name")), Some(form.get("phone")))
            .await
            .map(|_| ())
    })
    .await
}

pub async fn password(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let auth = state.auth.clone();
    change(&state, &visit, "password", |p| async move {
        auth.recovery()
            .change_password(
                &p,
                form.take("current_password"),
                form.get("new_password"),
                &client,
            )
            .await
    })
    .await
}

pub async fn sign_out_session(
    State(state): State<AppState>,
    visit: Visit,
    form: PageForm,
) -> Response {
    let is_current = visit
        .principal
        .as_ref()
        .and_then(|p| p.session_id().ok())
        .is_some_and(|id| id.as_str() == form.get("id"));
    let auth = state.auth.clone();
    let response = change(&state, &visit, "session", |p| async move {
        auth.sessions().revoke(&p, form.get("id")).await
    })
    .await;
    if is_current && response.status() == StatusCode::SEE_OTHER {
        return signed_out(&state, "/signin");
    }
    response
}

pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    visit: Visit,
    _form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    match state.auth.sessions().logout_all(principal, false).await {
        Ok(_) => signed_out(&state, "/signin"),
        Err(e) => visit.error(e),
    }
}

pub async fn create_key(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    let request = KeyRequest {
        name: form.take("name"),
        scopes: None,
        expires_in_days: None,
        password: form.take("password"),
    };
    let created = state.auth.keys().create(principal, request, &client).await;
    match created {
        // Shown once, on this answer only: a redirect would have to carry it.
        Ok(created) => {
            show(
                &state,
                &visit,
                principal,
                StatusCode::CREATED,
                Some("Your new key is below. Copy it now: it is shown only once."),
                None,
                Some(created.value),
            )
            .await
        }
        Err(e) => refused(&state, &visit, principal, e).await,
    }
}

pub async fn revoke_key(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let auth = state.auth.clone();
    change(&state, &visit, "key-revoked", |p| async move {
        auth.keys().delete(&p, form.get("id"), &client).await
    })
    .await
}

pub async fn delete(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/account");
    };
    let deleted = state
        .auth
        .accounts()
        .delete_account(principal, form.take("password"), &client)
        .await;
    match deleted {
        Ok(()) => {
            // Signed out now: the page no longer shows the account in its header.
            let page = super::message_page(
                super::PageCtx {
                    csrf: visit.csrf.clone(),
                    ..super::PageCtx::default()
                },
                "Account deleted",
                &["Your account and everything it held are deleted."],
                Some(("/", "Home")),
            );
            let mut response = visit.render(StatusCode::OK, &page);
            response.headers_mut().append(
                axum::http::header::SET_COOKIE,
                super::session_cookie(&state, "", 0),
            );
            response
        }
        Err(e @ (Error::Internal(_) | Error::Unavailable(_))) => visit.error(e),
        Err(e) => {
            let message = e.parts().message;
            show(
                &state,
                &visit,
                principal,
                e.status(),
                None,
                Some(message),
                None,
            )
            .await
        }
    }
}
