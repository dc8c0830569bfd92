//! Social sign-in on the pages (SPEC §10, §11): the buttons of `/signin` and `/signup`, the
//! linked methods of `/account`, and linking or unlinking from there.
//!
//! A button is a plain link to `GET /api/auth/sso/{provider}` without `redirect_to`: the
//! pages' own flow, which ends on `/account` signed in by cookie (or on `/signin?error=…`).
//! Linking is a link too (`GET /account/identities/{provider}/link?csrf=…`), not a form: a
//! form's redirect to the provider would be blocked by the pages' `form-action` policy.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{see_other, PageForm, Visit};
use crate::auth::sso::{ProviderInfo, FLOW_COOKIE, FLOW_TTL};
use crate::error::Error;
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LinkQuery {
    csrf: String,
}

/// `GET /account/identities/{provider}/link?csrf=…`: to the provider, to link it.
pub async fn link(
    State(state): State<AppState>,
    visit: Visit,
    Path(provider): Path<String>,
    Query(query): Query<LinkQuery>,
) -> Response {
    let Some(principal) = visit.principal.clone() else {
        return Visit::sign_in_first("/account");
    };
    // A cross-site link would carry the (Lax) session cookie: the page's token proves it is ours.
    let genuine: bool =
        subtle::ConstantTimeEq::ct_eq(query.csrf.as_bytes(), visit.csrf.as_bytes()).into();
    if !genuine || query.csrf.is_empty() {
        return see_other("/account?sso_error=invalid_state");
    }
    match state
        .auth
        .sso()
        .start(&provider, None, Some(&principal))
        .await
    {
        Ok(flow) => {
            let secure = if state.config.is_production() {
                "; Secure"
            } else {
                ""
            };
            let cookie = HeaderValue::from_str(&format!(
                "{FLOW_COOKIE}={}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
                flow.browser_secret,
                FLOW_TTL.as_secs()
            ))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
            let location = HeaderValue::from_str(&flow.authorize_url)
                .unwrap_or_else(|_| HeaderValue::from_static("/account"));
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
            )
                .into_response()
        }
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
