//! The exact set of ksqlDB rows a feed has committed, which exactly-once resume relies on.
//!
//! Rows of one ksqlDB partition arrive in offset order but go to different time partitions,
//! whose buffers flush independently. "The highest committed offset" is therefore not a safe
//! resume point: a newer hour may be written while an older hour still buffers lower offsets.
//! So ksql-lake records:
//!
//! - per file, its **runs**: for each ksqlDB partition, ranges `[first, last]` of offsets such
//!   that every row of that partition received with an offset in the range is in this file
//!   (Kafka offsets may have gaps; a run says nothing about offsets that hold no row);
//! - per feed, a **low watermark** (`committed_positions`): every row at or below it is
//!   committed (or was rejected as undecodable), plus the **committed runs** above it
//!   (`committed_ranges`), which exist only while an older buffer is still pending.
//!
//! On a (re)connect the query resumes after the low watermark, and every row inside a committed
//! run is skipped: nothing committed is written twice, nothing uncommitted is skipped.
//!
//! [`CommitLedger`] is the one owner of this bookkeeping for a feed while it runs: the buffer
//! stage tells it where every arriving row went, takes a file's runs from it when the file is
//! flushed, and writes what it answers into the manifest. Nothing else computes commit state.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::partition::PartitionKey;
use super::{Position, Positions};

/// Per ksqlDB partition, sorted disjoint inclusive offset ranges.
pub type Runs = BTreeMap<u32, Vec<(u64, u64)>>;

/// Adds `[first, last]` to `runs` of `partition`, merging overlapping or touching ranges.
#[cfg(test)]
pub fn add_run(runs: &mut Runs, partition: u32, first: u64, last: u64) {
    let ranges = runs.entry(partition).or_default();
    ranges.push((first, last));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(previous) if start <= previous.1.saturating_add(1) => previous.1 = previous.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// Adds every range of `other` to `runs`: one linear merge per partition (a file whose rows
/// alternated with another partition's carries one run per row, so this must not be quadratic).
pub fn merge_runs(runs: &mut Runs, other: &Runs) {
    for (&partition, incoming) in other {
        if incoming.is_empty() {
            continue;
        }
        let existing = std::mem::take(runs.entry(partition).or_default());
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(existing.len() + incoming.len());
        let (mut left, mut right) = (existing.iter().peekable(), incoming.iter().peekable());
        loop {
            let next = match (left.peek(), right.peek()) {
                (Some(a), Some(b)) if a.0 <= b.0 => left.next(),
                (Some(_), Some(_)) => right.next(),
                (Some(_), None) => left.next(),
                (None, Some(_)) => right.next(),
                (None, None) => break,
            };
            let &(start, end) = next.expect("peeked");
            match merged.last_mut() {
                Some(previous) if start <= previous.1.saturating_add(1) => previous.1 = previous.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        runs.insert(partition, merged);
    }
}

/// What a feed has committed: a low watermark per partition and the runs committed above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitState {
    /// Every row at or below this offset is committed.
    pub low: Positions,
    /// Committed runs above `low`.
    pub ranges: Runs,
    /// For scalable push queries: the newest continuation token all of whose preceding rows
    /// are committed.
    pub token: Option<String>,
}

impl CommitState {
    /// True when the row at (`partition`, `offset`) is committed.
    pub fn covers(&self, partition: u32, offset: u64) -> bool {
        if self.low.get(&partition).is_some_and(|&low| offset <= low) {
            return true;
        }
        self.ranges.get(&partition).is_some_and(|ranges| {
            let index = ranges.partition_point(|&(first, _)| first <= offset);
            index > 0 && offset <= ranges[index - 1].1
        })
    }

    /// Raises the low watermark of `partition` (never lowers it) and drops the runs it covers.
    pub fn raise_low(&mut self, partition: u32, low: u64) {
        let entry = self.low.entry(partition).or_insert(low);
        *entry = (*entry).max(low);
        let low = *entry;
        if let Some(ranges) = self.ranges.get_mut(&partition) {
            // Runs are sorted and disjoint: those the watermark reaches (starting at or before
            // it + 1) are a prefix, and each one extends it.
            let mut low = low;
            let mut reached = 0;
            while let Some(&(first, last)) = ranges.get(reached).filter(|&&(first, _)| first <= low.saturating_add(1)) {
                debug_assert!(first <= last);
                low = low.max(last);
                reached += 1;
            }
            ranges.drain(..reached);
            self.low.insert(partition, low);
            if ranges.is_empty() {
                self.ranges.remove(&partition);
            }
        }
    }
}

impl CommitState {
    /// Adds the runs of a data file found in the lake but missing from the manifest (a crash
    /// between the two writes): the committed set becomes exactly what it was plus that file.
    pub fn adopt(&mut self, runs: &Runs) {
        merge_runs(&mut self.ranges, runs);
        self.absorb();
    }

    /// Lets the watermark absorb the runs that touch it. A partition without a watermark gets
    /// one when its first run starts at offset 0 (the start of a ksqlDB partition).
    pub fn absorb(&mut self) {
        let partitions: Vec<u32> = self.ranges.keys().copied().collect();
        for partition in partitions {
            match self.low.get(&partition).copied() {
                Some(low) => self.raise_low(partition, low),
                None => {
                    if let Some(&(0, last)) = self.ranges.get(&partition).and_then(|ranges| ranges.first()) {
                        self.raise_low(partition, last);
                    }
                }
            }
        }
    }
}

/// Where buffered rows wait for their file: a time partition, or the feed's dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    Partition(PartitionKey),
    DeadLetter,
}

impl From<PartitionKey> for Bucket {
    fn from(key: PartitionKey) -> Self {
        Bucket::Partition(key)
    }
}

/// Where one arriving row went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Buffered in this bucket, to be written with its next file.
    Buffered(Bucket),
    /// Not buffered: skipped because it was committed already, or rejected and not kept
    /// (`error_policy = "skip"`).
    Passed,
}

