//! Creates fanout's internal topics at startup and refuses to run on wrong ones.
//!
//! Both are compacted (a cursor or registry entry lives until it is replaced or deleted);
//! `compact,delete` would let retention delete live entries, so it is refused. The registry
//! needs a total order of its records, so it has exactly one partition.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;

use super::StoreError;
use crate::kafka::{self, KafkaSettings};

/// What an internal topic must look like.
#[derive(Debug, Clone)]
pub struct Expected {
    pub name: String,
    /// Exact partition count, or `None` for any.
    pub partitions: Option<i32>,
    /// Partitions to create it with.
    pub create_partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
}

/// How the internal topics are replicated.
#[derive(Debug, Clone, Copy)]
pub struct Replication {
    pub factor: i32,
    pub min_insync_replicas: i32,
}

/// The internal topics of a cluster.
pub fn expected(cfg: &KafkaSettings, replication: Replication) -> Vec<Expected> {
    vec![
        Expected {
            name: cfg.registry_topic(),
            partitions: Some(1),
            create_partitions: 1,
            replication_factor: replication.factor,
            min_insync_replicas: replication.min_insync_replicas,
        },
        Expected {
            name: cfg.cursors_topic(),
            partitions: None,
            create_partitions: 1,
            replication_factor: replication.factor,
            min_insync_replicas: replication.min_insync_replicas,
        },
    ]
}

/// Creates the internal topics that are missing and checks every one of them.
pub async fn ensure(cfg: &KafkaSettings, replication: Replication) -> Result<(), StoreError> {
    let admin = kafka::admin(cfg).map_err(StoreError::kafka("creating the admin client"))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for want in expected(cfg, replication) {
        let min_isr = want.min_insync_replicas.to_string();
        let new = NewTopic::new(
            &want.name,
            want.create_partitions,
            TopicReplication::Fixed(want.replication_factor),
        )
        .set("cleanup.policy", "compact")
        .set("min.insync.replicas", &min_isr);
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(StoreError::kafka(format!("creating {}", want.name)))?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic = %want.name, "created internal topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    return Err(StoreError::InternalTopic {
                        topic: want.name.clone(),
                        problem: format!(
                            "cannot be created with replication factor {}: the cluster has fewer brokers \
                             (set --internal-replication-factor and --internal-min-insync-replicas)",
                            want.replication_factor
                        ),
                    });
                }
                Err((_, code)) => {
                    return Err(StoreError::InternalTopic {
                        topic: want.name.clone(),
                        problem: format!("cannot be created: {code}"),
                    });
                }
            }
        }
        check(cfg, &admin, &want).await?;
    }
    Ok(())
}

async fn check(
    cfg: &KafkaSettings,
    admin: &AdminClient<DefaultClientContext>,
    want: &Expected,
) -> Result<(), StoreError> {
    let wrong = |problem: String| StoreError::InternalTopic {
        topic: want.name.clone(),
        problem,
    };
    let md_client = std::sync::Arc::new(
        kafka::metadata_client(cfg).map_err(StoreError::kafka("metadata client"))?,
    );
    // A topic just created takes a moment to show in every broker's metadata: look again,
    // for a bounded time, before calling it missing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let layout = loop {
        let (client, name) = (md_client.clone(), want.name.clone());
        let layout = tokio::task::spawn_blocking(move || {
            let md = client.fetch_metadata(Some(&name), kafka::REQUEST_TIMEOUT)?;
            Ok::<_, rdkafka::error::KafkaError>(md.topics().first().map(|t| {
                (
                    t.partitions().len(),
                    t.partitions()
                        .iter()
                        .map(|p| p.replicas().len())
                        .min()
                        .unwrap_or(0),
                )
            }))
        })
        .await
        .map_err(|e| wrong(format!("metadata task failed: {e}")))?
        .map_err(StoreError::kafka(format!(
            "reading metadata of {}",
            want.name
        )))?;
        if layout.is_some_and(|(p, _)| p > 0) || std::time::Instant::now() >= deadline {
            break layout;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Dropping a consumer may block: off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(md_client)).await;
    let Some((partitions, replicas)) = layout.filter(|(p, _)| *p > 0) else {
        return Err(wrong("does not exist after creation".into()));
    };
    if let Some(n) = want.partitions
        && partitions != usize::try_from(n).unwrap_or(0)
    {
        return Err(wrong(format!(
            "has {partitions} partitions but must have exactly {n} (its records need one order); \
             delete and recreate it, or use another --cluster"
        )));
    }
    if i32::try_from(replicas).unwrap_or(0) < want.replication_factor {
        return Err(wrong(format!(
            "has replication factor {replicas}, below the configured {} \
             (raise it with kafka-reassign-partitions, or lower --internal-replication-factor)",
            want.replication_factor
        )));
    }
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(&want.name)], &opts)
        .await
        .map_err(StoreError::kafka(format!("describing {}", want.name)))?;
    let resource = configs
        .into_iter()
        .next()
        .ok_or_else(|| wrong("describe returned nothing".into()))?
        .map_err(|code| wrong(format!("cannot describe its configuration: {code}")))?;
    let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
    let policy = value("cleanup.policy").unwrap_or_default();
    if policy != "compact" {
        return Err(wrong(format!(
            "has cleanup.policy={policy:?} but must be \"compact\" \
             (fix: kafka-configs --alter --entity-type topics --entity-name {} --add-config cleanup.policy=compact)",
            want.name
        )));
    }
    let min_isr: i32 = value("min.insync.replicas")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if min_isr < want.min_insync_replicas {
        return Err(wrong(format!(
            "has min.insync.replicas={min_isr}, below the configured {} \
             (raise it with kafka-configs, or lower --internal-min-insync-replicas)",
            want.min_insync_replicas
        )));
    }
    Ok(())
}
