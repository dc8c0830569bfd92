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

use super::escape_html as escape;
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
pub fn complete(openapi: &mut OpenApi, client_certificates: bool) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let needs_database = path != "/health";
        let needs_certificate = client_certificates && super::needs_client_certificate(path);
        for (method, op) in operations_mut(item) {
            if needs_certificate {
                add_or_extend(
                    op,
                    403,
                    "`forbidden`: the connection presented no verified TLS client certificate (`TLS_CLIENT_AUTH=optional`)",
                );
            }
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
                    "`unavailable`: the database does not answer; `overloaded`: every password-hashing slot is busy for longer than `HASH_QUEUE_MAX_WAIT_MS`; retry after `Retry-After`",
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

/// Lists `status`, or adds `description` to the one already listed (a second reason for it).
fn add_or_extend(op: &mut Operation, status: u16, description: &str) {
    match op.responses.responses.get_mut(&status.to_string()) {
        Some(RefOr::T(response)) => {
            response.description = format!("{}; or {description}", response.description);
        }
        Some(RefOr::Ref(_)) => {}
        None => add(op, status, description),
    }
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

/// The reference page: for every route, what it is for, who may call it, its parameters and
/// body fields (type, required, constraints), and every answer it can give. Built once at
/// start from the OpenAPI document, as static HTML: readable offline, no script.
fn render(openapi: &OpenApi) -> String {
    let doc = serde_json::to_value(openapi).unwrap_or_default();
    let schemas = doc
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_default();
    let mut index = String::new();
    let mut sections = String::new();
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else {
                continue;
            };
            let anchor = format!("{method}-{}", path.replace(['/', '{', '}'], "-"));
            let summary = op["summary"]
                .as_str()
                .or_else(|| op["description"].as_str())
                .unwrap_or_default();
            let _ = write!(
                index,
                "<li><a href=\"#{anchor}\"><b>{}</b> <code>{}</code></a></li>",
                method.to_uppercase(),
                escape(path)
            );
            let _ = write!(
                sections,
                "<section id=\"{anchor}\"><h2><span class=\"m\">{}</span> <code>{}</code></h2><p>{}</p>",
                method.to_uppercase(),
                escape(path),
                prose(summary)
            );
            if let Some(description) = op["description"].as_str() {
                if op["summary"].as_str().is_some() && description != summary {
                    let _ = write!(sections, "<p>{}</p>", prose(description));
                }
            }
            let _ = write!(sections, "<p><b>Authentication:</b> {}</p>", security(op));
            if let Some(parameters) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
                sections.push_str("<h3>Parameters</h3><table><tr><th>Name</th><th>In</th><th>Type</th><th>Required</th><th>Rules and meaning</th></tr>");
                for parameter in parameters {
                    let schema = resolve(&parameter["schema"], &schemas);
                    let _ = write!(
                        sections,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(parameter["name"].as_str().unwrap_or_default()),
                        escape(parameter["in"].as_str().unwrap_or_default()),
                        type_of(&schema),
                        if parameter["required"].as_bool() == Some(true) { "yes" } else { "no" },
                        rules(&schema, parameter["description"].as_str())
                    );
                }
                sections.push_str("</table>");
            }
            if let Some(body) = op.pointer("/requestBody/content/application~1json/schema") {
                sections.push_str("<h3>Request body (JSON)</h3>");
                sections.push_str(&fields(body, &schemas));
            }
            sections.push_str(
                "<h3>Responses</h3><table><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>",
            );
            if let Some(responses) = op["responses"].as_object() {
                for (status, response) in responses {
                    let schema = response
                        .pointer("/content/application~1json/schema")
                        .map(type_of)
                        .unwrap_or_default();
                    // Without a description of its own, a status says what it generally means.
                    let meaning = response["description"]
                        .as_str()
                        .filter(|d| !d.is_empty())
                        .or_else(|| {
                            status
                                .parse::<u16>()
                                .ok()
                                .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                                .and_then(|s| s.canonical_reason())
                        })
                        .unwrap_or_default();
                    let _ = write!(
                        sections,
                        "<tr><td><b>{}</b></td><td>{}</td><td>{}</td></tr>",
                        escape(status),
                        prose(meaning),
                        schema
                    );
                }
            }
            sections.push_str("</table></section>");
        }
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Auth Flow API</title><style>{STYLE}</style></head><body><main>\
         <h1>Auth Flow API {}</h1>\
         <p>Every route, what it takes and what it answers. The machine-readable description is \
         <a href=\"/api/openapi.json\">/api/openapi.json</a>. Every error answer is the envelope \
         <code>{{\"error\": {{status, code, message, details, timestamp, path, method, request_id}}}}</code>; \
         <code>details</code> lists <code>{{field, message}}</code> for validation errors.</p>\
         <nav><h2>Routes</h2><ul>{index}</ul></nav>{sections}</main></body></html>",
        escape(&openapi.info.version)
    )
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;\
    background:#f3f4f6;color:#1f2937;line-height:1.5}main{max-width:960px;margin:0 auto;padding:1.5rem}\
    section,nav{background:#fff;border-radius:8px;padding:1rem 1.5rem;margin:1rem 0}\
    h2{font-size:1.15rem}h3{font-size:1rem;margin-bottom:.3rem}.m{color:#1d4ed8}\
    table{border-collapse:collapse;width:100%;font-size:.92rem}td,th{border:1px solid #d1d5db;\
    padding:.3rem .5rem;vertical-align:top;text-align:left}th{background:#f9fafb}\
    code{background:#eef2ff;padding:0 .2rem;border-radius:3px}nav ul{columns:2;padding-left:1rem}\
    a{color:#1d4ed8}@media(max-width:640px){nav ul{columns:1}table{font-size:.85rem}}";

/// Text from the annotations: escaped, with `code` spans shown as code.
fn prose(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn security(op: &serde_json::Value) -> String {
    let Some(requirements) = op["security"].as_array().filter(|s| !s.is_empty()) else {
        return "none".to_owned();
    };
    let ways: Vec<String> = requirements
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|r| r.iter())
        .map(|(scheme, scopes)| {
            let label = match scheme.as_str() {
                "bearer" => "access token (<code>Authorization: Bearer</code>)".to_owned(),
                "cookie" => "session cookie <code>auth.sid</code>".to_owned(),
                "api_key" => "API key".to_owned(),
                other => escape(other),
            };
            let scopes: Vec<String> = scopes
                .as_array()
                .map(|s| s.iter().filter_map(|s| s.as_str()).map(escape).collect())
                .unwrap_or_default();
            if scopes.is_empty() {
                label
            } else {
                format!("{label} with <code>{}</code>", scopes.join(", "))
            }
        })
        .collect();
    // An empty requirement (`{}`) among them: anyone may call, credentials are optional.
    let optional = requirements
        .iter()
        .any(|r| r.as_object().is_some_and(serde_json::Map::is_empty));
    match (ways.is_empty(), optional) {
        (true, _) => "none".to_owned(),
        (false, true) => format!("none needed; optionally {}", ways.join(", or ")),
        (false, false) => ways.join(", or "),
    }
}

/// The schema a `$ref` points to (one level; component schemas are flat).
fn resolve(schema: &serde_json::Value, schemas: &serde_json::Value) -> serde_json::Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            schemas[name].clone()
        }
        None => schema.clone(),
    }
}

/// A short type: `string`, `integer`, `array of Scope`, a schema's name, `A or B`.
fn type_of(schema: &serde_json::Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        return format!(
            "<code>{}</code>",
            escape(reference.rsplit('/').next().unwrap_or_default())
        );
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(options) = schema[combinator].as_array() {
            let names: Vec<String> = options
                .iter()
                .filter(|o| o["type"] != "null")
                .map(type_of)
                .collect();
            return names.join(" or ");
        }
    }
    let kind = match &schema["type"] {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Array(types) => types
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::new(),
    };
    if kind == "array" {
        return format!("array of {}", type_of(&schema["items"]));
    }
    escape(&kind)
}

/// Constraints and description of one field.
fn rules(schema: &serde_json::Value, description: Option<&str>) -> String {
    let mut out = Vec::new();
    let number = |key: &str| schema[key].as_f64().map(|n| n.to_string());
    if let (Some(min), Some(max)) = (number("minLength"), number("maxLength")) {
        out.push(format!("{min}–{max} characters"));
    } else if let Some(min) = number("minLength") {
        out.push(format!("at least {min} characters"));
    } else if let Some(max) = number("maxLength") {
        out.push(format!("at most {max} characters"));
    }
    if let Some(min) = number("minimum") {
        out.push(format!("minimum {min}"));
    }
    if let Some(max) = number("maximum") {
        out.push(format!("maximum {max}"));
    }
    if let Some(min) = number("minItems") {
        out.push(format!("at least {min} item(s)"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        out.push(format!("pattern <code>{}</code>", escape(pattern)));
    }
    if let Some(values) = schema["enum"]
        .as_array()
        .or_else(|| schema["items"]["enum"].as_array())
    {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect();
        out.push(format!("one of {}", values.join(", ")));
    }
    if let Some(description) = description.or_else(|| schema["description"].as_str()) {
        out.push(prose(description));
    }
    out.join("; ")
}

/// The fields of a request body: each property with its type, whether it is required, its
/// rules and meaning; `allOf` parts are merged, `anyOf` alternatives named.
fn fields(schema: &serde_json::Value, schemas: &serde_json::Value) -> String {
    let schema = resolve(schema, schemas);
    let mut parts = vec![schema.clone()];
    if let Some(all) = schema["allOf"].as_array() {
        parts = all.iter().map(|p| resolve(p, schemas)).collect();
    }
    let mut rows = String::new();
    let mut notes = String::new();
    for part in &parts {
        let required: Vec<&str> = part["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if let Some(properties) = part["properties"].as_object() {
            for (name, property) in properties {
                let property = resolve(property, schemas);
                let _ = write!(
                    rows,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(name),
                    type_of(&property),
                    if required.contains(&name.as_str()) {
                        "yes"
                    } else {
                        "no"
                    },
                    rules(&property, None)
                );
            }
        }
        if let Some(alternatives) = part["anyOf"].as_array() {
            let names: Vec<String> = alternatives
                .iter()
                .filter_map(|a| a["required"].as_array())
                .map(|r| {
                    r.iter()
                        .filter_map(|v| v.as_str())
                        .map(|f| format!("<code>{}</code>", escape(f)))
                        .collect::<Vec<_>>()
                        .join(" and ")
                })
                .collect();
            if !names.is_empty() {
                let _ = write!(notes, "<p>At least one of: {}.</p>", names.join(", or "));
            }
        }
    }
    if rows.is_empty() {
        return format!("<p>{}</p>{notes}", type_of(&schema));
    }
    format!(
        "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Rules and meaning</th></tr>{rows}</table>{notes}"
    )
}
