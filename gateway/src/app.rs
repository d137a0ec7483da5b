//! Starting and stopping the gateway: audit log, XDP, feedback loop, listener, signals.

use std::sync::Arc;

use anyhow::Context;
use aya::programs::XdpMode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    audit::AuditLog,
    config::{NodeSettings, PolicySettings, Settings, XdpModeConfig},
    kernel::{XdpError, XdpProgram},
    protection,
    proxy::Gateway,
    server,
    tls::Tls,
};

/// Reads the policy again (the configuration file and the environment's keys), for a reload.
pub type Reload = Arc<dyn Fn() -> anyhow::Result<PolicySettings> + Send + Sync>;

/// Runs the gateway until SIGINT or SIGTERM. SIGHUP reopens the audit log and, with `reload`,
/// swaps in the policy it reads.
pub async fn run(settings: Settings, reload: Option<Reload>) -> anyhow::Result<()> {
    let node = &settings.node;
    let audit = AuditLog::open(&node.audit.path, node.audit.fsync).with_context(|| {
        format!(
            "audit.path: cannot open {} for appending",
            node.audit.path.display()
        )
    })?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listeners = server::bind_listeners(node.listen, node.plain_listen, workers).with_context(
        || match node.plain_listen {
            Some(plain) => format!(
                "listen, plain_listen: cannot bind {} and {plain}",
                node.listen
            ),
            None => format!("listen: cannot bind {}", node.listen),
        },
    )?;
    let main_listener = server::Listener {
        tls: node
            .tls
            .as_ref()
            .map(Tls::new)
            .transpose()
            .context("tls: cannot set up TLS")?,
        proxy_protocol: node.proxy_protocol.clone(),
    };
    let program = attach_xdp(node);
    let xdp_state = match &program {
        Some(_) => "attached",
        None => "off",
    };
    let (protection, enforcer) = protection::start(
        node.blocking.clone(),
        program,
        node.xdp.allow.clone(),
        audit.clone(),
    );

    let policy = &settings.policy;
    tracing::info!(
        listen = %node.listen,
        tls = node.tls.is_some(),
        proxy_protocol = node.proxy_protocol.is_some(),
        plain_listen = %node.plain_listen.map_or("none".to_owned(), |addr| addr.to_string()),
        path = %node.mcp_path,
        upstream = %node.upstream.url,
        users = policy.users.len(),
        limit = %format!("{}/{}s", policy.default_limit.requests, policy.default_limit.window.as_secs()),
        audit = %node.audit.path.display(),
        fsync = node.audit.fsync,
        xdp = xdp_state,
        blocking = node.blocking.enabled,
        workers,
        "mcp gateway started"
    );

    let gateway = Arc::new(Gateway::new(settings, audit, protection));
    // The enforcer owns the XDP maps; ending it at shutdown detaches the program (pins stay).
    let enforcer = tokio::spawn(enforcer.run());
    spawn_reload_on_sighup(Arc::clone(&gateway), reload)?;
    spawn_limiter_sweep(Arc::clone(&gateway));
    let shutdown = CancellationToken::new();
    let threads = server::run_workers(listeners, &main_listener, &gateway, &shutdown)
        .context("cannot start workers")?;
    shutdown_signal()?.await;
    tracing::info!("shutting down: finishing open requests");
    shutdown.cancel();
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await?;
    enforcer.abort();
    let _ = enforcer.await;
    Ok(())
}

