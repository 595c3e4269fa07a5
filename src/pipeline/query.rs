//! The push query a feed runs, and the resume positions that make it lossless.
//!
//! ksqlDB push queries start at `latest` by default: a naive client loses every row produced
//! while it was away. ksql-lake selects `ROWPARTITION` and `ROWOFFSET` with every row, remembers
//! the highest offset per partition, and on every (re)connect opens the query at `earliest`
//! with a WHERE clause that skips what it already has. The same check also runs client-side,
//! so a server that ignores the filter still cannot produce a duplicate.

use crate::config::Delivery;
use crate::lake::{self, CommitState, Position};
use crate::schema::{Column, KsqlType};

/// Names of the pseudo columns ksql-lake selects in front of the source's own columns.
pub const ROWTIME: &str = "ROWTIME";
pub const ROWPARTITION: &str = "ROWPARTITION";
pub const ROWOFFSET: &str = "ROWOFFSET";

/// What a feed's source skips when it (re)opens its push query: the committed set it started
/// from, and every row already handed to the buffer stage in this run.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The feed's commit state when the run started.
    pub committed: CommitState,
    /// Highest offset per partition handed on in this run (buffered, passed or committed):
    /// within a partition rows arrive in offset order, so everything at or below it was seen.
    pub seen: lake::Positions,
    /// The newest continuation token received in this run.
    pub token: Option<String>,
    /// False once the server rejected the resume WHERE clause: the client-side check alone
    /// then keeps rows from coming twice.
    pub server_filter: bool,
}

impl Default for Resume {
    fn default() -> Self {
        Resume::new(CommitState::default())
    }
}

impl Resume {
    pub fn new(committed: CommitState) -> Self {
        Resume { committed, seen: lake::Positions::new(), token: None, server_filter: true }
    }

    /// True when the row was already handed on in this run.
    pub fn handed_on(&self, position: Position) -> bool {
        self.seen.get(&position.partition).is_some_and(|&seen| position.offset <= seen)
    }

    /// True when `position` is a plausible next row: of a partition seen in this run, a little
    /// after the last offset seen (offsets may skip a few: transaction markers, compaction).
    pub fn is_next(&self, position: Position) -> bool {
        /// Offsets further ahead than this are not believed from a broken line.
        const PLAUSIBLE_GAP: u64 = 1000;
        self.seen
            .get(&position.partition)
            .is_some_and(|&seen| position.offset > seen && position.offset <= seen.saturating_add(PLAUSIBLE_GAP))
    }

    /// True when the row was committed or already handed on in this run.
    pub fn covers(&self, position: Position) -> bool {
        self.handed_on(position) || self.committed.covers(position.partition, position.offset)
    }

    pub fn observe(&mut self, position: Position) {
        let entry = self.seen.entry(position.partition).or_insert(position.offset);
        *entry = (*entry).max(position.offset);
    }

    /// Per partition, the offset the query may start after (nothing when the server does not
    /// take the filter).
    pub fn start_after(&self) -> lake::Positions {
        if !self.server_filter {
            return lake::Positions::new();
        }
        let mut start = self.committed.low.clone();
        lake::merge_positions(&mut start, &self.seen);
        start
    }
}

/// Why a feed's `timestamp_column` cannot partition the rows of its query, given the query's
/// columns; `None` when it can (or when the feed partitions by ROWTIME or processing time).
pub fn event_time_problem(column: Option<&str>, source: &str, columns: &[Column]) -> Option<String> {
    let wanted = column?;
    let Some(found) = columns.iter().find(|candidate| candidate.name == wanted) else {
        let names: Vec<&str> = columns.iter().map(|column| column.name.as_str()).collect();
        return Some(format!(
            "timestamp_column `{wanted}` is not a column of {source}; its columns are {} (names are case-sensitive)",
            names.join(", ")
        ));
    };
    match found.ty {
        KsqlType::Timestamp | KsqlType::Bigint => None,
        ref other => Some(format!(
            "timestamp_column `{wanted}` has type {other}; allowed: TIMESTAMP, or BIGINT epoch milliseconds"
        )),
    }
}

