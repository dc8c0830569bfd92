//! Delivery of one email: SMTP through lettre, or in development the mailbox folder of `.eml` files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lettre::address::AddressError;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::settings::MailSettings;

/// Connect, command and data timeout of one SMTP delivery.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where emails go.
#[derive(Clone)]
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Development: each email becomes `<dir>/<timestamp>-<to>.eml`.
    Mailbox {
        dir: PathBuf,
        /// Log the links of each email (tokens included): development only.
        log_links: bool,
    },
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // lettre redacts credentials, but the server address is all that is useful here.
            Transport::Smtp(_) => f.write_str("Smtp"),
            Transport::Mailbox { dir, log_links } => f
                .debug_struct("Mailbox")
                .field("dir", dir)
                .field("log_links", log_links)
                .finish(),
        }
    }
}

/// Why an email was not delivered. The text never carries a password (lettre never puts
/// credentials in its errors) nor a body.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid {role} address: {error}")]
    Address {
        /// `sender` or `recipient`.
        role: &'static str,
        error: AddressError,
    },
    #[error("cannot build the message: {0}")]
    Message(lettre::error::Error),
    #[error("SMTP delivery failed: {0}")]
    Smtp(lettre::transport::smtp::Error),
    #[error("cannot write to the development mailbox {}: {error}", dir.display())]
    Mailbox { dir: PathBuf, error: std::io::Error },
}

impl SendError {
    /// Retrying cannot help: the message itself is unusable. SMTP rejections are not
    /// counted as permanent, since a 5xx may be a configuration mistake (wrong credentials)
    /// that a fix cures.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Address { .. } | SendError::Message(_))
    }
}

/// The SMTP transport of a `SMTP_URL` (`smtp://`, `smtp://…?tls=required`, `smtps://`),
/// with [`SMTP_TIMEOUT`]. Builds the TLS settings too, so a URL that passes here is usable.
pub fn smtp_transport(
    url: &str,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
    Ok(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
        .timeout(Some(SMTP_TIMEOUT))
        .build())
}

impl Transport {
    /// SMTP when configured, else the development mailbox (links logged only when not
    /// production).
    pub fn from_settings(mail: &MailSettings, production: bool) -> anyhow::Result<Self> {
        match &mail.smtp_url {
            Some(url) => Ok(Transport::Smtp(
                smtp_transport(url.expose()).context("SMTP_URL is not usable")?,
            )),
            None => Ok(Transport::Mailbox {
                dir: mail.mailbox_dir.clone(),
                log_links: !production,
            }),
        }
    }

