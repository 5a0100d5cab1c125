//! fanout-server: reads each registered Kafka topic once and pushes its records over gRPC
//! streams to every subscription, tracking each subscription's acks and cursors.
//!
//! Layout (see docs/ARCHITECTURE.md): the core, without I/O, is the crate `fanout-core`;
//! this crate holds the adapters around it (`ingest`, `grpc`, `admin`, `store`, `kafka`,
//! `telemetry`, `wire`); `app` wires everything and owns every long-lived task.

// Adapters.
pub mod admin;
pub mod deadletter;
pub mod grpc;
pub mod ingest;
pub mod kafka;
pub mod lease;
pub mod membership;
pub mod store;
pub mod telemetry;
pub mod wire;

// Wiring.
pub mod app;
pub mod config;
