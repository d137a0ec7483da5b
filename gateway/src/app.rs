//! Starting and stopping the gateway: audit log, XDP, listener, signals.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use aya::programs::XdpMode;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    audit::AuditLog,
    config::{Settings, XdpModeConfig},
    proxy::{self, Gateway},
    server,
    xdp::Kernel,
};

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let audit = AuditLog::open(&settings.audit_path, settings.audit_fsync).with_context(|| {
        format!(
            "audit.path: cannot open {} for appending",
            settings.audit_path.display()
        )
    })?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", settings.listen))?;
    // Kept alive for as long as the gateway runs; dropping it detaches the program.
    let xdp = attach_xdp(&settings);

    tracing::info!(
        listen = %settings.listen,
        path = %settings.mcp_path,
        upstream = %settings.upstream_url,
        users = settings.users.len(),
        limit = %format!("{}/{}s", settings.default_limit.requests, settings.default_limit.window.as_secs()),
        audit = %settings.audit_path.display(),
        fsync = settings.audit_fsync,
        xdp = xdp.as_ref().map_or("off", |_| "attached"),
        "mcp gateway started"
    );

    let sweep_every = proxy::sweep_interval(&settings);
    let gateway = Arc::new(Gateway::new(settings, audit));
    spawn_reopen_on_sighup(Arc::clone(&gateway))?;
    spawn_limiter_sweep(Arc::clone(&gateway), sweep_every);
    server::serve(listener, gateway, shutdown_signal()?).await;
    drop(xdp);
    Ok(())
}

/// Loads and attaches the XDP program when configured. Failure is loud but not fatal: the
/// proxy still authenticates, limits and audits, only without early drops in the kernel.
fn attach_xdp(settings: &Settings) -> Option<Kernel> {
    let config = &settings.xdp;
    let Some(interface) = config.interface.as_deref().filter(|_| config.enabled) else {
        tracing::warn!(
            "XDP is disabled (xdp.enabled = false): abusive sources are not dropped in the kernel"
        );
        return None;
    };
    let result = Kernel::load(None).and_then(|mut ebpf| {
        let mode = match config.mode {
            XdpModeConfig::Driver => XdpMode::Driver,
            XdpModeConfig::Skb => XdpMode::Skb,
            XdpModeConfig::Auto => match ebpf.attach(interface, XdpMode::Driver) {
                Ok(()) => return Ok((ebpf, "driver")),
                Err(err) => {
                    tracing::info!(interface, error = %err, "driver-mode XDP unavailable; trying generic (skb) mode");
                    XdpMode::Skb
                }
            },
        };
        ebpf.attach(interface, mode)?;
        Ok((ebpf, if mode == XdpMode::Driver { "driver" } else { "skb" }))
    });
    match result {
        Ok((ebpf, mode)) => {
            tracing::info!(interface, mode, "XDP program attached");
            Some(ebpf)
        }
        Err(err) => {
            tracing::error!(interface, error = %err, "XDP NOT ATTACHED: the gateway runs without kernel-level dropping");
            None
        }
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
            gateway.limiter().sweep(every);
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
