//! What one take may still hand to a stream: its free credits, capped by the batch limits.

use super::{StreamState, TakeLimits};

/// What one `take` may still hand to a stream.
pub(super) struct Budget {
    /// Records: the stream's free credits, capped by the batch size.
    pub(super) records_left: usize,
    /// The stream's free byte credits.
    pub(super) bytes_left: usize,
    /// Bytes left in this batch.
    pub(super) batch_bytes_left: usize,
    pub(super) taken_records: usize,
    pub(super) taken_bytes: usize,
    /// Nothing in flight: the first record may exceed the byte credits, so a record larger
    /// than the credits still moves.
    pub(super) idle: bool,
}

impl Budget {
    pub(super) fn new(st: &StreamState, limits: &TakeLimits) -> Self {
        let idle = st.in_flight_records == 0;
        let bytes_left = st.credits.max_bytes.saturating_sub(st.in_flight_bytes);
        let mut records_left = st
            .credits
            .max_records
            .saturating_sub(st.in_flight_records)
            .min(limits.batch_records);
        if bytes_left == 0 && !idle {
            records_left = 0;
        }
        Self {
            records_left,
            bytes_left,
            batch_bytes_left: limits.batch_bytes,
            taken_records: 0,
            taken_bytes: 0,
            idle,
        }
    }

    pub(super) fn exhausted(&self) -> bool {
        self.records_left == 0
    }

    /// Counts a record of `size` if it fits; once one does not, the budget is spent (records
    /// go out in order, none is skipped for a smaller one behind it).
    pub(super) fn admit(&mut self, size: usize) -> bool {
        let first = self.taken_records == 0;
        let batch_ok = first || size <= self.batch_bytes_left;
        let credit_ok = size <= self.bytes_left || (self.idle && first);
        if self.exhausted() || !batch_ok || !credit_ok {
            self.records_left = 0;
            return false;
        }
        self.records_left -= 1;
        self.taken_records += 1;
        self.taken_bytes += size;
        self.bytes_left = self.bytes_left.saturating_sub(size);
        self.batch_bytes_left = self.batch_bytes_left.saturating_sub(size);
        true
    }
}
