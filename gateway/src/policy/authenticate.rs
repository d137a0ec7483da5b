//! Authentication: per-user bearer keys, stored only as SHA-256 digests, and client certificates
//! (mTLS) for users identified by `tls_subject`.
//!
//! Lookup hashes the presented token and finds the user by digest. The map compares digests only
//! in constant time (`Sha256Digest`'s `PartialEq`), so the lookup does not leak how much of a
//! digest matched (and a digest tells nothing of its key). A second comparison after the lookup,
//! as there once was, repeated the first at about 240 instructions per request.
//!
//! A user with a `tls_subject` and no key is identified by the certificate alone; one with both
//! needs both (the key of a user whose certificate is not presented is refused). A certificate
//! of one user with the key of another is refused: the request would have two identities.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use hyper::{HeaderMap, header::AUTHORIZATION};

use super::{DigestMap, Sha256Digest};
use crate::{
    authz::Grants,
    config::{RateLimit, User},
    tls::ClientCertificate,
};

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    pub name: Arc<str>,
    /// Per-user rate limit, if the config overrides the default.
    pub limit: Option<RateLimit>,
    /// What the caller may use; `None`: everything.
    pub grants: Option<Arc<Grants>>,
    /// Has a key: a certificate alone does not authenticate this caller.
    has_key: bool,
    /// Has a `tls_subject`: a key alone does not authenticate this caller.
    has_subject: bool,
    /// Refused from then on.
    expires_at: Option<SystemTime>,
    disabled: bool,
}

impl Caller {
    /// A caller an access token names (`oauth/`): no key, no certificate, the default limit.
    pub fn from_token(name: Arc<str>, grants: Option<Arc<Grants>>) -> Self {
        Self {
            name,
            limit: None,
            grants,
            has_key: false,
            has_subject: false,
            expires_at: None,
            disabled: false,
        }
    }

    /// What an operator may see of a user: never a key or its digest.
    pub fn view(&self) -> serde_json::Value {
        let expires_at = self.expires_at.map(|at| {
            time::OffsetDateTime::from(at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        serde_json::json!({
            "name": &*self.name,
            "limit": self.limit.map(|limit| serde_json::json!({
                "requests": limit.requests.get(),
                "window_secs": limit.window.as_secs(),
            })),
            "key": self.has_key,
            "tls_subject": self.has_subject,
            "expires_at": expires_at,
            "disabled": self.disabled,
            "in_force": self.check_in_force().is_ok(),
        })
    }

    /// Refuses a disabled or expired user: checked on every request, so a revocation takes
    /// effect on the very next one (the clock is read only for users with an expiry).
    fn check_in_force(&self) -> Result<(), AuthError> {
        if self.disabled {
            return Err(AuthError::Disabled);
        }
        match self.expires_at {
            Some(at) if SystemTime::now() >= at => Err(AuthError::Expired),
            _ => Ok(()),
        }
    }
}

/// How a caller proved who it is, as audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Key,
    Certificate,
    KeyAndCertificate,
    /// An access token of a configured issuer.
    OAuth,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Certificate => "certificate",
            Self::KeyAndCertificate => "key+certificate",
            Self::OAuth => "oauth",
        }
    }
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
    #[error("client certificate required: this key is valid only with its user's certificate")]
    CertificateRequired,
    #[error("the client certificate and the bearer key belong to different users")]
    IdentitiesDiffer,
    #[error("this key has expired")]
    Expired,
    #[error("this key has been disabled")]
    Disabled,
}

/// The users the gateway accepts, found by the digest of their key or by a name in their
/// certificate.
pub struct Authenticator {
    callers: Vec<Caller>,
    by_digest: DigestMap<u32>,
    by_subject: HashMap<Box<str>, u32>,
}

