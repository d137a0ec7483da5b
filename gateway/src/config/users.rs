//! `[[users]]` and the users given in the environment (`MCP_API_KEY`, `MCP_USER_KEYS`).

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, SystemTime},
};

use super::{ConfigError, file::UserConfig, invalid, settings::User, validate::rate_limit};
use crate::{digest::Sha256Digest, tls};

/// Every user: those of the file, then the environment's. Names and keys must be unique.
pub(super) fn users(
    configured: &[UserConfig],
    mcp_api_key: Option<&str>,
    mcp_user_keys: Option<&str>,
) -> Result<Vec<User>, ConfigError> {
    let mut users = Vec::with_capacity(configured.len());
    for (index, user) in configured.iter().enumerate() {
        let field = |name: &str| format!("users[{index}].{name}");
        check_user_name(&user.name).map_err(|message| invalid(field("name"), message))?;
        let key_digest = user
            .key_sha256
            .as_deref()
            .map(|hex| {
                Sha256Digest::from_hex(hex).ok_or_else(|| {
                    invalid(
                        field("key_sha256"),
                        "must be 64 hex characters (SHA-256 of the key: `gateway hash-key`)",
                    )
                })
            })
            .transpose()?;
        let tls_subject = user.tls_subject.as_deref();
        if let Some(subject) = tls_subject
            && !tls::is_name(subject)
        {
            return Err(invalid(
                field("tls_subject"),
                format!(
                    "a certificate name starts with one of {:?} (as OpenSSL prints it)",
                    tls::NAME_KINDS
                ),
            ));
        }
        if key_digest.is_none() && tls_subject.is_none() {
            return Err(invalid(
                field("key_sha256"),
                "needed, unless the user is identified by tls_subject",
            ));
        }
        let limit = user
            .rate_limit
            .map(|limit| rate_limit(&field("rate_limit"), limit))
            .transpose()?;
        let expires_at = user
            .expires_at
            .as_deref()
            .map(|text| {
                parse_rfc3339(text).ok_or_else(|| {
                    invalid(
                        field("expires_at"),
                        "must be an RFC 3339 time, e.g. \"2026-12-31T23:59:59Z\"",
                    )
                })
            })
            .transpose()?;
        users.push(User {
            name: user.name.clone(),
            key_digest,
            tls_subject: tls_subject.map(Box::from),
            limit,
            grants: None,
            expires_at,
            disabled: user.disabled,
        });
    }
    if let Some(key) = mcp_api_key {
        users.push(env_user("MCP_API_KEY", "default", key)?);
    }
    if let Some(json) = mcp_user_keys {
        let keys: BTreeMap<String, String> = serde_json::from_str(json).map_err(|err| {
            invalid(
                "MCP_USER_KEYS",
                // Only the position: serde's message may quote a value, and values are keys.
                format!(
                    "must be a JSON object of user name -> key (error at line {}, column {})",
                    err.line(),
                    err.column()
                ),
            )
        })?;
        for (name, key) in &keys {
            users.push(env_user(&format!("MCP_USER_KEYS.{name}"), name, key)?);
        }
    }
    check_unique(&users)?;
    Ok(users)
}

/// Sets, not pairwise scans: configs with 100,000 users must load in moments.
fn check_unique(users: &[User]) -> Result<(), ConfigError> {
    let mut names = HashSet::with_capacity(users.len());
    let mut digests = HashSet::with_capacity(users.len());
    let mut subjects = HashSet::new();
    for user in users {
        if let Some(subject) = &user.tls_subject
            && !subjects.insert(subject)
        {
            return Err(invalid(
                format!("users ({})", user.name),
                "same tls_subject as another user",
            ));
        }
        if !names.insert(user.name.as_str()) {
            return Err(invalid(
                format!("users ({})", user.name),
                "user name defined twice",
            ));
        }
        // Sha256Digest compares in constant time.
        if let Some(digest) = user.key_digest
            && !digests.insert(digest)
        {
            return Err(invalid(
                format!("users ({})", user.name),
                "same key as another user: every user needs their own key",
            ));
        }
    }
    Ok(())
}

pub(super) fn check_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    // The name travels upstream in a header and into the audit log.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err("may only contain letters, digits and - _ . @");
    }
    Ok(())
}

fn env_user(field: &str, name: &str, key: &str) -> Result<User, ConfigError> {
    check_user_name(name).map_err(|message| invalid(field, message))?;
    if key.len() < 16 {
        return Err(invalid(
            field,
            "key must be at least 16 characters (`gateway gen-key` makes one)",
        ));
    }
    Ok(User {
        name: name.to_owned(),
        key_digest: Some(Sha256Digest::of(key.as_bytes())),
        tls_subject: None,
        limit: None,
        grants: None,
        expires_at: None,
        disabled: false,
    })
}

/// An RFC 3339 time (any offset) as a `SystemTime`.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(time.unix_timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, time.nanosecond()))
}
