//! `Config::from_env()`: every variable of SPEC §2 read once, checked, secrets redacted in `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use lettre::message::Mailbox;

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

/// Rate limits of SPEC §7; `enabled` is `RATE_LIMITS` (`off` for load tests).
#[derive(Debug, Clone)]
pub struct Limits {
    pub enabled: bool,
    pub login_max_failures: i64,
    pub login_window: Duration,
    pub login_max_failures_per_ip: i64,
    /// Failures on one account from every address together; never applied to an address
    /// that signed in to the account within the refresh-token lifetime.
    pub login_max_failures_per_account: i64,
    pub signups_per_ip: i64,
    pub recovery_per_email: i64,
    pub recovery_per_ip: i64,
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
    /// `MAX_CONNECTIONS`: open client connections at most; more wait to be accepted.
    pub max_connections: u32,
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
    /// `SESSION_MAX_AGE_SECS`: a session ends this long after sign-in, whatever the refreshes.
    pub session_max_age: Duration,
    /// `REFRESH_REUSE_GRACE_SECS`: a rotated refresh token presented again this soon is a
    /// retry (answered with a new token), not theft.
    pub refresh_reuse_grace: Duration,
    /// `LOGIN_HISTORY_RETENTION_DAYS`: sign-in attempts and history older than this are pruned.
    pub login_history_retention: Duration,
    pub require_email_verification: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub allowed_origins: Vec<String>,
    pub log_format: LogFormat,
    pub limits: Limits,
    /// `TOKEN_IP`: without it, no external geolocation lookups.
    pub ipinfo_token: Option<Secret>,
    pub ipinfo_url: String,
    pub mail: MailConfig,
    /// The page a reset email links to; the link gets `?token=…`.
    pub password_reset_url: String,
}