/// Builds the statement and properties of a feed's push query.
pub fn push_query(
    source: &str,
    delivery: Delivery,
    start_after: &lake::Positions,
) -> (String, serde_json::Map<String, serde_json::Value>) {
    let mut properties = serde_json::Map::new();
    let reset = match delivery {
        Delivery::Latest | Delivery::ContinuationToken => "latest",
        Delivery::ExactlyOnce | Delivery::AtLeastOnce => "earliest",
    };
    properties.insert("auto.offset.reset".into(), reset.into());
    let filter = match delivery {
        Delivery::ExactlyOnce | Delivery::AtLeastOnce => resume_filter(start_after),
        _ => None,
    };
    if delivery == Delivery::ContinuationToken {
        // A scalable push query: no ROWPARTITION/ROWOFFSET allowed, positions come as tokens.
        properties.insert("ksql.query.push.v2.enabled".into(), true.into());
        properties.insert("ksql.query.push.v2.continuation.tokens.enabled".into(), true.into());
        return (format!("SELECT {ROWTIME}, * FROM {source} EMIT CHANGES;"), properties);
    }
    let mut sql = format!("SELECT {ROWTIME}, {ROWPARTITION}, {ROWOFFSET}, * FROM {source}");
    if let Some(filter) = filter {
        sql.push_str(" WHERE ");
        sql.push_str(&filter);
    }
    sql.push_str(" EMIT CHANGES;");
    (sql, properties)
}

/// `(ROWPARTITION = 0 AND ROWOFFSET > 41) OR ... OR (ROWPARTITION <> 0 AND ...)`: rows after the
/// known positions, and every row of a partition not seen yet.
fn resume_filter(start_after: &lake::Positions) -> Option<String> {
    if start_after.is_empty() {
        return None;
    }
    let mut terms: Vec<String> = start_after
        .iter()
        .map(|(partition, offset)| format!("({ROWPARTITION} = {partition} AND {ROWOFFSET} > {offset})"))
        .collect();
    let unseen: Vec<String> = start_after.keys().map(|partition| format!("{ROWPARTITION} <> {partition}")).collect();
    terms.push(format!("({})", unseen.join(" AND ")));
    Some(terms.join(" OR "))
}

/// The ksqlDB position of a row from its leading `[ROWTIME, ROWPARTITION, ROWOFFSET, ...`;
/// `None` when they are missing, null or out of range.
pub fn row_position(row: &[u8]) -> Option<Position> {
    let (_, partition, offset) = leading_position(row)?;
    Some(Position { partition: u32::try_from(partition).ok()?, offset: u64::try_from(offset).ok()? })
}

