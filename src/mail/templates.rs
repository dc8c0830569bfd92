//! The service's emails: askama templates in `templates/email/`, each HTML with a text part.

use askama::Template;

/// Which email it is; also its `kind` in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    Welcome,
    PasswordReset,
    PasswordChanged,
    ApiKeyCreated,
    NewSignInMethod,
    /// Security notices of SPEC §13.
    NewSignIn,
    TwoFactorEnabled,
    TwoFactorDisabled,
    TwoFactorRemovedByAdmin,
    AccountChangedByAdmin,
}

impl EmailKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EmailKind::Welcome => "welcome",
            EmailKind::PasswordReset => "password_reset",
            EmailKind::PasswordChanged => "password_changed",
            EmailKind::ApiKeyCreated => "api_key_created",
            EmailKind::NewSignInMethod => "new_sign_in_method",
            EmailKind::NewSignIn => "new_sign_in",
            EmailKind::TwoFactorEnabled => "two_factor_enabled",
            EmailKind::TwoFactorDisabled => "two_factor_disabled",
            EmailKind::TwoFactorRemovedByAdmin => "two_factor_removed_by_admin",
            EmailKind::AccountChangedByAdmin => "account_changed_by_admin",
        }
    }
}

/// An email to render, with what it needs. No variant carries a password.
#[derive(Clone, Copy)]
pub enum Email<'a> {
    /// Sent at sign-up; `verify_url` carries the verification token (valid 24 hours).
    Welcome {
        name: &'a str,
        verify_url: &'a str,
    },
    /// `reset_url` carries the reset token (valid 1 hour).
    PasswordReset {
        name: &'a str,
        reset_url: &'a str,
    },
    PasswordChanged {
        name: &'a str,
    },
    /// A key was created: the owner is told, in case it was not them (SPEC §9).
    ApiKeyCreated {
        name: &'a str,
        key_name: &'a str,
        key_id: &'a str,
        expires: Option<&'a str>,
    },
    /// A social identity was linked to the account (SPEC §11): the owner is told.
    NewSignInMethod {
        name: &'a str,
        /// As a person reads it: "GitHub", "Google", or the OIDC provider's name.
        provider: &'a str,
        /// The provider's account: its email, or its login.
        account: &'a str,
    },
    /// A security notice (SPEC §13): what happened, its particulars, and for a new sign-in
    /// the one-click "this wasn't me" link.
    Notice {
        kind: EmailKind,
        name: &'a str,
        /// One sentence: what happened.
        what: &'a str,
        /// Particulars (time, place, device, who), one per line.
        facts: &'a [String],
        /// `(label, url)` of the action for "this wasn't me".
        action: Option<(&'a str, &'a str)>,
    },
}

impl Email<'_> {
    pub fn kind(&self) -> EmailKind {
        match self {
            Email::Welcome { .. } => EmailKind::Welcome,
            Email::PasswordReset { .. } => EmailKind::PasswordReset,
            Email::PasswordChanged { .. } => EmailKind::PasswordChanged,
            Email::ApiKeyCreated { .. } => EmailKind::ApiKeyCreated,
            Email::NewSignInMethod { .. } => EmailKind::NewSignInMethod,
            Email::Notice { kind, .. } => *kind,
        }
    }
}

impl std::fmt::Debug for Email<'_> {
    /// Links carry tokens: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// A rendered email, ready for the outbox.
#[derive(Clone)]
pub struct Rendered {
    pub kind: EmailKind,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl std::fmt::Debug for Rendered {
    /// Bodies carry tokens: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("kind", &self.kind)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

pub fn render(email: &Email<'_>) -> Result<Rendered, askama::Error> {
    let (subject, text, html) = match *email {
        Email::Welcome { name, verify_url } => (
            "Welcome to Auth Flow: please verify your email",
            WelcomeText { name, verify_url }.render()?,
            WelcomeHtml { name, verify_url }.render()?,
        ),
        Email::PasswordReset { name, reset_url } => (
            "Reset your Auth Flow password",
            PasswordResetText { name, reset_url }.render()?,
            PasswordResetHtml { name, reset_url }.render()?,
        ),
        Email::PasswordChanged { name } => (
            "Your Auth Flow password was changed",
            PasswordChangedText { name }.render()?,
            PasswordChangedHtml { name }.render()?,
        ),
        Email::ApiKeyCreated {
            name,
            key_name,
            key_id,
            expires,
        } => (
            "A new API key was created for your Auth Flow account",
            ApiKeyCreatedText {
                name,
                key_name,
                key_id,
                expires,
            }
            .render()?,
            ApiKeyCreatedHtml {
                name,
                key_name,
                key_id,
                expires,
            }
            .render()?,
        ),
        Email::NewSignInMethod {
            name,
            provider,
            account,
        } => (
            "A new sign-in method was added to your Auth Flow account",
            NewSignInMethodText {
                name,
                provider,
                account,
            }
            .render()?,
            NewSignInMethodHtml {
                name,
                provider,
                account,
            }
            .render()?,
        ),
        Email::Notice {
            kind,
            name,
            what,
            facts,
            action,
        } => {
            let notice = NoticeText {
                name,
                what,
                facts,
                action,
            };
            let html = NoticeHtml {
                name,
                what,
                facts,
                action,
            };
            (notice_subject(kind), notice.render()?, html.render()?)
        }
    };
    Ok(Rendered {
        kind: email.kind(),
        subject: subject.to_owned(),
        text,
        html,
    })
}

// `.txt` templates are not escaped (plain text); `.html` ones are.

#[derive(Template)]
#[template(path = "email/welcome.txt")]
struct WelcomeText<'a> {
    name: &'a str,
    verify_url: &'a str,
}

#[derive(Template)]
#[template(path = "email/welcome.html")]
struct WelcomeHtml<'a> {
    name: &'a str,
    verify_url: &'a str,
}

