//! How emails leave the service: `SMTP_URL` (or the old service's `SMTP_HOST`…), `MAIL_FROM`,
//! `MAILBOX_DIR`, `MAIL_FIRST_RETRY_SECS`, checked once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;

use crate::vars::{percent_encode, ConfigError, Secret, Vars};

#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `None`: the development mailbox (files in `mailbox_dir`). Holds any SMTP password.
    pub smtp_url: Option<Secret>,
    /// Sender (`Name <address>` or `address`), parsed once at start.
    pub from: Mailbox,
    pub mailbox_dir: PathBuf,
    /// `MAIL_FIRST_RETRY_SECS` (default 15, at most 600): wait before the first retry of an
    /// undelivered email, then doubling up to 10 minutes.
    pub first_retry: Duration,
}

impl MailSettings {
    /// `production`: SMTP settings are required. The mailbox defaults to `data_dir/mail`.
    pub fn from_vars(
        vars: &Vars<'_>,
        production: bool,
        data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let smtp_url = match vars.text("SMTP_URL") {
            Some(url) => Some(checked_smtp_url("SMTP_URL", url)?),
            None => legacy_smtp_url(vars)?,
        };
        if smtp_url.is_none() && production {
            return Err(ConfigError::new(
                "SMTP_URL",
                "must be set (or SMTP_HOST with EMAIL_USERNAME / EMAIL_PASSWORD) when APP_ENV=production",
            ));
        }
        let from_text = vars
            .text("MAIL_FROM")
            .unwrap_or_else(|| "Auth Flow <no-reply@localhost>".to_owned());
        let from: Mailbox = from_text.parse().map_err(|e| {
            ConfigError::new(
                "MAIL_FROM",
                format!(
                    "{from_text:?} is not a valid sender (\"Name <address>\" or an address): {e}"
                ),
            )
        })?;
        let mailbox_dir = vars
            .text("MAILBOX_DIR")
            .map_or_else(|| data_dir.join("mail"), PathBuf::from);
        // At most the longest wait between tries.
        let first_retry = vars.number("MAIL_FIRST_RETRY_SECS", 15, 1, 600)?;
        Ok(Self {
            smtp_url,
            from,
            mailbox_dir,
            first_retry: Duration::from_secs(first_retry),
        })
    }
}

/// Builds the real transport from the URL, so a bad one stops the start, not the first email.
/// The message never repeats the URL: it may hold a password.
fn checked_smtp_url(variable: &'static str, url: String) -> Result<Secret, ConfigError> {
    const FORMS: &str = "smtp://host:port, smtp://user:pass@host:587?tls=required \
                         or smtps://user:pass@host:465";
    super::transport::smtp_transport(&url)
        .map(|_| Secret::new(url))
        .map_err(|e| ConfigError::new(variable, format!("not a usable SMTP URL ({FORMS}): {e}")))
}

/// The old service's `SMTP_HOST`, `SMTP_PORT`, `EMAIL_USERNAME`, `EMAIL_PASSWORD` as one URL:
/// port 465 is implicit TLS, 587 STARTTLS (required), any other port plain SMTP.
fn legacy_smtp_url(vars: &Vars<'_>) -> Result<Option<Secret>, ConfigError> {
    const HOST: &str = "SMTP_HOST";
    const PORT: &str = "SMTP_PORT";
    const USER: &str = "EMAIL_USERNAME";
    const PASSWORD: &str = "EMAIL_PASSWORD";
    let user = vars.text(USER);
    let password = vars.text(PASSWORD);
    let Some(host) = vars.text(HOST) else {
        for variable in [PORT, USER, PASSWORD] {
            if vars.text(variable).is_some() {
                return Err(ConfigError::new(
                    HOST,
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
            HOST,
            format!("{host:?} is not a host name"),
        ));
    }
    let port: u16 = vars.parse(PORT, 587)?;
    let credentials = match (user, password) {
        (Some(user), Some(password)) => {
            format!("{}:{}@", percent_encode(&user), percent_encode(&password))
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                PASSWORD,
                "must be set when EMAIL_USERNAME is",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(USER, "must be set when EMAIL_PASSWORD is"))
        }
        (None, None) => String::new(),
    };
    // An IPv6 literal needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let url = match port {
        465 => format!("smtps://{credentials}{host}:{port}"),
        587 => format!("smtp://{credentials}{host}:{port}?tls=required"),
        _ => format!("smtp://{credentials}{host}:{port}"),
    };
    checked_smtp_url(HOST, url).map(Some)
}
