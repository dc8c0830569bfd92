//! Which browser origins may call us with credentials: CORS, and the cookie `Origin` check.

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Exact origins, lower-cased, without a trailing slash (`APP_URL`'s included).
    exact: Vec<String>,
    /// `https://*.example.com` kept as (`https://`, `.example.com`).
    wildcards: Vec<(String, String)>,
    /// Development: any `http://localhost:*` and `http://127.0.0.1:*`.
    any_localhost: bool,
}

impl OriginPolicy {
    pub fn new(config: &Config) -> Self {
        let mut exact = vec![origin_of(&config.app_url)];
        let mut wildcards = Vec::new();
        for origin in &config.allowed_origins {
            match origin.split_once("://*.") {
                Some((scheme, domain)) => {
                    wildcards.push((format!("{scheme}://"), format!(".{domain}")))
                }
                None => exact.push(origin.clone()),
            }
        }
        Self {
            exact,
            wildcards,
            any_localhost: !config.is_production(),
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        if self.wildcards.iter().any(|(scheme, suffix)| {
            origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && sub.split('.').all(|l| {
                            !l.is_empty()
                                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        })
                })
        }) {
            return true;
        }
        self.any_localhost && is_localhost(&origin)
    }

    pub fn cors_layer(&self) -> CorsLayer {
        let policy = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin.to_str().is_ok_and(|o| policy.allows(o))
            }))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600))
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    match lower.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            format!("{scheme}://{host}")
        }
        None => lower,
    }
}

fn is_localhost(origin: &str) -> bool {
    let Some(host_port) = origin.strip_prefix("http://") else {
        return false;
    };
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "80"));
    matches!(host, "localhost" | "127.0.0.1") && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(pairs: &[(&str, &str)]) -> OriginPolicy {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OriginPolicy::new(&Config::from_vars(&vars).unwrap())
    }

    #[test]
    fn exact_wildcard_and_development_origins() {
        let p = policy(&[
            (
                "ALLOWED_ORIGINS",
                "https://app.example.org, https://*.example.com",
            ),
            ("APP_URL", "https://auth.example.net/base"),
        ]);
        assert!(p.allows("https://app.example.org"));
        assert!(p.allows("https://auth.example.net"));
        assert!(p.allows("https://a.b.example.com"));
        assert!(!p.allows("https://example.com"));
        assert!(!p.allows("https://evil-example.com"));
        assert!(!p.allows("http://a.example.com"));
        assert!(p.allows("http://localhost:5173"));
        assert!(p.allows("http://127.0.0.1:8000"));
        assert!(!p.allows("http://localhost.evil.com"));
        assert!(!p.allows("null"));
    }

    #[test]
    fn production_does_not_allow_any_localhost() {
        let p = policy(&[
            ("APP_ENV", "production"),
            ("APP_URL", "https://auth.example.org"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("SMTP_URL", "smtp://127.0.0.1:25"),
            ("ALLOWED_ORIGINS", "https://app.example.org"),
        ]);
        assert!(!p.allows("http://localhost:5173"));
        assert!(p.allows("https://app.example.org"));
    }
}
