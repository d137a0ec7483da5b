//! Reloading the configuration while the gateway runs, on SIGHUP or `POST /api/v1/reload`.
//!
//! A reload reads and validates the whole file first; if anything is wrong nothing changes and
//! the error names the field. Otherwise, in this order: the policy (users, keys, limits, tool
//! limits, grants) is swapped in one step, so a request sees the old policy or the new one, never
//! a mix; the enforcer gets the blocking policy, allowlist and XDP settings; TLS certificates
//! are read again. Connections, streams, limiter windows and sessions carry on (they are kept by
//! name outside the policy). Settings only a restart can change (addresses, upstream, audit
//! file, XDP attachment) are compared and reported, not applied. Every attempt is an audit line
//! with who asked, the outcome and the SHA-256 of the file read.

use std::sync::Arc;

use serde::Serialize;

use crate::{
    audit,
    config::{FleetSettings, NodeSettings, Settings},
    policy::Sha256Digest,
    protection::{Command, ProtectionSettings},
    proxy::Gateway,
};

/// Reads the configuration again (the file and the environment's keys): the settings and the
/// digest of the file they came from.
pub type Reload = Arc<dyn Fn() -> anyhow::Result<(Settings, Sha256Digest)> + Send + Sync>;

/// Applies reloads; one at a time.
pub struct Reloader {
    gateway: Arc<Gateway>,
    read: Option<Reload>,
    /// Held while a reload runs, so two never interleave.
    running: tokio::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub users: usize,
    pub policy_sha256: String,
    /// Settings that differ in the file but need a restart, by field name.
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway was started without --config: there is no file to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(String),
}

impl Reloader {
    pub fn new(gateway: Arc<Gateway>, read: Option<Reload>) -> Self {
        Self {
            gateway,
            read,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads; `by` says who asked (`signal`, `admin 127.0.0.1`), for the audit line.
    pub async fn reload(&self, by: &str) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        let result = self.read_and_apply().await;
        self.gateway.metrics().reload(result.is_ok());
        let line = match &result {
            Ok(report) => {
                tracing::info!(
                    by,
                    users = report.users,
                    policy_sha256 = %report.policy_sha256,
                    restart_needed = ?report.restart_needed,
                    "configuration reloaded"
                );
                audit::operator_line(&audit::OperatorRecord {
                    event: "reload",
                    action: "reload",
                    by,
                    outcome: "applied",
                    target: None,
                    policy_sha256: Some(report.policy_sha256.as_str()),
                    detail: (!report.restart_needed.is_empty())
                        .then(|| format!("needs a restart: {}", report.restart_needed.join(", "))),
                })
            }
            Err(err) => {
                tracing::error!(by, error = %err, "reload refused: the configuration in force stays");
                audit::operator_line(&audit::OperatorRecord {
                    event: "reload",
                    action: "reload",
                    by,
                    outcome: "rejected",
                    target: None,
                    policy_sha256: None,
                    detail: Some(err.to_string()),
                })
            }
        };
        if let Err(err) = self.gateway.audit().write(line).await {
            tracing::error!(error = %err, "could not audit a reload");
        }
        result
    }

    async fn read_and_apply(&self) -> Result<ReloadReport, ReloadError> {
        let read = Arc::clone(self.read.as_ref().ok_or(ReloadError::NoFile)?);
        // Parsing 100,000 users takes a while: not on the runtime's threads.
        let (settings, digest) = tokio::task::spawn_blocking(move || read())
            .await
            .map_err(|err| ReloadError::Invalid(format!("reload failed: {err}")))?
            .map_err(|err| ReloadError::Invalid(format!("{err:#}")))?;
        let gateway = &self.gateway;
        let restart_needed = needs_restart(gateway.settings(), &settings.node);
        let users = settings.policy.users.len();
        gateway.replace_policy(settings.policy);
        let node = settings.node;
        let protection = ProtectionSettings {
            blocking: node.blocking,
            allow: node.xdp.allow,
            xdp: node.xdp.program,
        };
        if gateway
            .protection()
            .command(Command::Reconfigure(Box::new(protection)))
            .await
            .is_err()
        {
            tracing::warn!("the enforcer has stopped: blocking settings not reloaded");
        }
        if let Some(tls) = &gateway.settings().tls {
            match tls.certificates.reload() {
                Ok(count) => tracing::info!(certificates = count, "TLS certificates reloaded"),
                Err(err) => tracing::error!(
                    error = %err,
                    "TLS certificates NOT reloaded: the ones in force stay"
                ),
            }
        }
        Ok(ReloadReport {
            users,
            policy_sha256: digest.to_hex(),
            restart_needed,
        })
    }
}

/// The fields that differ between the settings in force and the file, among those only a
/// restart applies.
fn needs_restart(running: &NodeSettings, file: &NodeSettings) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |field, differs: bool| {
        if differs {
            fields.push(field);
        }
    };
    check("listen", running.listen != file.listen);
    check("plain_listen", running.plain_listen != file.plain_listen);
    check("mcp_path", running.mcp_path != file.mcp_path);
    check("tls", running.tls.is_some() != file.tls.is_some());
    check(
        "proxy_protocol",
        running.proxy_protocol.is_some() != file.proxy_protocol.is_some(),
    );
    check("upstream.url", running.upstream.url != file.upstream.url);
    check("audit.path", running.audit.path != file.audit.path);
    check("audit.fsync", running.audit.fsync != file.audit.fsync);
    check(
        "xdp.interface",
        running.xdp.interfaces != file.xdp.interfaces,
    );
    check("xdp.pin_path", running.xdp.pin_dir != file.xdp.pin_dir);
    check("admin", running.admin != file.admin);
    check("limits", running.limits != file.limits);
    check(
        "max_body_bytes",
        running.max_body_bytes != file.max_body_bytes,
    );
    check(
        "fleet",
        !same_fleet(running.fleet.as_ref(), file.fleet.as_ref()),
    );
    fields
}

/// Whether two `[fleet]` sections say the same.
fn same_fleet(running: Option<&FleetSettings>, file: Option<&FleetSettings>) -> bool {
    match (running, file) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let (login_a, login_b) = (a.redis.redis_settings(), b.redis.redis_settings());
            a.redis_shown == b.redis_shown
                && login_a.username() == login_b.username()
                && login_a.password() == login_b.password()
                && a.redis_ca == b.redis_ca
                && a.key_prefix == b.key_prefix
                && a.node_name == b.node_name
                && a.timeout == b.timeout
                && a.on_unavailable == b.on_unavailable
                && a.session_keys == b.session_keys
        }
        _ => false,
    }
}
