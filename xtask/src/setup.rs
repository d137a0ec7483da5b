//! `cargo xtask setup`: installs what the build and the tests need, only where it is missing.
//!
//! Everything comes through rustup, cargo, apt-get, npm and pip; project-local installs go to
//! `target/tools` (bpf-linker, the Python MCP SDK's virtual environment) and
//! `tests/peers/node_modules` (the TypeScript MCP SDK peers).

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::{
    pgo,
    shell::{Cmd, is_root, tools_dir},
};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has a feature for.
const BPF_LINKER_LLVM_MAJORS: [u32; 3] = [21, 22, 23];
/// Debian packages the tests use: `ip` for network namespaces, `curl` as the client inside
/// them (and over TLS), `openssl s_client` for TLS versions, ALPN and SNI, Node.js for the MCP SDK
/// peers, `tmux` to read `gateway top`'s screen; `dpkg-deb` packs the package, `systemd-analyze`
/// checks its unit and `setpriv` runs the gateway with only the unit's capabilities;
/// `redis-server` is the fleet's shared store (the tests start their own on loopback ports).
const DEBIAN_PACKAGES: [(&str, &str); 10] = [
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("tmux", "tmux"),
    ("dpkg-deb", "dpkg"),
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("redis-server", "redis-server"),
];

pub fn all(root: &Path) -> Result<()> {
    toolchain(root)?;
    debian_packages(&DEBIAN_PACKAGES)?;
    npm_peers(root)?;
    python_peers(root)
}

/// The Python interpreter of the test peers' virtual environment (the official `mcp` SDK).
pub fn python_peers_bin(root: &Path) -> std::path::PathBuf {
    tools_dir(root).join("python-peers/bin/python")
}

/// The official Python MCP SDK (`mcp` 2.x) in a virtual environment of its own, pinned by
/// `tests/peers/requirements.txt`; reinstalled when that file changes.
fn python_peers(root: &Path) -> Result<()> {
    let requirements = root.join("tests/peers/requirements.txt");
    let venv = tools_dir(root).join("python-peers");
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    Cmd::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .run()
        .context("creating the Python test peers' virtual environment failed (python3 -m venv)")?;
    Cmd::new(python_peers_bin(root))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .run()
        .context("installing the Python MCP SDK (tests/peers/requirements.txt) failed")?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

/// Nightly with rust-src and a bpf-linker built against nightly's own LLVM; llvm-tools for the
/// gateway's profile-guided build.
pub fn toolchain(root: &Path) -> Result<()> {
    let nightly = Cmd::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context(
            "the nightly Rust toolchain is missing; it builds the eBPF program. Install it with \
         `rustup toolchain install nightly --component rust-src`",
        )?;
    let llvm_major = llvm_major(&nightly)?;
    if !Cmd::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()?
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        Cmd::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .run()
            .context("could not add rust-src to the nightly toolchain")?;
    }
    bpf_linker(root, llvm_major)?;
    llvm_tools()
}

/// `llvm-profdata`, which merges the profile the gateway is optimized with (see `pgo`).
fn llvm_tools() -> Result<()> {
    if pgo::llvm_profdata(&pgo::host_triple()?)?.is_file() {
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["component", "add", "llvm-tools"])
        .run()
        .context("could not add llvm-tools (llvm-profdata) to the Rust toolchain")
}

/// The LLVM major version from `rustc -vV` output.
fn llvm_major(rustc_version: &str) -> Result<u32> {
    rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
        .context("`rustc +nightly -vV` does not report an LLVM version")
}

/// bpf-linker must link the same LLVM major as rustc. Debian has no LLVM of nightly's version,
/// but nightly ships its own shared libLLVM, which bpf-linker can link against.
fn bpf_linker(root: &Path, llvm_major: u32) -> Result<()> {
    let tools = tools_dir(root);
    let stamp = tools.join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major}");
    let linker = tools.join("bin/bpf-linker");
    if linker.is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted)
        && Cmd::new(&linker).arg("--version").succeeds()
    {
        return Ok(());
    }
    if !BPF_LINKER_LLVM_MAJORS.contains(&llvm_major) {
        bail!(
            "nightly rustc uses LLVM {llvm_major}, but bpf-linker {BPF_LINKER_VERSION} only \
             supports LLVM {BPF_LINKER_LLVM_MAJORS:?}; install a nightly of one of those"
        );
    }

    let sysroot = Cmd::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name())
        .find(|name| name.to_string_lossy().starts_with("libLLVM.so"))
        .with_context(|| {
            format!(
                "nightly ships no shared libLLVM in {}; bpf-linker cannot be built against it",
                sysroot_lib.display()
            )
        })?;

    // `-lLLVM` looks for libLLVM.so; at run time the rpath finds the SONAME.
    let llvm_prefix = tools.join("llvm");
    let llvm_lib = llvm_prefix.join("lib");
    std::fs::create_dir_all(&llvm_lib)?;
    for link in [llvm_lib.join("libLLVM.so"), llvm_lib.join(&libllvm)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&libllvm), &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }

    eprintln!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (about 2 minutes)"
    );
    Cmd::new("cargo")
        .args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", &llvm_prefix)
        .run()
        .context(
            "building bpf-linker failed (see the cargo output above); it needs a C toolchain and \
             nightly's libLLVM",
        )?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

/// Installs the Debian package of each (program, package) whose program is missing.
pub fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(program, _)| {
            !Cmd::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .succeeds()
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; install them with `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    Cmd::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
}

/// The official MCP SDK peers the end-to-end tests talk to, pinned by `tests/peers/package-lock.json`.
fn npm_peers(root: &Path) -> Result<()> {
    let peers = root.join("tests/peers");
    let lock = peers.join("package-lock.json");
    // npm ci records the lockfile it installed from in node_modules/.package-lock.json.
    let installed = peers.join("node_modules/.package-lock.json");
    let up_to_date = match (lock.metadata(), installed.metadata()) {
        (Ok(lock), Ok(installed)) => installed.modified()? >= lock.modified()?,
        _ => false,
    };
    if up_to_date || !lock.is_file() {
        return Ok(());
    }
    Cmd::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&peers)
        .run()
        .context("installing the npm test peers failed")
}
