//! The configuration file as an operator writes it: TOML, unknown keys rejected, every field with
//! its documented default. Checking it is `validate.rs`'s job.

mod oauth;
mod operations;
mod protection;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

pub use oauth::{IntrospectionConfig, IssuerConfig, OAuthSection, ToolScopesConfig};
pub use operations::{AdminSection, FleetSection, OnUnavailable};
pub use protection::{
    BlockingSection, EscalationSection, Interfaces, XdpModeConfig, XdpRateSection, XdpSection,
};

/// The configuration file, as written by an operator. Unknown keys are an error, so a typo never
/// silently falls back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where MCP clients connect: HTTPS with a `[tls]` section, plain HTTP without.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// With `[tls]`: a second address that serves plain HTTP beside it (a health check on a
    /// private address, say). Unset: none.
    #[serde(default)]
    pub plain_listen: Option<SocketAddr>,
    #[serde(default = "defaults::mcp_path")]
    pub mcp_path: String,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// A client connection with no request in progress for this long is closed, including one
    /// whose request head is still arriving (slow clients), and so is one whose client takes
    /// nothing of its response for this long; a request body that stops arriving for this long
    /// gets 408.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Browser origins (`https://app.example.com`) whose requests are served; a request with
    /// another `Origin` gets 403 (DNS rebinding). `["*"]` allows any. Requests without `Origin`
    /// (clients outside a browser) are unaffected.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Every connection to `listen` starts with a PROXY protocol header (v1 or v2) saying who the
    /// client is: for nodes behind an L4 load balancer.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The load balancers (addresses or CIDR prefixes): connections from anywhere else are
    /// refused when `proxy_protocol` is on.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub xdp: XdpSection,
    #[serde(default)]
    pub blocking: BlockingSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub authorization: AuthorizationSection,
    /// Groups of users and what they may use: `[groups.support] members = ["alice"]`.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupConfig>,
    /// Access tokens of the organisation's identity provider(s): the gateway as an OAuth 2.1
    /// resource server. Without it, no OAuth is advertised.
    #[serde(default)]
    pub oauth: Option<OAuthSection>,
    #[serde(default)]
    pub admin: AdminSection,
    /// Several gateway nodes sharing limits, offense counts, blocks and sessions through Redis;
    /// without it the node is on its own (the default).
    #[serde(default)]
    pub fleet: Option<FleetSection>,
    /// On SIGTERM (or when a new process takes over), open streams get this long to finish
    /// before they are cut; requests in flight always finish.
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

