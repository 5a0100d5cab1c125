//! A window of a partition's records: [`PartitionLog`].
//!
//! fanout keeps three kinds of window; this module is the first two.
//! - The **shared window** of an owned partition: the records every subscription near the
//!   head reads, filled by the partition's reader (`--partition-window-bytes`).
//! - A **catch-up window**: the same structure, private to one subscription too far behind
//!   the shared window, filled by a catch-up reader (`--catch-up-window-bytes`).
//! - The **ack window** (`delivery::AckWindow`) holds no records: it tracks, per
//!   subscription and partition, what was delivered and not acked yet.
//!
//! One writer (the partition's ingest task, holding the only [`LogWriter`]) appends
//! immutable batches; many readers (the streams of every subscription) find them by offset
//! and take reference-counted [`Chunk`]s of them. Nothing on the read or append path takes
//! a lock: batches sit in a fixed ring of [`ArcSwapOption`] slots, each batch stamped with
//! its sequence number so that a reader recognises a slot that was trimmed or reused under
//! it, and each batch says which offsets it covers so that a reader never returns records
//! with a hole between them.
//!
//! The window covers the offsets `[start, head)`: every record Kafka holds in that range is
//! in it (offsets missing from it are transaction markers, aborted or compacted records).
//! The writer trims it below what its subscriptions still need and keeps it within a byte
//! budget per partition, a batch-count budget (the ring), and a byte budget shared by every
//! partition of the shard ([`MemoryPool`]).
//!
//! Core module: no I/O.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use crate::model::{Header, Offset, Record};

/// Memory a held record takes besides its payload buffers: the record itself, its entry in
/// its batch's size index and the allocator's headers of its buffers. Budgets count it, so that what they bound is close to
/// what the process holds.
pub const RECORD_MEMORY: usize = std::mem::size_of::<Record>() + std::mem::size_of::<usize>() + 32;

/// What holding `record` in a window counts against the budgets: its payload (or its wire
/// encoding, which holds the payload, when larger), its headers' own allocation and keys,
/// and [`RECORD_MEMORY`].
pub fn held_bytes(record: &Record) -> usize {
    let headers = if record.headers.is_empty() {
        0
    } else {
        16 + record
            .headers
            .iter()
            .map(|h| std::mem::size_of::<Header>() + h.key.len())
            .sum::<usize>()
    };
    record.size().max(record.wire.len()) + headers + RECORD_MEMORY
}

/// Records of one Kafka fetch for one partition, in offset order. Immutable once appended.
#[derive(Debug)]
pub struct Batch {
    records: Vec<Record>,
    /// `ends[i]`: the [`Record::size`] of `records[..=i]` summed, so that a read finds how
    /// many records fit its byte limit without touching each record.
    ends: Vec<usize>,
    bytes: usize,
    /// Position in the log's sequence of batches, set at append.
    seq: u64,
    /// The window head when the batch was appended: it covers `[covers_from, last + 1)`.
    covers_from: Offset,
}

impl Batch {
    /// Builds a batch; `records` must be non-empty and in ascending offset order.
    pub fn new(records: Vec<Record>) -> Option<Self> {
        if records.is_empty() || records.windows(2).any(|w| w[0].offset >= w[1].offset) {
            return None;
        }
        let bytes = records.iter().map(held_bytes).sum();
        let ends = records
            .iter()
            .scan(0, |sum, r| {
                *sum += r.size();
                Some(*sum)
            })
            .collect();
        Some(Self {
            records,
            ends,
            bytes,
            seq: 0,
            covers_from: 0,
        })
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

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// One past the last offset covered.
    pub fn covers_to(&self) -> Offset {
        self.last_offset() + 1
    }

    /// Index of the first record at or after `offset`. Offsets within a batch are usually
    /// consecutive, so the record at `offset − first` is looked at first; a batch with gaps
    /// (transaction markers, compaction) is searched.
    fn index_of(&self, offset: Offset) -> usize {
        let first = self.first_offset();
        if offset <= first {
            return 0;
        }
        let guess = usize::try_from(offset - first).unwrap_or(usize::MAX);
        match self.records.get(guess) {
            Some(r) if r.offset == offset => guess,
            _ => self.records.partition_point(|r| r.offset < offset),
        }
    }
}

/// A run of consecutive records of one batch, shared with every other reader of it.
#[derive(Debug, Clone)]
pub struct Chunk {
    batch: Arc<Batch>,
    range: Range<usize>,
}

impl Chunk {
    /// A chunk of the records `range` of `batch`.
    pub fn new(batch: Arc<Batch>, range: Range<usize>) -> Self {
        debug_assert!(range.start < range.end && range.end <= batch.records.len());
        Self { batch, range }
    }

