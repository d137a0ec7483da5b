//! One access token checked: a JWT by its signature and claims, an opaque token by RFC 7662
//! introspection; then turned into the caller it names.
//!
//! The claims a client controls are read before the signature (the issuer, to pick its keys;
//! `exp`, `nbf` and `aud`, to refuse an expired or misaddressed token without paying for a
//! signature check), and all of them are checked again, with the signature, by `jsonwebtoken`.
//! Only the algorithms the issuer is configured with are tried, and only asymmetric ones exist in
//! the configuration: `alg: none` is not an algorithm `jsonwebtoken` knows, and an HMAC token
//! "signed" with a public key is refused by its `alg` before any key is looked at.

use std::{collections::HashSet, sync::Arc};

use jsonwebtoken::{
    Algorithm, Validation, dangerous::insecure_decode_claims, decode, decode_header,
    errors::ErrorKind,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Issuer, TokenCaller, TokenError, keys::KeyError};
use crate::{
    authz::{Grants, Rule},
    config::OAuthSettings,
    policy::Caller,
};

/// Most groups (or scopes) read from one token; more are ignored.
const MAX_LISTED: usize = 256;
/// Longest caller name taken from a claim.
const MAX_NAME_BYTES: usize = 256;

/// What is read of a token before its signature is checked.
#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Self::One(aud) => accepted.contains(aud),
            Self::Many(auds) => auds.iter().any(|aud| accepted.contains(aud)),
        }
    }
}

/// The `jsonwebtoken` validations of `issuer`, one per algorithm (`jsonwebtoken` wants every
/// algorithm of one validation in the family of the key): `iss`, `aud` and `exp` required as
/// RFC 9068 has them, `nbf` checked when present.
pub(super) fn validations(
    issuer: &crate::config::IssuerSettings,
    skew: u64,
) -> Vec<(Algorithm, Validation)> {
    issuer
        .algorithms
        .iter()
        .map(|alg| (*alg, validation(issuer, *alg, skew)))
        .collect()
}

fn validation(issuer: &crate::config::IssuerSettings, alg: Algorithm, skew: u64) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&issuer.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = skew;
    validation
}

/// Verifies a JWT access token.
pub(super) async fn verify_jwt(
    issuers: &[Issuer],
    settings: &OAuthSettings,
    token: &str,
    now: u64,
) -> Result<TokenCaller, TokenError> {
    let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
    let unverified: Unverified =
        insecure_decode_claims(token).map_err(|_| TokenError::Malformed)?;
    let iss = unverified
        .iss
        .as_deref()
        .ok_or(TokenError::MissingClaim("iss"))?;
    let issuer = issuers
        .iter()
        .find(|issuer| issuer.settings.issuer == iss)
        .ok_or(TokenError::UnknownIssuer)?;
    let Some((_, validation)) = issuer
        .validations
        .iter()
        .find(|(alg, _)| *alg == header.alg)
    else {
        return Err(TokenError::Algorithm);
    };
    let skew = settings.section.clock_skew_secs as f64;
    let now_f = now as f64;
    match unverified.exp {
        None => return Err(TokenError::MissingClaim("exp")),
        Some(exp) if exp + skew <= now_f => return Err(TokenError::Expired),
        Some(_) => {}
    }
    if unverified.nbf.is_some_and(|nbf| nbf - skew > now_f) {
        return Err(TokenError::NotYetValid);
    }
    match &unverified.aud {
        None => return Err(TokenError::MissingClaim("aud")),
        Some(aud) if !aud.contains_any(&issuer.settings.audiences) => {
            return Err(TokenError::Audience);
        }
        Some(_) => {}
    }
    let keys = issuer
        .keys
        .candidates(header.kid.as_deref())
        .await
        .map_err(|err| match err {
            KeyError::UnknownKid(_) => TokenError::UnknownKey,
            KeyError::Unavailable(_) => TokenError::KeysUnavailable,
        })?;
    let mut last = TokenError::UnknownKey;
    for key in keys
        .iter()
        .filter(|key| header.kid.is_none() || key.kid.as_deref() == header.kid.as_deref())
    {
        if key.alg.is_some_and(|alg| alg != header.alg) {
            continue;
        }
        match decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => {
                let exp = data
                    .claims
                    .get("exp")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                return token_caller(issuer, settings, &data.claims, exp as u64);
            }
            Err(err) => {
                last = match err.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
                    ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                    ErrorKind::MissingRequiredClaim(_) => {
                        TokenError::MissingClaim("exp, iss or aud")
                    }
                    ErrorKind::InvalidSignature => TokenError::Signature,
                    _ => TokenError::Malformed,
                };
            }
        }
    }
    Err(last)
}

/// What an introspection endpoint answers (RFC 7662 §2.2), and the claims beside it.
#[derive(Deserialize)]
struct Introspected {
    active: bool,
    #[serde(flatten)]
    claims: Map<String, Value>,
}

/// Longest an introspected token is remembered: a token revoked at the IdP stops working within
/// this time.
const INTROSPECTION_CACHE_SECS: u64 = 300;

