//! The operator's commands on the same binary, talking to a running gateway's admin listener:
//! `gateway status`, `block`, `allow`, `users`, `callers`, `reload`, and `top`, a live view.
//! Tables for people by default, `--json` for scripts.

mod client;
mod metrics_text;
mod table;
mod top;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

pub use client::AdminClient;
pub use metrics_text::Samples;

/// Where the gateway's admin listener is.
#[derive(Args, Clone, Default)]
pub struct Target {
    /// The admin listener: host:port or a Unix socket path (default: the one `--config` names,
    /// else 127.0.0.1:7390).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The gateway's configuration file, to find its admin listener.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// A file holding the admin token (default: $GATEWAY_ADMIN_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Target {
    /// This target, or where `config`'s `[admin]` says when none is named.
    pub fn or_config(mut self, config: &std::path::Path) -> Self {
        if self.admin.is_none() && self.config.is_none() {
            self.config = Some(config.to_owned());
        }
        self
    }
}

/// The commands that operate a running gateway.
#[derive(Subcommand)]
pub enum Operate {
    /// Readiness, listeners, XDP, users, blocks and request counts of a running gateway.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// List, add or remove blocks (they reach the XDP maps as automatic blocks do).
    Block {
        #[command(subcommand)]
        command: ListCommand,
        #[command(flatten)]
        target: Target,
    },
    /// List, add or remove allowlist entries.
    Allow {
        #[command(subcommand)]
        command: ListCommand,
        #[command(flatten)]
        target: Target,
    },
    /// The users the gateway accepts: limits, expiry, state (never keys).
    Users {
        #[command(flatten)]
        target: Target,
    },
    /// Callers' use of their rate limit in the current window, busiest first.
    Callers {
        #[command(flatten)]
        target: Target,
    },
    /// Reload the gateway's configuration file (as SIGHUP does), and say what it applied and
    /// what needs a restart.
    Reload {
        /// Only say what a reload would apply and what would need a restart; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Replace the running gateway with the binary at the path it was started from (after
    /// installing a new version), without refusing a connection; the old process drains.
    Upgrade {
        #[command(flatten)]
        target: Target,
    },
    /// A live view of requests, refusals, callers, tools, blocks and XDP drops (q to quit).
    Top {
        #[command(flatten)]
        target: Target,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1)]
        interval: u64,
    },
}

#[derive(Subcommand, Clone)]
pub enum ListCommand {
    /// Print the entries.
    List,
    /// Add an address or CIDR prefix.
    Add {
        target: String,
        /// How long (blocks only): `90s`, `10m`, `2h`; default: until removed.
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove an address or CIDR prefix.
    Rm { target: String },
}

/// Runs an operator's command; returns what to print.
pub async fn run(command: Operate) -> anyhow::Result<String> {
    match command {
        Operate::Status { target } => status(&target).await,
        Operate::Block { command, target } => list_command(&target, "blocks", command).await,
        Operate::Allow { command, target } => list_command(&target, "allow", command).await,
        Operate::Users { target } => {
            let users = client(&target)?
                .expect(Method::GET, "/api/v1/users", None)
                .await?;
            Ok(render(&target, &users, table::users))
        }
        Operate::Callers { target } => {
            let callers = client(&target)?
                .expect(Method::GET, "/api/v1/callers", None)
                .await?;
            Ok(render(&target, &callers, table::callers))
        }
        Operate::Reload { dry_run, target } => {
            let report = reload(&target, dry_run).await?;
            Ok(render(&target, &report, table::reload))
        }
        Operate::Upgrade { target } => {
            let answer = client(&target)?
                .expect(Method::POST, "/api/v1/upgrade", None)
                .await?;
            Ok(render(&target, &answer, |answer| {
                format!(
                    "upgraded: process {} took over from {}, which is draining\n",
                    answer["new_pid"], answer["old_pid"]
                )
            }))
        }
        Operate::Top { target, interval } => {
            top::run(client(&target)?, Duration::from_secs(interval.max(1))).await?;
            Ok(String::new())
        }
    }
}

/// Reloads the running gateway's configuration, or with `dry_run` asks what a reload would do.
pub async fn reload(target: &Target, dry_run: bool) -> anyhow::Result<Value> {
    let path = if dry_run {
        "/api/v1/reload?dry_run=true"
    } else {
        "/api/v1/reload"
    };
    client(target)?.expect(Method::POST, path, None).await
}

/// Renders a reload's answer as a table, or JSON.
pub fn render_reload(target: &Target, report: &Value) -> String {
    render(target, report, table::reload)
}

fn client(target: &Target) -> anyhow::Result<AdminClient> {
    AdminClient::new(
        target.admin.as_deref(),
        target.config.as_deref(),
        target.token_file.as_deref(),
    )
}

fn render(target: &Target, value: &Value, table: fn(&Value) -> String) -> String {
    if target.json {
        format!("{value:#}\n")
    } else {
        table(value)
    }
}

async fn list_command(target: &Target, list: &str, command: ListCommand) -> anyhow::Result<String> {
    let client = client(target)?;
    let path = format!("/api/v1/{list}");
    let value = match command {
        ListCommand::List => {
            let entries = client.expect(Method::GET, &path, None).await?;
            let table = if list == "blocks" {
                table::blocks
            } else {
                table::allowlist
            };
            return Ok(render(target, &entries, table));
        }
        ListCommand::Add {
            target: entry,
            ttl,
            reason,
        } => {
            let body = json!({
                "target": entry,
                "ttl_secs": ttl.map(|ttl| Duration::from(ttl).as_secs()),
                "reason": reason,
            });
            client.expect(Method::POST, &path, Some(body)).await?
        }
        ListCommand::Rm { target: entry } => {
            client
                .expect(Method::DELETE, &format!("{path}/{entry}"), None)
                .await?
        }
    };
    Ok(render(target, &value, |value| {
        value
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| {
                        format!(
                            "{k}: {}",
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
                    + "\n"
            })
            .unwrap_or_else(|| format!("{value}\n"))
    }))
}

/// `/readyz`, and with a token `/api/v1/status`; request counts from `/metrics`.
async fn status(target: &Target) -> anyhow::Result<String> {
    let client = client(target)?;
    let (_, ready) = client.call(Method::GET, "/readyz", None).await?;
    let (_, metrics) = client.call_raw(Method::GET, "/metrics", None).await?;
    let samples = Samples::parse(&String::from_utf8_lossy(&metrics));
    let details = match client.call(Method::GET, "/api/v1/status", None).await? {
        (status, value) if status.is_success() => Some(value),
        _ => None,
    };
    let requests: serde_json::Map<String, Value> = samples
        .sum_by("mcp_gateway_requests_total", "decision")
        .into_iter()
        .map(|(decision, count)| (decision, json!(count)))
        .collect();
    let value = json!({"ready": ready, "status": details, "requests": requests});
    Ok(render(target, &value, table::status))
}
