//! The `segscore serve` child process the service and bulk cases run
//! against: started from this same executable on an ephemeral loopback port
//! (so the figures are for the binary being benchmarked), read for its
//! resident memory from /proc, and stopped with SIGTERM so it drains as in
//! production.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::BenchArgs;

/// A `segscore serve` child process on an ephemeral loopback port.
pub(super) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, as the server logged it.
    pub(super) addr: String,
}

impl Server {
    /// Starts a server without segment rules.
    pub(super) fn start(args: &BenchArgs, workers: usize, batching: bool) -> anyhow::Result<Self> {
        Self::start_with(args, workers, batching, None)
    }

    /// Starts `segscore serve` on 127.0.0.1:0 and waits (up to 60 s) for its
    /// "serving" log line, which carries the port it bound.
    pub(super) fn start_with(
        args: &BenchArgs,
        workers: usize,
        batching: bool,
        segments: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["--log-format", "json", "serve", "--addr", "127.0.0.1:0"])
            .arg("--model-repository")
            .arg(&args.model_repository)
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--batching")
            .arg(batching.to_string())
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = &args.ort_dylib_path {
            cmd.arg("--ort-dylib-path").arg(p);
        }
        if let Some(p) = segments {
            cmd.arg("--segments").arg(p);
        }
        let mut child = cmd.spawn().context("starting segscore serve")?;
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped; this is a bug"));
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "serving" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Self {
                child,
                addr: format!("http://{addr}"),
            }),
            Err(_) => {
                let _ = child.kill();
                bail!("segscore serve did not start within 60 s")
            }
        }
    }

    /// Resident memory now (VmRSS), read after each case.
    pub(super) fn rss_mib(&self) -> Option<f64> {
        self.status_mib("VmRSS:")
    }

    /// Peak resident memory so far (VmHWM).
    pub(super) fn peak_rss_mib(&self) -> Option<f64> {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, key: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Stops the server, killing it if it has not drained within 30 s.
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM: the server drains and exits on its own.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(())
    }
}
