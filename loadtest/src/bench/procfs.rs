//! What a process has cost so far, from `/proc`.

use std::sync::OnceLock;

use anyhow::Context;

/// Counters of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// `VmHWM`: the peak resident set so far, bytes.
    pub peak_rss_bytes: u64,
    /// `syscw`: write-family system calls so far.
    pub write_syscalls: u64,
}

impl Sample {
    /// What happened between `earlier` and `self` (the peak is `self`'s).
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            user_seconds: (self.user_seconds - earlier.user_seconds).max(0.0),
            system_seconds: (self.system_seconds - earlier.system_seconds).max(0.0),
            peak_rss_bytes: self.peak_rss_bytes,
            write_syscalls: self.write_syscalls.saturating_sub(earlier.write_syscalls),
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 if that fails).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The counters of process `pid` (all its threads).
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (user, system) = parse_stat(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    let tps = ticks_per_second();
    Ok(Sample {
        user_seconds: user as f64 / tps,
        system_seconds: system as f64 / tps,
        peak_rss_bytes: field(&status, "VmHWM:").unwrap_or(0) * 1024,
        write_syscalls: field(&io, "syscw:").unwrap_or(0),
    })
}

/// utime and stime (ticks) of a `/proc/PID/stat` line. The command name in parentheses
/// may hold spaces, so fields are counted after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime = f.nth(11)?.parse().ok()?;
    let stime = f.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The first number after `name` in a `key: value` file.
fn field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The machine: CPU model, cores, memory, kernel.
pub fn machine() -> super::result::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = field(&meminfo, "MemTotal:").unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    super::result::Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: (memory_gib * 10.0).round() / 10.0,
        kernel,
        pinning: "none".to_owned(),
        kafka: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "1234 (fanout server) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat(line), Some((250, 75)));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("own /proc");
        assert!(s.peak_rss_bytes > 0);
    }
}
