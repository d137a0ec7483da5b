//! `cargo xtask dist`: the Debian package, `target/package/mcp-gateway_VERSION_ARCH.deb`.
//!
//! Laid out by hand and packed with `dpkg-deb` (Debian's own tool, present wherever dpkg is):
//! the package is a handful of files from `packaging/`, and cargo-deb would add a tool to build
//! in every CI run for what a dozen lines do here.
//!
//! | in the package                              | from                              |
//! |---------------------------------------------|-----------------------------------|
//! | `/usr/bin/mcp-gateway`                      | the PGO-optimized gateway binary  |
//! | `/lib/systemd/system/mcp-gateway.service`   | `packaging/mcp-gateway.service`   |
//! | `/etc/mcp-gateway/gateway.toml` (conffile)  | `packaging/gateway.toml`          |
//! | `/etc/logrotate.d/mcp-gateway` (conffile)   | `packaging/logrotate`             |
//! | `/usr/share/mcp-gateway/grafana-dashboard.json` | `packaging/grafana-dashboard.json` |
//! | `DEBIAN/postinst`, `DEBIAN/prerm`           | `packaging/`                      |

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::shell::Cmd;

/// Where `dist` writes the package: the tests look for it here.
pub fn package_path(root: &Path) -> PathBuf {
    root.join("target/package").join(format!(
        "mcp-gateway_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        debian_arch()
    ))
}

fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds the package around `binary`; returns its path.
pub fn build(root: &Path, binary: &Path) -> Result<PathBuf> {
    let packaging = root.join("packaging");
    let stage = root.join("target/package/stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let place = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let target = stage.join(to);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(from, &target)
            .with_context(|| format!("cannot copy {} to {}", from.display(), target.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    place(binary, "usr/bin/mcp-gateway", 0o755)?;
    place(
        &packaging.join("mcp-gateway.service"),
        "lib/systemd/system/mcp-gateway.service",
        0o644,
    )?;
    place(
        &packaging.join("gateway.toml"),
        "etc/mcp-gateway/gateway.toml",
        0o640,
    )?;
    place(
        &packaging.join("logrotate"),
        "etc/logrotate.d/mcp-gateway",
        0o644,
    )?;
    place(
        &packaging.join("grafana-dashboard.json"),
        "usr/share/mcp-gateway/grafana-dashboard.json",
        0o644,
    )?;
    place(&packaging.join("postinst"), "DEBIAN/postinst", 0o755)?;
    place(&packaging.join("prerm"), "DEBIAN/prerm", 0o755)?;
    fs::write(
        stage.join("DEBIAN/conffiles"),
        "/etc/mcp-gateway/gateway.toml\n/etc/logrotate.d/mcp-gateway\n",
    )?;
    let installed_kib = fs::metadata(binary)?.len() / 1024 + 64;
    fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: mcp-gateway\n\
             Version: {}\n\
             Architecture: {}\n\
             Maintainer: mcp-gateway developers <mcp-gateway@localhost>\n\
             Installed-Size: {installed_kib}\n\
             Depends: adduser, libc6\n\
             Recommends: logrotate\n\
             Section: net\n\
             Priority: optional\n\
             Description: XDP-accelerated edge gateway for HTTP-transport MCP servers\n \
             Per-user bearer keys, per-caller and per-tool rate limits, an audit line for\n \
             every call written before it is forwarded, streaming, and an XDP program that\n \
             drops abusive sources in the kernel. Runs as its own user with only the\n \
             capabilities XDP needs.\n",
            env!("CARGO_PKG_VERSION"),
            debian_arch()
        ),
    )?;
    let package = package_path(root);
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&package)
        .run()
        .context("dpkg-deb failed (Debian's dpkg package)")?;
    Ok(package)
}
