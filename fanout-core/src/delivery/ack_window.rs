//! The ack window: ack tracking of one subscription on one partition. It holds no records
//! (those are in the shared window or the subscription's catch-up window, see `log`).
//!
//! The window remembers every record delivered at least once and not yet below the cursor:
//! whether it is in flight (on which stream, which attempt), waiting to be delivered again,
//! or acked. Acks may arrive out of order; the cursor is the next fetch position after the
//! contiguously acked prefix of *delivered* records, so offsets that are not records
//! (transaction markers, aborted or compacted records) never stall it.

use std::collections::VecDeque;
use std::time::Instant;

use crate::model::Offset;

use super::{AckError, StreamId};

/// An inclusive range of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    pub first: Offset,
    pub last: Offset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    InFlight {
        stream: StreamId,
        attempt: u32,
        /// Given back as timed out if not acked by then.
        deadline: Option<Instant>,
    },
    /// Given back; delivered again (as `attempt`) once `not_before` has passed.
    Waiting {
        attempt: u32,
        not_before: Instant,
        why: Redelivery,
    },
    /// Out of attempts: being published to the dead-letter topic.
    DeadLettering,
    /// Taken from the log but not delivered yet: an earlier record of its key is unacked
    /// (`ordering=key`).
    Held,
    Acked,
}

/// Why a record is delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// The subscriber nacked it.
    Nacked,
    /// It was not acked within the subscription's ack timeout.
    AckTimeout,
    /// Its stream ended (or the partition moved) before it was acked.
    StreamEnded,
}

impl Redelivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Redelivery::Nacked => "nacked",
            Redelivery::AckTimeout => "ack_timeout",
            Redelivery::StreamEnded => "stream_ended",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: Offset,
    size: usize,
    /// Hash of the record's key, when keys are tracked and it has one.
    key: Option<u64>,
    state: SlotState,
}

/// Per key (`ordering=key`): records delivered and not acked, and the offsets of records
/// held back, in order.
#[derive(Debug, Clone, Default)]
struct KeyLoad {
    unacked: u32,
    held: std::collections::VecDeque<Offset>,
}

/// Records and bytes released from flight by an operation: credits handed back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub records: usize,
    pub bytes: usize,
}

impl std::ops::AddAssign for Released {
    fn add_assign(&mut self, o: Self) {
        self.records += o.records;
        self.bytes += o.bytes;
    }
}

/// A record due for another delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub offset: Offset,
    pub attempt: u32,
    /// Why its last attempt failed.
    pub why: Redelivery,
}

/// Delivery state of one (subscription, partition).
#[derive(Debug, Clone)]
pub struct AckWindow {
    /// Lowest offset not known to be done: everything below it is acked (or not a record).
    cursor: Offset,
    /// Next offset to take from the log for a first delivery.
    next: Offset,
    /// Delivered records at or above the cursor, ascending by offset.
    slots: VecDeque<Slot>,
    /// Number of slots in flight, for credit and binding decisions.
    in_flight: usize,
    /// Number of slots waiting for redelivery: with none (the usual case) nothing scans
    /// the slots looking for them.
    waiting: usize,
    /// Number of slots being dead-lettered.
    dead_lettering: usize,
    /// No in-flight deadline is earlier than this: nothing scans for timeouts before it.
    next_deadline: Option<Instant>,
    /// Number of held slots.
    held: usize,
    /// The first held record of every key with nothing unacked: what a take may deliver
    /// now (kept as keys change, so that finding one does not scan the window).
    free_held: std::collections::BTreeSet<Offset>,
    /// Keys with records unacked or held (`ordering=key` only; empty otherwise).
    keys: std::collections::HashMap<u64, KeyLoad>,
    /// Ranges at or above `next` known to be acked already (restored from a stored cursor
    /// after a restart or failover): records in them are not delivered again.
    pre_acked: VecDeque<OffsetRange>,
}

/// Most acked ranges above the cursor kept with a stored cursor; beyond them, records are
/// delivered again after a restart (never lost).
pub const MAX_STORED_RANGES: usize = 32;

