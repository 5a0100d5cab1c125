//! Processes of an arm: the workers (`bench-worker`) and the fanout server, started
//! (optionally pinned with `taskset`), watched and stopped.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

use super::procfs;
use super::worker::Report;

/// A command, run through `taskset -c <cpus>` when pinned.
pub fn command(program: &Path, pin: Option<&str>) -> Command {
    match pin {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    pub name: String,
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    ready: watch::Receiver<bool>,
    /// Its result, once it printed one (or ended without).
    result: Arc<Mutex<Option<anyhow::Result<Report>>>>,
    /// Distinct records so far, as last reported.
    pub progress: Arc<AtomicU64>,
}

impl Worker {
    /// Starts `cmd` (a `bench-worker` command line); its stderr goes to `log`.
    pub fn spawn(name: String, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting worker {name}"))?;
        let pid = child.id().context("worker exited at once")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("worker stdout")?;
        let (ready_tx, ready) = watch::channel(false);
        let result = Arc::new(Mutex::new(None));
        let slot = result.clone();
        let progress = Arc::new(AtomicU64::new(0));
        let p = progress.clone();
        let n = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l == "ready" => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Some(l)) => {
                        if let Some(v) = l.strip_prefix("progress ") {
                            if let Ok(v) = v.trim().parse() {
                                p.store(v, Ordering::Relaxed);
                            }
                        } else if let Some(json) = l.strip_prefix("result ") {
                            let r = serde_json::from_str::<Report>(json)
                                .with_context(|| format!("worker {n}: bad result line"));
                            slot.lock().get_or_insert(r);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            slot.lock().get_or_insert_with(|| {
                Err(anyhow::anyhow!(
                    "worker {n} ended without a result (see its log)"
                ))
            });
        });
        Ok(Self {
            name,
            child,
            pid,
            stdin,
            ready,
            result,
            progress,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the worker reads (or fails, or `timeout`).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let r = tokio::time::timeout(timeout, self.ready.wait_for(|r| *r)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => bail!(
                "worker {} ended before it was ready (see its log)",
                self.name
            ),
            Err(_) => bail!("worker {} not ready after {timeout:?}", self.name),
        }
    }

    /// Tells the worker to start reading.
    pub async fn go(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"go\n").await;
            let _ = stdin.flush().await;
        }
    }

    /// Asks the worker to finish with what it has.
    pub async fn stop(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n").await;
            let _ = stdin.flush().await;
        }
    }

    /// Whether it printed its result (or ended without one).
    pub fn is_done(&self) -> bool {
        self.result.lock().is_some()
    }

    /// Its result, once [`Worker::is_done`].
    pub fn take_result(&self) -> anyhow::Result<Report> {
        self.result
            .lock()
            .take()
            .unwrap_or_else(|| bail!("worker {} has no result yet", self.name))
    }

    /// Its `/proc` counters now (the worker waits for stdin to close before it exits).
    pub fn sample(&self) -> anyhow::Result<procfs::Sample> {
        procfs::sample(self.pid)
    }

    /// Lets it exit (closes stdin), killing it if it has not within 10 s.
    pub async fn close(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Sends a signal with `kill` (no libc here).
pub async fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await;
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it soon after).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
