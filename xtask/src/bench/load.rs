//! A closed-loop HTTP/1.1 load generator for the scenarios a stock tool cannot drive: a different
//! bearer key per request (many callers) and a chosen source address (inside a network namespace,
//! where it runs as `cargo xtask load` under `ip netns exec`). Prints one JSON summary.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde_json::json;

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// Target URL (http://host:port/path).
    #[arg(long)]
    pub url: String,
    /// More targets (other nodes of a fleet): connections are spread over all, round robin.
    #[arg(long)]
    pub also_url: Vec<String>,
    /// Bearer key; or `--keys-file` with one key per line, used round robin.
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after each key was used once (ignores the duration).
    #[arg(long)]
    pub each_key_once: bool,
    /// Local address to connect from.
    #[arg(long)]
    pub from: Option<IpAddr>,
    /// Request body.
    #[arg(long)]
    pub body: String,
}

impl LoadArgs {
    /// `connections` connections to `url` for 10 s with the benchmarks' `tools/call` body; set a
    /// key source before use.
    pub fn new(url: String, connections: usize) -> Self {
        Self {
            url,
            also_url: Vec::new(),
            key: None,
            keys_file: None,
            connections,
            duration_secs: 10,
            each_key_once: false,
            from: None,
            body: super::CALL_BODY.into(),
        }
    }

    /// The command line that parses back into these arguments (for `xtask load` in a namespace).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--url".into(),
            self.url.clone(),
            "--connections".into(),
            self.connections.to_string(),
            "--duration-secs".into(),
            self.duration_secs.to_string(),
            "--body".into(),
            self.body.clone(),
        ];
        if let Some(key) = &self.key {
            args.extend(["--key".into(), key.clone()]);
        }
        if let Some(file) = &self.keys_file {
            args.extend(["--keys-file".into(), file.display().to_string()]);
        }
        for url in &self.also_url {
            args.extend(["--also-url".into(), url.clone()]);
        }
        if self.each_key_once {
            args.push("--each-key-once".into());
        }
        if let Some(from) = self.from {
            args.extend(["--from".into(), from.to_string()]);
        }
        args
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl LoadResult {
    pub fn from_json(value: &serde_json::Value) -> Self {
        let f = |name: &str| value[name].as_f64().unwrap_or(0.0);
        Self {
            ok: value["ok"].as_u64().unwrap_or(0),
            failed: value["failed"].as_u64().unwrap_or(0),
            rps: f("rps"),
            p50_us: f("p50_us"),
            p99_us: f("p99_us"),
        }
    }
}

pub fn run(args: LoadArgs) -> Result<()> {
    println!("{}", summary(args)?);
    Ok(())
}

/// Generates the load and returns its JSON summary.
pub fn summary(args: LoadArgs) -> Result<serde_json::Value> {
    let keys: Vec<String> = match (&args.key, &args.keys_file) {
        (Some(key), _) => vec![key.clone()],
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .lines()
            .map(str::to_owned)
            .collect(),
        (None, None) => anyhow::bail!("--key or --keys-file is required"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(generate(args, Arc::new(keys)))
}

async fn generate(args: LoadArgs, keys: Arc<Vec<String>>) -> Result<serde_json::Value> {
    let mut targets = Vec::new();
    for url in std::iter::once(&args.url).chain(&args.also_url) {
        let uri: Uri = url.parse().with_context(|| format!("--url {url}"))?;
        let authority = uri.authority().context("--url needs host:port")?.clone();
        let target: SocketAddr = tokio::net::lookup_host(authority.as_str())
            .await?
            .next()
            .context("--url host does not resolve")?;
        targets.push((uri, target));
    }
    let next_key = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let body = Bytes::from(args.body.clone());
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|worker| {
            let (uri, target) = targets[worker % targets.len()].clone();
            let (keys, next_key, failed, body) = (
                Arc::clone(&keys),
                Arc::clone(&next_key),
                Arc::clone(&failed),
                body.clone(),
            );
            let (from, once) = (args.from, args.each_key_once);
            tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new(3)?;
                let mut sender = None;
                loop {
                    let index = next_key.fetch_add(1, Ordering::Relaxed);
                    if (once && index >= keys.len()) || (!once && Instant::now() >= deadline) {
                        break;
                    }
                    let key = &keys[index % keys.len()];
                    if sender.is_none() {
                        sender = connect(target, from).await.ok();
                        if sender.is_none() {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let request = Request::post(uri.clone())
                        .header(
                            "host",
                            uri.authority().map(|a| a.as_str()).unwrap_or("localhost"),
                        )
                        .header("authorization", format!("Bearer {key}"))
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(Full::new(body.clone()))?;
                    let sent = Instant::now();
                    let outcome = match sender.as_mut() {
                        Some(s) => match s.send_request(request).await {
                            Ok(response) => {
                                let ok = response.status().is_success();
                                let read = response.into_body().collect().await.is_ok();
                                ok && read
                            }
                            Err(_) => false,
                        },
                        None => false,
                    };
                    if outcome {
                        let _ = latencies.record(sent.elapsed().as_micros() as u64);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        sender = None;
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3)?;
    for worker in workers {
        all.add(worker.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({
        "ok": all.len(),
        "failed": failed.load(Ordering::Relaxed),
        "secs": secs,
        "rps": all.len() as f64 / secs,
        "p50_us": all.value_at_quantile(0.5),
        "p99_us": all.value_at_quantile(0.99),
        "p999_us": all.value_at_quantile(0.999),
    }))
}

async fn connect(
    target: SocketAddr,
    from: Option<IpAddr>,
) -> Result<http1::SendRequest<Full<Bytes>>> {
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(from) = from {
        socket.bind(SocketAddr::new(from, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(target)).await??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::LoadArgs;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        load: LoadArgs,
    }

    #[test]
    fn to_args_parses_back_to_the_same_arguments() {
        let args = LoadArgs {
            key: Some("k".into()),
            keys_file: Some("keys.txt".into()),
            each_key_once: true,
            from: Some("198.18.0.2".parse().unwrap()),
            duration_secs: 7,
            ..LoadArgs::new("http://198.18.0.1:8080/mcp".into(), 32)
        };
        let parsed =
            Command::parse_from(std::iter::once("load".to_owned()).chain(args.to_args())).load;
        assert_eq!(parsed.to_args(), args.to_args());
        assert_eq!(parsed.connections, 32);
        assert_eq!(parsed.from, args.from);
    }
}
