//! `HTTP_REDIRECT_PORT` (SPEC §12): a plain-HTTP listener that sends every request to the
//! same path and query on `APP_URL` with 308 (method and body kept), and answers `/health`
//! itself, for load balancers that probe over plain HTTP. The target is built from `APP_URL`
//! only: the client's `Host` (or an absolute-form request target) never chooses where to go.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub fn router(app_url: &str) -> Router {
    let base = app_url.trim_end_matches('/').to_owned();
    Router::new()
        .route("/health", get(super::health))
        .fallback(move |request: Request| {
            let base = base.clone();
            async move { redirect(&base, &request) }
        })
}

fn redirect(base: &str, request: &Request) -> Response {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    // An origin-form target starts with `/`; anything else (`*`) goes to the root.
    let path = if path.starts_with('/') { path } else { "/" };
    match HeaderValue::try_from(format!("{base}{path}")) {
        Ok(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}