/// `[tls]`: with it, `listen` serves HTTPS (TLS 1.3 and 1.2; HTTP/2 and HTTP/1.1 by ALPN).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first: the certificate for clients that ask for no name or an
    /// unknown one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// More certificates, each served for the DNS names in its subject alternative names (SNI).
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// A connection whose TLS handshake takes longer is closed (an offense of its source).
    #[serde(default = "defaults::handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// PEM bundle of the CAs that sign client certificates: with it, clients are asked for one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `"required"` (the default with `client_ca`): no handshake without a valid certificate;
    /// `"optional"`: clients without one authenticate with a key.
    #[serde(default)]
    pub client_auth: Option<ClientAuthMode>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[authorization]`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSection {
    /// What a caller may use where none of their rules speaks of it.
    #[serde(default)]
    pub default: DefaultDecision,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDecision {
    /// Today's behaviour: a caller without rules uses everything.
    #[default]
    Allow,
    Deny,
}

/// What a user (in `[[users]]`) or a group may use. Every list is of glob patterns; `!pattern`
/// denies, and a deny wins.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// User names.
    #[serde(default)]
    pub members: Vec<String>,
    /// Tool names (`tools/call`, `tools/list`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Prompt names (`prompts/get`, `prompts/list`).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Resource URIs (`resources/read`, `resources/subscribe`, the resource lists).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Annotations the upstream gives its tools: `"readOnlyHint"` grants only tools that have
    /// it, `"!destructiveHint"` denies tools that have it.
    #[serde(default)]
    pub tool_annotations: Vec<String>,
}

/// `[limits]`: a bound on everything a client controls, so one client can only hurt itself.
/// Every field must be at least 1.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Messages in one JSON-RPC batch; a larger batch gets 400 before anything else is done.
    pub max_batch_messages: usize,
    /// Nesting of arrays and objects in a request body.
    pub max_json_depth: usize,
    /// Keys of a tool call's `arguments` the gateway reads (and audits); the rest are skipped.
    pub max_argument_keys: usize,
    /// Header fields in a request.
    pub max_headers: usize,
    /// Bytes of a request's head (request line and headers).
    pub max_header_bytes: usize,
    /// Bytes of a request's URI.
    pub max_uri_bytes: usize,
    /// Open connections from one source address; more are closed at accept (an offense).
    pub max_connections_per_source: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Requests of one caller being forwarded at once; more get 429.
    pub max_in_flight_per_caller: usize,
    /// `subscriptions/listen` streams of one caller open at once (they do not count as in flight:
    /// they last for hours); more get 429.
    pub max_listen_streams_per_caller: usize,
    /// Seconds of upstream silence on an SSE answer after which the gateway sends a keep-alive
    /// comment, so idle load balancers keep the connection; 0: never.
    pub sse_keepalive_secs: u64,
    /// MCP sessions open through the gateway, all callers together.
    pub max_sessions: usize,
    /// MCP sessions of one caller; a new one ends that caller's oldest.
    pub max_sessions_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_messages: 100,
            max_json_depth: 64,
            max_argument_keys: 64,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            max_connections_per_source: 256,
            max_streams_per_connection: 100,
            max_in_flight_per_caller: 64,
            max_listen_streams_per_caller: 8,
            sse_keepalive_secs: 15,
            max_sessions: 100_000,
            max_sessions_per_caller: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port/path` or `https://host:port/path` of the MCP server.
    pub url: String,
    /// PEM bundle of the CAs an `https://` upstream's certificate must chain to (default: the
    /// system's trust store).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM certificate chain and key the gateway presents to an `https://` upstream that asks.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Header that carries the authenticated caller's name upstream.
    #[serde(default = "defaults::caller_header")]
    pub caller_header: String,
    /// Longest wait for the upstream's response headers (streams may then run longer).
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: u64,
    /// Credential sent upstream as `Authorization` (the caller's own key never is).
    #[serde(default)]
    pub authorization: Option<String>,
    /// Path of the server's legacy HTTP+SSE endpoint (MCP 2024-11-05), e.g. `"/sse"`, on the same
    /// host and port as `url`. The gateway serves it at the same path, and the message endpoint
    /// each stream announces. Unset: the legacy transport is not served.
    #[serde(default)]
    pub sse_path: Option<String>,
    /// A signed assertion of who calls (a JWT the upstream verifies with the gateway's JWKS at
    /// `/.well-known/jwks.json`), sent beside the caller header.
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
}

