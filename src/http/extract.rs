//! Extractors: our `ApiJson` (errors in the envelope), `AuthUser`, `MaybeAuthUser` and `ClientIp`.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum_extra::extract::cookie::CookieJar;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use crate::auth::{is_api_key, ClientInfo, Principal};
use crate::error::Error;

/// The header an API key may come in, instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The session cookie's name, as the old service's `express-session` called it.
pub const SESSION_COOKIE: &str = "auth.sid";

/// A JSON object body, deserialized into `T`, with every rejection ours: 415 unless the
/// `Content-Type` is JSON in UTF-8, 413 over the body limit, else 400 `invalid_body` for
/// malformed JSON, duplicate keys, anything but an object, and wrong types.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_in_utf8(req.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
                _ => Error::InvalidBody(rejection.body_text()),
            }
        })?;
        json_object(&body).map(Self)
    }
}

/// `application/json` or `application/*+json`, with no charset or UTF-8 (JSON is UTF-8,
/// RFC 8259; a body declared otherwise would be read as something it is not).
fn is_json_in_utf8(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    json && parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = value.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

/// Parses a request body that must be a JSON object into `T`. serde would take an array
/// for a struct (its fields by position) and refuses `30.0` for an integer; JSON means
/// neither, so the body is read as a [`JsonValue`] first: duplicate keys refused, whole
/// numbers written with a fraction made integers. Then the object is checked and
/// deserialized, the error naming the field.
pub fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let JsonValue(value) =
        serde_json::from_slice(body).map_err(|e| Error::InvalidBody(e.to_string()))?;
    if !value.is_object() {
        return Err(Error::InvalidBody("expected a JSON object".to_owned()));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        Error::InvalidBody(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })
}

/// A JSON value as a request body may hold it: an object with a key twice is refused
/// (which of the two would count is anyone's guess), and a number with a zero fraction
/// (`30.0`) is the integer it equals.
struct JsonValue(Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(JsonValueVisitor)
            .map(JsonValue)
    }
}

struct JsonValueVisitor;

impl<'de> Visitor<'de> for JsonValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        JsonValue::deserialize(deserializer).map(|JsonValue(v)| v)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(whole(v).map_or_else(|| Value::from(v), Value::from))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(JsonValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate field `{key}`"
                )));
            }
            let JsonValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// `v` as an i64 if it is a whole number in range. Every i64 lies in [-2^63, 2^63), and
/// there a whole f64 converts exactly.
fn whole(v: f64) -> Option<i64> {
    let bound = -(i64::MIN as f64);
    (v.fract() == 0.0 && v >= -bound && v < bound).then_some(v as i64)
}

/// For an optional integer in a query string: `30` or `30.0` (what a JSON Schema integer
/// may be written as), not `30.5`.
pub fn optional_whole_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    struct WholeNumber;

    impl Visitor<'_> for WholeNumber {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_i64<E>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("number too large"))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            whole(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Float(v), &self))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i64, E> {
            if let Ok(n) = v.parse::<i64>() {
                return Ok(n);
            }
            match v.parse::<f64>() {
                Ok(f) if f.is_finite() => self.visit_f64(f),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }

    deserializer.deserialize_any(WholeNumber).map(Some)
}

/// A JSON body that may be left out entirely (no bytes): `None`; otherwise as [`ApiJson`].
pub struct OptionalApiJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalApiJson<T>
where
    ApiJson<T>: FromRequest<S, Rejection = Error>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, super::BODY_LIMIT)
            .await
            .map_err(|_| Error::PayloadTooLarge)?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(Self(Some(value)))
    }
}

/// A signed-in person: a session by `Authorization: Bearer <jwt>` or the `auth.sid` cookie.
/// API keys are refused (403): they never manage keys, passwords, sessions or the account.
pub struct AuthUser(pub Principal);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Caller(principal) = Caller::from_request_parts(parts, state).await?;
        principal.session_id()?;
        Ok(Self(principal))
    }
}

