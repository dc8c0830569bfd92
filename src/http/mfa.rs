//! Two-factor authentication (`/api/auth/mfa/…`), "this wasn't me" (`/api/auth/not-me`), the
//! audit log (`/api/users/me/security-events`, `/api/admin/audit`) and an administrator's
//! removal of a user's two-factor (`/api/admin/users/{id}/mfa`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::signed_in;
use super::error::ErrorEnvelope;
use super::extract::{ApiJson, AuthUser, Caller, Client};
use super::{AppState, MessageResponse};
use crate::auth::audit::AuditPage;
use crate::domain::UserUid;
use crate::error::{Error, FieldError};
use crate::store::AuditFilter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(totp_setup))
        .routes(routes!(totp_confirm))
        .routes(routes!(totp_disable))
        .routes(routes!(verify))
        .routes(routes!(not_me))
        .routes(routes!(security_events))
        .routes(routes!(audit_log))
        .routes(routes!(admin_remove_mfa))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct PasswordRequest {
    /// The current password.
    #[schema(required = true, min_length = 1)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpSetupResponse {
    /// The secret in base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/…`, what the QR code of the account page holds.
    pub otpauth_url: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CodeRequest {
    /// The 6-digit code of the authenticator app.
    #[schema(required = true, min_length = 1, max_length = 64)]
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// Ten single-use codes, shown only here.
    pub recovery_codes: Vec<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct DisableRequest {
    #[schema(required = true, min_length = 1)]
    pub password: String,
    /// A current code of the authenticator app, or a recovery code.
    #[schema(required = true, min_length = 1, max_length = 64)]
    pub code: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct VerifyRequest {
    /// From the sign-in answer with `mfa_required`.
    #[schema(required = true, min_length = 1)]
    pub mfa_token: String,
    /// A current code of the authenticator app, or a recovery code.
    #[schema(required = true, min_length = 1, max_length = 64)]
    pub code: String,
}

fn too_long(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.chars().count() > max {
        return Err(Error::Validation(vec![FieldError::new(
            field,
            format!("{field} must be at most {max} characters."),
        )]));
    }
    Ok(())
}

/// Start setting up TOTP: a new secret, not in force until confirmed with a first code.
#[utoipa::path(post, path = "/api/auth/mfa/totp/setup", tag = "mfa", request_body = PasswordRequest,
    responses((status = 200, body = TotpSetupResponse),
        (status = 400, description = "validation_failed or invalid_body", body = ErrorEnvelope),
        (status = 401, description = "unauthorized, or invalid_credentials (wrong password)", body = ErrorEnvelope),
        (status = 403, description = "an API key, a cookie without an allowed Origin, or two-factor already on", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests: password checks count as sign-in attempts", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn totp_setup(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<PasswordRequest>,
) -> Result<Json<TotpSetupResponse>, Error> {
    let setup = state
        .auth
        .mfa()
        .setup(&principal, body.password, &client)
        .await?;
    Ok(Json(TotpSetupResponse {
        secret: setup.secret,
        otpauth_url: setup.otpauth_url,
    }))
}

/// Confirm TOTP with a first code: two-factor is on, and the recovery codes are shown once.
#[utoipa::path(post, path = "/api/auth/mfa/totp/confirm", tag = "mfa", request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodesResponse),
        (status = 400, description = "validation_failed (wrong code, or no setup waiting) or invalid_body", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key, or a cookie without an allowed Origin", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn totp_confirm(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<CodeRequest>,
) -> Result<Json<RecoveryCodesResponse>, Error> {
    too_long("code", &body.code, 64)?;
    let codes = state
        .auth
        .mfa()
        .confirm(&principal, &body.code, &client)
        .await?;
    Ok(Json(RecoveryCodesResponse {
        recovery_codes: codes,
    }))
}

/// Turn TOTP off, with the password and a current (or recovery) code.
#[utoipa::path(delete, path = "/api/auth/mfa/totp", tag = "mfa", request_body = DisableRequest,
    responses((status = 200, body = MessageResponse),
        (status = 400, description = "validation_failed (wrong code) or invalid_body", body = ErrorEnvelope),
        (status = 401, description = "unauthorized, or invalid_credentials (wrong password)", body = ErrorEnvelope),
        (status = 403, description = "an API key, or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 404, description = "not_found: two-factor is not on", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn totp_disable(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<DisableRequest>,
) -> Result<Json<MessageResponse>, Error> {
    too_long("code", &body.code, 64)?;
    state
        .auth
        .mfa()
        .disable(&principal, body.password, &body.code, &client)
        .await?;
    Ok(Json(MessageResponse {
        message: "Two-factor authentication is off".into(),
    }))
}

/// Sign-in's second step: the `mfa_token` and a TOTP or recovery code → the sign-in answer.
#[utoipa::path(post, path = "/api/auth/mfa/verify", tag = "mfa", request_body = VerifyRequest,
    responses((status = 200, description = "Signed in; also sets the `auth.sid` cookie", body = super::auth::SignInResponse),
        (status = 400, description = "invalid_token (unknown, used or expired mfa_token, or dead after 5 wrong codes), validation_failed or invalid_body", body = ErrorEnvelope),
        (status = 401, description = "invalid_credentials: wrong or replayed code", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests, with Retry-After", body = ErrorEnvelope)))]
async fn verify(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    too_long("code", &body.code, 64)?;
    let tokens = state
        .auth
        .mfa()
        .verify(&body.mfa_token, &body.code, client)
        .await?;
    Ok(signed_in(&state, tokens, "Login successful!"))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct NotMeRequest {
    /// The `token` of the "this wasn't me" link of a new-sign-in email.
    #[schema(required = true, min_length = 1)]
    pub token: String,
}

/// "This wasn't me": every session of the account ends and a password-reset email is sent.
#[utoipa::path(post, path = "/api/auth/not-me", tag = "mfa", request_body = NotMeRequest,
    responses((status = 200, body = MessageResponse),
        (status = 400, description = "invalid_token (unknown, used or expired link), validation_failed or invalid_body", body = ErrorEnvelope)))]
async fn not_me(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<NotMeRequest>,
) -> Result<Json<MessageResponse>, Error> {
    state.auth.not_me(&body.token, &client).await?;
    Ok(Json(MessageResponse {
        message: "Every session of your account is signed out. We sent you an email to choose a new password.".into(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// 1-based (default 1).
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    #[param(minimum = 1)]
    pub page: Option<i64>,
    /// 1–100 (default 50).
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    pub id: i64,
    /// RFC 3339.
    pub created_at: String,
    /// `sign_in`, `sign_in_failed`, `sign_in_locked`, `refresh_token_reused`,
    /// `password_changed`, `password_reset`, `mfa_enabled`, `mfa_disabled`, `mfa_failed`,
    /// `mfa_removed_by_admin`, `recovery_code_used`, `api_key_created`, `api_key_revoked`,
    /// `role_changed`, `account_activated`, `account_deactivated`, … (see the README).
    pub kind: String,
    /// Who did it (a user id), if a signed-in person did.
    pub actor: Option<String>,
    /// Whose account it concerns (a user id).
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub events: Vec<AuditEventView>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
}

fn audit_list(listed: AuditPage, page: i64, per_page: i64) -> Json<AuditList> {
    Json(AuditList {
        events: listed
            .events
            .into_iter()
            .map(|e| AuditEventView {
                id: e.id,
                created_at: crate::time::rfc3339(e.created_at),
                kind: e.kind,
                actor: e.actor,
                target: e.target,
                ip: e.ip,
                user_agent: e.user_agent,
                details: e.details,
            })
            .collect(),
        page,
        per_page,
        total: listed.total,
    })
}

/// The signed-in user's security events (the audit entries about their account), newest first.
#[utoipa::path(get, path = "/api/users/me/security-events", tag = "users", params(EventsQuery),
    responses((status = 200, body = AuditList),
        (status = 400, description = "validation_failed: page or per_page out of range, or not integers", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key without profile:read", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = [])))]
async fn security_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(query): Query<EventsQuery>,
) -> Result<Json<AuditList>, Error> {
    let (page, per_page) = (query.page.unwrap_or(1), query.per_page.unwrap_or(50));
    let listed = state
        .auth
        .audit()
        .own_events(&principal, page, per_page)
        .await?;
    Ok(audit_list(listed, page, per_page))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// 1-based (default 1).
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    #[param(minimum = 1)]
    pub page: Option<i64>,
    /// 1–100 (default 50).
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<i64>,
    /// A user id: entries whose actor or target it is.
    pub user: Option<String>,
    /// One kind of entry, e.g. `sign_in_failed`.
    #[param(min_length = 1, max_length = 64)]
    pub kind: Option<String>,
    /// RFC 3339: entries at or after this time.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339: entries before this time.
    #[param(format = DateTime)]
    pub to: Option<String>,
}

fn time_param(field: &str, value: Option<&str>) -> Result<Option<crate::time::Timestamp>, Error> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    Error::Validation(vec![FieldError::new(
                        field,
                        format!("{field} must be an RFC 3339 time, e.g. 2024-01-31T12:00:00Z."),
                    )])
                })
        })
        .transpose()
}

/// The audit log (administrators; keys need `users:read`), newest first.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditList),
        (status = 400, description = "validation_failed: paging, kind or a time out of range", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:read"])))]
async fn audit_log(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditList>, Error> {
    let (page, per_page) = (query.page.unwrap_or(1), query.per_page.unwrap_or(50));
    let filter = AuditFilter {
        user: query
            .user
            .filter(|u| !u.trim().is_empty())
            .map(|u| UserUid::new(u.trim())),
        or_actor: true,
        kind: query.kind,
        from: time_param("from", query.from.as_deref())?,
        to: time_param("to", query.to.as_deref())?,
    };
    let listed = state
        .auth
        .audit()
        .list(&caller, filter, page, per_page)
        .await?;
    Ok(audit_list(listed, page, per_page))
}

/// Remove a user's two-factor authentication (administrators; keys need `users:write`); the
/// user is emailed.
#[utoipa::path(delete, path = "/api/admin/users/{id}/mfa", tag = "admin",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 204, description = "Two-factor is off for this user"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, description = "not_found: no such user, or two-factor is not on", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:write"])))]
async fn admin_remove_mfa(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state
        .auth
        .mfa()
        .remove_by_admin(&caller, &id, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
