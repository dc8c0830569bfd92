//! CSRF tokens of the pages: a signed double-submit cookie (`auth.csrf`) whose value every
//! form repeats in a hidden `csrf` field.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::tokens::random_token;

pub const CSRF_COOKIE: &str = "auth.csrf";

/// Signs token nonces: a value planted by someone who does not hold the key (a cookie set
/// from a sibling subdomain) is not a token.
pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// Derived from the signing key, so every instance of the service accepts the others' tokens.
    pub fn derive(signing_secret: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"authflow page csrf key\0");
        hasher.update(signing_secret.as_bytes());
        Self(hasher.finalize().into())
    }

    fn sign(&self, nonce: &str) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(nonce.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A new token: `<nonce>.<signature>`.
    pub fn issue(&self) -> String {
        let nonce = random_token();
        let signature = self.sign(&nonce);
        format!("{nonce}.{signature}")
    }

    /// Whether `value` is a token this key signed.
    pub fn is_genuine(&self, value: &str) -> bool {
        let Some((nonce, signature)) = value.split_once('.') else {
            return false;
        };
        !nonce.is_empty() && bool::from(self.sign(nonce).as_bytes().ct_eq(signature.as_bytes()))
    }

    /// The form's token matches the cookie's, and the cookie's is genuine.
    pub fn accepts(&self, cookie: Option<&str>, field: Option<&str>) -> bool {
        match (cookie, field) {
            (Some(cookie), Some(field)) => {
                self.is_genuine(cookie) && bool::from(cookie.as_bytes().ct_eq(field.as_bytes()))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matching_genuine_tokens_are_accepted() {
        let key = CsrfKey::derive("a signing key of some length 0123456789");
        let token = key.issue();
        assert!(key.accepts(Some(&token), Some(&token)));
        assert!(!key.accepts(Some(&token), None));
        assert!(!key.accepts(None, Some(&token)));
        let other = key.issue();
        assert!(!key.accepts(Some(&token), Some(&other)));
        let forged = format!("{}.{}", "x".repeat(43), "y".repeat(43));
        assert!(!key.accepts(Some(&forged), Some(&forged)));
        let foreign = CsrfKey::derive("another key entirely 0123456789abcdef").issue();
        assert!(!key.accepts(Some(&foreign), Some(&foreign)));
    }
}
