//! `/api/keys`: API keys of the signed-in user (a key cannot manage keys).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::{ApiJson, AuthUser, Client};
use super::AppState;
use crate::auth::{KeyRequest, Scope};
use crate::error::Error;
use crate::store::ApiKey;

/// At the root: `/api/keys` itself is a route, which nesting cannot express.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateKeyRequest {
    /// 1–100 characters, no control characters; surrounding whitespace is trimmed.
    #[schema(
        required = true,
        example = "deploy bot",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]([^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$"
    )]
    pub name: String,
    /// Default `["profile:read"]`; `users:read` / `users:write` only for an administrator's
    /// key (else 403). Repeated scopes count once.
    #[schema(value_type = Option<Vec<Scope>>, min_items = 1)]
    pub scopes: Option<Vec<String>>,
    /// No expiry when omitted or null.
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<i64>,
    /// The account's current password: a session alone cannot mint a lasting credential
    /// (checked and limited like a sign-in: 401 `invalid_credentials`, 429).
    #[schema(required = true, min_length = 1)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    pub id: String,
    pub name: String,
    /// `afk_…`: shown only here, stored only as a digest.
    pub key: String,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            created_at: crate::time::rfc3339(k.created_at),
            expires_at: k.expires_at.map(crate::time::rfc3339),
            last_used_at: k.last_used_at.map(crate::time::rfc3339),
        }
    }
}

/// Create an API key; its value is shown once.
#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKeyResponse), (status = 400, body = ErrorEnvelope),
        (status = 401, description = "not signed in, or a wrong password (invalid_credentials)", body = ErrorEnvelope),
        (status = 429, description = "too many wrong passwords", body = ErrorEnvelope),
        (status = 403, description = "users:* scopes asked by a non-administrator, an API key (keys cannot make keys), or a cookie without an allowed Origin", body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn create_key(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKeyResponse>), Error> {
    let created = state
        .auth
        .keys()
        .create(
            &principal,
            KeyRequest {
                name: body.name,
                scopes: body.scopes,
                expires_in_days: body.expires_in_days,
                password: body.password,
            },
            &client,
        )
        .await?;
    let view = KeyView::from(&created.key);
    Ok((
        StatusCode::CREATED,
        Json(CreatedKeyResponse {
            id: view.id,
            name: view.name,
            key: created.value,
            scopes: view.scopes,
            created_at: view.created_at,
            expires_at: view.expires_at,
        }),
    ))
}

/// The signed-in user's keys, without their secrets.
#[utoipa::path(get, path = "/api/keys", tag = "keys",
    responses((status = 200, body = KeyList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn list_keys(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
) -> Result<Json<KeyList>, Error> {
    let keys = state.auth.keys().list(&principal).await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(KeyView::from).collect(),
    }))
}

/// Delete a key; it stops working at once.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 204), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("cookie" = [])))]
async fn delete_key(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state.auth.keys().delete(&principal, &id, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}
