//! Authentication: per-user bearer keys, stored only as SHA-256 digests.
//!
//! Lookup hashes the presented token and finds the user by digest. The map compares digests only
//! in constant time (`Sha256Digest`'s `PartialEq`), so the lookup does not leak how much of a
//! digest matched (and a digest tells nothing of its key). A second comparison after the lookup,
//! as there once was, repeated the first at about 240 instructions per request.

use std::sync::Arc;

use hyper::{HeaderMap, header::AUTHORIZATION};

use super::{DigestMap, Sha256Digest};
use crate::{
    authz::Grants,
    config::{RateLimit, User},
};

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    pub name: Arc<str>,
    /// Per-user rate limit, if the config overrides the default.
    pub limit: Option<RateLimit>,
    /// What the caller may use; `None`: everything.
    pub grants: Option<Arc<Grants>>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send your key as `Authorization: Bearer <key>`")]
    Missing,
    #[error("malformed Authorization header: expected `Authorization: Bearer <key>`")]
    Malformed,
    #[error("invalid key: the bearer key is not known to this gateway")]
    InvalidKey,
}

/// The users the gateway accepts, keyed by the digest of their key.
pub struct Authenticator {
    by_digest: DigestMap<Caller>,
}

impl Authenticator {
    pub fn new(users: &[User]) -> Self {
        let by_digest = users
            .iter()
            .map(|user| {
                let caller = Caller {
                    name: user.name.as_str().into(),
                    limit: user.limit,
                    grants: user.grants.clone(),
                };
                (user.key_digest, caller)
            })
            .collect();
        Self { by_digest }
    }

    /// The caller whose key is in the `Authorization: Bearer` header. The query string is never
    /// consulted: keys in URLs end up in logs and browser histories.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&Caller, AuthError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Malformed);
        }
        let token = bearer_token(value.as_bytes()).ok_or(AuthError::Malformed)?;
        let digest = Sha256Digest::of(token);
        self.by_digest.get(&digest).ok_or(AuthError::InvalidKey)
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    // token68 characters only; anything else (spaces, a second credential) is malformed.
    let valid = !token.is_empty()
        && token
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b));
    valid.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn authenticator() -> Authenticator {
        Authenticator::new(&[
            User {
                name: "alice".into(),
                key_digest: Sha256Digest::of(b"alice-key"),
                limit: None,
                grants: None,
            },
            User {
                name: "bob".into(),
                key_digest: Sha256Digest::of(b"bob-key"),
                limit: None,
                grants: None,
            },
        ])
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn caller(value: &str) -> Result<String, AuthError> {
        authenticator()
            .authenticate(&with_auth(value))
            .map(|caller| caller.name.to_string())
    }

    #[test]
    fn each_key_identifies_its_user() {
        assert_eq!(caller("Bearer alice-key").unwrap(), "alice");
        assert_eq!(caller("Bearer bob-key").unwrap(), "bob");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(caller("bearer alice-key").unwrap(), "alice");
        assert_eq!(caller("BEARER alice-key").unwrap(), "alice");
    }

    #[test]
    fn missing_malformed_and_wrong_keys_are_told_apart() {
        assert_eq!(
            authenticator().authenticate(&HeaderMap::new()).unwrap_err(),
            AuthError::Missing
        );
        for malformed in [
            "Basic YWxpY2U6eA==",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Beareralice-key",
            "Token alice-key",
        ] {
            assert_eq!(
                caller(malformed).unwrap_err(),
                AuthError::Malformed,
                "{malformed}"
            );
        }
        assert_eq!(
            caller("Bearer alice-kez").unwrap_err(),
            AuthError::InvalidKey
        );
        assert_eq!(
            caller("Bearer alice-key-and-more").unwrap_err(),
            AuthError::InvalidKey
        );
    }

    #[test]
    fn two_authorization_headers_are_malformed() {
        let mut headers = with_auth("Bearer alice-key");
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer bob-key"));
        assert_eq!(
            authenticator().authenticate(&headers).unwrap_err(),
            AuthError::Malformed
        );
    }
}
