//! One subscription followed on every shard of a cluster: a `fanout-client` subscriber with
//! a static list of shard endpoints (one stream per shard; `record.shard()` names the one
//! that delivered a record). Shards of the list that do not answer yet (not started, killed)
//! are retried by the client in the background.

use std::time::{Duration, Instant};

use anyhow::bail;
use fanout_client::{Discovery, Subscriber, SubscriberConfig};

/// Opens `topic`/`subscription` on every endpoint. The client fails at once if no shard
/// can be reached; that is retried (1 s apart) until `wait` has passed. A refusal (unknown
/// subscription, bad settings) fails at once.
pub async fn connect(
    endpoints: &[String],
    topic: &str,
    subscription: &str,
    credits: u32,
    wait: Duration,
) -> anyhow::Result<Subscriber> {
    if endpoints.is_empty() {
        bail!("no gRPC endpoint given");
    }
    let cfg = SubscriberConfig::with_discovery(
        Discovery::Static(endpoints.to_vec()),
        topic,
        subscription,
    )
    .max_in_flight(credits);
    let deadline = Instant::now() + wait;
    loop {
        match Subscriber::connect(cfg.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::debug!(error = %e, "no shard reachable yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("{topic}/{subscription} at {}: {e}", endpoints.join(",")),
        }
    }
}
