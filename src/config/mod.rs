//! `Config::from_env()`: every variable of SPEC §2 read once, checked, secrets redacted in
//! `Debug`. Each variable's name appears once, where it is read; the old service's names are
//! translated in `legacy`, the mail settings parsed in `mail::settings`.

mod legacy;
pub mod sso;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::mail::settings::MailSettings;
use crate::vars::Vars;
pub use crate::vars::{ConfigError, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Rate limits of SPEC §7 and §9; `enabled` is `RATE_LIMITS` (`off` for load tests).
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

/// HTTPS served by the service itself (SPEC §12): `TLS_CERT_PATH` and `TLS_KEY_PATH`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM: the server's certificate, then any intermediates.
    pub cert_path: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// `TLS_RELOAD_INTERVAL_SECS`: how often the two files are checked for a new pair.
    pub reload_interval: Duration,
    /// `TLS_CLIENT_CA_PATH` + `TLS_CLIENT_AUTH`: mutual TLS.
    pub client_auth: Option<ClientAuth>,
}

/// Client certificates verified against `ca_path` (PEM, one or more CA certificates).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca_path: PathBuf,
    pub mode: ClientAuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// The handshake fails without a valid client certificate.
    Required,
    /// Any client connects; the administration routes need a valid certificate.
    Optional,
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
    pub mail: MailSettings,
    /// The page a reset email links to; the link gets `?token=…`.
    pub password_reset_url: String,
    /// `PAGES`: the server-rendered pages (sign-in, account, admin…); off for an API-only
    /// deployment.
    pub pages: bool,
    /// HTTPS on `APP_PORT` instead of plain HTTP; `None` behind a TLS-terminating proxy.
    pub tls: Option<TlsSettings>,
    /// `HTTP_REDIRECT_PORT`: a plain-HTTP listener answering 308 to `APP_URL`.
    pub http_redirect_port: Option<u16>,
    /// Social sign-in providers (SPEC §11); none by default.
    pub sso: sso::SsoProviders,
    /// `MFA_ENCRYPTION_KEY`: seals TOTP secrets at rest; unset: derived from the signing key.
    pub mfa_encryption_key: Option<Secret>,
    /// `NEW_SIGNIN_ALERTS`: email a notice of a sign-in from a new device or location.
    pub new_signin_alerts: bool,
    /// `HASH_QUEUE_MAX_WAIT_MS`: a request that would wait longer than this for a
    /// password-hashing slot is answered 503 `overloaded` at once (0: never wait).
    pub hash_queue_max_wait: Duration,
    /// `METRICS_ADDR`: where `GET /metrics` (Prometheus text) is served; off when unset.
    pub metrics_addr: Option<SocketAddr>,
}

/// Far beyond what one process can hold open; a larger value is a typo.
const MAX_CONNECTIONS_CEILING: u64 = 1_000_000;

