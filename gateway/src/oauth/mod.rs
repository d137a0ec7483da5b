//! The gateway as an OAuth 2.1 resource server, as the MCP authorization spec has it: access
//! tokens from the organisation's identity provider, instead of (or beside) static keys.
//!
//! The pieces, in request order: a bearer token is looked up by its digest among the tokens
//! verified before (a bounded LRU, each entry until its `exp`), so a signature is checked once
//! per token and not once per request; a new one is verified (`token.rs`) with its issuer's keys
//! (`keys.rs`, fetched by `fetch.rs`), and becomes a [`Caller`] whose name, groups and scopes come
//! from its claims, so grants, limits, sessions, tasks and audit treat it like any other caller.
//! A request without a valid token gets 401 with the challenge that points clients at the
//! Protected Resource Metadata (RFC 9728) this module also serves; a valid token without a scope
//! the call needs gets 403 `insufficient_scope` naming every scope needed, so clients step up once.
//!
//! The token itself never goes further: it is not logged, not audited (the audit line says
//! `auth = "oauth"` and the issuer), and removed before the request is forwarded.

mod explain;
mod fetch;
mod keys;
mod token;

use std::{
    collections::HashSet,
    num::NonZeroUsize,
    sync::{Arc, Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use hyper::header::HeaderValue;
use lru::LruCache;

pub use explain::explain;
pub use fetch::{IdpClient, form_urlencode, is_loopback};
pub use keys::{KeySet, KeySets, KeyStatus};

use crate::{
    config::{IssuerSettings, OAuthSettings},
    digest::Sha256Digest,
    lock,
    policy::Caller,
};

/// Opaque tokens introspected at once, all issuers together: a flood of made-up tokens costs
/// the IdP and the gateway at most this many round trips at a time.
const MAX_CONCURRENT_INTROSPECTIONS: usize = 16;

/// A verified token's caller.
pub struct TokenCaller {
    pub caller: Caller,
    pub issuer: Arc<str>,
    /// The gateway groups the token's groups and scopes put the caller in.
    pub groups: Vec<Box<str>>,
    scopes: HashSet<Box<str>>,
    /// Unix seconds after which the token is refused (the clock skew added).
    expires_at: u64,
}

impl TokenCaller {
    /// The scopes of `needed` this token lacks.
    pub fn missing_scopes<'s>(&self, needed: &'s [String]) -> Vec<&'s str> {
        needed
            .iter()
            .filter(|scope| !self.scopes.contains(scope.as_str()))
            .map(String::as_str)
            .collect()
    }
}

/// Why a token was refused. The descriptions go to the client (its own token's faults), never
/// the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a well-formed access token")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was not issued for this resource (aud)")]
    Audience,
    #[error("the token's issuer is not accepted here")]
    UnknownIssuer,
    #[error("the token's signature algorithm is not accepted")]
    Algorithm,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token is signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error(
        "the token's caller claim is missing, or not a printable ASCII name of at most 256 bytes"
    )]
    NoCallerClaim,
    #[error("the token is not active")]
    Inactive,
    #[error("this caller's tokens have been revoked")]
    Revoked,
    /// Not the client's fault: the IdP's keys or introspection endpoint cannot be reached.
    #[error("the identity provider cannot be reached to check this token; retry shortly")]
    KeysUnavailable,
}

/// One issuer: its settings, keys and prepared validation.
pub(crate) struct Issuer {
    settings: IssuerSettings,
    keys: Arc<KeySet>,
    /// By algorithm.
    validations: Vec<(jsonwebtoken::Algorithm, jsonwebtoken::Validation)>,
    /// The introspection endpoint of the issuer's metadata, once discovered.
    introspection_endpoint: Mutex<Option<String>>,
}

impl Issuer {
    /// The configured introspection endpoint, or the one of the issuer's metadata.
    async fn introspection_endpoint(&self) -> Option<String> {
        let introspection = self.settings.introspection.as_ref()?;
        if let Some(endpoint) = &introspection.endpoint {
            return Some(endpoint.clone());
        }
        if let Some(known) = lock(&self.introspection_endpoint).clone() {
            return Some(known);
        }
        // Not remembered when discovery fails: the next opaque token tries again.
        let discovered = keys::discover(&self.settings.client, &self.settings.issuer)
            .await
            .map_err(|error| tracing::warn!(%error, "issuer metadata for introspection"))
            .ok()
            .and_then(|metadata| metadata.introspection_endpoint)?;
        *lock(&self.introspection_endpoint) = Some(discovered.clone());
        Some(discovered)
    }
}

/// The resource server of one policy: built by a reload with the policy, keeping the key sets.
pub struct OAuth {
    settings: OAuthSettings,
    issuers: Vec<Issuer>,
    verified: Mutex<LruCache<Sha256Digest, Arc<TokenCaller>>>,
    introspections: tokio::sync::Semaphore,
    metadata: Bytes,
    challenge: HeaderValue,
    revoked: HashSet<String>,
}

