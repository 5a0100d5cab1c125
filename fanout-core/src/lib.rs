//! fanout-core: the part of a fanout shard that does no I/O.
//!
//! - [`model`]: validated names, records, start positions, delivery policies.
//! - [`log`]: the shared partition log, a lock-free window of immutable batches that every
//!   subscription near the head reads; the same structure holds a subscription's private
//!   catch-up log.
//! - [`delivery`]: per subscription, which stream serves which partition, credits, and the
//!   ack window of every partition.
//! - [`registry`]: the registry's state and record format.
//! - [`shard`]: the shard's live state: registered topics, owned partitions, subscriptions,
//!   stored cursors, the lease.
//!
//! Adapters (Kafka, gRPC, HTTP) live in `fanout-server` and drive these types; time is passed
//! in, wake-ups go out through `tokio::sync` channels. See `docs/ARCHITECTURE.md`.

pub mod delivery;
pub mod log;
pub mod model;
pub mod registry;
pub mod shard;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;
