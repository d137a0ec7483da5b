use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gateway::{
    app, authz, cli,
    config::{Config, Settings},
    demo_upstream, kernel,
    policy::keys,
};
use gateway_ebpf::BlockReason;

/// XDP-accelerated edge gateway for HTTP-transport MCP servers: per-user bearer keys, per-caller
/// rate limits, an audit log of every tool call, and kernel-level drops of abusive sources.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Default, Clone)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// URL of the MCP server (overrides `upstream.url`).
    #[arg(long)]
    upstream_url: Option<String>,
    /// Audit log file (overrides `audit.path`).
    #[arg(long)]
    audit_path: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random key and its SHA-256 for the config.
    GenKey,
    /// Read a key on stdin and print its SHA-256 for `key_sha256`.
    HashKey,
    /// Validate a configuration file and exit; with `--against-running`, also say what a reload
    /// of it would apply to the running gateway and what would need a restart.
    CheckConfig {
        file: PathBuf,
        /// Ask the running gateway (its admin listener, as `[admin]` of FILE says, or `--admin`)
        /// what a reload of FILE would change; nothing is swapped. FILE must be the file it reads.
        #[arg(long)]
        against_running: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Say whether a user may call a tool (get a prompt, read a resource) under a configuration,
    /// and which rule decides. Exit status: 0 allowed, 3 denied.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["tool", "prompt", "resource"])))]
    Explain {
        /// TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long)]
        resource: Option<String>,
        /// The tool's annotations as the upstream lists them, as JSON (`'{"readOnlyHint":true}'`);
        /// without them the tool counts as not listed yet, as in the running gateway.
        #[arg(long)]
        annotations: Option<String>,
        /// Explain for a caller with an access token (`[oauth]`) in these groups (as its
        /// groups claim lists them), instead of a `[[users]]` entry.
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
        /// With a token: the scopes it carries.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a small MCP server (tools `echo` and `add`) to try the gateway with.
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
    },
    #[command(flatten)]
    Operate(cli::Operate),
    /// Inspect or remove the XDP state pinned under bpffs.
    Xdp {
        #[command(subcommand)]
        command: XdpCommand,
        /// The bpffs directory of `xdp.pin_path`.
        #[arg(long, default_value = "/sys/fs/bpf/mcp-gateway", global = true)]
        pin_path: PathBuf,
    },
    /// Run a fleet on this machine: a local redis-server and two gateway nodes sharing limits,
    /// blocks and sessions, in front of the built-in demo MCP server.
    FleetDemo {
        /// The first node's address; the second takes the next port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where logs, audit lines, configurations and Redis's files go.
        #[arg(long, default_value = "logs/fleet-demo")]
        dir: PathBuf,
    },
    /// Run the gateway in front of the built-in demo MCP server, with a fresh key.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Audit log file.
        #[arg(long, default_value = "logs/mcp-audit.jsonl")]
        audit_path: PathBuf,
        /// Do not attach XDP to the loopback interface (it is attached only when root).
        #[arg(long)]
        no_xdp: bool,
        /// Serve HTTPS, with a self-signed certificate for localhost made now and written next to
        /// the audit log.
        #[arg(long)]
        tls: bool,
        /// Also serve the admin listener (health, metrics, `gateway top --admin ADDR`) here.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum XdpCommand {
    /// Print the packet counters and the blocked sources.
    Status,
    /// Remove the pinned maps: the next start begins with no blocks and zero counters.
    Unload,
}

