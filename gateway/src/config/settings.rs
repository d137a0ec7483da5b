//! The validated configuration, in three parts: what is fixed for the life of the process
//! ([`NodeSettings`]: sockets, audit file, XDP attachment, fleet), how requests are served
//! ([`ServingSettings`]: path, Origin rules, upstream, certificates, blocking) and who may call
//! ([`PolicySettings`]: users and their keys, limits). A reload swaps the last two whole and
//! reports every difference in the first (`changes.rs`): a setting lives in exactly one of them,
//! so none can change in the file without being either applied or reported.

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroU32,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hyper::{
    StatusCode, Uri,
    header::{HeaderName, HeaderValue},
};
use ipnet::IpNet;

use super::file::{Limits, OnUnavailable, XdpModeConfig};
use crate::{
    authz::Grants,
    digest::Sha256Digest,
    mcp::{origin::AllowedOrigins, sealed::SessionKey},
    server::ProxyProtocol,
    tls::TlsSettings,
    upstream::UpstreamTls,
};

/// The validated configuration the gateway starts with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: NodeSettings,
    pub serving: ServingSettings,
    pub policy: PolicySettings,
}

/// What only a restart (or an upgrade, `gateway upgrade`) changes: the sockets, the audit file,
/// the XDP attachment, the fleet, and the bounds fixed when a worker or a table is made. A reload
/// compares it whole ([`NodeSettings::changes`], `changes.rs`) and names every field that
/// differs; everything else is in [`ServingSettings`] or [`PolicySettings`], which a reload swaps.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    pub listen: SocketAddr,
    /// Plain HTTP beside the TLS listener.
    pub plain_listen: Option<SocketAddr>,
    /// `listen` serves TLS (a `[tls]` section); its certificates and client CA reload
    /// ([`ServingSettings::tls`]).
    pub tls: bool,
    /// Connections to `listen` come from these load balancers, with a PROXY protocol header.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Kept for a restart so far: the route table (issue 31) makes it a route's.
    pub max_body_bytes: usize,
    pub audit: AuditSettings,
    pub xdp: XdpAttachment,
    pub limits: ConnectionLimits,
    /// The operator's listener; `None`: none.
    pub admin: Option<AdminSettings>,
    /// The fleet this node shares state with; `None`: on its own.
    pub fleet: Option<FleetSettings>,
}

/// How requests are served, as far as a reload may change it while connections stay open: the
/// path, Origin rules, bounds read per request, the upstream, the listener's certificates, and the
/// blocking policy. Swapped with the [`PolicySettings`] in one snapshot (`policy/`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServingSettings {
    pub mcp_path: String,
    /// For connections accepted from then on, and every request body read.
    pub idle_timeout: Duration,
    pub allowed_origins: AllowedOrigins,
    /// With [`NodeSettings::tls`]: the certificates, client CA and handshake timeout of new
    /// handshakes.
    pub tls: Option<TlsSettings>,
    pub upstream: Arc<UpstreamSettings>,
    pub limits: RequestLimits,
    pub xdp: XdpPolicy,
    pub blocking: BlockingPolicy,
    /// How long open streams may run on after shutdown (or a takeover) begins.
    pub shutdown_grace: Duration,
}

/// The bounds of `[limits]` fixed when a worker's HTTP server or the session table is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_streams_per_connection: u32,
    pub max_sessions: usize,
    pub max_sessions_per_caller: usize,
}

/// The bounds of `[limits]` read per request or per accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_batch_messages: usize,
    pub max_json_depth: usize,
    pub max_argument_keys: usize,
    pub max_uri_bytes: usize,
    pub max_connections_per_source: usize,
    pub max_in_flight_per_caller: usize,
    pub max_listen_streams_per_caller: usize,
    /// Upstream silence on an SSE answer after which a keep-alive comment goes out.
    pub sse_keepalive: Option<Duration>,
}

impl RequestLimits {
    /// The bounds on parsing a request body.
    pub fn parse(&self) -> crate::mcp::jsonrpc::ParseLimits {
        crate::mcp::jsonrpc::ParseLimits {
            max_batch_messages: self.max_batch_messages,
            max_json_depth: self.max_json_depth,
            max_argument_keys: self.max_argument_keys,
        }
    }
}

impl From<Limits> for (ConnectionLimits, RequestLimits) {
    fn from(limits: Limits) -> Self {
        let Limits {
            max_batch_messages,
            max_json_depth,
            max_argument_keys,
            max_headers,
            max_header_bytes,
            max_uri_bytes,
            max_connections_per_source,
            max_streams_per_connection,
            max_in_flight_per_caller,
            max_listen_streams_per_caller,
            sse_keepalive_secs,
            max_sessions,
            max_sessions_per_caller,
        } = limits;
        (
            ConnectionLimits {
                max_headers,
                max_header_bytes,
                max_streams_per_connection,
                max_sessions,
                max_sessions_per_caller,
            },
            RequestLimits {
                max_batch_messages,
                max_json_depth,
                max_argument_keys,
                max_uri_bytes,
                max_connections_per_source,
                max_in_flight_per_caller,
                max_listen_streams_per_caller,
                sse_keepalive: (sse_keepalive_secs > 0)
                    .then(|| Duration::from_secs(sse_keepalive_secs)),
            },
        )
    }
}