impl OAuth {
    pub fn new(settings: OAuthSettings, key_sets: &KeySets) -> Self {
        let skew = settings.section.clock_skew_secs;
        let issuers = settings
            .issuers
            .iter()
            .map(|issuer| Issuer {
                keys: key_sets.get(&issuer.keys, &issuer.client),
                validations: token::validations(issuer, skew),
                settings: issuer.clone(),
                introspection_endpoint: Mutex::new(None),
            })
            .collect();
        let capacity =
            NonZeroUsize::new(settings.section.token_cache_entries).unwrap_or(NonZeroUsize::MIN);
        let metadata = serde_json::to_vec(&protected_resource_metadata(&settings))
            .unwrap_or_default()
            .into();
        let challenge = header_value(&challenge(&settings, None, None));
        Self {
            revoked: settings.section.revoked_callers.iter().cloned().collect(),
            issuers,
            verified: Mutex::new(LruCache::new(capacity)),
            introspections: tokio::sync::Semaphore::new(MAX_CONCURRENT_INTROSPECTIONS),
            metadata,
            challenge,
            settings,
        }
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// Keys and client certificates are accepted besides tokens.
    pub fn keys_alongside(&self) -> bool {
        self.settings.section.keys_alongside
    }

    /// The caller `token` names, verified (or remembered from an earlier verification).
    pub async fn authenticate(&self, token: &[u8]) -> Result<Arc<TokenCaller>, TokenError> {
        let digest = Sha256Digest::of(token);
        let now = unix_now();
        let known = lock(&self.verified)
            .get(&digest)
            .filter(|known| now < known.expires_at)
            .cloned();
        if let Some(known) = known {
            return self.unless_revoked(known);
        }
        let token = std::str::from_utf8(token).map_err(|_| TokenError::Malformed)?;
        let mut verified = if token.bytes().filter(|b| *b == b'.').count() == 2 {
            token::verify_jwt(&self.issuers, &self.settings, token, now).await?
        } else {
            let _turn = self
                .introspections
                .try_acquire()
                .map_err(|_| TokenError::KeysUnavailable)?;
            token::introspect(&self.issuers, &self.settings, token, now).await?
        };
        verified.expires_at = verified
            .expires_at
            .saturating_add(self.settings.section.clock_skew_secs);
        let verified = Arc::new(verified);
        lock(&self.verified).put(digest, Arc::clone(&verified));
        self.unless_revoked(verified)
    }

    fn unless_revoked(&self, verified: Arc<TokenCaller>) -> Result<Arc<TokenCaller>, TokenError> {
        if !self.revoked.is_empty() && self.revoked.contains(&*verified.caller.name) {
            return Err(TokenError::Revoked);
        }
        Ok(verified)
    }

    /// Every scope a call of `tool` needs: the required ones and those of its tool rules.
    pub fn scopes_for(&self, tools: &[(&str, u32)]) -> Vec<String> {
        self.settings
            .scopes_for(tools.iter().map(|(tool, _)| *tool))
    }

    /// `WWW-Authenticate` of a 401: where the metadata is and which scopes to ask for, and the
    /// error when a token was presented.
    pub fn challenge(&self, error: Option<TokenError>) -> HeaderValue {
        match error {
            None => self.challenge.clone(),
            Some(error) => header_value(&challenge(
                &self.settings,
                Some(("invalid_token", &error.to_string())),
                None,
            )),
        }
    }

    /// `WWW-Authenticate` of a 403 `insufficient_scope`: all of `needed`, in one challenge.
    pub fn insufficient_scope(&self, needed: &[String]) -> HeaderValue {
        header_value(&challenge(
            &self.settings,
            Some((
                "insufficient_scope",
                "the token lacks a scope this request needs",
            )),
            Some(&needed.join(" ")),
        ))
    }

    /// The Protected Resource Metadata document, if `path` is one of its URLs: at the root and
    /// path-inserted for the MCP path (RFC 9728 §3.1).
    pub fn metadata_at(&self, path: &str, mcp_path: &str) -> Option<Bytes> {
        const ROOT: &str = "/.well-known/oauth-protected-resource";
        let inserted = path.strip_prefix(ROOT)?;
        (inserted.is_empty() || inserted == mcp_path || path == self.settings.metadata_path)
            .then(|| self.metadata.clone())
    }

    /// The key sets of the issuers, for `/readyz` and the metrics.
    pub fn key_status(&self) -> Vec<(String, KeyStatus)> {
        self.issuers
            .iter()
            .map(|issuer| (issuer.settings.issuer.clone(), issuer.keys.status()))
            .collect()
    }
}

/// RFC 9728 §2.
fn protected_resource_metadata(settings: &OAuthSettings) -> serde_json::Value {
    let section = &settings.section;
    let mut metadata = serde_json::json!({
        "resource": settings.resource,
        "authorization_servers": settings.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
    });
    if !section.scopes_supported.is_empty() {
        metadata["scopes_supported"] = serde_json::json!(section.scopes_supported);
    }
    if let Some(name) = &section.resource_name {
        metadata["resource_name"] = serde_json::json!(name);
    }
    metadata
}

/// `Bearer resource_metadata="…", scope="…"[, error="…", error_description="…"]`.
fn challenge(settings: &OAuthSettings, error: Option<(&str, &str)>, scope: Option<&str>) -> String {
    let mut value = format!("Bearer resource_metadata=\"{}\"", settings.metadata_url);
    let scope = scope
        .map(str::to_owned)
        .unwrap_or_else(|| settings.section.scopes_supported.join(" "));
    if !scope.is_empty() {
        value.push_str(&format!(", scope=\"{scope}\""));
    }
    if let Some((error, description)) = error {
        // Descriptions are the gateway's own words: no quote or backslash to escape.
        value.push_str(&format!(
            ", error=\"{error}\", error_description=\"{description}\""
        ));
    }
    value
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A request's verified token, held for as long as the request runs (its caller is borrowed
/// from it).
pub type Minted = OnceLock<Arc<TokenCaller>>;

#[cfg(test)]
mod tests;
