//! GitHub: OAuth 2.0 (with PKCE) at `GITHUB_URL`, then the REST API at `GITHUB_API_URL` for
//! the account's id, login and its verified primary email.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use super::{provider_error, token_error, ProviderIdentity};
use crate::config::sso::GithubProvider;
use crate::error::Error;

fn client(
    p: &GithubProvider,
    redirect: &str,
) -> Result<
    oauth2::basic::BasicClient<
        oauth2::EndpointSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
    Error,
> {
    let url = |u: String| provider_error(format!("GitHub URL {u:?} is not valid"));
    Ok(BasicClient::new(ClientId::new(p.client_id.clone()))
        .set_client_secret(ClientSecret::new(p.client_secret.expose().to_owned()))
        .set_auth_uri(
            AuthUrl::new(format!("{}/login/oauth/authorize", p.url))
                .map_err(|e| url(e.to_string()))?,
        )
        .set_token_uri(
            TokenUrl::new(format!("{}/login/oauth/access_token", p.url))
                .map_err(|e| url(e.to_string()))?,
        )
        .set_redirect_uri(RedirectUrl::new(redirect.to_owned()).map_err(|e| url(e.to_string()))?))
}

pub(super) fn authorize_url(
    p: &GithubProvider,
    redirect: &str,
    state: &str,
    verifier: &str,
) -> Result<String, Error> {
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.to_owned()));
    let (url, _) = client(p, redirect)?
        .authorize_url(|| CsrfToken::new(state.to_owned()))
        .add_scope(Scope::new("read:user".to_owned()))
        .add_scope(Scope::new("user:email".to_owned()))
        .set_pkce_challenge(challenge)
        .url();
    Ok(url.to_string())
}

#[derive(Deserialize)]
struct GithubUser {
    id: i64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

pub(super) async fn identity(
    p: &GithubProvider,
    http: &reqwest::Client,
    redirect: &str,
    code: &str,
    verifier: &str,
) -> Result<ProviderIdentity, Error> {
    let token = client(p, redirect)?
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
        .request_async(http)
        .await
        .map_err(token_error)?;
    let access = token.access_token().secret();
    let get = |path: &str| {
        http.get(format!("{}{path}", p.api_url))
            .bearer_auth(access)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
    };
    let user: GithubUser = fetch(get("/user")).await?;
    let emails: Vec<GithubEmail> = fetch(get("/user/emails")).await?;
    // Only the primary address counts, and only as verified as GitHub says it is.
    let primary = emails.into_iter().find(|e| e.primary);
    Ok(ProviderIdentity {
        subject: user.id.to_string(),
        email_verified: primary.as_ref().is_some_and(|e| e.verified),
        email: primary.map(|e| e.email.trim().to_lowercase()),
        name: user.name,
        username_hint: Some(user.login),
    })
}

async fn fetch<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, Error> {
    let response = request
        .send()
        .await
        .map_err(|e| provider_error(format!("GitHub API: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(provider_error(format!("GitHub API answered {status}")));
    }
    response
        .json()
        .await
        .map_err(|e| provider_error(format!("GitHub API: unreadable answer: {e}")))
}
