//! `/api/users`: create an account; read, change and delete one's own.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::{ApiJson, AuthUser, Caller, Client, MaybeAuthUser};
use super::{AppState, UserView};
use crate::auth::Registration;
use crate::error::Error;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_account))
        .routes(routes!(get_me, update_me, delete_me))
        .routes(routes!(login_history))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// How many entries, newest first (default 50); values outside 1–200 are taken as the
    /// nearer bound.
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginHistoryEntry {
    pub ip: String,
    /// What the geolocation lookup said (`{"ip", "city", …}`), `Local` for private
    /// addresses, `{"ip", "error"}` when the lookup failed.
    #[schema(value_type = Object)]
    pub location: serde_json::Value,
    pub user_agent: Option<String>,
    /// `success` or `failure`.
    pub status: String,
    pub created_at: String,
    /// How: `password`, `github`, `google` or `oidc:<name>`; null on records made before
    /// social sign-in existed.
    pub method: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginHistoryResponse {
    pub entries: Vec<LoginHistoryEntry>,
}

/// The signed-in user's sign-in attempts, newest first.
#[utoipa::path(get, path = "/me/login-history", tag = "users", params(HistoryQuery),
    responses((status = 200, body = LoginHistoryResponse),
        (status = 400, description = "validation_failed: `limit` is not an integer", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key without profile:read", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = [])))]
async fn login_history(
    State(state): State<AppState>,
    Caller(principal): Caller,
    axum::extract::Query(query): axum::extract::Query<HistoryQuery>,
) -> Result<Json<LoginHistoryResponse>, Error> {
    let records = state
        .auth
        .accounts()
        .login_history(&principal, query.limit.unwrap_or(50))
        .await?;
    Ok(Json(LoginHistoryResponse {
        entries: records
            .into_iter()
            .map(|r| LoginHistoryEntry {
                ip: r.ip,
                location: r.location,
                user_agent: r.user_agent,
                status: if r.success { "success" } else { "failure" }.to_owned(),
                created_at: crate::time::rfc3339(r.created_at),
                method: r.method,
            })
            .collect(),
    }))
}

/// Surrounding whitespace is trimmed before the rules below apply. The password must also
/// score at least 3 of 4 with zxcvbn, judged with the username, name and email: that rule has
/// no JSON Schema form, so a password within 8–128 characters can still be refused with 400
/// `validation_failed` and zxcvbn's feedback in `details`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateAccountRequest {
    /// 1–110 characters (inner runs of whitespace count as one space): letters of any script
    /// with their combining marks, spaces, apostrophes (`'` `’`), hyphens and periods, and at
    /// least one letter.
    #[schema(
        required = true,
        example = "Ada Lovelace",
        min_length = 1,
        max_length = 110
    )]
    pub name: String,
    /// 6–18 of `A–Z a–z 0–9 . _ -`; unique ignoring case.
    #[schema(
        required = true,
        example = "ada.lovelace",
        min_length = 6,
        max_length = 18,
        pattern = r"^[A-Za-z0-9._-]{6,18}$"
    )]
    pub username: String,
    /// A valid address (a dotted domain; a local part of at most 64 characters, which the
    /// pattern shows with at most two dots though any dot-atom is accepted), kept lower-cased;
    /// unique.
    #[schema(
        required = true,
        example = "ada@example.com",
        min_length = 6,
        max_length = 200,
        pattern = r"^([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}|[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,32}(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,15}){1,2})@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}$"
    )]
    pub email: String,
    /// 8–128 characters, no composition rules, and a zxcvbn score of at least 3.
    #[schema(
        required = true,
        example = "correct horse battery staple",
        min_length = 8,
        max_length = 128
    )]
    pub password: String,
    /// `admin` only when the caller is a signed-in administrator (else 403); `user`, an empty
    /// string or null give `user`.
    #[schema(pattern = r"^(user|admin)?$")]
    pub role: Option<String>,
    /// At most 15 characters of digits, spaces, `+ - ( )`, with at least 4 digits.
    #[schema(
        example = "+1 555 0100",
        max_length = 15,
        pattern = r"^ *$|^ *([+()-][0-9 +()-]*)?[0-9]([0-9 +()-]*[0-9]){3}([0-9 +()-]*[+()-])? *$"
    )]
    pub phone: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateAccountResponse {
    #[schema(example = "User registered successfully!")]
    pub message: String,
    pub user: UserView,
}