// glibc malloc showed up in profiles of the request path; mimalloc is faster with many threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    init_logging();
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// Hands memory freed since start back to the OS now. mimalloc returns freed pages lazily, when
/// the thread that freed them allocates again; the main thread that parsed the configuration
/// hardly allocates afterwards, so a large one (100,000 users take ~170 MiB to parse) would
/// otherwise stay resident for good.
fn release_unused_memory() {
    // SAFETY: mi_collect has no preconditions; it only frees memory mimalloc holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let settings = settings(&cli.run)?;
            release_unused_memory();
            let reload = cli.run.config.clone().map(|path| {
                let args = cli.run.clone();
                std::sync::Arc::new(app::ConfigSource {
                    // As the admin API reports it: whole, whatever directory asks.
                    path: std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()),
                    read: Box::new(move || {
                        let (config, digest) = Config::read(&path)?;
                        Ok((validate(config, &args)?, digest))
                    }),
                })
            });
            runtime()?.block_on(app::run(settings, reload))
        }
        Some(Command::Explain {
            config,
            user,
            tool,
            prompt,
            resource,
            annotations,
            groups,
            scopes,
            json,
        }) => {
            let settings = load(&config, &RunArgs::default())?;
            let (category, name) = match (tool, prompt, resource) {
                (Some(tool), _, _) => (authz::Category::Tools, tool),
                (_, Some(prompt), _) => (authz::Category::Prompts, prompt),
                (_, _, Some(resource)) => (authz::Category::Resources, resource),
                _ => anyhow::bail!("name a --tool, a --prompt or a --resource"),
            };
            let annotations = annotations
                .map(|text| serde_json::from_str::<serde_json::Value>(&text))
                .transpose()
                .context("--annotations: not a JSON object")?;
            let oauth = settings.policy.oauth.as_deref();
            let explanation = match (oauth, groups) {
                (Some(oauth), Some(groups)) => gateway::oauth::explain(
                    oauth,
                    &user,
                    &groups,
                    &scopes,
                    category,
                    &name,
                    annotations.as_ref(),
                ),
                (None, Some(_)) => anyhow::bail!("--groups: this configuration has no [oauth]"),
                (_, None) => authz::explain(
                    &settings.policy,
                    &user,
                    category,
                    &name,
                    annotations.as_ref(),
                )?,
            };
            if json {
                print_output(&format!("{}\n", explanation.to_json()))?;
            } else {
                print_output(&explanation.to_string())?;
            }
            if !explanation.allowed {
                std::process::exit(3);
            }
            Ok(())
        }
        Some(Command::Operate(command)) => {
            let output = runtime()?.block_on(cli::run(command))?;
            print_output(&output)
        }
        Some(Command::GenKey) => {
            let key = keys::generate()?;
            print_output(&format!(
                "key:        {key}\nkey_sha256: {}\n",
                keys::hash(&key)?
            ))
        }
        Some(Command::HashKey) => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read stdin")?;
            print_output(&format!("{}\n", keys::hash(&input)?))
        }
        Some(Command::CheckConfig {
            file,
            against_running,
            target,
        }) => {
            let settings = load(&file, &RunArgs::default())?;
            let oauth = settings
                .policy
                .oauth
                .as_deref()
                .map_or(String::new(), |oauth| {
                    let issuers: Vec<&str> = oauth
                        .issuers
                        .iter()
                        .map(|issuer| issuer.issuer.as_str())
                        .collect();
                    format!(
                        ", access tokens for {} from {}",
                        oauth.resource,
                        issuers.join(", ")
                    )
                });
            print_output(&format!(
                "{}: ok ({} users{oauth}, upstream {})\n",
                file.display(),
                settings.policy.users.len(),
                settings.serving.upstream.url
            ))?;
            if against_running {
                let target = target.or_config(&file);
                let report = runtime()?.block_on(cli::reload(&target, true))?;
                let running_reads = report["config"].as_str().map(PathBuf::from);
                let same = |a: &std::path::Path, b: &std::path::Path| {
                    std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
                };
                match running_reads {
                    Some(path) if same(&path, &file) => {
                        print_output(&cli::render_reload(&target, &report))?;
                    }
                    other => anyhow::bail!(
                        "the running gateway reads {}, not {}: a reload would not read this file",
                        other.map_or("-".into(), |path| path.display().to_string()),
                        file.display()
                    ),
                }
            }
            Ok(())
        }
        Some(Command::DemoUpstream { listen }) => runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind {listen}"))?;
            print_output(&format!(
                "demo MCP server on http://{}/mcp\n",
                listener.local_addr()?
            ))?;
            demo_upstream::serve(listener).await;
            Ok(())
        }),
        Some(Command::Demo {
            listen,
            audit_path,
            no_xdp,
            tls,
            admin,
        }) => runtime()?.block_on(demo(listen, audit_path, !no_xdp, tls, admin)),
        Some(Command::FleetDemo { listen, dir }) => {
            runtime()?.block_on(gateway::fleet::demo::run(listen, dir))
        }
        Some(Command::Xdp {
            command: XdpCommand::Status,
            pin_path,
        }) => xdp_status(&pin_path),
        Some(Command::Xdp {
            command: XdpCommand::Unload,
            pin_path,
        }) => {
            let removed = kernel::unpin_all(&pin_path)
                .with_context(|| format!("cannot remove pins in {}", pin_path.display()))?;
            let mut output = String::new();
            if removed.is_empty() {
                let _ = writeln!(output, "nothing pinned in {}", pin_path.display());
            }
            for path in removed {
                let _ = writeln!(output, "removed {}", path.display());
            }
            print_output(&output)
        }
    }
}

fn xdp_status(pin_path: &std::path::Path) -> anyhow::Result<()> {
    let (stats, blocks) = kernel::pinned_status(pin_path).with_context(|| {
        format!(
            "no readable XDP state in {} (is the gateway's XDP enabled, and are you root?)",
            pin_path.display()
        )
    })?;
    // (Writing to a String cannot fail.)
    let mut output = String::from("packets by verdict:\n");
    for (verdict, count) in stats {
        let _ = writeln!(output, "  {:<20} {count}", verdict.as_str());
    }
    let now = kernel::monotonic_now_ns();
    let _ = writeln!(output, "blocked sources: {}", blocks.len());
    for (target, entry) in blocks {
        let target = gateway::audit::BlockTarget::from(target).to_string();
        let reason = BlockReason::from_u32(entry.reason).map_or("unknown", BlockReason::as_str);
        let left = match entry.expires_at_ns {
            0 => "permanent".to_owned(),
            at if at > now => format!("{} s left", (at - now) / 1_000_000_000),
            _ => "expired".to_owned(),
        };
        let _ = writeln!(output, "  {target:<43} {reason:<14} {left}");
    }
    print_output(&output)
}

