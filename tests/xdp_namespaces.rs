//! The whole product across a real (virtual) network: two network namespaces made by the test and
//! joined by a veth pair, the gateway attached with XDP to the server side, clients with several
//! source addresses on the other. Needs root; traffic goes only to the namespaces' own addresses
//! (198.18.0.0/16, the benchmarking range, and fd00::/16, unique-local IPv6), and everything is
//! removed when the test ends, passed or failed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e_tests::{
    ALICE_KEY, KillOnDrop, gateway_bin,
    netns::{Namespace, VethPair},
    read_audit, sha256_hex,
};

const SERVER_ADDR: &str = "198.18.0.1";
const SERVER_ADDR_V6: &str = "fd00::1";
const GOOD_CLIENT: &str = "198.18.0.2";
const OFFENDER: &str = "198.18.0.3";
const BYSTANDER: &str = "198.18.0.4";
/// IPv4 offenders in one /24 (apart from the clients above), and a bystander in it.
const V4_NEIGHBOURS: [&str; 3] = ["198.18.1.2", "198.18.1.3", "198.18.1.4"];
const V4_NEIGHBOURS_BYSTANDER: &str = "198.18.1.9";
/// IPv6 clients: several /64s of the site fd00:7::/48, and another site.
const V6_OFFENDER: &str = "fd00:7::2";
const V6_OFFENDER_TOO: &str = "fd00:7::3";
const V6_NEIGHBOUR: &str = "fd00:7::4";
const V6_OTHER_64S: [&str; 2] = ["fd00:7:0:1::2", "fd00:7:0:2::2"];
const V6_SAME_SITE: &str = "fd00:7:0:5::2";
const V6_ALLOWED: &str = "fd00:7:0:9::2";
const V6_OTHER_SITE: &str = "fd00:8::2";
const PORT: u16 = 8080;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

/// The test's hosts: a veth pair between two namespaces, and a temporary directory.
struct TestNet {
    veth: VethPair,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for TestNet {
    type Target = VethPair;
    fn deref(&self) -> &VethPair {
        &self.veth
    }
}

impl TestNet {
    fn new(tag: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every address on-link in a /16 of its family.
        let on_link = |address: &str| format!("{address}/16");
        let clients: Vec<String> = [GOOD_CLIENT, OFFENDER, BYSTANDER]
            .into_iter()
            .chain(V4_NEIGHBOURS)
            .chain([
                V4_NEIGHBOURS_BYSTANDER,
                V6_OFFENDER,
                V6_OFFENDER_TOO,
                V6_NEIGHBOUR,
            ])
            .chain(V6_OTHER_64S)
            .chain([V6_SAME_SITE, V6_ALLOWED, V6_OTHER_SITE])
            .map(on_link)
            .collect();
        let veth = VethPair::create(
            tag,
            &[&on_link(SERVER_ADDR), &on_link(SERVER_ADDR_V6)],
            &clients.iter().map(String::as_str).collect::<Vec<_>>(),
            &dir.path().join("bpffs"),
        )
        .expect("network namespaces (needs root and iproute2)");
        TestNet { veth, dir }
    }

    fn spawn_in_server(&self, args: &[&str], log: &Path) -> Child {
        let log = std::fs::File::create(log).expect("log");
        VethPair::exec_in(&self.server, &gateway_bin())
            .args(args)
            .env("RUST_LOG", "info,gateway_ebpf=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start in the server namespace")
    }

    /// One MCP call with curl from `source` inside the client namespace: the HTTP status, or None
    /// if no answer came (connection dropped).
    fn call(&self, source: &str, key: &str) -> Option<u16> {
        self.call_within(source, key, "5")
    }

    /// A call expected to go unanswered: a second is plenty for a SYN on a local veth.
    fn blocked(&self, source: &str) -> bool {
        self.call_within(source, ALICE_KEY, "1").is_none()
    }

