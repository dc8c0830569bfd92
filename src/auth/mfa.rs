//! Two-factor authentication (SPEC §13): TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps,
//! ±1 step) with secrets sealed at rest, single-use recovery codes, and sign-in's second step
//! behind one gate, [`Auth::complete_sign_in`], that every first factor goes through.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::protection::Attempt;
use super::*;
use crate::error::FieldError;
use crate::mail::templates::{Email, EmailKind};
use crate::store::{AttemptOutcome, MfaChallenge, NewAuditEvent, TotpRecord};

/// RFC 6238 parameters (what every authenticator app assumes).
const STEP_SECS: i64 = 30;
const DIGITS: u32 = 6;
/// A code of the step before or after the current one is accepted (clock drift).
const SKEW_STEPS: i64 = 1;
/// 160 bits, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;
/// An `mfa_token` lives this long (SPEC §13), and dies at its 5th wrong code.
const CHALLENGE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const CHALLENGE_MAX_FAILURES: i32 = 5;
pub const METHODS: [&str; 2] = ["totp", "recovery_code"];

/// RFC 4226 HOTP value of `counter`, `DIGITS` long.
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[19] & 0x0f);
    let binary = (u32::from(hash[offset]) & 0x7f) << 24
        | u32::from(hash[offset + 1]) << 16
        | u32::from(hash[offset + 2]) << 8
        | u32::from(hash[offset + 3]);
    binary % 10u32.pow(DIGITS)
}

/// The RFC 6238 time step of a Unix time.
pub fn step_at(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// The code of one step, zero-padded.
pub fn code_of(secret: &[u8], step: i64) -> String {
    format!(
        "{:0width$}",
        hotp(secret, u64::try_from(step).unwrap_or(0)),
        width = DIGITS as usize
    )
}

/// RFC 4648 base32 without padding (what `otpauth://` URLs carry).
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Seals TOTP secrets at rest: ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from
/// `MFA_ENCRYPTION_KEY`, else from the signing key; each secret is bound to its account.
pub struct SealingKey(Key);

impl SealingKey {
    pub fn derive(material: &str) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"authflow"), material.as_bytes());
        let mut key = [0u8; 32];
        hk.expand(b"totp secret sealing v1", &mut key)
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
        Self(Key::from(key))
    }

    fn seal(&self, user: UserId, secret: &[u8]) -> Result<String, Error> {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = user.get().to_be_bytes();
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a TOTP secret failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(STANDARD.encode(out))
    }

    fn open(&self, user: UserId, sealed: &str) -> Result<Vec<u8>, Error> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| anyhow::anyhow!("a stored TOTP secret is not base64"))?;
        if bytes.len() < 12 {
            return Err(anyhow::anyhow!("a stored TOTP secret is too short").into());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let aad = user.get().to_be_bytes();
        ChaCha20Poly1305::new(&self.0)
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .map_err(|_| {
                anyhow::anyhow!("a stored TOTP secret does not open (was MFA_ENCRYPTION_KEY or the signing key changed?)")
                    .into()
            })
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey([redacted])")
    }
}

/// What the first factor leads to: the session, or the second step.
#[derive(Debug)]
pub enum SignIn {
    Done(Box<IssuedTokens>),
    MfaRequired { mfa_token: String },
}

/// A fresh secret to set up, as the account page and the API show it.
#[derive(Debug)]
pub struct TotpSetup {
    /// Base32, for typing into an app.
    pub secret: String,
    pub otpauth_url: String,
}

/// Symbols of a recovery code: no look-alikes (no i, l, o, 0, 1).
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const RECOVERY_SYMBOLS: usize = 16;

/// A recovery code: 16 symbols of 31 (79 bits, uniform by rejection sampling) in groups of
/// four. Stored as a SHA-256 digest: at 79 bits, a stolen copy of the table cannot be
/// searched back to the codes.
fn recovery_code() -> String {
    let mut symbols = Vec::with_capacity(RECOVERY_SYMBOLS);
    while symbols.len() < RECOVERY_SYMBOLS {
        let mut byte = [0u8; 1];
        rand::rngs::OsRng.fill_bytes(&mut byte);
        // 248 = 8 × 31: the bytes above it would favour the first symbols.
        if usize::from(byte[0]) < 248 {
            symbols.push(RECOVERY_ALPHABET[usize::from(byte[0]) % RECOVERY_ALPHABET.len()]);
        }
    }
    grouped(&symbols)
}

