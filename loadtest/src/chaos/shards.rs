//! The shard processes of a chaos run: started, signalled, restarted and always killed
//! when dropped (an error, a panic, Ctrl-C).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::check::model::{Owned, ShardMeta};

/// How every shard is started.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub bin: PathBuf,
    pub kafka: String,
    pub cluster: String,
    /// gRPC of shard i on 127.0.0.1:(base_port + i), admin on base_port + 100 + i.
    pub base_port: u16,
    pub session_timeout: Duration,
    pub drain_timeout: Duration,
    pub cursor_flush_interval: Duration,
    /// Where `shard-<i>.log` go.
    pub log_dir: PathBuf,
    /// The binary knows `--session-timeout` (else it is passed as a librdkafka option).
    pub has_session_timeout: bool,
    /// The binary knows `--advertise-grpc`.
    pub has_advertise: bool,
}

impl ShardSpec {
    /// Looks at the binary's `--help` for the flags that came with sharding.
    pub fn probe_flags(&mut self) -> anyhow::Result<()> {
        let out = Command::new(&self.bin)
            .arg("--help")
            .output()
            .with_context(|| {
                format!(
                    "running {} --help (build it: cargo build -p fanout-server --bin fanout-server)",
                    self.bin.display()
                )
            })?;
        let help = String::from_utf8_lossy(&out.stdout);
        self.has_session_timeout = help.contains("--session-timeout");
        self.has_advertise = help.contains("--advertise-grpc");
        if !self.has_session_timeout {
            eprintln!(
                "chaos: {} has no --session-timeout: passing --kafka-option session.timeout.ms instead",
                self.bin.display()
            );
        }
        Ok(())
    }

    pub fn grpc_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base_port as usize + i)
    }

    pub fn admin_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base_port as usize + 100 + i)
    }

    pub fn meta(&self, i: usize) -> ShardMeta {
        ShardMeta {
            id: shard_id(i),
            grpc: format!("http://{}", self.grpc_addr(i)),
            admin: format!("http://{}", self.admin_addr(i)),
        }
    }
}

pub fn shard_id(i: usize) -> String {
    format!("shard-{i}")
}

/// Ports `base..base+n` and `base+100..base+100+n` all free on 127.0.0.1 now.
pub fn free_base_port(n: usize) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base: u16 = 20_000 + rand::random::<u16>() % 20_000;
        let free = (0..n).all(|i| {
            [base as usize + i, base as usize + 100 + i]
                .iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok())
        });
        if free {
            return Ok(base);
        }
    }
    bail!("found no free range of ports on 127.0.0.1 in 50 tries")
}

/// What `GET /v1/shards` lists.
#[derive(Debug, Deserialize)]
struct ShardEntry {
    id: String,
    #[serde(default)]
    partitions: Owned,
}

/// The shard processes, by index; `None`: not running.
#[derive(Debug)]
pub struct Shards {
    /// How each shard is started (again).
    pub spec: ShardSpec,
    /// Endpoints that exist (started or not yet).
    pub count: usize,
    /// The child process of each shard, while it runs.
    procs: Vec<Option<Child>>,
    /// Stopped with SIGSTOP and not continued.
    paused: Vec<bool>,
    /// For `/readyz` and `/v1/shards` (2 s timeout: a paused shard must not hang a look).
    http: reqwest::Client,
}

