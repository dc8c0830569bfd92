//! Social sign-in (SPEC §11): starting a flow, its callback, the one-time code exchange,
//! explicit linking, listing and unlinking identities.
//!
//! A flow is bound to the browser by a random secret in a short-lived HttpOnly cookie: the
//! database keeps only the SHA-256 digests of the `state` and of that secret, and the PKCE
//! verifier and the OIDC nonce are derived from the secret and the state, so nothing stored
//! is enough to finish a flow. The callback deletes the flow as it reads it (single use).

mod github;
mod oidc;

use super::protection::Attempt;
use super::*;
use crate::config::sso::{GithubProvider, OidcProvider};
use crate::domain::FieldError;
use crate::mail::templates::Email as EmailTemplate;
use crate::store::{Identity, NewIdentity, NewSsoCode, NewSsoFlow, Unlink, NO_PASSWORD_PREFIX};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// How long a started flow waits for its callback.
pub const FLOW_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// How long the callback's one-time code may wait for its exchange (SPEC §11).
pub const CODE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// The cookie that binds a flow to the browser that started it.
pub const FLOW_COOKIE: &str = "authflow.sso";
/// Outbound calls to a provider give up after this.
pub const PROVIDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a provider says about the person, once its answer is verified.
#[derive(Debug, Clone)]
pub(crate) struct ProviderIdentity {
    pub subject: String,
    /// Lower-cased.
    pub email: Option<String>,
    /// Whether the provider asserts the person controls `email`.
    pub email_verified: bool,
    pub name: Option<String>,
    pub username_hint: Option<String>,
}

/// What a provider says is stored in columns of a bounded size (`subject` 255, `email` 200):
/// a longer subject is the provider's error; a longer email is kept as none (it could not be
/// an account's address either).
fn bounded(mut identity: ProviderIdentity) -> Result<ProviderIdentity, Error> {
    if identity.subject.is_empty() || identity.subject.chars().count() > 255 {
        return Err(provider_error(
            "a subject that is empty or over 255 characters".into(),
        ));
    }
    if identity
        .email
        .as_ref()
        .is_some_and(|email| email.chars().count() > 200)
    {
        identity.email = None;
        identity.email_verified = false;
    }
    Ok(identity)
}

/// A configured provider.
#[derive(Debug, Clone, Copy)]
enum Provider<'a> {
    Github(&'a GithubProvider),
    Oidc(&'a OidcProvider),
}

impl Provider<'_> {
    fn method(&self) -> &str {
        match self {
            Provider::Github(_) => "github",
            Provider::Oidc(p) => &p.method,
        }
    }
    fn display_name(&self) -> &str {
        match self {
            Provider::Github(_) => "GitHub",
            Provider::Oidc(p) => &p.display_name,
        }
    }
}

/// A provider as the pages and the API list it.
#[derive(Debug, Clone)]
pub struct ProviderInfo {
    /// In URLs: `github`, `google`, or an OIDC provider's name.
    pub slug: String,
    pub display_name: String,
}

/// A started flow: where to send the browser, and the secret for the binding cookie.
#[derive(Debug)]
pub struct StartedFlow {
    pub authorize_url: String,
    pub browser_secret: String,
}

/// What the callback's query string carries.
#[derive(Debug, Default, Clone)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    /// The provider's own error (`access_denied`, …).
    pub error: Option<String>,
}

/// Where a known flow ends: its `redirect_to` (`None`: the pages) and what happened.
#[derive(Debug)]
pub struct CallbackOutcome {
    pub redirect_to: Option<String>,
    pub result: Result<Landing, Error>,
}

#[derive(Debug)]
pub enum Landing {
    /// Signed in through the API flow: the one-time code for `POST /api/auth/sso/exchange`.
    Code(String),
    /// Signed in through the pages' flow: the session is open.
    SignedIn(super::mfa::SignIn),
    /// The identity is now linked to the signed-in account (`slug`).
    Linked(String),
}

pub(crate) fn provider_error(why: String) -> Error {
    Error::Provider(why)
}