/// Asks the issuers that introspect whether an opaque token is active.
pub(super) async fn introspect(
    issuers: &[Issuer],
    settings: &OAuthSettings,
    token: &str,
    now: u64,
) -> Result<TokenCaller, TokenError> {
    let mut asked = false;
    for issuer in issuers {
        let Some(introspection) = &issuer.settings.introspection else {
            continue;
        };
        asked = true;
        let Some(endpoint) = issuer.introspection_endpoint().await else {
            return Err(TokenError::KeysUnavailable);
        };
        let form = format!(
            "token={}&token_type_hint=access_token",
            super::form_urlencode(token)
        );
        let answer = issuer
            .settings
            .client
            .post_form(&endpoint, form, Some(&introspection.authorization))
            .await
            .map_err(|err| {
                tracing::warn!(issuer = %issuer.settings.issuer, error = %err, "token introspection failed");
                TokenError::KeysUnavailable
            })?;
        let answer: Introspected =
            serde_json::from_slice(&answer.body).map_err(|_| TokenError::KeysUnavailable)?;
        if !answer.active {
            continue;
        }
        let claims = answer.claims;
        if let Some(iss) = claims.get("iss").and_then(Value::as_str)
            && iss != issuer.settings.issuer
        {
            continue;
        }
        // RFC 8707: a token for another resource is refused, even when active.
        if let Some(aud) = claims.get("aud")
            && let Ok(aud) = serde_json::from_value::<Audience>(aud.clone())
            && !aud.contains_any(&issuer.settings.audiences)
        {
            return Err(TokenError::Audience);
        }
        let exp = claims.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|exp| exp <= now) {
            return Err(TokenError::Expired);
        }
        let until = exp.map_or(now + 60, |exp| exp.min(now + INTROSPECTION_CACHE_SECS));
        return token_caller(issuer, settings, &claims, until);
    }
    if asked {
        Err(TokenError::Inactive)
    } else {
        Err(TokenError::Malformed)
    }
}

/// The caller a verified token's `claims` name, with what their groups and scopes grant.
fn token_caller(
    issuer: &Issuer,
    settings: &OAuthSettings,
    claims: &Map<String, Value>,
    expires_at: u64,
) -> Result<TokenCaller, TokenError> {
    let config = &issuer.settings;
    // A client's own token (client credentials) may come without `sub` from introspection
    // (RFC 7662 makes it optional); its subject is then the client (as RFC 9068 has it for JWTs).
    let named = claims.get(&config.caller_claim).or_else(|| {
        (config.caller_claim == "sub")
            .then(|| claims.get("client_id"))
            .flatten()
    });
    let name = match named {
        Some(Value::String(name)) => name.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => return Err(TokenError::NoCallerClaim),
    };
    // Sent upstream in the caller header, as the names of [[users]] are: printable ASCII only.
    if name.is_empty()
        || name.len() + config.caller_prefix.len() > MAX_NAME_BYTES
        || !name.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(TokenError::NoCallerClaim);
    }
    let scopes: Vec<Box<str>> = ["scope", "scp"]
        .iter()
        .filter_map(|claim| claims.get(*claim))
        .flat_map(listed)
        .collect();
    let claimed: Vec<Box<str>> = config
        .groups_claim
        .as_ref()
        .and_then(|claim| claims.get(claim))
        .map(listed)
        .unwrap_or_default();
    let (groups, grants) = grants_of(settings, &claimed, &scopes);
    let name: Arc<str> = format!("{}{name}", config.caller_prefix).into();
    Ok(TokenCaller {
        caller: Caller::from_token(name, grants),
        issuer: config.issuer.as_str().into(),
        groups: groups.into_iter().map(Box::from).collect(),
        scopes: scopes.into_iter().collect::<HashSet<_>>(),
        expires_at,
    })
}

/// The `[groups.*]` a caller is in, by the groups its token claims (names, or aliases of names)
/// and by its scopes (`scope_groups`), and what they grant. Also what `gateway explain` asks.
pub fn grants_of<'s, S: AsRef<str>>(
    settings: &'s OAuthSettings,
    claimed_groups: &[S],
    scopes: &[S],
) -> (Vec<&'s str>, Option<Arc<Grants>>) {
    let section = &settings.section;
    let mut groups: Vec<&str> = Vec::new();
    let mut add = |group: Option<&'s str>| {
        if let Some(group) = group
            && !groups.contains(&group)
        {
            groups.push(group);
        }
    };
    for group in claimed_groups {
        let group = group.as_ref();
        add(section
            .group_aliases
            .get(group)
            .map(String::as_str)
            .or_else(|| {
                settings
                    .groups
                    .get_key_value(group)
                    .map(|(name, _)| name.as_str())
            }));
    }
    for scope in scopes {
        add(section.scope_groups.get(scope.as_ref()).map(String::as_str));
    }
    let rules: Vec<Arc<Rule>> = groups
        .iter()
        .filter_map(|group| settings.groups.get(*group).cloned())
        .collect();
    let grants = (settings.default_deny || !rules.is_empty())
        .then(|| Arc::new(Grants::new(rules, settings.default_deny)));
    (groups, grants)
}

/// The strings of a claim that lists: an array of strings, or one space-separated string.
fn listed(value: &Value) -> Vec<Box<str>> {
    match value {
        Value::String(text) => text
            .split_ascii_whitespace()
            .take(MAX_LISTED)
            .map(Box::from)
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .take(MAX_LISTED)
            .map(Box::from)
            .collect(),
        _ => Vec::new(),
    }
}