/// Any authenticated caller: a session, or an API key (`Authorization: Bearer afk_…` or
/// `X-API-Key`), whose scopes the use-case checks.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        match MaybeAuthUser::from_request_parts(parts, state).await? {
            MaybeAuthUser(Some(principal)) => Ok(Self(principal)),
            MaybeAuthUser(None) => Err(Error::Unauthorized),
        }
    }
}

/// The caller if the request carries credentials (which must then be valid), else `None`.
pub struct MaybeAuthUser(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        if let Some(value) = parts.headers.get(API_KEY_HEADER) {
            let key = value.to_str().map_err(|_| Error::Unauthorized)?.trim();
            return Ok(Self(Some(state.auth.keys().authenticate(key).await?)));
        }
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .ok_or(Error::Unauthorized)?;
            let principal = if is_api_key(token) {
                state.auth.keys().authenticate(token).await?
            } else {
                state.auth.sessions().authenticate_bearer(token).await?
            };
            return Ok(Self(Some(principal)));
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(SESSION_COOKIE) else {
            return Ok(Self(None));
        };
        // An invalid cookie is 401 whatever the Origin: the client learns to sign in again.
        let principal = state
            .auth
            .sessions()
            .authenticate_cookie(cookie.value())
            .await?;
        // A browser sends the cookie along with any site's request: a state change made with
        // it must come from a page of ours (CSRF).
        if !parts.method.is_safe() {
            let origin = parts
                .headers
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            if !origin.is_some_and(|o| state.origins.allows(o)) {
                return Err(Error::Forbidden(
                    "A cookie-authenticated change must come from an allowed Origin.",
                ));
            }
        }
        Ok(Self(Some(principal)))
    }
}

/// The client's address (see `geo::client_ip`) and user agent.
pub struct Client(pub ClientInfo);

impl FromRequestParts<AppState> for Client {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let peer: Option<IpAddr> = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let ip = peer
            .map(|peer| crate::geo::client_ip(peer, &parts.headers, &state.config.trusted_proxies));
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(255).collect());
        Ok(Self(ClientInfo { ip, user_agent }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[derive(Debug, Deserialize)]
    struct Body {
        name: String,
        days: Option<i64>,
    }

    fn parse(body: &str) -> Result<Body, String> {
        json_object::<Body>(body.as_bytes()).map_err(|e| match e {
            Error::InvalidBody(why) => why,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn only_objects_are_bodies() {
        assert_eq!(parse(r#"{"name": "a"}"#).unwrap().name, "a");
        for body in [r#"["a", 30]"#, r#""a""#, "30", "null", "true"] {
            assert_eq!(parse(body).unwrap_err(), "expected a JSON object", "{body}");
        }
    }

    #[test]
    fn whole_numbers_with_a_fraction_are_integers() {
        for (body, days) in [
            (r#"{"name": "a", "days": 30.0}"#, 30),
            (r#"{"name": "a", "days": 3e1}"#, 30),
            (r#"{"name": "a", "days": -2.0}"#, -2),
        ] {
            assert_eq!(parse(body).unwrap().days, Some(days), "{body}");
        }
        for body in [
            r#"{"name": "a", "days": 30.5}"#,
            r#"{"name": "a", "days": 1e30}"#,
        ] {
            assert!(parse(body).unwrap_err().starts_with("days: "), "{body}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse(r#"{"name": "a", "name": "b"}"#)
            .unwrap_err()
            .contains("duplicate field `name`"));
        let nested = json_object::<Value>(br#"{"a": [{"k": 1, "k": 2}]}"#);
        assert!(matches!(nested, Err(Error::InvalidBody(_))));
    }

    #[test]
    fn json_content_types_in_utf8_only() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json_in_utf8(&headers)
        };
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;Charset=\"UTF-8\"",
            "application/merge-patch+json",
        ] {
            assert!(accepts(ok), "{ok}");
        }
        for refused in [
            "application/json; charset=latin1",
            "application/json;charset=utf-16",
            "text/plain",
            "application/jsonp",
        ] {
            assert!(!accepts(refused), "{refused}");
        }
        assert!(!is_json_in_utf8(&HeaderMap::new()));
    }
}
