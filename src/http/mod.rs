//! The HTTP edge: `router()` merges each route group with the layers every answer goes through.

mod admin;
mod auth;
pub mod cors;
mod docs;
pub mod error;
pub mod extract;
mod keys;
mod mfa;
mod pages;
mod password;
pub mod redirect;
pub(crate) mod sso;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Json, Router};
use serde::Serialize;
use tower::util::MapRequestLayer;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::config::Config;
use crate::store::User;
use cors::OriginPolicy;
pub use pages::csrf::CsrfKey;

/// Request bodies above this are refused with 413 (SPEC §7).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Requests still running after this are answered 408 (SPEC §7).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Text made safe inside HTML (elements and quoted attributes), for the pages built by hand
/// rather than by an askama template (the API reference, the dev mailbox's bodies).
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Auth>,
    pub config: Arc<Config>,
    pub origins: Arc<OriginPolicy>,
    /// Signs the pages' CSRF tokens.
    pub csrf: Arc<pages::csrf::CsrfKey>,
}

/// A user as the API shows it: no internal ids, no password hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// The account's public id (`user_uid`).
    pub id: String,
    pub username: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub role: crate::store::Role,
    pub email_verified: bool,
    pub active: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or null before the first sign-in.
    pub last_login: Option<String>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.uid.to_string(),
            username: u.username.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            phone: u.phone.clone(),
            role: u.role,
            email_verified: u.email_verified,
            active: u.active,
            created_at: crate::time::rfc3339(u.created_at),
            last_login: u.last_login.map(crate::time::rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    #[schema(example = "ok")]
    pub status: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Auth Flow",
        description = "Accounts, sign-in, JWT access tokens with refresh and revocation, sessions, password recovery and email verification, sign-in history, administration and API keys."
    ),
    components(schemas(error::ErrorEnvelope)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                extract::API_KEY_HEADER,
                "An API key (afk_…), also accepted as Authorization: Bearer afk_…",
            ))),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(extract::SESSION_COOKIE))),
        );
    }
}

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, body = StatusResponse)))]
async fn health() -> Json<StatusResponse> {
    Json(StatusResponse {
        status: "ok".into(),
    })
}

/// `GET /ready`: the database answers.
#[utoipa::path(get, path = "/ready", tag = "service",
    responses((status = 200, body = StatusResponse), (status = 503, body = error::ErrorEnvelope)))]
async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let ping = tokio::time::timeout(Duration::from_secs(2), state.auth.store().ping()).await;
    match ping {
        Ok(Ok(())) => health().await.into_response(),
        Ok(Err(e)) => {
            crate::error::Error::Unavailable(format!("readiness check: {e}")).into_response()
        }
        Err(_) => {
            crate::error::Error::Unavailable("readiness check timed out".into()).into_response()
        }
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .nest("/api/auth", auth::router())
        .nest("/api/users", users::router().merge(admin::list_router()))
        .nest("/api/password", password::router())
        .nest("/api/admin", admin::router())
        .merge(keys::router())
        .merge(sso::router())
        .merge(mfa::router())
}

/// A client's `X-Request-Id` is kept only if it is 1–64 of `[A-Za-z0-9._-]`: it is written
/// into logs and error answers, where anything else could forge lines or fields. An unusable
/// one (or several) is removed, so a fresh id is made for the request.
fn drop_unusable_request_id(mut request: Request) -> Request {
    let keep = {
        let mut ids = request.headers().get_all("x-request-id").iter();
        match (ids.next(), ids.next()) {
            (None, _) => true,
            (Some(id), None) => is_usable_request_id(id.as_bytes()),
            (Some(_), Some(_)) => false,
        }
    };
    if !keep {
        request.headers_mut().remove("x-request-id");
    }
    request
}

fn is_usable_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Refuses what the head alone shows to be wrong, before any body is read: a declared body
/// over the limit (413 at once, instead of reading 64 KiB of it or waiting for the rest) and
/// an ambiguous `Host` (400: which site is meant is for the client to say once).
async fn refuse_malformed_head(request: Request, next: middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
        return crate::error::Error::PayloadTooLarge.into_response();
    }
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        return crate::error::Error::BadRequest("A request must carry exactly one Host header.")
            .into_response();
    }
    next.run(request).await
}

/// With `TLS_CLIENT_AUTH=optional`, the administration routes (API and page) need the
/// connection to have presented a client certificate the handshake verified (SPEC §12).
fn needs_client_certificate(path: &str) -> bool {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    under("/api/admin") || under("/api/users/users") || under("/admin")
}

/// Refuses (403) an administration request on a connection without a verified client
/// certificate, before any credential is read.
async fn require_client_certificate(request: Request, next: middleware::Next) -> Response {
    if needs_client_certificate(request.uri().path())
        && request
            .extensions()
            .get::<crate::tls::ClientCertificate>()
            .is_none()
    {
        return crate::error::Error::Forbidden(
            "A verified TLS client certificate is required for this route.",
        )
        .into_response();
    }
    next.run(request).await
}

pub fn router(state: AppState) -> Router {
    let (api, mut openapi) = api_router().split_for_parts();
    let client_certificates = state
        .config
        .tls
        .as_ref()
        .and_then(|tls| tls.client_auth.as_ref())
        .is_some();
    docs::complete(&mut openapi, client_certificates);
    let production = state.config.is_production();
    // Behind a proxy in production, the proxy speaks TLS to the browser.
    let hsts = production || state.config.tls.is_some();
    let cors = state.origins.cors_layer();
    let mut app = api.merge(docs::router(openapi));
    if state.config.pages {
        app = app.merge(pages::router(production));
    } else {
        app = app.merge(pages::not_me_router());
    }
    let metrics = state.config.metrics_addr.is_some();
    if metrics {
        app = app.route_layer(middleware::from_fn(crate::telemetry::label_route));
    }
    let app = app.with_state(state);

    let x_request_id = HeaderName::from_static("x-request-id");
    let headers = ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        // Pages set their own (`same-origin`, so that browsers send `Origin` with their forms).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ))
        // Every API answer carries tokens or user data, or could: none may be cached.
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            hsts.then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains")),
        ));

    let app = app.layer(
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(drop_unusable_request_id))
            .layer(SetRequestIdLayer::new(x_request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    // The path only: query strings can carry tokens (verification links).
                    .make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        // The subject of a verified client certificate: who, never the key.
                        let client = req
                            .extensions()
                            .get::<crate::tls::ClientCertificate>()
                            .map(|c| tracing::field::display(c.subject()));
                        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, client_certificate = client)
                    })
                    .on_response(DefaultOnResponse::new().level(Level::INFO))
                    // Each server error is logged once, where its cause is known: ours by
                    // `Error::into_response` (a 503 of the full hashing queue only in the
                    // 10 s summary, `Passwords::report_refusals`), pages by their own
                    // handler, the rest by `error::envelope`. tower-http's default would log
                    // every 5xx again at ERROR: a storm's thousands of 503s a second.
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(x_request_id))
            .layer(headers)
            .layer(cors)
            .layer(middleware::from_fn(error::envelope))
            .layer(middleware::from_fn(refuse_malformed_head))
            .option_layer(
                client_certificates.then(|| middleware::from_fn(require_client_certificate)),
            )
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
            ))
            .layer(DefaultBodyLimit::max(BODY_LIMIT)),
    );
    if metrics {
        app.layer(middleware::from_fn(crate::telemetry::record_requests))
    } else {
        app
    }
}
