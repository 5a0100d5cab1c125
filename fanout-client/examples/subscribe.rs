//! Subscribes and handles records, 16 at a time, until Ctrl-C.
//!
//! ```sh
//! cargo run -p fanout-client --example subscribe -- dns://fanout-grpc:50051 site-events bookings
//! ```
//!
//! The first argument is anything [`fanout_client::Discovery`] parses: one endpoint
//! (`http://127.0.0.1:50051`), a list, `dns://name:port` or `shards+http://admin:8080`.

// An example program: stdout is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use fanout_client::{Error, Nack, Record, Subscriber};

/// The work: here, print the record. An error gives it back for another try in 5 s.
async fn handle(record: Record) -> Result<(), Nack> {
    let value = std::str::from_utf8(record.value.as_deref().unwrap_or_default())
        .map_err(|e| Nack::after(Duration::from_secs(5), e))?;
    println!(
        "{} {}:{} attempt {} {value}",
        record.shard(),
        record.partition,
        record.offset,
        record.attempt
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shards, topic, subscription] = args.as_slice() else {
        eprintln!("usage: subscribe <shards> <topic> <subscription>");
        std::process::exit(2);
    };
    let sub = Subscriber::builder(shards.parse()?)
        .topic(topic)
        .subscription(subscription)
        .connect()
        .await?;
    let stats = sub
        .run(
            16,
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
            handle,
        )
        .await?;
    eprintln!("{} acked, {} given back", stats.acked, stats.nacked);
    Ok(())
}
