//! The gRPC contract of fanout: `package fanout.v1`.
//!
//! Generated code lives here and only here; the server and the client convert to their own
//! domain types at their edges.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

pub mod v1 {
    tonic::include_proto!("fanout.v1");
}
