//! Social sign-in routes (SPEC §11): start a flow, the provider's callback, the one-time
//! code exchange, explicit linking, and the signed-in user's linked identities.
//!
//! A callback whose flow is known always answers 302: to the flow's `redirect_to` with
//! `?code=…` (or `?linked=<provider>` after a link, or `?error=<code>` when it failed), or for
//! the pages' own flow to `/account` signed in (or `/signin?error=<code>`). A callback with no
//! flow to match (wrong, missing, used, expired state, or another browser) answers 400
//! `invalid_state`: there is no trusted place to send the browser.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::extract::cookie::CookieJar;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{first_factor_passed, session_cookie, SignInAnswer};
use super::error::ErrorEnvelope;
use super::extract::{ApiJson, AuthUser, Client};
use super::AppState;
use crate::auth::mfa::SignIn;
use crate::auth::sso::{CallbackParams, Landing, FLOW_COOKIE, FLOW_TTL};
use crate::error::{Error, FieldError};

/// At the root: the routes live under both `/api/auth` and `/api/users`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(callback))
        .routes(routes!(exchange))
        .routes(routes!(link))
        .routes(routes!(identities))
        .routes(routes!(unlink))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
pub struct StartQuery {
    /// Where the browser goes back with `?code=…`: an absolute URL whose origin is `APP_URL`'s
    /// or an allowed origin (`ALLOWED_ORIGINS`). Omitted: the pages' own flow (signed in on
    /// `/account`), when the pages are on.
    pub redirect_to: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
pub struct CallbackQuery {
    /// The flow's state, as the provider sends it back.
    pub state: Option<String>,
    /// The provider's authorization code.
    pub code: Option<String>,
    /// The provider's error (`access_denied`, …).
    pub error: Option<String>,
    /// The provider's description of its error (ignored).
    pub error_description: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct ExchangeRequest {
    /// The one-time `code` the callback added to `redirect_to` (60 s, single use).
    #[schema(
        required = true,
        min_length = 1,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub code: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct LinkRequest {
    /// The account's current password: a session alone cannot add a lasting way in
    /// (checked and limited like a sign-in: 401 `invalid_credentials`, 429).
    #[schema(required = true, min_length = 1)]
    pub password: String,
    /// Where the browser goes back with `?linked=<provider>` (or `?error=…`); same rule as
    /// for sign-in. Omitted: `/account` when the pages are on.
    pub redirect_to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkResponse {
    /// Send the browser here (it carries the flow's cookie, set by this answer).
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    /// `github`, `google` or `oidc:<name>`.
    pub provider: String,
    /// The provider's email when it was linked, if it gave one.
    pub email: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IdentitiesResponse {
    pub identities: Vec<IdentityView>,
}

/// An allow-listed `redirect_to`, or 400; `None` for the pages' flow (pages on).
fn checked_redirect(state: &AppState, redirect_to: Option<&str>) -> Result<Option<String>, Error> {
    let invalid =
        |message: &str| Error::Validation(vec![FieldError::new("redirect_to", message.to_owned())]);
    let Some(raw) = redirect_to.map(str::trim).filter(|r| !r.is_empty()) else {
        return if state.config.pages {
            Ok(None)
        } else {
            Err(invalid("redirect_to is required."))
        };
    };
    let url = url::Url::parse(raw).map_err(|_| invalid("redirect_to must be an absolute URL."))?;
    let allowed = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && state.origins.allows(&url.origin().ascii_serialization());
    if !allowed {
        return Err(invalid(
            "redirect_to must be on APP_URL or an allowed origin (ALLOWED_ORIGINS).",
        ));
    }
    Ok(Some(url.to_string()))
}

pub(super) fn flow_cookie(state: &AppState, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    // Lax: the provider sends the browser back with a top-level GET, which carries it.
    let cookie = format!(
        "{FLOW_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Carries the pages' second step from a social sign-in's callback to `GET /signin/mfa`.
pub(super) const MFA_COOKIE: &str = "authflow.mfa";

fn mfa_cookie(state: &AppState, mfa_token: &str) -> HeaderValue {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{MFA_COOKIE}={mfa_token}; HttpOnly; SameSite=Lax; Path=/signin/mfa; Max-Age=300{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn with_param(base: &str, name: &str, value: &str) -> String {
    match url::Url::parse(base) {
        Ok(mut url) => {
            url.query_pairs_mut().append_pair(name, value);
            url.to_string()
        }
        // A path of our own pages.
        Err(_) => {
            let sep = if base.contains('?') { '&' } else { '?' };
            let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
            format!("{base}{sep}{name}={value}")
        }
    }
}

fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, location);
    }
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    (StatusCode::FOUND, headers).into_response()
}

/// Start social sign-in: 302 to the provider, with `state`, PKCE (S256) and, for OpenID
/// Connect, a `nonce`, bound to this browser by a short-lived HttpOnly cookie.
#[utoipa::path(get, path = "/api/auth/sso/{provider}", tag = "sso", params(("provider" = String, Path, description = "`github`, `google`, or an OIDC provider's name"), StartQuery),
    responses(
        (status = 302, description = "To the provider's authorization page; sets the `authflow.sso` cookie"),
        (status = 400, description = "validation_failed: `redirect_to` is not on an allowed origin (or missing with the pages off)", body = ErrorEnvelope),
        (status = 404, description = "not_found: no such provider is configured", body = ErrorEnvelope),
        (status = 502, description = "provider_error: the provider's discovery document could not be read", body = ErrorEnvelope)))]
async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(query): Query<StartQuery>,
) -> Result<Response, Error> {
    let sso = state.auth.sso();
    if !sso.providers().iter().any(|p| p.slug == provider) {
        return Err(Error::NotFound("provider"));
    }
    let redirect_to = checked_redirect(&state, query.redirect_to.as_deref())?;
    let flow = sso.start(&provider, redirect_to).await?;
    Ok(redirect(
        &flow.authorize_url,
        vec![flow_cookie(
            &state,
            &flow.browser_secret,
            FLOW_TTL.as_secs(),
        )],
    ))
}

/// The provider sends the browser back here (register `{APP_URL}/api/auth/sso/{provider}/callback`
/// at the provider; for GitHub and Google that is also the old service's callback path).
#[utoipa::path(get, path = "/api/auth/sso/{provider}/callback", tag = "sso", params(("provider" = String, Path, description = "`github`, `google`, or an OIDC provider's name"), CallbackQuery),
    responses(
        (status = 302, description = "To `redirect_to` with `?code=` (sign-in), `?linked=` (link) or `?error=<code>`; the pages' flow goes to `/account` signed in (sets `auth.sid`) or to `/signin?error=<code>`"),
        (status = 400, description = "invalid_state: no flow of this browser has this state (wrong, missing, used or expired)", body = ErrorEnvelope),
        (status = 404, description = "not_found: no such provider is configured", body = ErrorEnvelope)))]
async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Client(client): Client,
    jar: CookieJar,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, Error> {
    let sso = state.auth.sso();
    if !sso.providers().iter().any(|p| p.slug == provider) {
        return Err(Error::NotFound("provider"));
    }
    let secret = jar.get(FLOW_COOKIE).map(|c| c.value().to_owned());
    let params = CallbackParams {
        state: query.state,
        code: query.code,
        error: query.error,
    };
    let clear = flow_cookie(&state, "", 0);
    let outcome = match sso
        .callback(&provider, params, secret.as_deref(), client)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            let mut response = e.into_response();
            response.headers_mut().append(header::SET_COOKIE, clear);
            return Ok(response);
        }
    };
    let pages = outcome.redirect_to.is_none();
    let response = match (outcome.result, outcome.redirect_to) {
        (Ok(Landing::Code(code)), Some(to)) => {
            redirect(&with_param(&to, "code", &code), vec![clear])
        }
        (Ok(Landing::SignedIn(SignIn::MfaRequired { mfa_token })), _) => {
            // The pages' second step (`GET /signin/mfa`) takes the token from this cookie:
            // never in a URL.
            redirect("/signin/mfa", vec![clear, mfa_cookie(&state, &mfa_token)])
        }
        (Ok(Landing::SignedIn(SignIn::Done(tokens))), _) => {
            let session = session_cookie(
                &state,
                &tokens.session_cookie,
                state.config.refresh_token_ttl.as_secs(),
            );
            redirect("/account", vec![clear, session])
        }
        (Ok(Landing::Linked(slug)), to) => {
            let to = to.unwrap_or_else(|| "/account".to_owned());
            redirect(&with_param(&to, "linked", &slug), vec![clear])
        }
        (Ok(Landing::Code(_)), None) => redirect("/signin?error=internal_error", vec![clear]),
        (Err(e), to) => {
            let code = e.parts().code;
            let to = to.unwrap_or_else(|| {
                if pages {
                    "/signin".to_owned()
                } else {
                    "/".to_owned()
                }
            });
            redirect(&with_param(&to, "error", code), vec![clear])
        }
    };
    Ok(response)
}

