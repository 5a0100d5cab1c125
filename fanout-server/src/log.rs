//! The per-partition window of records shared by every subscription of a topic.
//!
//! One writer (the partition's ingest task) appends batches; many readers (the streams of
//! every subscription) copy out reference-counted records. The window covers the offsets
//! `[start, head)`: every record Kafka holds in that range is in it (offsets missing from it
//! are transaction markers, aborted or compacted records). It is trimmed below the lowest
//! cursor of the partition's subscriptions and bounded by a byte budget; a full window makes
//! the writer wait, which stops reading that partition from Kafka.
//!
//! Core module: no I/O. This is the walking-skeleton version guarded by a reader-writer lock;
//! the delivery-core issue replaces it with a lock-free ring.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::model::{Offset, Record};

/// Records of one Kafka fetch for one partition, in offset order. Immutable once built.
#[derive(Debug)]
pub struct Batch {
    records: Vec<Record>,
    bytes: usize,
}

impl Batch {
    /// Builds a batch; `records` must be non-empty and in ascending offset order.
    pub fn new(records: Vec<Record>) -> Option<Self> {
        if records.is_empty() || records.windows(2).any(|w| w[0].offset >= w[1].offset) {
            return None;
        }
        let bytes = records.iter().map(Record::size).sum();
        Some(Self { records, bytes })
    }

    pub fn first_offset(&self) -> Offset {
        self.records[0].offset
    }

    pub fn last_offset(&self) -> Offset {
        self.records[self.records.len() - 1].offset
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("batch starts at offset {first}, below the window head {head}")]
    BehindHead { first: Offset, head: Offset },
    #[error("window is full ({bytes} of {budget} bytes)")]
    Full { bytes: usize, budget: usize },
}

#[derive(Debug)]
struct Window {
    start: Offset,
    head: Offset,
    batches: VecDeque<Arc<Batch>>,
    bytes: usize,
}

/// The shared window of one owned partition.
#[derive(Debug)]
pub struct PartitionLog {
    /// Most bytes the window holds before the writer must wait for trimming.
    budget: usize,
    /// The window itself.
    window: RwLock<Window>,
    /// Signalled when a reader acked something, so a waiting writer trims and looks again.
    progress: Notify,
    /// Set when the partition is being given up: readers take nothing more from it.
    closed: AtomicBool,
}

impl PartitionLog {
    /// An empty window whose coverage begins at `start`.
    pub fn new(start: Offset, budget: usize) -> Self {
        Self {
            budget,
            window: RwLock::new(Window {
                start,
                head: start,
                batches: VecDeque::new(),
                bytes: 0,
            }),
            progress: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Stops deliveries from this window (its partition is being revoked).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Tells the writer that readers made progress (room may be freed by trimming).
    pub fn notify_progress(&self) {
        self.progress.notify_one();
    }

    /// Completes after the next [`Self::notify_progress`] (or at once if one is pending).
    pub async fn progressed(&self) {
        self.progress.notified().await;
    }

    /// First offset covered.
    pub fn start(&self) -> Offset {
        self.window.read().start
    }

    /// One past the last offset covered: the next offset the writer expects.
    pub fn head(&self) -> Offset {
        self.window.read().head
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.window.read().bytes
    }

    /// Appends a batch that follows the head. A non-empty window refuses a batch that would
    /// exceed the budget; an empty one accepts any batch, so a huge record cannot wedge it.
    pub fn append(&self, batch: Batch) -> Result<(), AppendError> {
        let mut w = self.window.write();
        if batch.first_offset() < w.head {
            return Err(AppendError::BehindHead {
                first: batch.first_offset(),
                head: w.head,
            });
        }
        if !w.batches.is_empty() && w.bytes + batch.bytes > self.budget {
            return Err(AppendError::Full {
                bytes: w.bytes,
                budget: self.budget,
            });
        }
        w.head = batch.last_offset() + 1;
        w.bytes += batch.bytes;
        w.batches.push_back(Arc::new(batch));
        Ok(())
    }

    /// Would a batch of `bytes` fit now?
    pub fn has_room_for(&self, bytes: usize) -> bool {
        let w = self.window.read();
        w.batches.is_empty() || w.bytes + bytes <= self.budget
    }

    /// Copies out up to `max_records` records with offset `>= from`, stopping before the
    /// total size passes `max_bytes` (at least one record is returned if any is there).
    /// Returns `None` if `from` is below the window start: those records are not held.
    pub fn read(&self, from: Offset, max_records: usize, max_bytes: usize) -> Option<Vec<Record>> {
        let w = self.window.read();
        if from < w.start {
            return None;
        }
        let mut out = Vec::new();
        if max_records == 0 {
            return Some(out);
        }
        // First batch whose last offset is >= from.
        let first = w.batches.partition_point(|b| b.last_offset() < from);
        let mut bytes = 0;
        'batches: for batch in w.batches.range(first..) {
            let skip = batch.records.partition_point(|r| r.offset < from);
            for r in &batch.records[skip..] {
                let size = r.size();
                if !out.is_empty() && bytes + size > max_bytes {
                    break 'batches;
                }
                bytes += size;
                out.push(r.clone());
                if out.len() == max_records {
                    break 'batches;
                }
            }
        }
        Some(out)
    }

    /// Drops every batch that lies entirely below `below`, and moves the start up to it
    /// (never past the head). Returns the bytes freed.
    pub fn trim(&self, below: Offset) -> usize {
        let mut w = self.window.write();
        let mut freed = 0;
        while w.batches.front().is_some_and(|b| b.last_offset() < below) {
            if let Some(b) = w.batches.pop_front() {
                freed += b.bytes;
            }
        }
        w.bytes -= freed;
        let new_start = below.min(w.head);
        if new_start > w.start {
            w.start = new_start;
        }
        freed
    }

    /// Empties the window and restarts its coverage at `offset` (after the reader of the
    /// partition was moved there).
    pub fn reset(&self, offset: Offset) {
        let mut w = self.window.write();
        w.batches.clear();
        w.bytes = 0;
        w.start = offset;
        w.head = offset;
    }
}

#[cfg(test)]
mod tests;
