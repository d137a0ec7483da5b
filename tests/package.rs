//! The Debian package `cargo xtask dist` builds (`GATEWAY_DEB`, which `cargo xtask test` sets):
//! what it holds, its systemd unit checked by `systemd-analyze verify`, its default config, and
//! its Grafana dashboard against the metrics a running gateway really exports.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use e2e_tests::{
    ALICE_KEY, Gateway, RecordingUpstream, free_port, ok_upstream, post, run_ok as run, sha256_hex,
};

/// The package under test, unpacked into a temporary directory.
struct Unpacked {
    dir: tempfile::TempDir,
}

impl Unpacked {
    fn new() -> Self {
        let deb = package();
        let dir = tempfile::tempdir().expect("tempdir");
        run(
            "dpkg-deb",
            &["-x", deb.to_str().unwrap(), dir.path().to_str().unwrap()],
        );
        run(
            "dpkg-deb",
            &[
                "-e",
                deb.to_str().unwrap(),
                dir.path().join("DEBIAN").to_str().unwrap(),
            ],
        );
        Self { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn read(&self, inside: &str) -> String {
        std::fs::read_to_string(self.path(inside)).unwrap_or_else(|err| panic!("{inside}: {err}"))
    }
}

fn package() -> PathBuf {
    let deb = PathBuf::from(
        std::env::var_os("GATEWAY_DEB")
            .expect("GATEWAY_DEB is not set: run `cargo xtask dist` and point it at the package, or run `cargo xtask test`"),
    );
    assert!(
        deb.is_file(),
        "{} does not exist: run `cargo xtask dist`",
        deb.display()
    );
    deb
}

#[test]
fn the_package_holds_the_binary_the_unit_the_config_logrotate_and_the_dashboard() {
    let listing = run("dpkg-deb", &["-c", package().to_str().unwrap()]);
    for file in [
        "./usr/bin/mcp-gateway",
        "./lib/systemd/system/mcp-gateway.service",
        "./etc/mcp-gateway/gateway.toml",
        "./etc/logrotate.d/mcp-gateway",
        "./usr/share/mcp-gateway/grafana-dashboard.json",
    ] {
        assert!(listing.contains(file), "{file} missing from:\n{listing}");
    }
    let unpacked = Unpacked::new();
    assert_eq!(
        unpacked.read("DEBIAN/conffiles"),
        "/etc/mcp-gateway/gateway.toml\n/etc/logrotate.d/mcp-gateway\n"
    );
    let control = unpacked.read("DEBIAN/control");
    assert!(control.contains("Package: mcp-gateway"), "{control}");
    let version = run(
        unpacked.path("usr/bin/mcp-gateway").to_str().unwrap(),
        &["--version"],
    );
    assert!(version.starts_with("gateway "), "{version}");
    // logrotate's postrotate makes the gateway reopen its audit log.
    let logrotate = unpacked.read("etc/logrotate.d/mcp-gateway");
    assert!(
        logrotate.contains("/var/log/mcp-gateway/*.jsonl"),
        "{logrotate}"
    );
    assert!(
        logrotate.contains("--signal=SIGHUP mcp-gateway.service"),
        "{logrotate}"
    );
}

#[test]
fn the_default_config_is_valid_once_it_has_a_user() {
    let unpacked = Unpacked::new();
    let config = unpacked.read("etc/mcp-gateway/gateway.toml");
    let check = |text: &str| {
        let file = unpacked.dir.path().join("check.toml");
        std::fs::write(&file, text).unwrap();
        Command::new(unpacked.path("usr/bin/mcp-gateway"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap()
    };
    let without_users = check(&config);
    assert!(!without_users.status.success());
    assert!(String::from_utf8_lossy(&without_users.stderr).contains("users: no users"));
    let with_user = check(&format!(
        "{config}\n[[users]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
        sha256_hex(ALICE_KEY)
    ));
    assert!(
        with_user.status.success(),
        "{}",
        String::from_utf8_lossy(&with_user.stderr)
    );
}

/// A root for `systemd-analyze verify --root`: the unpacked package, plus the system's targets
/// and the two programs the unit runs besides the gateway.
fn verify_root(unpacked: &Unpacked) -> PathBuf {
    let root = unpacked.dir.path().to_path_buf();
    let units = root.join("lib/systemd/system");
    for entry in std::fs::read_dir("/lib/systemd/system").unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".target") || name.ends_with(".slice") {
            let _ = std::fs::copy(entry.path(), units.join(&*name));
        }
    }
    for (program, inside) in [
        ("/usr/bin/install", "usr/bin/install"),
        ("/bin/kill", "bin/kill"),
    ] {
        let target = root.join(inside);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(program, &target).unwrap();
    }
    root
}

fn verify(root: &Path, unit: &str) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(["verify", "--root"])
        .arg(root)
        .arg(unit)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)")
}

#[test]
fn the_packaged_unit_passes_systemd_analyze_verify_and_a_broken_one_does_not() {
    let unpacked = Unpacked::new();
    let root = verify_root(&unpacked);
    let verified = verify(&root, "/lib/systemd/system/mcp-gateway.service");
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // The check can fail: the same unit with a program that is not there.
    let unit = unpacked.read("lib/systemd/system/mcp-gateway.service");
    std::fs::write(
        root.join("lib/systemd/system/broken.service"),
        unit.replace("/usr/bin/mcp-gateway", "/usr/bin/mcp-gateway-missing"),
    )
    .unwrap();
    let broken = verify(&root, "/lib/systemd/system/broken.service");
    assert!(!broken.status.success() || !broken.stderr.is_empty());
    // Least privilege: only the capabilities XDP (and a low port) need.
    for line in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let caps = unit
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line}"));
        assert_eq!(
            caps,
            "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE"
        );
    }
    for hardening in [
        "User=mcp-gateway",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LogsDirectory=mcp-gateway",
        "ReadWritePaths=/sys/fs/bpf/mcp-gateway",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_plots_is_one_the_gateway_exports() {
    let unpacked = Unpacked::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&unpacked.read("usr/share/mcp-gateway/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut plotted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("mcp_gateway_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                plotted.insert(name);
            }
        }
    }
    assert!(plotted.len() >= 15, "{plotted:?}");

    // A gateway that forwarded, rate-limited and refused a call and reloaded exports every family
    // but the XDP packet counters (those appear once the program is loaded: see the XDP tests).
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let gateway = Gateway::start(
        &upstream.url(),
        &format!("[rate_limit]\nrequests = 1\n[admin]\nlisten = \"{admin}\"\n"),
    );
    for key in [ALICE_KEY, ALICE_KEY, "wrong-key-0123456789abcdef"] {
        let authorization = format!("Bearer {key}");
        post(
            &gateway,
            &[("authorization", &authorization)],
            e2e_tests::CALL,
        )
        .await;
    }
    gateway.signal(libc::SIGHUP);
    e2e_tests::eventually("the reload", || {
        gateway
            .audit_lines()
            .iter()
            .any(|line| line["event"] == "reload")
    });
    let metrics = run("curl", &["-s", &format!("http://{admin}/metrics")]);
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("# TYPE "))
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    for name in &plotted {
        let family = ["_total", "_bucket"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            exported.contains(family) || family == "mcp_gateway_xdp_packets",
            "the dashboard plots {name}, which is not exported:\n{metrics}"
        );
    }
}