impl AckWindow {
    /// A window with nothing delivered, whose cursor (and first delivery) is `cursor`.
    pub fn new(cursor: Offset) -> Self {
        Self {
            cursor,
            next: cursor,
            slots: VecDeque::new(),
            in_flight: 0,
            waiting: 0,
            dead_lettering: 0,
            next_deadline: None,
            held: 0,
            free_held: std::collections::BTreeSet::new(),
            keys: std::collections::HashMap::new(),
            pre_acked: VecDeque::new(),
        }
    }

    /// A window at `cursor` whose records in `acked` (ranges above it, as stored) are done.
    pub fn restore(cursor: Offset, acked: &[OffsetRange]) -> Self {
        let mut w = Self::new(cursor);
        let mut ranges: Vec<OffsetRange> = acked
            .iter()
            .filter(|r| r.first <= r.last && r.last >= cursor)
            .map(|r| OffsetRange {
                first: r.first.max(cursor),
                last: r.last,
            })
            .collect();
        ranges.sort_by_key(|r| r.first);
        for r in ranges {
            match w.pre_acked.back_mut() {
                Some(b) if r.first <= b.last.saturating_add(1) => b.last = b.last.max(r.last),
                _ => w.pre_acked.push_back(r),
            }
        }
        w
    }

    /// Was `offset` acked before a restart? (Offsets must be asked in ascending order.)
    pub fn pre_acked(&mut self, offset: Offset) -> bool {
        while self.pre_acked.front().is_some_and(|r| r.last < offset) {
            self.pre_acked.pop_front();
        }
        self.pre_acked.front().is_some_and(|r| r.first <= offset)
    }

    /// Takes `offset` from the log as already acked (see [`Self::pre_acked`]).
    pub fn skip_acked(&mut self, offset: Offset, size: usize) {
        debug_assert!(offset >= self.next, "first deliveries ascend");
        self.slots.push_back(Slot {
            offset,
            size,
            key: None,
            state: SlotState::Acked,
        });
        self.next = offset + 1;
        self.advance_cursor();
    }

    /// Acked ranges above the cursor, lowest first, at most `max`: stored with the cursor so
    /// that a restart delivers again only what was really unacked.
    pub fn acked_ranges(&self, max: usize) -> Vec<OffsetRange> {
        let mut out: Vec<OffsetRange> = Vec::new();
        let mut run: Option<OffsetRange> = None;
        for s in &self.slots {
            if s.state == SlotState::Acked {
                run = Some(match run {
                    Some(r) => OffsetRange {
                        first: r.first,
                        last: s.offset,
                    },
                    None => OffsetRange {
                        first: s.offset,
                        last: s.offset,
                    },
                });
            } else if let Some(r) = run.take() {
                out.push(r);
            }
        }
        out.extend(run);
        // Restored ranges not reached yet still hold.
        out.extend(
            self.pre_acked
                .iter()
                .filter(|r| r.last >= self.next)
                .map(|r| OffsetRange {
                    first: r.first.max(self.next),
                    last: r.last,
                }),
        );
        out.truncate(max);
        out
    }

    pub fn cursor(&self) -> Offset {
        self.cursor
    }

    pub fn next(&self) -> Offset {
        self.next
    }

