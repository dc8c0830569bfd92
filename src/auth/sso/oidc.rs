//! OpenID Connect (Google and the generic providers): discovery, the authorization code flow
//! with PKCE and a nonce, and the `id_token` checked by `openidconnect` (signature against the
//! provider's JWKS, `iss`, `aud`, `exp`, `nonce`).

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use super::{provider_error, token_error, ProviderIdentity};
use crate::config::sso::OidcProvider;
use crate::error::Error;
use crate::time::Clock;

async fn metadata(p: &OidcProvider, http: &reqwest::Client) -> Result<CoreProviderMetadata, Error> {
    let issuer = IssuerUrl::new(p.issuer.clone())
        .map_err(|e| provider_error(format!("{}: issuer URL: {e}", p.method)))?;
    CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| provider_error(format!("{}: discovery: {e}", p.method)))
}

pub(super) async fn authorize_url(
    p: &OidcProvider,
    http: &reqwest::Client,
    redirect: &str,
    state: &str,
    verifier: &str,
    nonce: &str,
) -> Result<String, Error> {
    let client = CoreClient::from_provider_metadata(
        metadata(p, http).await?,
        ClientId::new(p.client_id.clone()),
        Some(ClientSecret::new(p.client_secret.expose().to_owned())),
    )
    .set_redirect_uri(
        RedirectUrl::new(redirect.to_owned())
            .map_err(|e| provider_error(format!("redirect URL: {e}")))?,
    );
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.to_owned()));
    let state = state.to_owned();
    let nonce = nonce.to_owned();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        )
        .set_pkce_challenge(challenge);
    for scope in &p.scopes {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, _, _) = request.url();
    Ok(url.to_string())
}

pub(super) async fn identity(
    p: &OidcProvider,
    http: &reqwest::Client,
    clock: &Clock,
    redirect: &str,
    code: &str,
    verifier: &str,
    nonce: &str,
) -> Result<ProviderIdentity, Error> {
    let client = CoreClient::from_provider_metadata(
        metadata(p, http).await?,
        ClientId::new(p.client_id.clone()),
        Some(ClientSecret::new(p.client_secret.expose().to_owned())),
    )
    .set_redirect_uri(
        RedirectUrl::new(redirect.to_owned())
            .map_err(|e| provider_error(format!("redirect URL: {e}")))?,
    );
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| provider_error(format!("{}: {e}", p.method)))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
        .request_async(http)
        .await
        .map_err(token_error)?;
    let id_token = token
        .id_token()
        .ok_or_else(|| provider_error(format!("{}: no id_token in the answer", p.method)))?;
    let clock = clock.clone();
    let verifier = client.id_token_verifier().set_time_fn(move || clock.now());
    let claims = id_token
        .claims(&verifier, &Nonce::new(nonce.to_owned()))
        .map_err(|e| provider_error(format!("{}: id_token refused: {e}", p.method)))?;
    Ok(ProviderIdentity {
        subject: claims.subject().as_str().to_owned(),
        email: claims.email().map(|e| e.as_str().trim().to_lowercase()),
        email_verified: claims.email_verified().unwrap_or(false),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
        username_hint: claims.preferred_username().map(|u| u.as_str().to_owned()),
    })
}
