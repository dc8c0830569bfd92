//! Reading settings from environment variables: `Vars` checks each value where it is read, so
//! each variable's name is written once, at the place that reads it; `Secret` never prints.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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
    pub fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

/// Lifetimes and windows beyond ten years are mistakes, and would overflow dates.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The variables of one start (the process environment, or a test's map).
#[derive(Clone, Copy)]
pub struct Vars<'a> {
    map: &'a HashMap<String, String>,
}

impl<'a> Vars<'a> {
    pub fn new(map: &'a HashMap<String, String>) -> Self {
        Self { map }
    }

    /// The value, trimmed; an empty value counts as unset.
    pub fn text(&self, name: &str) -> Option<String> {
        self.map
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Parsed with `FromStr`, or `default` when unset.
    pub fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError> {
        Ok(self.parse_optional(name)?.unwrap_or(default))
    }

    pub fn parse_optional<T: FromStr>(&self, name: &'static str) -> Result<Option<T>, ConfigError> {
        self.text(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| ConfigError::new(name, format!("{v:?} is not valid")))
            })
            .transpose()
    }

    /// A whole number in `min..=max`.
    pub fn number(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let n: u64 = self.parse(name, default)?;
        if n < min {
            return Err(ConfigError::new(
                name,
                if min == 1 {
                    "must be greater than 0".to_owned()
                } else {
                    format!("must be at least {min}")
                },
            ));
        }
        if n > max {
            return Err(ConfigError::new(name, format!("must be at most {max}")));
        }
        Ok(n)
    }

    /// A positive number of seconds, at most ten years.
    pub fn seconds(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.number(name, default, 1, MAX_SECONDS)
            .map(Duration::from_secs)
    }

    /// A limit: a positive whole number.
    pub fn count(&self, name: &'static str, default: u64) -> Result<i64, ConfigError> {
        let n = self.number(name, default, 1, MAX_SECONDS)?;
        i64::try_from(n).map_err(|_| ConfigError::new(name, "is too large"))
    }

    pub fn boolean(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.text(name).map(|v| v.to_ascii_lowercase()).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(other) => Err(ConfigError::new(
                name,
                format!("expected true or false, got {other:?}"),
            )),
        }
    }

    /// One of the named choices (`default` when unset).
    pub fn choice<T: Copy>(
        &self,
        name: &'static str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(label, _)| *label == value)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(label, _)| *label).collect();
                ConfigError::new(
                    name,
                    format!("expected one of {}, got {value:?}", names.join(", ")),
                )
            })
    }

    /// An `http://` or `https://` URL, without a trailing slash.
    pub fn url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        self.text(name)
            .map(|url| {
                if url.starts_with("http://") || url.starts_with("https://") {
                    Ok(url.trim_end_matches('/').to_owned())
                } else {
                    Err(ConfigError::new(
                        name,
                        "must start with http:// or https://",
                    ))
                }
            })
            .transpose()
    }

    /// A signing key: at least 32 bytes.
    pub fn key(&self, name: &'static str) -> Result<Option<Secret>, ConfigError> {
        self.text(name)
            .map(|value| {
                if value.len() < 32 {
                    Err(ConfigError::new(name, "must be at least 32 bytes long"))
                } else {
                    Ok(Secret::new(value))
                }
            })
            .transpose()
    }

    /// A comma-separated list, each item checked by `item`.
    pub fn list<T>(
        &self,
        name: &'static str,
        default: &str,
        item: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let list = self.text(name).unwrap_or_else(|| default.to_owned());
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| item(s).map_err(|reason| ConfigError::new(name, reason)))
            .collect()
    }

    /// PEM text, given inline (`\n` may be written as the two characters) or as a path.
    pub fn pem(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.text(name) {
            None => Ok(None),
            Some(v) if v.contains("-----BEGIN") => Ok(Some(v.replace("\\n", "\n"))),
            Some(path) => std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| ConfigError::new(name, format!("cannot read {path}: {e}"))),
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for URL user info.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
