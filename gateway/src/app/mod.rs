//! Starting and stopping the gateway: audit log, XDP, feedback loop, listeners, signals; and
//! reloading its configuration ([`reload`]).

mod reload;

use std::sync::Arc;

use anyhow::Context;
use aya::programs::XdpMode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    audit::AuditLog,
    config::{NodeSettings, Settings, XdpModeConfig},
    kernel::{XdpError, XdpProgram},
    protection,
    proxy::Gateway,
    server,
    tls::Tls,
};

pub use reload::{Reload, ReloadError, ReloadReport, Reloader};

/// Runs the gateway until SIGINT or SIGTERM. SIGHUP reopens the audit log and, with `reload`,
/// reloads the configuration (as `POST /api/v1/reload` on the admin listener does).
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
    let admin_listener = match &node.admin {
        Some(admin) => Some(crate::admin::bind(admin).await?),
        None => None,
    };
    let (program, xdp_mode) = attach_xdp(node);
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
        xdp = xdp_mode,
        admin = %node.admin.as_ref().map_or("none".to_owned(), |admin| admin.listen.to_string()),
        blocking = node.blocking.enabled,
        workers,
        "mcp gateway started"
    );

    let gateway = Arc::new(Gateway::new(settings, audit, protection));
    // The enforcer owns the XDP maps; ending it at shutdown detaches the program (pins stay).
    let enforcer = tokio::spawn(enforcer.run());
    let reloader = Arc::new(Reloader::new(Arc::clone(&gateway), reload));
    spawn_reload_on_sighup(Arc::clone(&gateway), Arc::clone(&reloader))?;
    spawn_limiter_sweep(Arc::clone(&gateway));
    let shutdown = CancellationToken::new();
    if let (Some(listener), Some(settings)) = (admin_listener, &gateway.settings().admin) {
        let admin = crate::admin::Admin::new(
            Arc::clone(&gateway),
            reloader,
            xdp_mode,
            shutdown.clone(),
            settings.token,
        );
        tokio::spawn(crate::admin::serve(listener, Arc::new(admin)));
    }
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

/// Loads, configures and attaches the XDP program when configured, and says how: `driver`,
/// `skb`, `off` (not configured) or `failed`. Failure is loud but not fatal: blocks are then
/// enforced at connection accept, without early drops in the kernel (and `/readyz` says so).
fn attach_xdp(settings: &NodeSettings) -> (Option<XdpProgram>, &'static str) {
    let xdp = &settings.xdp;
    if xdp.interfaces.is_empty() {
        tracing::warn!(
            "XDP is disabled (xdp.enabled = false): blocked sources are refused at connection \
             accept only; floods are not dropped in the kernel"
        );
        return (None, "off");
    }
    let loaded = XdpProgram::load(xdp.pin_dir.as_deref(), xdp.log).and_then(|mut program| {
        program.set_config(&xdp.program)?;
        program.set_allowlist(&xdp.allow)?;
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
            return (None, "failed");
        }
    };
    let mut attached = None;
    for interface in &xdp.interfaces {
        match attach(&mut program, interface, xdp.mode) {
            Ok(mode) => {
                attached = Some(mode);
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
    match attached {
        Some(mode) => (Some(program), mode),
        None => (None, "failed"),
    }
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

/// On SIGHUP: reopens the audit log (rotation) and reloads the configuration ([`Reloader`]).
fn spawn_reload_on_sighup(gateway: Arc<Gateway>, reloader: Arc<Reloader>) -> anyhow::Result<()> {
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            gateway.audit().reopen().await;
            // (Refusals are logged and audited by the reloader.)
            let _ = reloader.reload("signal").await;
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