/// Reads the leading `[ROWTIME, ROWPARTITION, ROWOFFSET, ...` of a row's JSON text without
/// decoding the rest. `None` when the row does not start with three integers.
pub fn leading_position(row: &[u8]) -> Option<(i64, i32, i64)> {
    fn take_integer(rest: &mut &[u8]) -> Option<i64> {
        let start = rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'[' | b','))?;
        let digits = &rest[start..];
        let end = digits.iter().position(|b| !(b.is_ascii_digit() || *b == b'-')).unwrap_or(digits.len());
        // `1.5` or `1e3` is not an integer: reading its `1` would place the row wrongly.
        if !matches!(digits.get(end), None | Some(b',' | b']' | b' ' | b'\t' | b'\r' | b'\n')) {
            return None;
        }
        // The row decoder's BIGINT parser: `-?[0-9]+` over the full range, without the UTF-8
        // check and `str::parse` (this runs twice for every row).
        let value = crate::schema::rows::parse_i64(&digits[..end]).ok()?;
        *rest = &digits[end..];
        Some(value)
    }
    let mut rest = row;
    if !matches!(rest.iter().find(|b| !b.is_ascii_whitespace()), Some(b'[')) {
        return None;
    }
    let rowtime = take_integer(&mut rest)?;
    let partition = i32::try_from(take_integer(&mut rest)?).ok()?;
    let offset = take_integer(&mut rest)?;
    Some((rowtime, partition, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_query_reads_everything_from_earliest() {
        let (sql, properties) = push_query("ORDERS", Delivery::ExactlyOnce, &lake::Positions::new());
        assert_eq!(sql, "SELECT ROWTIME, ROWPARTITION, ROWOFFSET, * FROM ORDERS EMIT CHANGES;");
        assert_eq!(properties["auto.offset.reset"], "earliest");
    }

    #[test]
    fn resumed_query_skips_known_positions_and_keeps_new_partitions() {
        let mut committed = CommitState::default();
        committed.low.insert(0, 30);
        lake::commit::add_run(&mut committed.ranges, 0, 45, 50);
        let mut resume = Resume::new(committed);
        resume.observe(Position { partition: 1, offset: 7 });
        resume.observe(Position { partition: 0, offset: 41 });
        resume.observe(Position { partition: 0, offset: 40 });
        let (sql, _) = push_query("ORDERS", Delivery::AtLeastOnce, &resume.start_after());
        assert_eq!(
            sql,
            "SELECT ROWTIME, ROWPARTITION, ROWOFFSET, * FROM ORDERS WHERE (ROWPARTITION = 0 AND ROWOFFSET > 41) \
             OR (ROWPARTITION = 1 AND ROWOFFSET > 7) OR (ROWPARTITION <> 0 AND ROWPARTITION <> 1) EMIT CHANGES;"
        );
        let at = |partition, offset| Position { partition, offset };
        assert!(resume.covers(at(0, 41)) && !resume.covers(at(0, 42)) && !resume.covers(at(2, 0)));
        assert!(
            resume.covers(at(0, 45)) && resume.covers(at(0, 50)) && !resume.covers(at(0, 51)),
            "committed runs are skipped"
        );
    }

    #[test]
    fn continuation_token_mode_asks_for_a_scalable_push_query() {
        let (sql, properties) = push_query("S", Delivery::ContinuationToken, &[(0, 5)].into());
        assert_eq!(sql, "SELECT ROWTIME, * FROM S EMIT CHANGES;");
        assert_eq!(properties["ksql.query.push.v2.enabled"], true);
        assert_eq!(properties["ksql.query.push.v2.continuation.tokens.enabled"], true);
        assert_eq!(properties["auto.offset.reset"], "latest");
    }

    #[test]
    fn latest_has_no_filter() {
        let (sql, properties) = push_query("S", Delivery::Latest, &[(0, 5)].into());
        assert!(!sql.contains("WHERE"));
        assert_eq!(properties["auto.offset.reset"], "latest");
    }

    #[test]
    fn leading_position_reads_three_integers() {
        assert_eq!(leading_position(b"[1700000000000,3,12345,\"x\",{\"a\":1}]"), Some((1_700_000_000_000, 3, 12345)));
        assert_eq!(leading_position(b" [ 1, 0, 9 ]"), Some((1, 0, 9)));
        assert_eq!(leading_position(b"[\"x\",0,1]"), None);
        assert_eq!(leading_position(b"[1,2]"), None);
        assert_eq!(leading_position(b"{}"), None);
        // Integers at the edges of their types, and text that is not one integer.
        assert_eq!(leading_position(b"[-9223372036854775808,0,9223372036854775807]"), Some((i64::MIN, 0, i64::MAX)));
        assert_eq!(leading_position(b"[9223372036854775808,0,1]"), None);
        assert_eq!(leading_position(b"[1,2147483648,1]"), None);
        assert_eq!(leading_position(b"[1,-1,-5]"), Some((1, -1, -5)));
        assert_eq!(row_position(b"[1,-1,5]"), None);
        assert_eq!(row_position(b"[1,0,-5]"), None);
        for broken in
            [&b"[12-3,0,1]"[..], b"[-,0,1]", b"[1,0,--1]", b"[1,0,null]", b"[1,0,1.5]", b"[1,0,1e3]", b"[1.0,0,1]"]
        {
            assert_eq!(row_position(broken), None, "{}", String::from_utf8_lossy(broken));
        }
    }
}
