//! Starting and stopping the gateway: audit log, XDP, feedback loop, listeners, signals; and
//! reloading its configuration ([`reload`]).

mod reload;
mod upgrade;

use std::{os::fd::AsRawFd, sync::Arc};

use anyhow::Context;
use aya::programs::XdpMode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    audit::AuditLog,
    config::{NodeSettings, ServingSettings, Settings, XdpModeConfig},
    fleet::{Fleet, NodeLimiter},
    kernel::{XdpError, XdpProgram},
    protection,
    proxy::Gateway,
    server,
    tls::Tls,
};

pub use reload::{ConfigSource, Reload, ReloadError, ReloadReport, Reloader};
use upgrade::{Inherited, Sockets, Successor};

/// Runs the gateway until SIGINT or SIGTERM, or until a new process took over (SIGUSR2,
/// `POST /api/v1/upgrade`: [`upgrade`]). SIGHUP reopens the audit log and, with `reload`,
/// reloads the configuration (as `POST /api/v1/reload` does).
pub async fn run(settings: Settings, reload: Option<Reload>) -> anyhow::Result<()> {
    let (node, serving) = (&settings.node, &settings.serving);
    let inherited = Inherited::from_env()?;
    // The path, not /proc/self/exe: after a package upgrade it names the new binary.
    let binary = std::env::current_exe().context("cannot tell this program's path")?;
    let audit = AuditLog::open(&node.audit.path, node.audit.fsync).with_context(|| {
        format!(
            "audit.path: cannot open {} for appending",
            node.audit.path.display()
        )
    })?;
    let listeners = match &inherited {
        Some(inherited) => inherited_listeners(&inherited.sockets)?,
        None => bind(node)?,
    };
    let main_listener = server::Listener {
        tls: serving
            .tls
            .as_ref()
            .map(Tls::new)
            .transpose()
            .context("tls: cannot set up TLS")?,
        proxy_protocol: node.proxy_protocol.clone(),
    };
    let inherited_admin = inherited.as_ref().and_then(|i| i.sockets.admin);
    let admin_listener = match (&node.admin, inherited_admin) {
        (Some(_), Some(fd)) => {
            Some(Inherited::admin_listener(fd).context("inherited admin listener")?)
        }
        (Some(admin), None) => Some(crate::admin::bind(admin).await?),
        (None, _) => None,
    };
    let sockets = Sockets {
        main: listeners.iter().map(|l| l.main.as_raw_fd()).collect(),
        plain: listeners
            .iter()
            .filter_map(|l| l.plain.as_ref().map(AsRawFd::as_raw_fd))
            .collect(),
        admin: admin_listener.as_ref().map(AsRawFd::as_raw_fd),
    };
    let loaded = load_xdp(node, serving);
    if let Some(inherited) = inherited {
        // The old process stops accepting and detaches its XDP program only now that this one
        // is ready to take over.
        inherited.take_over().await?;
        tracing::info!("took over the listening sockets of the previous process");
    }
    let (program, xdp_mode) = attach_xdp(node, serving, loaded);
    let (fleet, fleet_channel) = match &node.fleet {
        Some(settings) => {
            let (fleet, channel) = Fleet::new(settings)?;
            (Some(fleet), Some(channel))
        }
        None => (None, None),
    };
    let (protection, enforcer) = protection::start(
        serving.blocking.clone(),
        program,
        serving.xdp.allow.clone(),
        audit.clone(),
        fleet_channel.map(|channel| Box::new(channel) as Box<dyn protection::SharedBlocks>),
    );
    let workers = listeners.len();

    let policy = &settings.policy;
    tracing::info!(
        listen = %node.listen,
        tls = node.tls,
        proxy_protocol = node.proxy_protocol.is_some(),
        plain_listen = %node.plain_listen.map_or("none".to_owned(), |addr| addr.to_string()),
        path = %serving.mcp_path,
        upstream = %serving.upstream.url,
        users = policy.users.len(),
        limit = %format!("{}/{}s", policy.default_limit.requests, policy.default_limit.window.as_secs()),
        audit = %node.audit.path.display(),
        fsync = node.audit.fsync,
        xdp = xdp_mode,
        admin = %node.admin.as_ref().map_or("none".to_owned(), |admin| admin.listen.to_string()),
        blocking = serving.blocking.enabled,
        fleet = %node.fleet.as_ref().map_or("none".to_owned(), |fleet| format!("{} as {}", fleet.redis_shown, fleet.node_name)),
        workers,
        pid = std::process::id(),
        "mcp gateway started"
    );

    let gateway = match fleet {
        Some(fleet) => {
            let caller_limiter = NodeLimiter::Fleet(Box::new(fleet.limiter()));
            let tool_limiter = NodeLimiter::Fleet(Box::new(fleet.limiter()));
            let health = Arc::clone(fleet.health());
            let tasks = Arc::new(fleet.tasks());
            tokio::spawn(fleet.start(protection.clone()));
            Gateway::with_limiters(settings, caller_limiter, tool_limiter, audit, protection)
                .in_fleet(health, tasks)
        }
        None => Gateway::new(settings, audit, protection),
    };
    let gateway = Arc::new(gateway);
    // The enforcer owns the XDP maps; ending it detaches the program (pins stay).
    let mut enforcer = Some(tokio::spawn(enforcer.run()));
    let reloader = Arc::new(Reloader::new(
        Arc::clone(&gateway),
        reload,
        main_listener.tls.clone(),
    ));
    spawn_reload_on_sighup(Arc::clone(&gateway), Arc::clone(&reloader))?;
    spawn_limiter_sweep(Arc::clone(&gateway));
    let shutdown = CancellationToken::new();
    let (upgrades, mut upgrade_requests) = tokio::sync::mpsc::channel(1);
    let admin_task = match (admin_listener, &gateway.settings().admin) {
        (Some(listener), Some(settings)) => {
            let admin = crate::admin::Admin::new(
                Arc::clone(&gateway),
                reloader,
                xdp_mode,
                shutdown.clone(),
                upgrades,
                settings.token,
            );
            Some(tokio::spawn(crate::admin::serve(listener, Arc::new(admin))))
        }
        _ => None,
    };
    let threads = server::run_workers(listeners, &main_listener, &gateway, &shutdown)
        .context("cannot start workers")?;
    upgrade::notify_systemd_ready();

    let mut signals = Signals::new()?;
    loop {
        let reply = tokio::select! {
            upgrade = signals.next() => if upgrade { None } else { break },
            Some(reply) = upgrade_requests.recv() => Some(reply),
        };
        tracing::info!(binary = %binary.display(), "upgrade: starting the new process");
        match Successor::start(binary.clone(), sockets.clone()).await {
            Ok(successor) => {
                let pid = successor.pid();
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(pid));
                }
                // Stop accepting (the sockets stay open in the new process), let go of the
                // admin listener and the XDP program, then let the new process in.
                shutdown.cancel();
                if let Some(admin) = &admin_task {
                    admin.abort();
                }
                stop(&mut enforcer).await;
                if let Err(err) = successor.release() {
                    tracing::error!(error = %err, "upgrade: cannot tell the new process to start");
                }
                tracing::info!(new_pid = pid, "upgrade: handed over; draining");
                break;
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "upgrade failed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(format!("{err:#}")));
                }
            }
        }
    }
    tracing::info!("shutting down: finishing open requests");
    shutdown.cancel();
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await?;
    stop(&mut enforcer).await;
    Ok(())
}