/// Validated `[fleet]` settings.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Where Redis is and how to log in (its `Debug` hides the password).
    pub redis: redis::ConnectionInfo,
    /// A Redis Cluster, found from the URL's node.
    pub cluster: bool,
    /// PEM CAs for `rediss://` instead of the system's.
    pub redis_ca: Option<Vec<u8>>,
    /// What `redis_url` says, without credentials (for logs and `/readyz`).
    pub redis_shown: String,
    pub key_prefix: String,
    pub node_name: Arc<str>,
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
    pub session_keys: Vec<SessionKey>,
}

impl PartialEq for FleetSettings {
    /// Field by field (a new field must be named here: no `..`). `redis::ConnectionInfo` has
    /// no `PartialEq`, so Redis's address and database are compared as `redis_shown` says them,
    /// and the login apart.
    fn eq(&self, other: &Self) -> bool {
        let Self {
            redis,
            cluster,
            redis_ca,
            redis_shown,
            key_prefix,
            node_name,
            timeout,
            on_unavailable,
            session_keys,
        } = self;
        let (login, other_login) = (redis.redis_settings(), other.redis.redis_settings());
        login.username() == other_login.username()
            && login.password() == other_login.password()
            && *cluster == other.cluster
            && *redis_ca == other.redis_ca
            && *redis_shown == other.redis_shown
            && *key_prefix == other.key_prefix
            && *node_name == other.node_name
            && *timeout == other.timeout
            && *on_unavailable == other.on_unavailable
            && *session_keys == other.session_keys
    }
}

/// Validated `[admin]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: AdminAddress,
    /// The admin token's digest; without it only health and metrics are served.
    pub token: Option<Sha256Digest>,
    pub caller_labels: bool,
}

/// Where the admin listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl std::str::FromStr for AdminAddress {
    type Err = std::net::AddrParseError;

    /// A path if it contains a `/`, an address otherwise.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains('/') {
            Ok(Self::Unix(PathBuf::from(text)))
        } else {
            text.parse().map(Self::Tcp)
        }
    }
}

/// Validated `[upstream]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub url: Uri,
    /// Set for an `https://` URL.
    pub tls: Option<UpstreamTls>,
    pub caller_header: HeaderName,
    pub timeout: Duration,
    pub authorization: Option<HeaderValue>,
    /// The legacy HTTP+SSE endpoint's path, when that transport is served.
    pub legacy_sse_path: Option<Arc<str>>,
    /// Signs the identity assertion sent upstream, when one is configured.
    pub identity: Option<Arc<crate::upstream::IdentitySigner>>,
}

impl UpstreamSettings {
    /// `host:port` of the upstream, with the scheme's port when the URL has none (the
    /// configuration accepts only http:// and https:// URLs with a host).
    pub fn address(&self) -> String {
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        format!(
            "{}:{}",
            self.url.host().unwrap_or("localhost"),
            self.url.port_u16().unwrap_or(default_port)
        )
    }
}

/// Validated `[audit]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub path: PathBuf,
    pub fsync: bool,
}

/// What may change while the gateway runs: who may call, and how often.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub users: Vec<User>,
    pub default_limit: RateLimit,
    /// Limits per caller for `tools/call` of these tools.
    pub tool_limits: HashMap<String, RateLimit>,
    pub rate_limit_status: StatusCode,
    /// Access tokens accepted, and from whom; `None`: keys and certificates only.
    pub oauth: Option<Arc<super::OAuthSettings>>,
}

impl PolicySettings {
    /// The longest window any caller or tool has: limiter state idle for this long can go.
    pub fn longest_window(&self) -> Duration {
        self.users
            .iter()
            .filter_map(|user| user.limit)
            .chain(self.tool_limits.values().copied())
            .map(|limit| limit.window)
            .fold(self.default_limit.window, Duration::max)
    }
}

/// A user the gateway accepts, with the digest of their key.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// The digest of the user's key, if the user has one.
    pub key_digest: Option<Sha256Digest>,
    /// The name in a client certificate that identifies the user, if any; with a key, both are
    /// needed.
    pub tls_subject: Option<Box<str>>,
    pub limit: Option<RateLimit>,
    /// What the user may use; `None`: everything (no rule applies, `default = "allow"`).
    pub grants: Option<Arc<Grants>>,
    /// Refused from then on.
    pub expires_at: Option<SystemTime>,
    /// Refused.
    pub disabled: bool,
}

/// A request budget: at most `requests` in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub window: Duration,
}

/// Validated `[xdp]` settings a restart applies: where and how the program is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpAttachment {
    /// The interfaces to attach to; empty when XDP is disabled.
    pub interfaces: Vec<String>,
    pub mode: XdpModeConfig,
    pub pin_dir: Option<PathBuf>,
    pub log: bool,
}

/// Validated `[xdp]` settings a reload applies: what the attached program enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpPolicy {
    pub allow: Vec<IpNet>,
    /// What the program's CONFIG map gets (ports, dry run, rates).
    pub program: gateway_ebpf::XdpConfig,
}

/// Validated `[blocking]` settings: offenses per source within `window` that lead to a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingPolicy {
    pub enabled: bool,
    pub auth_failures: u32,
    pub rate_limited: u32,
    pub malformed: u32,
    pub packet_rate_events: u32,
    pub refused_connections: u32,
    pub forbidden_calls: u32,
    pub window: Duration,
    pub block: Duration,
    pub max_block: Duration,
    /// IPv6 offenders are counted and blocked per prefix of this length.
    pub ipv6_prefix_len: u8,
    pub ipv4_escalation: Option<Escalation>,
    pub ipv6_escalation: Option<Escalation>,
}

/// Blocks inside one network of `prefix_len` bits that get the whole network blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    pub prefix_len: u8,
    pub blocks: usize,
}
