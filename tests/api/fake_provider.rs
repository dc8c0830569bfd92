//! A fake identity provider: a real HTTP server on a local port that plays GitHub (OAuth 2.0
//! authorize and token endpoints, `/user`, `/user/emails`) and an OpenID Connect provider
//! (discovery, authorize, token with an `id_token` it signs with an ES256 key it generates,
//! userinfo, JWKS). It records what it was sent (PKCE challenge, nonce) and checks the PKCE
//! verifier; each test tweaks what it answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The person the provider says signs in.
#[derive(Debug, Clone)]
pub struct Person {
    pub subject: String,
    pub login: String,
    pub name: String,
    pub email: Option<String>,
    pub email_verified: bool,
}

impl Person {
    pub fn new(subject: &str, email: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            login: format!("login{subject}"),
            name: "Octo Cat".to_owned(),
            email: Some(email.to_owned()),
            email_verified: true,
        }
    }
    pub fn unverified(mut self) -> Self {
        self.email_verified = false;
        self
    }
}

/// What the next `id_token` gets wrong, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdTokenFault {
    #[default]
    None,
    /// Signed by another key than the JWKS's.
    BadSignature,
    WrongAudience,
    WrongNonce,
    /// `exp` ten minutes ago.
    Expired,
}

/// What `/authorize` was sent.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub params: HashMap<String, String>,
}

struct Grant {
    challenge: Option<String>,
    nonce: Option<String>,
    client_id: String,
    person: Person,
}

struct Inner {
    url: String,
    person: Person,
    fault: IdTokenFault,
    grants: HashMap<String, Grant>,
    authorizations: Vec<Authorization>,
    tokens: HashMap<String, Person>,
    key: EncodingKey,
    other_key: EncodingKey,
    jwk: Value,
    token_requests: usize,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

fn es256_key() -> (EncodingKey, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    (EncodingKey::from_ec_der(pkcs8.as_ref()), public)
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (key, public) = es256_key();
        let (other_key, _) = es256_key();
        // Uncompressed point: 0x04 || X || Y.
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "fake-1",
            "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..65]),
        });
        let inner = Arc::new(Mutex::new(Inner {
            url: url.clone(),
            person: Person::new("1001", "octo@example.com"),
            fault: IdTokenFault::None,
            grants: HashMap::new(),
            authorizations: Vec::new(),
            tokens: HashMap::new(),
            key,
            other_key,
            jwk,
            token_requests: 0,
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/login/oauth/authorize", get(authorize))
            .route("/token", post(token))
            .route("/login/oauth/access_token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/user", get(github_user))
            .route("/user/emails", get(github_emails))
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProvider { url, inner }
    }

    /// Who signs in next.
    pub fn sign_in_as(&self, person: Person) {
        self.inner.lock().unwrap().person = person;
    }

    pub fn fault(&self, fault: IdTokenFault) {
        self.inner.lock().unwrap().fault = fault;
    }

    pub fn authorizations(&self) -> Vec<Authorization> {
        self.inner.lock().unwrap().authorizations.clone()
    }

    /// Token requests received (any outcome).
    pub fn token_requests(&self) -> usize {
        self.inner.lock().unwrap().token_requests
    }
}

async fn discovery(State(inner): State<Arc<Mutex<Inner>>>) -> Json<Value> {
    let url = inner.lock().unwrap().url.clone();
    Json(json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "jwks_uri": format!("{url}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(inner): State<Arc<Mutex<Inner>>>) -> Json<Value> {
    Json(json!({"keys": [inner.lock().unwrap().jwk.clone()]}))
}

/// Approves at once: back to `redirect_uri` with a code and the state.
async fn authorize(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.authorizations.push(Authorization {
        params: params.clone(),
    });
    let code = format!("code-{}", uuid::Uuid::new_v4());
    let person = inner.person.clone();
    inner.grants.insert(
        code.clone(),
        Grant {
            challenge: params.get("code_challenge").cloned(),
            nonce: params.get("nonce").cloned(),
            client_id: params.get("client_id").cloned().unwrap_or_default(),
            person,
        },
    );
    let mut back = url::Url::parse(&params["redirect_uri"]).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", params.get("state").map_or("", String::as_str));
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

fn oauth_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": code}))).into_response()
}

async fn token(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut inner = inner.lock().unwrap();
    inner.token_requests += 1;
    // Client authentication: HTTP Basic (what the crates send by default) or the form.
    let client_id = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(id, _)| id.to_owned()))
        .or_else(|| form.get("client_id").cloned());
    let Some(grant) = form.get("code").and_then(|c| inner.grants.remove(c)) else {
        return oauth_error("invalid_grant");
    };
    if client_id.as_deref() != Some(grant.client_id.as_str()) {
        return oauth_error("invalid_client");
    }
    // PKCE (RFC 7636, S256): the verifier must hash to the challenge the authorize step got.
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let computed = B64.encode(Sha256::digest(verifier.as_bytes()));
    if grant.challenge.as_deref() != Some(computed.as_str()) {
        return oauth_error("invalid_grant");
    }
    let access_token = format!("at-{}", uuid::Uuid::new_v4());
    inner
        .tokens
        .insert(access_token.clone(), grant.person.clone());
    let mut body =
        json!({"access_token": access_token, "token_type": "bearer", "expires_in": 3600});
    if let Some(nonce) = &grant.nonce {
        let now = chrono::Utc::now().timestamp();
        let p = &grant.person;
        let mut claims = json!({
            "iss": inner.url, "sub": p.subject, "aud": grant.client_id,
            "iat": now, "exp": now + 300, "nonce": nonce,
            "email": p.email, "email_verified": p.email_verified, "name": p.name,
            "preferred_username": p.login,
        });
        let mut key = &inner.key;
        match inner.fault {
            IdTokenFault::None => {}
            IdTokenFault::BadSignature => key = &inner.other_key,
            IdTokenFault::WrongAudience => claims["aud"] = json!("someone-else"),
            IdTokenFault::WrongNonce => claims["nonce"] = json!("not-the-nonce"),
            IdTokenFault::Expired => {
                claims["iat"] = json!(now - 1200);
                claims["exp"] = json!(now - 600);
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("fake-1".to_owned());
        body["id_token"] = json!(jsonwebtoken::encode(&header, &claims, key).unwrap());
    }
    Json(body).into_response()
}

fn bearer_person(inner: &Inner, headers: &HeaderMap) -> Option<Person> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    inner.tokens.get(token).cloned()
}

async fn userinfo(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let inner = inner.lock().unwrap();
    let Some(p) = bearer_person(&inner, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(json!({"sub": p.subject, "email": p.email, "email_verified": p.email_verified, "name": p.name}))
        .into_response()
}

async fn github_user(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let inner = inner.lock().unwrap();
    let Some(p) = bearer_person(&inner, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let id: i64 = p.subject.parse().unwrap();
    Json(json!({"id": id, "login": p.login, "name": p.name, "email": null})).into_response()
}

async fn github_emails(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let inner = inner.lock().unwrap();
    let Some(p) = bearer_person(&inner, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let mut emails = vec![
        json!({"email": "secondary@example.net", "primary": false, "verified": true, "visibility": null}),
    ];
    if let Some(email) = &p.email {
        emails.push(json!({"email": email, "primary": true, "verified": p.email_verified, "visibility": "private"}));
    }
    Json(Value::Array(emails)).into_response()
}
