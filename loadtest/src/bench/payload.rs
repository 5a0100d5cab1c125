//! The records of a benchmark and the librdkafka statistics of its clients.
//!
//! A value is `seq` (u64, little endian), the produce time in nanoseconds since the Unix
//! epoch (u64), then filler up to the record size. The key is derived from `seq`, so the
//! same sequence number lands in the same partition in both arms.

use serde::Deserialize;

use super::result::KafkaTraffic;

/// Bytes of a value taken by the sequence number and the produce time.
pub const HEADER: usize = 16;

/// Different keys in a run (records of one key keep their order in one partition).
const KEYS: u64 = 4096;

/// The key of record `seq`.
pub fn key(seq: u64) -> String {
    format!("key-{}", seq % KEYS)
}

/// Fills `buf` (of the record size, at least [`HEADER`] bytes) with record `seq`'s value,
/// stamped `produced_ns`.
pub fn fill(buf: &mut [u8], seq: u64, produced_ns: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&produced_ns.to_le_bytes());
}

/// The sequence number and produce time of a value, if it is one of ours.
pub fn parse(value: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let ns = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((seq, ns))
}

/// The digest term of one record: a mix of its sequence number and partition (summed
/// over a set, it does not depend on the order of arrival).
pub fn mix(seq: u64, partition: i32) -> u64 {
    // splitmix64 finalizer
    let mut z = seq ^ (u64::from(partition as u32) << 48) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The top level of a librdkafka statistics report (`rx_bytes` here, `rxbytes` per broker).
#[derive(Debug, Deserialize)]
struct Stats {
    #[serde(default)]
    rx_bytes: u64,
    #[serde(default)]
    tx: u64,
    #[serde(default)]
    tx_bytes: u64,
    #[serde(default)]
    brokers: std::collections::HashMap<String, Broker>,
}

#[derive(Debug, Deserialize)]
struct Broker {
    #[serde(default)]
    req: std::collections::HashMap<String, u64>,
}

/// The cumulative traffic of a client from one librdkafka statistics report.
pub fn parse_stats(json: &[u8]) -> Option<KafkaTraffic> {
    let s: Stats = serde_json::from_slice(json).ok()?;
    Some(KafkaTraffic {
        rx_bytes: s.rx_bytes,
        tx_bytes: s.tx_bytes,
        requests: s.tx,
        fetch_requests: s.brokers.values().filter_map(|b| b.req.get("Fetch")).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_carries_its_sequence_number_and_time() {
        let mut v = vec![0u8; 100];
        fill(&mut v, 42, 1_700_000_000_000_000_000);
        assert_eq!(parse(&v), Some((42, 1_700_000_000_000_000_000)));
        assert_eq!(parse(&v[..10]), None);
    }

    #[test]
    fn the_digest_depends_on_the_set_not_the_order() {
        let a = mix(1, 0).wrapping_add(mix(2, 1));
        let b = mix(2, 1).wrapping_add(mix(1, 0));
        assert_eq!(a, b);
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_ne!(a, mix(1, 0).wrapping_add(mix(3, 1)));
    }

    #[test]
    fn statistics_sum_fetches_over_brokers() {
        let json = br#"{"name":"c#consumer-1","rx":10,"rx_bytes":5000,"tx":12,"tx_bytes":900,
            "brokers":{"127.0.0.1:9092/1":{"req":{"Fetch":7,"Produce":0}},
                       "GroupCoordinator":{"req":{"Fetch":0,"Heartbeat":3}}}}"#;
        let t = parse_stats(json).expect("parses");
        assert_eq!(
            t,
            KafkaTraffic {
                rx_bytes: 5000,
                tx_bytes: 900,
                requests: 12,
                fetch_requests: 7
            }
        );
        assert!(parse_stats(b"{not json").is_none());
    }
}
