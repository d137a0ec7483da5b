//! Two network namespaces joined by a veth pair, plus a bpffs for pinned maps: the test hosts of
//! the root-only tests and of the flood benchmark. Everything is removed on drop, whatever happened.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub struct VethPair {
    /// Namespace of the gateway's side.
    pub server: String,
    /// Namespace of the clients' side.
    pub client: String,
    /// The gateway side's interface (where XDP attaches).
    pub server_if: String,
    /// A bpffs mounted for pins. `ip netns exec` gives a process its own /sys, hiding
    /// /sys/fs/bpf, so pins go to a bpffs mounted outside /sys, which stays shared.
    pub bpffs: PathBuf,
}

impl VethPair {
    /// Namespaces named after `tag` and this process; `server_addrs` and `client_addrs` are
    /// addresses with their on-link prefix length (`198.18.0.1/24`, `fd00::1/16`); the first
    /// client address of each family is its default source. The bpffs goes to `bpffs`.
    pub fn create(
        tag: &str,
        server_addrs: &[&str],
        client_addrs: &[&str],
        bpffs: &Path,
    ) -> Result<Self> {
        let id = std::process::id() % 100_000;
        let net = VethPair {
            server: format!("mcpgw-{tag}-srv-{id}"),
            client: format!("mcpgw-{tag}-cli-{id}"),
            server_if: format!("mgs{id}{tag}"),
            bpffs: bpffs.to_owned(),
        };
        let client_if = format!("mgc{id}{tag}");
        ip(&["netns", "add", &net.server])?;
        ip(&["netns", "add", &net.client])?;
        ip(&[
            "link",
            "add",
            &net.server_if,
            "netns",
            &net.server,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &net.client,
        ])?;
        for (ns, interface, addresses) in [
            (&net.server, &net.server_if, server_addrs),
            (&net.client, &client_if, client_addrs),
        ] {
            for address in addresses {
                // IPv6 addresses are usable at once, without duplicate address detection.
                let mut args = vec!["-n", ns, "addr", "add", address, "dev", interface];
                if address.contains(':') {
                    args.push("nodad");
                }
                ip(&args)?;
            }
        }
        for (ns, interface) in [(&net.server, &net.server_if), (&net.client, &client_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", interface, "up"])?;
        }
        std::fs::create_dir_all(&net.bpffs)?;
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&net.bpffs)
            .status()?;
        if !mounted.success() {
            bail!("cannot mount a bpffs at {}", net.bpffs.display());
        }
        Ok(net)
    }

    /// `program args` inside the server or client namespace.
    pub fn exec_in(namespace: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace]).arg(program);
        command
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .status();
        let _ = Command::new("umount").arg(&self.bpffs).status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A namespace of its own for a service the test's hosts share (the fleet's Redis), joined to
/// other namespaces by veth links. Removed on drop, with its links.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn create(tag: &str) -> Result<Self> {
        let name = format!("mcpgw-{tag}-{}", std::process::id() % 100_000);
        ip(&["netns", "add", &name])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(Namespace { name })
    }

    /// A veth link from this namespace (address `here`, with prefix length) to namespace `other`
    /// (address `there`); `index` tells this namespace's links apart.
    pub fn link_to(&self, other: &str, index: usize, here: &str, there: &str) -> Result<()> {
        let id = std::process::id() % 100_000;
        let (near, far) = (format!("mgn{id}l{index}"), format!("mgf{id}l{index}"));
        ip(&[
            "link", "add", &near, "netns", &self.name, "type", "veth", "peer", "name", &far,
            "netns", other,
        ])?;
        for (ns, interface, address) in [(&*self.name, &near, here), (other, &far, there)] {
            ip(&["-n", ns, "addr", "add", address, "dev", interface])?;
            ip(&["-n", ns, "link", "set", interface, "up"])?;
        }
        Ok(())
    }

    /// `program` inside this namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
