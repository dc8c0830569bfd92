//! `/api/password`: forgotten-password emails, resets with an emailed token, and changes.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::{ApiJson, AuthUser, Client};
use super::{AppState, MessageResponse};
use crate::error::Error;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
        .routes(routes!(change_password))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct EmailRequest {
    /// A valid address (a dotted domain; a local part of at most 64 characters, which the
    /// pattern shows with at most two dots though any dot-atom is accepted); case and
    /// surrounding whitespace are ignored.
    #[schema(
        required = true,
        example = "ada@example.com",
        min_length = 6,
        max_length = 200,
        pattern = r"^([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}|[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,32}(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,15}){1,2})@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}$"
    )]
    pub email: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResetPasswordRequest {
    /// The `token` of the emailed link (surrounding whitespace ignored).
    #[schema(
        required = true,
        min_length = 1,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub token: String,
    /// 8–128 characters and a zxcvbn score of at least 3 (see create-account).
    #[schema(required = true, min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct ChangePasswordRequest {
    #[schema(
        required = true,
        min_length = 1,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub current_password: String,
    /// 8–128 characters and a zxcvbn score of at least 3 (see create-account).
    #[schema(required = true, min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// The same answer whether or not the address has an account.
pub const RECOVERY_MESSAGE: &str = "If an account exists for this address, an email is on its way.";

fn message(text: &str) -> Json<MessageResponse> {
    Json(MessageResponse {
        message: text.to_owned(),
    })
}

/// Email a password-reset link (valid 1 hour) if the address has an account.
#[utoipa::path(post, path = "/forgot-password", tag = "password", request_body = EmailRequest,
    responses((status = 200, description = "Same answer for any address", body = MessageResponse),
        (status = 400, body = ErrorEnvelope),
        (status = 429, description = "too_many_requests: recovery emails for this address or from this client (an hour)", body = ErrorEnvelope)))]
async fn forgot_password(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Json<MessageResponse>, Error> {
    state
        .auth
        .recovery()
        .forgot_password(&body.email, &client)
        .await?;
    Ok(message(RECOVERY_MESSAGE))
}

/// Set a new password with an emailed token; every session is revoked.
#[utoipa::path(post, path = "/reset-password", tag = "password", request_body = ResetPasswordRequest,
    responses((status = 200, body = MessageResponse),
        (status = 400, description = "invalid_token, or validation_failed", body = ErrorEnvelope)))]
async fn reset_password(
    State(state): State<AppState>,
    Client(client): Client,
    ApiJson(body): ApiJson<ResetPasswordRequest>,
) -> Result<Json<MessageResponse>, Error> {
    state
        .auth
        .recovery()
        .reset_password(&body.token, &body.password, &client)
        .await?;
    Ok(message("Password updated successfully!"))
}

/// Change the password of the signed-in user; other sessions are revoked.
#[utoipa::path(post, path = "/change", tag = "password", request_body = ChangePasswordRequest,
    responses((status = 200, body = MessageResponse), (status = 400, body = ErrorEnvelope),
        (status = 401, description = "unauthorized, or invalid_credentials (wrong current password)", body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot change passwords), or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests: too many wrong passwords for this account", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn change_password(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> Result<Json<MessageResponse>, Error> {
    state
        .auth
        .recovery()
        .change_password(
            &principal,
            body.current_password,
            &body.new_password,
            &client,
        )
        .await?;
    Ok(message("Password changed successfully!"))
}