    /// A chunk of one record on its own (records re-read from Kafka, tests).
    pub fn single(record: Record) -> Self {
        let batch = Batch {
            bytes: held_bytes(&record),
            ends: vec![record.size()],
            covers_from: record.offset,
            records: vec![record],
            seq: 0,
        };
        Self::new(Arc::new(batch), 0..1)
    }

    pub fn records(&self) -> &[Record] {
        &self.batch.records[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The records `range` of this chunk (relative to it), sharing its batch.
    pub fn slice(&self, range: Range<usize>) -> Chunk {
        let start = self.range.start + range.start;
        let end = (self.range.start + range.end).min(self.range.end);
        Chunk::new(self.batch.clone(), start..end.max(start))
    }
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("batch starts at offset {first}, below the window head {head}")]
    BehindHead { first: Offset, head: Offset },
    #[error("window is full ({bytes} of {budget} bytes, {batches} batches)")]
    Full {
        bytes: usize,
        budget: usize,
        batches: usize,
    },
}

/// Bytes of record windows held by every partition of a shard, against one limit.
#[derive(Debug)]
pub struct MemoryPool {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryPool {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// A pool without a limit (tests, catch-up windows counted elsewhere).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn has_room_for(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }
}

/// A reader's hold on a window: the writer keeps every record from `cursor` on, until the
/// window is full and this reader is far behind the others; then the writer *evicts* it (it
/// must go and read from Kafka itself: the catch-up path) and stops keeping records for it.
#[derive(Debug)]
pub struct Pin {
    /// Lowest offset the reader still needs; `Offset::MAX` while it holds nothing.
    cursor: AtomicI64,
    /// The next offset the reader will take: at the window's head, it waits for more.
    frontier: AtomicI64,
    /// Set by the writer when it stopped keeping records for this reader.
    evicted: AtomicBool,
}

impl Pin {
    fn new(cursor: Offset) -> Self {
        Self {
            cursor: AtomicI64::new(cursor),
            frontier: AtomicI64::new(cursor),
            evicted: AtomicBool::new(false),
        }
    }

    /// The reader will next take `offset`.
    pub fn reach(&self, offset: Offset) {
        self.frontier.store(offset, Ordering::Release);
    }

    fn frontier(&self) -> Offset {
        self.frontier.load(Ordering::Acquire)
    }

    /// Holds the records from `cursor` on again (after an eviction, or while holding
    /// nothing).
    pub fn hold(&self, cursor: Offset) {
        self.evicted.store(false, Ordering::Release);
        self.cursor.store(cursor, Ordering::Release);
    }

    /// Moves what is held up to `cursor`, unless nothing is held (an eviction may race: it
    /// wins).
    pub fn advance(&self, cursor: Offset) {
        let _ = self
            .cursor
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c != Offset::MAX).then_some(cursor)
            });
    }

    /// Holds nothing.
    pub fn release(&self) {
        self.cursor.store(Offset::MAX, Ordering::Release);
    }

    /// What the pin holds from, if anything.
    pub fn cursor(&self) -> Option<Offset> {
        Some(self.cursor.load(Ordering::Acquire)).filter(|&c| c != Offset::MAX)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// Sizes of one partition's window.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Most bytes held.
    pub bytes: usize,
    /// Most batches held: the ring's size.
    pub batches: usize,
}

impl LogLimits {
    pub fn bytes(bytes: usize) -> Self {
        Self {
            bytes,
            batches: 1024,
        }
    }
}

/// The shared window of one partition.
#[derive(Debug)]
pub struct PartitionLog {
    limits: LogLimits,
    /// The shard-wide budget this window's bytes count against.
    pool: Arc<MemoryPool>,
    /// Batch `seq` lives in slot `seq % slots.len()`.
    slots: Box<[ArcSwapOption<Batch>]>,
    /// Sequence number of the oldest batch held.
    first_seq: AtomicU64,
    /// Sequence number the next batch gets.
    next_seq: AtomicU64,
    /// First offset covered.
    start: AtomicI64,
    /// One past the last offset covered.
    head: AtomicI64,
    /// Bytes held (written by the writer only).
    bytes: AtomicUsize,
    /// Set while a [`LogWriter`] exists: there is at most one.
    writer: AtomicBool,
    /// Signalled when a reader acked something, so a waiting writer trims and looks again.
    progress: Notify,
    /// Set when the partition is being given up: readers take nothing more from it.
    closed: AtomicBool,
    /// What readers hold; changed rarely (a reader comes or goes), read by the writer.
    pins: ArcSwap<Vec<Arc<Pin>>>,
}

impl PartitionLog {
    /// An empty window whose coverage begins at `start`, with its own unlimited pool.
    pub fn new(start: Offset, bytes: usize) -> Arc<Self> {
        Self::with_pool(start, LogLimits::bytes(bytes), MemoryPool::unlimited())
    }

