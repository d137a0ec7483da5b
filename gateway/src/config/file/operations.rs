//! `[admin]` and `[fleet]`: how operators reach the node, and which nodes share its state.

use std::path::PathBuf;

use serde::Deserialize;

/// `[admin]`: the operator's listener (health, metrics, blocks, users, reload), apart from the
/// MCP listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `"127.0.0.1:7390"` (the default: a port no common tool takes, unlike Prometheus's 9090
    /// or Envoy's 9901), another `host:port`, a Unix socket path (`/run/...`), or `""` for no
    /// admin listener.
    #[serde(default = "super::defaults::admin_listen")]
    pub listen: String,
    /// Hex SHA-256 of the admin token (`gateway hash-key`), sent as `Authorization: Bearer`:
    /// needed for everything but `/healthz`, `/readyz` and `/metrics`; without it those are all
    /// the listener serves. Required to listen on an address other than loopback.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Label request metrics with the caller's name (switch off with very many users).
    #[serde(default = "super::defaults::enabled")]
    pub caller_labels: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: super::defaults::admin_listen(),
            key_sha256: None,
            caller_labels: true,
        }
    }
}

/// `[fleet]`: this node is one of several sharing one Redis (7.x, or Valkey).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// `redis://host:6379/0`, or `rediss://` for TLS (verified against the system's CAs).
    pub redis_url: String,
    /// Redis is a Redis Cluster; `redis_url` names one of its nodes, from which the others are
    /// found.
    #[serde(default)]
    pub cluster: bool,
    /// PEM bundle of the CAs that sign Redis's certificate (`rediss://`), instead of the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Redis ACL user (instead of one in the URL).
    #[serde(default)]
    pub username: Option<String>,
    /// Its password (keep this file 0640, as the package installs it).
    #[serde(default)]
    pub password: Option<String>,
    /// Every key the gateway writes starts with this (one Redis may serve several fleets).
    #[serde(default = "super::defaults::fleet_key_prefix")]
    pub key_prefix: String,
    /// This node's name in audit lines and block events; the host name by default.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Longest a request waits for Redis; past it, `on_unavailable` applies.
    #[serde(default = "super::defaults::fleet_timeout_ms")]
    pub timeout_ms: u64,
    /// `"local"` (the default): count in this node while Redis is away; `"refuse"`: answer 503.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Keys sealing the session ids clients see, 64 hex digits each, the same on every node: the
    /// first seals new sessions, every one opens them (add a new key first, drop an old one once
    /// its sessions have ended).
    #[serde(default)]
    pub session_keys: Vec<String>,
}

/// What a fleet node does while Redis does not answer within `timeout_ms`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Count limits and offenses in this node alone (each node then admits up to the limit).
    #[default]
    Local,
    /// Refuse calls with 503 until Redis answers again.
    Refuse,
}
