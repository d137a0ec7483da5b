//! `[oauth]` checked into [`OAuthSettings`]: every URL parsed, every algorithm known, every group
//! a scope or alias names defined, files read, so that a request never meets a bad setting and a
//! bad setting is reported with its field.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use hyper::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::{
    ConfigError,
    file::{IntrospectionConfig, IssuerConfig, OAuthSection},
    invalid,
};
use crate::{
    authz::{Patterns, Rule, Separator},
    oauth::{IdpClient, form_urlencode, is_loopback},
    tls::read_roots,
    upstream::UpstreamTls,
};

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The `jwks_uri` of the issuer's metadata.
    Discovered {
        issuer: String,
    },
    Uri(String),
    File(PathBuf),
}

/// The validated `[oauth]`.
#[derive(Clone)]
pub struct OAuthSettings {
    /// As written: what a reload compares.
    pub section: OAuthSection,
    /// `oauth.resource` without a trailing slash (the canonical form clients compare).
    pub resource: String,
    /// The URL of the protected resource metadata, for `WWW-Authenticate`.
    pub metadata_url: String,
    /// The path-inserted metadata path of `resource` (`/.well-known/oauth-protected-resource/mcp`).
    pub metadata_path: String,
    pub issuers: Vec<IssuerSettings>,
    pub tool_scopes: Vec<(Patterns, Vec<String>)>,
    /// The rules of every `[groups.*]`, by name: what a token's groups and scopes grant.
    pub groups: Arc<HashMap<String, Arc<Rule>>>,
    pub default_deny: bool,
}

impl OAuthSettings {
    /// Every scope a request calling `tools` needs: the required ones, then those of the tool
    /// rules that match one of them, each once.
    pub fn scopes_for<'t>(&self, tools: impl IntoIterator<Item = &'t str> + Clone) -> Vec<String> {
        let mut needed = self.section.required_scopes.clone();
        for (patterns, scopes) in &self.tool_scopes {
            let matches =
                |tool: &str| matches!(patterns.check(tool), crate::authz::Match::Allowed(_));
            if tools.clone().into_iter().any(matches) {
                for scope in scopes {
                    if !needed.contains(scope) {
                        needed.push(scope.clone());
                    }
                }
            }
        }
        needed
    }
}

impl std::fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("resource", &self.resource)
            .field("issuers", &self.issuers.len())
            .finish_non_exhaustive()
    }
}

/// One validated `[[oauth.issuers]]`.
#[derive(Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    /// `oauth.resource` and the issuer's extra audiences.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub client: IdpClient,
    pub algorithms: Vec<Algorithm>,
    pub caller_claim: String,
    pub groups_claim: Option<String>,
    pub caller_prefix: String,
    pub introspection: Option<IntrospectionSettings>,
}

/// How opaque tokens are introspected.
#[derive(Clone)]
pub struct IntrospectionSettings {
    /// `None`: the issuer's metadata says.
    pub endpoint: Option<String>,
    /// `Basic base64(client_id:secret)`, read from the secret file at start and reload.
    pub authorization: String,
}

/// Checks `section` against the groups of the configuration (`groups` = each group's rule).
pub(super) fn oauth_settings(
    section: &OAuthSection,
    groups: HashMap<String, Arc<Rule>>,
    default_deny: bool,
) -> Result<OAuthSettings, ConfigError> {
    let resource = section.resource.trim_end_matches('/').to_owned();
    let uri: Uri = resource
        .parse()
        .map_err(|err| invalid("oauth.resource", format!("not a URL: {err}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(invalid(
            "oauth.resource",
            "an absolute URL: https://mcp.example.com/mcp",
        ));
    };
    if scheme != "https" && !(scheme == "http" && is_loopback(authority.host())) {
        return Err(invalid(
            "oauth.resource",
            "must be https:// (clients refuse OAuth over plain HTTP, except to localhost)",
        ));
    }
    if uri.query().is_some() || resource.contains('#') {
        return Err(invalid(
            "oauth.resource",
            "a resource URL has no query or fragment (RFC 8707)",
        ));
    }
    let path = match uri.path() {
        "/" => "",
        path => path,
    };
    let metadata_path = format!("/.well-known/oauth-protected-resource{path}");
    let metadata_url = format!("{scheme}://{authority}{metadata_path}");
    if section.issuers.is_empty() {
        return Err(invalid("oauth.issuers", "name at least one issuer"));
    }
    let issuers = section
        .issuers
        .iter()
        .enumerate()
        .map(|(index, issuer)| issuer_settings(index, issuer, &resource))
        .collect::<Result<Vec<_>, _>>()?;
    for (index, issuer) in issuers.iter().enumerate() {
        if issuers[..index]
            .iter()
            .any(|seen| seen.issuer == issuer.issuer)
        {
            return Err(invalid(
                format!("oauth.issuers[{index}].issuer"),
                "listed twice",
            ));
        }
    }
    for (name, field) in [
        (&section.scopes_supported, "scopes_supported"),
        (&section.required_scopes, "required_scopes"),
    ]
    .into_iter()
    .flat_map(|(list, field)| {
        list.iter()
            .enumerate()
            .map(move |(i, s)| (s, format!("oauth.{field}[{i}]")))
    }) {
        check_scope(name).map_err(|message| invalid(field, message))?;
    }
    if section
        .scopes_supported
        .iter()
        .any(|s| s == "offline_access")
    {
        return Err(invalid(
            "oauth.scopes_supported",
            "offline_access is the client's to ask for, not the resource's to announce (MCP authorization spec)",
        ));
    }
    let tool_scopes = section
        .tool_scopes
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let field = format!("oauth.tool_scopes[{index}]");
            let patterns =
                Patterns::new(&rule.tools, Separator::Free).map_err(|(at, message)| {
                    invalid(
                        format!("{field}.tools[{at}]"),
                        format!("not a valid pattern: {message}"),
                    )
                })?;
            if rule.scopes.is_empty() {
                return Err(invalid(
                    format!("{field}.scopes"),
                    "name at least one scope",
                ));
            }
            for (at, scope) in rule.scopes.iter().enumerate() {
                check_scope(scope).map_err(|m| invalid(format!("{field}.scopes[{at}]"), m))?;
            }
            Ok((patterns, rule.scopes.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (key, map) in [
        ("scope_groups", &section.scope_groups),
        ("group_aliases", &section.group_aliases),
    ] {
        check_groups(key, map, &groups)?;
    }
    if section.token_cache_entries == 0 {
        return Err(invalid("oauth.token_cache_entries", "must be at least 1"));
    }
    Ok(OAuthSettings {
        section: section.clone(),
        resource,
        metadata_url,
        metadata_path,
        issuers,
        tool_scopes,
        groups: Arc::new(groups),
        default_deny,
    })
}

fn check_groups(
    key: &str,
    map: &BTreeMap<String, String>,
    groups: &HashMap<String, Arc<Rule>>,
) -> Result<(), ConfigError> {
    for (from, group) in map {
        if !groups.contains_key(group) {
            return Err(invalid(
                format!("oauth.{key}.{from}"),
                format!("no [groups.{group}] is defined"),
            ));
        }
    }
    Ok(())
}

/// RFC 6749 §3.3: printable ASCII without space, `"` or `\`.
fn check_scope(scope: &str) -> Result<(), String> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{scope:?} is not a scope (RFC 6749: printable ASCII, no space, quote or backslash)"
        ))
    }
}

