//! fanout's durable state, kept in Kafka: the internal topics, the registry and the cursors.

pub mod cursors;
pub mod registry;
pub mod topics;

use std::time::Duration;

use rdkafka::error::KafkaError;

/// What went wrong talking to fanout's internal topics.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
    #[error("internal topic {topic}: {problem}")]
    InternalTopic { topic: String, problem: String },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("shutting down")]
    ShuttingDown,
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, String),
    /// The cursor writer can never write again: Kafka fenced it (another process registered
    /// the same transactional id, i.e. runs under the same shard name) or it failed fatally.
    #[error("cursor writer fenced: {0} (is another shard running with the same --shard-id?)")]
    Fenced(String),
}

impl StoreError {
    pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Self {
        let what = what.into();
        move |source| StoreError::Kafka { what, source }
    }
}
