//! fanout-server: reads each registered Kafka topic once and pushes its records over gRPC
//! streams to every subscription, tracking each subscription's acks and cursors.
//!
//! Layout (see docs/ARCHITECTURE.md): core modules without I/O (`model`, `log`, `delivery`,
//! `registry`, `shard`) and adapters around them (`ingest`, `grpc`, `admin`, `store`,
//! `kafka`, `telemetry`, `wire`); `app` wires everything and owns every long-lived task.

// Core: no I/O (checked by tests/layering.rs).
pub mod delivery;
pub mod log;
pub mod model;
pub mod registry;
pub mod shard;

// Adapters.
pub mod admin;
pub mod deadletter;
pub mod grpc;
pub mod ingest;
pub mod kafka;
pub mod membership;
pub mod store;
pub mod telemetry;
pub mod wire;

// Wiring.
pub mod app;
pub mod config;