/// Loads, configures and attaches the XDP program when configured. Failure is loud but not
/// fatal: blocks are then enforced at connection accept, without early drops in the kernel.
fn attach_xdp(settings: &NodeSettings) -> Option<XdpProgram> {
    let xdp = &settings.xdp;
    if xdp.interfaces.is_empty() {
        tracing::warn!(
            "XDP is disabled (xdp.enabled = false): blocked sources are refused at connection \
             accept only; floods are not dropped in the kernel"
        );
        return None;
    }
    let loaded = XdpProgram::load(xdp.pin_dir.as_deref(), xdp.log).and_then(|mut program| {
        program.set_config(&xdp.program)?;
        for prefix in &xdp.allow {
            program.allow(*prefix)?;
        }
        Ok(program)
    });
    let mut program = match loaded {
        Ok(program) => program,
        Err(err) => {
            tracing::error!(
                error = %err,
                "XDP NOT ATTACHED: blocked sources are refused at connection accept only; floods \
                 are not dropped in the kernel"
            );
            return None;
        }
    };
    let mut attached = 0;
    for interface in &xdp.interfaces {
        match attach(&mut program, interface, xdp.mode) {
            Ok(mode) => {
                attached += 1;
                tracing::info!(
                    interface = interface.as_str(),
                    mode,
                    pinned = %xdp.pin_dir.as_deref().map_or("no".into(), |dir| dir.display().to_string()),
                    dry_run = xdp.program.flags & gateway_ebpf::XdpConfig::FLAG_DRY_RUN != 0,
                    "XDP program attached"
                );
            }
            Err(err) => tracing::error!(
                interface = interface.as_str(),
                error = %err,
                "XDP NOT ATTACHED to this interface: its traffic is not dropped in the kernel"
            ),
        }
    }
    (attached > 0).then_some(program)
}

/// Attaches in the configured mode; `auto` tries driver mode first. Returns the mode it got.
fn attach(
    program: &mut XdpProgram,
    interface: &str,
    mode: XdpModeConfig,
) -> Result<&'static str, XdpError> {
    match mode {
        XdpModeConfig::Driver => program.attach(interface, XdpMode::Driver).map(|()| "driver"),
        XdpModeConfig::Skb => program.attach(interface, XdpMode::Skb).map(|()| "skb"),
        XdpModeConfig::Auto => program.attach(interface, XdpMode::Driver).map(|()| "driver").or_else(|err| {
            tracing::info!(interface, error = %err, "driver-mode XDP unavailable; trying generic (skb) mode");
            program.attach(interface, XdpMode::Skb).map(|()| "skb")
        }),
    }
}

/// On SIGHUP: reopens the audit log (rotation), reads the TLS certificates again (new connections
/// get the new ones; a bad file keeps the old), and reloads the policy — users, keys, limits, tool
/// limits, groups and grants. A file that does not validate changes nothing: the error names the
/// field, and the gateway runs on with the policy it had. Connections, streams and limiter windows
/// carry on; settings of the node (addresses, upstream, XDP) need a restart.
fn spawn_reload_on_sighup(gateway: Arc<Gateway>, reload: Option<Reload>) -> anyhow::Result<()> {
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            gateway.audit().reopen().await;
            if let Some(tls) = &gateway.settings().tls {
                match tls.certificates.reload() {
                    Ok(count) => tracing::info!(certificates = count, "TLS certificates reloaded"),
                    Err(err) => tracing::error!(
                        error = %err,
                        "TLS certificates NOT reloaded: the ones in force stay"
                    ),
                }
            }
            let Some(reload) = &reload else {
                continue;
            };
            // Parsing 100,000 users takes a while: not on the runtime's threads.
            let reload = Arc::clone(reload);
            let reloaded = tokio::task::spawn_blocking(move || reload())
                .await
                .unwrap_or_else(|err| Err(anyhow::anyhow!("reload failed: {err}")));
            match reloaded {
                Ok(policy) => {
                    let users = policy.users.len();
                    gateway.replace_policy(policy);
                    tracing::info!(users, "policy reloaded");
                }
                Err(err) => tracing::error!(
                    error = %format!("{err:#}"),
                    "reload refused: the configuration does not validate; the current policy stays"
                ),
            }
        }
    });
    Ok(())
}

/// Sweeps idle limiter state as often as the longest window of the current policy (a reload may
/// change it).
fn spawn_limiter_sweep(gateway: Arc<Gateway>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(gateway.policy().longest_window()).await;
            gateway.sweep_limiters();
        }
    });
}

fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
