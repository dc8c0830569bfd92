//! `/api/auth`: sign-in, the caller's profile, refresh, logout and sessions.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::{ApiJson, AuthUser, Caller, Client, OptionalApiJson, SESSION_COOKIE};
use super::{AppState, MessageResponse, UserView};
use crate::auth::mfa::SignIn;
use crate::auth::IssuedTokens;
use crate::error::Error;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signin))
        .routes(routes!(me))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(sessions))
        .routes(routes!(delete_session))
        .routes(routes!(verify_email, verify_email_link))
        .routes(routes!(resend_verification))
}

/// `username` or `email` is required (when both are given, `username` is used). Unknown
/// accounts, wrong passwords and deactivated accounts all answer 401 `invalid_credentials`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SignInRequest {
    /// Username or email, compared ignoring case and surrounding whitespace.
    #[schema(value_type = String, min_length = 1, pattern = r"[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")]
    pub username: Option<String>,
    /// Accepted in place of `username`.
    #[schema(value_type = String, min_length = 1, pattern = r"[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")]
    pub email: Option<String>,
    #[schema(required = true, min_length = 1)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignInResponse {
    #[schema(example = "Login successful!")]
    pub message: String,
    /// HS256 access token.
    pub token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until `token` expires.
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: UserView,
    /// The old service's flat fields.
    #[serde(rename = "userId")]
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub name: String,
    pub role: crate::store::Role,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct RefreshRequest {
    /// The `refresh_token` of the last sign-in or refresh (surrounding whitespace ignored).
    #[schema(
        required = true,
        min_length = 1,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Whether this is the session making the request.
    pub current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsResponse {
    pub sessions: Vec<SessionView>,
}

pub(super) fn session_cookie(state: &AppState, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// With two factors on, the password alone leads here: no token, no cookie.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaRequiredResponse {
    /// Always true.
    pub mfa_required: bool,
    /// For `POST /api/auth/mfa/verify`; lives 5 minutes, single use, dead after 5 wrong codes.
    pub mfa_token: String,
    /// `totp` and `recovery_code`.
    pub methods: Vec<String>,
}

/// The answer of a sign-in: the session, or the second step. Only the OpenAPI document uses
/// it (`oneOf`); the handler answers each shape by itself.
#[allow(dead_code, clippy::large_enum_variant)]
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SignInAnswer {
    SignedIn(SignInResponse),
    MfaRequired(MfaRequiredResponse),
}

/// The answer to a first factor that passed: tokens and cookie, or the second step.
pub(super) fn first_factor_passed(state: &AppState, outcome: SignIn) -> Response {
    match outcome {
        SignIn::Done(tokens) => signed_in(state, *tokens, "Login successful!"),
        SignIn::MfaRequired { mfa_token } => Json(MfaRequiredResponse {
            mfa_required: true,
            mfa_token,
            methods: crate::auth::mfa::METHODS.map(String::from).to_vec(),
        })
        .into_response(),
    }
}

pub(super) fn signed_in(state: &AppState, tokens: IssuedTokens, message: &str) -> Response {
    let user = UserView::from(&tokens.user);
    let cookie = session_cookie(
        state,
        &tokens.session_cookie,
        state.config.refresh_token_ttl.as_secs(),
    );
    let body = SignInResponse {
        message: message.to_owned(),
        token: tokens.access_token,
        token_type: "Bearer".into(),
        expires_in: tokens.expires_in,
        refresh_token: tokens.refresh_token,
        user_id: user.id.clone(),
        username: user.username.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        role: user.role,
        user,
    };
    ([(header::SET_COOKIE, cookie)], Json(body)).into_response()
}

/// Sign in with username (or email) and password.
#[utoipa::path(post, path = "/signin", tag = "auth", request_body = SignInRequest,
    responses(
        (status = 200, description = "Signed in (also sets the `auth.sid` cookie), or, with two-factor authentication on, `mfa_required` with an `mfa_token` for `POST /api/auth/mfa/verify` (no token, no cookie)", body = SignInAnswer),
        (status = 400, description = "validation_failed (no username or email, no password) or invalid_body", body = ErrorEnvelope),
        (status = 401, description = "invalid_credentials: unknown account, wrong password or deactivated account alike", body = ErrorEnvelope),
        (status = 403, description = "email_not_verified", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests, with Retry-After", body = ErrorEnvelope)))]
async fn signin(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<SignInRequest>,
) -> Result<Response, Error> {
    let identifier = body.username.or(body.email).unwrap_or_default();
    let outcome = state
        .auth
        .sessions()
        .sign_in(&identifier, body.password, client)
        .await?;
    Ok(first_factor_passed(&state, outcome))
}

/// The signed-in user (the old service's profile route).
#[utoipa::path(get, path = "/me", tag = "auth",
    responses((status = 200, body = UserView), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key without profile:read", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = [])))]
async fn me(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<UserView>, Error> {
    Ok(Json(UserView::from(&state.auth.own_profile(&principal)?)))
}

/// Exchange a refresh token for new tokens; the old refresh token stops working.
#[utoipa::path(post, path = "/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, description = "New tokens; also sets a new `auth.sid` cookie", body = SignInResponse),
        (status = 400, body = ErrorEnvelope),
        (status = 401, description = "unauthorized (unknown, expired or revoked refresh token), or refresh_token_reused (the session is revoked)", body = ErrorEnvelope)))]
async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Response, Error> {
    let tokens = state
        .auth
        .sessions()
        .refresh(body.refresh_token.trim(), &client)
        .await?;
    Ok(signed_in(&state, tokens, "Token refreshed"))
}

/// Revoke the current session: its access token, refresh token and cookie stop working.
#[utoipa::path(post, path = "/logout", tag = "auth",
    responses((status = 200, body = MessageResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot manage sessions), or a cookie without an allowed Origin", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn logout(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
) -> Result<Response, Error> {
    state.auth.sessions().logout(&principal).await?;
    Ok(logged_out(&state, "Logout successful"))
}

fn logged_out(state: &AppState, message: &str) -> Response {
    (
        [(header::SET_COOKIE, session_cookie(state, "", 0))],
        Json(MessageResponse {
            message: message.to_owned(),
        }),
    )
        .into_response()
}

/// What else `logout-all` ends (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LogoutAllRequest {
    /// Also revoke every API key of the account (default false).
    #[serde(default)]
    pub api_keys: bool,
}

/// Revoke every session of the signed-in user; with `{"api_keys": true}` every API key too.
#[utoipa::path(post, path = "/logout-all", tag = "auth", request_body(content = Option<LogoutAllRequest>),
    responses((status = 200, body = MessageResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot manage sessions), or a cookie without an allowed Origin", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn logout_all(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    OptionalApiJson(body): OptionalApiJson<LogoutAllRequest>,
) -> Result<Response, Error> {
    let api_keys = body.is_some_and(|b| b.api_keys);
    let n = state
        .auth
        .sessions()
        .logout_all(&principal, api_keys)
        .await?;
    Ok(logged_out(&state, &format!("Logged out of {n} session(s)")))
}

/// The signed-in user's active sessions.
#[utoipa::path(get, path = "/sessions", tag = "auth",
    responses((status = 200, body = SessionsResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot manage sessions)", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn sessions(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
) -> Result<Json<SessionsResponse>, Error> {
    let sessions = state.auth.sessions().list(&principal).await?;
    let current = principal.session_id()?;
    Ok(Json(SessionsResponse {
        sessions: sessions
            .into_iter()
            .map(|s| SessionView {
                current: &s.id == current,
                id: s.id.into(),
                created_at: crate::time::rfc3339(s.created_at),
                last_used_at: crate::time::rfc3339(s.last_used_at),
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect(),
    }))
}

/// Revoke one of the signed-in user's sessions.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "auth",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "The session is revoked"), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot manage sessions), or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 404, description = "not_found: no active session of this user has this id", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn delete_session(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state.auth.sessions().revoke(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(default)]
pub struct TokenRequest {
    /// The `token` of the emailed link (surrounding whitespace ignored).
    #[schema(
        required = true,
        min_length = 1,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    #[param(
        min_length = 1,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub token: String,
}

/// Verify the email address with the token of the welcome email.
#[utoipa::path(post, path = "/verify-email", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = MessageResponse),
        (status = 400, description = "invalid_token (unknown, used or expired), validation_failed or invalid_body", body = ErrorEnvelope)))]