fn grouped(symbols: &[u8]) -> String {
    symbols
        .chunks(4)
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A recovery code as typed: case, spaces and dashes do not matter.
fn normalize_recovery_code(code: &str) -> String {
    let plain: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if plain.len() == RECOVERY_SYMBOLS {
        grouped(plain.as_bytes())
    } else {
        plain
    }
}

fn percent(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn wrong_code() -> Error {
    Error::Validation(vec![FieldError::new(
        "code",
        "That code is not right. Use the current code of your authenticator app.",
    )])
}

impl Auth {
    /// An audit entry by `actor` about `target`, from `client`.
    pub(crate) fn audit_event(
        &self,
        kind: &'static str,
        actor: Option<&User>,
        target: Option<&User>,
        client: &ClientInfo,
        details: serde_json::Value,
    ) -> NewAuditEvent {
        NewAuditEvent {
            kind,
            actor: actor.map(|u| u.uid.clone()),
            target: target.map(|u| u.uid.clone()),
            ip: client.ip.map(|ip| ip.to_string()),
            user_agent: client
                .user_agent
                .as_ref()
                .map(|ua| ua.chars().take(255).collect()),
            details,
            now: self.clock.now(),
        }
    }

    /// The step of a valid code within ±1 step of now, compared in constant time.
    fn matching_step(&self, secret: &[u8], code: &str) -> Option<i64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = step_at(self.clock.now().timestamp());
        let mut found = None;
        for step in (now - SKEW_STEPS)..=(now + SKEW_STEPS) {
            if bool::from(code_of(secret, step).as_bytes().ct_eq(code.as_bytes())) {
                found = found.or(Some(step));
            }
        }
        found
    }

    async fn confirmed_totp(&self, user: &User) -> Result<Option<TotpRecord>, Error> {
        Ok(self.store.totp(user.db_id).await?.filter(|t| t.confirmed))
    }

    /// Whether `code` is a current TOTP code (never one of a step already used) or an unused
    /// recovery code of the account; either is used up by this check.
    async fn second_factor_ok(
        &self,
        user: &User,
        record: &TotpRecord,
        code: &str,
    ) -> Result<Option<&'static str>, Error> {
        let secret = self.sealing.open(user.db_id, &record.secret_sealed)?;
        if let Some(step) = self.matching_step(&secret, code) {
            if self.store.accept_totp_step(user.db_id, step).await? {
                return Ok(Some("totp"));
            }
            tracing::info!(user = %user.uid, "a TOTP code was presented again");
            return Ok(None);
        }
        let hash = digest(&normalize_recovery_code(code));
        if self
            .store
            .use_recovery_code(user.db_id, &hash, self.clock.now())
            .await?
        {
            return Ok(Some("recovery_code"));
        }
        Ok(None)
    }

    /// THE gate after a first factor (a password or a social sign-in): with two factors on,
    /// the second step; else the session. `attempt` is the sign-in attempt (reserved, or
    /// deferred with the limits off), which the session (or the second step) completes;
    /// `method` says how the first factor was proved (`password`, `github`, …) and is kept
    /// for the second step.
    pub async fn complete_sign_in(
        self: &Arc<Self>,
        user: User,
        client: ClientInfo,
        attempt: Attempt,
        method: &str,
    ) -> Result<SignIn, Error> {
        let two_factor = self.confirmed_totp(&user).await?.is_some();
        self.complete_sign_in_knowing(user, two_factor, client, attempt, method)
            .await
    }

    /// [`Self::complete_sign_in`] for a first factor that read `two_factor` (a confirmed TOTP
    /// in force) with the account it signs in to, in the same statement: the password's
    /// credentials query. A second factor confirmed while that sign-in's hash runs does not
    /// apply to it, as it does not to a session opened a moment earlier (confirming one
    /// ends no session).
    pub(super) async fn complete_sign_in_knowing(
        self: &Arc<Self>,
        user: User,
        two_factor: bool,
        client: ClientInfo,
        attempt: Attempt,
        method: &str,
    ) -> Result<SignIn, Error> {
        if !two_factor {
            let tokens = self
                .sessions()
                .start_session(user, client, attempt, method)
                .await?;
            return Ok(SignIn::Done(Box::new(tokens)));
        }
        let token = random_token();
        let now = self.clock.now();
        self.store
            .create_mfa_challenge(
                &digest(&token),
                &MfaChallenge {
                    user_db_id: user.db_id,
                    attempt_id: self.written_attempt(attempt, &client).await?,
                    method: method.to_owned(),
                    failures: 0,
                },
                now,
                now + time::duration(CHALLENGE_TTL),
            )
            .await?;
        metrics::counter!("authflow_sign_ins_total", "outcome" => "mfa").increment(1);
        tracing::info!(user = %user.uid, "first factor passed; second step required");
        Ok(SignIn::MfaRequired { mfa_token: token })
    }
}

