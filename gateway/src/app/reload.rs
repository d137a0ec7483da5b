//! Reloading the configuration while the gateway runs, on SIGHUP or `POST /api/v1/reload`.
//!
//! A reload reads and validates the whole file first; if anything is wrong nothing changes and
//! the error names the field. Otherwise the serving settings (path, Origin rules, upstream,
//! bounds read per request) and the policy (users, keys, limits, grants) are swapped in one step,
//! so a request sees the old configuration or the new one, never a mix; the enforcer gets the
//! blocking policy, allowlist and XDP program settings; the TLS listener the certificates and
//! client CAs (read again from their files). Connections, streams, limiter windows and sessions
//! carry on (they are kept by name outside the snapshot). What only a restart can change
//! (addresses, audit file, XDP attachment, fleet, ...) is compared whole and reported by its
//! keys ([`Changes`]), in the answer, the log line and the audit line. A dry run says all this
//! without swapping anything. Every reload is an audit line with who asked, the outcome and the
//! SHA-256 of the file read.

use std::{path::PathBuf, sync::Arc};

use serde::Serialize;

use crate::{
    audit,
    config::{Changes, Settings},
    policy::Sha256Digest,
    protection::{Command, ProtectionSettings},
    proxy::Gateway,
    tls::Tls,
};

/// Where the configuration comes from, to read it again.
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// Reads the file (and the environment's keys, and the flags that override it): the settings
    /// and the digest of the file they came from.
    pub read: Box<dyn Fn() -> anyhow::Result<(Settings, Sha256Digest)> + Send + Sync>,
}

pub type Reload = Arc<ConfigSource>;

/// Applies reloads; one at a time.
pub struct Reloader {
    gateway: Arc<Gateway>,
    source: Option<Reload>,
    /// The TLS listener's handshakes, which a reload replaces.
    tls: Option<Tls>,
    /// Held while a reload runs, so two never interleave.
    running: tokio::sync::Mutex<()>,
}

/// What a reload did, or with `dry_run`, would do.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub dry_run: bool,
    /// The file read.
    pub config: PathBuf,
    pub users: usize,
    pub policy_sha256: String,
    /// The settings the file changes, by key: those applied, and those that need a restart.
    #[serde(flatten)]
    pub changes: Changes,
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
    pub fn new(gateway: Arc<Gateway>, source: Option<Reload>, tls: Option<Tls>) -> Self {
        Self {
            gateway,
            source,
            tls,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// What a reload would apply and what would need a restart, with nothing swapped.
    pub async fn dry_run(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        let (_, report) = self.read(true).await?;
        Ok(report)
    }

    /// Reloads; `by` says who asked (`signal`, `admin 127.0.0.1`), for the audit line.
    pub async fn reload(&self, by: &str) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        let result = match self.read(false).await {
            Ok((settings, report)) => {
                self.apply(settings).await;
                Ok(report)
            }
            Err(err) => Err(err),
        };
        self.gateway.metrics().reload(result.is_ok());
        let line = match &result {
            Ok(report) => {
                let Changes {
                    applied,
                    restart_needed,
                } = &report.changes;
                tracing::info!(
                    by,
                    users = report.users,
                    policy_sha256 = %report.policy_sha256,
                    ?applied,
                    ?restart_needed,
                    "configuration reloaded"
                );
                if !restart_needed.is_empty() {
                    tracing::warn!(
                        ?restart_needed,
                        "the file changes settings a reload cannot apply: they take effect at the \
                         next restart or upgrade (gateway upgrade)"
                    );
                }
                audit::operator_line(&audit::OperatorRecord {
                    event: "reload",
                    action: "reload",
                    by,
                    outcome: "applied",
                    target: None,
                    policy_sha256: Some(report.policy_sha256.as_str()),
                    detail: Some(describe(&report.changes)),
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

    /// Reads and validates the file, and compares it with what is in force.
    async fn read(&self, dry_run: bool) -> Result<(Settings, ReloadReport), ReloadError> {
        let source = Arc::clone(self.source.as_ref().ok_or(ReloadError::NoFile)?);
        let config = source.path.clone();
        // Parsing 100,000 users takes a while: not on the runtime's threads.
        let (settings, digest) = tokio::task::spawn_blocking(move || (source.read)())
            .await
            .map_err(|err| ReloadError::Invalid(format!("reload failed: {err}")))?
            .map_err(|err| ReloadError::Invalid(format!("{err:#}")))?;
        let in_force = self.gateway.in_force();
        let changes = Changes::between(
            (
                self.gateway.settings(),
                &in_force.serving,
                in_force.policy.summary(),
            ),
            &settings,
        );
        let report = ReloadReport {
            dry_run,
            config,
            users: settings.policy.users.len(),
            policy_sha256: digest.to_hex(),
            changes,
        };
        Ok((settings, report))
    }

    /// Swaps in the file's serving settings and policy, and hands the rest of what a reload
    /// applies to the parts that hold it (the enforcer, the TLS listener).
    async fn apply(&self, settings: Settings) {
        let gateway = &self.gateway;
        let Settings {
            node: _,
            serving,
            policy,
        } = settings;
        let protection = ProtectionSettings {
            blocking: serving.blocking.clone(),
            allow: serving.xdp.allow.clone(),
            xdp: serving.xdp.program,
        };
        if let (Some(tls), Some(settings)) = (&self.tls, &serving.tls) {
            match tls.replace(settings) {
                Ok(()) => tracing::info!(
                    certificates = settings.certificates.sources().len(),
                    client_ca = settings.client_auth.is_some(),
                    "TLS certificates reloaded"
                ),
                Err(err) => tracing::error!(
                    error = %err,
                    "TLS settings NOT reloaded: the ones in force stay"
                ),
            }
        }
        gateway.replace(serving, policy);
        if gateway
            .protection()
            .command(Command::Reconfigure(Box::new(protection)))
            .await
            .is_err()
        {
            tracing::warn!("the enforcer has stopped: blocking settings not reloaded");
        }
    }
}

/// The changes of a reload in words, for its audit line.
fn describe(changes: &Changes) -> String {
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "nothing".to_owned()
        } else {
            keys.join(", ")
        }
    };
    format!(
        "applied: {}; needs a restart: {}",
        list(&changes.applied),
        list(&changes.restart_needed)
    )
}
