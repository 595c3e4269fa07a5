//! Which ksqlDB rows are still buffered, as runs per time partition, so the buffer stage can
//! tell the writer exactly what is committed once a file is written (see `lake::commit`).

use std::collections::{BTreeMap, VecDeque};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;

use super::query::{ROWOFFSET, ROWPARTITION};
use crate::lake::commit::merge_runs;
use crate::lake::{CommitState, PartitionKey, Positions, Runs};

/// The ksqlDB positions of a batch's rows, in row order; empty when the batch has no position
/// columns (delivery `latest` or a query without them).
pub fn positions_of(batch: &RecordBatch) -> Vec<(u32, u64)> {
    let (Some(partitions), Some(offsets)) = (batch.column_by_name(ROWPARTITION), batch.column_by_name(ROWOFFSET))
    else {
        return Vec::new();
    };
    let (Some(partitions), Some(offsets)) =
        (partitions.as_primitive_opt::<Int32Type>(), offsets.as_primitive_opt::<Int64Type>())
    else {
        return Vec::new();
    };
    (0..batch.num_rows())
        .filter(|&row| partitions.is_valid(row) && offsets.is_valid(row))
        .filter_map(|row| Some((u32::try_from(partitions.value(row)).ok()?, u64::try_from(offsets.value(row)).ok()?)))
        .collect()
}

/// Runs of buffered rows per time partition, and what has been seen per ksqlDB partition.
#[derive(Debug, Default)]
pub struct RunTracker {
    pending: BTreeMap<PartitionKey, Runs>,
    /// Per ksqlDB partition: the time partition its latest row went to, and that offset.
    last: BTreeMap<u32, (PartitionKey, u64)>,
    /// Highest offset seen per ksqlDB partition (buffered, or skipped as already committed).
    seen: Positions,
    /// Arrival order of messages, for continuation tokens: a token is committed once every
    /// buffer that holds rows from before it has been written.
    next_sequence: u64,
    /// Per time partition, the arrival sequence of its oldest buffered rows.
    oldest_sequence: BTreeMap<PartitionKey, u64>,
    /// Tokens not yet superseded by a committed one, with their arrival sequence.
    tokens: VecDeque<(u64, String)>,
}

impl RunTracker {
    /// Records rows that were just buffered in `key`, in arrival order per ksqlDB partition.
    pub fn record(&mut self, rows: &mut [(u32, u64, PartitionKey)]) {
        rows.sort_unstable_by_key(|&(partition, offset, _)| (partition, offset));
        for &(partition, offset, key) in rows.iter() {
            let runs = self.pending.entry(key).or_default().entry(partition).or_default();
            match (self.last.get(&partition), runs.last_mut()) {
                (Some(&(last_key, last_offset)), Some(run)) if last_key == key && run.1 == last_offset => {
                    run.1 = offset;
                }
                _ => runs.push((offset, offset)),
            }
            self.last.insert(partition, (key, offset));
            self.observe(partition, offset);
        }
    }

    /// Notes that rows were buffered in `key` (before any token that arrives later).
    pub fn arrived(&mut self, key: PartitionKey) {
        self.oldest_sequence.entry(key).or_insert(self.next_sequence);
        self.next_sequence += 1;
    }

    /// A continuation token: every row that arrived before it precedes it.
    pub fn token(&mut self, token: String) {
        self.tokens.push_back((self.next_sequence, token));
        self.next_sequence += 1;
    }

    /// The newest token none of whose preceding rows is still buffered.
    fn safe_token(&self) -> Option<&String> {
        let horizon = self.oldest_sequence.values().min().copied().unwrap_or(u64::MAX);
        self.tokens.iter().rev().find(|(sequence, _)| *sequence < horizon).map(|(_, token)| token)
    }

    pub fn observe(&mut self, partition: u32, offset: u64) {
        let seen = self.seen.entry(partition).or_insert(offset);
        *seen = (*seen).max(offset);
    }

    /// Takes the runs of a time partition whose buffer is being written.
    pub fn take(&mut self, key: &PartitionKey) -> Runs {
        self.last.retain(|_, (last_key, _)| last_key != key);
        self.oldest_sequence.remove(key);
        let horizon = self.oldest_sequence.values().min().copied().unwrap_or(u64::MAX);
        while self.tokens.len() >= 2 && self.tokens[1].0 < horizon {
            self.tokens.pop_front();
        }
        self.pending.remove(key).unwrap_or_default()
    }

