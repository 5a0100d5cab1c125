//! Who the shards of a cluster are, read from Kafka's own record of the shard group.
//!
//! Every shard's group consumer carries the shard's name and addresses in its client id;
//! Kafka lists the members of a group with their client ids and their assignments, so any
//! shard can answer `GET /v1/shards` for the whole cluster without a membership protocol of
//! its own, and a shard that died drops out of the list when Kafka drops it from the group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_core::model::Partition;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::kafka::MetadataClient;

/// A shard's identity: its name and where others reach it. Carried in its group consumer's
/// client id, so that every shard of the cluster can list the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard's name (the pod name on Kubernetes).
    pub id: String,
    /// Where subscribers reach its gRPC service.
    pub grpc_address: String,
    /// Where operators and tools reach its admin API.
    pub admin_address: String,
}

/// Separates the fields of a shard's client id (not allowed in shard names).
const SEP: char = '|';

/// The client id of a shard's group consumer: `fanout-<cluster>-ingest|<name>|<grpc>|<admin>`.
pub fn client_id(cluster: &str, shard: &ShardInfo) -> String {
    format!(
        "{}{}{SEP}{}{SEP}{}",
        prefix(cluster),
        shard.id,
        shard.grpc_address,
        shard.admin_address
    )
}

fn prefix(cluster: &str) -> String {
    format!("fanout-{cluster}-ingest{SEP}")
}

/// The shard a group member's client id names, if it is a shard of `cluster`.
pub fn parse_client_id(cluster: &str, client_id: &str) -> Option<ShardInfo> {
    let rest = client_id.strip_prefix(&prefix(cluster))?;
    let mut fields = rest.split(SEP);
    let (id, grpc, admin) = (fields.next()?, fields.next()?, fields.next()?);
    (fields.next().is_none() && !id.is_empty()).then(|| ShardInfo {
        id: id.to_owned(),
        grpc_address: grpc.to_owned(),
        admin_address: admin.to_owned(),
    })
}

/// Why a shard name cannot be used.
pub fn check_shard_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("shard name {name:?} must be 1-200 characters"));
    }
    check_field("shard name", name)
}

/// Why an advertised address cannot be used.
pub fn check_address(addr: &str) -> Result<(), String> {
    check_field("address", addr)
}

/// A field of a client id may not hold the separator, spaces or control characters.
fn check_field(what: &str, value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| c == SEP || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} {value:?} must not contain '{SEP}', spaces or control characters"
        ));
    }
    Ok(())
}

/// Why a shard may not start under its name.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error(
        "another shard of cluster {cluster:?} is named {name:?} (gRPC at {other}); give every shard its own --shard-id"
    )]
    Taken {
        cluster: String,
        name: String,
        other: String,
    },
    #[error("the membership check failed: {0}")]
    Thread(String),
}

/// Refuses to start under the name of another live shard of the cluster (two shards with
/// one name would fence each other's cursor writes). A member with this name and other
/// addresses may be an earlier life of this shard whose session has not expired yet: it is
/// waited for, up to `wait` (the session timeout and a little more). If Kafka cannot list
/// the group, the name is not checked.
pub async fn refuse_a_taken_name(
    client: Arc<MetadataClient>,
    cluster: &str,
    me: &ShardInfo,
    wait: Duration,
) -> Result<(), NameError> {
    let deadline = Instant::now() + wait;
    loop {
        let (c, group) = (client.clone(), cluster.to_owned());
        let members = tokio::task::spawn_blocking(move || members(c.as_ref(), &group))
            .await
            .map_err(|e| NameError::Thread(e.to_string()))?;
        let other = match members {
            Ok(members) => members
                .iter()
                .filter_map(|m| parse_client_id(cluster, &m.client_id))
                .find(|s| s.id == me.id && s.grpc_address != me.grpc_address),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the shard group; not checking the shard name");
                None
            }
        };
        let Some(other) = other else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(NameError::Taken {
                cluster: cluster.to_owned(),
                name: me.id.clone(),
                other: other.grpc_address,
            });
        }
        tracing::warn!(shard = %me.id, other = %other.grpc_address, "a shard of this name is still in the group; waiting for its session to end");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A member of the shard group as Kafka describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub client_id: String,
    /// Assigned partitions by topic (empty while the group rebalances).
    pub assignment: BTreeMap<String, Vec<Partition>>,
}

