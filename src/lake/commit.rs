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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Positions;

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
