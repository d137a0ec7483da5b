//! `gateway fleet-demo` (`cargo xtask run -- fleet-demo`): a fleet on one machine to try in a
//! minute. A `redis-server` of its own on a free loopback port, two gateway nodes (this binary,
//! each with its own configuration) in front of the built-in MCP server, one key, and a limit low
//! enough to see it shared: calls alternating between the nodes are refused after the fifth.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{demo_upstream, policy::keys};

/// Calls per minute for the demo's user, across both nodes.
const DEMO_LIMIT: u32 = 5;

/// Kills the demo's processes when it ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the demo until Ctrl-C. `listen` is the first node's address; the second takes the next
/// port. Logs, configurations and Redis's files go to `dir`.
pub async fn run(listen: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let binary = std::env::current_exe().context("cannot tell this program's path")?;
    let mut children = Children(Vec::new());
    let redis_port = free_port()?;
    children.0.push(start_redis(&dir, redis_port).await?);
    let upstream = demo_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let key = keys::generate()?;
    // 256 random bits as 64 hex digits.
    let session_key = keys::hash(&keys::generate()?)?;
    let nodes = [
        listen,
        SocketAddr::new(listen.ip(), listen.port().wrapping_add(1)),
    ];
    for (index, node) in nodes.iter().enumerate() {
        let name = ["edge-a", "edge-b"][index];
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"{node}\"\n\
                 [upstream]\nurl = \"http://{upstream}/mcp\"\n\
                 [audit]\npath = \"{}\"\n\
                 [rate_limit]\nrequests = {DEMO_LIMIT}\nwindow_secs = 60\n\
                 [[users]]\nname = \"demo\"\nkey_sha256 = \"{}\"\n\
                 [admin]\nlisten = \"\"\n\
                 [fleet]\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\nnode_name = \"{name}\"\n\
                 session_keys = [\"{session_key}\"]\n",
                dir.join(format!("{name}-audit.jsonl")).display(),
                keys::hash(&key)?,
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {name}"))?;
        children.0.push(child);
        wait_for(*node, &format!("node {name} (log: {name}.log)")).await?;
    }
    let curl = format!(
        "curl -s -o /dev/null -w '%{{http_code}} ' http://$node/mcp -H 'Authorization: Bearer {key}' \
         -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"hi\"}}}}}}'"
    );
    let mut banner = String::new();
    let _ = write!(
        banner,
        "Fleet demo: two gateway nodes, {} (edge-a) and {} (edge-b), in front of a built-in MCP \
         server, sharing limits, blocks and sessions through Redis on 127.0.0.1:{redis_port}.\n\
         Key for user \"demo\" (shown once): {key}\n\
         The limit is {DEMO_LIMIT} calls a minute across the fleet. Alternate between the nodes:\n  \
         for node in {} {} {} {} {} {} {} {}; do {curl}; done; echo\n\
         prints 200 five times, then 429: one limit, not one per node.\n\
         Logs and audit lines: {}   (Ctrl-C to stop)\n",
        nodes[0],
        nodes[1],
        nodes[0],
        nodes[1],
        nodes[0],
        nodes[1],
        nodes[0],
        nodes[1],
        nodes[0],
        nodes[1],
        dir.display(),
    );
    // One write, so a reader sees the whole banner at once.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot print the banner")?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot wait for SIGTERM")?;
    tokio::select! {
        stop = tokio::signal::ctrl_c() => stop.context("cannot wait for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    drop(children);
    Ok(())
}

async fn start_redis(dir: &Path, port: u16) -> anyhow::Result<Child> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile"])
        .arg(dir.join("redis.log"))
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "redis-server not found: install it (apt-get install redis-server; `cargo xtask \
             setup` does)"
        ),
        Err(err) => return Err(err).context("cannot start redis-server"),
    };
    wait_for(SocketAddr::from(([127, 0, 0, 1], port)), "redis-server").await?;
    Ok(child)
}

/// A loopback port free now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on {addr} within 10 s")
}