fn issuer_settings(
    index: usize,
    section: &IssuerConfig,
    resource: &str,
) -> Result<IssuerSettings, ConfigError> {
    let field = |name: &str| format!("oauth.issuers[{index}].{name}");
    let issuer = &section.issuer;
    check_url(issuer).map_err(|message| invalid(field("issuer"), message))?;
    let keys = match (&section.jwks_uri, &section.jwks_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                field("jwks_file"),
                "set jwks_uri or jwks_file, not both",
            ));
        }
        (Some(uri), None) => {
            check_url(uri).map_err(|message| invalid(field("jwks_uri"), message))?;
            KeySource::Uri(uri.clone())
        }
        (None, Some(path)) => {
            std::fs::metadata(path)
                .map_err(|err| invalid(field("jwks_file"), format!("{}: {err}", path.display())))?;
            KeySource::File(path.clone())
        }
        (None, None) => KeySource::Discovered {
            issuer: issuer.clone(),
        },
    };
    let roots = match &section.ca {
        Some(path) => read_roots(path).map_err(|err| invalid(field("ca"), err.to_string()))?,
        None => UpstreamTls::system_roots(),
    };
    let client = IdpClient::new(roots).map_err(|err| invalid(field("ca"), err.to_string()))?;
    if section.algorithms.is_empty() {
        return Err(invalid(field("algorithms"), "name at least one algorithm"));
    }
    let algorithms = section
        .algorithms
        .iter()
        .enumerate()
        .map(|(at, name)| {
            let alg: Algorithm = name.parse().map_err(|_| {
                invalid(format!("{}[{at}]", field("algorithms")), format!("unknown algorithm {name:?}"))
            })?;
            if alg.family() == AlgorithmFamily::Hmac {
                return Err(invalid(
                    format!("{}[{at}]", field("algorithms")),
                    "HMAC algorithms need a secret shared with the IdP; only signatures verifiable with public keys are accepted",
                ));
            }
            Ok(alg)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !section.caller_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field("caller_prefix"),
            "printable ASCII without spaces",
        ));
    }
    if section.caller_claim.is_empty() {
        return Err(invalid(field("caller_claim"), "must not be empty"));
    }
    let introspection = section
        .introspection
        .as_ref()
        .map(|config| introspection(config, &field))
        .transpose()?;
    let mut audiences = vec![resource.to_owned()];
    audiences.extend(section.audiences.iter().cloned());
    Ok(IssuerSettings {
        issuer: issuer.clone(),
        audiences,
        keys,
        client,
        algorithms,
        caller_claim: section.caller_claim.clone(),
        groups_claim: section.groups_claim.clone(),
        caller_prefix: section.caller_prefix.clone(),
        introspection,
    })
}

fn introspection(
    config: &IntrospectionConfig,
    field: &impl Fn(&str) -> String,
) -> Result<IntrospectionSettings, ConfigError> {
    use base64::Engine as _;
    if let Some(endpoint) = &config.endpoint {
        check_url(endpoint).map_err(|message| invalid(field("introspection.endpoint"), message))?;
    }
    let path = &config.client_secret_file;
    let secret = std::fs::read_to_string(path).map_err(|err| {
        invalid(
            field("introspection.client_secret_file"),
            format!("{}: {err}", path.display()),
        )
    })?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(invalid(
            field("introspection.client_secret_file"),
            "the file is empty",
        ));
    }
    // RFC 6749 §2.3.1: both form-urlencoded before they are joined.
    let credential = format!(
        "{}:{}",
        form_urlencode(&config.client_id),
        form_urlencode(secret)
    );
    Ok(IntrospectionSettings {
        endpoint: config.endpoint.clone(),
        authorization: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credential)
        ),
    })
}

/// An https:// URL, or http:// to a loopback host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|err| format!("not a URL: {err}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some(authority)) if is_loopback(authority.host()) => Ok(()),
        _ => Err(format!(
            "{url:?}: an https:// URL (http:// only to a loopback address)"
        )),
    }
}
