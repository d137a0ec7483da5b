//! `[oauth]` as an operator writes it: the gateway as an OAuth 2.1 resource server.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

/// `[oauth]`: access tokens from the organisation's identity provider(s). Without it the gateway
/// advertises no OAuth at all.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    /// The MCP endpoint's public URL, exactly as clients use it (`https://mcp.example.com/mcp`):
    /// the resource tokens must be issued for (their `aud`), and the base of the metadata URL.
    /// Never taken from a request's Host header.
    pub resource: String,
    /// The issuers whose tokens are accepted.
    pub issuers: Vec<IssuerConfig>,
    /// Scopes announced in the metadata and in 401 challenges: the minimum for basic use.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Scopes every token must carry; a valid token without them gets 403 `insufficient_scope`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Scopes that calls of some tools need (`[[oauth.tool_scopes]] tools = ["delete_*"]
    /// scopes = ["tickets:write"]`); without them, 403 `insufficient_scope` naming them.
    #[serde(default)]
    pub tool_scopes: Vec<ToolScopesConfig>,
    /// A token with this scope is in this `[groups.*]` group: `{ "tools:read" = "readers" }`.
    #[serde(default)]
    pub scope_groups: BTreeMap<String, String>,
    /// A value of the groups claim that is not itself a group name (Entra's object ids,
    /// Keycloak's `/paths`) mapped onto one: `{ "/eng/support" = "support" }`.
    #[serde(default)]
    pub group_aliases: BTreeMap<String, String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "defaults::clock_skew_secs")]
    pub clock_skew_secs: u64,
    /// Static keys and client certificates of `[[users]]` are accepted besides tokens. Off by
    /// default: a client that finds OAuth metadata may ignore a static header configured for it,
    /// so serving both on one URL must be a deliberate choice.
    #[serde(default)]
    pub keys_alongside: bool,
    /// Verified tokens remembered (by digest, until they expire), so a signature is checked once
    /// per token and not once per request.
    #[serde(default = "defaults::token_cache_entries")]
    pub token_cache_entries: usize,
    /// Callers (names as the caller claim and prefix make them) whose tokens are refused at once,
    /// before they expire: a revocation that a reload applies.
    #[serde(default)]
    pub revoked_callers: Vec<String>,
    /// `resource_name` in the metadata, shown by some clients.
    #[serde(default)]
    pub resource_name: Option<String>,
}

/// `[[oauth.issuers]]`: one authorization server.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier, exactly as its tokens' `iss` and its metadata's `issuer` say it.
    pub issuer: String,
    /// Audiences accepted besides `oauth.resource` (an IdP that puts a client id or an API
    /// identifier in `aud`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the signing keys are: unset, the `jwks_uri` of the issuer's metadata (OIDC
    /// discovery, then RFC 8414).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A local JWKS file instead (reread by every refresh).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM bundle of the CAs that sign the IdP's certificate; unset: the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Signature algorithms accepted. Only asymmetric ones exist here: never `none`, never HMAC.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<String>,
    /// The claim that names the caller.
    #[serde(default = "defaults::caller_claim")]
    pub caller_claim: String,
    /// The claim that lists the caller's groups (an array of strings, or one space-separated
    /// string); unset: none.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Put before every caller name from this issuer (`"okta:"`), so that two issuers' names, or
    /// an issuer's and a `[[users]]` name, never meet.
    #[serde(default)]
    pub caller_prefix: String,
    /// Opaque (non-JWT) tokens are checked here by RFC 7662 introspection.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

/// `[oauth.issuers.introspection]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Unset: the `introspection_endpoint` of the issuer's metadata.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub client_id: String,
    /// A file holding the client secret (never the secret itself in the config).
    pub client_secret_file: PathBuf,
}

/// `[[oauth.tool_scopes]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ToolScopesConfig {
    /// Tool name patterns.
    pub tools: Vec<String>,
    pub scopes: Vec<String>,
}

mod defaults {
    pub fn clock_skew_secs() -> u64 {
        60
    }
    pub fn token_cache_entries() -> usize {
        10_000
    }
    pub fn algorithms() -> Vec<String> {
        ["RS256", "PS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec()
    }
    pub fn caller_claim() -> String {
        "sub".to_owned()
    }
}