    /// An empty window whose coverage begins at `start`, counted against `pool`.
    pub fn with_pool(start: Offset, limits: LogLimits, pool: Arc<MemoryPool>) -> Arc<Self> {
        let slots = (0..limits.batches.max(2))
            .map(|_| ArcSwapOption::empty())
            .collect();
        Arc::new(Self {
            limits,
            pool,
            slots,
            first_seq: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            start: AtomicI64::new(start),
            head: AtomicI64::new(start),
            bytes: AtomicUsize::new(0),
            writer: AtomicBool::new(false),
            progress: Notify::new(),
            closed: AtomicBool::new(false),
            pins: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// A new reader that needs the records from `cursor` on.
    pub fn pin(&self, cursor: Offset) -> Arc<Pin> {
        let pin = Arc::new(Pin::new(cursor));
        self.pins.rcu(|pins| {
            let mut v = Vec::clone(pins);
            v.push(pin.clone());
            v
        });
        pin
    }

    /// The reader of `pin` is gone.
    pub fn unpin(&self, pin: &Arc<Pin>) {
        self.pins.rcu(|pins| {
            let mut v = Vec::clone(pins);
            v.retain(|p| !Arc::ptr_eq(p, pin));
            v
        });
        self.notify_progress();
    }

    /// Whether no reader (but `mine`, if given) reads the window: every other one holds an
    /// offset below its start (it is behind the window too). A reader holding nothing may be
    /// reading it past a catch-up window's head, so it counts as reading.
    pub fn unread_by_others(&self, mine: Option<&Arc<Pin>>) -> bool {
        let start = self.start();
        self.pins
            .load()
            .iter()
            .filter(|p| mine.is_none_or(|m| !Arc::ptr_eq(p, m)))
            .all(|p| p.cursor().is_some_and(|c| c < start))
    }

    /// The lowest offset any reader holds, if any holds one.
    pub fn lowest_pin(&self) -> Option<Offset> {
        self.pins.load().iter().filter_map(|p| p.cursor()).min()
    }

    /// The writer of this window, unless one exists already.
    pub fn writer(self: &Arc<Self>) -> Option<LogWriter> {
        self.writer
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(LogWriter { log: self.clone() })
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

    /// The window's own byte budget.
    pub fn budget(&self) -> usize {
        self.limits.bytes
    }

    /// First offset covered.
    pub fn start(&self) -> Offset {
        self.start.load(Ordering::Acquire)
    }

    /// One past the last offset covered: the next offset the writer expects.
    pub fn head(&self) -> Offset {
        self.head.load(Ordering::Acquire)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Batches held.
    pub fn batches(&self) -> usize {
        let first = self.first_seq.load(Ordering::Acquire);
        let next = self.next_seq.load(Ordering::Acquire);
        usize::try_from(next.saturating_sub(first)).unwrap_or(usize::MAX)
    }

    fn slot(&self, seq: u64) -> &ArcSwapOption<Batch> {
        let i = usize::try_from(seq % self.slots.len() as u64).unwrap_or(0);
        &self.slots[i]
    }

    /// The batch `seq`, if it is still held.
    fn batch(&self, seq: u64) -> Option<Arc<Batch>> {
        self.slot(seq).load_full().filter(|b| b.seq == seq)
    }

    /// The last offset of batch `seq`, if it is still held (without touching its count).
    fn last_offset_of(&self, seq: u64) -> Option<Offset> {
        let guard = self.slot(seq).load();
        guard
            .as_ref()
            .filter(|b| b.seq == seq)
            .map(|b| b.last_offset())
    }

    /// Up to `max_records` records with offset `>= from`, as chunks of shared batches,
    /// stopping before the total size passes `max_bytes` (at least one record is returned if
    /// any is there). Returns `None` if the window does not hold `from` any more (or not yet
    /// again after a reset): the records from there must come from elsewhere.
    ///
    /// Lock-free: it may race with the writer, and then returns fewer records or `None`,
    /// never records with a hole between them.
    pub fn read(&self, from: Offset, max_records: usize, max_bytes: usize) -> Option<Vec<Chunk>> {
        if from < self.start() {
            return None;
        }
        let mut out = Vec::new();
        if max_records == 0 {
            return Some(out);
        }
        let mut lo = self.first_seq.load(Ordering::Acquire);
        let next = self.next_seq.load(Ordering::Acquire);
        // First batch whose last offset is >= from; a batch gone from its slot was trimmed,
        // so it lay below every batch still held.
        let mut hi = next;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.last_offset_of(mid) {
                Some(last) if last >= from => hi = mid,
                _ => lo = mid + 1,
            }
        }
        let mut expect_from = from;
        let mut records = 0;
        let mut bytes = 0;
        for seq in lo..next {
            let Some(batch) = self.batch(seq) else {
                break;
            };
            // The batch must continue exactly where the last one (or `from`) ended.
            let contiguous = if out.is_empty() {
                batch.covers_from <= from
            } else {
                batch.covers_from == expect_from
            };
            if !contiguous {
                if out.is_empty() {
                    // The window moved under us (trimmed or reset past `from`).
                    return (from >= self.start() && from >= batch.covers_from).then(Vec::new);
                }
                break;
            }
            let skip = batch.index_of(from);
            let n = batch.records.len();
            // As many as the count allows, then as many of those as the bytes allow (the
            // first record of a read always goes, whatever its size).
            let by_count = skip + (max_records - records).min(n - skip);
            let before = if skip == 0 { 0 } else { batch.ends[skip - 1] };
            let limit = max_bytes.saturating_sub(bytes).saturating_add(before);
            let mut end = skip + batch.ends[skip..by_count].partition_point(|&e| e <= limit);
            if records == 0 && end == skip && by_count > skip {
                end = skip + 1;
            }
            if end > skip {
                bytes += batch.ends[end - 1] - before;
                records += end - skip;
            }
            expect_from = batch.covers_to();
            let full = end < batch.records.len() || records == max_records;
            if end > skip {
                out.push(Chunk::new(batch, skip..end));
            }
            if full {
                break;
            }
        }
        // A trim may have passed `from` while we read: the records are still the right ones
        // (Kafka's log is immutable), and contiguous, which is all a reader relies on.
        Some(out)
    }
}

/// The only handle that changes a [`PartitionLog`]: appends, trims, resets.
#[derive(Debug)]
pub struct LogWriter {
    log: Arc<PartitionLog>,
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.log.writer.store(false, Ordering::Release);
    }
}

impl LogWriter {
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }

    /// Would a batch of `bytes` fit now? An empty window takes any one batch, so a huge
    /// record (or a full shard) cannot wedge a partition forever.
    pub fn has_room_for(&self, bytes: usize) -> bool {
        let log = &*self.log;
        log.batches() == 0 || (self.fits_own(bytes) && log.pool.has_room_for(bytes))
    }

    /// Would `bytes` more fit this window's own budget and ring (the shard pool aside)?
    fn fits_own(&self, bytes: usize) -> bool {
        let log = &*self.log;
        log.batches() < log.slots.len() && log.bytes().saturating_add(bytes) <= log.limits.bytes
    }

    /// Bytes that fit now. An empty window takes any one batch; this says its budget then.
    pub fn room(&self) -> usize {
        let log = &*self.log;
        let batches = log.batches();
        if batches == 0 {
            return log.limits.bytes;
        }
        if batches >= log.slots.len() {
            return 0;
        }
        let own = log.limits.bytes.saturating_sub(log.bytes());
        let shard = log.pool.limit.saturating_sub(log.pool.used());
        own.min(shard)
    }

    /// Is the window empty (it then takes any one batch)?
    pub fn is_empty(&self) -> bool {
        self.log.batches() == 0
    }

    /// Appends a batch that follows the head, if [`Self::has_room_for`] it. Only this
    /// writer changes what the check depends on (apart from the shard pool, which it does
    /// not re-check): after a `has_room_for` that said yes, it succeeds.
    pub fn append(&mut self, mut batch: Batch) -> Result<(), AppendError> {
        let log = &*self.log;
        let head = log.head();
        if batch.first_offset() < head {
            return Err(AppendError::BehindHead {
                first: batch.first_offset(),
                head,
            });
        }
        // The shard-wide pool is shared with other writers: it is checked by
        // `has_room_for` / `make_room` before, not here, so a race with another partition
        // can overshoot it by a batch but never make an append that was cleared fail.
        if log.batches() > 0 && !self.fits_own(batch.bytes) {
            return Err(AppendError::Full {
                bytes: log.bytes(),
                budget: log.limits.bytes,
                batches: log.batches(),
            });
        }
        let seq = log.next_seq.load(Ordering::Relaxed);
        batch.seq = seq;
        batch.covers_from = head;
        let bytes = batch.bytes;
        let to = batch.covers_to();
        log.pool.used.fetch_add(bytes, Ordering::Relaxed);
        log.bytes.store(log.bytes() + bytes, Ordering::Relaxed);
        log.slot(seq).store(Some(Arc::new(batch)));
        // Publish the slot before the sequence and head that make readers look at it.
        log.next_seq.store(seq + 1, Ordering::Release);
        log.head.store(to, Ordering::Release);
        Ok(())
    }

    /// Trims below what the readers hold (everything, with none holding anything).
    pub fn trim_to_pins(&mut self) -> usize {
        let below = self.log.lowest_pin().unwrap_or_else(|| self.log.head());
        self.trim(below)
    }

    /// Frees room for a batch of `bytes`: trims to the pins and, if that is not enough,
    /// evicts the readers in the oldest quarter of the window when another one waits at
    /// the head (readers all busy with the window are waited for, not evicted). Returns whether the
    /// batch fits now, and how many readers were evicted.
    pub fn make_room(&mut self, bytes: usize) -> (bool, usize) {
        self.trim_to_pins();
        if self.has_room_for(bytes) {
            return (true, 0);
        }
        let log = &*self.log;
        let first = log.first_seq.load(Ordering::Relaxed);
        let next = log.next_seq.load(Ordering::Relaxed);
        let n = next - first;
        // Readers in the oldest quarter of the window are evicted, but only while another
        // reader has taken everything and waits for more: a full window that every reader
        // is still busy with is waited for (nobody is held back), and readers that keep
        // pace may drift three quarters of a window apart.
        // The end of the oldest quarter's batches (the oldest batch, in a short window).
        let Some(low) = log.batch(first + n / 4).map(|b| b.covers_to()) else {
            return (false, 0);
        };
        let head = log.head();
        let pins = log.pins.load();
        let at_head = |p: &Pin| p.frontier() >= head;
        let waiting = pins.iter().any(|p| p.cursor().is_some() && at_head(p));
        if !waiting {
            return (false, 0);
        }
        let mut evicted = 0;
        for p in pins.iter() {
            // A reader at the head with its cursor in the oldest quarter holds everyone back
            // (a record it never acks): evicted too, once the window has batches enough to
            // tell that from records simply in flight.
            let exempt = at_head(p) && n < 4;
            if !exempt && p.cursor().is_some_and(|c| c < low) {
                p.evicted.store(true, Ordering::Release);
                p.release();
                evicted += 1;
            }
        }
        self.trim_to_pins();
        (self.has_room_for(bytes), evicted)
    }

    /// Drops every batch that lies entirely below `below`, and moves the start up to it
    /// (never past the head). Returns the bytes freed.
    pub fn trim(&mut self, below: Offset) -> usize {
        let log = &*self.log;
        let new_start = below.min(log.head());
        if new_start > log.start() {
            // Readers asking for offsets below the new start get `None` from here on.
            log.start.store(new_start, Ordering::Release);
        }
        let mut freed = 0;
        let next = log.next_seq.load(Ordering::Relaxed);
        let mut first = log.first_seq.load(Ordering::Relaxed);
        while first < next {
            let Some(b) = log.batch(first) else { break };
            if b.last_offset() >= below {
                break;
            }
            freed += b.bytes;
            first += 1;
            log.first_seq.store(first, Ordering::Release);
            log.slot(b.seq).store(None);
        }
        log.bytes.store(log.bytes() - freed, Ordering::Relaxed);
        log.pool.used.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    /// Empties the window and restarts its coverage at `offset` (after the reader of the
    /// partition was moved there).
    pub fn reset(&mut self, offset: Offset) {
        let log = &*self.log;
        // Readers below the new coverage get `None` from the start check first.
        log.start.store(offset, Ordering::Release);
        let next = log.next_seq.load(Ordering::Relaxed);
        let first = log.first_seq.load(Ordering::Relaxed);
        log.first_seq.store(next, Ordering::Release);
        for seq in first..next {
            log.slot(seq).store(None);
        }
        log.pool.used.fetch_sub(log.bytes(), Ordering::Relaxed);
        log.bytes.store(0, Ordering::Relaxed);
        log.head.store(offset, Ordering::Release);
        log.start.store(offset, Ordering::Release);
    }
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        // Whatever is still held leaves the shard's budget with the window.
        self.pool.used.fetch_sub(self.bytes(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