/// The members of `group`. Blocking.
pub fn members<C: Consumer<X>, X: ConsumerContext>(
    client: &C,
    group: &str,
) -> Result<Vec<Member>, KafkaError> {
    let list = client.fetch_group_list(Some(group), crate::kafka::REQUEST_TIMEOUT)?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| Member {
            client_id: m.client_id().to_owned(),
            assignment: m
                .assignment()
                .and_then(parse_assignment)
                .unwrap_or_default(),
        })
        .collect())
}

/// Decodes a consumer protocol assignment (version, then per topic its name and
/// partitions, then user data), as the classic group protocol stores it.
pub fn parse_assignment(raw: &[u8]) -> Option<BTreeMap<String, Vec<Partition>>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (head, rest) = self.0.split_first_chunk::<N>()?;
            self.0 = rest;
            Some(*head)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take::<2>().map(i16::from_be_bytes)
        }
        fn i32(&mut self) -> Option<i32> {
            self.take::<4>().map(i32::from_be_bytes)
        }
        fn string(&mut self) -> Option<String> {
            let len = usize::try_from(self.i16()?).ok()?;
            let (s, rest) = self.0.split_at_checked(len)?;
            self.0 = rest;
            String::from_utf8(s.to_vec()).ok()
        }
    }
    let mut r = Reader(raw);
    let _version = r.i16()?;
    let topics = usize::try_from(r.i32()?).ok()?;
    let mut out = BTreeMap::new();
    for _ in 0..topics.min(100_000) {
        let topic = r.string()?;
        let n = usize::try_from(r.i32()?).ok()?;
        let mut ps = Vec::with_capacity(n.min(100_000));
        for _ in 0..n {
            ps.push(r.i32()?);
        }
        ps.sort_unstable();
        out.entry(topic).or_insert_with(Vec::new).extend(ps);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            grpc_address: "10.0.0.7:50051".into(),
            admin_address: "[::1]:8080".into(),
        }
    }

    #[test]
    fn client_ids_round_trip_and_belong_to_one_cluster() {
        let id = client_id("prod", &info("fanout-0"));
        assert_eq!(id, "fanout-prod-ingest|fanout-0|10.0.0.7:50051|[::1]:8080");
        assert_eq!(parse_client_id("prod", &id), Some(info("fanout-0")));
        assert_eq!(parse_client_id("prod-2", &id), None);
        assert_eq!(parse_client_id("prod", "fanout-prod-ingest"), None);
        assert_eq!(parse_client_id("prod", "fanout-prod-ingest||a|b"), None);
        assert!(check_shard_name("fanout-0").is_ok());
        assert!(check_shard_name("a|b").is_err());
        assert!(check_shard_name("a b").is_err());
        assert!(check_shard_name("").is_err());
    }

    #[test]
    fn assignments_decode() {
        let mut raw = Vec::new();
        raw.extend(1i16.to_be_bytes());
        raw.extend(2i32.to_be_bytes());
        for (t, ps) in [("orders", vec![3, 1]), ("clicks", vec![0])] {
            raw.extend(i16::try_from(t.len()).unwrap().to_be_bytes());
            raw.extend(t.as_bytes());
            raw.extend(i32::try_from(ps.len()).unwrap().to_be_bytes());
            for p in ps {
                raw.extend(i32::to_be_bytes(p));
            }
        }
        raw.extend((-1i32).to_be_bytes());
        let got = parse_assignment(&raw).unwrap();
        assert_eq!(got["orders"], vec![1, 3]);
        assert_eq!(got["clicks"], vec![0]);
        assert_eq!(parse_assignment(&raw[..9]), None, "truncated");
        assert_eq!(parse_assignment(&[]), None);
    }
}
