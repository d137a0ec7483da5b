//! `gateway gen-key` and `gateway hash-key`: keys are generated and hashed here, and only their
//! SHA-256 goes into the configuration.

use base64::Engine;

use super::Sha256Digest;

/// A new random key: 256 bits from the OS, URL-safe base64 without padding (43 characters).
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("no randomness from the OS: {err}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256 of a key as read from stdin: the trailing newline of `echo` is not part of it.
pub fn hash(input: &str) -> anyhow::Result<String> {
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        anyhow::bail!("no key on stdin (try: echo -n \"$KEY\" | gateway hash-key)");
    }
    Ok(Sha256Digest::of(key.as_bytes()).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_url_safe_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn hashing_ignores_the_trailing_newline() {
        assert_eq!(hash("password\n").unwrap(), hash("password").unwrap());
        assert_eq!(
            hash("password").unwrap(),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert!(hash("\n").is_err());
    }
}