/// The variable whose rules depend on another's value (production needs https).
const APP_URL: &str = "APP_URL";
const TLS_CERT_PATH: &str = "TLS_CERT_PATH";
const TLS_KEY_PATH: &str = "TLS_KEY_PATH";
const TLS_CLIENT_CA_PATH: &str = "TLS_CLIENT_CA_PATH";
const TLS_CLIENT_AUTH: &str = "TLS_CLIENT_AUTH";
const HTTP_REDIRECT_PORT: &str = "HTTP_REDIRECT_PORT";

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
    pub fn from_vars(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let vars = Vars::new(map);
        let environment = vars.choice(
            "APP_ENV",
            Environment::Development,
            &[
                ("development", Environment::Development),
                ("dev", Environment::Development),
                ("test", Environment::Development),
                ("production", Environment::Production),
                ("prod", Environment::Production),
            ],
        )?;
        let production = environment == Environment::Production;
        let host: IpAddr = vars.parse("APP_HOST", IpAddr::from([0, 0, 0, 0]))?;
        let port: u16 = vars.parse("APP_PORT", 8080)?;
        let app_url = vars
            .url(APP_URL)?
            .unwrap_or_else(|| format!("http://localhost:{port}"));
        // Cookies are Secure and links are emailed in production: a plain-HTTP public URL
        // there is a misconfiguration, not a choice.
        if production && !app_url.starts_with("https://") {
            return Err(ConfigError::new(
                APP_URL,
                "must be set to an https:// URL when APP_ENV=production",
            ));
        }
        let max_connections = vars.number("MAX_CONNECTIONS", 10_000, 1, MAX_CONNECTIONS_CEILING)?;

        let data_dir = PathBuf::from(vars.text("DATA_DIR").unwrap_or_else(|| "data".to_owned()));
        let database_url = match vars.text("DATABASE_URL") {
            Some(url) if is_database_url(&url) => url,
            Some(_) => {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "must start with postgres://, postgresql:// or sqlite://",
                ))
            }
            None => legacy::database_url(&vars)?
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("authflow.db").display())),
        };
        let database_ca_pem = vars.pem("SSL_CERTIFICATE")?;

        // `JWT_SECRET` is an alias, read only when the documented name is unset.
        let jwt_secret = match vars.key("SECRET_KEY_VARIABLE")? {
            Some(key) => Some(key),
            None => vars.key("JWT_SECRET")?,
        };
        if jwt_secret.is_none() && production {
            return Err(ConfigError::new(
                "SECRET_KEY_VARIABLE",
                "must be set (at least 32 bytes) when APP_ENV=production",
            ));
        }

        let retention_days = vars.number("LOGIN_HISTORY_RETENTION_DAYS", 90, 1, 3650)?;
        let trusted_proxies = vars.list("TRUSTED_PROXIES", "", |item| {
            item.parse::<IpNet>()
                .ok()
                .or_else(|| item.parse::<IpAddr>().ok().map(IpNet::from))
                .ok_or_else(|| format!("{item:?} is not an IP or CIDR"))
        })?;
        let allowed_origins = vars.list(
            "ALLOWED_ORIGINS",
            "http://localhost:3000,http://localhost:3001",
            |origin| {
                if origin.starts_with("http://") || origin.starts_with("https://") {
                    Ok(origin.trim_end_matches('/').to_ascii_lowercase())
                } else {
                    Err(format!("{origin:?} is not an http(s) origin"))
                }
            },
        )?;

        let limits = Limits {
            enabled: vars.boolean("RATE_LIMITS", true)?,
            login_max_failures: vars.count("LOGIN_MAX_FAILURES", 5)?,
            login_window: vars.seconds("LOGIN_WINDOW_SECS", 900)?,
            login_max_failures_per_ip: vars.count("LOGIN_MAX_FAILURES_PER_IP", 50)?,
            login_max_failures_per_account: vars.count("LOGIN_MAX_FAILURES_PER_ACCOUNT", 100)?,
            signups_per_ip: vars.count("RATE_LIMIT_SIGNUPS_PER_IP", 20)?,
            recovery_per_email: vars.count("RATE_LIMIT_RECOVERY_PER_EMAIL", 5)?,
            recovery_per_ip: vars.count("RATE_LIMIT_RECOVERY_PER_IP", 20)?,
        };

        let tls = tls_settings(&vars)?;
        let http_redirect_port = vars.parse_optional::<u16>(HTTP_REDIRECT_PORT)?;
        if http_redirect_port.is_some() {
            // Redirecting to plain HTTP would protect nothing, and to this very port would loop.
            if !app_url.starts_with("https://") {
                return Err(ConfigError::new(
                    HTTP_REDIRECT_PORT,
                    "needs an https:// APP_URL to redirect to",
                ));
            }
            if http_redirect_port == Some(port) && port != 0 {
                return Err(ConfigError::new(
                    HTTP_REDIRECT_PORT,
                    "must differ from APP_PORT",
                ));
            }
        }

        Ok(Self {
            tls,
            http_redirect_port,
            environment,
            host,
            port,
            max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
            pages: vars.boolean("PAGES", true)?,
            hash_queue_max_wait: Duration::from_millis(vars.number(
                "HASH_QUEUE_MAX_WAIT_MS",
                2000,
                0,
                600_000,
            )?),
            metrics_addr: vars.parse_optional("METRICS_ADDR")?,
            password_reset_url: vars
                .url("PASSWORD_RESET_URL")?
                .unwrap_or_else(|| format!("{app_url}/reset-password")),
            app_url,
            database_url: Secret::new(database_url),
            database_ca_pem,
            mail: MailSettings::from_vars(&vars, production, &data_dir)?,
            data_dir,
            jwt_secret,
            access_token_ttl: vars.seconds("ACCESS_TOKEN_TTL_SECS", 3600)?,
            refresh_token_ttl: vars.seconds("REFRESH_TOKEN_TTL_SECS", 2_592_000)?,
            session_max_age: vars.seconds("SESSION_MAX_AGE_SECS", 7_776_000)?,
            // 0 turns the grace off; longer than 5 minutes would hide a stolen token.
            refresh_reuse_grace: Duration::from_secs(vars.number(
                "REFRESH_REUSE_GRACE_SECS",
                10,
                0,
                300,
            )?),
            login_history_retention: Duration::from_secs(retention_days * 86_400),
            require_email_verification: vars.boolean("REQUIRE_EMAIL_VERIFICATION", false)?,
            trusted_proxies,
            allowed_origins,
            log_format: vars.choice(
                "LOG_FORMAT",
                LogFormat::Pretty,
                &[
                    ("pretty", LogFormat::Pretty),
                    ("text", LogFormat::Pretty),
                    ("json", LogFormat::Json),
                ],
            )?,
            limits,
            ipinfo_token: vars.text("TOKEN_IP").map(Secret::new),
            ipinfo_url: vars
                .url("IPINFO_URL")?
                .unwrap_or_else(|| "https://ipinfo.io".to_owned()),
            sso: sso::SsoProviders::from_vars(&vars)?,
            mfa_encryption_key: vars.key("MFA_ENCRYPTION_KEY")?,
            new_signin_alerts: vars.boolean("NEW_SIGNIN_ALERTS", true)?,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// Cookies carry `Secure` in production, and whenever the service is reached over HTTPS
    /// (an `https://` `APP_URL`, or TLS served here): a plain-HTTP port beside it — the
    /// redirect port — must never see them.
    pub fn secure_cookies(&self) -> bool {
        self.is_production() || self.app_url.starts_with("https://") || self.tls.is_some()
    }
}

/// The TLS variables: both files or neither; client certificates only over TLS, and
/// `TLS_CLIENT_AUTH` only with the CA that checks them (`required` when only the CA is set).
/// The files themselves are read and checked when the server starts (`tls::ServerTls::load`).
fn tls_settings(vars: &Vars<'_>) -> Result<Option<TlsSettings>, ConfigError> {
    let cert = vars.text(TLS_CERT_PATH).map(PathBuf::from);
    let key = vars.text(TLS_KEY_PATH).map(PathBuf::from);
    let ca = vars.text(TLS_CLIENT_CA_PATH).map(PathBuf::from);
    let mode = vars
        .text(TLS_CLIENT_AUTH)
        .map(|_| {
            vars.choice(
                TLS_CLIENT_AUTH,
                ClientAuthMode::Required,
                &[
                    ("required", ClientAuthMode::Required),
                    ("optional", ClientAuthMode::Optional),
                ],
            )
        })
        .transpose()?;
    let reload_interval =
        Duration::from_secs(vars.number("TLS_RELOAD_INTERVAL_SECS", 60, 1, 86_400)?);
    let client_auth = match (ca, mode) {
        (Some(ca_path), mode) => Some(ClientAuth {
            ca_path,
            mode: mode.unwrap_or(ClientAuthMode::Required),
        }),
        (None, Some(_)) => {
            return Err(ConfigError::new(
                TLS_CLIENT_AUTH,
                "needs TLS_CLIENT_CA_PATH, the CA the client certificates are checked against",
            ))
        }
        (None, None) => None,
    };
    match (cert, key) {
        (Some(cert_path), Some(key_path)) => Ok(Some(TlsSettings {
            cert_path,
            key_path,
            reload_interval,
            client_auth,
        })),
        (Some(_), None) => Err(ConfigError::new(
            TLS_KEY_PATH,
            "must be set with TLS_CERT_PATH (the certificate's private key)",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            TLS_CERT_PATH,
            "must be set with TLS_KEY_PATH (the key's certificate)",
        )),
        (None, None) if client_auth.is_some() => Err(ConfigError::new(
            TLS_CLIENT_CA_PATH,
            "needs TLS_CERT_PATH and TLS_KEY_PATH: client certificates are checked in the TLS handshake",
        )),
        (None, None) => Ok(None),
    }
}

fn is_database_url(url: &str) -> bool {
    ["postgres://", "postgresql://", "sqlite:"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
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
        assert_eq!(c.mail.from.to_string(), "Auth Flow <no-reply@localhost>");
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
        assert_eq!(
            c.mail.from.to_string(),
            "\"Example, Inc.\" <accounts@example.com>"
        );
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
    fn cookies_are_secure_whenever_the_service_is_reached_over_https() {
        let secure =
            |pairs: &[(&str, &str)]| Config::from_vars(&vars(pairs)).unwrap().secure_cookies();
        assert!(!secure(&[]));
        assert!(secure(&[("APP_URL", "https://auth.example.com")]));
        assert!(secure(&[
            ("TLS_CERT_PATH", "/cert.pem"),
            ("TLS_KEY_PATH", "/key.pem")
        ]));
    }

    #[test]
    fn tls_variables_come_in_pairs_and_name_the_missing_one() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert!(c.tls.is_none() && c.http_redirect_port.is_none());
        let both = [("TLS_CERT_PATH", "/c.pem"), ("TLS_KEY_PATH", "/k.pem")];
        let tls = Config::from_vars(&vars(&both)).unwrap().tls.unwrap();
        assert_eq!(tls.reload_interval, Duration::from_secs(60));
        assert!(tls.client_auth.is_none());
        for (set, missing) in [
            (("TLS_CERT_PATH", "/c.pem"), "TLS_KEY_PATH"),
            (("TLS_KEY_PATH", "/k.pem"), "TLS_CERT_PATH"),
            (("TLS_CLIENT_AUTH", "required"), "TLS_CLIENT_AUTH"),
            (("TLS_CLIENT_CA_PATH", "/ca.pem"), "TLS_CLIENT_CA_PATH"),
        ] {
            let err = Config::from_vars(&vars(&[set])).unwrap_err();
            assert_eq!(err.variable, missing, "{err}");
            assert_eq!(err.to_string().lines().count(), 1, "{err}");
        }
        let mut mtls = both.to_vec();
        mtls.push(("TLS_CLIENT_CA_PATH", "/ca.pem"));
        let auth = |extra: &[(&'static str, &'static str)]| {
            let mut all = mtls.clone();
            all.extend_from_slice(extra);
            Config::from_vars(&vars(&all)).map(|c| c.tls.unwrap().client_auth.unwrap().mode)
        };
        assert_eq!(auth(&[]).unwrap(), ClientAuthMode::Required);
        assert_eq!(
            auth(&[("TLS_CLIENT_AUTH", "optional")]).unwrap(),
            ClientAuthMode::Optional
        );
        assert_eq!(
            auth(&[("TLS_CLIENT_AUTH", "sometimes")])
                .unwrap_err()
                .variable,
            "TLS_CLIENT_AUTH"
        );
        let mut slow = both.to_vec();
        slow.push(("TLS_RELOAD_INTERVAL_SECS", "0"));
        assert_eq!(
            Config::from_vars(&vars(&slow)).unwrap_err().variable,
            "TLS_RELOAD_INTERVAL_SECS"
        );
    }

    #[test]
    fn the_redirect_port_needs_an_https_app_url_of_another_port() {
        let err = Config::from_vars(&vars(&[("HTTP_REDIRECT_PORT", "8081")])).unwrap_err();
        assert_eq!(err.variable, "HTTP_REDIRECT_PORT");
        let err = Config::from_vars(&vars(&[
            ("HTTP_REDIRECT_PORT", "8080"),
            ("APP_URL", "https://auth.example.com"),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "HTTP_REDIRECT_PORT");
        let c = Config::from_vars(&vars(&[
            ("HTTP_REDIRECT_PORT", "80"),
            ("APP_URL", "https://auth.example.com"),
        ]))
        .unwrap();
        assert_eq!(c.http_redirect_port, Some(80));
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
