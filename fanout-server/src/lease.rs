//! The ticker that keeps the shard's lease ([`fanout_core::shard::Lease`]) renewed: a gap
//! between ticks (the process was stopped) suspends deliveries and cursor writes until the
//! flusher confirms the shard is still a member of its group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_core::shard::Shard;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Renews the lease a few times per `gap` until `cancel`.
pub async fn renew(shard: Arc<Shard>, gap: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval((gap / 8).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shard.lease().start(Instant::now());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(away) = shard.lease().renew(Instant::now()) {
            telemetry::metrics::lease_suspended();
            tracing::warn!(
                ?away,
                "this process was stopped longer than the lease allows; deliveries and cursor writes are suspended until the shard group confirms this shard still owns its partitions"
            );
        }
    }
}