    /// Sends one `multipart/alternative` email (plain text first, then HTML).
    pub async fn send(
        &self,
        from: &Mailbox,
        to: &str,
        subject: &str,
        text: &str,
        html: &str,
    ) -> Result<(), SendError> {
        let sender = from.clone();
        let recipient: Mailbox = to.parse().map_err(|error| SendError::Address {
            role: "recipient",
            error,
        })?;
        let address = recipient.email.to_string();
        // Relays often add one, but a missing Message-ID counts against an email in spam filters.
        let message_id = format!(
            "<{}@{}>",
            uuid::Uuid::new_v4().simple(),
            sender.email.domain()
        );
        let message = Message::builder()
            .message_id(Some(message_id))
            .from(sender)
            .to(recipient)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                html.to_owned(),
            ))
            .map_err(SendError::Message)?;

        match self {
            Transport::Smtp(smtp) => {
                smtp.send(message).await.map_err(SendError::Smtp)?;
            }
            Transport::Mailbox { dir, log_links } => {
                let path = write_to_mailbox(dir, &address, &message.formatted()).await?;
                tracing::debug!(path = %path.display(), "development mailbox: email written");
                if *log_links {
                    for url in links(text) {
                        tracing::info!(to = %to, link = %url, "development mailbox");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes `<dir>/<timestamp>-<address>.eml` under a temporary name first, then renames it,
/// so a reader never sees half a file.
async fn write_to_mailbox(dir: &Path, to: &str, message: &[u8]) -> Result<PathBuf, SendError> {
    let failed = |error| SendError::Mailbox {
        dir: dir.to_owned(),
        error,
    };
    // Emails carry reset and verification links: the folder and files are the owner's only.
    let owned = dir.to_owned();
    tokio::task::spawn_blocking(move || crate::files::create_private_dir(&owned))
        .await
        .map_err(std::io::Error::other)
        .and_then(|created| created)
        .map_err(failed)?;

    let stem = format!(
        "{}-{}",
        crate::time::Clock::system()
            .now()
            .format("%Y%m%dT%H%M%S%.6fZ"),
        file_name_part(to)
    );
    // A leading dot keeps it out of `*.eml` globs while it is being written.
    let tmp = dir.join(format!(".{stem}.{}.tmp", uuid::Uuid::new_v4().simple()));
    if let Err(error) = write_private(&tmp, message).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(failed(error));
    }

    // Two emails to one address in the same microsecond must not overwrite each other.
    let mut path = dir.join(format!("{stem}.eml"));
    let mut n = 1;
    while tokio::fs::try_exists(&path).await.unwrap_or(false) {
        n += 1;
        path = dir.join(format!("{stem}-{n}.eml"));
    }
    if let Err(error) = tokio::fs::rename(&tmp, &path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(failed(error));
    }
    Ok(path)
}

/// A new file, 0600 from its creation on.
async fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .await?;
    }
    file.write_all(contents).await?;
    file.flush().await
}

/// The recipient as a safe file-name fragment: `[A-Za-z0-9@._+-]`, the rest `_`.
fn file_name_part(to: &str) -> String {
    let part: String = to
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if part.is_empty() {
        "unknown".to_owned()
    } else {
        part
    }
}

/// The `http(s)://` links of a plain-text body.
fn links(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '('))
        .filter(|word| word.starts_with("http://") || word.starts_with("https://"))
        .map(|word| word.trim_end_matches(['.', ',', ';', ':', ')', '!', '?']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const FROM: &str = "Auth Flow <no-reply@localhost>";

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn mailbox_writes_one_eml_with_both_parts_and_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("not/yet/there");
        let transport = Transport::Mailbox {
            dir: dir.clone(),
            log_links: true,
        };
        let text =
            "Hello Ada,\n\nhttps://auth.example.com/api/auth/verify-email?token=abc_DEF-123\n";
        let html = "<p>Hello Ada,</p><a href=\"https://auth.example.com/api/auth/verify-email?token=abc_DEF-123\">Verify</a>";
        transport
            .send(
                &FROM.parse().unwrap(),
                "ada@example.com",
                "Welcome to Auth Flow",
                text,
                html,
            )
            .await
            .unwrap();

        let names = files(&dir);
        assert_eq!(names.len(), 1, "{names:?}");
        let name = &names[0];
        assert!(name.ends_with("-ada@example.com.eml"), "{name}");
        // 20261127T081500.123456Z-…
        let stamp = &name[..23];
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.6fZ").is_ok(),
            "{stamp}"
        );
        assert!(!names.iter().any(|n| n.ends_with(".tmp")));

        let eml = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(eml.contains("Subject: Welcome to Auth Flow"), "{eml}");
        assert!(eml.contains("To: ada@example.com"), "{eml}");
        assert!(eml.contains("Message-ID: <"), "{eml}");
        assert!(eml.contains("@localhost>"), "{eml}");
        assert!(eml.contains("multipart/alternative"), "{eml}");
        assert!(eml.contains("Content-Type: text/plain"), "{eml}");
        assert!(eml.contains("Content-Type: text/html"), "{eml}");
        assert!(eml.contains("token=abc_DEF-123"), "{eml}");
    }

    #[tokio::test]
    async fn mailbox_keeps_every_email_to_the_same_address() {
        let tmp = tempfile::tempdir().unwrap();
        let transport = Transport::Mailbox {
            dir: tmp.path().to_owned(),
            log_links: false,
        };
        for _ in 0..3 {
            transport
                .send(
                    &FROM.parse().unwrap(),
                    "Ada <ada@example.com>",
                    "Hi",
                    "text",
                    "<p>html</p>",
                )
                .await
                .unwrap();
        }
        let names = files(tmp.path());
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".eml") && n.contains("Z-ada@example.com")),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn bad_addresses_are_permanent_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let transport = Transport::Mailbox {
            dir: tmp.path().to_owned(),
            log_links: false,
        };
        let err = transport
            .send(
                &FROM.parse().unwrap(),
                "not an address",
                "Hi",
                "text",
                "html",
            )
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("recipient"), "{err}");
        assert!(files(tmp.path()).is_empty());
    }

    #[test]
    fn links_are_found_in_text() {
        let text = "Open\nhttps://a.example/x?token=t1\nor (http://b.example/y).\nnot ftp://c";
        assert_eq!(
            links(text).collect::<Vec<_>>(),
            ["https://a.example/x?token=t1", "http://b.example/y"]
        );
    }

    #[test]
    fn file_names_are_sanitised() {
        assert_eq!(file_name_part("ada@example.com"), "ada@example.com");
        assert_eq!(file_name_part("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(file_name_part(""), "unknown");
    }

    #[test]
    fn settings_pick_the_transport() {
        let settings = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            MailSettings::from_vars(&crate::vars::Vars::new(&map), false, Path::new("data"))
                .unwrap()
        };
        let dev = settings(&[("MAILBOX_DIR", "/tmp/x")]);
        match Transport::from_settings(&dev, false).unwrap() {
            Transport::Mailbox { dir, log_links } => {
                assert_eq!(dir, PathBuf::from("/tmp/x"));
                assert!(log_links);
            }
            other => panic!("{other:?}"),
        }
        let smtp = settings(&[(
            "SMTP_URL",
            "smtps://user:hunter2hunter2@smtp.example.com:465",
        )]);
        let transport = Transport::from_settings(&smtp, false).unwrap();
        assert!(matches!(transport, Transport::Smtp(_)));
        assert!(!format!("{transport:?}").contains("hunter2"));
    }
}
