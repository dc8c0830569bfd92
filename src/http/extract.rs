//! Extractors: our `ApiJson` (errors in the envelope), `AuthUser`, `MaybeAuthUser` and `ClientIp`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum_extra::extract::cookie::CookieJar;

use super::AppState;
use crate::auth::{is_api_key, ClientInfo, Principal};
use crate::error::Error;

/// The header an API key may come in, instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The session cookie's name, as the old service's `express-session` called it.
pub const SESSION_COOKIE: &str = "auth.sid";

/// `axum::Json` whose rejections are ours: 415, 413, or 400 `invalid_body`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<ObjectOnly<T>>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<ObjectOnly<T>>::from_request(req, state).await {
            Ok(axum::Json(ObjectOnly(value))) => Ok(Self(value)),
            Err(rejection) => Err(match rejection.status() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType,
                StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
                _ => Error::InvalidBody(json_problem(&rejection)),
            }),
        }
    }
}

/// A body read only from a JSON object: serde would also fill a struct from an array of its
/// fields in order (`[null, null]`), which no client means (SPEC §9).
pub struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// serde's own description of what is wrong (no internals: it speaks of the client's JSON).
fn json_problem(rejection: &JsonRejection) -> String {
    let text = rejection.body_text();
    text.rsplit_once(": ")
        .map(|(_, why)| why.to_owned())
        .unwrap_or(text)
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
            return Ok(Self(Some(state.auth.authenticate_api_key(key).await?)));
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
                state.auth.authenticate_api_key(token).await?
            } else {
                state.auth.authenticate_bearer(token).await?
            };
            return Ok(Self(Some(principal)));
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(SESSION_COOKIE) else {
            return Ok(Self(None));
        };
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
        Ok(Self(Some(
            state.auth.authenticate_cookie(cookie.value()).await?,
        )))
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
