//! An issuer's signing keys (its JWKS), kept in memory and refreshed.
//!
//! Keys come from the issuer's metadata (`jwks_uri` of its OIDC discovery or RFC 8414 document),
//! from a configured `jwks_uri`, or from a local JWKS file. They are refreshed in the background
//! as the IdP's `Cache-Control` allows (between one minute and a day), and at once when a token
//! names a `kid` not seen yet (the IdP rotated), at most once per [`MIN_REFRESH_INTERVAL`], so a
//! flood of tokens with made-up `kid`s costs one fetch, not one per token. When the IdP cannot be
//! reached the keys already known keep working; [`KeySet::status`] says so for `/readyz` and the
//! metrics.
//!
//! A [`KeySet`] outlives a reload that keeps its source ([`KeySets`]): a reload does not refetch,
//! and requests never wait for keys they already had.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

use super::fetch::{FetchError, IdpClient};
use crate::lock;

/// Unknown `kid`s refresh the keys at most this often.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Background refreshes: at least this far apart, whatever the IdP's cache headers say...
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
/// ...and at most this far apart.
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Without cache headers.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// After a failed refresh, the next background attempt.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// More keys than any IdP publishes; a larger set is refused whole.
const MAX_KEYS: usize = 64;

pub use crate::config::KeySource;