    /// Offsets between the cursor and the next first delivery: bounded by the caller.
    pub fn unacked_span(&self) -> i64 {
        self.next - self.cursor
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Records delivered and not yet acked (in flight, waiting, being dead-lettered).
    pub fn unacked(&self) -> usize {
        self.in_flight + self.waiting + self.dead_lettering
    }

    /// Moves the ack deadline of every record in flight from `old` to `new` after its
    /// delivery (the subscription's ack timeout changed).
    pub fn retime(&mut self, old: std::time::Duration, new: std::time::Duration) {
        let mut next: Option<Instant> = None;
        for s in &mut self.slots {
            if let SlotState::InFlight {
                deadline: Some(d), ..
            } = &mut s.state
            {
                let delivered = d.checked_sub(old).unwrap_or(*d);
                *d = delivered + new;
                next = Some(next.map_or(*d, |n| n.min(*d)));
            }
        }
        self.next_deadline = next;
    }

    /// The earliest ack deadline of the records in flight (the one delivered longest ago,
    /// under one ack timeout). Scans the window: for views, not the delivery path.
    pub fn oldest_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::InFlight { deadline, .. } => deadline,
                _ => None,
            })
            .min()
    }

    /// Records taken from the log and held back behind an earlier record of their key.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Is a record of `key` delivered and unacked, or held? (A record without a key is
    /// never ordered.)
    pub fn key_busy(&self, key: Option<u64>) -> bool {
        key.and_then(|k| self.keys.get(&k))
            .is_some_and(|l| l.unacked > 0 || !l.held.is_empty())
    }

    /// The lowest held record whose key has nothing delivered and unacked.
    pub fn first_free_held(&self) -> Option<Offset> {
        self.free_held.first().copied()
    }

    /// Takes `offset` from the log without delivering it (its key is busy).
    pub fn hold(&mut self, offset: Offset, size: usize, key: Option<u64>) {
        debug_assert!(offset >= self.next, "first deliveries ascend");
        debug_assert!(key.is_some(), "only a record with a key waits for its key");
        self.slots.push_back(Slot {
            offset,
            size,
            key,
            state: SlotState::Held,
        });
        self.next = offset + 1;
        self.held += 1;
        if let Some(k) = key {
            let l = self.keys.entry(k).or_default();
            l.held.push_back(offset);
            if l.unacked == 0 && l.held.len() == 1 {
                self.free_held.insert(offset);
            }
        }
    }

    /// Delivers a held record (first attempt) to `stream`.
    pub fn deliver_held(&mut self, offset: Offset, stream: StreamId, deadline: Option<Instant>) {
        let Some(slot) = self.slot_mut(offset) else {
            return;
        };
        if slot.state != SlotState::Held {
            return;
        }
        slot.state = SlotState::InFlight {
            stream,
            attempt: 1,
            deadline,
        };
        let key = slot.key;
        self.held -= 1;
        self.in_flight += 1;
        self.free_held.remove(&offset);
        if let Some(k) = key {
            let l = self.keys.entry(k).or_default();
            if l.held.front() == Some(&offset) {
                l.held.pop_front();
            } else {
                l.held.retain(|&o| o != offset);
            }
            l.unacked += 1;
            // Its key is busy now: none of its records is free.
            if let Some(first) = l.held.front() {
                self.free_held.remove(first);
            }
        }
        self.note_deadline(deadline);
    }

    /// A record of `key` is done (acked or dead-lettered).
    fn key_done(&mut self, key: Option<u64>) {
        if let Some(k) = key
            && let Some(l) = self.keys.get_mut(&k)
        {
            l.unacked = l.unacked.saturating_sub(1);
            if l.unacked == 0 {
                match l.held.front() {
                    // Its next record may go now.
                    Some(&first) => {
                        self.free_held.insert(first);
                    }
                    None => {
                        self.keys.remove(&k);
                    }
                }
            }
        }
    }

    /// Streams that have records of this window in flight.
    pub fn streams_in_flight(&self) -> Vec<StreamId> {
        let mut out: Vec<StreamId> = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::InFlight { stream, .. } => Some(stream),
                _ => None,
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Records a first delivery of `offset` (a record of `key`, if keys are ordered) to
    /// `stream`, timing out at `deadline`. Offsets must ascend.
    pub fn deliver_first(
        &mut self,
        offset: Offset,
        size: usize,
        key: Option<u64>,
        stream: StreamId,
        deadline: Option<Instant>,
    ) {
        debug_assert!(offset >= self.next, "first deliveries ascend");
        if let Some(k) = key {
            self.keys.entry(k).or_default().unacked += 1;
        }
        self.slots.push_back(Slot {
            offset,
            size,
            key,
            state: SlotState::InFlight {
                stream,
                attempt: 1,
                deadline,
            },
        });
        self.next = offset + 1;
        self.in_flight += 1;
        self.note_deadline(deadline);
    }

    fn note_deadline(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline
            && self.next_deadline.is_none_or(|n| d < n)
        {
            self.next_deadline = Some(d);
        }
    }

    /// The earliest ack deadline of a record in flight, if any has one.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline
    }

    /// Gives back every record in flight past its deadline, due again at once. Returns
    /// what each stream lost from flight.
    pub fn expire(&mut self, now: Instant) -> Vec<(StreamId, Released)> {
        if self.next_deadline.is_none_or(|d| d > now) {
            return Vec::new();
        }
        let mut out: Vec<(StreamId, Released)> = Vec::new();
        let mut next = None;
        for s in self.slots.iter_mut() {
            let SlotState::InFlight {
                stream,
                attempt,
                deadline: Some(deadline),
            } = s.state
            else {
                continue;
            };
            if deadline > now {
                next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
                continue;
            }
            s.state = SlotState::Waiting {
                attempt: attempt.saturating_add(1),
                not_before: now,
                why: Redelivery::AckTimeout,
            };
            let r = Released {
                records: 1,
                bytes: s.size,
            };
            match out.iter_mut().find(|(st, _)| *st == stream) {
                Some((_, released)) => *released += r,
                None => out.push((stream, r)),
            }
        }
        let n: usize = out.iter().map(|(_, r)| r.records).sum();
        self.in_flight -= n;
        self.waiting += n;
        self.next_deadline = next;
        out
    }

    /// A waiting record out of attempts goes to the dead-letter topic: it is neither in
    /// flight nor due until [`Self::dead_lettered`] or [`Self::dead_letter_failed`].
    pub fn start_dead_letter(&mut self, offset: Offset) -> bool {
        let Some(slot) = self.slot_mut(offset) else {
            return false;
        };
        if !matches!(slot.state, SlotState::Waiting { .. }) {
            return false;
        }
        slot.state = SlotState::DeadLettering;
        self.waiting -= 1;
        self.dead_lettering += 1;
        true
    }

    /// The record is in the dead-letter topic: it counts as acked.
    pub fn dead_lettered(&mut self, offset: Offset) {
        if let Some(slot) = self.slot_mut(offset)
            && slot.state == SlotState::DeadLettering
        {
            slot.state = SlotState::Acked;
            let key = slot.key;
            self.dead_lettering -= 1;
            self.key_done(key);
            self.advance_cursor();
        }
    }

    /// Publishing to the dead-letter topic failed: try again from `not_before`.
    pub fn dead_letter_failed(&mut self, offset: Offset, attempt: u32, not_before: Instant) {
        if let Some(slot) = self.slot_mut(offset)
            && slot.state == SlotState::DeadLettering
        {
            slot.state = SlotState::Waiting {
                attempt,
                not_before,
                why: Redelivery::Nacked,
            };
            self.dead_lettering -= 1;
            self.waiting += 1;
        }
    }

    /// The lowest-offset record waiting for redelivery whose delay has passed.
    pub fn first_due(&self, now: Instant) -> Option<Due> {
        if self.waiting == 0 {
            return None;
        }
        self.slots.iter().find_map(|s| match s.state {
            SlotState::Waiting {
                attempt,
                not_before,
                why,
            } if not_before <= now => Some(Due {
                offset: s.offset,
                attempt,
                why,
            }),
            _ => None,
        })
    }

    /// When the next waiting record becomes due, if one is waiting for a future time.
    pub fn next_due_at(&self, now: Instant) -> Option<Instant> {
        if self.waiting == 0 {
            return None;
        }
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Waiting { not_before, .. } if not_before > now => Some(not_before),
                _ => None,
            })
            .min()
    }

    /// Records the redelivery of a waiting record to `stream`, timing out at `deadline`.
    pub fn deliver_again(
        &mut self,
        offset: Offset,
        stream: StreamId,
        deadline: Option<Instant>,
    ) -> Option<u32> {
        let slot = self.slot_mut(offset)?;
        let SlotState::Waiting { attempt, .. } = slot.state else {
            return None;
        };
        slot.state = SlotState::InFlight {
            stream,
            attempt,
            deadline,
        };
        self.in_flight += 1;
        self.waiting -= 1;
        self.note_deadline(deadline);
        Some(attempt)
    }

    /// Checks that every record in `ranges` is in flight on `stream`, changing nothing.
    pub fn check_in_flight(
        &self,
        stream: StreamId,
        ranges: &[OffsetRange],
    ) -> Result<(), AckError> {
        let mut sorted: Vec<OffsetRange> = ranges.to_vec();
        sorted.sort_by_key(|r| r.first);
        for r in &sorted {
            if r.first > r.last {
                return Err(AckError::InvertedRange {
                    first: r.first,
                    last: r.last,
                });
            }
        }
        for w in sorted.windows(2) {
            if w[1].first <= w[0].last {
                return Err(AckError::OverlappingRanges {
                    first: w[1].first,
                    last: w[0].last,
                });
            }
        }
        for r in &sorted {
            if r.first < self.cursor {
                return Err(AckError::AlreadyAcked { offset: r.first });
            }
            if r.last >= self.next {
                return Err(AckError::NotDelivered {
                    offset: r.first.max(self.next),
                });
            }
            let mut any = false;
            for s in self.slots_in(*r) {
                any = true;
                match s.state {
                    SlotState::InFlight { stream: st, .. } if st == stream => {}
                    SlotState::InFlight { .. } => {
                        return Err(AckError::OtherStream { offset: s.offset });
                    }
                    // Given back (timed out, nacked, its stream ended) or being
                    // dead-lettered: a late ack still counts, a late nack changes nothing.
                    SlotState::Waiting { .. } | SlotState::DeadLettering => {}
                    SlotState::Held => return Err(AckError::NotDelivered { offset: s.offset }),
                    SlotState::Acked => return Err(AckError::AlreadyAcked { offset: s.offset }),
                }
            }
            if !any {
                return Err(AckError::NotDelivered { offset: r.first });
            }
        }
        Ok(())
    }

    /// Acks the records of `ranges` (checked with [`Self::check_in_flight`] first) and moves
    /// the cursor over the acked prefix.
    pub fn ack(&mut self, stream: StreamId, ranges: &[OffsetRange]) -> Released {
        let released = self.transition(stream, ranges, SlotState::Acked);
        // Late acks of records given back meanwhile: done all the same.
        let mut late = Vec::new();
        let (mut waiting, mut dead) = (0, 0);
        for r in ranges {
            let (lo, hi) = self.index_range(*r);
            for s in self.slots.range_mut(lo..hi) {
                match s.state {
                    SlotState::Waiting { .. } => waiting += 1,
                    // Acked while being dead-lettered: done (the letter may still go out).
                    SlotState::DeadLettering => dead += 1,
                    _ => continue,
                }
                s.state = SlotState::Acked;
                late.push(s.key);
            }
        }
        self.waiting -= waiting;
        self.dead_lettering -= dead;
        for k in late {
            self.key_done(k);
        }
        self.advance_cursor();
        released
    }

    fn advance_cursor(&mut self) {
        while let Some(front) = self.slots.front() {
            if front.state != SlotState::Acked {
                break;
            }
            self.cursor = front.offset + 1;
            self.slots.pop_front();
        }
    }

    /// Gives the records of `ranges` (checked first) back, due again at `not_before`.
    pub fn nack(
        &mut self,
        stream: StreamId,
        ranges: &[OffsetRange],
        not_before: Instant,
    ) -> Released {
        self.give_back(stream, ranges, not_before, Redelivery::Nacked)
    }

    fn give_back(
        &mut self,
        stream: StreamId,
        ranges: &[OffsetRange],
        not_before: Instant,
        why: Redelivery,
    ) -> Released {
        let mut released = Released::default();
        for r in ranges {
            let (lo, hi) = self.index_range(*r);
            for s in self.slots.range_mut(lo..hi) {
                if let SlotState::InFlight {
                    stream: st,
                    attempt,
                    ..
                } = s.state
                    && st == stream
                {
                    s.state = SlotState::Waiting {
                        attempt: attempt.saturating_add(1),
                        not_before,
                        why,
                    };
                    released.records += 1;
                    released.bytes += s.size;
                }
            }
        }
        self.in_flight -= released.records;
        self.waiting += released.records;
        released
    }

    /// Gives back everything in flight on `stream` (it ended), due again at `now`.
    pub fn release_stream(&mut self, stream: StreamId, now: Instant) -> Released {
        let all = OffsetRange {
            first: Offset::MIN,
            last: Offset::MAX,
        };
        self.give_back(stream, &[all], now, Redelivery::StreamEnded)
    }

    fn transition(&mut self, stream: StreamId, ranges: &[OffsetRange], to: SlotState) -> Released {
        let mut released = Released::default();
        let mut done_keys = Vec::new();
        for r in ranges {
            let (lo, hi) = self.index_range(*r);
            for s in self.slots.range_mut(lo..hi) {
                if matches!(s.state, SlotState::InFlight { stream: st, .. } if st == stream) {
                    s.state = to;
                    released.records += 1;
                    released.bytes += s.size;
                    if s.key.is_some() {
                        done_keys.push(s.key);
                    }
                }
            }
        }
        for k in done_keys {
            self.key_done(k);
        }
        self.in_flight -= released.records;
        released
    }

    fn index_range(&self, r: OffsetRange) -> (usize, usize) {
        let lo = self.slots.partition_point(|s| s.offset < r.first);
        let hi = self.slots.partition_point(|s| s.offset <= r.last);
        (lo, hi.max(lo))
    }

    fn slots_in(&self, r: OffsetRange) -> impl Iterator<Item = &Slot> {
        let (lo, hi) = self.index_range(r);
        self.slots.range(lo..hi)
    }

    fn slot_mut(&mut self, offset: Offset) -> Option<&mut Slot> {
        let i = self
            .slots
            .binary_search_by_key(&offset, |s| s.offset)
            .ok()?;
        self.slots.get_mut(i)
    }
}

