//! Whether this shard may still act on the partitions it believes it owns.
//!
//! Kafka takes a shard's partitions away when it has not heard from it for the session
//! timeout, but the shard itself only learns that on its next heartbeat. A process that was
//! stopped (SIGSTOP, a frozen VM, a stall of the whole runtime) wakes up believing it still
//! owns partitions that another shard may be serving by then: a *zombie*. Its cursor writes
//! are fenced by Kafka (transactions carrying the group generation), and this lease keeps it
//! from delivering in the meantime: a ticker renews it every few hundred milliseconds; a gap
//! longer than `gap` between renewals suspends it, and only a group operation *started after
//! the suspension* (a transaction that committed offsets with the shard's group metadata)
//! confirms the shard is still a member and lifts it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug)]
pub struct Lease {
    /// Time zero of the millisecond counters below (monotonic: it runs while the process
    /// is stopped).
    base: Instant,
    /// Longest gap between renewals that keeps the lease.
    gap_ms: u64,
    /// Last renewal.
    renewed_ms: AtomicU64,
    /// Set by a gap; cleared by a confirmation that started after `suspended_ms`.
    suspended: AtomicBool,
    suspended_ms: AtomicU64,
}

impl Lease {
    /// A live lease that a gap longer than `gap` suspends.
    pub fn new(gap: Duration) -> Self {
        Self {
            base: Instant::now(),
            gap_ms: u64::try_from(gap.as_millis()).unwrap_or(u64::MAX).max(1),
            renewed_ms: AtomicU64::new(0),
            suspended: AtomicBool::new(false),
            suspended_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts renewing: the time before (the shard's start-up) is no gap.
    pub fn start(&self, now: Instant) {
        self.renewed_ms.fetch_max(self.ms(now), Ordering::AcqRel);
    }

    /// Renews the lease; call it every fraction of `gap`. Returns how long the process was
    /// away if this renewal found a gap (the lease is then suspended).
    pub fn renew(&self, now: Instant) -> Option<Duration> {
        let now_ms = self.ms(now);
        let last = self.renewed_ms.load(Ordering::Acquire);
        let away = now_ms.saturating_sub(last);
        let gap = away > self.gap_ms;
        if gap {
            // Suspended before the renewal is visible: `live` reads them in the other order.
            self.suspended_ms.store(now_ms, Ordering::Release);
            self.suspended.store(true, Ordering::Release);
        }
        self.renewed_ms.fetch_max(now_ms, Ordering::AcqRel);
        gap.then(|| Duration::from_millis(away))
    }

    /// True while the shard may deliver and write cursors: renewed recently and not
    /// suspended.
    pub fn live(&self, now: Instant) -> bool {
        let renewed = self.renewed_ms.load(Ordering::Acquire);
        !self.suspended.load(Ordering::Acquire)
            && self.ms(now).saturating_sub(renewed) <= self.gap_ms
    }

    /// True once a gap suspended the lease and nothing confirmed it since.
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// A group operation that started at `started` succeeded. It lifts a suspension only if
    /// it started after it (an operation in flight across the gap proves nothing). Returns
    /// true if it lifted one.
    pub fn confirm(&self, started: Instant) -> bool {
        if !self.suspended.load(Ordering::Acquire) {
            return false;
        }
        if self.ms(started) < self.suspended_ms.load(Ordering::Acquire) {
            return false;
        }
        self.renewed_ms
            .fetch_max(self.ms(Instant::now()), Ordering::AcqRel);
        self.suspended.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_suspends_until_an_operation_started_after_it_confirms() {
        let lease = Lease::new(Duration::from_secs(3));
        let t0 = lease.base;
        assert!(lease.live(t0));
        assert_eq!(lease.renew(t0 + Duration::from_secs(1)), None);
        assert!(lease.live(t0 + Duration::from_secs(2)));
        // Stopped for 30 s: not live even before the ticker notices.
        let woke = t0 + Duration::from_secs(31);
        assert!(!lease.live(woke));
        assert_eq!(lease.renew(woke), Some(Duration::from_secs(30)));
        assert!(lease.is_suspended());
        // Renewals alone do not lift it.
        assert_eq!(lease.renew(woke + Duration::from_millis(200)), None);
        assert!(!lease.live(woke + Duration::from_millis(300)));
        // An operation that began before the gap was noticed proves nothing.
        assert!(!lease.confirm(t0 + Duration::from_secs(1)));
        assert!(lease.is_suspended());
        // One that began after it does.
        assert!(lease.confirm(woke + Duration::from_millis(100)));
        assert!(!lease.is_suspended());
        assert!(lease.live(Instant::now()));
        assert!(!lease.confirm(Instant::now()), "nothing to lift any more");
    }
}
