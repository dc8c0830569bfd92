//! API keys: `afk_<id>_<secret>`, shown once, stored as a digest, limited to their scopes.

use std::sync::Arc;

use rand::RngCore;
use subtle::ConstantTimeEq;

use super::tokens::{digest, random_token};
use super::{ApiKeys, ClientInfo, Credential, Principal};
use crate::domain::ApiKeyId;
pub use crate::domain::Scope;
use crate::error::{Error, FieldError};
use crate::mail::templates::Email;
use crate::store::{ApiKey, NewApiKey, Role};
use crate::time;

const PREFIX: &str = "afk_";
/// Hex characters of a key's public id.
const ID_LEN: usize = 16;
/// `last_used_at` is written at most this often per key, in the background.
const TOUCH_INTERVAL_SECS: i64 = 60;

/// A key as created: the only moment its full value exists outside the client.
pub struct CreatedKey {
    pub key: ApiKey,
    pub value: String,
}

/// The request to create a key, as received.
pub struct KeyRequest {
    pub name: String,
    pub scopes: Option<Vec<String>>,
    pub expires_in_days: Option<i64>,
    /// The owner's current password: a stolen session alone cannot mint a lasting credential.
    pub password: String,
}

fn split(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    (id.chars().all(|c| c.is_ascii_hexdigit()) && !secret.is_empty()).then_some((id, secret))
}

/// Whether a bearer credential is an API key rather than a JWT.
pub fn is_api_key(value: &str) -> bool {
    value.starts_with(PREFIX)
}

impl ApiKeys<'_> {
    /// Signed in with a session (a key cannot make keys) and the current password again;
    /// `users:*` scopes need an admin. The owner is emailed about the new key.
    pub async fn create(
        &self,
        principal: &Principal,
        request: KeyRequest,
        client: &ClientInfo,
    ) -> Result<CreatedKey, Error> {
        principal.session_id()?;
        let mut errors = Vec::new();
        if request.password.is_empty() {
            errors.push(FieldError::new(
                "password",
                "Your current password is required to create a key.",
            ));
        }
        let name = request.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                "Name must be 1 to 100 printable characters.",
            ));
        }
        let requested = request
            .scopes
            .unwrap_or_else(|| vec![Scope::ProfileRead.as_str().to_owned()]);
        let mut scopes = Vec::new();
        for s in &requested {
            match Scope::parse(s.trim()) {
                Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
                Some(_) => {}
                None => errors.push(FieldError::new(
                    "scopes",
                    format!("Unknown scope {s:?}: use profile:read, users:read or users:write."),
                )),
            }
        }
        if scopes.is_empty() && errors.is_empty() {
            errors.push(FieldError::new("scopes", "At least one scope is required."));
        }
        let days = request.expires_in_days;
        if days.is_some_and(|d| !(1..=3650).contains(&d)) {
            errors.push(FieldError::new(
                "expires_in_days",
                "Must be between 1 and 3650.",
            ));
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        self.verify_current_password(&principal.user, request.password, client)
            .await?;
        let admin_scope = scopes
            .iter()
            .any(|s| matches!(s, Scope::UsersRead | Scope::UsersWrite));
        if admin_scope && principal.user.role != Role::Admin {
            return Err(Error::Forbidden(
                "Only an administrator's key can have users:* scopes.",
            ));
        }

        let mut id = [0u8; ID_LEN / 2];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let secret = random_token();
        let now = self.clock.now();
        let key = NewApiKey {
            id: ApiKeyId::new(id.clone()),
            user_db_id: principal.user.db_id,
            name,
            secret_hash: digest(&secret),
            scopes,
            now,
            expires_at: days.map(|d| now + chrono::Duration::days(d)),
        };
        let expires = key.expires_at.map(time::rfc3339);
        let notice = self.render(
            &principal.user.email,
            &Email::ApiKeyCreated {
                name: &principal.user.name,
                key_name: &key.name,
                key_id: key.id.as_str(),
                expires: expires.as_deref(),
            },
        )?;
        let user = &principal.user;
        let audit = self.audit_event(
            "api_key_created",
            Some(user),
            Some(user),
            client,
            serde_json::json!({"key_id": id, "scopes": Scope::join(&key.scopes)}),
        );
        self.store.create_api_key(&key, &notice, &audit).await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %principal.user.uid, key = %id, "API key created");
        Ok(CreatedKey {
            value: format!("{PREFIX}{id}_{secret}"),
            key: ApiKey {
                id: key.id,
                name: key.name,
                scopes: key.scopes,
                created_at: now,
                expires_at: key.expires_at,
                last_used_at: None,
            },
        })
    }

    pub async fn list(&self, principal: &Principal) -> Result<Vec<ApiKey>, Error> {
        principal.session_id()?;
        Ok(self.store.list_api_keys(principal.user.db_id).await?)
    }

    pub async fn delete(
        &self,
        principal: &Principal,
        id: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        principal.session_id()?;
        let well_formed = id.len() == ID_LEN && id.chars().all(|c| c.is_ascii_hexdigit());
        let user = &principal.user;
        let audit = self.audit_event(
            "api_key_revoked",
            Some(user),
            Some(user),
            client,
            serde_json::json!({"key_id": id}),
        );
        if well_formed
            && self
                .store
                .delete_api_key(user.db_id, &ApiKeyId::new(id), &audit)
                .await?
        {
            tracing::info!(user = %user.uid, key = %id, "API key deleted");
            Ok(())
        } else {
            Err(Error::NotFound("API key"))
        }
    }

    /// One database round trip: the key by its id, with its owner (who must be active); the
    /// secret's digest compared in constant time.
    pub async fn authenticate(&self, value: &str) -> Result<Principal, Error> {
        let (id, secret) = split(value).ok_or(Error::Unauthorized)?;
        let now = self.clock.now();
        let owner = self
            .store
            .api_key_owner(&ApiKeyId::new(id), now)
            .await?
            .ok_or(Error::Unauthorized)?;
        let matches: bool = digest(secret)
            .as_bytes()
            .ct_eq(owner.secret_hash.as_bytes())
            .into();
        if !matches {
            return Err(Error::Unauthorized);
        }
        let stale = owner
            .key
            .last_used_at
            .is_none_or(|at| (now - at).num_seconds() >= TOUCH_INTERVAL_SECS);
        if stale {
            let store = Arc::clone(&self.store);
            let id = owner.key.id.clone();
            self.background.spawn(async move {
                if let Err(e) = store.touch_api_key(&id, now).await {
                    tracing::warn!(error = %e, "could not record API key use");
                }
            });
        }
        Ok(Principal {
            user: owner.user,
            credential: Credential::ApiKey {
                id: owner.key.id,
                scopes: owner.key.scopes,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_into_id_and_secret() {
        let value = format!("afk_0123456789abcdef_{}", random_token());
        let (id, secret) = split(&value).unwrap();
        assert_eq!(id, "0123456789abcdef");
        assert_eq!(secret.len(), 43);
        for bad in [
            "afk_",
            "afk_0123456789abcdef",
            "afk_0123456789abcdef_",
            "afk_xyz_secret",
            "token",
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scopes_round_trip() {
        for s in [Scope::ProfileRead, Scope::UsersRead, Scope::UsersWrite] {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            Scope::parse_list("users:read profile:read nonsense"),
            vec![Scope::UsersRead, Scope::ProfileRead]
        );
    }
}
