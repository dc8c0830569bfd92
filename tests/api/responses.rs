//! The service's answers as the tests read them: typed, so a renamed or missing field fails
//! where it is parsed, not as a `null` compared deep inside a test.
// Every field is parsed (that checks the shape); not every test reads every one.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// A user as the API shows it. Unknown fields are refused: internals must never leak out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: String,
    pub username: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub role: String,
    pub email_verified: bool,
    pub active: bool,
    pub created_at: String,
    pub last_login: Option<String>,
}

/// The answer of create-account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedAccount {
    pub message: String,
    pub user: User,
}

/// The answer of sign-in and of refresh: the tokens, the user, and the old service's flat fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub message: String,
    /// The access token.
    pub token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: User,
    #[serde(rename = "userId")]
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub name: String,
    pub role: String,
}

impl Tokens {
    /// The access token's claims, decoded without checking the signature.
    pub fn claims(&self) -> Value {
        claims_of(&self.token)
    }

    /// The id of the session these tokens belong to (the `sid` claim).
    pub fn session_id(&self) -> String {
        self.claims()["sid"].as_str().unwrap().to_owned()
    }
}

/// The claims of a JWT, decoded without checking the signature.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    pub sessions: Vec<Session>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub current: bool,
}

/// An API key as created: the only time its secret is shown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    /// `afk_…`
    pub key: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    pub keys: Vec<Key>,
}

/// An API key as listed: no secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginHistory {
    pub entries: Vec<LoginAttempt>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginAttempt {
    pub ip: String,
    /// What the geolocation lookup said: free-form (`{"ip", "city", …}`, `{"ip", "error"}`).
    pub location: Value,
    pub user_agent: Option<String>,
    /// `success` or `failure`.
    pub status: String,
    pub created_at: String,
    /// `password`, `github`, `google`, `oidc:<name>`.
    pub method: Option<String>,
}

impl LoginAttempt {
    /// The lookup is done: more than the bare `ip` is known (a place, or why not).
    pub fn is_located(&self) -> bool {
        self.location.as_object().is_some_and(|l| l.len() > 1)
    }
}

/// A page of the admin's user list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserList {
    pub users: Vec<User>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
}

/// `{"message": …}`: logout, reset, and the like.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub message: String,
}

/// The error envelope of SPEC §4.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorEnvelope {
    pub error: ApiError,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Vec<FieldError>,
    pub timestamp: String,
    pub path: String,
    pub method: String,
    pub request_id: String,
}

impl ApiError {
    /// The fields the details name, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.details.iter().map(|d| d.field.as_str()).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// `GET /api/users/me/identities`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identities {
    pub identities: Vec<LinkedIdentity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedIdentity {
    pub provider: String,
    pub email: Option<String>,
    pub created_at: String,
}

/// `POST /api/auth/sso/{provider}/link`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkUrl {
    pub url: String,
}

/// Sign-in's answer when two-factor is on (SPEC §13).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaRequired {
    pub mfa_required: bool,
    pub mfa_token: String,
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpSetup {
    pub secret: String,
    pub otpauth_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// A page of the audit log (one's security events, or the administrators' list).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditList {
    pub events: Vec<AuditEvent>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub id: i64,
    pub created_at: String,
    pub kind: String,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Value,
}