/// Exchange the callback's one-time code for the sign-in answer (60 s, single use).
#[utoipa::path(post, path = "/api/auth/sso/exchange", tag = "sso", request_body = ExchangeRequest,
    responses(
        (status = 200, description = "Signed in (also sets the `auth.sid` cookie), or, with two-factor on, the second step (`mfa_required`, no token, no cookie)", body = SignInAnswer),
        (status = 400, description = "invalid_token: the code is unknown, used or expired; validation_failed", body = ErrorEnvelope),
        (status = 403, description = "account_disabled: the account was deactivated meanwhile", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests, with Retry-After", body = ErrorEnvelope)))]
async fn exchange(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<ExchangeRequest>,
) -> Result<Response, Error> {
    let outcome = state.auth.sso().exchange(&body.code, client).await?;
    Ok(first_factor_passed(&state, outcome))
}

/// Link a provider to the signed-in account: answers the URL to send the browser to (and
/// sets the flow's cookie); the provider's identity is linked when it comes back, if the
/// session that asked is still active then. Needs the current password and a verified email.
#[utoipa::path(post, path = "/api/auth/sso/{provider}/link", tag = "sso",
    params(("provider" = String, Path, description = "`github`, `google`, or an OIDC provider's name")),
    request_body = LinkRequest,
    responses(
        (status = 200, description = "The provider's authorization URL; sets the `authflow.sso` cookie", body = LinkResponse),
        (status = 400, description = "validation_failed: no password, or `redirect_to` is not on an allowed origin", body = ErrorEnvelope),
        (status = 401, description = "not signed in, or a wrong password (invalid_credentials)", body = ErrorEnvelope),
        (status = 403, description = "email_not_verified: the account's email is not verified; password_not_set: the account has no password (set one through \"forgot password\"); an API key, or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 404, description = "not_found: no such provider is configured", body = ErrorEnvelope),
        (status = 429, description = "too many wrong passwords, with Retry-After", body = ErrorEnvelope),
        (status = 502, description = "provider_error: the provider's discovery document could not be read", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn link(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<LinkRequest>,
) -> Result<Response, Error> {
    principal.session_id()?;
    let sso = state.auth.sso();
    if !sso.providers().iter().any(|p| p.slug == provider) {
        return Err(Error::NotFound("provider"));
    }
    let redirect_to = checked_redirect(&state, body.redirect_to.as_deref())?;
    let flow = sso
        .start_link(&principal, &provider, body.password, redirect_to, &client)
        .await?;
    Ok((
        [(
            header::SET_COOKIE,
            flow_cookie(&state, &flow.browser_secret, FLOW_TTL.as_secs()),
        )],
        Json(LinkResponse {
            url: flow.authorize_url,
        }),
    )
        .into_response())
}

/// The social sign-in methods linked to the signed-in account.
#[utoipa::path(get, path = "/api/users/me/identities", tag = "sso",
    responses((status = 200, body = IdentitiesResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot manage the account)", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn identities(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
) -> Result<Json<IdentitiesResponse>, Error> {
    principal.session_id()?;
    let identities = state.auth.sso().identities(&principal).await?;
    Ok(Json(IdentitiesResponse {
        identities: identities
            .into_iter()
            .map(|i| IdentityView {
                provider: i.provider,
                email: i.email,
                created_at: crate::time::rfc3339(i.created_at),
            })
            .collect(),
    }))
}

/// Unlink a provider from the signed-in account; refused when it is the last way to sign in.
#[utoipa::path(delete, path = "/api/users/me/identities/{provider}", tag = "sso",
    params(("provider" = String, Path, description = "`github`, `google`, or an OIDC provider's name")),
    responses((status = 204, description = "Unlinked"), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key, or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 404, description = "not_found: no identity of this provider is linked", body = ErrorEnvelope),
        (status = 409, description = "last_sign_in_method: the account has no password and no other identity", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn unlink(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Path(provider): Path<String>,
) -> Result<StatusCode, Error> {
    state.auth.sso().unlink(&principal, &provider).await?;
    Ok(StatusCode::NO_CONTENT)
}