impl KeySource {
    pub fn describe(&self) -> String {
        match self {
            Self::Discovered { issuer } => format!("discovered from {issuer}"),
            Self::Uri(uri) => uri.clone(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// One signing key.
pub struct SigningKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The `alg` the JWK is restricted to, if it names one.
    pub alg: Option<Algorithm>,
}

/// What `/readyz` and the metrics report of a key set.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub source: String,
    pub keys: usize,
    /// When keys were last fetched successfully.
    pub refreshed_at: Option<SystemTime>,
    /// The last refresh failed: why (keys known before keep working).
    pub error: Option<String>,
}

struct State {
    last_attempt: Option<Instant>,
    refreshed_at: Option<SystemTime>,
    error: Option<String>,
    /// When the background should refresh next.
    next_refresh: Instant,
}

/// The keys of one source.
pub struct KeySet {
    source: KeySource,
    client: IdpClient,
    keys: RwLock<Arc<Vec<SigningKey>>>,
    state: Mutex<State>,
    /// One refresh at a time: concurrent requests with a new `kid` wait for the same one.
    refreshing: tokio::sync::Mutex<()>,
}

/// Why no key verifies a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("the token's signing key (kid {0:?}) is not among the issuer's keys")]
    UnknownKid(Option<String>),
    #[error("the issuer's keys cannot be fetched: {0}")]
    Unavailable(String),
}

impl KeySet {
    fn new(source: KeySource, client: IdpClient) -> Self {
        Self {
            source,
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            state: Mutex::new(State {
                last_attempt: None,
                refreshed_at: None,
                error: None,
                next_refresh: Instant::now(),
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys a token with `kid` may be signed with: the one with that `kid`, or, for a token
    /// without one, every key. A `kid` not known refreshes the keys first (rate-limited).
    pub async fn candidates(&self, kid: Option<&str>) -> Result<Arc<Vec<SigningKey>>, KeyError> {
        let keys = self.current();
        if has_key(&keys, kid) {
            return Ok(keys);
        }
        {
            // A refresh under way (the first one at start, say) is waited for, not refused.
            let _one = self.refreshing.lock().await;
            let keys = self.current();
            if has_key(&keys, kid) {
                return Ok(keys);
            }
            let attempted = lock(&self.state).last_attempt;
            if attempted.is_none_or(|at| at.elapsed() >= MIN_REFRESH_INTERVAL) {
                self.fetch_and_store().await;
            }
        }
        let keys = self.current();
        if has_key(&keys, kid) {
            Ok(keys)
        } else {
            Err(self.missing(kid))
        }
    }

    fn missing(&self, kid: Option<&str>) -> KeyError {
        match (&lock(&self.state).error, self.current().is_empty()) {
            (Some(error), true) => KeyError::Unavailable(error.clone()),
            _ => KeyError::UnknownKid(kid.map(str::to_owned)),
        }
    }

    pub fn current(&self) -> Arc<Vec<SigningKey>> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub fn status(&self) -> KeyStatus {
        let state = lock(&self.state);
        KeyStatus {
            source: self.source.describe(),
            keys: self.current().len(),
            refreshed_at: state.refreshed_at,
            error: state.error.clone(),
        }
    }

    /// Fetches the keys now (after any refresh under way); on failure the known ones stay.
    pub async fn refresh(&self) {
        let _one = self.refreshing.lock().await;
        self.fetch_and_store().await;
    }

    /// [`Self::refresh`], with `refreshing` held.
    async fn fetch_and_store(&self) {
        lock(&self.state).last_attempt = Some(Instant::now());
        let fetched = self.fetch().await;
        let mut state = lock(&self.state);
        match fetched {
            Ok((keys, max_age)) => {
                let max_age = max_age
                    .unwrap_or(DEFAULT_MAX_AGE)
                    .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
                tracing::info!(source = %self.source.describe(), keys = keys.len(), "signing keys loaded");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
                state.refreshed_at = Some(SystemTime::now());
                state.error = None;
                state.next_refresh = Instant::now() + max_age;
            }
            Err(error) => {
                tracing::warn!(source = %self.source.describe(), %error, "signing keys could not be refreshed; the known ones stay in use");
                state.error = Some(error);
                state.next_refresh = Instant::now() + RETRY_AFTER_FAILURE;
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<SigningKey>, Option<Duration>), String> {
        let (body, max_age) = match &self.source {
            KeySource::File(path) => {
                let body = tokio::fs::read(path)
                    .await
                    .map_err(|err| format!("{}: {err}", path.display()))?;
                (body.into(), None)
            }
            KeySource::Uri(uri) => {
                let fetched = self.client.get(uri).await.map_err(|e| e.to_string())?;
                (fetched.body, fetched.max_age)
            }
            KeySource::Discovered { issuer } => {
                let jwks_uri = discover(&self.client, issuer).await?.jwks_uri;
                let fetched = self
                    .client
                    .get(&jwks_uri)
                    .await
                    .map_err(|e| e.to_string())?;
                (fetched.body, fetched.max_age)
            }
        };
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|err| format!("not a JWKS: {err}"))?;
        Ok((signing_keys(&set)?, max_age))
    }

    /// Refreshes in the background until the set is dropped.
    async fn refresh_periodically(set: Weak<Self>) {
        loop {
            let wait = match set.upgrade() {
                Some(set) => {
                    let due = lock(&set.state).next_refresh;
                    if due <= Instant::now() {
                        set.refresh().await;
                        continue;
                    }
                    due - Instant::now()
                }
                None => return,
            };
            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
        }
    }
}

fn has_key(keys: &[SigningKey], kid: Option<&str>) -> bool {
    match kid {
        Some(kid) => keys.iter().any(|key| key.kid.as_deref() == Some(kid)),
        None => !keys.is_empty(),
    }
}

/// The keys of `set` that sign: `use` absent or `sig`, of a type the gateway verifies. Keys it
/// cannot use (encryption keys, symmetric keys) are left out; a set with none is an error.
fn signing_keys(set: &JwkSet) -> Result<Vec<SigningKey>, String> {
    if set.keys.len() > MAX_KEYS {
        return Err(format!("{} keys: more than {MAX_KEYS}", set.keys.len()));
    }
    let keys: Vec<SigningKey> = set
        .keys
        .iter()
        .filter(|jwk| {
            matches!(
                jwk.common.public_key_use,
                None | Some(PublicKeyUse::Signature)
            )
        })
        .filter(|jwk| {
            !matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            )
        })
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let alg = match jwk.common.key_algorithm {
                Some(alg) => Some(algorithm(alg)?),
                None => None,
            };
            Some(SigningKey {
                kid: jwk.common.key_id.clone(),
                key,
                alg,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("no signing key the gateway can use (RSA, EC or OKP with use \"sig\")".into());
    }
    Ok(keys)
}

/// The signing algorithm a JWK names; `None` for encryption algorithms.
fn algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// What the gateway reads of an issuer's metadata.
#[derive(Debug, Deserialize)]
pub struct IssuerMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
}

/// The issuer's metadata: OIDC discovery, then RFC 8414. Its `issuer` must be exactly the one
/// configured (OIDC Discovery §4.3, RFC 8414 §3.3): metadata of another issuer is refused.
pub async fn discover(client: &IdpClient, issuer: &str) -> Result<IssuerMetadata, String> {
    let trimmed = issuer.trim_end_matches('/');
    let (origin, path) = split_origin(trimmed);
    let candidates = [
        format!("{trimmed}/.well-known/openid-configuration"),
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
    ];
    let mut errors = Vec::new();
    for url in &candidates {
        match client.get(url).await {
            Ok(fetched) => {
                let metadata: IssuerMetadata = serde_json::from_slice(&fetched.body)
                    .map_err(|err| format!("{url}: not issuer metadata with a jwks_uri: {err}"))?;
                if metadata.issuer != issuer {
                    return Err(format!(
                        "{url} names issuer {:?}, not {issuer:?}",
                        metadata.issuer
                    ));
                }
                return Ok(metadata);
            }
            Err(FetchError::Status { .. }) | Err(FetchError::Failed { .. })
                if errors.is_empty() =>
            {
                errors.push(url.clone());
            }
            Err(err) => return Err(err.to_string()),
        }
    }
    Err(format!("no issuer metadata at {}", candidates.join(" or ")))
}

/// `https://host/realms/x` -> (`https://host`, `/realms/x`).
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(at) => url.split_at(after_scheme + at),
        None => (url, ""),
    }
}

/// The key sets in use, by source: a reload that keeps an issuer keeps its keys.
#[derive(Default, Clone)]
pub struct KeySets {
    sets: Arc<Mutex<HashMap<KeySource, Weak<KeySet>>>>,
}

impl KeySets {
    /// The key set of `source`, made (and its background refresh started) if none is in use.
    /// Outside a runtime (config checks), nothing is started: keys load on first use.
    pub fn get(&self, source: &KeySource, client: &IdpClient) -> Arc<KeySet> {
        let mut sets = lock(&self.sets);
        sets.retain(|_, set| set.strong_count() > 0);
        if let Some(set) = sets.get(source).and_then(Weak::upgrade) {
            return set;
        }
        let set = Arc::new(KeySet::new(source.clone(), client.clone()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(KeySet::refresh_periodically(Arc::downgrade(&set)));
        }
        sets.insert(source.clone(), Arc::downgrade(&set));
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_and_path_of_an_issuer_are_split_for_rfc_8414() {
        assert_eq!(
            split_origin("https://idp.example.com/realms/team"),
            ("https://idp.example.com", "/realms/team")
        );
        assert_eq!(
            split_origin("https://idp.example.com"),
            ("https://idp.example.com", "")
        );
    }

    #[test]
    fn only_signing_keys_of_public_key_types_are_kept() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "use": "sig", "kid": "sig", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .unwrap();
        let keys = signing_keys(&set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert_eq!(keys[0].alg, Some(Algorithm::ES256));

        let only_hmac: JwkSet =
            serde_json::from_value(serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
                .unwrap();
        assert!(signing_keys(&only_hmac).is_err());
    }
}
