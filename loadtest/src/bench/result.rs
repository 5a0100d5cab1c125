//! What a benchmark run writes: one [`Cell`] per workload × N, each with the figures of
//! both arms. `report` reads these files; nothing in them is derived from anything but
//! what the run measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A results file: the cells of one `run` or `sweep`, in the order they ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// The command line that produced the file.
    pub command: String,
    /// The machine it ran on.
    pub machine: Machine,
    /// Git commit of the code measured (`git rev-parse --short HEAD`), if known.
    pub commit: Option<String>,
    pub cells: Vec<Cell>,
    /// The run was stopped (Ctrl-C, time budget) before every planned cell ran; the cells
    /// here are the ones measured.
    pub interrupted: bool,
    /// Latency of steady loads counts from this many seconds after their start.
    #[serde(default)]
    pub warm_up_seconds: f64,
}

/// Where the figures were taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// `uname -r`.
    pub kernel: String,
    /// CPU pinning, as given (`none` when unpinned), e.g. `broker+load=0 arm=1`.
    pub pinning: String,
    /// Kafka version the broker reported, or as configured.
    pub kafka: String,
}

/// The workload of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// `records` produced before any consumer starts; measured: the drain.
    Backlog { records: u64 },
    /// `rate` records/s produced for `seconds` while the consumers follow.
    Steady { rate: u64, seconds: f64 },
}

impl Workload {
    /// Short label: `backlog 1000000`, `steady 1000/s`.
    pub fn label(&self) -> String {
        match self {
            Workload::Backlog { records } => format!("backlog {records}"),
            Workload::Steady { rate, .. } => format!("steady {rate}/s"),
        }
    }
}

/// One point of the matrix, both arms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    pub workload: Workload,
    /// N: direct consumer groups (arm D) or subscriptions (arm F).
    pub subscribers: u32,
    pub partitions: u32,
    /// Value size of every record, bytes.
    pub record_size: u32,
    /// Records produced for each arm (the same sequence numbers, keys and sizes).
    pub records: u64,
    /// RFC 3339 time the cell started.
    pub started_at: String,
    pub direct: Option<Arm>,
    pub fanout: Option<Arm>,
    /// Both arms ran and every consumer of both received exactly the same set of records
    /// (sequence number and partition), each at least once. `None` when one arm is missing.
    pub same_records: Option<bool>,
}

/// The figures of one arm in one cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Arm {
    /// `direct` or `fanout`.
    pub arm: String,
    /// Seconds from the start (backlog: consumers started; steady: first record produced)
    /// until the last consumer had every record (or gave up).
    pub wall_seconds: f64,
    /// Records every consumer received, distinct, summed over consumers (N × records when
    /// complete).
    pub delivered: u64,
    /// Deliveries of a record a consumer already had.
    pub duplicates: u64,
    /// Records some consumer never received, summed over consumers.
    pub missing: u64,
    /// Each consumer's rate: its distinct records ÷ (its last receive − start), records/s.
    pub consumer_rates: Vec<f64>,
    /// Kafka traffic of every Kafka client in the arm, over the measured interval.
    pub kafka: KafkaTraffic,
    /// The same per Kafka client role (`ingest`, `catchup`, `cursors`, … for fanout;
    /// `consumer` for direct).
    pub kafka_by_client: BTreeMap<String, KafkaTraffic>,
    /// Every process of the arm: the server (fanout), the subscribers or direct consumers.
    pub processes: Vec<Process>,
    /// End-to-end latency (receive time − produce time carried in the record), all
    /// consumers merged. Meaningful for steady workloads only.
    pub latency: Latency,
    /// Order-independent digest of the distinct (sequence number, partition) set every
    /// consumer received; equal across consumers when `consistent`.
    pub record_digest: u64,
    /// Every consumer of the arm reported the same digest and count.
    pub consistent: bool,
}

/// Kafka client traffic (librdkafka statistics: `rxbytes`, `txbytes`, `tx`, `req.Fetch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KafkaTraffic {
    /// Bytes received from brokers: the broker's egress to this arm.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Requests sent.
    pub requests: u64,
    pub fetch_requests: u64,
}

impl KafkaTraffic {
    pub fn add(&mut self, o: &KafkaTraffic) {
        self.rx_bytes += o.rx_bytes;
        self.tx_bytes += o.tx_bytes;
        self.requests += o.requests;
        self.fetch_requests += o.fetch_requests;
    }
}

/// What one process of an arm cost over the measured interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Process {
    /// `server`, `subscriber` or `consumer`.
    pub role: String,
    pub pid: u32,
    /// utime + stime (`/proc/PID/stat`), seconds.
    pub cpu_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// `VmHWM` of `/proc/PID/status`, bytes.
    pub peak_rss_bytes: u64,
    /// `syscw` of `/proc/PID/io`: write-family system calls (write, writev, pwrite; not
    /// sendmsg/sendto).
    pub write_syscalls: u64,
}

/// A latency distribution, microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Points of the cumulative distribution: (latency µs, fraction ≤ it), ascending.
    pub cdf: Vec<(f64, f64)>,
}

impl Arm {
    /// CPU-seconds of the processes with `role`.
    pub fn cpu_of(&self, role: &str) -> f64 {
        self.processes
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.cpu_seconds)
            .sum()
    }

    /// CPU-seconds of every process of the arm.
    pub fn cpu_total(&self) -> f64 {
        self.processes.iter().map(|p| p.cpu_seconds).sum()
    }
}

/// What `isolation --json` writes (G10): fast subscriptions' drain rate without and with
/// one more subscription throttled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Isolation {
    pub command: String,
    pub machine: Machine,
    /// Subscriptions at full speed (N).
    pub fast: u32,
    pub records: u64,
    pub record_size: u32,
    /// Fraction of the baseline rate the throttled subscription is held to.
    pub slow_fraction: f64,
    pub rounds: Vec<IsolationRound>,
    /// Median of the rounds' ratios: the G10 figure.
    pub median_ratio: f64,
    /// Peak resident memory of the server over the run, if it was sampled.
    pub server_peak_rss_bytes: Option<u64>,
}

/// One baseline / throttled pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IsolationRound {
    /// Each fast subscription's rate, records/s, alone.
    pub baseline: Vec<f64>,
    /// The same with the throttled one.
    pub throttled: Vec<f64>,
    /// The throttled subscription's rate.
    pub slow: f64,
    /// mean(throttled) ÷ mean(baseline).
    pub ratio: f64,
    /// min(throttled) ÷ max(baseline).
    pub worst_pair: f64,
}
