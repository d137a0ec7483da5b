//! Running commands with clear errors.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

/// A command about to run, printed before it starts.
pub struct Cmd {
    command: Command,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            command: Command::new(program),
        }
    }

    /// `cargo` from the toolchain that runs xtask, in `root`, with bpf-linker on PATH.
    pub fn cargo(root: &Path, args: &[&str]) -> Self {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Self::new(cargo)
            .args(args)
            .current_dir(root)
            .env("PATH", path_with_tools(root))
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    fn describe(&self) -> String {
        let program = self.command.get_program().to_string_lossy();
        let args: Vec<_> = self
            .command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect();
        format!("{program} {}", args.join(" "))
    }

    /// Runs with inherited stdio; fails if the command fails.
    pub fn run(mut self) -> Result<()> {
        let described = self.describe();
        eprintln!("$ {described}");
        let status = self
            .command
            .status()
            .with_context(|| format!("could not start `{described}`"))?;
        if !status.success() {
            bail!("`{described}` failed ({status})");
        }
        Ok(())
    }

    /// Runs with stdout shown as it comes and also kept; stderr inherited.
    pub fn run_echoing_stdout(mut self) -> Echoed {
        use std::io::{BufRead, BufReader};
        let described = self.describe();
        eprintln!("$ {described}");
        let mut child = match self.command.stdout(std::process::Stdio::piped()).spawn() {
            Ok(child) => child,
            Err(err) => {
                return Echoed {
                    stdout: String::new(),
                    result: Err(anyhow::anyhow!("could not start `{described}`: {err}")),
                };
            }
        };
        let mut stdout = String::new();
        if let Some(pipe) = child.stdout.take() {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                println!("{line}");
                stdout.push_str(&line);
                stdout.push('\n');
            }
        }
        let result = match child.wait() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(anyhow::anyhow!("`{described}` failed ({status})")),
            Err(err) => Err(anyhow::anyhow!("`{described}` did not finish: {err}")),
        };
        Echoed { stdout, result }
    }

    /// Runs and captures output; fails if the command fails, with its stderr.
    pub fn output(mut self) -> Result<String> {
        let described = self.describe();
        let Output {
            status,
            stdout,
            stderr,
        } = self
            .command
            .output()
            .with_context(|| format!("could not start `{described}`"))?;
        if !status.success() {
            bail!(
                "`{described}` failed ({status}): {}",
                String::from_utf8_lossy(&stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// Runs with stdout inherited and stderr captured: whether it succeeded, and its stderr.
    pub fn output_with_stderr(mut self) -> Result<(bool, String)> {
        let described = self.describe();
        eprintln!("$ {described}");
        let output = self
            .command
            .stdout(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("could not start `{described}`"))?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Whether the command runs and succeeds (no output shown).
    pub fn succeeds(mut self) -> bool {
        self.command
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }
}

/// What [`Cmd::run_echoing_stdout`] saw.
pub struct Echoed {
    pub stdout: String,
    pub result: Result<()>,
}

/// Project-local tools (bpf-linker) live here.
pub fn tools_dir(root: &Path) -> PathBuf {
    root.join("target/tools")
}

/// Installs `name@version` from crates.io into target/tools unless its binary is there already.
pub fn install_tool(root: &Path, name: &str, version: &str, what: &str) -> Result<()> {
    if tools_dir(root).join("bin").join(name).is_file() {
        return Ok(());
    }
    eprintln!("installing {what} {name} {version} into target/tools");
    Cmd::new("cargo")
        .args(["install", "--locked", "--root"])
        .arg(tools_dir(root))
        .arg(format!("{name}@{version}"))
        .run()
        .with_context(|| format!("installing {name} failed"))
}

/// PATH with the project-local tools first.
pub fn path_with_tools(root: &Path) -> std::ffi::OsString {
    let mut paths = vec![tools_dir(root).join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