/// The token endpoint's refusal (a wrong code or PKCE verifier) is the provider's answer
/// about this request, not its failure.
pub(crate) fn token_error<RE: std::error::Error + 'static, T: oauth2::ErrorResponse + 'static>(
    e: oauth2::RequestTokenError<RE, T>,
) -> Error {
    match e {
        oauth2::RequestTokenError::ServerResponse(_) => Error::SsoRefused {
            code: "provider_refused",
            message: "The identity provider refused the sign-in; start it again.",
        },
        other => provider_error(format!("token endpoint: {other}")),
    }
}

/// URL-safe base64 of SHA-256 over the parts: 43 characters, a valid PKCE verifier.
fn derive(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
}

fn pkce_verifier(secret: &str, state: &str) -> String {
    derive(&["authflow-pkce", secret, state])
}

fn nonce(secret: &str, state: &str) -> String {
    derive(&["authflow-nonce", secret, state])
}

const PROVIDER_EMAIL_UNVERIFIED: Error = Error::SsoRefused {
    code: "provider_email_unverified",
    message: "The identity provider does not say this email address is verified, so it cannot sign in to or create an account. Verify it with the provider, or sign up with a password.",
};
const SIGN_IN_WITH_PASSWORD_FIRST: Error = Error::SsoRefused {
    code: "sign_in_with_password_first",
    message: "An account with this email exists but its email is not verified. Sign in with your password first, then link this sign-in method from your account.",
};
const SET_PASSWORD_FIRST: Error = Error::SsoRefused {
    code: "password_not_set",
    message: "Linking a sign-in method needs your current password, and this account has none: set one with \"forgot password\" first.",
};
const LINK_SESSION_ENDED: Error = Error::SsoRefused {
    code: "link_session_ended",
    message: "The session that started this link was signed out meanwhile; sign in and start the link again.",
};
const ACCOUNT_DISABLED: Error = Error::SsoRefused {
    code: "account_disabled",
    message: "This account is deactivated.",
};

