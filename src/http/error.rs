//! The HTTP face of [`Error`]: its status, code and message, and the middleware that renders
//! every error answer — ours, axum's and tower-http's — as the envelope of SPEC §4.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, FieldError};

/// `Retry-After` of a 503 `unavailable`.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// What a failed response carries until [`envelope`] renders it with the request's details.
#[derive(Debug, Clone)]
pub struct ErrorParts {
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Validation(_)
            | Error::InvalidBody(_)
            | Error::BadRequest(_)
            | Error::InvalidToken => StatusCode::BAD_REQUEST,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized
            | Error::TokenExpired
            | Error::InvalidCredentials
            | Error::RefreshTokenReused => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::EmailNotVerified => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::UsernameTaken | Error::EmailTaken => StatusCode::CONFLICT,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) | Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::SsoState => StatusCode::BAD_REQUEST,
            Error::SsoRefused { .. } => StatusCode::FORBIDDEN,
            Error::SsoConflict { .. } => StatusCode::CONFLICT,
            Error::Provider(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn parts(&self) -> ErrorParts {
        let (code, message) = match self {
            Error::Validation(_) => ("validation_failed", "The request is not valid.".into()),
            Error::InvalidBody(why) => (
                "invalid_body",
                format!("The request body is not valid JSON for this route: {why}"),
            ),
            Error::BadRequest(why) => ("bad_request", (*why).to_owned()),
            Error::UnsupportedMediaType => (
                "unsupported_media_type",
                "Expected a body with Content-Type: application/json, in UTF-8.".into(),
            ),
            Error::PayloadTooLarge => {
                ("payload_too_large", "The request body is too large.".into())
            }
            Error::InvalidToken => (
                "invalid_token",
                "The token is invalid, used or expired.".into(),
            ),
            Error::Unauthorized => (
                "unauthorized",
                "Authentication is required: the credentials are missing, invalid or revoked."
                    .into(),
            ),
            Error::TokenExpired => (
                "token_expired",
                "The access token has expired; refresh it or sign in again.".into(),
            ),
            Error::InvalidCredentials => (
                "invalid_credentials",
                "Invalid username or password.".into(),
            ),
            Error::RefreshTokenReused => (
                "refresh_token_reused",
                "This refresh token was already used; the session has been revoked.".into(),
            ),
            Error::Forbidden(why) => ("forbidden", (*why).to_owned()),
            Error::EmailNotVerified => (
                "email_not_verified",
                "The email address of this account is not verified yet.".into(),
            ),
            Error::NotFound(what) => ("not_found", format!("{} not found.", capitalize(what))),
            Error::UsernameTaken => ("username_taken", "This username is already taken.".into()),
            Error::EmailTaken => (
                "email_taken",
                "An account with this email already exists.".into(),
            ),
            Error::TooManyRequests { retry_after_secs } => (
                "too_many_requests",
                format!(
                    "Too many requests; try again in {}.",
                    wait_in_words(*retry_after_secs)
                ),
            ),
            Error::Unavailable(_) => (
                "unavailable",
                "The service is temporarily unavailable; try again shortly.".into(),
            ),
            Error::Overloaded { retry_after_secs } => (
                "overloaded",
                format!(
                    "The service is busy; try again in {}.",
                    wait_in_words(*retry_after_secs)
                ),
            ),
            Error::Internal(_) => ("internal_error", "An internal error occurred.".into()),
            Error::SsoState => (
                "invalid_state",
                "This sign-in link is unknown, expired, already used or from another browser; start the sign-in again.".into(),
            ),
            Error::SsoRefused { code, message } | Error::SsoConflict { code, message } => {
                (*code, (*message).to_owned())
            }
            Error::Provider(_) => (
                "provider_error",
                "The identity provider could not complete the sign-in; try again.".into(),
            ),
        };
        let details = match self {
            Error::Validation(details) => details.clone(),
            _ => Vec::new(),
        };
        ErrorParts {
            code,
            message,
            details,
        }
    }
}

/// "42 seconds", "15 minutes", "2 hours": when a limited client may try again.
fn wait_in_words(secs: u64) -> String {
    let secs = secs.max(1);
    let (n, unit) = if secs < 120 {
        (secs, "second")
    } else if secs < 2 * 3600 {
        (secs.div_ceil(60), "minute")
    } else {
        (secs.div_ceil(3600), "hour")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
            }
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
            }
            Error::Provider(cause) => {
                tracing::warn!(error = %cause, "identity provider failed");
            }
            _ => {}
        }
        let mut response = self.status().into_response();
        let headers = response.headers_mut();
        match self {
            Error::TooManyRequests { retry_after_secs } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            // Overload also ends the connection (as Envoy's overload manager stops keep-alive):
            // a client told to come back later has no request to send on it now, and one
            // that retries at once must connect again, which paces a storm of retries.
            // Measured in a 512-connection storm: the immediate 503s fell from 27 000 to
            // 13 000 a second, and `/me` p99 from 63-66 ms to 27-36 ms.
            Error::Overloaded { retry_after_secs } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Error::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
                );
            }
            // The rest of the body is left unread, so the connection cannot carry another
            // request: say so, or a client reusing it would find it closed under its next one.
            Error::PayloadTooLarge => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // RFC 6750 §3: the bearer credential was missing, bad, expired or revoked.
            Error::Unauthorized | Error::TokenExpired => {
                headers.insert(header::WWW_AUTHENTICATE, invalid_token_challenge());
            }
            _ => {}
        }
        response.extensions_mut().insert(self.parts());
        response
    }
}

