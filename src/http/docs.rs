//! `GET /api/openapi.json` and `GET /api/docs`: the API described from the handlers' own annotations.

use std::fmt::Write;

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::{OpenApi, RefOr};

use super::AppState;

pub fn router(openapi: OpenApi) -> Router<AppState> {
    let json = openapi.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    let page = render(&openapi);
    Router::new()
        .route(
            "/api/openapi.json",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    json,
                )
                    .into_response()
            }),
        )
        .route(
            "/api/docs",
            get(move || async move {
                (
                    // The page is static HTML with inline styles and no script.
                    [(
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(
                            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                        ),
                    )],
                    Html(page),
                )
                    .into_response()
            }),
        )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn schema_name<T>(r: &RefOr<T>) -> String {
    match r {
        RefOr::Ref(r) => r
            .ref_location
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned(),
        RefOr::T(_) => "inline".to_owned(),
    }
}

fn operations(item: &utoipa::openapi::PathItem) -> Vec<(HttpMethod, &Operation)> {
    [
        (HttpMethod::Get, &item.get),
        (HttpMethod::Post, &item.post),
        (HttpMethod::Put, &item.put),
        (HttpMethod::Patch, &item.patch),
        (HttpMethod::Delete, &item.delete),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

fn method_name(m: &HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Head => "HEAD",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
    }
}

/// A plain reference page: every route, what it takes, what it answers.
fn render(openapi: &OpenApi) -> String {
    let mut rows = String::new();
    for (path, item) in &openapi.paths.paths {
        for (method, op) in operations(item) {
            let summary = op
                .summary
                .clone()
                .or_else(|| op.description.clone())
                .unwrap_or_default();
            let body = op
                .request_body
                .as_ref()
                .and_then(|b| b.content.values().next())
                .and_then(|c| c.schema.as_ref())
                .map(schema_name)
                .unwrap_or_default();
            let mut responses = String::new();
            for (status, response) in &op.responses.responses {
                let schema = match response {
                    RefOr::T(r) => r
                        .content
                        .values()
                        .next()
                        .and_then(|c| c.schema.as_ref())
                        .map(schema_name)
                        .unwrap_or_default(),
                    RefOr::Ref(r) => schema_name(&RefOr::<()>::Ref(r.clone())),
                };
                let _ = write!(responses, "{status} {schema}<br>");
            }
            let secured = if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                "yes"
            } else {
                ""
            };
            let _ = write!(
                rows,
                "<tr><td><b>{}</b></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                method_name(&method),
                escape(path),
                escape(&summary),
                escape(&body),
                responses,
                secured
            );
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Auth Flow API</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3rem .6rem;vertical-align:top}}</style></head><body>\
         <h1>Auth Flow API {}</h1><p>The machine-readable description is <a href=\"/api/openapi.json\">/api/openapi.json</a>. \
         Errors use the envelope <code>{{\"error\": {{status, code, message, details, timestamp, path, method, request_id}}}}</code>.</p>\
         <table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Body</th><th>Responses</th><th>Auth</th></tr>{rows}</table></body></html>",
        escape(&openapi.info.version)
    )
}
