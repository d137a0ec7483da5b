//! A real Redis for the fleet tests: Debian's `redis-server` on a loopback port, in the test's
//! temporary directory, without persistence; killed when the test ends, passed or failed.

use std::{net::SocketAddr, process::Command};

use crate::{KillOnDrop, free_port, spawn_listening};

pub struct Redis {
    process: Option<KillOnDrop>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let mut redis = Redis {
            process: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
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
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path());
        self.process = Some(spawn_listening(
            command,
            "redis-server",
            &self.dir.path().join("redis.log"),
            addr,
        ));
    }

    /// Runs `redis-cli` against it; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        crate::run_ok(
            "redis-cli",
            &[&["-p", &self.port.to_string(), "--no-raw"][..], args].concat(),
        )
    }
}
