//! `/api/users`: create an account; read, change and delete one's own.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, AuthUser, Caller, Client, MaybeAuthUser};
use super::{AppState, UserView};
use crate::auth::Registration;
use crate::error::{Error, ErrorEnvelope};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_account))
        .routes(routes!(get_me, update_me, delete_me))
        .routes(routes!(login_history))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// How many entries, newest first (1–200, default 50).
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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginHistoryResponse {
    pub entries: Vec<LoginHistoryEntry>,
}

/// The signed-in user's sign-in attempts, newest first.
#[utoipa::path(get, path = "/me/login-history", tag = "users", params(HistoryQuery),
    responses((status = 200, body = LoginHistoryResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, description = "an API key without profile:read", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = [])))]
async fn login_history(
    State(state): State<AppState>,
    Caller(principal): Caller,
    axum::extract::Query(query): axum::extract::Query<HistoryQuery>,
) -> Result<Json<LoginHistoryResponse>, Error> {
    let records = state
        .auth
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
            })
            .collect(),
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateAccountRequest {
    #[schema(example = "Ada Lovelace")]
    pub name: String,
    #[schema(example = "ada.lovelace")]
    pub username: String,
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub password: String,
    /// `admin` only when the caller is an administrator.
    pub role: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateAccountResponse {
    #[schema(example = "User registered successfully!")]
    pub message: String,
    pub user: UserView,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct UpdateProfileRequest {
    pub name: Option<String>,
    /// An empty string removes the phone number.
    pub phone: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeleteAccountRequest {
    /// The account's current password.
    pub password: String,
}

/// Create an account. Public sign-up always gets role `user`.
#[utoipa::path(post, path = "/create-account", tag = "users", request_body = CreateAccountRequest,
    responses(
        (status = 201, body = CreateAccountResponse),
        (status = 400, description = "validation_failed, with a weak password's feedback in details", body = ErrorEnvelope),
        (status = 403, description = "role admin asked by a non-admin", body = ErrorEnvelope),
        (status = 409, description = "username_taken or email_taken", body = ErrorEnvelope)),
    security((), ("bearer" = []), ("cookie" = [])))]
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
    responses((status = 200, body = UserView), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn update_me(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    ApiJson(body): ApiJson<UpdateProfileRequest>,
) -> Result<Json<UserView>, Error> {
    let user = state
        .auth
        .update_profile(&principal, body.name.as_deref(), body.phone.as_deref())
        .await?;
    Ok(Json(UserView::from(&user)))
}

/// Delete the signed-in user's account and everything of it; needs the password.
#[utoipa::path(delete, path = "/me", tag = "users", request_body = DeleteAccountRequest,
    responses((status = 204), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn delete_me(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<DeleteAccountRequest>,
) -> Result<StatusCode, Error> {
    state
        .auth
        .delete_account(&principal, body.password, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
