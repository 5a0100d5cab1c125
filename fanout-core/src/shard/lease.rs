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

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// When a gap suspended the lease, plus one; 0 while it is not suspended.
    suspended_since: AtomicU64,
}

impl Lease {
    /// A live lease that a gap longer than `gap` suspends.
    pub fn new(gap: Duration) -> Self {
        Self {
            base: Instant::now(),
            gap_ms: u64::try_from(gap.as_millis()).unwrap_or(u64::MAX).max(1),
            renewed_ms: AtomicU64::new(0),
            suspended_since: AtomicU64::new(0),
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
        let away = now_ms.saturating_sub(self.renewed_ms.load(Ordering::Acquire));
        let gap = away > self.gap_ms;
        if gap {
            // Suspended before the renewal is visible: `live` reads them in the other order.
            self.suspended_since
                .store(now_ms.saturating_add(1), Ordering::Release);
        }
        self.renewed_ms.fetch_max(now_ms, Ordering::AcqRel);
        gap.then(|| Duration::from_millis(away))
    }

    /// True if the lease was renewed within the gap (whether or not it is suspended).
    pub fn recent(&self, now: Instant) -> bool {
        self.ms(now)
            .saturating_sub(self.renewed_ms.load(Ordering::Acquire))
            <= self.gap_ms
    }

    /// True while the shard may deliver and write cursors: renewed recently and not
    /// suspended.
    pub fn live(&self, now: Instant) -> bool {
        self.recent(now) && !self.is_suspended()
    }

    /// True once a gap suspended the lease and nothing confirmed it since.
    pub fn is_suspended(&self) -> bool {
        self.suspended_since.load(Ordering::Acquire) != 0
    }

    /// A group operation that started at `started` succeeded. It lifts a suspension only if
    /// it started after it (an operation in flight across the gap proves nothing), and only
    /// that suspension (a later gap stays). Returns true if it lifted one.
    pub fn confirm(&self, started: Instant) -> bool {
        let since = self.suspended_since.load(Ordering::Acquire);
        if since == 0 || self.ms(started).saturating_add(1) < since {
            return false;
        }
        self.suspended_since
            .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
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
        assert!(lease.live(woke + Duration::from_millis(400)));
        assert!(!lease.confirm(woke), "nothing to lift any more");
        // A second stop: a confirmation does not renew, so it cannot hide the gap.
        let again = woke + Duration::from_secs(20);
        assert!(!lease.live(again));
        assert!(!lease.confirm(again - Duration::from_secs(1)));
        assert!(!lease.live(again), "the gap still shows");
        assert!(lease.renew(again).is_some());
        assert!(
            !lease.confirm(again - Duration::from_secs(1)),
            "began before the gap"
        );
        assert!(lease.is_suspended());
    }
}