/// The commit bookkeeping of one running feed: what is committed, what is buffered where, and
/// so what the manifest may record after each file.
///
/// Rows of one ksqlDB partition arrive in offset order. A run of a time partition grows only
/// while consecutive arrivals of a ksqlDB partition go to that same time partition; any row
/// that goes elsewhere (another time partition, or passed) ends it. So a run never spans a row
/// the file does not hold, however event times jump between partitions.
#[derive(Debug, Default)]
pub struct CommitLedger {
    /// The commit state once every file handed on so far is committed.
    projected: CommitState,
    /// Buffered rows per time partition, as runs.
    pending: BTreeMap<Bucket, Runs>,
    /// Per ksqlDB partition: the latest offset that arrived, and where it went.
    last: BTreeMap<u32, (u64, Destination)>,
    /// Arrival order of buffered rows and tokens, for continuation tokens: a token is committed
    /// once every buffer holding rows from before it has been written.
    next_sequence: u64,
    /// Per time partition, the arrival sequence of its oldest buffered rows.
    oldest_sequence: BTreeMap<Bucket, u64>,
    /// Tokens not yet superseded by a committed one, with their arrival sequence.
    tokens: VecDeque<(u64, String)>,
}

impl CommitLedger {
    /// A ledger that starts from the manifest's commit state.
    pub fn new(committed: CommitState) -> Self {
        CommitLedger { projected: committed, ..CommitLedger::default() }
    }

    /// Records where the rows of one source batch went. Their order in `arrivals` does not
    /// matter: within a ksqlDB partition, offset order is arrival order. A position at or below
    /// one already recorded is a row seen before and changes nothing.
    pub fn record(&mut self, arrivals: &mut [(Position, Destination)]) {
        arrivals.sort_unstable_by_key(|(position, _)| *position);
        for &(Position { partition, offset }, destination) in arrivals.iter() {
            let previous = self.last.get(&partition).copied();
            if previous.is_some_and(|(last, _)| offset <= last) {
                continue;
            }
            if let Destination::Buffered(key) = destination {
                let runs = self.pending.entry(key).or_default().entry(partition).or_default();
                match (previous, runs.last_mut()) {
                    (Some((last, Destination::Buffered(last_key))), Some(run)) if last_key == key && run.1 == last => {
                        run.1 = offset;
                    }
                    _ => runs.push((offset, offset)),
                }
            }
            self.last.insert(partition, (offset, destination));
        }
    }

    /// Notes that rows were buffered in `key` (before any token that arrives later).
    pub fn arrived(&mut self, key: Bucket) {
        self.oldest_sequence.entry(key).or_insert(self.next_sequence);
        self.next_sequence += 1;
    }

    /// A continuation token: every row that arrived before it precedes it.
    pub fn token(&mut self, token: String) {
        self.tokens.push_back((self.next_sequence, token));
        self.next_sequence += 1;
    }

