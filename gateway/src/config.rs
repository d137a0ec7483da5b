//! Configuration: a TOML file, overridden by flags and the `MCP_API_KEY` / `MCP_USER_KEYS`
//! environment variables, validated at start with errors that name the field.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::Uri;
use ipnet::IpNet;
use serde::Deserialize;

use crate::auth::Sha256Digest;

/// The configuration file, as written by an operator. Unknown keys are an error, so a typo never
/// silently falls back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port/path` of the MCP server.
    pub url: String,
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
    pub key_sha256: String,
    #[serde(default)]
    pub rate_limit: Option<Limit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// Load the XDP program and attach it to `interface`.
    #[serde(default)]
    pub enabled: bool,
    /// One interface (`"eth0"`) or several (`["eth0", "eth1"]`).
    #[serde(default)]
    pub interface: Option<Interfaces>,
    #[serde(default)]
    pub mode: XdpModeConfig,
    /// Destination ports the program protects (default: the port of `listen`).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// bpffs directory where the maps are pinned, so blocks survive restarts ("" = no pinning).
    #[serde(default = "defaults::pin_path")]
    pub pin_path: PathBuf,
    /// Count what would be dropped without dropping it.
    #[serde(default)]
    pub dry_run: bool,
    /// Show the XDP program's debug log (rate-drop transitions) in the gateway's log.
    #[serde(default)]
    pub log: bool,
    /// Prefixes never dropped or blocked (operators, health checkers, NAT egress pools).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub rate: XdpRateSection,
}

impl Default for XdpSection {
    fn default() -> Self {
        Self {
            enabled: false,
            interface: None,
            mode: XdpModeConfig::default(),
            ports: Vec::new(),
            pin_path: defaults::pin_path(),
            dry_run: false,
            log: false,
            allow: Vec::new(),
            rate: XdpRateSection::default(),
        }
    }
}

/// Per-source limits the XDP program enforces (0 disables a limit).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpRateSection {
    #[serde(default = "defaults::packets_per_sec")]
    pub packets_per_sec: u64,
    #[serde(default = "defaults::burst")]
    pub burst: u64,
    #[serde(default = "defaults::syn_per_sec")]
    pub syn_per_sec: u64,
    #[serde(default = "defaults::syn_burst")]
    pub syn_burst: u64,
    /// IPv6 sources share limits per prefix of this length.
    #[serde(default = "defaults::ipv6_prefix_len")]
    pub ipv6_prefix_len: u32,
    /// New sources given a token bucket per second and CPU (0 = no cap).
    #[serde(default = "defaults::new_sources_per_sec")]
    pub new_sources_per_sec: u64,
}

impl Default for XdpRateSection {
    fn default() -> Self {
        Self {
            packets_per_sec: defaults::packets_per_sec(),
            burst: defaults::burst(),
            syn_per_sec: defaults::syn_per_sec(),
            syn_burst: defaults::syn_burst(),
            ipv6_prefix_len: defaults::ipv6_prefix_len(),
            new_sources_per_sec: defaults::new_sources_per_sec(),
        }
    }
}

/// The feedback loop: sources that misbehave get blocked (in XDP when attached, and at accept).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockingSection {
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Failed authentications from one source within `window_secs` that lead to a block.
    #[serde(default = "defaults::auth_failures")]
    pub auth_failures: u32,
    /// Rate-limited (429) answers to one source within `window_secs` that lead to a block.
    #[serde(default = "defaults::rate_limited")]
    pub rate_limited: u32,
    /// Malformed requests from one source within `window_secs` that lead to a block.
    #[serde(default = "defaults::malformed")]
    pub malformed: u32,
    /// XDP rate-drop events for one source within `window_secs` that lead to a block.
    #[serde(default = "defaults::packet_rate_events")]
    pub packet_rate_events: u32,
    #[serde(default = "defaults::window_secs")]
    pub window_secs: u64,
    /// First block's duration; each repeat offense doubles it, up to `max_block_secs`.
    #[serde(default = "defaults::block_secs")]
    pub block_secs: u64,
    #[serde(default = "defaults::max_block_secs")]
    pub max_block_secs: u64,
}