fn invalid_token_challenge() -> HeaderValue {
    HeaderValue::from_static("Bearer error=\"invalid_token\"")
}

/// The envelope of every non-2xx answer (SPEC §4).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = 401)]
    pub status: u16,
    #[schema(example = "invalid_credentials")]
    pub code: String,
    pub message: String,
    pub details: Vec<FieldError>,
    pub timestamp: String,
    pub path: String,
    pub method: String,
    pub request_id: String,
}

/// Marks an error answer that is already what the client should see (an HTML page for a
/// link opened in a browser), so [`envelope`] leaves it alone.
#[derive(Debug, Clone, Copy)]
pub struct FinalBody;

/// Middleware: renders every error answer — ours, axum's and tower-http's — as the envelope.
pub async fn envelope(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().to_string();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<FinalBody>().is_some()
    {
        return response;
    }
    let parts = match response.extensions().get::<ErrorParts>() {
        // Ours: a server error was logged with its cause where it was made
        // (`Error::into_response`).
        Some(parts) => parts.clone(),
        None => {
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), "response failed");
            }
            generic_parts(status, &path)
        }
    };
    let (mut head, _) = response.into_parts();
    if status == StatusCode::UNAUTHORIZED && parts.code != "invalid_credentials" {
        head.headers
            .entry(header::WWW_AUTHENTICATE)
            .or_insert_with(invalid_token_challenge);
    }
    let body = ErrorEnvelope {
        error: ErrorBody {
            status: status.as_u16(),
            code: parts.code.to_owned(),
            message: parts.message,
            details: parts.details,
            timestamp: crate::time::rfc3339(crate::time::Clock::system().now()),
            path,
            method,
            request_id,
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(head, axum::body::Body::from(json))
}

/// Error answers produced outside our handlers: unknown routes, wrong methods, limits.
fn generic_parts(status: StatusCode, path: &str) -> ErrorParts {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", format!("Route \"{path}\" not found")),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "This method is not allowed on this route.".into(),
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "The request took too long.".into()),
        StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge.parts_pair(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType.parts_pair(),
        StatusCode::UNAUTHORIZED => Error::Unauthorized.parts_pair(),
        StatusCode::FORBIDDEN => ("forbidden", "Forbidden.".into()),
        StatusCode::TOO_MANY_REQUESTS => (
            "too_many_requests",
            "Too many requests; try again later.".into(),
        ),
        StatusCode::SERVICE_UNAVAILABLE => Error::Unavailable(String::new()).parts_pair(),
        s if s.is_server_error() => ("internal_error", "An internal error occurred.".into()),
        // Malformed query strings and path parameters.
        _ => (
            "validation_failed",
            "The request's query or path parameters are not valid.".into(),
        ),
    };
    ErrorParts {
        code,
        message,
        details: Vec::new(),
    }
}

impl Error {
    fn parts_pair(&self) -> (&'static str, String) {
        let p = self.parts();
        (p.code, p.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_documented_status_and_code() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::Validation(vec![]), 400, "validation_failed"),
            (Error::InvalidBody("x".into()), 400, "invalid_body"),
            (Error::BadRequest("x"), 400, "bad_request"),
            (Error::InvalidToken, 400, "invalid_token"),
            (Error::Unauthorized, 401, "unauthorized"),
            (Error::TokenExpired, 401, "token_expired"),
            (Error::Unavailable("down".into()), 503, "unavailable"),
            (
                Error::Overloaded {
                    retry_after_secs: 3,
                },
                503,
                "overloaded",
            ),
            (Error::InvalidCredentials, 401, "invalid_credentials"),
            (Error::RefreshTokenReused, 401, "refresh_token_reused"),
            (Error::Forbidden("no"), 403, "forbidden"),
            (Error::EmailNotVerified, 403, "email_not_verified"),
            (Error::NotFound("session"), 404, "not_found"),
            (Error::UsernameTaken, 409, "username_taken"),
            (Error::EmailTaken, 409, "email_taken"),
            (Error::PayloadTooLarge, 413, "payload_too_large"),
            (Error::UnsupportedMediaType, 415, "unsupported_media_type"),
            (
                Error::TooManyRequests {
                    retry_after_secs: 3,
                },
                429,
                "too_many_requests",
            ),
            (
                Error::Internal(anyhow::anyhow!("db password=hunter2")),
                500,
                "internal_error",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            let parts = error.parts();
            assert_eq!(parts.code, code);
            assert!(!parts.message.contains("hunter2"));
        }
    }

    #[test]
    fn a_429_says_when_to_try_again() {
        let wait = |secs| {
            Error::TooManyRequests {
                retry_after_secs: secs,
            }
            .parts()
            .message
        };
        assert!(
            wait(42).ends_with("try again in 42 seconds."),
            "{}",
            wait(42)
        );
        assert!(
            wait(900).ends_with("try again in 15 minutes."),
            "{}",
            wait(900)
        );
        assert!(wait(1).ends_with("try again in 1 second."), "{}", wait(1));
        assert!(wait(3 * 3600).ends_with("try again in 3 hours."));
    }

    #[test]
    fn unknown_routes_are_named_in_the_message() {
        let parts = generic_parts(StatusCode::NOT_FOUND, "/api/nope");
        assert_eq!(parts.code, "not_found");
        assert_eq!(parts.message, "Route \"/api/nope\" not found");
    }
}
