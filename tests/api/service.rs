//! The edges: health, errors for bad requests, headers, the API description.

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{assert_error, parse, Backend, TestApp};

both_backends!(
    health_and_readiness,
    malformed_requests_get_the_envelope,
    security_headers_and_cors,
    openapi_describes_every_route,
    bodies_are_objects_and_whole_numbers_are_integers,
);

async fn health_and_readiness(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/health", "/ready"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        let body: Value = parse(r, 200).await;
        assert_eq!(body["status"], "ok");
    }
}

async fn malformed_requests_get_the_envelope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.client.get(app.url("/api/nope")).send().await.unwrap();
    let e = assert_error(r, 404, "not_found").await;
    assert_eq!(e.message, "Route \"/api/nope\" not found");
    assert_eq!(e.method, "GET");

    let r = app
        .client
        .get(app.url("/api/auth/signin"))
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "method_not_allowed").await;

    let signin = app.url("/api/auth/signin");
    let r = app
        .client
        .post(&signin)
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_body").await;
    let r = app
        .client
        .post(&signin)
        .header("content-type", "application/json")
        .body(r#"{"username": "a", "username": "b", "password": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_body").await;
    let r = app
        .client
        .post(&signin)
        .json(&json!({"username": 42, "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_body").await;
    let r = app
        .client
        .post(&signin)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    let huge = json!({"username": "a", "password": "x".repeat(70 * 1024)});
    let r = app.client.post(&signin).json(&huge).send().await.unwrap();
    // The body is left unread: the answer closes the connection, so the client does not send
    // its next request on a connection the server is closing.
    assert_eq!(r.headers()["connection"], "close");
    assert_error(r, 413, "payload_too_large").await;
    let r = app
        .request(
            Method::DELETE,
            "/api/auth/sessions/not-a-session",
            Some("x"),
            None,
        )
        .await;
    assert_error(r, 401, "unauthorized").await;

    // Odd path and query values are 4xx, never a 500 (PostgreSQL refuses NUL characters).
    let (_, tokens) = app.signed_in_user().await;
    let r = app.revoke_session(&tokens, "%00").await;
    assert_error(r, 404, "not_found").await;
    assert_error(app.delete_key(&tokens, "%00").await, 404, "not_found").await;
    let r = app
        .get_with("/api/users/me/login-history?limit=abc", &tokens.token)
        .await;
    assert_error(r, 400, "validation_failed").await;
    let r = app
        .try_create_key(&tokens, json!({"name": "nul\u{0}name"}))
        .await;
    assert_error(r, 400, "validation_failed").await;
}

/// Found by schemathesis: serde fills a struct from an array of its fields in order, and
/// refused `1.0` where JSON Schema's `integer` allows it.
async fn bodies_are_objects_and_whole_numbers_are_integers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    for body in [json!([null, null]), json!(["Ada"]), json!("name"), json!(7)] {
        let r = app.update_profile(&tokens, body).await;
        assert_error(r, 400, "invalid_body").await;
    }
    app.create_key(&tokens, json!({"name": "whole", "expires_in_days": 30.0}))
        .await;
    let r = app
        .try_create_key(&tokens, json!({"name": "half", "expires_in_days": 30.5}))
        .await;
    assert_error(r, 400, "invalid_body").await;
}

async fn security_headers_and_cors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS in development"
    );
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h.get("x-request-id").is_some());

    let r = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/api/auth/signin"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

