//! A real Redis for the fleet tests: Debian's `redis-server` on a loopback port, in the test's
//! temporary directory, without persistence; killed when the test ends, passed or failed.

use std::{net::SocketAddr, path::Path, process::Command};

use crate::{KillOnDrop, free_port, spawn_listening};

pub struct Redis {
    process: Option<KillOnDrop>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Its command line, `{port}` standing for `port`.
    args: Vec<String>,
}

impl Redis {
    /// Plain TCP, no authentication.
    pub fn start() -> Self {
        Self::start_with(&["--port", "{port}"])
    }

    /// TLS only, with `cert` and `key`, and the ACL users of `users` (`--user` lines).
    pub fn start_tls(cert: &Path, key: &Path, users: &[&str]) -> Self {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let mut args = vec![
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-auth-clients",
            "no",
        ];
        args.extend(["--tls-cert-file", &cert, "--tls-key-file", &key]);
        args.extend_from_slice(users);
        Self::start_with(&args)
    }

    /// With the command line `args` (`{port}` stands for its port).
    pub fn start_with(args: &[&str]) -> Self {
        let mut redis = Redis {
            process: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (its data goes with it).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command
            .args(self.args.iter().map(|arg| arg.replace("{port}", &port)))
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        self.process = Some(spawn_listening(
            command,
            "redis-server",
            &self.dir.path().join("redis.log"),
            addr,
        ));
    }

    /// Runs `redis-cli` against it (plain TCP, default user); its output.
    pub fn cli(&self, args: &[&str]) -> String {
        crate::run_ok(
            "redis-cli",
            &[&["-p", &self.port.to_string(), "--no-raw"][..], args].concat(),
        )
    }
}