    fn call_within(&self, source: &str, key: &str, max_secs: &str) -> Option<u16> {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--globoff",
            ])
            .args(["--max-time", max_secs, "--interface", source])
            .args([
                "-H",
                &format!("Authorization: Bearer {key}"),
                "-H",
                "Content-Type: application/json",
            ])
            .args([
                "-H",
                "Accept: application/json, text/event-stream",
                "-d",
                CALL,
            ])
            .arg(if source.contains(':') {
                format!("http://[{SERVER_ADDR_V6}]:{PORT}/mcp")
            } else {
                format!("http://{SERVER_ADDR}:{PORT}/mcp")
            })
            .output()
            .expect("curl");
        let code: u16 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        (code != 0).then_some(code)
    }

    /// What `gateway xdp status` prints from the pins.
    fn status(&self) -> String {
        let output = Command::new(gateway_bin())
            .args(["xdp", "status", "--pin-path"])
            .arg(self.pin_dir())
            .output()
            .expect("gateway xdp status");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `gateway xdp status` on the pins: counter by name.
    fn counter(&self, name: &str) -> u64 {
        let text = self.status();
        text.lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(name))
                    .then(|| words.next().and_then(|n| n.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("gateway")
    }
}

/// The first `event: "block"` line of the audit log.
fn block_line(audit: &Path) -> Option<serde_json::Value> {
    read_audit(audit)
        .into_iter()
        .find(|line| line["event"] == "block")
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

fn start_gateway(net: &TestNet, config: &Path, log: &Path) -> KillOnDrop {
    let gateway =
        KillOnDrop(net.spawn_in_server(&["--config", config.to_str().expect("utf-8")], log));
    wait_until("the gateway starts", Duration::from_secs(20), || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("mcp gateway started")
    });
    gateway
}

/// Writes the gateway's config (XDP on the server side of the veth, `extra` appended) and starts
/// the demo MCP server inside the server namespace.
fn prepare(net: &TestNet, mode: &str, extra: &str) -> (PathBuf, PathBuf, KillOnDrop) {
    prepare_listening(net, &format!("{SERVER_ADDR}:{PORT}"), mode, extra)
}

/// [`prepare`], with the gateway listening on `listen`.
fn prepare_listening(
    net: &TestNet,
    listen: &str,
    mode: &str,
    extra: &str,
) -> (PathBuf, PathBuf, KillOnDrop) {
    let dir = net.dir.path();
    // In skb mode the program also goes on the namespace's loopback: several interfaces at once.
    let interfaces = if mode == "skb" {
        format!("[\"{}\", \"lo\"]", net.server_if)
    } else {
        format!("\"{}\"", net.server_if)
    };
    let audit = dir.join("audit.jsonl");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n\
             [audit]\npath = \"{}\"\n\
             [[users]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n\
             [xdp]\nenabled = true\ninterface = {interfaces}\nmode = \"{mode}\"\npin_path = \"{}\"\n\
             {extra}\n",
            audit.display(),
            sha256_hex(ALICE_KEY),
            net.pin_dir().display(),
        ),
    )
    .expect("config");
    let upstream = KillOnDrop(net.spawn_in_server(
        &["demo-upstream", "--listen", "127.0.0.1:3000"],
        &dir.join("upstream.log"),
    ));
    (config, audit, upstream)
}

