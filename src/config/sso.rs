//! Social sign-in providers (SPEC §11): GitHub, Google and any number of generic OpenID
//! Connect providers, each on when its client id and secret are set.

use crate::vars::{ConfigError, Secret, Vars};

/// GitHub: OAuth 2.0 at `GITHUB_URL`, the REST API at `GITHUB_API_URL`.
#[derive(Debug, Clone)]
pub struct GithubProvider {
    pub client_id: String,
    pub client_secret: Secret,
    /// `GITHUB_URL`: `{url}/login/oauth/authorize` and `{url}/login/oauth/access_token`.
    pub url: String,
    /// `GITHUB_API_URL`: `/user` and `/user/emails`.
    pub api_url: String,
}

/// An OpenID Connect provider found by discovery at its issuer.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    /// In URLs (`/api/auth/sso/{slug}`): `google`, or the name in `OIDC_PROVIDERS`.
    pub slug: String,
    /// The sign-in method recorded and shown: `google` or `oidc:<name>`.
    pub method: String,
    /// For people: "Google", or the name as configured.
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Requested besides `openid`.
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SsoProviders {
    pub github: Option<GithubProvider>,
    pub google: Option<OidcProvider>,
    pub oidc: Vec<OidcProvider>,
}

impl SsoProviders {
    pub fn is_empty(&self) -> bool {
        self.github.is_none() && self.google.is_none() && self.oidc.is_empty()
    }

    /// Reads `GITHUB_*`, `GOOGLE_*`, `OIDC_PROVIDERS` and each `OIDC_<NAME>_*`.
    pub fn from_vars(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let github = match pair(vars, "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")? {
            Some((client_id, client_secret)) => Some(GithubProvider {
                client_id,
                client_secret,
                url: vars
                    .url("GITHUB_URL")?
                    .unwrap_or_else(|| "https://github.com".to_owned()),
                api_url: vars
                    .url("GITHUB_API_URL")?
                    .unwrap_or_else(|| "https://api.github.com".to_owned()),
            }),
            None => None,
        };
        let google = match pair(vars, "GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET")? {
            Some((client_id, client_secret)) => Some(OidcProvider {
                slug: "google".to_owned(),
                method: "google".to_owned(),
                display_name: "Google".to_owned(),
                issuer: vars
                    .url("GOOGLE_ISSUER")?
                    .unwrap_or_else(|| "https://accounts.google.com".to_owned()),
                client_id,
                client_secret,
                scopes: vec!["email".to_owned(), "profile".to_owned()],
            }),
            None => None,
        };
        let names = vars.list("OIDC_PROVIDERS", "", |name| {
            let name = name.to_ascii_lowercase();
            let well_formed = name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.starts_with(|c: char| c.is_ascii_lowercase());
            if !well_formed {
                Err(format!(
                    "{name:?}: a provider name is 1-32 of a-z, 0-9 and '-', starting with a letter"
                ))
            } else if matches!(name.as_str(), "github" | "google") {
                Err(format!("{name:?} is configured by its own variables"))
            } else {
                Ok(name)
            }
        })?;
        let mut oidc = Vec::new();
        for name in names {
            if oidc.iter().any(|p: &OidcProvider| p.slug == name) {
                return Err(ConfigError::new(
                    "OIDC_PROVIDERS",
                    format!("{name:?} is named twice"),
                ));
            }
            let prefix = format!("OIDC_{}_", name.to_ascii_uppercase().replace('-', "_"));
            let get = |suffix: &str| vars.text(&format!("{prefix}{suffix}"));
            let issuer = get("ISSUER").ok_or_else(|| {
                ConfigError::new("OIDC_PROVIDERS", format!("{prefix}ISSUER must be set"))
            })?;
            if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                return Err(ConfigError::new(
                    "OIDC_PROVIDERS",
                    format!("{prefix}ISSUER must start with http:// or https://"),
                ));
            }
            // Listed but without credentials: off, like GitHub and Google.
            let (Some(client_id), Some(client_secret)) = (get("CLIENT_ID"), get("CLIENT_SECRET"))
            else {
                continue;
            };
            let scopes = get("SCOPES")
                .unwrap_or_else(|| "email profile".to_owned())
                .split([' ', ','])
                .filter(|s| !s.is_empty() && *s != "openid")
                .map(str::to_owned)
                .collect();
            oidc.push(OidcProvider {
                method: format!("oidc:{name}"),
                display_name: name.clone(),
                slug: name,
                // As given: discovery requires the document's `issuer` to be exactly this, and
                // some providers' issuers end with a slash.
                issuer,
                client_id,
                client_secret: Secret::new(client_secret),
                scopes,
            });
        }
        Ok(Self {
            github,
            google,
            oidc,
        })
    }
}

/// A client id and secret: both (the provider is on), neither (off), or one alone (a mistake).
fn pair(
    vars: &Vars<'_>,
    id: &'static str,
    secret: &'static str,
) -> Result<Option<(String, Secret)>, ConfigError> {
    match (vars.text(id), vars.text(secret)) {
        (Some(id), Some(secret)) => Ok(Some((id, Secret::new(secret)))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(secret, format!("must be set with {id}"))),
        (None, Some(_)) => Err(ConfigError::new(id, format!("must be set with {secret}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn providers(pairs: &[(&str, &str)]) -> Result<SsoProviders, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SsoProviders::from_vars(&Vars::new(&map))
    }

    #[test]
    fn providers_are_on_with_id_and_secret() {
        let p = providers(&[]).unwrap();
        assert!(p.is_empty());
        let p = providers(&[
            ("GITHUB_CLIENT_ID", "gh"),
            ("GITHUB_CLIENT_SECRET", "s"),
            ("OIDC_PROVIDERS", "acme, corp-sso"),
            ("OIDC_ACME_ISSUER", "https://id.acme.test/"),
            ("OIDC_ACME_CLIENT_ID", "a"),
            ("OIDC_ACME_CLIENT_SECRET", "b"),
            ("OIDC_ACME_SCOPES", "openid email groups"),
            ("OIDC_CORP_SSO_ISSUER", "https://corp.test"),
        ])
        .unwrap();
        let gh = p.github.unwrap();
        assert_eq!(gh.url, "https://github.com");
        assert_eq!(gh.api_url, "https://api.github.com");
        assert!(p.google.is_none());
        assert_eq!(p.oidc.len(), 1, "corp-sso has no credentials: off");
        assert_eq!(p.oidc[0].method, "oidc:acme");
        assert_eq!(p.oidc[0].issuer, "https://id.acme.test/");
        assert_eq!(p.oidc[0].scopes, ["email", "groups"]);
    }

    #[test]
    fn half_configured_providers_name_the_missing_variable() {
        let e = providers(&[("GOOGLE_CLIENT_ID", "x")]).unwrap_err();
        assert!(e.to_string().contains("GOOGLE_CLIENT_SECRET"), "{e}");
        let e = providers(&[("OIDC_PROVIDERS", "x"), ("OIDC_X_CLIENT_ID", "a")]).unwrap_err();
        assert!(e.to_string().contains("OIDC_X_ISSUER"), "{e}");
        let e = providers(&[("OIDC_PROVIDERS", "github")]).unwrap_err();
        assert!(e.to_string().contains("own variables"), "{e}");
    }
}