impl Shards {
    pub fn new(spec: ShardSpec, count: usize) -> Self {
        Self {
            spec,
            count,
            procs: (0..count).map(|_| None).collect(),
            paused: vec![false; count],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Running and not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.count)
            .filter(|&i| self.procs[i].is_some() && !self.paused[i])
            .collect()
    }

    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        if self.procs[i].is_some() {
            bail!("shard-{i} is already running");
        }
        let s = &self.spec;
        let log = s.log_dir.join(format!("{}.log", shard_id(i)));
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let _ = writeln!(out, "==== chaos: starting {} ====", shard_id(i));
        let mut cmd = Command::new(&s.bin);
        cmd.args(["--kafka-bootstrap", &s.kafka, "--cluster", &s.cluster])
            .args(["--shard-id", &shard_id(i)])
            .args(["--grpc-listen", &s.grpc_addr(i)])
            .args(["--admin-listen", &s.admin_addr(i), "--admin-no-auth"])
            .args(["--internal-replication-factor", "1"])
            .args(["--internal-min-insync-replicas", "1"])
            .args([
                "--drain-timeout",
                &humantime::format_duration(s.drain_timeout).to_string(),
            ])
            .args([
                "--cursor-flush-interval",
                &humantime::format_duration(s.cursor_flush_interval).to_string(),
            ]);
        if s.has_session_timeout {
            cmd.args([
                "--session-timeout",
                &humantime::format_duration(s.session_timeout).to_string(),
            ]);
        } else {
            cmd.arg(format!(
                "--kafka-option=session.timeout.ms={}",
                s.session_timeout.as_millis()
            ));
        }
        if s.has_advertise {
            cmd.args(["--advertise-grpc", &s.grpc_addr(i)]);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("FANOUT_CHAOS_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: a Ctrl-C at the terminal reaches this process only,
            // which then kills the shards itself.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", s.bin.display()))?;
        // For cleaning up by hand should this process itself be SIGKILLed.
        let _ = std::fs::write(self.pid_file(i), format!("{}\n", child.id()));
        self.procs[i] = Some(child);
        self.paused[i] = false;
        Ok(())
    }

    fn pid_file(&self, i: usize) -> PathBuf {
        self.spec.log_dir.join(format!("{}.pid", shard_id(i)))
    }

    /// Forgets shard i's process once it has exited.
    fn reaped(&mut self, i: usize) {
        self.procs[i] = None;
        let _ = std::fs::remove_file(self.pid_file(i));
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        match &self.procs[i] {
            Some(c) => Ok(c.id()),
            None => bail!("shard-{i} is not running"),
        }
    }

    fn signal(&self, i: usize, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid(i)?.to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .context("running kill")?;
        if !ok.success() {
            bail!("kill -{sig} {pid} (shard-{i}) failed");
        }
        Ok(())
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(c) = self.procs[i].as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            self.reaped(i);
        }
        self.paused[i] = false;
    }

    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP")?;
        self.paused[i] = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT")?;
        self.paused[i] = false;
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for it to exit (SIGKILL after that).
    pub async fn terminate(&mut self, i: usize, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.paused[i] {
            self.resume(i)?;
        }
        self.signal(i, "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = self.procs[i].as_mut() else {
                bail!("shard-{i} is not running");
            };
            if let Some(status) = c.try_wait()? {
                self.reaped(i);
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill(i);
                bail!("shard-{i} did not exit within {timeout:?} of SIGTERM: killed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to every running shard at once, then waits (bounded) for all.
    pub async fn stop_all(&mut self, timeout: Duration) {
        for i in 0..self.count {
            if self.procs[i].is_some() {
                if self.paused[i] {
                    let _ = self.resume(i);
                }
                let _ = self.signal(i, "TERM");
            }
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut running = false;
            for i in 0..self.count {
                if let Some(c) = self.procs[i].as_mut() {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        self.reaped(i);
                    } else {
                        running = true;
                    }
                }
            }
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..self.count {
            if self.procs[i].is_some() {
                eprintln!("chaos: shard-{i} did not stop within {timeout:?}: killing it");
                self.kill(i);
            }
        }
    }

    /// Waits until shard i answers `/readyz` with 200; fails if it exits or after `timeout`.
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.spec.admin_addr(i));
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if let Some(c) = self.procs[i].as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.reaped(i);
                bail!(
                    "shard-{i} exited while starting ({status}); see {}",
                    self.spec
                        .log_dir
                        .join(format!("{}.log", shard_id(i)))
                        .display()
                );
            }
            if Instant::now() > deadline {
                bail!("shard-{i} not ready within {timeout:?} (last answer: {last})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Who owns what, as each live shard reports itself in `GET /v1/shards`; also whether
    /// one answer alone listed every live shard (discovery). `None` if a live shard did not
    /// answer.
    pub async fn ownership(&self) -> Option<(BTreeMap<usize, Owned>, bool)> {
        let live = self.live();
        let mut out = BTreeMap::new();
        let mut complete_view = false;
        for &i in &live {
            let url = format!("http://{}/v1/shards", self.spec.admin_addr(i));
            let entries: Vec<ShardEntry> =
                self.http.get(&url).send().await.ok()?.json().await.ok()?;
            let me = shard_id(i);
            let own = entries.iter().find(|e| e.id == me)?;
            let mut owned = own.partitions.clone();
            owned.retain(|_, ps| !ps.is_empty());
            out.insert(i, owned);
            complete_view |= live
                .iter()
                .all(|&j| entries.iter().any(|e| e.id == shard_id(j)));
        }
        Some((out, complete_view))
    }

    /// What shard i says Kafka assigned it (its own entry of its `GET /v1/shards`); `None`
    /// if it did not answer.
    pub async fn owned_by_itself(&self, i: usize) -> Option<Owned> {
        let url = format!("http://{}/v1/shards", self.spec.admin_addr(i));
        let entries: Vec<ShardEntry> = self.http.get(&url).send().await.ok()?.json().await.ok()?;
        let mut owned = entries
            .into_iter()
            .find(|e| e.id == shard_id(i))?
            .partitions;
        owned.retain(|_, ps| !ps.is_empty());
        Some(owned)
    }

    pub fn meta(&self) -> Vec<ShardMeta> {
        (0..self.count).map(|i| self.spec.meta(i)).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.meta().into_iter().map(|m| m.grpc).collect()
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for i in 0..self.count {
            if self.procs[i].is_some() {
                eprintln!("chaos: killing shard-{i}");
                self.kill(i);
            }
        }
    }
}

/// Every partition of `topics` owned by exactly one shard of `owners`: the problems, if
/// not.
pub fn settle_problems(
    owners: &BTreeMap<usize, Owned>,
    topics: &[String],
    partitions: i32,
) -> Vec<String> {
    let mut problems = Vec::new();
    for t in topics {
        for p in 0..partitions {
            let who: Vec<usize> = owners
                .iter()
                .filter(|(_, o)| o.get(t).is_some_and(|ps| ps.contains(&p)))
                .map(|(i, _)| *i)
                .collect();
            match who.len() {
                1 => {}
                0 => problems.push(format!("{t}/{p} unowned")),
                _ => problems.push(format!("{t}/{p} owned by shards {who:?}")),
            }
        }
    }
    problems
}