fn blocks_offender_in_xdp(mode: &str, tag: &str) {
    let net = TestNet::new(tag);
    let dir = net.dir.path();
    let (config, audit, _upstream) = prepare(
        &net,
        mode,
        "[blocking]\nauth_failures = 3\nwindow_secs = 60\nblock_secs = 8",
    );
    let log = dir.join("gateway.log");
    let gateway = start_gateway(&net, &config, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logs().contains(&format!("mode=\"{mode}\"")) || logs().contains(&format!("mode={mode}")),
        "attached in {mode} mode:\n{}",
        logs()
    );
    let attached = logs().matches("XDP program attached").count();
    assert_eq!(attached, if mode == "skb" { 2 } else { 1 }, "{}", logs());

    wait_until("the good client is served", Duration::from_secs(10), || {
        net.call(GOOD_CLIENT, ALICE_KEY) == Some(200)
    });
    assert_eq!(
        net.call(OFFENDER, ALICE_KEY),
        Some(200),
        "the offender is served before it misbehaves"
    );

    // Three failed authentications: the third triggers the block, in XDP.
    for _ in 0..3 {
        assert_eq!(net.call(OFFENDER, "wrong-key-0123456789"), Some(401));
    }
    wait_until("the block is audited", Duration::from_secs(5), || {
        block_line(&audit).is_some()
    });
    let block = block_line(&audit).expect("block line");
    assert_eq!(block["ip"], OFFENDER);
    assert_eq!(block["enforced_in"], "xdp");

    let dropped_before = net.counter("drop_blocked");
    assert!(
        net.blocked(OFFENDER),
        "the blocked source gets no answer, even with a good key"
    );
    assert_eq!(
        net.call(BYSTANDER, ALICE_KEY),
        Some(200),
        "other sources are served"
    );
    assert_eq!(net.call(GOOD_CLIENT, ALICE_KEY), Some(200));
    let dropped = net.counter("drop_blocked") - dropped_before;
    // At least the SYN (and its retransmissions) of the refused connection were dropped in XDP.
    assert!(dropped >= 1, "drop_blocked grew by {dropped}");
    assert!(net.counter("pass") > 0);

    // A restart re-attaches to the pinned maps: the block survives.
    drop(gateway);
    let gateway = start_gateway(&net, &config, &log);
    assert!(
        logs().contains("kept the blocks from the pinned map"),
        "{}",
        logs()
    );
    assert!(net.blocked(OFFENDER), "still blocked after the restart");
    assert_eq!(net.call(BYSTANDER, ALICE_KEY), Some(200));
    assert!(
        net.counter("drop_blocked") > dropped_before + dropped,
        "counters kept across the restart and still counting"
    );

    // The block expires (8 s after it was set) and the source is served again.
    wait_until("the block expires", Duration::from_secs(20), || {
        !net.blocked(OFFENDER)
    });
    assert_eq!(net.call(OFFENDER, ALICE_KEY), Some(200));
    wait_until("the unblock is audited", Duration::from_secs(5), || {
        read_audit(&audit)
            .iter()
            .any(|l| l["event"] == "unblock" && l["ip"] == OFFENDER)
    });
    drop(gateway);
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn driver_mode_xdp_blocks_an_offender_across_a_veth() {
    blocks_offender_in_xdp("driver", "d");
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn skb_mode_xdp_blocks_an_offender_across_a_veth() {
    blocks_offender_in_xdp("skb", "s");
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn packet_floods_are_rate_dropped_and_escalate_to_a_block() {
    let net = TestNet::new("r");
    let (config, audit, _upstream) = prepare(
        &net,
        "driver",
        "log = true\n[xdp.rate]\npackets_per_sec = 20\nburst = 40\n\
         [blocking]\npacket_rate_events = 2\nauth_failures = 100000\nwindow_secs = 60\nblock_secs = 30",
    );
    let log = net.dir.path().join("gateway.log");
    let _gateway = start_gateway(&net, &config, &log);
    wait_until("the good client is served", Duration::from_secs(10), || {
        net.call(GOOD_CLIENT, ALICE_KEY) == Some(200)
    });

    // Bursts of parallel connections from one source, far over 20 packets/s: the program drops
    // the excess and reports the source (at most once a second); the second report blocks it.
    let flood = format!(
        "for i in $(seq 1 40); do curl -s -o /dev/null --max-time 1 --interface {OFFENDER} \
         http://{SERVER_ADDR}:{PORT}/mcp & done; wait"
    );
    wait_until(
        "the flooding source is blocked",
        Duration::from_secs(20),
        || {
            e2e_tests::run_ok("ip", &["netns", "exec", &net.client, "sh", "-c", &flood]);
            block_line(&audit).is_some()
        },
    );
    let block = block_line(&audit).expect("block line");
    assert_eq!(block["ip"], OFFENDER);
    assert_eq!(block["reason"], "packet_rate");
    assert_eq!(block["enforced_in"], "xdp");
    assert!(net.counter("drop_rate") > 0);
    assert!(net.blocked(OFFENDER));
    assert_eq!(
        net.call(BYSTANDER, ALICE_KEY),
        Some(200),
        "other sources are unaffected"
    );
}

/// The `event: "block"` lines of the audit log.
fn block_lines(audit: &Path) -> Vec<serde_json::Value> {
    read_audit(audit)
        .into_iter()
        .filter(|line| line["event"] == "block")
        .collect()
}

/// Three failed authentications from `sources` in turn (the tests' `auth_failures`).
fn fail_auth_three_times(net: &TestNet, sources: &[&str]) {
    for source in sources.iter().cycle().take(3) {
        assert_eq!(
            net.call(source, "wrong-key-0123456789"),
            Some(401),
            "{source}"
        );
    }
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn ipv6_offenders_are_blocked_by_64_and_escalate_to_their_48_around_the_allowlist() {
    let net = TestNet::new("6");
    let (config, audit, _upstream) = prepare_listening(
        &net,
        &format!("[{SERVER_ADDR_V6}]:{PORT}"),
        "driver",
        "allow = [\"fd00:7:0:9::/64\"]\n\
         [blocking]\nauth_failures = 3\nwindow_secs = 60\nblock_secs = 60\n\
         [blocking.escalation]\nipv6_blocks = 3\nipv6_prefix_len = 48",
    );
    let log = net.dir.path().join("gateway.log");
    let _gateway = start_gateway(&net, &config, &log);
    wait_until("an IPv6 client is served", Duration::from_secs(10), || {
        net.call(V6_OTHER_SITE, ALICE_KEY) == Some(200)
    });
    assert_eq!(net.call(V6_NEIGHBOUR, ALICE_KEY), Some(200));

    // Failures spread over two addresses of one /64 add up to one block of the whole /64.
    fail_auth_three_times(&net, &[V6_OFFENDER, V6_OFFENDER_TOO]);
    wait_until("the /64 is blocked", Duration::from_secs(5), || {
        !block_lines(&audit).is_empty()
    });
    let block = &block_lines(&audit)[0];
    assert_eq!(block["prefix"], "fd00:7::/64", "{block}");
    assert_eq!(block["enforced_in"], "xdp");
    let dropped_before = net.counter("drop_prefix");
    assert!(
        net.blocked(V6_NEIGHBOUR),
        "a neighbour in the /64 gets no answer, even with a good key"
    );
    assert!(
        net.counter("drop_prefix") > dropped_before,
        "dropped in XDP"
    );
    assert_eq!(net.call(V6_SAME_SITE, ALICE_KEY), Some(200), "another /64");
    assert!(net.status().contains("fd00:7::/64"), "{}", net.status());

    // Two more /64s of the same /48: three blocks there become one block of the /48, less the
    // allowlisted /64.
    for offender in V6_OTHER_64S {
        fail_auth_three_times(&net, &[offender]);
    }
    wait_until("the /48 is blocked", Duration::from_secs(5), || {
        block_lines(&audit).iter().any(|line| line["folded"] == 3)
    });
    assert!(net.blocked(V6_SAME_SITE), "the whole site is blocked");
    assert_eq!(
        net.call(V6_ALLOWED, ALICE_KEY),
        Some(200),
        "the allowlisted /64 inside it is served"
    );
    assert_eq!(
        net.call(V6_OTHER_SITE, ALICE_KEY),
        Some(200),
        "another site"
    );
    let folded: Vec<String> = read_audit(&audit)
        .iter()
        .filter(|line| line["event"] == "unblock" && line["reason"] == "folded")
        .map(|line| line["prefix"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        folded,
        ["fd00:7::/64", "fd00:7:0:1::/64", "fd00:7:0:2::/64"],
        "the /64 blocks were folded into the /48"
    );
    let status = net.status();
    assert!(!status.contains("fd00:7::/64"), "{status}");
    assert!(
        status.contains("fd00:7::/61"),
        "a piece of the /48: {status}"
    );
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn ipv4_addresses_escalate_to_their_24_only_when_asked() {
    let net = TestNet::new("4");
    let (config, audit, _upstream) = prepare(
        &net,
        "driver",
        "[blocking]\nauth_failures = 3\nwindow_secs = 60\nblock_secs = 60\n\
         [blocking.escalation]\nipv4_blocks = 3\nipv4_prefix_len = 24",
    );
    let log = net.dir.path().join("gateway.log");
    let _gateway = start_gateway(&net, &config, &log);
    wait_until("the bystander is served", Duration::from_secs(10), || {
        net.call(V4_NEIGHBOURS_BYSTANDER, ALICE_KEY) == Some(200)
    });
    let [first, second, third] = V4_NEIGHBOURS;
    for offender in [first, second] {
        fail_auth_three_times(&net, &[offender]);
    }
    wait_until("two addresses are blocked", Duration::from_secs(5), || {
        block_lines(&audit).len() == 2
    });
    assert!(
        block_lines(&audit)
            .iter()
            .all(|line| line["ip"].is_string())
    );
    assert_eq!(
        net.call(V4_NEIGHBOURS_BYSTANDER, ALICE_KEY),
        Some(200),
        "two blocks in a /24 block only themselves"
    );
    fail_auth_three_times(&net, &[third]);
    wait_until("the /24 is blocked", Duration::from_secs(5), || {
        block_lines(&audit)
            .iter()
            .any(|line| line["prefix"] == "198.18.1.0/24" && line["folded"] == 3)
    });
    assert!(net.blocked(V4_NEIGHBOURS_BYSTANDER), "the whole /24");
    assert_eq!(
        net.call(GOOD_CLIENT, ALICE_KEY),
        Some(200),
        "the next /24 is served"
    );
    let status = net.status();
    assert!(status.contains("198.18.1.0/24"), "{status}");
    assert!(!status.contains(first), "folded: {status}");
}

/// `gateway ARGS` inside the server namespace, against the admin listener there.
fn admin_cli(net: &TestNet, args: &[&str]) -> String {
    let output = VethPair::exec_in(&net.server, &gateway_bin())
        .args(args)
        .args(["--admin", "127.0.0.1:9090"])
        .env("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("gateway CLI in the server namespace");
    assert!(
        output.status.success(),
        "gateway {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const ADMIN_TOKEN: &str = "admin-test-token-0123456789abcdef";

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn an_operator_block_through_the_cli_drops_the_source_in_xdp_and_its_removal_lets_it_back() {
    let net = TestNet::new("o");
    let dir = net.dir.path();
    let (config, audit, _upstream) = prepare(
        &net,
        "driver",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:9090\"\nkey_sha256 = \"{}\"",
            sha256_hex(ADMIN_TOKEN)
        ),
    );
    let _gateway = start_gateway(&net, &config, &dir.join("gateway.log"));
    wait_until("the client is served", Duration::from_secs(10), || {
        net.call(GOOD_CLIENT, ALICE_KEY) == Some(200)
    });

    let added = admin_cli(&net, &["block", "add", GOOD_CLIENT, "--reason", "by hand"]);
    assert!(
        added.contains(&format!("blocked: {GOOD_CLIENT}")),
        "{added}"
    );
    let dropped_before = net.counter("drop_blocked");
    assert!(net.blocked(GOOD_CLIENT), "dropped in the kernel");
    assert!(
        net.counter("drop_blocked") > dropped_before,
        "{}",
        net.status()
    );
    assert_eq!(net.call(BYSTANDER, ALICE_KEY), Some(200));
    let block = block_line(&audit).expect("block line");
    assert_eq!(block["enforced_in"], "xdp");
    assert_eq!(block["origin"], "operator");
    let status = admin_cli(&net, &["status"]);
    assert!(
        status.contains("xdp:       ") && status.contains("drop_blocked"),
        "{status}"
    );

    admin_cli(&net, &["block", "rm", GOOD_CLIENT]);
    assert_eq!(net.call(GOOD_CLIENT, ALICE_KEY), Some(200), "served again");
    assert!(!net.status().contains(GOOD_CLIENT), "{}", net.status());
}

/// The capabilities the packaged systemd unit gives the gateway, in setpriv's spelling
/// (`-all,+bpf,+net_admin,...`).
fn unit_capabilities() -> String {
    let unit =
        std::fs::read_to_string(e2e_tests::workspace_root().join("packaging/mcp-gateway.service"))
            .expect("packaging/mcp-gateway.service");
    let caps = unit
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities in the unit");
    std::iter::once("-all".to_owned())
        .chain(
            caps.split_whitespace()
                .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn as_a_user_with_only_the_units_capabilities_the_gateway_attaches_xdp_and_serves() {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let net = TestNet::new("p");
    let dir = net.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // What the service user owns: its log directory and its pin directory (the unit makes both).
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::create_dir_all(net.pin_dir()).unwrap();
    std::os::unix::fs::chown(net.pin_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
    let binary = dir.join("mcp-gateway");
    std::fs::copy(gateway_bin(), &binary).unwrap();
    let (config, _audit, _upstream) = prepare(&net, "driver", "");
    let config_text = std::fs::read_to_string(&config).unwrap().replace(
        &dir.join("audit.jsonl").display().to_string(),
        &logs.join("audit.jsonl").display().to_string(),
    );
    std::fs::write(&config, config_text).unwrap();

    let caps = unit_capabilities();
    assert_eq!(caps, "-all,+bpf,+net_admin,+perfmon,+net_bind_service");
    let log = dir.join("gateway.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let gateway = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &net.server, "setpriv"])
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .args([
                &format!("--inh-caps={caps}"),
                &format!("--ambient-caps={caps}"),
                &format!("--bounding-set={caps}"),
                "--no-new-privs",
            ])
            .arg(&binary)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("setpriv (util-linux)"),
    );
    let logs_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the gateway starts", Duration::from_secs(20), || {
        logs_text().contains("mcp gateway started")
    });
    assert!(
        logs_text().contains("XDP program attached"),
        "{}",
        logs_text()
    );
    assert!(!logs_text().contains("XDP NOT ATTACHED"), "{}", logs_text());
    wait_until("the client is served", Duration::from_secs(10), || {
        net.call(GOOD_CLIENT, ALICE_KEY) == Some(200)
    });
    // The process really runs as nobody, with no capability beyond the unit's.
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary))
        .expect("the gateway's process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains(&format!("Uid:\t{NOBODY}\t{NOBODY}")),
        "{status}"
    );
    assert!(status.contains("CapEff:\t000000c000001400"), "{status}");
    // Offenders are still dropped in the kernel by the unprivileged gateway.
    for _ in 0..10 {
        net.call(OFFENDER, "wrong-key-0123456789");
    }
    wait_until("the offender is dropped", Duration::from_secs(5), || {
        net.blocked(OFFENDER)
    });
    drop(gateway);
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn an_upgrade_hands_over_the_pinned_blocks_and_the_new_process_attaches_xdp() {
    let net = TestNet::new("u");
    let dir = net.dir.path();
    let (config, _audit, _upstream) = prepare(
        &net,
        "driver",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:9090\"\nkey_sha256 = \"{}\"",
            sha256_hex(ADMIN_TOKEN)
        ),
    );
    let log = dir.join("gateway.log");
    let old = start_gateway(&net, &config, &log);
    wait_until("the client is served", Duration::from_secs(10), || {
        net.call(GOOD_CLIENT, ALICE_KEY) == Some(200)
    });
    admin_cli(&net, &["block", "add", OFFENDER]);
    assert!(net.blocked(OFFENDER));

    let answer: serde_json::Value =
        serde_json::from_str(&admin_cli(&net, &["upgrade", "--json"])).expect("JSON");
    let new_pid = answer["new_pid"].as_i64().expect("new pid") as i32;
    let _new = e2e_tests::KillPid(new_pid);
    wait_until(
        "the new process attached XDP",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("XDP program attached")
                .count()
                == 2
        },
    );
    let status: serde_json::Value =
        serde_json::from_str(&admin_cli(&net, &["status", "--json"])).expect("JSON");
    assert_eq!(status["status"]["pid"].as_i64(), Some(i64::from(new_pid)));
    assert_eq!(status["status"]["xdp"], "driver");
    let dropped_before = net.counter("drop_blocked");
    assert!(
        net.blocked(OFFENDER),
        "the block carried over into the new process's program"
    );
    assert!(net.counter("drop_blocked") > dropped_before);
    assert_eq!(net.call(GOOD_CLIENT, ALICE_KEY), Some(200));
    let list = admin_cli(&net, &["block", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(OFFENDER) && l.contains("previous_run")),
        "{list}"
    );
    drop(old);
}

/// Three fleet nodes, each an edge host of its own (server namespace, clients' namespace, XDP on
/// its interface, its own pinned maps), sharing a Redis in a fourth namespace. Failed
/// authentications from one source, spread over the three nodes, reach the threshold together;
/// the block then drops the source in every node's XDP program, while others are served.
#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn a_block_decided_by_the_fleet_drops_the_source_in_every_nodes_xdp() {
    let nets: Vec<TestNet> = (0..3)
        .map(|node| TestNet::new(&format!("f{node}")))
        .collect();
    let redis_host = Namespace::create("redis").expect("the Redis host's namespace");
    for (node, net) in nets.iter().enumerate() {
        redis_host
            .link_to(
                &net.server,
                node,
                &format!("198.19.{node}.1/24"),
                &format!("198.19.{node}.2/24"),
            )
            .expect("link to the Redis host");
    }
    let redis_dir = tempfile::tempdir().expect("tempdir");
    let redis_log = redis_dir.path().join("redis.log");
    let _redis = KillOnDrop(
        redis_host
            .exec("redis-server")
            .args([
                "--port",
                "6390",
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no", "--logfile"])
            .arg(&redis_log)
            .arg("--dir")
            .arg(redis_dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_until("Redis is up", Duration::from_secs(10), || {
        std::fs::read_to_string(&redis_log)
            .unwrap_or_default()
            .contains("Ready to accept connections")
    });
    let mut running = Vec::new();
    for (node, net) in nets.iter().enumerate() {
        let (config, audit, upstream) = prepare(
            net,
            "driver",
            &format!(
                "[blocking]\nauth_failures = 6\nwindow_secs = 60\nblock_secs = 120\n\
                 [fleet]\nredis_url = \"redis://198.19.{node}.1:6390/0\"\nnode_name = \"edge-{node}\"\n\
                 session_keys = [\"{}\"]\n",
                "ab".repeat(32)
            ),
        );
        let log = net.dir.path().join("gateway.log");
        let gateway = start_gateway(net, &config, &log);
        wait_until(
            "the node follows the fleet",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("following block events")
            },
        );
        running.push((gateway, upstream, audit));
    }
    for net in &nets {
        wait_until("the good client is served", Duration::from_secs(10), || {
            net.call(GOOD_CLIENT, ALICE_KEY) == Some(200)
        });
    }
    let dropped_before: Vec<u64> = nets.iter().map(|net| net.counter("drop_blocked")).collect();
    for net in nets.iter().cycle().take(6) {
        assert_eq!(net.call(OFFENDER, "wrong-key-0123456789"), Some(401));
    }
    for (node, net) in nets.iter().enumerate() {
        let audit = &running[node].2;
        wait_until(
            "every node applies the block",
            Duration::from_secs(5),
            || block_line(audit).is_some(),
        );
        let block = block_line(audit).expect("block line");
        assert_eq!(block["ip"], OFFENDER);
        assert_eq!(block["enforced_in"], "xdp", "node {node}: {block}");
        assert!(net.blocked(OFFENDER), "node {node} drops the offender");
        assert!(
            net.counter("drop_blocked") > dropped_before[node],
            "node {node} dropped it in XDP"
        );
        assert_eq!(net.call(BYSTANDER, ALICE_KEY), Some(200), "node {node}");
    }
    let decided: Vec<_> = running
        .iter()
        .filter_map(|(_, _, audit)| block_line(audit))
        .filter(|block| block.get("node").is_none())
        .collect();
    assert_eq!(decided.len(), 1, "one node decided, the others applied");
}
