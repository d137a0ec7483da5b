//! Replacing the running binary without refusing a connection (SIGUSR2, `POST /api/v1/upgrade`,
//! `gateway upgrade`), as nginx's binary upgrade and HAProxy's socket transfer do.
//!
//! The running gateway starts the binary at the path it was started from (the new one, after a
//! package upgrade) with the same arguments, and hands it its listening sockets: MCP, plain and
//! admin listeners stay open across the change, so the kernel keeps queueing connections in
//! their backlogs and no client is refused. The two processes talk over a socket pair:
//!
//! 1. the new process reads the configuration, opens the audit log and loads the XDP program
//!    (pinned maps: blocks carry over) without attaching it, then says `loaded`;
//! 2. the old one stops accepting, ends its enforcer (which detaches its XDP program) and its
//!    admin listener, and says `released`; a new process that fails before `loaded` changes
//!    nothing, the old one serves on;
//! 3. the new one attaches XDP and starts its workers on the inherited sockets; connections that
//!    arrived meanwhile wait in the backlog (a few milliseconds) and are served by it;
//! 4. the old one drains: requests in flight finish, streams get `shutdown_grace_secs`, the audit
//!    log is flushed, and it exits. Under systemd the new process tells it (`MAINPID`) that it is
//!    the service's main process now.
//!
//! Between steps 2 and 3 no XDP program is attached; blocks still hold at accept.

use std::{
    io::{BufRead, BufReader, Write},
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::{net::UnixStream, process::CommandExt},
    },
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};

/// The environment variable that tells a new process which descriptors it inherits.
const INHERITED: &str = "MCP_GATEWAY_INHERITED_FDS";
/// How long the old process waits for the new one to load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The listening sockets a process hands over, as descriptor numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sockets {
    pub main: Vec<RawFd>,
    pub plain: Vec<RawFd>,
    pub admin: Option<RawFd>,
}

impl Sockets {
    /// `main=3,4;plain=;admin=5;control=6`
    fn to_env(&self, control: RawFd) -> String {
        let list = |fds: &[RawFd]| {
            fds.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "main={};plain={};admin={};control={control}",
            list(&self.main),
            list(&self.plain),
            self.admin.map(|fd| fd.to_string()).unwrap_or_default()
        )
    }

    fn from_env(text: &str) -> Option<(Self, RawFd)> {
        let mut sockets = Self::default();
        let mut control = None;
        for part in text.split(';') {
            let (name, value) = part.split_once('=')?;
            let fds: Vec<RawFd> = value
                .split(',')
                .filter(|fd| !fd.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            match name {
                "main" => sockets.main = fds,
                "plain" => sockets.plain = fds,
                "admin" => sockets.admin = fds.first().copied(),
                "control" => control = fds.first().copied(),
                _ => return None,
            }
        }
        Some((sockets, control?))
    }

    fn all(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.main
            .iter()
            .chain(&self.plain)
            .copied()
            .chain(self.admin)
    }
}

/// What a new process got from the one it replaces.
pub struct Inherited {
    pub sockets: Sockets,
    control: BufReader<UnixStream>,
}

impl Inherited {
    /// The sockets handed over, if this process was started by an upgrade. (A later upgrade of
    /// this process sets the variable anew for its successor.)
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(text) = std::env::var_os(INHERITED) else {
            return Ok(None);
        };
        let text = text.to_string_lossy();
        let (sockets, control) =
            Sockets::from_env(&text).with_context(|| format!("{INHERITED}={text}: malformed"))?;
        // SAFETY: the old process passed this descriptor, open and ours alone, for this purpose.
        let control = unsafe { UnixStream::from_raw_fd(control) };
        Ok(Some(Self {
            sockets,
            control: BufReader::new(control),
        }))
    }