async fn verify_email(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<MessageResponse>, Error> {
    state.auth.recovery().verify_email(&body.token).await?;
    Ok(Json(MessageResponse {
        message: "Email verified successfully!".into(),
    }))
}

/// The link in the welcome email: a small page saying whether the address is now verified.
#[utoipa::path(get, path = "/verify-email", tag = "auth", params(TokenRequest),
    responses((status = 200, description = "HTML page: verified", content_type = "text/html"),
        (status = 400, description = "HTML page saying why not; the JSON envelope when the query string itself is malformed",
            content((String = "text/html"), (ErrorEnvelope = "application/json")))))]
async fn verify_email_link(
    State(state): State<AppState>,
    Query(query): Query<TokenRequest>,
) -> Response {
    super::pages::verify_email_page(&state, &query.token, Default::default()).await
}

/// Send a new verification email; the same answer for any address.
#[utoipa::path(post, path = "/resend-verification", tag = "auth",
    request_body = super::password::EmailRequest,
    responses((status = 200, description = "Same answer for any address", body = MessageResponse), (status = 400, body = ErrorEnvelope),
        (status = 429, description = "too_many_requests: recovery emails for this address or from this client (an hour)", body = ErrorEnvelope)))]
async fn resend_verification(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<super::password::EmailRequest>,
) -> Result<Json<MessageResponse>, Error> {
    state
        .auth
        .recovery()
        .resend_verification(&body.email, &client)
        .await?;
    Ok(Json(MessageResponse {
        message: super::password::RECOVERY_MESSAGE.into(),
    }))
}