#[derive(Template)]
#[template(path = "email/password_reset.txt")]
struct PasswordResetText<'a> {
    name: &'a str,
    reset_url: &'a str,
}

#[derive(Template)]
#[template(path = "email/password_reset.html")]
struct PasswordResetHtml<'a> {
    name: &'a str,
    reset_url: &'a str,
}

#[derive(Template)]
#[template(path = "email/password_changed.txt")]
struct PasswordChangedText<'a> {
    name: &'a str,
}

#[derive(Template)]
#[template(path = "email/password_changed.html")]
struct PasswordChangedHtml<'a> {
    name: &'a str,
}

#[derive(Template)]
#[template(path = "email/api_key_created.txt")]
struct ApiKeyCreatedText<'a> {
    name: &'a str,
    key_name: &'a str,
    key_id: &'a str,
    expires: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "email/api_key_created.html")]
struct ApiKeyCreatedHtml<'a> {
    name: &'a str,
    key_name: &'a str,
    key_id: &'a str,
    expires: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "email/new_sign_in_method.txt")]
struct NewSignInMethodText<'a> {
    name: &'a str,
    provider: &'a str,
    account: &'a str,
}

#[derive(Template)]
#[template(path = "email/new_sign_in_method.html")]
struct NewSignInMethodHtml<'a> {
    name: &'a str,
    provider: &'a str,
    account: &'a str,
}

fn notice_subject(kind: EmailKind) -> &'static str {
    match kind {
        EmailKind::NewSignIn => "New sign-in to your Auth Flow account",
        EmailKind::TwoFactorEnabled => "Two-factor authentication is on for your Auth Flow account",
        EmailKind::TwoFactorDisabled => {
            "Two-factor authentication was turned off for your Auth Flow account"
        }
        EmailKind::TwoFactorRemovedByAdmin => {
            "An administrator removed two-factor authentication from your Auth Flow account"
        }
        EmailKind::AccountChangedByAdmin => "An administrator changed your Auth Flow account",
        _ => "A security notice about your Auth Flow account",
    }
}

#[derive(Template)]
#[template(path = "email/security_notice.txt")]
struct NoticeText<'a> {
    name: &'a str,
    what: &'a str,
    facts: &'a [String],
    action: Option<(&'a str, &'a str)>,
}

#[derive(Template)]
#[template(path = "email/security_notice.html")]
struct NoticeHtml<'a> {
    name: &'a str,
    what: &'a str,
    facts: &'a [String],
    action: Option<(&'a str, &'a str)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFY: &str = "http://localhost:8080/api/auth/verify-email?token=abc_DEF-123";
    const RESET: &str = "https://app.example.com/reset-password?token=xyz_987-Q";

    fn all(name: &str) -> Vec<Rendered> {
        [
            Email::Welcome {
                name,
                verify_url: VERIFY,
            },
            Email::PasswordReset {
                name,
                reset_url: RESET,
            },
            Email::PasswordChanged { name },
        ]
        .iter()
        .map(|e| render(e).unwrap())
        .collect()
    }

    #[test]
    fn each_email_renders_with_both_parts_naming_the_service() {
        let rendered = all("Ada Lovelace");
        let kinds: Vec<_> = rendered.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["welcome", "password_reset", "password_changed"]);
        for r in &rendered {
            assert!(r.subject.contains("Auth Flow"), "{}", r.subject);
            assert!(r.text.contains("Hello Ada Lovelace,"), "{}", r.text);
            assert!(r.text.contains("Auth Flow"));
            assert!(r.html.contains("Hello Ada Lovelace,"), "{}", r.html);
            assert!(r.html.contains("Auth Flow"));
            assert!(r.html.starts_with("<!DOCTYPE html>"));
            assert!(!r.html.contains("<style"), "inline styles only");
            assert!(!r.text.to_lowercase().contains("password:"));
        }
    }

    #[test]
    fn links_are_on_their_own_line_in_text_and_hrefs_in_html() {
        let rendered = all("Ada");
        for (r, url) in [(&rendered[0], VERIFY), (&rendered[1], RESET)] {
            assert!(r.text.lines().any(|line| line == url), "{}", r.text);
            assert!(r.html.contains(&format!("href=\"{url}\"")), "{}", r.html);
        }
        assert!(!rendered[2].text.contains("http"));
    }

    #[test]
    fn each_email_says_what_it_should() {
        let rendered = all("Ada");
        assert!(rendered[0].text.contains("24 hours"));
        assert!(rendered[0].html.contains("24 hours"));
        assert!(rendered[1].text.contains("1 hour"));
        assert!(rendered[1]
            .text
            .contains("If you did not ask for this, ignore this email"));
        assert!(rendered[1]
            .html
            .contains("If you did not ask for this, ignore this email"));
        assert!(rendered[2].text.contains("was just changed"));
        assert!(rendered[2]
            .text
            .contains("If you did not change your password"));
        assert!(rendered[2]
            .html
            .contains("If you did not change your password"));
    }

    #[test]
    fn html_escapes_names_and_links() {
        let r = render(&Email::Welcome {
            name: "<script>alert(1)</script>",
            verify_url: "https://x.example/v?token=a&next=\"><b>",
        })
        .unwrap();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(!r.html.contains("\"><b>"), "{}", r.html);
        assert!(r.html.contains("alert(1)"));
        // Text is not HTML: it keeps what it was given.
        assert!(r.text.contains("Hello <script>alert(1)</script>,"));
        assert!(r
            .text
            .lines()
            .any(|l| l == "https://x.example/v?token=a&next=\"><b>"));
    }
}