    /// The inherited TCP listener `fd`, non-blocking as the workers need it.
    pub fn tcp_listener(fd: RawFd) -> std::io::Result<std::net::TcpListener> {
        // SAFETY: `fd` was handed over as a listening TCP socket and is used once, here.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// The inherited admin listener, a TCP or a Unix socket.
    pub fn admin_listener(fd: RawFd) -> std::io::Result<crate::admin::AdminListener> {
        // SAFETY: `fd` was handed over as the admin listening socket and is used once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = socket2::Socket::from(owned);
        socket.set_nonblocking(true)?;
        let unix = socket.local_addr().is_ok_and(|addr| addr.is_unix());
        let fd = socket.into_raw_fd();
        if unix {
            // SAFETY: as above; the socket is a listening Unix socket.
            let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            Ok(crate::admin::AdminListener::Unix(
                tokio::net::UnixListener::from_std(listener)?,
            ))
        } else {
            // SAFETY: as above; the socket is a listening TCP socket.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            Ok(crate::admin::AdminListener::Tcp(
                tokio::net::TcpListener::from_std(listener)?,
            ))
        }
    }

    /// Tells the old process this one is loaded, and waits until it has let go (stopped
    /// accepting, detached XDP).
    pub async fn take_over(mut self) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || {
            self.control.get_mut().write_all(b"loaded\n")?;
            let mut line = String::new();
            self.control.read_line(&mut line)?;
            if line.trim() != "released" {
                bail!("the old process did not release its sockets (said {line:?})");
            }
            Ok(())
        })
        .await?
    }
}

/// A new process, started and loaded, waiting for the old one to let go.
pub struct Successor {
    child: std::process::Child,
    control: BufReader<UnixStream>,
}

impl Successor {
    /// Starts `binary` with this process's arguments, handing it `sockets`, and waits (off the
    /// runtime's threads) until it has loaded. A new process that exits or fails first is an
    /// error: nothing changed.
    pub async fn start(binary: PathBuf, sockets: Sockets) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || Self::start_blocking(&binary, &sockets)).await?
    }

    fn start_blocking(binary: &std::path::Path, sockets: &Sockets) -> anyhow::Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("cannot make the upgrade socket pair")?;
        let inherited: Vec<RawFd> = sockets.all().chain([theirs.as_raw_fd()]).collect();
        let mut command = Command::new(binary);
        command
            .args(std::env::args_os().skip(1))
            .env(INHERITED, sockets.to_env(theirs.as_raw_fd()));
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and only
        // clears close-on-exec on descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                for fd in &inherited {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        drop(theirs);
        ours.set_read_timeout(Some(LOAD_TIMEOUT))?;
        let mut control = BufReader::new(ours);
        let mut line = String::new();
        let read = control.read_line(&mut line);
        if !matches!(read, Ok(n) if n > 0) || line.trim() != "loaded" {
            let _ = child.kill();
            let status = child
                .wait()
                .map(|status| status.to_string())
                .unwrap_or_default();
            bail!(
                "the new process did not load ({status}{}); this one serves on",
                read.err().map(|err| format!(", {err}")).unwrap_or_default()
            );
        }
        Ok(Self { child, control })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the new process it may attach XDP and start accepting.
    pub fn release(mut self) -> std::io::Result<()> {
        self.control.get_mut().write_all(b"released\n")
    }
}

/// Tells systemd (when it started this process with `NOTIFY_SOCKET`) that this process is the
/// service's main process and ready. Does nothing elsewhere.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &path),
        }
    });
    if let Err(err) = sent {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inherited_sockets_survive_the_environment_round_trip() {
        let sockets = Sockets {
            main: vec![3, 4],
            plain: vec![],
            admin: Some(7),
        };
        let text = sockets.to_env(9);
        assert_eq!(text, "main=3,4;plain=;admin=7;control=9");
        assert_eq!(Sockets::from_env(&text), Some((sockets, 9)));
        assert_eq!(Sockets::from_env("main=x;control=1"), None);
        assert_eq!(Sockets::from_env("main=3"), None, "no control socket");
    }
}