/// Writes a command's output in one write. A reader that has gone (`gateway gen-key | head -1`)
/// is not an error, as for any Unix tool; `println!` would panic on the broken pipe.
fn print_output(text: &str) -> anyhow::Result<()> {
    match write_stdout(text) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
}

fn settings(args: &RunArgs) -> anyhow::Result<Settings> {
    match &args.config {
        Some(path) => load(path, args),
        None => {
            let url = args.upstream_url.clone().context(
                "no configuration: pass --config FILE (see README), or --upstream-url with \
                 MCP_API_KEY / MCP_USER_KEYS set; or try `gateway demo`",
            )?;
            let toml = format!("[upstream]\nurl = {}\n", toml_string(&url));
            validate(Config::from_toml(&toml).map_err(anyhow::Error::msg)?, args)
        }
    }
}

fn load(path: &std::path::Path, args: &RunArgs) -> anyhow::Result<Settings> {
    validate(Config::from_file(path)?, args)
}

/// Applies flag overrides and the environment's keys, then validates.
fn validate(mut config: Config, args: &RunArgs) -> anyhow::Result<Settings> {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = &args.upstream_url {
        config.upstream.url = url.clone();
    }
    if let Some(path) = &args.audit_path {
        config.audit.path = path.clone();
    }
    let api_key = std::env::var("MCP_API_KEY").ok();
    let user_keys = std::env::var("MCP_USER_KEYS").ok();
    Ok(config.validate(api_key.as_deref(), user_keys.as_deref())?)
}

async fn demo(
    listen: SocketAddr,
    audit_path: PathBuf,
    xdp: bool,
    tls: bool,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let upstream = demo_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let key = keys::generate()?;
    // As root, the demo shows the kernel half too: generic XDP on loopback, limited to the
    // demo's port, with nothing pinned.
    // SAFETY: geteuid has no preconditions.
    let xdp = xdp && unsafe { libc::geteuid() } == 0;
    let xdp_section = if xdp {
        "[xdp]\nenabled = true\ninterface = \"lo\"\nmode = \"skb\"\npin_path = \"\"\n"
    } else {
        ""
    };
    let (tls_section, url, cacert) = if tls {
        let cert = demo_certificate(&audit_path)?;
        let section = format!(
            "[tls]\ncert = {}\nkey = {}\n",
            toml_string(&cert.0.to_string_lossy()),
            toml_string(&cert.1.to_string_lossy())
        );
        let cacert = format!(" --cacert {}", cert.0.display());
        (
            section,
            format!("https://localhost:{}/mcp", listen.port()),
            cacert,
        )
    } else {
        (String::new(), format!("http://{listen}/mcp"), String::new())
    };
    let admin_listen = admin.map_or_else(String::new, |addr| addr.to_string());
    let toml = format!(
        "listen = \"{listen}\"\naudit.path = {}\n[upstream]\nurl = \"http://{upstream}/mcp\"\n[[users]]\nname = \"demo\"\nkey_sha256 = \"{}\"\n[admin]\nlisten = \"{admin_listen}\"\n{xdp_section}{tls_section}",
        toml_string(&audit_path.to_string_lossy()),
        keys::hash(&key)?
    );
    let settings = Config::from_toml(&toml)
        .map_err(anyhow::Error::msg)?
        .validate(None, None)?;
    let banner = format!(
        "Demo: the gateway on {url} in front of a built-in MCP server (tools: echo, add).\n\
         Key for user \"demo\" (shown once): {key}\n\
         Call a tool:\n  \
         curl -s{cacert} {url} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
         -H 'Accept: application/json, text/event-stream' \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"hello\"}}}}}}'\n\
         Audit log: {}   (Ctrl-C to stop)\n{}",
        audit_path.display(),
        admin.map_or_else(String::new, |addr| format!(
            "Metrics: http://{addr}/metrics   Live view: gateway top --admin {addr}\n"
        ))
    );
    // One write, so a reader sees the whole banner at once. A reader that has gone (`| head -2`)
    // must not take the gateway down with it, as `println!` would on a broken pipe.
    if let Err(err) = write_stdout(&banner) {
        tracing::warn!("cannot print the demo banner and key to stdout ({err}); serving anyway");
    }
    app::run(settings, None).await
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made now and written beside the audit
/// log (`demo-tls/cert.pem`, `demo-tls/key.pem`, the key readable by its owner only).
fn demo_certificate(audit_path: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = audit_path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("demo-tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .context("cannot make a certificate")?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut file| file.write_all(made.signing_key.serialize_pem().as_bytes()))
        .with_context(|| format!("cannot write {}", key.display()))?;
    Ok((cert, key))
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
