//! Starting and stopping the gateway: audit log, XDP, feedback loop, listener, signals.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use aya::programs::XdpMode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    audit::AuditLog,
    blocking,
    config::{Settings, XdpModeConfig},
    proxy::{self, Gateway},
    server,
    xdp::{self, Kernel},
};

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let audit = AuditLog::open(&settings.audit_path, settings.audit_fsync).with_context(|| {
        format!(
            "audit.path: cannot open {} for appending",
            settings.audit_path.display()
        )
    })?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listeners = server::bind(settings.listen, workers)
        .with_context(|| format!("listen: cannot bind {}", settings.listen))?;
    let kernel = attach_xdp(&settings);
    let xdp_state = match &kernel {
        Some(_) => "attached",
        None => "off",
    };
    let (protection, enforcer) = blocking::start(
        settings.blocking.clone(),
        kernel,
        settings.xdp.allow.clone(),
        audit.clone(),
    );

    tracing::info!(
        listen = %settings.listen,
        path = %settings.mcp_path,
        upstream = %settings.upstream_url,
        users = settings.users.len(),
        limit = %format!("{}/{}s", settings.default_limit.requests, settings.default_limit.window.as_secs()),
        audit = %settings.audit_path.display(),
        fsync = settings.audit_fsync,
        xdp = xdp_state,
        blocking = settings.blocking.enabled,
        workers,
        "mcp gateway started"
    );

    let sweep_every = proxy::sweep_interval(&settings);
    let gateway = Arc::new(Gateway::new(settings, audit, protection));
    // The enforcer owns the XDP maps; ending it at shutdown detaches the program (pins stay).
    let enforcer = tokio::spawn(enforcer.run());
    spawn_reopen_on_sighup(Arc::clone(&gateway))?;
    spawn_limiter_sweep(Arc::clone(&gateway), sweep_every);
    let shutdown = CancellationToken::new();
    let threads =
        server::run_workers(listeners, &gateway, &shutdown).context("cannot start workers")?;
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
fn attach_xdp(settings: &Settings) -> Option<Kernel> {
    let xdp = &settings.xdp;
    if xdp.interfaces.is_empty() {
        tracing::warn!(
            "XDP is disabled (xdp.enabled = false): blocked sources are refused at connection \
             accept only; floods are not dropped in the kernel"
        );
        return None;
    }
    let loaded = Kernel::load(xdp.pin_dir.as_deref(), xdp.log).and_then(|mut kernel| {
        kernel.set_config(&xdp.program)?;
        for prefix in &xdp.allow {
            kernel.allow(*prefix)?;
        }
        Ok(kernel)
    });
    let mut kernel = match loaded {
        Ok(kernel) => kernel,
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
        match attach(&mut kernel, interface, xdp.mode) {
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
    (attached > 0).then_some(kernel)
}

/// Attaches in the configured mode; `auto` tries driver mode first. Returns the mode it got.
fn attach(
    kernel: &mut Kernel,
    interface: &str,
    mode: XdpModeConfig,
) -> Result<&'static str, xdp::XdpError> {
    match mode {
        XdpModeConfig::Driver => kernel.attach(interface, XdpMode::Driver).map(|()| "driver"),
        XdpModeConfig::Skb => kernel.attach(interface, XdpMode::Skb).map(|()| "skb"),
        XdpModeConfig::Auto => kernel.attach(interface, XdpMode::Driver).map(|()| "driver").or_else(|err| {
            tracing::info!(interface, error = %err, "driver-mode XDP unavailable; trying generic (skb) mode");
            kernel.attach(interface, XdpMode::Skb).map(|()| "skb")
        }),
    }
}

fn spawn_reopen_on_sighup(gateway: Arc<Gateway>) -> anyhow::Result<()> {
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            gateway.audit().reopen().await;
        }
    });
    Ok(())
}

fn spawn_limiter_sweep(gateway: Arc<Gateway>, every: Duration) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        loop {
            interval.tick().await;
            gateway.sweep_limiters(every);
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
