//! The dead letter: rows and lines that could not be decoded, kept as JSON lines next to the
//! data, committed with the same guarantee.
//!
//! ```text
//! <lake>/dead_letter/<feed>/year=YYYY/month=MM/day=DD/rejected_YYYYMMDD_HHMMSS_<unique>.jsonl
//! ```
//!
//! One line per rejected row: `{"feed", "received_at", "error_type", "error", "column",
//! "partition", "offset", "length", "truncated", "raw"}` (`raw_base64` instead of `raw` when the
//! bytes are not UTF-8). A dead-letter file is written create-only and listed in the feed's
//! `_metadata.json` (`dead_letter`) before the commit state moves past its rows, exactly like a
//! data file: a rejected row whose position is known is in the dead letter exactly once. A line
//! whose position cannot be read (not even its first three values) is flushed to the dead
//! letter at once, before any later row can be committed, so it is never lost; after a crash
//! it may be dead-lettered a second time.

use base64::Engine as _;
use bytes::Bytes;
use chrono::{Datelike, TimeZone, Utc};

use super::budget::Reservation;
use super::commit::{CommitState, Runs};
use super::layout::{ulid, FeedKind};
use super::Position;

/// A row or line that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The row's text as received, cut to the feed's `max_line_bytes`.
    pub raw: Bytes,
    /// Its whole length.
    pub length: u64,
    /// A bounded label: `frame`, `line_too_long`, `column_count`, `type`, `value`, ….
    pub error_type: &'static str,
    pub error: String,
    /// The column that failed, when one did.
    pub column: Option<String>,
    /// Its ksqlDB position, when it could be read.
    pub position: Option<Position>,
    pub received_ms: i64,
}

impl Rejected {
    /// Memory it holds against the budget.
    pub fn memory_bytes(&self) -> u64 {
        (self.raw.len() + self.error.len() + 128) as u64
    }

    /// Appends this row's JSON line to `out`, borrowing the raw text (lines may be megabytes).
    fn json_line(&self, feed: &str, out: &mut Vec<u8>) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            feed: &'a str,
            received_at: String,
            error_type: &'a str,
            error: &'a str,
            column: Option<&'a str>,
            partition: Option<u32>,
            offset: Option<u64>,
            length: u64,
            truncated: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            raw: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            raw_base64: Option<String>,
        }
        let received = Utc.timestamp_millis_opt(self.received_ms).single().unwrap_or_default();
        let text = std::str::from_utf8(&self.raw).ok();
        let line = Line {
            feed,
            received_at: received.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            error_type: self.error_type,
            error: &self.error,
            column: self.column.as_deref(),
            partition: self.position.map(|position| position.partition),
            offset: self.position.map(|position| position.offset),
            length: self.length,
            truncated: self.length > self.raw.len() as u64,
            raw: text,
            raw_base64: text.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(&self.raw)),
        };
        serde_json::to_writer(&mut *out, &line).expect("a dead-letter line serializes");
        out.push(b'\n');
    }
}

/// The rejected rows of one feed, ready to be written as one dead-letter file.
#[derive(Debug)]
pub struct DeadLetterJob {
    pub feed: String,
    /// The kind of the feed, whose manifest lists the file.
    pub kind: FeedKind,
    /// `year=YYYY/month=MM/day=DD/rejected_….jsonl`, below `dead_letter/<feed>/`.
    pub relative_path: String,
    pub records: Vec<Rejected>,
    /// The exact runs of the rows it holds (those with a position).
    pub runs: Runs,
    /// The feed's commit state once this file is committed.
    pub commit: CommitState,
    /// Released when the job is dropped.
    pub(crate) reservation: Reservation,
}

impl DeadLetterJob {
    pub(crate) fn new(
        feed: String,
        kind: FeedKind,
        records: Vec<Rejected>,
        runs: Runs,
        commit: CommitState,
        reservation: Reservation,
    ) -> Self {
        let first = records.first().map_or(0, |record| record.received_ms);
        let time = Utc.timestamp_millis_opt(first).single().unwrap_or_default();
        let unique = records.iter().find_map(|record| record.position).map_or_else(
            || ulid(Utc::now().timestamp_millis()),
            |position| format!("p{:010}o{:019}", position.partition, position.offset),
        );
        let relative_path = format!(
            "year={:04}/month={:02}/day={:02}/rejected_{}_{unique}.jsonl",
            time.year(),
            time.month(),
            time.day(),
            time.format("%Y%m%d_%H%M%S")
        );
        DeadLetterJob { feed, kind, relative_path, records, runs, commit, reservation }
    }

    pub fn reserved_bytes(&self) -> u64 {
        self.reservation.bytes()
    }

    /// The file's contents: one JSON line per rejected row.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.records.iter().map(|record| record.raw.len() + 256).sum());
        for record in &self.records {
            record.json_line(&self.feed, &mut out);
        }
        Bytes::from(out)
    }
}

/// The runs of a dead-letter file, read back from its lines (for adopting a file a crash left
/// unlisted): every row in it with a position, each its own run (merged where they touch).
pub fn runs_of(contents: &[u8]) -> Result<(u64, Runs), serde_json::Error> {
    let mut runs = Runs::new();
    let mut records = 0;
    for line in contents.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
        let value: serde_json::Value = serde_json::from_slice(line)?;
        records += 1;
        if let (Some(partition), Some(offset)) = (value["partition"].as_u64(), value["offset"].as_u64()) {
            let single = Runs::from([(partition as u32, vec![(offset, offset)])]);
            super::commit::merge_runs(&mut runs, &single);
        }
    }
    Ok((records, runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::MemoryBudget;

    fn rejected(raw: &[u8], position: Option<Position>) -> Rejected {
        Rejected {
            raw: Bytes::copy_from_slice(raw),
            length: raw.len() as u64 + 10,
            error_type: "frame",
            error: "unterminated string".into(),
            column: None,
            position,
            received_ms: 1_714_521_600_000,
        }
    }

    #[test]
    fn lines_name_the_row_and_read_back_to_its_runs() {
        let budget = MemoryBudget::new(1 << 20);
        let records = vec![
            rejected(b"[96,\"broken row", Some(Position { partition: 0, offset: 7 })),
            rejected(&[0xff, 0xfe], None),
            rejected(b"{}", Some(Position { partition: 0, offset: 8 })),
        ];
        let job = DeadLetterJob::new(
            "orders".into(),
            FeedKind::Stream,
            records,
            Runs::new(),
            CommitState::default(),
            budget.reserve(0),
        );
        assert_eq!(
            job.relative_path,
            "year=2024/month=05/day=01/rejected_20240501_000000_p0000000000o0000000000000000007.jsonl"
        );
        let bytes = job.encode();
        let lines: Vec<serde_json::Value> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["raw"], "[96,\"broken row");
        assert_eq!(lines[0]["truncated"], true);
        assert_eq!(lines[0]["offset"], 7);
        assert_eq!(lines[1]["raw_base64"], "//4=");
        assert!(lines[1]["partition"].is_null());
        assert_eq!(runs_of(&bytes).unwrap(), (3, Runs::from([(0, vec![(7, 8)])])));
    }
}
