//! End-to-end tests against a real Apache Kafka broker (see `support`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

mod admin;
mod bad_input;
mod clients;
mod delivery;
mod durability;
mod gaps;
mod handler;
mod isolation;
mod ordering;
mod redelivery;
mod sharding;