impl Mfa<'_> {
    /// A new secret for the signed-in user (with their password), not in force until confirmed.
    pub async fn setup(
        &self,
        principal: &Principal,
        password: String,
        client: &ClientInfo,
    ) -> Result<TotpSetup, Error> {
        principal.session_id()?;
        if password.is_empty() {
            return Err(Error::Validation(vec![FieldError::new(
                "password",
                "Password is required.",
            )]));
        }
        let user = &principal.user;
        self.verify_current_password(user, password, client).await?;
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let sealed = self.sealing.seal(user.db_id, &secret)?;
        if !self
            .store
            .begin_totp(user.db_id, &sealed, self.clock.now())
            .await?
        {
            return Err(Error::Forbidden(
                "Two-factor authentication is already on; turn it off first.",
            ));
        }
        let encoded = base32(&secret);
        let issuer = "Auth Flow";
        let otpauth_url = format!(
            "otpauth://totp/{}:{}?secret={encoded}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            percent(issuer),
            percent(&user.username),
            percent(issuer),
        );
        Ok(TotpSetup {
            secret: encoded,
            otpauth_url,
        })
    }

    /// Puts the pending secret in force with its first code (which counts as used) and
    /// returns the recovery codes, shown this once.
    pub async fn confirm(
        &self,
        principal: &Principal,
        code: &str,
        client: &ClientInfo,
    ) -> Result<Vec<String>, Error> {
        principal.session_id()?;
        let user = &principal.user;
        let record = self
            .store
            .totp(user.db_id)
            .await?
            .filter(|t| !t.confirmed)
            .ok_or(Error::Validation(vec![FieldError::new(
                "code",
                "No two-factor setup is waiting: start with POST /api/auth/mfa/totp/setup.",
            )]))?;
        let secret = self.sealing.open(user.db_id, &record.secret_sealed)?;
        let step = self.matching_step(&secret, code).ok_or_else(wrong_code)?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let hashes: Vec<String> = codes.iter().map(|c| digest(c)).collect();
        let audit = self.audit_event(
            "mfa_enabled",
            Some(user),
            Some(user),
            client,
            serde_json::json!({"method": "totp"}),
        );
        let notice = self.render(
            &user.email,
            &Email::Notice {
                kind: EmailKind::TwoFactorEnabled,
                name: &user.name,
                what: "Two-factor authentication was just turned on for your Auth Flow account: signing in now also asks for a code from your authenticator app.",
                facts: &self.facts(client),
                action: None,
            },
        )?;
        if !self
            .store
            .confirm_totp(user.db_id, step, &hashes, &audit, &notice)
            .await?
        {
            return Err(wrong_code());
        }
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "two-factor authentication turned on");
        Ok(codes)
    }

    /// Turns two-factor off, with the password and a current code (or a recovery code).
    pub async fn disable(
        &self,
        principal: &Principal,
        password: String,
        code: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        principal.session_id()?;
        let mut errors = Vec::new();
        if password.is_empty() {
            errors.push(FieldError::new("password", "Password is required."));
        }
        if code.trim().is_empty() {
            errors.push(FieldError::new("code", "Code is required."));
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let user = &principal.user;
        let record = self
            .confirmed_totp(user)
            .await?
            .ok_or(Error::NotFound("two-factor authentication"))?;
        self.verify_current_password(user, password, client).await?;
        if self.second_factor_ok(user, &record, code).await?.is_none() {
            return Err(wrong_code());
        }
        let audit = self.audit_event(
            "mfa_disabled",
            Some(user),
            Some(user),
            client,
            serde_json::json!({}),
        );
        let notice = self.render(
            &user.email,
            &Email::Notice {
                kind: EmailKind::TwoFactorDisabled,
                name: &user.name,
                what: "Two-factor authentication was just turned off for your Auth Flow account: signing in now needs only your password.",
                facts: &self.facts(client),
                action: None,
            },
        )?;
        self.store.remove_totp(user.db_id, &audit, &notice).await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "two-factor authentication turned off");
        Ok(())
    }

    /// Sign-in's second step: the `mfa_token` of the first and a TOTP or recovery code.
    pub async fn verify(
        &self,
        mfa_token: &str,
        code: &str,
        client: ClientInfo,
    ) -> Result<IssuedTokens, Error> {
        let mut errors = Vec::new();
        if mfa_token.trim().is_empty() {
            errors.push(FieldError::new("mfa_token", "mfa_token is required."));
        }
        if code.trim().is_empty() {
            errors.push(FieldError::new("code", "Code is required."));
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let hash = digest(mfa_token.trim());
        let now = self.clock.now();
        let challenge = self
            .store
            .mfa_challenge(&hash, now, CHALLENGE_MAX_FAILURES)
            .await?
            .ok_or(Error::InvalidToken)?;
        let user = self
            .store
            .credentials_by_id(challenge.user_db_id)
            .await?
            .map(|c| c.user)
            .filter(|u| u.active)
            .ok_or(Error::InvalidToken)?;
        let record = self
            .confirmed_totp(&user)
            .await?
            .ok_or(Error::InvalidToken)?;
        // Each code is judged as a sign-in attempt: under the same limits, in the same records.
        let attempt = self
            .reserve_attempt(&user.username.to_lowercase(), Some(&user), &client)
            .await?;
        let Some(method) = self.second_factor_ok(&user, &record, code).await? else {
            self.finish_attempt_as(
                attempt,
                &client,
                Some(&user),
                AttemptResult::Failed,
                "mfa_failed",
            )
            .await?;
            return Err(Error::InvalidCredentials);
        };
        if !self
            .store
            .use_mfa_challenge(&hash, self.clock.now())
            .await?
        {
            self.finish_attempt_as(
                attempt,
                &client,
                Some(&user),
                AttemptResult::Failed,
                "mfa_failed",
            )
            .await?;
            return Err(Error::InvalidToken);
        }
        // The password step's attempt ends as a success that opens nothing by itself.
        self.store
            .finish_sign_in(&AttemptOutcome {
                attempt: Attempt::Reserved(challenge.attempt_id),
                result: AttemptResult::Succeeded,
                ip: protection::ip_key(&client),
                now: self.clock.now(),
                account: None,
                audit: None,
                method: challenge.method.clone(),
            })
            .await?;
        if method == "recovery_code" {
            let event = self.audit_event(
                "recovery_code_used",
                Some(&user),
                Some(&user),
                &client,
                serde_json::json!({}),
            );
            self.record(&event, None).await;
        }
        let tokens = self
            .sessions()
            .start_session(user, client, attempt, &challenge.method)
            .await?;
        tracing::info!(
            user = %tokens.user.uid,
            first = %challenge.method,
            second = method,
            "signed in with two factors"
        );
        Ok(tokens)
    }

    /// Whether the signed-in user has two-factor on, and how many recovery codes are left.
    pub async fn status(&self, principal: &Principal) -> Result<(bool, i64), Error> {
        let user = &principal.user;
        match self.confirmed_totp(user).await? {
            Some(_) => Ok((true, self.store.recovery_codes_left(user.db_id).await?)),
            None => Ok((false, 0)),
        }
    }

    /// An administrator removes a user's two-factor (a lost phone); the user is emailed.
    pub async fn remove_by_admin(
        &self,
        caller: &Principal,
        uid: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        self.require_admin(caller, Scope::UsersWrite)?;
        // Like a role change: a leaked key must not be able to strip a second factor.
        if caller.session_id().is_err() {
            return Err(Error::Forbidden(
                "Two-factor is removed by a signed-in administrator, not an API key.",
            ));
        }
        let target = self.admin().user(caller, uid).await?;
        let audit = self.audit_event(
            "mfa_removed_by_admin",
            Some(&caller.user),
            Some(&target),
            client,
            serde_json::json!({}),
        );
        let notice = self.render(
            &target.email,
            &Email::Notice {
                kind: EmailKind::TwoFactorRemovedByAdmin,
                name: &target.name,
                what: "An administrator removed two-factor authentication from your Auth Flow account: signing in now needs only your password. You can turn it on again on your account page.",
                facts: &[format!("Administrator: {}", caller.user.username)],
                action: None,
            },
        )?;
        if !self
            .store
            .remove_totp(target.db_id, &audit, &notice)
            .await?
        {
            return Err(Error::NotFound("two-factor authentication"));
        }
        self.mail_wake.notify_one();
        tracing::info!(admin = %caller.user.uid, user = %target.uid, "two-factor removed by an administrator");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits there; the last 6 are ours).
    #[test]
    fn rfc6238_sha1_vectors() {
        let secret = b"12345678901234567890";
        for (time, expected) in [
            (59_i64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_of(secret, step_at(time)), expected[2..], "at {time}");
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn sealed_secrets_open_only_for_their_account_and_key() {
        let key = SealingKey::derive("a signing key of at least 32 bytes!!");
        let sealed = key.seal(UserId::new(7), b"secret").unwrap();
        assert!(!sealed.contains("secret"));
        assert_eq!(key.open(UserId::new(7), &sealed).unwrap(), b"secret");
        assert!(key.open(UserId::new(8), &sealed).is_err());
        let other = SealingKey::derive("another signing key of 32 bytes!!!!");
        assert!(other.open(UserId::new(7), &sealed).is_err());
    }

    #[test]
    fn recovery_codes_are_typed_loosely() {
        let code = recovery_code();
        assert_eq!(code.len(), 19);
        assert!(
            code.split('-')
                .all(|group| group.len() == 4
                    && group.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)))
        );
        assert_eq!(
            normalize_recovery_code(&code.to_uppercase().replace('-', " ")),
            code
        );
    }
}