#[cfg(test)]
mod key_tests {
    use proptest::prelude::*;

    use super::*;

    impl AckWindow {
        /// [`AckWindow::first_free_held`] the slow way: the lowest held slot whose key has
        /// nothing unacked.
        fn first_free_held_by_scan(&self) -> Option<Offset> {
            self.slots.iter().find_map(|s| {
                let free = s.state == SlotState::Held
                    && s.key
                        .and_then(|k| self.keys.get(&k))
                        .is_none_or(|l| l.unacked == 0);
                free.then_some(s.offset)
            })
        }
    }

    proptest! {
        /// Records of a few keys taken in order (held when their key is busy), acked in any
        /// order, held ones delivered as their key frees: the kept index of free held
        /// records always names the one a scan of the window would.
        #[test]
        fn the_free_held_index_matches_a_scan(
            keys in proptest::collection::vec(0u64..4, 1..60),
            acks in proptest::collection::vec(any::<prop::sample::Index>(), 1..80),
        ) {
            let stream = StreamId(1);
            let mut w = AckWindow::new(0);
            let mut offset = 0;
            let mut acks = acks.into_iter();
            loop {
                prop_assert_eq!(w.first_free_held(), w.first_free_held_by_scan());
                // Deliver what may go: free held records first, then the next of the log.
                if let Some(o) = w.first_free_held() {
                    w.deliver_held(o, stream, None);
                    continue;
                }
                if let Some(&k) = keys.get(usize::try_from(offset).unwrap()) {
                    if w.key_busy(Some(k)) {
                        w.hold(offset, 1, Some(k));
                    } else {
                        w.deliver_first(offset, 1, Some(k), stream, None);
                    }
                    offset += 1;
                    continue;
                }
                // Ack one record in flight.
                let in_flight: Vec<Offset> = w
                    .slots
                    .iter()
                    .filter(|s| matches!(s.state, SlotState::InFlight { .. }))
                    .map(|s| s.offset)
                    .collect();
                let (Some(pick), false) = (acks.next(), in_flight.is_empty()) else {
                    break;
                };
                let o = in_flight[pick.index(in_flight.len())];
                w.ack(stream, &[OffsetRange { first: o, last: o }]);
            }
            prop_assert_eq!(w.first_free_held(), w.first_free_held_by_scan());
        }
    }
}
