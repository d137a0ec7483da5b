//! `[xdp]` and `[blocking]`: how the node protects itself, in the kernel and in its feedback
//! loop.

use std::path::PathBuf;

use serde::Deserialize;

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
    #[serde(default = "super::defaults::pin_path")]
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
            pin_path: super::defaults::pin_path(),
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
    #[serde(default = "super::defaults::packets_per_sec")]
    pub packets_per_sec: u64,
    #[serde(default = "super::defaults::burst")]
    pub burst: u64,
    #[serde(default = "super::defaults::syn_per_sec")]
    pub syn_per_sec: u64,
    #[serde(default = "super::defaults::syn_burst")]
    pub syn_burst: u64,
    /// IPv6 sources share limits per prefix of this length.
    #[serde(default = "super::defaults::ipv6_prefix_len")]
    pub ipv6_prefix_len: u32,
    /// New sources given a token bucket per second and CPU (0 = no cap).
    #[serde(default = "super::defaults::new_sources_per_sec")]
    pub new_sources_per_sec: u64,
}

impl Default for XdpRateSection {
    fn default() -> Self {
        Self {
            packets_per_sec: super::defaults::packets_per_sec(),
            burst: super::defaults::burst(),
            syn_per_sec: super::defaults::syn_per_sec(),
            syn_burst: super::defaults::syn_burst(),
            ipv6_prefix_len: super::defaults::ipv6_prefix_len(),
            new_sources_per_sec: super::defaults::new_sources_per_sec(),
        }
    }
}

/// The feedback loop: sources that misbehave get blocked (in XDP when attached, and at accept).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockingSection {
    #[serde(default = "super::defaults::enabled")]
    pub enabled: bool,
    /// Failed authentications from one source within `window_secs` that lead to a block.
    #[serde(default = "super::defaults::auth_failures")]
    pub auth_failures: u32,
    /// Rate-limited (429) answers to one source within `window_secs` that lead to a block.
    #[serde(default = "super::defaults::rate_limited")]
    pub rate_limited: u32,
    /// Malformed requests from one source within `window_secs` that lead to a block.
    #[serde(default = "super::defaults::malformed")]
    pub malformed: u32,
    /// XDP rate-drop events for one source within `window_secs` that lead to a block.
    #[serde(default = "super::defaults::packet_rate_events")]
    pub packet_rate_events: u32,
    /// Connections refused for `limits.max_connections_per_source` within `window_secs` that
    /// lead to a block.
    #[serde(default = "super::defaults::refused_connections")]
    pub refused_connections: u32,
    /// Calls refused as not granted (`[groups]`, `[[users]] tools`...) within `window_secs` that
    /// lead to a block: one refusal is a caller's mistake, many are probing.
    #[serde(default = "super::defaults::forbidden_calls")]
    pub forbidden_calls: u32,
    #[serde(default = "super::defaults::window_secs")]
    pub window_secs: u64,
    /// First block's duration; each repeat offense doubles it, up to `max_block_secs`.
    #[serde(default = "super::defaults::block_secs")]
    pub block_secs: u64,
    #[serde(default = "super::defaults::max_block_secs")]
    pub max_block_secs: u64,
    /// IPv6 offenses are counted, and blocks set, per prefix of this length (IPv4: per address).
    #[serde(default = "super::defaults::blocking_ipv6_prefix_len")]
    pub ipv6_prefix_len: u32,
    #[serde(default)]
    pub escalation: EscalationSection,
}

/// `[blocking.escalation]`: when this many blocks lie inside one network of the given length,
/// that network is blocked instead (0 blocks = off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSection {
    #[serde(default = "super::defaults::escalation_ipv6_blocks")]
    pub ipv6_blocks: u32,
    #[serde(default = "super::defaults::escalation_ipv6_prefix_len")]
    pub ipv6_prefix_len: u32,
    #[serde(default)]
    pub ipv4_blocks: u32,
    #[serde(default = "super::defaults::escalation_ipv4_prefix_len")]
    pub ipv4_prefix_len: u32,
}

impl Default for EscalationSection {
    fn default() -> Self {
        Self {
            ipv6_blocks: super::defaults::escalation_ipv6_blocks(),
            ipv6_prefix_len: super::defaults::escalation_ipv6_prefix_len(),
            ipv4_blocks: 0,
            ipv4_prefix_len: super::defaults::escalation_ipv4_prefix_len(),
        }
    }
}

impl Default for BlockingSection {
    fn default() -> Self {
        Self {
            enabled: super::defaults::enabled(),
            auth_failures: super::defaults::auth_failures(),
            rate_limited: super::defaults::rate_limited(),
            malformed: super::defaults::malformed(),
            packet_rate_events: super::defaults::packet_rate_events(),
            refused_connections: super::defaults::refused_connections(),
            forbidden_calls: super::defaults::forbidden_calls(),
            window_secs: super::defaults::window_secs(),
            block_secs: super::defaults::block_secs(),
            max_block_secs: super::defaults::max_block_secs(),
            ipv6_prefix_len: super::defaults::blocking_ipv6_prefix_len(),
            escalation: EscalationSection::default(),
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
