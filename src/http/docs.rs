//! `GET /api/openapi.json` and `GET /api/docs`: the API described from the handlers' own annotations.

use std::fmt::Write;

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response, ResponseBuilder};

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

/// Adds what the layers and extractors answer, not the handlers, to every operation they
/// apply to, so that each route lists every status it can give (SPEC §9): 400, 413 and 415
/// where a JSON body is read; 401 where credentials are read; 403 where a session cookie
/// may make a change (the Origin check); `Retry-After` on every 429. It also says what the
/// derive cannot: sign-in needs `username` or `email`.
pub fn complete(openapi: &mut OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let needs_database = path != "/health";
        for (method, op) in operations_mut(item) {
            let unsafe_method = !matches!(method, HttpMethod::Get | HttpMethod::Head);
            if op.request_body.is_some() {
                add(op, 400, "`validation_failed` (a rule of the schema, with the field in `details`) or `invalid_body` (not JSON, not an object, a wrong type)");
                add(op, 413, "`payload_too_large`: the body is over 64 KiB");
                add(
                    op,
                    415,
                    "`unsupported_media_type`: the body is not `Content-Type: application/json`",
                );
            }
            let security = op.security.as_ref().map(|reqs| {
                let json = serde_json::to_value(reqs).unwrap_or_default();
                (
                    json.to_string().contains("\"bearer\""),
                    json.to_string().contains("\"cookie\""),
                )
            });
            if let Some((bearer, cookie)) = security {
                if bearer || cookie {
                    add(
                        op,
                        401,
                        "`unauthorized` (missing, malformed or revoked credentials) or `token_expired` (an access token past its `exp`)",
                    );
                }
                if cookie && unsafe_method {
                    add(op, 403, "`forbidden`: a change authenticated by the session cookie without an allowed `Origin`");
                }
            }
            if needs_database {
                add(
                    op,
                    503,
                    "`unavailable`: the database does not answer; retry after `Retry-After`",
                );
            }
            if let Some(RefOr::T(response)) = op.responses.responses.get_mut("401") {
                response.headers.insert(
                    "WWW-Authenticate".to_owned(),
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some(
                            "`Bearer error=\"invalid_token\"` when a bearer credential or session \
                             cookie was missing, bad, expired or revoked (RFC 6750); absent for \
                             `invalid_credentials`.",
                        ))
                        .build(),
                );
            }
            if let Some(RefOr::T(response)) = op.responses.responses.get_mut("503") {
                response.headers.insert(
                    "Retry-After".to_owned(),
                    HeaderBuilder::new()
                        .schema(
                            ObjectBuilder::new()
                                .schema_type(Type::Integer)
                                .minimum(Some(1)),
                        )
                        .description(Some("Seconds to wait before retrying."))
                        .build(),
                );
            }
            if let Some(RefOr::T(response)) = op.responses.responses.get_mut("429") {
                response.headers.insert(
                    "Retry-After".to_owned(),
                    HeaderBuilder::new()
                        .schema(
                            ObjectBuilder::new()
                                .schema_type(Type::Integer)
                                .minimum(Some(1)),
                        )
                        .description(Some(
                            "Seconds until a new attempt can succeed; always sent with 429.",
                        ))
                        .build(),
                );
            }
        }
    }
    if let Some(components) = openapi.components.as_mut() {
        if let Some(signin) = components.schemas.remove("SignInRequest") {
            let one_of_them = AnyOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .required("username"),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .required("email"),
                );
            components.schemas.insert(
                "SignInRequest".to_owned(),
                AllOfBuilder::new().item(signin).item(one_of_them).into(),
            );
        }
    }
}

/// Lists `status` with the error envelope unless the operation already describes it.
fn add(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorEnvelope"))),
        )
        .build()
        .into()
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Delete, &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
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