async fn openapi_describes_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("post", "/api/users/create-account"),
        ("get", "/api/users/me"),
        ("patch", "/api/users/me"),
        ("delete", "/api/users/me"),
        ("get", "/api/users/me/login-history"),
        ("get", "/api/users/users"),
        ("post", "/api/auth/signin"),
        ("get", "/api/auth/me"),
        ("post", "/api/auth/refresh"),
        ("post", "/api/auth/logout"),
        ("post", "/api/auth/logout-all"),
        ("get", "/api/auth/sessions"),
        ("delete", "/api/auth/sessions/{id}"),
        ("post", "/api/auth/verify-email"),
        ("get", "/api/auth/verify-email"),
        ("post", "/api/auth/resend-verification"),
        ("post", "/api/password/forgot-password"),
        ("post", "/api/password/reset-password"),
        ("post", "/api/password/change"),
        ("get", "/api/admin/users/{id}"),
        ("patch", "/api/admin/users/{id}"),
        ("delete", "/api/admin/users/{id}"),
        ("post", "/api/admin/users/{id}/logout-all"),
        ("post", "/api/admin/users/{id}/unlock"),
        ("post", "/api/keys"),
        ("get", "/api/keys"),
        ("delete", "/api/keys/{id}"),
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/api/auth/sso/{provider}"),
        ("get", "/api/auth/sso/{provider}/callback"),
        ("post", "/api/auth/sso/exchange"),
        ("post", "/api/auth/sso/{provider}/link"),
        ("get", "/api/users/me/identities"),
        ("delete", "/api/users/me/identities/{provider}"),
        // Two-factor, notices and the audit log (SPEC §13).
        ("post", "/api/auth/mfa/totp/setup"),
        ("post", "/api/auth/mfa/totp/confirm"),
        ("delete", "/api/auth/mfa/totp"),
        ("post", "/api/auth/mfa/verify"),
        ("post", "/api/auth/not-me"),
        ("get", "/api/users/me/security-events"),
        ("get", "/api/admin/audit"),
        ("delete", "/api/admin/users/{id}/mfa"),
    ];
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "a route is documented that this test does not know"
    );
    for (method, path) in expected {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
        assert!(op["responses"].is_object());
    }
    let signin = &doc["paths"]["/api/auth/signin"]["post"];
    // Sign-in answers tokens or, with two-factor on, the second step: both shapes, exactly.
    let answer = &doc["components"]["schemas"]["SignInAnswer"]["oneOf"];
    assert_eq!(answer.as_array().map(Vec::len), Some(2), "{answer}");
    assert_eq!(
        signin["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SignInAnswer"
    );
    assert!(signin["requestBody"]["content"]["application/json"]["schema"].is_object());
    for schema in [
        "SignInRequest",
        "SignInResponse",
        "UserView",
        "ErrorEnvelope",
        "CreateAccountRequest",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    for scheme in ["bearer", "cookie", "api_key"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    // Protected routes name their schemes; the key-management ones do not accept keys.
    let keys = &doc["paths"]["/api/keys"]["post"]["security"];
    assert!(
        keys.to_string().contains("bearer") && !keys.to_string().contains("api_key"),
        "{keys}"
    );
    let list = &doc["paths"]["/api/users/users"]["get"]["security"];
    assert!(list.to_string().contains("api_key"), "{list}");
    // The document is exact (SPEC §9): the rules of the request bodies, and every status.
    let schemas = &doc["components"]["schemas"];
    let create = &schemas["CreateAccountRequest"];
    assert_eq!(
        create["required"],
        json!(["name", "username", "email", "password"])
    );
    assert_eq!(create["properties"]["username"]["maxLength"], 18);
    assert_eq!(
        create["properties"]["username"]["pattern"],
        "^[A-Za-z0-9._-]{6,18}$"
    );
    assert_eq!(create["properties"]["password"]["minLength"], 8);
    assert_eq!(create["properties"]["password"]["maxLength"], 128);
    assert_eq!(create["properties"]["email"]["maxLength"], 200);
    assert_eq!(create["properties"]["name"]["maxLength"], 110);
    assert_eq!(create["properties"]["phone"]["maxLength"], 15);
    let key = &schemas["CreateKeyRequest"]["properties"]["expires_in_days"];
    assert_eq!(
        (&key["minimum"], &key["maximum"]),
        (&json!(1), &json!(3650))
    );
    assert!(
        schemas["SignInRequest"]["allOf"][1]["anyOf"].is_array(),
        "username or email"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"].as_object().unwrap();
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(statuses.contains_key(status), "{method} {path} {status}");
                }
            }
            if op.get("security").is_some() {
                assert!(statuses.contains_key("401"), "{method} {path} 401");
            }
            if let Some(limited) = statuses.get("429") {
                assert!(
                    limited["headers"]["Retry-After"].is_object(),
                    "{method} {path}"
                );
            }
            for (status, response) in statuses {
                if status.starts_with('4') || status.starts_with('5') {
                    let json = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        json, "#/components/schemas/ErrorEnvelope",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let page = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/api/auth/refresh") && html.contains("/api/users/create-account"));
    // Readable without leaving the page: each route's request fields with their rules, and
    // its answers; the annotations' `code` spans are shown as code, not as backticks.
    let create = html
        .split("<section id=\"post--api-users-create-account\">")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .expect("a section for create-account");
    assert!(
        create
            .contains("<code>password</code></td><td>string</td><td>yes</td><td>8–128 characters"),
        "{create}"
    );
    assert!(create.contains("<code>phone</code>") && create.contains("<b>409</b>"));
    assert!(
        create.contains("none needed; optionally"),
        "sign-up is public: {create}"
    );
    // Outside code (patterns may hold backticks), none is left.
    let prose: String = html
        .split("<code>")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once("</code>").map_or("", |(_, rest)| rest)
            }
        })
        .collect();
    assert!(!prose.contains('`'), "a backtick shown literally");
    let me = html
        .split("<section id=\"get--api-auth-me\">")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .expect("a section for /api/auth/me");
    assert!(
        me.contains("<b>401</b>") && !me.contains("none needed"),
        "{me}"
    );
}