impl Authenticator {
    pub fn new(users: &[User]) -> Self {
        let mut by_digest = DigestMap::default();
        let mut by_subject = HashMap::new();
        let callers = users
            .iter()
            .enumerate()
            .map(|(index, user)| {
                // Fewer users than u32::MAX: configs are read into memory whole.
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                if let Some(digest) = user.key_digest {
                    by_digest.insert(digest, index);
                }
                if let Some(subject) = &user.tls_subject {
                    by_subject.insert(subject.clone(), index);
                }
                Caller {
                    name: user.name.as_str().into(),
                    limit: user.limit,
                    grants: user.grants.clone(),
                    has_key: user.key_digest.is_some(),
                    has_subject: user.tls_subject.is_some(),
                    expires_at: user.expires_at,
                    disabled: user.disabled,
                }
            })
            .collect();
        Self {
            callers,
            by_digest,
            by_subject,
        }
    }

    /// The caller whose key is in the `Authorization: Bearer` header, or whose name is in the
    /// client `certificate`, or both, as the caller's config says. The query string is never
    /// consulted: keys in URLs end up in logs and browser histories.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
    ) -> Result<(&Caller, AuthMethod), AuthError> {
        let by_certificate = certificate
            .and_then(|certificate| certificate.names().find_map(|n| self.by_subject.get(n)))
            .copied();
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return match by_certificate.and_then(|index| self.caller(index)) {
                Some(caller) if !caller.has_key => caller
                    .check_in_force()
                    .map(|()| (caller, AuthMethod::Certificate)),
                _ => Err(AuthError::Missing),
            };
        };
        if values.next().is_some() {
            return Err(AuthError::Malformed);
        }
        let token = bearer_token(value.as_bytes()).ok_or(AuthError::Malformed)?;
        let digest = Sha256Digest::of(token);
        let index = *self.by_digest.get(&digest).ok_or(AuthError::InvalidKey)?;
        let caller = self.caller(index).ok_or(AuthError::InvalidKey)?;
        caller.check_in_force()?;
        match by_certificate {
            Some(certified) if certified != index => Err(AuthError::IdentitiesDiffer),
            Some(_) => Ok((caller, AuthMethod::KeyAndCertificate)),
            None if caller.has_subject => Err(AuthError::CertificateRequired),
            None => Ok((caller, AuthMethod::Key)),
        }
    }

    /// Every user, in configuration order.
    pub fn callers(&self) -> impl Iterator<Item = &Caller> {
        self.callers.iter()
    }

    fn caller(&self, index: u32) -> Option<&Caller> {
        self.callers.get(usize::try_from(index).ok()?)
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive, RFC 9110 §11.1).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
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
                key_digest: Some(Sha256Digest::of(b"alice-key")),
                tls_subject: None,
                limit: None,
                grants: None,
                expires_at: None,
                disabled: false,
            },
            User {
                name: "bob".into(),
                key_digest: Some(Sha256Digest::of(b"bob-key")),
                tls_subject: None,
                limit: None,
                grants: None,
                expires_at: None,
                disabled: false,
            },
            User {
                name: "carol".into(),
                key_digest: None,
                tls_subject: Some("CN=carol-agent".into()),
                limit: None,
                grants: None,
                expires_at: None,
                disabled: false,
            },
            User {
                name: "dave".into(),
                key_digest: Some(Sha256Digest::of(b"dave-key")),
                tls_subject: Some("URI:spiffe://example.org/dave".into()),
                limit: None,
                grants: None,
                expires_at: None,
                disabled: false,
            },
        ])
    }

    /// A real certificate (rcgen) with `common_name` and these subject alternative names: URIs
    /// (with `://`), or DNS names and IP addresses.
    fn certificate(common_name: &str, names: &[&str]) -> ClientCertificate {
        let (uris, names): (Vec<&str>, Vec<&str>) =
            names.iter().partition(|name| name.contains("://"));
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        ClientCertificate::from_der(&der).unwrap()
    }

    fn with_certificate(
        authorization: Option<&str>,
        certificate: &ClientCertificate,
    ) -> Result<(String, AuthMethod), AuthError> {
        let headers = authorization.map_or_else(HeaderMap::new, with_auth);
        authenticator()
            .authenticate(&headers, Some(certificate))
            .map(|(caller, method)| (caller.name.to_string(), method))
    }

    #[test]
    fn a_certificate_names_its_subject_and_alternative_names_as_openssl_prints_them() {
        let certificate = certificate(
            "agent",
            &["agent.example.org", "127.0.0.1", "spiffe://example.org/a"],
        );
        let names: Vec<&str> = certificate.names().collect();
        assert_eq!(
            names,
            [
                "CN=agent",
                "DNS:agent.example.org",
                "URI:spiffe://example.org/a"
            ]
        );
    }

    #[test]
    fn a_certificate_alone_identifies_a_user_without_a_key() {
        let carol = certificate("carol-agent", &[]);
        assert_eq!(
            with_certificate(None, &carol).unwrap(),
            ("carol".into(), AuthMethod::Certificate)
        );
        // Alice's key over carol's certificate: two identities.
        assert_eq!(
            with_certificate(Some("Bearer alice-key"), &carol).unwrap_err(),
            AuthError::IdentitiesDiffer
        );
        // A certificate nobody is configured with changes nothing for keys.
        let stranger = certificate("stranger", &["stranger.example.org"]);
        assert_eq!(
            with_certificate(Some("Bearer alice-key"), &stranger).unwrap(),
            ("alice".into(), AuthMethod::Key)
        );
        assert_eq!(
            with_certificate(None, &stranger).unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn a_user_with_both_needs_both() {
        let dave = certificate("dave", &[]);
        let dave_with_uri = certificate("dave", &["spiffe://example.org/dave"]);
        assert_eq!(
            with_certificate(Some("Bearer dave-key"), &dave_with_uri).unwrap(),
            ("dave".into(), AuthMethod::KeyAndCertificate)
        );
        assert_eq!(
            with_certificate(None, &dave_with_uri).unwrap_err(),
            AuthError::Missing,
            "the certificate without the key"
        );
        assert_eq!(
            with_certificate(Some("Bearer dave-key"), &dave).unwrap_err(),
            AuthError::CertificateRequired,
            "the key without the certificate"
        );
        assert_eq!(
            caller("Bearer dave-key").unwrap_err(),
            AuthError::CertificateRequired
        );
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn caller(value: &str) -> Result<String, AuthError> {
        authenticator()
            .authenticate(&with_auth(value), None)
            .map(|(caller, _)| caller.name.to_string())
    }

    #[test]
    fn each_key_identifies_its_user() {
        assert_eq!(caller("Bearer alice-key").unwrap(), "alice");
        assert_eq!(caller("Bearer bob-key").unwrap(), "bob");
    }

    #[test]
    fn a_disabled_or_expired_user_is_refused_and_one_expiring_later_is_not() {
        let user = |name: &str, expires_at, disabled| User {
            name: name.into(),
            key_digest: Some(Sha256Digest::of(format!("{name}-key").as_bytes())),
            tls_subject: None,
            limit: None,
            grants: None,
            expires_at,
            disabled,
        };
        let now = SystemTime::now();
        let hour = std::time::Duration::from_secs(3600);
        let authenticator = Authenticator::new(&[
            user("gone", Some(now - hour), false),
            user("later", Some(now + hour), false),
            user("off", None, true),
        ]);
        let check = |key: &str| {
            authenticator
                .authenticate(&with_auth(&format!("Bearer {key}")), None)
                .map(|(caller, _)| caller.name.to_string())
        };
        assert_eq!(check("gone-key"), Err(AuthError::Expired));
        assert_eq!(check("later-key").as_deref(), Ok("later"));
        assert_eq!(check("off-key"), Err(AuthError::Disabled));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(caller("bearer alice-key").unwrap(), "alice");
        assert_eq!(caller("BEARER alice-key").unwrap(), "alice");
    }

    #[test]
    fn missing_malformed_and_wrong_keys_are_told_apart() {
        assert_eq!(
            authenticator()
                .authenticate(&HeaderMap::new(), None)
                .unwrap_err(),
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
            authenticator().authenticate(&headers, None).unwrap_err(),
            AuthError::Malformed
        );
    }
}