impl Default for BlockingSection {
    fn default() -> Self {
        Self {
            enabled: defaults::enabled(),
            auth_failures: defaults::auth_failures(),
            rate_limited: defaults::rate_limited(),
            malformed: defaults::malformed(),
            packet_rate_events: defaults::packet_rate_events(),
            window_secs: defaults::window_secs(),
            block_secs: defaults::block_secs(),
            max_block_secs: defaults::max_block_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Interfaces {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Driver mode, falling back to generic (skb) mode where the driver has no XDP support.
    #[default]
    Auto,
    Driver,
    Skb,
}

mod defaults {
    use std::{net::SocketAddr, path::PathBuf};

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
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
    pub fn caller_header() -> String {
        "X-MCP-Caller".into()
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
    pub fn block_secs() -> u64 {
        300
    }
    pub fn max_block_secs() -> u64 {
        86_400
    }
}

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A user the gateway accepts, with the digest of their key.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub key_digest: Sha256Digest,
    pub limit: Option<RateLimit>,
}

/// A request budget: at most `requests` in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub window: Duration,
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub mcp_path: String,
    pub max_body_bytes: usize,
    pub idle_timeout: Duration,
    pub upstream_url: Uri,
    pub caller_header: hyper::header::HeaderName,
    pub upstream_timeout: Duration,
    pub upstream_authorization: Option<hyper::header::HeaderValue>,
    /// The legacy HTTP+SSE endpoint's path, when that transport is served.
    pub legacy_sse_path: Option<std::sync::Arc<str>>,
    pub default_limit: RateLimit,
    /// Limits per caller for `tools/call` of these tools.
    pub tool_limits: std::collections::HashMap<String, RateLimit>,
    pub rate_limit_status: hyper::StatusCode,
    pub audit_path: PathBuf,
    pub audit_fsync: bool,
    pub users: Vec<User>,
    pub xdp: XdpSettings,
    pub blocking: BlockingPolicy,
}

/// Validated `[xdp]` settings.
#[derive(Debug, Clone)]
pub struct XdpSettings {
    /// The interfaces to attach to; empty when XDP is disabled.
    pub interfaces: Vec<String>,
    pub mode: XdpModeConfig,
    pub pin_dir: Option<PathBuf>,
    pub log: bool,
    pub allow: Vec<IpNet>,
    /// What the program's CONFIG map gets.
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
    pub window: Duration,
    pub block: Duration,
    pub max_block: Duration,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML; the error names the key and line (toml's own message).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_owned())
    }

    /// Checks every field and adds the users from `MCP_API_KEY` / `MCP_USER_KEYS` (given as
    /// arguments so tests need not touch the process environment).
    pub fn validate(
        self,
        mcp_api_key: Option<&str>,
        mcp_user_keys: Option<&str>,
    ) -> Result<Settings, ConfigError> {
        if !self.mcp_path.starts_with('/') {
            return Err(invalid("mcp_path", "must start with '/'"));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be at least 1"));
        }
        if self.idle_timeout_secs == 0 {
            return Err(invalid("idle_timeout_secs", "must be at least 1"));
        }
        let upstream_url: Uri = self
            .upstream
            .url
            .parse()
            .map_err(|err| invalid("upstream.url", format!("not a URL: {err}")))?;
        if upstream_url.scheme_str() != Some("http") || upstream_url.authority().is_none() {
            return Err(invalid(
                "upstream.url",
                "must be http://host:port/path (the gateway speaks plain HTTP to its upstream)",
            ));
        }
        let legacy_sse_path = match &self.upstream.sse_path {
            None => None,
            Some(path)
                if !path.starts_with('/')
                    || path.contains(['?', '#'])
                    || path.parse::<Uri>().is_err() =>
            {
                return Err(invalid(
                    "upstream.sse_path",
                    "must be a path starting with '/', without query",
                ));
            }
            Some(path) if *path == self.mcp_path => {
                return Err(invalid(
                    "upstream.sse_path",
                    "must differ from mcp_path (the gateway serves both)",
                ));
            }
            Some(path) => Some(path.as_str().into()),
        };
        let caller_header =
            hyper::header::HeaderName::from_bytes(self.upstream.caller_header.as_bytes())
                .map_err(|_| invalid("upstream.caller_header", "not a valid HTTP header name"))?;
        if caller_header == hyper::header::AUTHORIZATION || caller_header == hyper::header::HOST {
            return Err(invalid(
                "upstream.caller_header",
                "must not be Authorization or Host",
            ));
        }
        if self.upstream.timeout_secs == 0 {
            return Err(invalid("upstream.timeout_secs", "must be at least 1"));
        }
        let upstream_authorization = self
            .upstream
            .authorization
            .as_deref()
            .map(|value| {
                let mut value = hyper::header::HeaderValue::from_str(value)
                    .map_err(|_| invalid("upstream.authorization", "not a valid header value"))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let default_limit = rate_limit(
            "rate_limit",
            Limit {
                requests: self.rate_limit.requests,
                window_secs: self.rate_limit.window_secs,
            },
        )?;
        let tool_limits = self
            .rate_limit
            .tools
            .iter()
            .map(|(tool, limit)| {
                Ok((
                    tool.clone(),
                    rate_limit(&format!("rate_limit.tools.{tool}"), *limit)?,
                ))
            })
            .collect::<Result<_, ConfigError>>()?;
        let rate_limit_status = match self.rate_limit.status {
            429 => hyper::StatusCode::TOO_MANY_REQUESTS,
            200 => hyper::StatusCode::OK,
            other => {
                return Err(invalid(
                    "rate_limit.status",
                    format!("must be 429 or 200, not {other}"),
                ));
            }
        };
        if self.audit.path.as_os_str().is_empty() {
            return Err(invalid("audit.path", "must not be empty"));
        }
        let xdp = xdp_settings(&self.xdp, self.listen.port())?;
        let blocking = blocking_policy(&self.blocking)?;

        let mut users = Vec::with_capacity(self.users.len());
        for (index, user) in self.users.iter().enumerate() {
            let field = |name: &str| format!("users[{index}].{name}");
            check_user_name(&user.name).map_err(|message| invalid(field("name"), message))?;
            let key_digest = Sha256Digest::from_hex(&user.key_sha256).ok_or_else(|| {
                invalid(
                    field("key_sha256"),
                    "must be 64 hex characters (SHA-256 of the key: `gateway hash-key`)",
                )
            })?;
            let limit = user
                .rate_limit
                .map(|limit| rate_limit(&field("rate_limit"), limit))
                .transpose()?;
            users.push(User {
                name: user.name.clone(),
                key_digest,
                limit,
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
        // Sets, not pairwise scans: configs with 100,000 users must load in moments.
        let mut names = std::collections::HashSet::with_capacity(users.len());
        let mut digests = std::collections::HashSet::with_capacity(users.len());
        for user in &users {
            if !names.insert(user.name.as_str()) {
                return Err(invalid(
                    format!("users ({})", user.name),
                    "user name defined twice",
                ));
            }
            // Sha256Digest compares in constant time.
            if !digests.insert(user.key_digest) {
                return Err(invalid(
                    format!("users ({})", user.name),
                    "same key as another user: every user needs their own key",
                ));
            }
        }
        if users.is_empty() {
            return Err(invalid(
                "users",
                "no users: add [[users]] entries, or set MCP_API_KEY or MCP_USER_KEYS",
            ));
        }

        Ok(Settings {
            listen: self.listen,
            mcp_path: self.mcp_path,
            max_body_bytes: self.max_body_bytes,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            upstream_url,
            caller_header,
            upstream_timeout: Duration::from_secs(self.upstream.timeout_secs),
            upstream_authorization,
            legacy_sse_path,
            default_limit,
            tool_limits,
            rate_limit_status,
            audit_path: self.audit.path,
            audit_fsync: self.audit.fsync,
            users,
            xdp,
            blocking,
        })
    }
}

fn xdp_settings(section: &XdpSection, listen_port: u16) -> Result<XdpSettings, ConfigError> {
    use gateway_ebpf::{MAX_BURST, MAX_PORTS, MAX_RATE, XdpConfig};

    let interfaces = match (&section.interface, section.enabled) {
        (_, false) => Vec::new(),
        (Some(Interfaces::One(interface)), true) => vec![interface.clone()],
        (Some(Interfaces::Many(interfaces)), true) => interfaces.clone(),
        (None, true) => Vec::new(),
    };
    if section.enabled && (interfaces.is_empty() || interfaces.iter().any(String::is_empty)) {
        return Err(invalid(
            "xdp.interface",
            "required when xdp.enabled = true: a name (\"eth0\") or a list of names",
        ));
    }
    let ports = if section.ports.is_empty() {
        vec![listen_port]
    } else {
        section.ports.clone()
    };
    if ports.len() > MAX_PORTS || ports.contains(&0) {
        return Err(invalid(
            "xdp.ports",
            format!("1 to {MAX_PORTS} ports, none of them 0"),
        ));
    }
    let allow = section
        .allow
        .iter()
        .enumerate()
        .map(|(index, text)| {
            parse_prefix(text).ok_or_else(|| {
                invalid(
                    format!("xdp.allow[{index}]"),
                    format!("{text:?} is not an address or CIDR prefix"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rate = &section.rate;
    for (name, value, max) in [
        ("packets_per_sec", rate.packets_per_sec, MAX_RATE),
        ("syn_per_sec", rate.syn_per_sec, MAX_RATE),
        ("burst", rate.burst, MAX_BURST),
        ("syn_burst", rate.syn_burst, MAX_BURST),
    ] {
        if value > max {
            return Err(invalid(
                format!("xdp.rate.{name}"),
                format!("at most {max}"),
            ));
        }
    }
    for (name, rate_value, burst) in [
        ("burst", rate.packets_per_sec, rate.burst),
        ("syn_burst", rate.syn_per_sec, rate.syn_burst),
    ] {
        if rate_value > 0 && burst == 0 {
            return Err(invalid(
                format!("xdp.rate.{name}"),
                "must be at least 1 when its rate is set",
            ));
        }
    }
    if !(1..=128).contains(&rate.ipv6_prefix_len) {
        return Err(invalid(
            "xdp.rate.ipv6_prefix_len",
            "must be between 1 and 128",
        ));
    }
    let mut program = XdpConfig {
        flags: if section.dry_run {
            XdpConfig::FLAG_DRY_RUN
        } else {
            0
        },
        ipv6_prefix_len: rate.ipv6_prefix_len,
        packets_per_sec: rate.packets_per_sec,
        burst: rate.burst,
        syn_per_sec: rate.syn_per_sec,
        syn_burst: rate.syn_burst,
        new_sources_per_sec: rate.new_sources_per_sec,
        port_count: ports.len() as u32,
        ..XdpConfig::default()
    };
    program.ports[..ports.len()].copy_from_slice(&ports);
    let pin_dir = (!section.pin_path.as_os_str().is_empty()).then(|| section.pin_path.clone());
    Ok(XdpSettings {
        interfaces,
        mode: section.mode,
        pin_dir,
        log: section.log,
        allow,
        program,
    })
}

/// An address or a CIDR prefix (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
pub fn parse_prefix(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|net| net.trunc())
}

fn blocking_policy(section: &BlockingSection) -> Result<BlockingPolicy, ConfigError> {
    for (name, value) in [
        ("auth_failures", section.auth_failures),
        ("rate_limited", section.rate_limited),
        ("malformed", section.malformed),
        ("packet_rate_events", section.packet_rate_events),
    ] {
        if value == 0 {
            return Err(invalid(format!("blocking.{name}"), "must be at least 1"));
        }
    }
    if section.window_secs == 0 {
        return Err(invalid("blocking.window_secs", "must be at least 1"));
    }
    if section.block_secs == 0 {
        return Err(invalid("blocking.block_secs", "must be at least 1"));
    }
    if section.max_block_secs < section.block_secs {
        return Err(invalid(
            "blocking.max_block_secs",
            "must not be less than block_secs",
        ));
    }
    Ok(BlockingPolicy {
        enabled: section.enabled,
        auth_failures: section.auth_failures,
        rate_limited: section.rate_limited,
        malformed: section.malformed,
        packet_rate_events: section.packet_rate_events,
        window: Duration::from_secs(section.window_secs),
        block: Duration::from_secs(section.block_secs),
        max_block: Duration::from_secs(section.max_block_secs),
    })
}

fn rate_limit(field: &str, limit: Limit) -> Result<RateLimit, ConfigError> {
    let requests = NonZeroU32::new(limit.requests)
        .ok_or_else(|| invalid(format!("{field}.requests"), "must be at least 1"))?;
    if limit.window_secs == 0 || limit.window_secs > 86_400 {
        return Err(invalid(
            format!("{field}.window_secs"),
            "must be between 1 and 86400",
        ));
    }
    Ok(RateLimit {
        requests,
        window: Duration::from_secs(limit.window_secs),
    })
}

fn check_user_name(name: &str) -> Result<(), &'static str> {
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
        key_digest: Sha256Digest::of(key.as_bytes()),
        limit: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    fn settings(toml: &str) -> Result<Settings, ConfigError> {
        Config::from_toml(toml)
            .map_err(|message| ConfigError::Parse {
                path: "test.toml".into(),
                message,
            })?
            .validate(None, None)
    }

    fn error(toml: &str) -> String {
        settings(toml)
            .expect_err("config should be rejected")
            .to_string()
    }

    fn with_user(rest: &str) -> String {
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n{rest}\n[[users]]\nname = \"alice\"\nkey_sha256 = \"{KEY_HASH}\"\n"
        )
    }

    #[test]
    fn the_legacy_sse_path_is_optional_and_checked() {
        assert_eq!(settings(&with_user("")).unwrap().legacy_sse_path, None);
        let legacy = settings(&with_user("sse_path = \"/sse\"")).unwrap();
        assert_eq!(legacy.legacy_sse_path.as_deref(), Some("/sse"));
        for bad in ["sse", "/sse?x=1", "/mcp"] {
            let message = error(&with_user(&format!("sse_path = \"{bad}\"")));
            assert!(message.contains("upstream.sse_path"), "{bad}: {message}");
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let settings = settings(&with_user("")).expect("valid");
        assert_eq!(settings.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(settings.mcp_path, "/mcp");
        assert_eq!(settings.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(settings.idle_timeout, Duration::from_secs(30));
        assert_eq!(settings.caller_header.as_str(), "x-mcp-caller");
        assert_eq!(settings.upstream_timeout, Duration::from_secs(300));
        assert_eq!(settings.default_limit.requests.get(), 100);
        assert_eq!(settings.default_limit.window, Duration::from_secs(60));
        assert_eq!(
            settings.rate_limit_status,
            hyper::StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(settings.audit_path, PathBuf::from("logs/mcp-audit.jsonl"));
        assert!(!settings.audit_fsync);
        assert_eq!(settings.users.len(), 1);
        // XDP is opt-in; its limits protect the listen port; blocking is on.
        assert!(settings.xdp.interfaces.is_empty());
        assert_eq!(settings.xdp.program.port_count, 1);
        assert_eq!(settings.xdp.program.ports[0], 8080);
        assert_eq!(settings.xdp.program.ipv6_prefix_len, 64);
        assert_eq!(
            settings.xdp.pin_dir,
            Some(PathBuf::from("/sys/fs/bpf/mcp-gateway"))
        );
        assert!(settings.blocking.enabled);
        assert_eq!(settings.blocking.auth_failures, 10);
        assert_eq!(settings.blocking.block, Duration::from_secs(300));
    }

    #[test]
    fn xdp_section_fills_the_program_config() {
        let toml = format!(
            "{}[xdp]\nenabled = true\ninterface = \"veth0\"\nports = [443, 8443]\ndry_run = true\nallow = [\"10.1.2.3/8\", \"2001:db8::1\"]\n[xdp.rate]\npackets_per_sec = 50\nburst = 100\n",
            with_user("")
        );
        let settings = settings(&toml).expect("valid");
        let program = settings.xdp.program;
        assert_eq!(&program.ports[..2], &[443, 8443]);
        assert_eq!(program.port_count, 2);
        assert_eq!(program.flags, gateway_ebpf::XdpConfig::FLAG_DRY_RUN);
        assert_eq!((program.packets_per_sec, program.burst), (50, 100));
        let allow: Vec<String> = settings.xdp.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(settings.xdp.interfaces, ["veth0"]);
        let two = format!(
            "{}[xdp]\nenabled = true\ninterface = [\"veth0\", \"veth1\"]\n",
            with_user("")
        );
        assert_eq!(
            self::settings(&two).expect("valid").xdp.interfaces,
            ["veth0", "veth1"]
        );
        let empty = format!("{}[xdp]\nenabled = true\ninterface = []\n", with_user(""));
        assert!(error(&empty).contains("xdp.interface"));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error(&with_user("timeout_secs = 0")).contains("upstream.timeout_secs"));
        assert!(
            error("[upstream]\nurl = \"https://x/mcp\"\n[[users]]\nname=\"a\"\nkey_sha256=\"00\"")
                .contains("upstream.url")
        );
        let bad_hash =
            "[upstream]\nurl = \"http://h:1/\"\n[[users]]\nname = \"a\"\nkey_sha256 = \"abc\"";
        assert!(error(bad_hash).contains("users[0].key_sha256"));
        assert!(
            error(&format!("{}[rate_limit]\nrequests = 0\n", with_user("")))
                .contains("rate_limit.requests")
        );
        assert!(
            error(&format!("{}[rate_limit]\nstatus = 503\n", with_user("")))
                .contains("rate_limit.status")
        );
        // Unknown keys and wrong types name the key, with toml's line information.
        assert!(error(&format!("{}\nlisten_port = 3\n", with_user(""))).contains("listen_port"));
        assert!(error(&format!("listen = \"nowhere\"\n{}", with_user(""))).contains("listen"));
        assert!(
            error(&format!("idle_timeout_secs = 0\n{}", with_user("")))
                .contains("idle_timeout_secs")
        );
        assert!(error("[upstream]\nurl = \"http://h:1/\"\n").contains("users"));
        assert!(
            error(&format!("{}[xdp]\nenabled = true\n", with_user(""))).contains("xdp.interface")
        );
    }

    #[test]
    fn tool_limits_are_read_and_checked() {
        let toml = format!(
            "{}[rate_limit.tools]\nsearch = {{ requests = 5, window_secs = 10 }}\n",
            with_user("")
        );
        let settings = settings(&toml).expect("valid");
        assert_eq!(settings.tool_limits["search"].requests.get(), 5);
        let bad = format!(
            "{}[rate_limit.tools]\nsearch = {{ requests = 0, window_secs = 10 }}\n",
            with_user("")
        );
        assert!(error(&bad).contains("rate_limit.tools.search.requests"));
    }

    #[test]
    fn env_keys_add_users() {
        let config = Config::from_toml("[upstream]\nurl = \"http://h:1/mcp\"\n").unwrap();
        let settings = config
            .validate(
                Some("shared-key-0123456789"),
                Some(r#"{"bob": "bob-key-0123456789", "carol": "carol-key-0123456789"}"#),
            )
            .expect("valid");
        let names: Vec<_> = settings.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["default", "bob", "carol"]);
        assert_eq!(
            settings.users[1].key_digest,
            Sha256Digest::of(b"bob-key-0123456789")
        );

        let config = Config::from_toml("[upstream]\nurl = \"http://h:1/mcp\"\n").unwrap();
        let err = config
            .validate(None, Some("[1,2]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MCP_USER_KEYS"), "{err}");
    }

    #[test]
    fn duplicate_users_and_shared_keys_are_rejected() {
        let twice = format!(
            "{}[[users]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
            with_user(""),
            "ab".repeat(32)
        );
        assert!(error(&twice).contains("defined twice"));
        let same_key = format!(
            "{}[[users]]\nname = \"bob\"\nkey_sha256 = \"{KEY_HASH}\"\n",
            with_user("")
        );
        assert!(error(&same_key).contains("same key"));
    }
}