    /// Takes the runs of a time partition whose buffer is flushed, and returns them with the
    /// commit state the manifest may record once this file, and every file taken before it,
    /// is committed. Files must be committed in the order they were taken.
    pub fn take(&mut self, key: &Bucket) -> (Runs, CommitState) {
        let runs = self.pending.remove(key).unwrap_or_default();
        self.oldest_sequence.remove(key);
        merge_runs(&mut self.projected.ranges, &runs);
        let horizon = self.oldest_sequence.values().min().copied().unwrap_or(u64::MAX);
        while self.tokens.len() >= 2 && self.tokens[1].0 < horizon {
            self.tokens.pop_front();
        }
        if let Some((_, token)) = self.tokens.front().filter(|(sequence, _)| *sequence < horizon) {
            self.projected.token = Some(token.clone());
        }
        for (&partition, &(last, _)) in &self.last {
            let oldest_pending = self
                .pending
                .values()
                .filter_map(|runs| runs.get(&partition).and_then(|ranges| ranges.first()).map(|range| range.0))
                .min();
            match oldest_pending {
                Some(0) => {}
                Some(first) => self.projected.raise_low(partition, first - 1),
                None => self.projected.raise_low(partition, last),
            }
        }
        (runs, self.projected.clone())
    }

    /// True when the row is committed, on its way to the lake, or buffered.
    pub fn covers(&self, partition: u32, offset: u64) -> bool {
        self.projected.covers(partition, offset)
            || self.pending.values().any(|runs| {
                runs.get(&partition)
                    .is_some_and(|ranges| ranges.iter().any(|&(first, last)| first <= offset && offset <= last))
            })
    }

    /// The commit state once every file taken so far is committed.
    pub fn projected(&self) -> &CommitState {
        &self.projected
    }
}