    /// The commit state once a file holding `runs` is committed on top of `committed`: every
    /// row below the oldest still-buffered row of a partition is committed.
    pub fn state_after(&self, committed: &CommitState, runs: &Runs) -> CommitState {
        let mut state = committed.clone();
        merge_runs(&mut state.ranges, runs);
        if let Some(token) = self.safe_token() {
            state.token = Some(token.clone());
        }
        for (&partition, &seen) in &self.seen {
            let oldest_pending = self
                .pending
                .values()
                .filter_map(|runs| runs.get(&partition).and_then(|ranges| ranges.first()).map(|range| range.0))
                .min();
            match oldest_pending {
                Some(0) => {}
                Some(first) => state.raise_low(partition, first - 1),
                None => state.raise_low(partition, seen),
            }
        }
        // Partitions never seen in this run keep their runs; absorb what already touches.
        let untouched: Vec<u32> = state.ranges.keys().copied().filter(|p| !self.seen.contains_key(p)).collect();
        for partition in untouched {
            if let Some(&low) = state.low.get(&partition) {
                state.raise_low(partition, low);
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hour: u32) -> PartitionKey {
        PartitionKey { year: 2024, month: 5, day: 1, hour: Some(hour) }
    }

    #[test]
    fn a_newer_file_committed_first_does_not_move_the_watermark_past_older_buffered_rows() {
        let mut tracker = RunTracker::default();
        // Partition 0: offsets 100..=110 go to hour 10, 111..=120 to hour 11.
        let mut rows: Vec<_> = (100..=110).map(|o| (0, o, key(10))).chain((111..=120).map(|o| (0, o, key(11)))).collect();
        tracker.record(&mut rows);
        let runs = tracker.take(&key(11));
        assert_eq!(runs[&0], vec![(111, 120)]);
        let state = tracker.state_after(&CommitState::default(), &runs);
        assert!(!state.covers(0, 100) && !state.covers(0, 110), "hour 10 is still buffered");
        assert!(state.covers(0, 111) && state.covers(0, 120));
        assert_eq!(state.low.get(&0), Some(&99));

        let runs = tracker.take(&key(10));
        let state = tracker.state_after(&state, &runs);
        assert_eq!(state.low[&0], 120, "both committed: the watermark passes everything seen");
        assert!(state.ranges.is_empty());
    }

    #[test]
    fn a_token_is_committed_only_when_every_row_before_it_is() {
        let mut tracker = RunTracker::default();
        tracker.arrived(key(1));
        tracker.token("t1".into());
        tracker.arrived(key(2));
        tracker.token("t2".into());
        let runs = tracker.take(&key(2));
        let state = tracker.state_after(&CommitState::default(), &runs);
        assert_eq!(state.token, None, "hour 1 still holds rows from before both tokens");
        let runs = tracker.take(&key(1));
        let state = tracker.state_after(&state, &runs);
        assert_eq!(state.token.as_deref(), Some("t2"));
        tracker.arrived(key(1));
        tracker.token("t3".into());
        assert_eq!(tracker.state_after(&state, &Runs::new()).token.as_deref(), Some("t2"));
    }

    #[test]
    fn interleaved_rows_make_separate_runs() {
        let mut tracker = RunTracker::default();
        let mut rows = vec![(0, 1, key(1)), (0, 2, key(2)), (0, 3, key(1)), (1, 7, key(1))];
        tracker.record(&mut rows);
        let runs = tracker.take(&key(1));
        assert_eq!(runs[&0], vec![(1, 1), (3, 3)]);
        assert_eq!(runs[&1], vec![(7, 7)]);
        let state = tracker.state_after(&CommitState::default(), &runs);
        assert!(state.covers(0, 1) && !state.covers(0, 2) && state.covers(0, 3) && state.covers(1, 7));
    }

    #[test]
    fn a_run_continues_across_batches_until_its_buffer_is_written() {
        let mut tracker = RunTracker::default();
        tracker.record(&mut [(0, 1, key(1)), (0, 2, key(1))]);
        tracker.record(&mut [(0, 3, key(1))]);
        assert_eq!(tracker.take(&key(1))[&0], vec![(1, 3)]);
        tracker.record(&mut [(0, 4, key(1))]);
        assert_eq!(tracker.take(&key(1))[&0], vec![(4, 4)]);
    }
}
