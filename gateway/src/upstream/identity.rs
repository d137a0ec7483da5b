//! A short-lived assertion of who is calling, signed by the gateway, for upstreams that must bind
//! sessions, tasks and state to the user (as the MCP spec asks of servers) but see only the
//! gateway's connection. The caller header says the same in clear; this says it verifiably: a
//! JWT with `sub`, `groups`, `aud` = the upstream and a minute's lifetime, signed with a key
//! whose public half the gateway publishes as a JWKS (`/.well-known/jwks.json`). Anyone who
//! merely reaches the upstream's port cannot make one. The caller's own token never goes
//! upstream (MCP: no token passthrough).
//!
//! Signing costs some microseconds, so an assertion is reused for half its lifetime per caller
//! (a bounded LRU), and a request pays a lookup.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use lru::LruCache;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::lock;

/// Callers whose assertion is kept.
const CACHED_CALLERS: usize = 10_000;

enum SigningKey {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

/// Signs identity assertions; compared by key and settings, so a reload that changes neither
/// keeps it (and its cache).
pub struct IdentitySigner {
    key: SigningKey,
    pub header: HeaderName,
    issuer: String,
    audience: String,
    lifetime: Duration,
    kid: String,
    jwks: Bytes,
    cache: Mutex<LruCache<Arc<str>, (Instant, HeaderValue)>>,
}

impl PartialEq for IdentitySigner {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.kid,
            &self.header,
            &self.issuer,
            &self.audience,
            self.lifetime,
        ) == (
            &other.kid,
            &other.header,
            &other.issuer,
            &other.audience,
            other.lifetime,
        )
    }
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// From a PKCS#8 DER key (Ed25519 or ECDSA P-256).
    pub fn new(
        pkcs8: &[u8],
        header: HeaderName,
        issuer: String,
        audience: String,
        lifetime: Duration,
    ) -> Result<Self, String> {
        let (key, jwk) = if let Ok(pair) = Ed25519KeyPair::from_pkcs8(pkcs8) {
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            (
                SigningKey::Ed25519(pair),
                json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}),
            )
        } else if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8) {
            let point = pair.public_key().as_ref().to_vec();
            if point.len() != 65 {
                return Err("not an uncompressed P-256 public key".into());
            }
            let jwk = json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            });
            (SigningKey::Es256(pair), jwk)
        } else {
            return Err("not a PKCS#8 Ed25519 or ECDSA P-256 private key".into());
        };
        // The kid names the public key (RFC 7638-like: a digest of it), so a new key is a new kid.
        let kid = hex::encode(&Sha256::digest(jwk.to_string().as_bytes())[..8]);
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        let jwks = serde_json::to_vec(&json!({"keys": [jwk]}))
            .unwrap_or_default()
            .into();
        Ok(Self {
            key,
            header,
            issuer,
            audience,
            lifetime,
            kid,
            jwks,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED_CALLERS).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// The public key, as a JWKS document.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The assertion for `caller` in `groups`: a fresh one, or one signed less than half its
    /// lifetime ago.
    pub fn assertion(&self, caller: &Arc<str>, groups: &[&str]) -> Option<HeaderValue> {
        if let Some((signed, value)) = lock(&self.cache).get(caller)
            && signed.elapsed() < self.lifetime / 2
        {
            return Some(value.clone());
        }
        let value = HeaderValue::from_str(&self.sign(caller, groups)?).ok()?;
        lock(&self.cache).put(Arc::clone(caller), (Instant::now(), value.clone()));
        Some(value)
    }

    fn sign(&self, caller: &str, groups: &[&str]) -> Option<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let alg = match self.key {
            SigningKey::Ed25519(_) => "EdDSA",
            SigningKey::Es256(_) => "ES256",
        };
        let header = json!({"alg": alg, "typ": "JWT", "kid": self.kid});
        let claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": caller,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime.as_secs(),
        });
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.key {
            SigningKey::Ed25519(pair) => pair.sign(message.as_bytes()).as_ref().to_vec(),
            SigningKey::Es256(pair) => pair
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message.as_bytes())
                .ok()?
                .as_ref()
                .to_vec(),
        };
        Some(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(signer: &IdentitySigner, token: &str) -> serde_json::Value {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&signer.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let alg = jsonwebtoken::decode_header(token).unwrap().alg;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_audience(&["http://upstream.internal/mcp"]);
        validation.set_issuer(&["https://mcp.example.com/mcp"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn an_assertion_verifies_with_the_published_key_and_names_the_caller_for_the_upstream() {
        for algorithm in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P256_SHA256] {
            let pair = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let signer = IdentitySigner::new(
                &pair.serialize_der(),
                HeaderName::from_static("x-mcp-identity"),
                "https://mcp.example.com/mcp".into(),
                "http://upstream.internal/mcp".into(),
                Duration::from_secs(60),
            )
            .unwrap();
            let alice: Arc<str> = "alice".into();
            let value = signer.assertion(&alice, &["support"]).unwrap();
            let claims = verify(&signer, value.to_str().unwrap());
            assert_eq!(claims["sub"], "alice");
            assert_eq!(claims["groups"], json!(["support"]));
            assert_eq!(
                claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
                60
            );
            assert_eq!(
                signer.assertion(&alice, &["support"]).unwrap(),
                value,
                "reused within half its lifetime"
            );
        }
    }
}