impl SocialSignIn<'_> {
    /// The configured providers, GitHub, Google, then the generic ones as listed.
    pub fn providers(&self) -> Vec<ProviderInfo> {
        let sso = &self.config.sso;
        let mut all = Vec::new();
        if sso.github.is_some() {
            all.push(ProviderInfo {
                slug: "github".into(),
                display_name: "GitHub".into(),
            });
        }
        for p in sso.google.iter().chain(&sso.oidc) {
            all.push(ProviderInfo {
                slug: p.slug.clone(),
                display_name: p.display_name.clone(),
            });
        }
        all
    }

    fn provider(&self, slug: &str) -> Result<Provider<'_>, Error> {
        let sso = &self.config.sso;
        if slug == "github" {
            if let Some(p) = &sso.github {
                return Ok(Provider::Github(p));
            }
        }
        sso.google
            .iter()
            .chain(&sso.oidc)
            .find(|p| p.slug == slug)
            .map(Provider::Oidc)
            .ok_or(Error::NotFound("provider"))
    }

    fn callback_url(&self, slug: &str) -> String {
        format!("{}/api/auth/sso/{slug}/callback", self.config.app_url)
    }

    /// Starts a sign-in flow: stores it and answers the provider's authorization URL.
    /// `redirect_to` is already allow-listed by the caller (`None`: the pages' own flow).
    pub async fn start(
        &self,
        slug: &str,
        redirect_to: Option<String>,
    ) -> Result<StartedFlow, Error> {
        self.begin(slug, redirect_to, None).await
    }

    /// Starts an explicit link for the signed-in person (SPEC §11, §9): a session alone
    /// cannot add a lasting way in, so it takes the current password (checked and limited
    /// like a sign-in) and a verified email, and the flow is bound to this session: the
    /// callback links only while it is still active.
    pub async fn start_link(
        &self,
        principal: &Principal,
        slug: &str,
        password: String,
        redirect_to: Option<String>,
        client: &ClientInfo,
    ) -> Result<StartedFlow, Error> {
        let session = principal.session_id()?.clone();
        self.provider(slug)?;
        if password.is_empty() {
            return Err(Error::Validation(vec![FieldError::new(
                "password",
                "Your current password is required to link a sign-in method.",
            )]));
        }
        let stored = self
            .store
            .credentials_by_id(principal.user.db_id)
            .await?
            .ok_or(ACCOUNT_DISABLED)?;
        if !crate::store::password_is_usable(&stored.password_hash) {
            return Err(SET_PASSWORD_FIRST);
        }
        if !stored.user.email_verified {
            return Err(Error::EmailNotVerified);
        }
        self.verify_current_password(&principal.user, password, client)
            .await?;
        self.begin(slug, redirect_to, Some((principal.user.db_id, session)))
            .await
    }

    async fn begin(
        &self,
        slug: &str,
        redirect_to: Option<String>,
        link_to: Option<(UserId, SessionId)>,
    ) -> Result<StartedFlow, Error> {
        let provider = self.provider(slug)?;
        let state = random_token();
        let secret = random_token();
        let redirect = self.callback_url(slug);
        let verifier = pkce_verifier(&secret, &state);
        let authorize_url = match provider {
            Provider::Github(p) => github::authorize_url(p, &redirect, &state, &verifier)?,
            Provider::Oidc(p) => {
                oidc::authorize_url(
                    p,
                    &self.sso_http,
                    &redirect,
                    &state,
                    &verifier,
                    &nonce(&secret, &state),
                )
                .await?
            }
        };
        let now = self.clock.now();
        self.store
            .create_sso_flow(&NewSsoFlow {
                state_hash: digest(&state),
                browser_hash: digest(&secret),
                provider: slug.to_owned(),
                redirect_to,
                link_user: link_to.as_ref().map(|(user, _)| *user),
                link_session: link_to.map(|(_, session)| session),
                now,
                expires_at: now + time::duration(FLOW_TTL),
            })
            .await?;
        Ok(StartedFlow {
            authorize_url,
            browser_secret: secret,
        })
    }

    /// The provider sent the browser back. An unknown, used, expired or other browser's
    /// flow is `Err(SsoState)`; for a known flow, what happened next goes to its redirect.
    pub async fn callback(
        &self,
        slug: &str,
        params: CallbackParams,
        browser_secret: Option<&str>,
        client: ClientInfo,
    ) -> Result<CallbackOutcome, Error> {
        let state = params.state.as_deref().filter(|s| !s.is_empty());
        let (Some(state), Some(secret)) = (state, browser_secret) else {
            return Err(Error::SsoState);
        };
        let Some(flow) = self.store.take_sso_flow(&digest(state)).await? else {
            return Err(Error::SsoState);
        };
        let same_browser: bool =
            subtle::ConstantTimeEq::ct_eq(digest(secret).as_bytes(), flow.browser_hash.as_bytes())
                .into();
        if !same_browser || flow.provider != slug || flow.expires_at <= self.clock.now() {
            return Err(Error::SsoState);
        }
        let result = self
            .complete(
                slug,
                &params,
                secret,
                state,
                flow.link_user.map(|user| (user, flow.link_session)),
                flow.redirect_to.is_none(),
                client,
            )
            .await;
        if let Err(e) = &result {
            tracing::info!(provider = slug, error = %e, "social sign-in did not complete");
        }
        Ok(CallbackOutcome {
            redirect_to: flow.redirect_to,
            result,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        slug: &str,
        params: &CallbackParams,
        secret: &str,
        state: &str,
        link_user: Option<(UserId, Option<SessionId>)>,
        pages: bool,
        client: ClientInfo,
    ) -> Result<Landing, Error> {
        if params.error.is_some() {
            return Err(Error::SsoRefused {
                code: "provider_denied",
                message: "The identity provider did not grant the sign-in.",
            });
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| provider_error("callback without a code".into()))?;
        let provider = self.provider(slug)?;
        let redirect = self.callback_url(slug);
        let verifier = pkce_verifier(secret, state);
        let identity = match provider {
            Provider::Github(p) => {
                github::identity(p, &self.sso_http, &redirect, code, &verifier).await?
            }
            Provider::Oidc(p) => {
                oidc::identity(
                    p,
                    &self.sso_http,
                    &self.clock,
                    &redirect,
                    code,
                    &verifier,
                    &nonce(secret, state),
                )
                .await?
            }
        };
        let identity = bounded(identity)?;
        match link_user {
            Some((user, session)) => self.link(provider, slug, user, session, identity).await,
            None => self.sign_in(provider, identity, pages, client).await,
        }
    }

    async fn link(
        &self,
        provider: Provider<'_>,
        slug: &str,
        user_db_id: UserId,
        session: Option<SessionId>,
        identity: ProviderIdentity,
    ) -> Result<Landing, Error> {
        let method = provider.method();
        // The session that started the link must still be active: a password reset, "this
        // wasn't me" or logout-all in between revoked it, and with it this link.
        let session = match session {
            Some(id) => self.store.session_by_id(&id, self.clock.now()).await?,
            None => None,
        };
        let Some(session) = session.filter(|s| s.user.db_id == user_db_id) else {
            return Err(LINK_SESSION_ENDED);
        };
        let user = Some(session.user)
            .filter(|u| u.active)
            .ok_or(ACCOUNT_DISABLED)?;
        if !user.email_verified {
            return Err(Error::EmailNotVerified);
        }
        match self.store.identity_user(method, &identity.subject).await? {
            Some(owner) if owner.db_id == user.db_id => return Ok(Landing::Linked(slug.into())),
            Some(_) => return Err(StoreErrorIdentityTaken.into()),
            None => {}
        }
        self.link_and_notify(&user, provider, &identity).await?;
        tracing::info!(user = %user.uid, provider = method, "social identity linked");
        Ok(Landing::Linked(slug.into()))
    }

    async fn link_and_notify(
        &self,
        user: &User,
        provider: Provider<'_>,
        identity: &ProviderIdentity,
    ) -> Result<(), Error> {
        let account = identity
            .email
            .clone()
            .or_else(|| identity.username_hint.clone())
            .unwrap_or_else(|| identity.subject.clone());
        let notice = self.render(
            &user.email,
            &EmailTemplate::NewSignInMethod {
                name: &user.name,
                provider: provider.display_name(),
                account: &account,
            },
        )?;
        self.store
            .link_identity(
                user.db_id,
                &NewIdentity {
                    provider: provider.method().to_owned(),
                    subject: identity.subject.clone(),
                    email: identity.email.clone(),
                    now: self.clock.now(),
                },
                &notice,
            )
            .await?;
        self.mail_wake.notify_one();
        Ok(())
    }

    /// The linking rules of SPEC §11: a known identity signs in to its account; an unknown
    /// one links to an account with the same email only when the provider says the email is
    /// verified and the account's email is verified too; else a new account is made, only
    /// for a verified email that no account has.
    async fn sign_in(
        &self,
        provider: Provider<'_>,
        identity: ProviderIdentity,
        pages: bool,
        client: ClientInfo,
    ) -> Result<Landing, Error> {
        let method = provider.method().to_owned();
        let identifier = identity
            .email
            .clone()
            .unwrap_or_else(|| format!("{method}:{}", identity.subject));
        let identifier = normalize_identifier(&identifier);

        let known = self.store.identity_user(&method, &identity.subject).await?;
        let user = match known {
            Some(user) => {
                let attempt = self
                    .reserve_attempt(&identifier, Some(&user), &client)
                    .await?;
                if !user.active {
                    self.finish_attempt(attempt, &client, Some(&user), AttemptResult::Failed)
                        .await?;
                    return Err(ACCOUNT_DISABLED);
                }
                // The same rule as a password sign-in (an account linked explicitly while
                // its email was unverified).
                if self.config.require_email_verification && !user.email_verified {
                    self.finish_attempt(
                        attempt,
                        &client,
                        Some(&user),
                        AttemptResult::EmailNotVerified,
                    )
                    .await?;
                    return Err(Error::EmailNotVerified);
                }
                (user, attempt)
            }
            None => {
                let by_email = match &identity.email {
                    Some(email) => self.store.user_by_email(email).await?,
                    None => None,
                };
                match by_email {
                    Some(user) => {
                        let attempt = self
                            .reserve_attempt(&identifier, Some(&user), &client)
                            .await?;
                        let refusal = if !identity.email_verified {
                            Some((PROVIDER_EMAIL_UNVERIFIED, AttemptResult::EmailNotVerified))
                        } else if !user.active {
                            Some((ACCOUNT_DISABLED, AttemptResult::Failed))
                        } else if !user.email_verified {
                            Some((SIGN_IN_WITH_PASSWORD_FIRST, AttemptResult::EmailNotVerified))
                        } else {
                            None
                        };
                        if let Some((error, result)) = refusal {
                            self.finish_attempt(attempt, &client, Some(&user), result)
                                .await?;
                            return Err(error);
                        }
                        if let Err(e) = self.link_and_notify(&user, provider, &identity).await {
                            // Not a guess: the attempt stays on record without counting.
                            self.finish_attempt(
                                attempt,
                                &client,
                                Some(&user),
                                AttemptResult::EmailNotVerified,
                            )
                            .await?;
                            return Err(e);
                        }
                        tracing::info!(user = %user.uid, provider = %method, "social identity linked by verified email");
                        (user, attempt)
                    }
                    None => {
                        if !identity.email_verified || identity.email.is_none() {
                            return Err(PROVIDER_EMAIL_UNVERIFIED);
                        }
                        let attempt = self.reserve_attempt(&identifier, None, &client).await?;
                        match self.create_account(&method, &identity, &client).await {
                            Ok(user) => (user, attempt),
                            Err(e) => {
                                self.finish_attempt(
                                    attempt,
                                    &client,
                                    None,
                                    AttemptResult::EmailNotVerified,
                                )
                                .await?;
                                return Err(e);
                            }
                        }
                    }
                }
            }
        };
        let (user, attempt) = user;
        if pages {
            let outcome = self
                .complete_sign_in(user, client, attempt, &method)
                .await?;
            return Ok(Landing::SignedIn(outcome));
        }
        let code = random_token();
        let attempt = self.written_attempt(attempt, &client).await?;
        self.store
            .create_sso_code(&NewSsoCode {
                code_hash: digest(&code),
                user_db_id: user.db_id,
                method,
                attempt,
                expires_at: self.clock.now() + time::duration(CODE_TTL),
            })
            .await?;
        Ok(Landing::Code(code))
    }

    /// A new account for a verified provider email no account has: no usable password (it
    /// can be set through "forgot password"), a username made from the provider's.
    async fn create_account(
        &self,
        method: &str,
        identity: &ProviderIdentity,
        client: &ClientInfo,
    ) -> Result<User, Error> {
        let ip = protection::ip_key(client);
        self.take_limits(
            "signup",
            &[(ip.as_str(), self.config.limits.signups_per_ip)],
        )
        .await?;
        let email_text = identity.email.clone().unwrap_or_default();
        let email = Email::parse(&email_text).map_err(|why| {
            Error::Validation(vec![FieldError::new(
                "email",
                format!("The provider's email: {why}"),
            )])
        })?;
        let base = username_base(
            identity
                .username_hint
                .as_deref()
                .unwrap_or_else(|| email_text.split('@').next().unwrap_or("user")),
        );
        let name = identity
            .name
            .as_deref()
            .and_then(|n| DisplayName::parse(n).ok())
            .or_else(|| DisplayName::parse(&base).ok())
            .or_else(|| DisplayName::parse("User").ok())
            .ok_or_else(|| anyhow::anyhow!("no display name could be made"))?;
        let now = self.clock.now();
        let mut last = Error::UsernameTaken;
        for attempt in 0..8 {
            let candidate = if attempt == 0 {
                base.clone()
            } else {
                let n =
                    u16::from_le_bytes(random_token().as_bytes()[..2].try_into().unwrap_or([0, 0]));
                format!("{}{:04}", &base[..base.len().min(14)], n % 10_000)
            };
            let Ok(username) = Username::parse(&candidate) else {
                continue;
            };
            let user = NewUser {
                uid: UserUid::new(uuid::Uuid::new_v4().to_string()),
                username,
                name: name.clone(),
                email: email.clone(),
                phone: None,
                password_hash: format!("{NO_PASSWORD_PREFIX}{method}"),
                role: Role::User,
                now,
            };
            let identity = NewIdentity {
                provider: method.to_owned(),
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                now,
            };
            match self.store.create_social_user(&user, true, &identity).await {
                Ok(user) => {
                    tracing::info!(user = %user.uid, provider = method, "account created by social sign-in");
                    return Ok(user);
                }
                Err(crate::store::StoreError::UsernameTaken) => last = Error::UsernameTaken,
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    /// `POST /api/auth/sso/exchange`: the callback's one-time code for the sign-in answer.
    pub async fn exchange(
        &self,
        code: &str,
        client: ClientInfo,
    ) -> Result<super::mfa::SignIn, Error> {
        let code = code.trim();
        if code.is_empty() {
            return Err(Error::Validation(vec![FieldError::new(
                "code",
                "Code is required.",
            )]));
        }
        let found = self.store.take_sso_code(&digest(code)).await?;
        let Some(found) = found.filter(|c| c.expires_at > self.clock.now()) else {
            return Err(Error::InvalidToken);
        };
        let user = self
            .store
            .credentials_by_id(found.user_db_id)
            .await?
            .map(|c| c.user);
        let attempt = Attempt::Reserved(found.attempt);
        let Some(user) = user.filter(|u| u.active) else {
            self.finish_attempt(attempt, &client, None, AttemptResult::Failed)
                .await?;
            return Err(ACCOUNT_DISABLED);
        };
        self.complete_sign_in(user, client, attempt, &found.method)
            .await
    }

    pub async fn identities(&self, principal: &Principal) -> Result<Vec<Identity>, Error> {
        Ok(self.store.list_identities(principal.user.db_id).await?)
    }

    /// Unlinks the provider's identity, unless it is the account's last way in.
    pub async fn unlink(&self, principal: &Principal, slug: &str) -> Result<(), Error> {
        principal.session_id()?;
        let method = match slug {
            "github" | "google" => slug.to_owned(),
            name => format!("oidc:{name}"),
        };
        match self
            .store
            .unlink_identity(principal.user.db_id, &method)
            .await?
        {
            Unlink::Unlinked => {
                tracing::info!(user = %principal.user.uid, provider = %method, "social identity unlinked");
                Ok(())
            }
            Unlink::NotLinked => Err(Error::NotFound("identity")),
            Unlink::LastWayIn => Err(Error::SsoConflict {
                code: "last_sign_in_method",
                message: "This is the account's only way to sign in: set a password (through \"forgot password\") or link another provider first.",
            }),
        }
    }
}

/// A username base from the provider's login or the email's local part: the allowed
/// characters only, 6 to 18 of them.
fn username_base(hint: &str) -> String {
    let mut base: String = hint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(18)
        .collect();
    if base.is_empty() {
        base.push_str("user");
    }
    while base.len() < 6 {
        base.push('0');
    }
    base
}

/// The store's `IdentityTaken`, as the error the use-case answers.
struct StoreErrorIdentityTaken;

impl From<StoreErrorIdentityTaken> for Error {
    fn from(_: StoreErrorIdentityTaken) -> Self {
        crate::store::StoreError::IdentityTaken.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_made_from_hints_are_valid() {
        for hint in [
            "octocat",
            "a",
            "",
            "ünïcødé",
            "very.long.github-login_name_indeed",
        ] {
            let base = username_base(hint);
            assert!(Username::parse(&base).is_ok(), "{hint:?} → {base:?}");
        }
    }

    #[test]
    fn derived_verifiers_are_valid_pkce_and_differ_per_flow() {
        let v = pkce_verifier("secret", "state");
        assert_eq!(v.len(), 43);
        assert_ne!(v, pkce_verifier("secret", "other"));
        assert_ne!(v, nonce("secret", "state"));
    }
}