/// The highest offset per partition of `runs`.
pub fn highest_offsets(runs: &Runs) -> Positions {
    runs.iter().filter_map(|(&partition, ranges)| Some((partition, ranges.last()?.1))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_when_they_touch_or_overlap() {
        let mut runs = Runs::new();
        add_run(&mut runs, 0, 10, 20);
        add_run(&mut runs, 0, 30, 40);
        add_run(&mut runs, 0, 21, 25);
        add_run(&mut runs, 1, 5, 5);
        assert_eq!(runs[&0], vec![(10, 25), (30, 40)]);
        add_run(&mut runs, 0, 26, 29);
        assert_eq!(runs[&0], vec![(10, 40)]);
        assert_eq!(runs[&1], vec![(5, 5)]);
    }

    #[test]
    fn covers_the_low_watermark_and_the_committed_runs_only() {
        let mut state = CommitState::default();
        state.low.insert(0, 99);
        add_run(&mut state.ranges, 0, 150, 200);
        assert!(state.covers(0, 0) && state.covers(0, 99));
        assert!(!state.covers(0, 100) && !state.covers(0, 149));
        assert!(state.covers(0, 150) && state.covers(0, 200));
        assert!(!state.covers(0, 201));
        assert!(!state.covers(1, 0), "an unknown partition has nothing committed");
    }

    #[test]
    fn raising_the_watermark_absorbs_runs_it_reaches() {
        let mut state = CommitState::default();
        add_run(&mut state.ranges, 0, 150, 200);
        add_run(&mut state.ranges, 0, 300, 310);
        state.raise_low(0, 120);
        assert_eq!(state.low[&0], 120);
        assert_eq!(state.ranges[&0], vec![(150, 200), (300, 310)]);
        state.raise_low(0, 149);
        assert_eq!(state.low[&0], 200, "the run starting right after the watermark is absorbed");
        assert_eq!(state.ranges[&0], vec![(300, 310)]);
        state.raise_low(0, 100);
        assert_eq!(state.low[&0], 200, "never lowered");
        state.raise_low(0, 400);
        assert!(!state.ranges.contains_key(&0));
    }

    fn hour(hour: u32) -> Bucket {
        Bucket::Partition(PartitionKey { year: 2024, month: 5, day: 1, hour: Some(hour) })
    }

    fn record(ledger: &mut CommitLedger, rows: &[(u32, u64, Bucket)]) {
        let mut arrivals: Vec<_> = rows
            .iter()
            .map(|&(partition, offset, bucket)| (Position { partition, offset }, Destination::Buffered(bucket)))
            .collect();
        ledger.record(&mut arrivals);
    }

    #[test]
    fn a_newer_file_committed_first_does_not_move_the_watermark_past_older_buffered_rows() {
        let mut ledger = CommitLedger::default();
        // Partition 0: offsets 100..=110 go to hour 10, 111..=120 to hour 11.
        let rows: Vec<_> = (100..=110).map(|o| (0, o, hour(10))).chain((111..=120).map(|o| (0, o, hour(11)))).collect();
        record(&mut ledger, &rows);
        let (runs, state) = ledger.take(&hour(11));
        assert_eq!(runs[&0], vec![(111, 120)]);
        assert!(!state.covers(0, 100) && !state.covers(0, 110), "hour 10 is still buffered");
        assert!(state.covers(0, 111) && state.covers(0, 120));
        assert_eq!(state.low.get(&0), Some(&99));
        let (_, state) = ledger.take(&hour(10));
        assert_eq!(state.low[&0], 120, "both committed: the watermark passes everything seen");
        assert!(state.ranges.is_empty());
    }

    #[test]
    fn rows_recorded_part_by_part_or_at_once_give_the_same_runs_only_at_once() {
        // One batch, rows alternating between two hours: recorded as a whole, each hour's runs
        // are single rows; a later, lower offset is a row seen before and changes nothing.
        let mut ledger = CommitLedger::default();
        record(&mut ledger, &[(0, 1, hour(1)), (0, 2, hour(2)), (0, 3, hour(1)), (1, 7, hour(1))]);
        record(&mut ledger, &[(0, 2, hour(1))]);
        let (runs, state) = ledger.take(&hour(1));
        assert_eq!(runs[&0], vec![(1, 1), (3, 3)]);
        assert_eq!(runs[&1], vec![(7, 7)]);
        assert!(state.covers(0, 1) && !state.covers(0, 2) && state.covers(0, 3) && state.covers(1, 7));
    }

    #[test]
    fn a_run_continues_across_batches_until_its_buffer_is_taken_and_a_passed_row_ends_it() {
        let mut ledger = CommitLedger::default();
        record(&mut ledger, &[(0, 1, hour(1)), (0, 2, hour(1))]);
        record(&mut ledger, &[(0, 3, hour(1))]);
        ledger.record(&mut [(Position { partition: 0, offset: 4 }, Destination::Passed)]);
        record(&mut ledger, &[(0, 5, hour(1))]);
        assert_eq!(ledger.take(&hour(1)).0[&0], vec![(1, 3), (5, 5)]);
        record(&mut ledger, &[(0, 6, hour(1))]);
        assert_eq!(ledger.take(&hour(1)).0[&0], vec![(6, 6)]);
    }

    #[test]
    fn a_token_is_committed_only_when_every_row_before_it_is() {
        let mut ledger = CommitLedger::default();
        ledger.arrived(hour(1));
        ledger.token("t1".into());
        ledger.arrived(hour(2));
        ledger.token("t2".into());
        let (_, state) = ledger.take(&hour(2));
        assert_eq!(state.token, None, "hour 1 still holds rows from before both tokens");
        let (_, state) = ledger.take(&hour(1));
        assert_eq!(state.token.as_deref(), Some("t2"));
        ledger.arrived(hour(1));
        ledger.token("t3".into());
        assert_eq!(ledger.take(&hour(3)).1.token.as_deref(), Some("t2"), "hour 1 holds rows from before t3");
        assert_eq!(ledger.take(&hour(1)).1.token.as_deref(), Some("t3"));
    }

    #[test]
    fn a_file_with_a_run_per_row_merges_and_absorbs_in_linear_time() {
        // 400,000 rows alternating between two hours: 200,000 single-row runs per file.
        let mut ledger = CommitLedger::default();
        let rows: Vec<_> = (0..400_000u64).map(|o| (0, o, hour((o % 2) as u32))).collect();
        record(&mut ledger, &rows);
        let (runs, state) = ledger.take(&hour(1));
        assert_eq!(runs[&0].len(), 200_000);
        assert_eq!(state.ranges[&0].len(), 200_000, "odd offsets committed above the watermark");
        let (runs, state) = ledger.take(&hour(0));
        assert_eq!(runs[&0].len(), 200_000);
        assert_eq!(state.low[&0], 399_999);
        assert!(state.ranges.is_empty(), "the even offsets close every gap");
    }
}
