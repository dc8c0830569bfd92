//! Social sign-in on the pages (SPEC §10, §11): the buttons of `/signin` and `/signup`, the
//! linked methods of `/account`, and linking or unlinking from there.
//!
//! A button is a plain link to `GET /api/auth/sso/{provider}` without `redirect_to`: the
//! pages' own flow, which ends on `/account` signed in by cookie (or on `/signin?error=…`).
//! Linking is a form with the current password (`POST /account/identities/link`): a session
//! alone cannot add a lasting way in. Its answer is a page with a "Continue to <provider>"
//! link, not a redirect: the pages' `form-action 'self'` policy would block a form's redirect
//! to the provider's origin.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::{see_other, PageForm, Visit};
use crate::auth::sso::{ProviderInfo, FLOW_TTL};
use crate::error::Error;
use crate::http::extract::Client;
use crate::http::sso::flow_cookie;
use crate::http::AppState;

/// A provider's button.
#[derive(Debug, Clone)]
pub struct SsoButton {
    pub slug: String,
    pub name: String,
}

impl From<ProviderInfo> for SsoButton {
    fn from(p: ProviderInfo) -> Self {
        Self {
            slug: p.slug,
            name: p.display_name,
        }
    }
}

/// A linked method as the account page lists it.
pub struct IdentityRow {
    /// For the unlink form: `github`, `google`, or the OIDC provider's name.
    pub slug: String,
    pub name: String,
    pub email: String,
    pub linked_at: String,
}

/// What a failed social sign-in's `?error=` code means, in words (never text from the URL).
pub fn error_message(code: &str) -> String {
    match code {
        "provider_email_unverified" => "The provider does not say your email address is verified, so it cannot sign you in. Verify it with the provider, or use a password.",
        "sign_in_with_password_first" => "An account with this email exists but its email is not verified. Sign in with your password first, then link this provider from your account page.",
        "account_disabled" => "This account is deactivated.",
        "identity_taken" => "That provider account is already linked to another account.",
        "provider_denied" => "The sign-in was cancelled at the provider.",
        "too_many_requests" => "Too many sign-in attempts; try again later.",
        "invalid_state" => "The sign-in link expired or was already used; start again.",
        "invalid_credentials" => "That is not your current password; the provider was not linked.",
        "validation_failed" => "Type your current password to link a sign-in method.",
        "email_not_verified" => "Verify your email address before linking a sign-in method.",
        "password_not_set" => "Linking a sign-in method needs your password, and this account has none yet: set one with \"Forgot password\" first.",
        "link_session_ended" => "The session that started the link was signed out meanwhile; start the link again.",
        "last_sign_in_method" => "That is your only way to sign in: set a password (with \"Forgot password\") or link another provider first.",
        _ => "The sign-in with the provider did not complete; try again.",
    }
    .to_owned()
}

/// The account page's section: linked methods, and the providers not linked yet.
pub struct SsoSection {
    pub identities: Vec<IdentityRow>,
    pub linkable: Vec<SsoButton>,
}

pub async fn section(
    state: &AppState,
    principal: &crate::auth::Principal,
) -> Result<SsoSection, Error> {
    let providers = state.auth.sso().providers();
    let identities = identity_rows(state, principal, &providers).await?;
    let linkable = providers
        .into_iter()
        .filter(|p| !identities.iter().any(|i| i.slug == p.slug))
        .map(SsoButton::from)
        .collect();
    Ok(SsoSection {
        identities,
        linkable,
    })
}

async fn identity_rows(
    state: &AppState,
    principal: &crate::auth::Principal,
    providers: &[ProviderInfo],
) -> Result<Vec<IdentityRow>, Error> {
    Ok(state
        .auth
        .sso()
        .identities(principal)
        .await?
        .into_iter()
        .map(|i| {
            let slug = i
                .provider
                .strip_prefix("oidc:")
                .unwrap_or(&i.provider)
                .to_owned();
            let name = providers
                .iter()
                .find(|p| p.slug == slug)
                .map_or_else(|| slug.clone(), |p| p.display_name.clone());
            IdentityRow {
                slug,
                name,
                email: i.email.unwrap_or_default(),
                linked_at: i.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            }
        })
        .collect())
}

/// `POST /account/identities/link` (`provider`, `password`): checks the password, starts the
/// flow (its cookie) and answers a page whose link leads to the provider.
pub async fn link(
    State(state): State<AppState>,
    visit: Visit,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = visit.principal.clone() else {
        return Visit::sign_in_first("/account");
    };
    let sso = state.auth.sso();
    let slug = form.get("provider");
    let Some(provider) = sso.providers().into_iter().find(|p| p.slug == slug) else {
        return see_other("/account?sso_error=not_found");
    };
    let started = sso
        .start_link(&principal, slug, form.take("password"), None, &client)
        .await;
    match started {
        Ok(flow) => {
            let title = format!("Continue to {}", provider.display_name);
            let text = format!("Continue to {}", provider.display_name);
            let mut response = visit.message(
                StatusCode::OK,
                &title,
                &[&format!(
                    "Your password is confirmed. Sign in at {} to link it to this account; the link is valid for 10 minutes, in this browser only.",
                    provider.display_name
                )],
                Some((&flow.authorize_url, &text)),
            );
            response.headers_mut().append(
                header::SET_COOKIE,
                flow_cookie(&state, &flow.browser_secret, FLOW_TTL.as_secs()),
            );
            response
        }
        Err(e @ (Error::Internal(_) | Error::Unavailable(_))) => visit.error(e),
        Err(e) => see_other(&format!("/account?sso_error={}", e.parts().code)),
    }
}

/// `POST /account/identities/unlink` (`provider`): unlinks, unless it is the last way in.
pub async fn unlink(State(state): State<AppState>, visit: Visit, form: PageForm) -> Response {
    let Some(principal) = visit.principal.clone() else {
        return Visit::sign_in_first("/account");
    };
    match state
        .auth
        .sso()
        .unlink(&principal, form.get("provider"))
        .await
    {
        Ok(()) => see_other("/account?unlinked=1"),
        Err(Error::SsoConflict { .. }) => see_other("/account?sso_error=last_sign_in_method"),
        Err(e) => see_other(&format!("/account?sso_error={}", e.parts().code)),
    }
}