/// Absent or null fields are left as they are; the rules are those of create-account
/// (the name's alphabet has no JSON Schema form: see there).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct UpdateProfileRequest {
    /// 1–110 characters: letters of any script, spaces, apostrophes, hyphens, periods.
    #[schema(min_length = 1, max_length = 110)]
    pub name: Option<String>,
    /// At most 15 characters of digits, spaces, `+ - ( )`, with at least 4 digits; an empty
    /// string removes the phone number.
    #[schema(
        max_length = 15,
        pattern = r"^ *$|^ *([+()-][0-9 +()-]*)?[0-9]([0-9 +()-]*[0-9]){3}([0-9 +()-]*[+()-])? *$"
    )]
    pub phone: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeleteAccountRequest {
    /// The account's current password.
    #[schema(required = true, min_length = 1)]
    pub password: String,
}

/// Create an account. Public sign-up always gets role `user`.
#[utoipa::path(post, path = "/create-account", tag = "users", request_body = CreateAccountRequest,
    responses(
        (status = 201, body = CreateAccountResponse),
        (status = 400, description = "validation_failed, with a weak password's feedback in details; or invalid_body", body = ErrorEnvelope),
        (status = 401, description = "unauthorized: credentials were sent and are not valid (they are optional)", body = ErrorEnvelope),
        (status = 403, description = "forbidden: role admin asked by anyone but a signed-in administrator, or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 409, description = "username_taken or email_taken", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests: sign-ups from this address (RATE_LIMIT_SIGNUPS_PER_IP an hour)", body = ErrorEnvelope)),
    security((), ("bearer" = []), ("cookie" = []), ("api_key" = [])))]
async fn create_account(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<CreateAccountRequest>,
) -> Result<(StatusCode, Json<CreateAccountResponse>), Error> {
    let registration = Registration {
        name: body.name,
        username: body.username,
        email: body.email,
        password: body.password,
        phone: body.phone,
        role: body.role,
    };
    let user = state
        .auth
        .accounts()
        .register(registration, caller.as_ref(), &client)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateAccountResponse {
            message: "User registered successfully!".into(),
            user: UserView::from(&user),
        }),
    ))
}

/// The signed-in user.
#[utoipa::path(get, path = "/me", tag = "users",
    responses((status = 200, body = UserView), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key without profile:read", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = [])))]
async fn get_me(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<UserView>, Error> {
    Ok(Json(UserView::from(&state.auth.own_profile(&principal)?)))
}

/// Change the signed-in user's name or phone.
#[utoipa::path(patch, path = "/me", tag = "users", request_body = UpdateProfileRequest,
    responses((status = 200, body = UserView), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot change the account), or a cookie without an allowed Origin", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn update_me(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    ApiJson(body): ApiJson<UpdateProfileRequest>,
) -> Result<Json<UserView>, Error> {
    let user = state
        .auth
        .accounts()
        .update_profile(&principal, body.name.as_deref(), body.phone.as_deref())
        .await?;
    Ok(Json(UserView::from(&user)))
}

/// Delete the signed-in user's account and everything of it; needs the password.
#[utoipa::path(delete, path = "/me", tag = "users", request_body = DeleteAccountRequest,
    responses((status = 204, description = "The account and everything of it are gone"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, description = "unauthorized, or invalid_credentials (wrong password)", body = ErrorEnvelope),
        (status = 403, description = "an API key (keys cannot delete the account), or a cookie without an allowed Origin", body = ErrorEnvelope),
        (status = 429, description = "too_many_requests: too many wrong passwords for this account", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn delete_me(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<DeleteAccountRequest>,
) -> Result<StatusCode, Error> {
    state
        .auth
        .accounts()
        .delete_account(&principal, body.password, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
