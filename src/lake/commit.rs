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

/// Adds every range of `other` to `runs`.
pub fn merge_runs(runs: &mut Runs, other: &Runs) {
    for (&partition, ranges) in other {
        for &(first, last) in ranges {
            add_run(runs, partition, first, last);
        }
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
            ranges.retain(|&(_, last)| last > low);
            // A run that starts at or before the watermark + 1 extends it.
            while let Some(&(first, last)) = ranges.first() {
                if first <= low.saturating_add(1) {
                    self.low.insert(partition, last.max(low));
                    ranges.remove(0);
                } else {
                    break;
                }
            }
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

/// Where one arriving row went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Buffered in this time partition, to be written with its next file.
    Buffered(PartitionKey),
    /// Not buffered: skipped because it was committed already, or rejected as undecodable.
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
    pending: BTreeMap<PartitionKey, Runs>,
    /// Per ksqlDB partition: the latest offset that arrived, and where it went.
    last: BTreeMap<u32, (u64, Destination)>,
    /// Arrival order of buffered rows and tokens, for continuation tokens: a token is committed
    /// once every buffer holding rows from before it has been written.
    next_sequence: u64,
    /// Per time partition, the arrival sequence of its oldest buffered rows.
    oldest_sequence: BTreeMap<PartitionKey, u64>,
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
    pub fn arrived(&mut self, key: PartitionKey) {
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
    pub fn take(&mut self, key: &PartitionKey) -> (Runs, CommitState) {
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
}
