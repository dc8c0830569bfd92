//! `Config::from_env()`: every variable of SPEC §2 read once, checked, secrets redacted in `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// A value that must never be printed: `Debug` shows `[redacted]`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A configuration value that could not be accepted; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub host: IpAddr,
    pub port: u16,
    /// Public base URL without a trailing slash; JWT issuer and base of emailed links.
    pub app_url: String,
    pub database_url: Secret,
    /// CA certificate (PEM text) that turns on verified TLS to PostgreSQL.
    pub database_ca_pem: Option<String>,
    /// Where development secrets (and the default SQLite database) are kept.
    pub data_dir: PathBuf,
    /// `None` in development: a random key is generated once and kept in `data_dir`.
    pub jwt_secret: Option<Secret>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub require_email_verification: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub allowed_origins: Vec<String>,
    pub log_format: LogFormat,
}

impl Config {
    /// Reads `.env` (if present) into the process environment, then the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is not.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::new(".env", e.to_string())),
        }
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Builds the configuration from a map of variables (tests pass their own).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let environment = match get("APP_ENV").as_deref() {
            None | Some("development") | Some("dev") | Some("test") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(other) => {
                return Err(ConfigError::new(
                    "APP_ENV",
                    format!("expected development or production, got {other:?}"),
                ))
            }
        };
        let host: IpAddr = parse_or("APP_HOST", get("APP_HOST"), "0.0.0.0".parse().ok())?;
        let port: u16 = parse_or("APP_PORT", get("APP_PORT"), Some(8080))?;
        let app_url = match get("APP_URL") {
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "APP_URL",
                        "must start with http:// or https://",
                    ));
                }
                url.trim_end_matches('/').to_owned()
            }
            None => format!("http://localhost:{port}"),
        };

        let data_dir = PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "data".to_owned()));
        let database_url = match get("DATABASE_URL") {
            Some(url) => url,
            None => legacy_database_url(&get)?
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("authflow.db").display())),
        };
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must start with postgres://, postgresql:// or sqlite://",
            ));
        }
        let database_ca_pem = match get("SSL_CERTIFICATE") {
            None => None,
            Some(v) if v.contains("-----BEGIN") => Some(v.replace("\\n", "\n")),
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new("SSL_CERTIFICATE", format!("cannot read {path}: {e}"))
            })?),
        };

        let jwt_secret = match (get("SECRET_KEY_VARIABLE"), get("JWT_SECRET")) {
            (Some(v), _) => Some(check_secret("SECRET_KEY_VARIABLE", v)?),
            (None, Some(v)) => Some(check_secret("JWT_SECRET", v)?),
            (None, None) if environment == Environment::Production => {
                return Err(ConfigError::new(
                    "SECRET_KEY_VARIABLE",
                    "must be set (at least 32 bytes) when APP_ENV=production",
                ))
            }
            (None, None) => None,
        };

        let access_token_ttl = Duration::from_secs(positive(
            "ACCESS_TOKEN_TTL_SECS",
            get("ACCESS_TOKEN_TTL_SECS"),
            3600,
        )?);
        let refresh_token_ttl = Duration::from_secs(positive(
            "REFRESH_TOKEN_TTL_SECS",
            get("REFRESH_TOKEN_TTL_SECS"),
            2_592_000,
        )?);
        let require_email_verification = boolean(
            "REQUIRE_EMAIL_VERIFICATION",
            get("REQUIRE_EMAIL_VERIFICATION"),
            false,
        )?;

        let mut trusted_proxies = Vec::new();
        for item in split_list(&get("TRUSTED_PROXIES").unwrap_or_default()) {
            let net = parse_net(item).ok_or_else(|| {
                ConfigError::new("TRUSTED_PROXIES", format!("{item:?} is not an IP or CIDR"))
            })?;
            trusted_proxies.push(net);
        }

        let allowed_origins = get("ALLOWED_ORIGINS")
            .unwrap_or_else(|| "http://localhost:3000,http://localhost:3001".to_owned());
        let allowed_origins = split_list(&allowed_origins)
            .map(|o| {
                if o.starts_with("http://") || o.starts_with("https://") {
                    Ok(o.trim_end_matches('/').to_ascii_lowercase())
                } else {
                    Err(ConfigError::new(
                        "ALLOWED_ORIGINS",
                        format!("{o:?} is not an http(s) origin"),
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") | Some("text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected pretty or json, got {other:?}"),
                ))
            }
        };

        Ok(Self {
            environment,
            host,
            port,
            app_url,
            database_url: Secret::new(database_url),
            database_ca_pem,
            data_dir,
            jwt_secret,
            access_token_ttl,
            refresh_token_ttl,
            require_email_verification,
            trusted_proxies,
            allowed_origins,
            log_format,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_net(item: &str) -> Option<IpNet> {
    item.parse::<IpNet>()
        .ok()
        .or_else(|| item.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_or<T: std::str::FromStr>(
    variable: &'static str,
    value: Option<String>,
    default: Option<T>,
) -> Result<T, ConfigError> {
    match value {
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError::new(variable, format!("{v:?} is not valid"))),
        None => default.ok_or_else(|| ConfigError::new(variable, "is required")),
    }
}

fn positive(
    variable: &'static str,
    value: Option<String>,
    default: u64,
) -> Result<u64, ConfigError> {
    let n: u64 = parse_or(variable, value, Some(default))?;
    if n == 0 {
        return Err(ConfigError::new(variable, "must be greater than 0"));
    }
    Ok(n)
}

fn boolean(
    variable: &'static str,
    value: Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::new(
            variable,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

fn check_secret(variable: &'static str, value: String) -> Result<Secret, ConfigError> {
    if value.len() < 32 {
        return Err(ConfigError::new(variable, "must be at least 32 bytes long"));
    }
    Ok(Secret::new(value))
}

/// The old service's `DATABASE_HOST_URL`, `DATABASE_SERVICE_PORT`, … as one URL.
fn legacy_database_url(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let Some(host) = get("DATABASE_HOST_URL") else {
        return Ok(None);
    };
    let port: u16 = parse_or(
        "DATABASE_SERVICE_PORT",
        get("DATABASE_SERVICE_PORT"),
        Some(5432),
    )?;
    let name = get("DATABASE_NAME").unwrap_or_else(|| "postgres".to_owned());
    let user = get("DATABASE_USERNAME").unwrap_or_else(|| "postgres".to_owned());
    let credentials = match get("DATABASE_PASSWORD") {
        Some(password) => format!("{}:{}", encode(&user), encode(&password)),
        None => encode(&user),
    };
    Ok(Some(format!(
        "postgres://{credentials}@{host}:{port}/{}",
        encode(&name)
    )))
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for URL user info.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.app_url, "http://localhost:8080");
        assert_eq!(c.database_url.expose(), "sqlite://data/authflow.db");
        assert_eq!(c.access_token_ttl, Duration::from_secs(3600));
        assert!(c.jwt_secret.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("APP_PORT", "eighty"),
            ("APP_ENV", "staging"),
            ("JWT_SECRET", "short"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,nonsense"),
            ("REQUIRE_EMAIL_VERIFICATION", "maybe"),
            ("ACCESS_TOKEN_TTL_SECS", "0"),
        ] {
            let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert_eq!(err.variable, name, "{err}");
        }
    }

    #[test]
    fn production_requires_a_secret_and_debug_hides_it() {
        let err = Config::from_vars(&vars(&[("APP_ENV", "production")])).unwrap_err();
        assert_eq!(err.variable, "SECRET_KEY_VARIABLE");
        let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
        let c =
            Config::from_vars(&vars(&[("APP_ENV", "production"), ("JWT_SECRET", secret)])).unwrap();
        assert!(!format!("{c:?}").contains(secret));
    }

    #[test]
    fn legacy_database_variables_build_a_url() {
        let c = Config::from_vars(&vars(&[
            ("DATABASE_HOST_URL", "db.internal"),
            ("DATABASE_NAME", "auth"),
            ("DATABASE_USERNAME", "app"),
            ("DATABASE_PASSWORD", "p@ss word"),
        ]))
        .unwrap();
        assert_eq!(
            c.database_url.expose(),
            "postgres://app:p%40ss%20word@db.internal:5432/auth"
        );
    }
}
