//! Session ids any node of a fleet can check on its own, with no look-up: the id a client sees is
//! the upstream's session id and the caller it was issued to, sealed (AES-256-GCM) with a key the
//! nodes share. A node opens the id, refuses it if it belongs to another caller, and forwards the
//! upstream's own id. A forged or altered id does not open; it is unknown (404, so the client
//! starts a new session), exactly as an id the single-node table never saw.
//!
//! Wire form: `g1.` + base64url(key id (4 bytes) | nonce (12) | sealed caller and upstream id |
//! tag (16)), the key id also authenticated. Nonces are random: with 96 bits, a key seals
//! billions of sessions before a repeat becomes plausible (NIST's 2^32 bound per key).
//!
//! Rotation: every configured key opens, the first one seals. Add the new key second on every
//! node, then move it first (keys are node settings: an upgrade or restart applies them), keep
//! the old one until sessions sealed with it have ended, then drop it. Adding before sealing
//! means no node ever meets an id sealed with a key it does not have.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::sessions::SessionError;

const PREFIX: &str = "g1.";
const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// Longer ids are refused before decoding (the upstream's ids are far shorter).
const MAX_SEALED_LEN: usize = 2048;

/// A 256-bit key shared by the fleet's nodes; its id is the start of its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// From 64 hex digits.
    pub fn from_hex(hex_key: &str) -> Option<Self> {
        let mut key = [0; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key).ok()?;
        Some(Self(key))
    }

    fn id(&self) -> [u8; KEY_ID_LEN] {
        let digest = Sha256::digest(self.0);
        [digest[0], digest[1], digest[2], digest[3]]
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey(id {})", hex::encode(self.id()))
    }
}

/// Seals and opens session ids.
pub struct SessionSeal {
    /// The first one seals.
    keys: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
}

impl SessionSeal {
    /// `None` without keys.
    pub fn new(keys: &[SessionKey]) -> Option<Self> {
        let keys: Vec<_> = keys
            .iter()
            .filter_map(|key| {
                let unbound = UnboundKey::new(&AES_256_GCM, &key.0).ok()?;
                Some((key.id(), LessSafeKey::new(unbound)))
            })
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The id to give `caller` for the upstream's session `upstream`.
    pub fn seal(&self, caller: &str, upstream: &str) -> String {
        let (key_id, key) = &self.keys[0];
        let mut nonce = [0; NONCE_LEN];
        // The system's random source does not fail on Linux; a zero nonce would still be unique
        // per (key, content) pair only by chance, so refuse to seal instead.
        if aws_lc_rs::rand::fill(&mut nonce).is_err() {
            return String::new();
        }
        let caller_len = u16::try_from(caller.len()).unwrap_or(u16::MAX);
        let mut sealed = Vec::with_capacity(
            KEY_ID_LEN + NONCE_LEN + 2 + caller.len() + upstream.len() + TAG_LEN,
        );
        sealed.extend_from_slice(key_id);
        sealed.extend_from_slice(&nonce);
        let plain_at = sealed.len();
        sealed.extend_from_slice(&caller_len.to_be_bytes());
        sealed.extend_from_slice(&caller.as_bytes()[..usize::from(caller_len)]);
        sealed.extend_from_slice(upstream.as_bytes());
        let mut body = sealed.split_off(plain_at);
        let sealing = key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(*key_id),
            &mut body,
        );
        if sealing.is_err() {
            return String::new();
        }
        sealed.extend_from_slice(&body);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The upstream's session id inside `sealed`, if it opens and was sealed for `caller`.
    pub fn open(&self, sealed: &str, caller: &str) -> Result<String, SessionError> {
        let encoded = sealed
            .strip_prefix(PREFIX)
            .filter(|encoded| encoded.len() <= MAX_SEALED_LEN)
            .ok_or(SessionError::Unknown)?;
        let mut bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SessionError::Unknown)?;
        if bytes.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN + 2 {
            return Err(SessionError::Unknown);
        }
        let (header, body) = bytes.split_at_mut(KEY_ID_LEN + NONCE_LEN);
        let (key_id, nonce) = header.split_at(KEY_ID_LEN);
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or(SessionError::Unknown)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SessionError::Unknown)?;
        let plain = key
            .open_in_place(nonce, Aad::from(key_id), body)
            .map_err(|_| SessionError::Unknown)?;
        let (caller_len, rest) = plain.split_at(2);
        let caller_len = usize::from(u16::from_be_bytes([caller_len[0], caller_len[1]]));
        if rest.len() < caller_len {
            return Err(SessionError::Unknown);
        }
        let (owner, upstream) = rest.split_at(caller_len);
        if owner != caller.as_bytes() {
            return Err(SessionError::NotOwner);
        }
        String::from_utf8(upstream.to_vec()).map_err(|_| SessionError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SessionKey {
        SessionKey::from_hex(&hex::encode([byte; 32])).expect("64 hex digits")
    }

    #[test]
    fn a_sealed_id_opens_for_its_caller_only() {
        let seal = SessionSeal::new(&[key(1)]).expect("a key");
        let sealed = seal.seal("alice", "upstream-session-1");
        assert!(sealed.starts_with("g1."));
        assert!(!sealed.contains("upstream-session-1"));
        assert_eq!(
            seal.open(&sealed, "alice").as_deref(),
            Ok("upstream-session-1")
        );
        assert_eq!(seal.open(&sealed, "bob"), Err(SessionError::NotOwner));
        assert_ne!(
            sealed,
            seal.seal("alice", "upstream-session-1"),
            "fresh nonce each time"
        );
    }

    #[test]
    fn an_altered_forged_or_foreign_id_does_not_open() {
        let seal = SessionSeal::new(&[key(1)]).expect("a key");
        let sealed = seal.seal("alice", "s1");
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        assert_eq!(seal.open(&altered, "alice"), Err(SessionError::Unknown));
        assert_eq!(seal.open("s1", "alice"), Err(SessionError::Unknown));
        assert_eq!(seal.open("g1.", "alice"), Err(SessionError::Unknown));
        assert_eq!(seal.open("g1.!!!", "alice"), Err(SessionError::Unknown));
        let other_fleet = SessionSeal::new(&[key(2)]).expect("a key");
        assert_eq!(
            other_fleet.open(&sealed, "alice"),
            Err(SessionError::Unknown)
        );
        let long = format!("g1.{}", "A".repeat(MAX_SEALED_LEN + 1));
        assert_eq!(seal.open(&long, "alice"), Err(SessionError::Unknown));
    }

    #[test]
    fn after_rotation_old_ids_still_open_and_new_ones_use_the_new_key() {
        let old = SessionSeal::new(&[key(1)]).expect("a key");
        let before = old.seal("alice", "s1");
        let rotated = SessionSeal::new(&[key(2), key(1)]).expect("keys");
        assert_eq!(rotated.open(&before, "alice").as_deref(), Ok("s1"));
        let after = rotated.seal("alice", "s2");
        assert_eq!(
            old.open(&after, "alice"),
            Err(SessionError::Unknown),
            "sealed with the new key"
        );
        let dropped = SessionSeal::new(&[key(2)]).expect("a key");
        assert_eq!(dropped.open(&before, "alice"), Err(SessionError::Unknown));
    }

    #[test]
    fn a_key_never_shows_in_debug_output() {
        let shown = format!("{:?}", key(0xab));
        assert!(!shown.contains("abab"), "{shown}");
    }
}
