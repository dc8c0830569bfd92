//! Use-cases of email verification, password recovery and password change; each queues its email
//! in the same transaction as the change.

use std::sync::Arc;
use std::time::Duration;

use super::tokens::{digest, random_token};
use super::{normalize_identifier, Auth, ClientInfo, Principal, Recovery};
use crate::domain::Email as EmailAddress;
use crate::error::{Error, FieldError};
use crate::mail::templates::{render, Email};
use crate::store::{NewEmail, NewToken, TokenKind, User};
use crate::time;

/// Reset links work for an hour, verification links for a day (SPEC §4).
const RESET_TOKEN_TTL: Duration = Duration::from_secs(3600);
const VERIFICATION_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

fn required(field: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::Validation(vec![FieldError::new(
            field,
            format!("{field} is required."),
        )]));
    }
    Ok(())
}

impl Auth {
    pub(super) fn render(&self, to: &str, email: &Email<'_>) -> Result<NewEmail, Error> {
        let rendered = render(email).map_err(|e| anyhow::anyhow!("rendering an email: {e}"))?;
        Ok(NewEmail {
            kind: rendered.kind,
            to: to.to_owned(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
        })
    }

    fn verify_link(&self, token: &str) -> String {
        format!(
            "{}/api/auth/verify-email?token={token}",
            self.config.app_url
        )
    }

    fn reset_link(&self, token: &str) -> String {
        let base = &self.config.password_reset_url;
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}token={token}")
    }

    /// A fresh verification token and the welcome email that carries it.
    pub(super) fn welcome(&self, name: &str, to: &str) -> Result<(NewToken, NewEmail), Error> {
        let token = random_token();
        let email = self.render(
            to,
            &Email::Welcome {
                name,
                verify_url: &self.verify_link(&token),
            },
        )?;
        let token = NewToken {
            kind: TokenKind::EmailVerification,
            hash: digest(&token),
            expires_at: self.clock.now() + time::duration(VERIFICATION_TOKEN_TTL),
        };
        Ok((token, email))
    }

    /// A well-formed address, lower-cased; a malformed one is a validation error, which says
    /// nothing about which addresses have accounts.
    fn parse_address(raw: &str) -> Result<String, Error> {
        required("email", raw)?;
        let address = EmailAddress::parse(raw)
            .map_err(|m| Error::Validation(vec![FieldError::new("email", m)]))?;
        Ok(normalize_identifier(address.as_str()))
    }

    /// The active account of this (lower-cased) address, if there is one.
    async fn account_for_address(&self, address: &str) -> Result<Option<User>, Error> {
        let found = self.store.find_credentials(address).await?;
        Ok(found
            .map(|c| c.user)
            .filter(|u| u.active && u.email.to_lowercase() == address))
    }

    /// Forgot-password and resend-verification share one limit per address and one per IP.
    async fn take_recovery_limits(&self, address: &str, client: &ClientInfo) -> Result<(), Error> {
        let limits = &self.config.limits;
        let ip = format!("ip:{}", super::protection::ip_key(client));
        let address = format!("email:{address}");
        self.take_limits(
            "recovery",
            &[
                (ip.as_str(), limits.recovery_per_ip),
                (address.as_str(), limits.recovery_per_email),
            ],
        )
        .await
    }

    /// Checks the request, then looks for the account and queues its email after the answer
    /// is sent: known and unknown addresses answer alike, in the same time.
    fn in_background<F>(
        self: &Arc<Self>,
        what: &'static str,
        work: impl FnOnce(Arc<Self>) -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        let auth = Arc::clone(self);
        self.background.spawn(async move {
            if let Err(e) = work(auth).await {
                tracing::error!(error = %e, "{what} failed");
            }
        });
    }

    pub(super) async fn send_reset(&self, address: &str) -> Result<(), Error> {
        let Some(user) = self.account_for_address(address).await? else {
            return Ok(());
        };
        let token = random_token();
        let email = self.render(
            &user.email,
            &Email::PasswordReset {
                name: &user.name,
                reset_url: &self.reset_link(&token),
            },
        )?;
        let now = self.clock.now();
        let token = NewToken {
            kind: TokenKind::PasswordReset,
            hash: digest(&token),
            expires_at: now + time::duration(RESET_TOKEN_TTL),
        };
        self.store
            .issue_token(user.db_id, &token, &email, now)
            .await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "password reset requested");
        Ok(())
    }

    async fn send_verification(&self, address: &str) -> Result<(), Error> {
        let Some(user) = self.account_for_address(address).await? else {
            return Ok(());
        };
        if user.email_verified {
            return Ok(());
        }
        let (token, email) = self.welcome(&user.name, &user.email)?;
        self.store
            .issue_token(user.db_id, &token, &email, self.clock.now())
            .await?;
        self.mail_wake.notify_one();
        Ok(())
    }
}

