//! Key digests: the only form in which the gateway keeps keys.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasherDefault, Hash, Hasher},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a key. Compared only in constant time.
#[derive(Clone, Copy)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut digest).ok()?;
        Some(Self(digest))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl ConstantTimeEq for Sha256Digest {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for Sha256Digest {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Sha256Digest {}

// Equal digests have equal bytes, so hashing some of them agrees with the constant-time `eq`.
// A SHA-256 digest is uniformly distributed already: its first eight bytes are as good a hash as
// any, and nobody can choose a key whose digest collides with another's.
impl Hash for Sha256Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_ne_bytes(prefix));
    }
}

/// A map keyed by digests, hashed by the digest's own bits instead of SipHash: the digest is
/// already a cryptographic hash. SipHash cost about 270 instructions per request here (callgrind).
pub type DigestMap<V> = HashMap<Sha256Digest, V, BuildHasherDefault<DigestHasher>>;

/// Passes on the `u64` a [`Sha256Digest`] hashes to.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write_u64(&mut self, bits: u64) {
        self.0 = bits;
    }

    /// Not used by digests; mixes in anything else rather than dropping it.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Sha256Digest {
    // A digest of a key is still key material: never print it in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Digest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_roundtrip_through_hex() {
        let digest = Sha256Digest::of(b"password");
        assert_eq!(
            digest.to_hex(),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert_eq!(Sha256Digest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(Sha256Digest::from_hex("xyz"), None);
        assert_eq!(format!("{digest:?}"), "Sha256Digest(..)");
    }

    #[test]
    fn a_digest_map_finds_each_digest_and_only_it() {
        let map: DigestMap<usize> = (0..1_000)
            .map(|i| (Sha256Digest::of(format!("key-{i}").as_bytes()), i))
            .collect();
        for i in 0..1_000 {
            assert_eq!(
                map.get(&Sha256Digest::of(format!("key-{i}").as_bytes())),
                Some(&i)
            );
        }
        assert_eq!(map.get(&Sha256Digest::of(b"another key")), None);
    }
}