/// Ends the enforcer (detaching the XDP program) and waits until it has.
async fn stop(enforcer: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = enforcer.take() {
        task.abort();
        let _ = task.await;
    }
}

/// One listening socket per CPU on `listen` (and `plain_listen`).
fn bind(node: &NodeSettings) -> anyhow::Result<Vec<server::WorkerListeners>> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    server::bind_listeners(node.listen, node.plain_listen, workers).with_context(|| {
        match node.plain_listen {
            Some(plain) => format!(
                "listen, plain_listen: cannot bind {} and {plain}",
                node.listen
            ),
            None => format!("listen: cannot bind {}", node.listen),
        }
    })
}

/// The workers' sockets handed over by the previous process.
fn inherited_listeners(sockets: &Sockets) -> anyhow::Result<Vec<server::WorkerListeners>> {
    let mut plain = sockets.plain.iter();
    sockets
        .main
        .iter()
        .map(|fd| {
            Ok(server::WorkerListeners {
                main: Inherited::tcp_listener(*fd)?,
                plain: plain
                    .next()
                    .map(|fd| Inherited::tcp_listener(*fd))
                    .transpose()?,
            })
        })
        .collect::<std::io::Result<_>>()
        .context("cannot use the inherited listening sockets")
}

/// Loads and configures the XDP program when configured (pinned maps: the blocks of the process
/// before carry over); `None` when XDP is off.
fn load_xdp(
    node: &NodeSettings,
    serving: &ServingSettings,
) -> Option<Result<XdpProgram, XdpError>> {
    let xdp = &node.xdp;
    if xdp.interfaces.is_empty() {
        return None;
    }
    Some(
        XdpProgram::load(xdp.pin_dir.as_deref(), xdp.log).and_then(|mut program| {
            program.set_config(&serving.xdp.program)?;
            program.set_allowlist(&serving.xdp.allow)?;
            Ok(program)
        }),
    )
}

/// Attaches the loaded XDP program, and says how: `driver`, `skb`, `off` (not configured) or
/// `failed`. Failure is loud but not fatal: blocks are then enforced at connection accept,
/// without early drops in the kernel (and `/readyz` says so).
fn attach_xdp(
    settings: &NodeSettings,
    serving: &ServingSettings,
    loaded: Option<Result<XdpProgram, XdpError>>,
) -> (Option<XdpProgram>, &'static str) {
    let xdp = &settings.xdp;
    let Some(loaded) = loaded else {
        tracing::warn!(
            "XDP is disabled (xdp.enabled = false): blocked sources are refused at connection \
             accept only; floods are not dropped in the kernel"
        );
        return (None, "off");
    };
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
                    dry_run = serving.xdp.program.flags & gateway_ebpf::XdpConfig::FLAG_DRY_RUN != 0,
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
            tokio::time::sleep(gateway.in_force().policy.longest_window()).await;
            gateway.sweep_limiters();
        }
    });
}

/// The signals that end this process: SIGTERM and SIGINT (shut down), SIGUSR2 (upgrade).
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    upgrade: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            upgrade: signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?,
        })
    }

    /// The next signal: `true` for an upgrade, `false` for a shutdown.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.terminate.recv() => false,
            _ = self.interrupt.recv() => false,
            _ = self.upgrade.recv() => true,
        }
    }
}
