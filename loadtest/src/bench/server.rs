//! The fanout server of arm F: a fresh `fanout-server` process per cell (its own cluster
//! name, so its registry and cursors start empty), its admin API and its `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Child;

use super::child::{self, free_port};
use super::result::KafkaTraffic;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub bootstrap: String,
    /// `taskset -c` CPU list, if pinned.
    pub pin: Option<String>,
    /// librdkafka options for every Kafka client of the server (`--kafka-option`).
    pub kafka_options: Vec<(String, String)>,
    /// More server flags, as given.
    pub extra: Vec<String>,
    pub log: PathBuf,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pid: u32,
    pub admin: String,
    pub grpc: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server of its own cluster and waits until it is ready (60 s at most).
    pub async fn start(spec: &ServerSpec, cluster: &str) -> anyhow::Result<Self> {
        if !spec.binary.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p fanout-server) or pass --server-bin",
                spec.binary.display()
            );
        }
        let (grpc_port, admin_port) = (free_port()?, free_port()?);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut cmd = child::command(&spec.binary, spec.pin.as_deref());
        cmd.args(["--kafka-bootstrap", &spec.bootstrap, "--cluster", cluster])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--internal-replication-factor", "1"])
            .args(["--internal-min-insync-replicas", "1", "--admin-no-auth"]);
        for (k, v) in &spec.kafka_options {
            cmd.arg("--kafka-option").arg(format!("{k}={v}"));
        }
        cmd.args(&spec.extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group: a Ctrl-C meant for the benchmark must not stop it
            // before the arm's figures are read.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting fanout-server")?;
        let pid = child.id().context("fanout-server exited at once")?;
        let server = Self {
            child: {
                // Checked below, while waiting.
                if let Some(status) = child.try_wait()? {
                    bail!("fanout-server exited at once ({status})");
                }
                child
            },
            pid,
            admin: format!("http://127.0.0.1:{admin_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        server
            .wait_ready(Duration::from_secs(60), &spec.log)
            .await?;
        Ok(server)
    }

    async fn wait_ready(&self, timeout: Duration, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self
                .http
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "fanout-server not ready after {timeout:?} (log: {})",
                    log.display()
                );
            }
            if !std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
                bail!(
                    "fanout-server exited while starting (log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The server's Kafka traffic so far, per client role (`fanout_kafka_*_total`).
    pub async fn kafka_traffic(&self) -> anyhow::Result<BTreeMap<String, KafkaTraffic>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .context("GET /metrics")?
            .error_for_status()?
            .text()
            .await?;
        Ok(parse_metrics(&text))
    }

    /// Stops it (SIGTERM, then SIGKILL after 30 s).
    pub async fn stop(mut self) {
        child::signal(self.pid, "TERM").await;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `fanout_kafka_{received_bytes,sent_bytes,requests,fetch_requests}_total{client="…"}`
/// of a Prometheus text page, per client.
pub fn parse_metrics(text: &str) -> BTreeMap<String, KafkaTraffic> {
    let mut out: BTreeMap<String, KafkaTraffic> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("fanout_kafka_") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(client) = labels.split(',').find_map(|l| {
            l.trim()
                .strip_prefix("client=\"")
                .and_then(|v| v.strip_suffix('"'))
        }) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let t = out.entry(client.to_owned()).or_default();
        let v = value as u64;
        match name {
            "received_bytes_total" => t.rx_bytes += v,
            "sent_bytes_total" => t.tx_bytes += v,
            "requests_total" => t.requests += v,
            "fetch_requests_total" => t.fetch_requests += v,
            _ => {}
        }
    }
    out
}

/// `after − before`, per client.
pub fn traffic_since(
    after: &BTreeMap<String, KafkaTraffic>,
    before: &BTreeMap<String, KafkaTraffic>,
) -> BTreeMap<String, KafkaTraffic> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            (
                k.clone(),
                KafkaTraffic {
                    rx_bytes: a.rx_bytes.saturating_sub(b.rx_bytes),
                    tx_bytes: a.tx_bytes.saturating_sub(b.tx_bytes),
                    requests: a.requests.saturating_sub(b.requests),
                    fetch_requests: a.fetch_requests.saturating_sub(b.fetch_requests),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_counters_are_read_per_client() {
        let text = "# HELP fanout_kafka_received_bytes_total x\n\
            fanout_kafka_received_bytes_total{client=\"ingest\"} 1000\n\
            fanout_kafka_received_bytes_total{client=\"catchup\"} 50\n\
            fanout_kafka_fetch_requests_total{client=\"ingest\"} 7\n\
            fanout_records_total{client=\"ingest\"} 99\n";
        let m = parse_metrics(text);
        assert_eq!(m["ingest"].rx_bytes, 1000);
        assert_eq!(m["ingest"].fetch_requests, 7);
        assert_eq!(m["catchup"].rx_bytes, 50);
        let before = parse_metrics("fanout_kafka_received_bytes_total{client=\"ingest\"} 400\n");
        assert_eq!(traffic_since(&m, &before)["ingest"].rx_bytes, 600);
    }
}
