//! Configuration: a TOML file ([`file`]), overridden by flags and the `MCP_API_KEY` /
//! `MCP_USER_KEYS` environment variables, validated at start into [`Settings`] with errors that
//! name the field.
//!
//! The validated settings come in three parts: [`NodeSettings`], fixed for the life of the
//! process, and [`ServingSettings`] and [`PolicySettings`], which a reload swaps while requests run
//! (see `policy/`). [`Changes`] says what a reload of a file would apply and what would need a
//! restart.

mod authorization;
mod changes;
mod file;
mod oauth;
mod protection;
mod settings;
mod users;
mod validate;

use std::path::{Path, PathBuf};

pub use changes::{Changes, PolicySummary, reload_applies, restart_needed};
pub use file::{
    AdminSection, AuditConfig, AuthorizationSection, BlockingSection, Config, DefaultDecision,
    EscalationSection, FleetSection, GroupConfig, Interfaces, IntrospectionConfig, IssuerConfig,
    Limit, Limits, OAuthSection, OnUnavailable, RateLimitConfig, TlsSection, ToolScopesConfig,
    UpstreamConfig, UserConfig, XdpModeConfig, XdpRateSection, XdpSection,
};
pub use oauth::{IntrospectionSettings, IssuerSettings, KeySource, OAuthSettings};
pub use protection::parse_prefix;
pub use settings::{
    AdminAddress, AdminSettings, AuditSettings, BlockingPolicy, ConnectionLimits, Escalation,
    FleetSettings, NodeSettings, PolicySettings, RateLimit, RequestLimits, ServingSettings,
    Settings, UpstreamSettings, User, XdpAttachment, XdpPolicy,
};

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

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::read(path).map(|(config, _)| config)
    }

    /// The file's configuration and the SHA-256 of its bytes (which a reload audits).
    pub fn read(path: &Path) -> Result<(Self, crate::digest::Sha256Digest), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        Ok((config, crate::digest::Sha256Digest::of(text.as_bytes())))
    }

    /// Parses TOML; the error names the key and line (toml's own message).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests;