/// `[upstream.identity]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PKCS#8 PEM private key, Ed25519 or ECDSA P-256. Unset: an Ed25519 key made at start (one
    /// per process: nodes of a fleet should share a file).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "defaults::identity_header")]
    pub header: String,
    /// The assertion's `aud`; unset: the upstream's URL.
    #[serde(default)]
    pub audience: Option<String>,
    /// The assertion's `iss`; unset: `oauth.resource`, or "mcp-gateway".
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default = "defaults::identity_lifetime_secs")]
    pub lifetime_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests: u32,
    pub window_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "defaults::requests")]
    pub requests: u32,
    #[serde(default = "defaults::window_secs")]
    pub window_secs: u64,
    /// HTTP status of a rate-limited answer: 429, or 200 for clients that break on any non-2xx.
    #[serde(default = "defaults::rate_limit_status")]
    pub status: u16,
    /// Per caller and tool: `tools/call` of a named tool, e.g. `tools.search = { requests = 5,
    /// window_secs = 60 }`.
    #[serde(default)]
    pub tools: BTreeMap<String, Limit>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests: defaults::requests(),
            window_secs: defaults::window_secs(),
            status: defaults::rate_limit_status(),
            tools: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "defaults::audit_path")]
    pub path: PathBuf,
    /// Wait for fsync before forwarding (group commit keeps throughput under concurrency).
    #[serde(default)]
    pub fsync: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: defaults::audit_path(),
            fsync: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Hex SHA-256 of the user's key (`gateway hash-key`).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// A name in the client certificate that identifies the user (`CN=...`, `DNS:...`,
    /// `email:...`, `URI:...`), with `[tls] client_ca`: alone, the certificate is enough; with
    /// `key_sha256`, both are needed.
    #[serde(default)]
    pub tls_subject: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<Limit>,
    /// RFC 3339 (`2026-12-31T23:59:59Z`): from then on the user is refused.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Refuse the user (a leaked key, someone who left) without deleting the entry.
    #[serde(default)]
    pub disabled: bool,
    /// The user's own rule, as in `[groups.*]` (without `members`). The four lists are written
    /// out in both structs: serde's `flatten` would lose `deny_unknown_fields`, and with it the
    /// error that names a mistyped key.
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub prompts: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub tool_annotations: Vec<String>,
}

mod defaults {
    use std::{net::SocketAddr, path::PathBuf};

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:7390".into()
    }
    pub fn fleet_key_prefix() -> String {
        "mcp-gateway".into()
    }
    pub fn fleet_timeout_ms() -> u64 {
        50
    }
    pub fn shutdown_grace_secs() -> u64 {
        30
    }
    pub fn mcp_path() -> String {
        "/mcp".into()
    }
    pub fn max_body_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn idle_timeout_secs() -> u64 {
        30
    }
    pub fn handshake_timeout_secs() -> u64 {
        10
    }
    pub fn caller_header() -> String {
        "X-MCP-Caller".into()
    }
    pub fn identity_header() -> String {
        "X-MCP-Identity".into()
    }
    pub fn identity_lifetime_secs() -> u64 {
        60
    }
    pub fn timeout_secs() -> u64 {
        300
    }
    pub fn requests() -> u32 {
        100
    }
    pub fn window_secs() -> u64 {
        60
    }
    pub fn rate_limit_status() -> u16 {
        429
    }
    pub fn audit_path() -> PathBuf {
        PathBuf::from("logs/mcp-audit.jsonl")
    }
    pub fn pin_path() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/mcp-gateway")
    }
    pub fn packets_per_sec() -> u64 {
        2_000
    }
    pub fn burst() -> u64 {
        4_000
    }
    pub fn syn_per_sec() -> u64 {
        100
    }
    pub fn syn_burst() -> u64 {
        200
    }
    pub fn ipv6_prefix_len() -> u32 {
        64
    }
    pub fn new_sources_per_sec() -> u64 {
        10_000
    }
    pub fn enabled() -> bool {
        true
    }
    pub fn auth_failures() -> u32 {
        10
    }
    pub fn rate_limited() -> u32 {
        30
    }
    pub fn malformed() -> u32 {
        20
    }
    pub fn packet_rate_events() -> u32 {
        3
    }
    pub fn refused_connections() -> u32 {
        50
    }
    pub fn forbidden_calls() -> u32 {
        20
    }
    pub fn block_secs() -> u64 {
        300
    }
    pub fn max_block_secs() -> u64 {
        86_400
    }
    /// An IPv6 customer's usual allocation.
    pub fn blocking_ipv6_prefix_len() -> u32 {
        64
    }
    pub fn escalation_ipv6_blocks() -> u32 {
        8
    }
    /// A site's usual allocation.
    pub fn escalation_ipv6_prefix_len() -> u32 {
        48
    }
    pub fn escalation_ipv4_prefix_len() -> u32 {
        24
    }
}
