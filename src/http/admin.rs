//! Administration: `/api/users/users` (the old service's list) and `/api/admin/users/{id}`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::{ApiJson, Caller, Client};
use super::{AppState, MessageResponse, UserView};
use crate::error::{Error, FieldError};
use crate::store::{AdminChange, Role};

/// Under `/api/users`.
pub fn list_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_users))
}

/// Under `/api/admin`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(logout_user))
        .routes(routes!(unlock_user))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// 1-based (default 1).
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    #[param(minimum = 1)]
    pub page: Option<i64>,
    /// 1–100 (default 50).
    #[serde(default, deserialize_with = "super::extract::optional_whole_number")]
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<i64>,
    /// Matches username, email or name, ignoring case.
    pub q: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdminUpdateRequest {
    pub role: Option<Role>,
    pub active: Option<bool>,
    pub email_verified: Option<bool>,
}

/// List accounts (administrators; keys need `users:read`).
#[utoipa::path(get, path = "/users", tag = "admin", params(ListQuery),
    responses((status = 200, body = UserList), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:read"])))]
async fn list_users(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<UserList>, Error> {
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(50);
    let mut errors = Vec::new();
    if page < 1 {
        errors.push(FieldError::new("page", "Page must be 1 or more."));
    }
    if !(1..=100).contains(&per_page) {
        errors.push(FieldError::new(
            "per_page",
            "per_page must be between 1 and 100.",
        ));
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let (users, total) = state
        .auth
        .admin()
        .list_users(&caller, query.q.as_deref(), page, per_page)
        .await?;
    Ok(Json(UserList {
        users: users.iter().map(UserView::from).collect(),
        page,
        per_page,
        total,
    }))
}

/// One account (administrators; keys need `users:read`).
#[utoipa::path(get, path = "/users/{id}", tag = "admin",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, body = UserView), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:read"])))]
async fn get_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<UserView>, Error> {
    Ok(Json(UserView::from(
        &state.auth.admin().user(&caller, &id).await?,
    )))
}

/// Change an account's role, active flag or email verification (administrators; keys need
/// `users:write`). A role change or a deactivation revokes the account's sessions at once.
#[utoipa::path(patch, path = "/users/{id}", tag = "admin", request_body = AdminUpdateRequest,
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:write"])))]
async fn update_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Client(client): Client,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AdminUpdateRequest>,
) -> Result<Json<UserView>, Error> {
    let change = AdminChange {
        role: body.role,
        active: body.active,
        email_verified: body.email_verified,
    };
    Ok(Json(UserView::from(
        &state
            .auth
            .admin()
            .update_user(&caller, &id, change, &client)
            .await?,
    )))
}

/// Delete an account and everything of it (administrators; keys need `users:write`).
#[utoipa::path(delete, path = "/users/{id}", tag = "admin",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:write"])))]
async fn delete_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state.auth.admin().delete_user(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every session of an account (administrators; keys need `users:write`).
#[utoipa::path(post, path = "/users/{id}/logout-all", tag = "admin",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, body = MessageResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:write"])))]
async fn logout_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageResponse>, Error> {
    let n = state.auth.admin().logout_all(&caller, &id).await?;
    Ok(Json(MessageResponse {
        message: format!("Revoked {n} session(s)"),
    }))
}

/// Clear every sign-in failure counted against an account, lifting its lockouts
/// (administrators; keys need `users:write`).
#[utoipa::path(post, path = "/users/{id}/unlock", tag = "admin",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, body = MessageResponse), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = []), ("api_key" = ["users:write"])))]
async fn unlock_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageResponse>, Error> {
    let n = state.auth.admin().unlock(&caller, &id).await?;
    Ok(Json(MessageResponse {
        message: format!("Cleared {n} sign-in failure(s)"),
    }))
}