/// How emails leave the service.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `None`: the development mailbox (files in `mailbox_dir`). Holds any SMTP password.
    pub smtp_url: Option<Secret>,
    /// Sender, already checked to parse as a mailbox (`Name <address>` or `address`).
    pub from: String,
    pub mailbox_dir: PathBuf,
    /// `MAIL_FIRST_RETRY_SECS` (default 15, at most 600): wait before the first retry of an
    /// undelivered email, then doubling up to 10 minutes.
    pub first_retry: Duration,
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
        // Cookies are Secure and links are emailed in production: a plain-HTTP public URL
        // there is a misconfiguration, not a choice.
        if environment == Environment::Production && !app_url.starts_with("https://") {
            return Err(ConfigError::new(
                "APP_URL",
                "must be set to an https:// URL when APP_ENV=production",
            ));
        }
        let max_connections = parse_or("MAX_CONNECTIONS", get("MAX_CONNECTIONS"), Some(10_000))?;
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&max_connections) {
            return Err(ConfigError::new(
                "MAX_CONNECTIONS",
                format!("must be between 1 and {MAX_CONNECTIONS_CEILING}"),
            ));
        }

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
        let session_max_age = Duration::from_secs(positive(
            "SESSION_MAX_AGE_SECS",
            get("SESSION_MAX_AGE_SECS"),
            7_776_000,
        )?);
        let refresh_reuse_grace = Duration::from_secs(parse_or(
            "REFRESH_REUSE_GRACE_SECS",
            get("REFRESH_REUSE_GRACE_SECS"),
            Some(10u64),
        )?);
        if refresh_reuse_grace > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "REFRESH_REUSE_GRACE_SECS",
                "must be at most 300 (a longer grace would hide a stolen token)",
            ));
        }
        let retention_days = positive(
            "LOGIN_HISTORY_RETENTION_DAYS",
            get("LOGIN_HISTORY_RETENTION_DAYS"),
            90,
        )?;
        if retention_days > 3650 {
            return Err(ConfigError::new(
                "LOGIN_HISTORY_RETENTION_DAYS",
                "must be at most 3650 (ten years)",
            ));
        }
        let login_history_retention = Duration::from_secs(retention_days * 86_400);
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

        let limits = Limits {
            enabled: boolean("RATE_LIMITS", get("RATE_LIMITS"), true)?,
            login_max_failures: count("LOGIN_MAX_FAILURES", get("LOGIN_MAX_FAILURES"), 5)?,
            login_window: Duration::from_secs(positive(
                "LOGIN_WINDOW_SECS",
                get("LOGIN_WINDOW_SECS"),
                900,
            )?),
            login_max_failures_per_ip: count(
                "LOGIN_MAX_FAILURES_PER_IP",
                get("LOGIN_MAX_FAILURES_PER_IP"),
                50,
            )?,
            login_max_failures_per_account: count(
                "LOGIN_MAX_FAILURES_PER_ACCOUNT",
                get("LOGIN_MAX_FAILURES_PER_ACCOUNT"),
                100,
            )?,
            signups_per_ip: count(
                "RATE_LIMIT_SIGNUPS_PER_IP",
                get("RATE_LIMIT_SIGNUPS_PER_IP"),
                20,
            )?,
            recovery_per_email: count(
                "RATE_LIMIT_RECOVERY_PER_EMAIL",
                get("RATE_LIMIT_RECOVERY_PER_EMAIL"),
                5,
            )?,
            recovery_per_ip: count(
                "RATE_LIMIT_RECOVERY_PER_IP",
                get("RATE_LIMIT_RECOVERY_PER_IP"),
                20,
            )?,
        };
        let ipinfo_url = get("IPINFO_URL").unwrap_or_else(|| "https://ipinfo.io".to_owned());
        if !(ipinfo_url.starts_with("http://") || ipinfo_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "IPINFO_URL",
                "must start with http:// or https://",
            ));
        }

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

        let mail = mail_config(&get, environment, &data_dir)?;
        let password_reset_url =
            get("PASSWORD_RESET_URL").unwrap_or_else(|| format!("{app_url}/reset-password"));
        if !(password_reset_url.starts_with("http://")
            || password_reset_url.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "PASSWORD_RESET_URL",
                "must start with http:// or https://",
            ));
        }

        Ok(Self {
            environment,
            host,
            port,
            max_connections,
            app_url,
            database_url: Secret::new(database_url),
            database_ca_pem,
            data_dir,
            jwt_secret,
            access_token_ttl,
            refresh_token_ttl,
            session_max_age,
            refresh_reuse_grace,
            login_history_retention,
            require_email_verification,
            trusted_proxies,
            allowed_origins,
            log_format,
            limits,
            ipinfo_token: get("TOKEN_IP").map(Secret::new),
            ipinfo_url,
            mail,
            password_reset_url,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

/// A limit: a positive whole number.
fn count(variable: &'static str, value: Option<String>, default: u64) -> Result<i64, ConfigError> {
    let n = positive(variable, value, default)?;
    i64::try_from(n).map_err(|_| ConfigError::new(variable, "is too large"))
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
    // Lifetimes and windows beyond ten years are mistakes, and would overflow dates.
    if n > MAX_SECONDS {
        return Err(ConfigError::new(
            variable,
            format!("must be at most {MAX_SECONDS} (ten years)"),
        ));
    }
    Ok(n)
}

const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Far beyond what one process can hold open; a larger value is a typo.
const MAX_CONNECTIONS_CEILING: u32 = 1_000_000;

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

/// `SMTP_URL`, else the old service's `SMTP_HOST`…; `MAIL_FROM`; `MAILBOX_DIR`;
/// `MAIL_FIRST_RETRY_SECS`.
fn mail_config(
    get: &impl Fn(&str) -> Option<String>,
    environment: Environment,
    data_dir: &std::path::Path,
) -> Result<MailConfig, ConfigError> {
    let smtp_url = match get("SMTP_URL") {
        Some(url) => {
            check_smtp_url("SMTP_URL", &url)?;
            Some(Secret::new(url))
        }
        None => match legacy_smtp_url(get)? {
            Some(url) => {
                check_smtp_url("SMTP_HOST", &url)?;
                Some(Secret::new(url))
            }
            None => None,
        },
    };
    if smtp_url.is_none() && environment == Environment::Production {
        return Err(ConfigError::new(
            "SMTP_URL",
            "must be set (or SMTP_HOST with EMAIL_USERNAME / EMAIL_PASSWORD) when APP_ENV=production",
        ));
    }

    let from = get("MAIL_FROM").unwrap_or_else(|| "Auth Flow <no-reply@localhost>".to_owned());
    if let Err(e) = from.parse::<Mailbox>() {
        return Err(ConfigError::new(
            "MAIL_FROM",
            format!("{from:?} is not a valid sender (\"Name <address>\" or an address): {e}"),
        ));
    }

    let mailbox_dir = get("MAILBOX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("mail"));

    let first_retry = positive("MAIL_FIRST_RETRY_SECS", get("MAIL_FIRST_RETRY_SECS"), 15)?;
    if first_retry > 600 {
        return Err(ConfigError::new(
            "MAIL_FIRST_RETRY_SECS",
            "must be at most 600 (the longest wait between tries)",
        ));
    }

    Ok(MailConfig {
        smtp_url,
        from,
        mailbox_dir,
        first_retry: Duration::from_secs(first_retry),
    })
}

/// Builds the real transport from the URL, so a bad one stops the start, not the first email.
/// The message never repeats the URL: it may hold a password.
fn check_smtp_url(variable: &'static str, url: &str) -> Result<(), ConfigError> {
    const FORMS: &str = "smtp://host:port, smtp://user:pass@host:587?tls=required \
                         or smtps://user:pass@host:465";
    crate::mail::transport::smtp_transport(url)
        .map(drop)
        .map_err(|e| ConfigError::new(variable, format!("not a usable SMTP URL ({FORMS}): {e}")))
}

/// The old service's `SMTP_HOST`, `SMTP_PORT`, `EMAIL_USERNAME`, `EMAIL_PASSWORD` as one URL:
/// port 465 is implicit TLS, 587 STARTTLS (required), any other port plain SMTP.
fn legacy_smtp_url(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    let user = get("EMAIL_USERNAME");
    let password = get("EMAIL_PASSWORD");
    let Some(host) = get("SMTP_HOST") else {
        for variable in ["SMTP_PORT", "EMAIL_USERNAME", "EMAIL_PASSWORD"] {
            if get(variable).is_some() {
                return Err(ConfigError::new(
                    "SMTP_HOST",
                    format!("must be set when {variable} is (or set SMTP_URL instead)"),
                ));
            }
        }
        return Ok(None);
    };
    if host
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#'))
    {
        return Err(ConfigError::new(
            "SMTP_HOST",
            format!("{host:?} is not a host name"),
        ));
    }
    let port: u16 = parse_or("SMTP_PORT", get("SMTP_PORT"), Some(587))?;
    let credentials = match (user, password) {
        (Some(user), Some(password)) => format!("{}:{}@", encode(&user), encode(&password)),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "EMAIL_PASSWORD",
                "must be set when EMAIL_USERNAME is",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "EMAIL_USERNAME",
                "must be set when EMAIL_PASSWORD is",
            ))
        }
        (None, None) => String::new(),
    };
    // An IPv6 literal needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(Some(match port {
        465 => format!("smtps://{credentials}{host}:{port}"),
        587 => format!("smtp://{credentials}{host}:{port}?tls=required"),
        _ => format!("smtp://{credentials}{host}:{port}"),
    }))
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

    /// What production needs besides secrets and mail.
    const PUBLIC_URL: (&str, &str) = ("APP_URL", "https://auth.example.com");

    #[test]
    fn production_requires_an_https_app_url() {
        let complete = [
            ("APP_ENV", "production"),
            ("JWT_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"),
            ("SMTP_URL", "smtp://127.0.0.1:25"),
        ];
        let err = Config::from_vars(&vars(&complete)).unwrap_err();
        assert_eq!(err.variable, "APP_URL", "{err}");
        let mut plain = complete.to_vec();
        plain.push(("APP_URL", "http://auth.example.com"));
        let err = Config::from_vars(&vars(&plain)).unwrap_err();
        assert_eq!(err.variable, "APP_URL", "{err}");
        assert!(err.to_string().contains("https://"), "{err}");
        let mut secure = complete.to_vec();
        secure.push(PUBLIC_URL);
        let c = Config::from_vars(&vars(&secure)).unwrap();
        assert_eq!(c.app_url, "https://auth.example.com");
        // Development takes any http(s) URL.
        let c = Config::from_vars(&vars(&[("APP_URL", "http://auth.example.com")])).unwrap();
        assert_eq!(c.app_url, "http://auth.example.com");
    }

    #[test]
    fn max_connections_defaults_to_ten_thousand_and_is_checked() {
        assert_eq!(
            Config::from_vars(&vars(&[])).unwrap().max_connections,
            10_000
        );
        let c = Config::from_vars(&vars(&[("MAX_CONNECTIONS", "4")])).unwrap();
        assert_eq!(c.max_connections, 4);
        for bad in ["0", "-1", "many", "1000001"] {
            let err = Config::from_vars(&vars(&[("MAX_CONNECTIONS", bad)])).unwrap_err();
            assert_eq!(err.variable, "MAX_CONNECTIONS", "{bad}: {err}");
        }
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
            ("REFRESH_TOKEN_TTL_SECS", "99999999999999"),
        ] {
            let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert_eq!(err.variable, name, "{err}");
        }
    }

    #[test]
    fn production_requires_a_secret_and_debug_hides_it() {
        let err = Config::from_vars(&vars(&[("APP_ENV", "production"), PUBLIC_URL])).unwrap_err();
        assert_eq!(err.variable, "SECRET_KEY_VARIABLE");
        let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
        let c = Config::from_vars(&vars(&[
            ("APP_ENV", "production"),
            PUBLIC_URL,
            ("JWT_SECRET", secret),
            ("SMTP_URL", "smtp://127.0.0.1:25"),
        ]))
        .unwrap();
        assert!(!format!("{c:?}").contains(secret));
    }

    #[test]
    fn mail_defaults_are_the_documented_ones() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert!(c.mail.smtp_url.is_none());
        assert_eq!(c.mail.from, "Auth Flow <no-reply@localhost>");
        assert_eq!(c.mail.mailbox_dir, PathBuf::from("data/mail"));
        assert_eq!(c.password_reset_url, "http://localhost:8080/reset-password");
        assert_eq!(c.mail.first_retry, Duration::from_secs(15));

        let c = Config::from_vars(&vars(&[
            ("DATA_DIR", "/var/lib/authflow"),
            ("APP_URL", "https://auth.example.com/"),
        ]))
        .unwrap();
        assert_eq!(c.mail.mailbox_dir, PathBuf::from("/var/lib/authflow/mail"));
        assert_eq!(
            c.password_reset_url,
            "https://auth.example.com/reset-password"
        );

        let c = Config::from_vars(&vars(&[
            ("MAILBOX_DIR", "/tmp/mail"),
            ("MAIL_FROM", "\"Example, Inc.\" <accounts@example.com>"),
            ("PASSWORD_RESET_URL", "https://app.example.com/reset"),
            ("MAIL_FIRST_RETRY_SECS", "1"),
        ]))
        .unwrap();
        assert_eq!(c.mail.first_retry, Duration::from_secs(1));
        assert_eq!(c.mail.mailbox_dir, PathBuf::from("/tmp/mail"));
        assert_eq!(c.mail.from, "\"Example, Inc.\" <accounts@example.com>");
        assert_eq!(c.password_reset_url, "https://app.example.com/reset");
    }

    #[test]
    fn smtp_urls_of_every_documented_form_are_accepted() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://mailhog",
            "smtp://user:pass@smtp.example.com:587?tls=required",
            "smtps://user:p%40ss@smtp.example.com:465",
            "smtps://smtp.example.com",
        ] {
            let c = Config::from_vars(&vars(&[("SMTP_URL", url)])).unwrap();
            assert_eq!(c.mail.smtp_url.as_ref().map(Secret::expose), Some(url));
        }
    }

    #[test]
    fn bad_mail_values_name_the_variable() {
        for (name, value) in [
            ("SMTP_URL", "ftp://smtp.example.com"),
            ("SMTP_URL", "smtp.example.com:587"),
            ("SMTP_URL", "smtp://smtp.example.com?tls=sometimes"),
            ("SMTP_URL", "smtp://"),
            ("MAIL_FROM", "Auth Flow"),
            ("MAIL_FROM", "Auth Flow <no-reply>"),
            ("PASSWORD_RESET_URL", "app.example.com/reset"),
            ("SMTP_HOST", "smtp example com"),
            ("SMTP_PORT", "587"),
            ("EMAIL_USERNAME", "user"),
            ("MAIL_FIRST_RETRY_SECS", "0"),
            ("MAIL_FIRST_RETRY_SECS", "601"),
        ] {
            let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
            let expected = if name == "SMTP_PORT" || name == "EMAIL_USERNAME" {
                "SMTP_HOST"
            } else {
                name
            };
            assert_eq!(err.variable, expected, "{name}={value}: {err}");
        }
        let err = Config::from_vars(&vars(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_PORT", "x"),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "SMTP_PORT");
        let err = Config::from_vars(&vars(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("EMAIL_USERNAME", "user"),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "EMAIL_PASSWORD");
    }

    #[test]
    fn smtp_errors_and_debug_never_show_the_password() {
        let password = "hunter2-hunter2";
        let err = Config::from_vars(&vars(&[(
            "SMTP_URL",
            "smtp://user:hunter2-hunter2@smtp.example.com?tls=sometimes",
        )]))
        .unwrap_err();
        assert_eq!(err.variable, "SMTP_URL");
        assert!(!err.to_string().contains(password), "{err}");

        let c = Config::from_vars(&vars(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("EMAIL_USERNAME", "user"),
            ("EMAIL_PASSWORD", password),
        ]))
        .unwrap();
        assert!(!format!("{c:?}").contains(password));
        assert!(!format!("{:?}", c.mail).contains(password));
    }

    #[test]
    fn production_requires_smtp_settings() {
        let secret = ("JWT_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t");
        let err =
            Config::from_vars(&vars(&[("APP_ENV", "production"), PUBLIC_URL, secret])).unwrap_err();
        assert_eq!(err.variable, "SMTP_URL");
        for smtp in [
            ("SMTP_URL", "smtps://u:p@smtp.example.com:465"),
            ("SMTP_HOST", "smtp.example.com"),
        ] {
            let c = Config::from_vars(&vars(&[
                ("APP_ENV", "production"),
                PUBLIC_URL,
                secret,
                smtp,
            ]))
            .unwrap();
            assert!(c.mail.smtp_url.is_some());
        }
    }

    #[test]
    fn legacy_mail_variables_build_a_url() {
        let url = |pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push(("SMTP_HOST", "smtp.example.com"));
            let c = Config::from_vars(&vars(&pairs)).unwrap();
            c.mail.smtp_url.map(|s| s.expose().to_owned())
        };
        let creds = [
            ("EMAIL_USERNAME", "me@example.com"),
            ("EMAIL_PASSWORD", "p@ss word/:"),
        ];
        assert_eq!(
            url(&creds).as_deref(),
            Some("smtp://me%40example.com:p%40ss%20word%2F%3A@smtp.example.com:587?tls=required")
        );
        let mut implicit = creds.to_vec();
        implicit.push(("SMTP_PORT", "465"));
        assert_eq!(
            url(&implicit).as_deref(),
            Some("smtps://me%40example.com:p%40ss%20word%2F%3A@smtp.example.com:465")
        );
        assert_eq!(
            url(&[("SMTP_PORT", "25")]).as_deref(),
            Some("smtp://smtp.example.com:25")
        );
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