impl Recovery<'_> {
    /// Sends a reset link if the address has an account; the caller answers the same either way.
    pub async fn forgot_password(&self, email: &str, client: &ClientInfo) -> Result<(), Error> {
        let address = Auth::parse_address(email)?;
        self.take_recovery_limits(&address, client).await?;
        self.in_background("password reset email", move |auth| async move {
            auth.send_reset(&address).await
        });
        Ok(())
    }

    /// Sends a new verification link if the address has an unverified account.
    pub async fn resend_verification(&self, email: &str, client: &ClientInfo) -> Result<(), Error> {
        let address = Auth::parse_address(email)?;
        self.take_recovery_limits(&address, client).await?;
        self.in_background("verification email", move |auth| async move {
            auth.send_verification(&address).await
        });
        Ok(())
    }

    /// Whether a reset link's token can still be used (for the page that asks for the new
    /// password: an unknown, used or expired link is explained before anything is typed).
    pub async fn reset_token_is_valid(&self, token: &str) -> Result<bool, Error> {
        if token.trim().is_empty() {
            return Ok(false);
        }
        let user = self
            .store
            .token_user(
                TokenKind::PasswordReset,
                &digest(token.trim()),
                self.clock.now(),
            )
            .await?;
        Ok(user.is_some())
    }

    pub async fn reset_password(
        &self,
        token: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        required("token", token)?;
        let hash = digest(token.trim());
        let user = self
            .store
            .token_user(TokenKind::PasswordReset, &hash, self.clock.now())
            .await?
            .ok_or(Error::InvalidToken)?;
        let password = self
            .passwords
            .judge(
                password.to_owned(),
                vec![user.username.clone(), user.name.clone(), user.email.clone()],
            )
            .await?
            .map_err(|m| Error::Validation(vec![FieldError::new("password", m)]))?;
        let password_hash = self.passwords.hash(password.expose().to_owned()).await?;
        let notice = self.render(&user.email, &Email::PasswordChanged { name: &user.name })?;
        let audit = self.audit_event(
            "password_reset",
            Some(&user),
            Some(&user),
            client,
            serde_json::json!({"sessions_revoked": true, "api_keys_revoked": true}),
        );
        // The token is used inside the transaction: of two concurrent resets, one wins.
        self.store
            .reset_password(&hash, &password_hash, &notice, &audit, self.clock.now())
            .await?
            .ok_or(Error::InvalidToken)?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "password reset; all sessions revoked");
        Ok(())
    }

    /// For the emailed link: `Ok(true)` verified now, `Ok(false)` verified already (the link
    /// was opened before, perhaps by a mail scanner), else why not.
    pub async fn verify_email_link(&self, token: &str) -> Result<bool, Error> {
        match self.verify_email(token).await {
            Ok(_) => Ok(true),
            Err(Error::InvalidToken) => {
                if self.store.verified_by_token(&digest(token.trim())).await? {
                    Ok(false)
                } else {
                    Err(Error::InvalidToken)
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn verify_email(&self, token: &str) -> Result<User, Error> {
        required("token", token)?;
        let user = self
            .store
            .verify_email(&digest(token.trim()), self.clock.now())
            .await?
            .ok_or(Error::InvalidToken)?;
        tracing::info!(user = %user.uid, "email verified");
        Ok(user)
    }

    /// Signed in, with the current password; every other session is revoked.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: String,
        new: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        principal.session_id()?;
        required("current_password", &current)?;
        let user = &principal.user;
        let new = self
            .passwords
            .judge(
                new.to_owned(),
                vec![user.username.clone(), user.name.clone(), user.email.clone()],
            )
            .await?
            .map_err(|m| Error::Validation(vec![FieldError::new("new_password", m)]))?;
        self.verify_current_password(user, current, client).await?;
        let password_hash = self.passwords.hash(new.expose().to_owned()).await?;
        let notice = self.render(&user.email, &Email::PasswordChanged { name: &user.name })?;
        let audit = self.audit_event(
            "password_changed",
            Some(user),
            Some(user),
            client,
            serde_json::json!({"other_sessions_revoked": true}),
        );
        self.store
            .change_password(
                user.db_id,
                &password_hash,
                principal.session_id()?,
                &notice,
                &audit,
                self.clock.now(),
            )
            .await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "password changed; other sessions revoked");
        Ok(())
    }
}
