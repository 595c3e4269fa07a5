//! The changelog of a table feed with `changelog = true`: every change of the table, upserts and
//! deletes, kept exactly once as the stream feed `<table>.changelog`.
//!
//! ksqlDB sends a table's deletes only in the StreamedRow framing, as tombstones that carry the
//! key columns and nothing else: no ROWTIME, ROWPARTITION or ROWOFFSET. The commit ledger places
//! every row by its ksqlDB position, so a delete gets one that a replay gives it again:
//!
//! - every change is placed in the ksqlDB partition of its key, at an **order** within that
//!   partition: an upsert at offset `o` has the order `o`, and the `n`-th delete that arrives
//!   after it (before the partition's next upsert) has the order `o + n`. Each tombstone takes
//!   an offset of its own in the topic, so `o + n` is below the next upsert's offset: the
//!   orders of a partition increase, and are dense where its changes are;
//! - a delete's partition is the partition of its key's last upsert. ksqlDB keeps all changes of
//!   a key in one partition and sends each partition's changes in offset order, so the delete
//!   comes after the last upsert of its partition that arrived before it, and before the next.
//!   A key upserted in two partitions (a topic repartitioned under the table), or an upsert
//!   whose offset leaves no room for the deletes before it, breaks this: the feed stops with an
//!   error saying so rather than guess. An offset that goes back (a re-delivery) ends the
//!   connection, and the next reads from the start;
//! - a line that cannot be decoded but starts with its position takes its offset like an
//!   upsert ([`Changelog::pass`]), so whether a reading decodes it does not move the deletes;
//! - the query reads the whole changelog from the earliest offset on every connection, with
//!   ksqlDB's record cache off (`cache.max.bytes.buffering = 0`, so no change is folded into
//!   another): the same changes arrive in the same order per partition, and get the same orders;
//! - a delete of a key the table does not hold (never upserted, or deleted already) changes
//!   nothing and is not kept.
//!
//! Rows get two more columns: `op` (`upsert` or `delete`) and `op_order`, the order above.
//! A delete keeps ROWPARTITION (its key's partition); its ROWTIME and ROWOFFSET stay null, so it
//! is partitioned by its arrival time. Replaying each key's changes by `op_order` rebuilds the
//! table.
//!
//! The guarantee is exactly once for every upsert (it carries its offset) and for every delete
//! as long as what ksqlDB replays is what it sent. Log compaction of the table's topic breaks
//! that for deletes: removing a key's superseded upsert or an expired tombstone changes how
//! many deletes follow an upsert, so the deletes after it in that partition get other orders
//! on the next connection, and may be kept twice or skipped.

use std::collections::HashMap;

use crate::lake::Position;
use crate::schema::{Column, KsqlType};

/// The column naming the kind of change.
pub const OP: &str = "op";
/// The column ordering the changes of one ksqlDB partition.
pub const OP_ORDER: &str = "op_order";
/// The highest order that fits the `op_order` column.
const MAX_ORDER: u64 = i64::MAX as u64;

/// Why a change could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// This row only: it goes to the dead letter like any undecodable row.
    Row(String),
    /// This reading went wrong (a partition went back to an offset it had passed, as a
    /// re-delivery does): read the changelog again from the start.
    Replay(String),
    /// The feed cannot go on.
    Feed(String),
}

/// Places the changes of one connection (see the module doc). Made again for every connection:
/// each starts from the earliest offset.
#[derive(Debug)]
pub struct Changelog {
    /// The key columns' indexes in the query's columns.
    keys: Vec<usize>,
    /// The ksqlDB partition of every key the table holds.
    partition_of: HashMap<Box<str>, u32>,
    /// Per ksqlDB partition: the order of its last upsert, and the deletes placed since.
    last: HashMap<u32, (u64, u64)>,
    /// Bytes held by `partition_of`, and the most it may hold.
    held: u64,
    limit: u64,
    /// The row as the feed writes it, with its two change columns.
    row: Vec<u8>,
}

impl Changelog {
    /// `columns` are the push query's (`ROWTIME, ROWPARTITION, ROWOFFSET, *`), `key_names` the
    /// table's key columns (from `DESCRIBE`); the keys held may take `limit` bytes.
    pub fn new(columns: &[Column], key_names: &[String], limit: u64) -> Result<Self, String> {
        if let Some(clash) =
            columns.iter().find(|column| [OP, OP_ORDER].iter().any(|added| column.name.eq_ignore_ascii_case(added)))
        {
            return Err(format!("the table has a column named `{}`, which its changelog adds itself", clash.name));
        }
        if key_names.is_empty() {
            return Err("the table has no key columns (DESCRIBE shows none): its deletes cannot be placed".into());
        }
        let keys = key_names
            .iter()
            .map(|name| {
                columns
                    .iter()
                    .position(|column| column.name == *name)
                    .ok_or_else(|| format!("key column {name} is not among the query's columns"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Changelog { keys, partition_of: HashMap::new(), last: HashMap::new(), held: 0, limit, row: Vec::new() })
    }

    /// The columns of the rows [`Self::row`] gives: the query's, then `op` and `op_order`.
    pub fn columns(columns: &[Column]) -> Vec<Column> {
        let mut all = columns.to_vec();
        all.push(Column::new(OP, KsqlType::String));
        all.push(Column::new(OP_ORDER, KsqlType::Bigint));
        all
    }

    /// Places one change. `Ok(None)`: a delete of a key the table does not hold, which is not
    /// kept. Otherwise the row to write is [`Self::row`].
    pub fn place(&mut self, values: &[u8], tombstone: bool) -> Result<Option<Position>, Unplaced> {
        if tombstone {
            return self.place_delete(values);
        }
        let position = super::query::row_position(values)
            .ok_or_else(|| Unplaced::Row("the change has no ROWPARTITION/ROWOFFSET (null or not integers)".into()))?;
        let (partition, order) = (position.partition, position.offset);
        // the offset is taken even when the key cannot be read, as for any undecodable line
        self.take_offset(partition, order)?;
        let key = row_key(values, &self.keys).ok_or_else(no_key)?;
        match self.partition_of.get(key.as_str()) {
            Some(&held) if held != partition => {
                return Err(Unplaced::Feed(format!(
                    "key {key} has changes in partitions {held} and {partition} (was the table's topic \
                     repartitioned?): its deletes cannot be placed; start the changelog anew under another feed name"
                )));
            }
            Some(_) => {}
            None => {
                self.held += key.len() as u64 + KEY_OVERHEAD;
                self.partition_of.insert(key.into(), partition);
            }
        }
        if self.held > self.limit {
            return Err(Unplaced::Feed(format!(
                "the table's keys take more than {} bytes, the quarter of the memory budget its changelog may hold; \
                 raise [memory] budget",
                self.limit
            )));
        }
        let end = values.iter().rposition(|&b| b == b']').unwrap_or(values.len());
        self.row.clear();
        self.row.extend_from_slice(&values[..end]);
        self.row.extend_from_slice(format!(",\"upsert\",{order}]").as_bytes());
        Ok(Some(Position { partition, offset: order }))
    }

    /// A line at `position` that cannot be decoded (too long, not JSON) takes its offset like
    /// an upsert, so the deletes after it get the same orders whether or not a reading can
    /// decode it. Its key stays unknown: a delete of it is not kept. Errors as for an upsert
    /// at that offset.
    pub fn pass(&mut self, position: Position) -> Result<Position, Unplaced> {
        self.take_offset(position.partition, position.offset).map(|()| position)
    }

    /// Makes `offset` the partition's last upsert, after checking that it comes after every
    /// order given there.
    fn take_offset(&mut self, partition: u32, offset: u64) -> Result<(), Unplaced> {
        if offset > MAX_ORDER {
            return Err(Unplaced::Row(format!("offset {offset} is too large to be ordered")));
        }
        if let Some(&(last, deletes)) = self.last.get(&partition) {
            if offset <= last {
                return Err(Unplaced::Replay(format!(
                    "partition {partition} sent offset {offset} after offset {last}: changes were sent again"
                )));
            }
            if offset <= last + deletes {
                return Err(Unplaced::Feed(format!(
                    "partition {partition} sent {deletes} deletes after offset {last} but its next change is at \
                     offset {offset}: more deletes than the offsets between leave room for, so they cannot be placed"
                )));
            }
        }
        self.last.insert(partition, (offset, 0));
        Ok(())
    }

    fn place_delete(&mut self, values: &[u8]) -> Result<Option<Position>, Unplaced> {
        let columns: Vec<&serde_json::value::RawValue> = serde_json::from_slice(values).map_err(|_| no_key())?;
        let key = key_of(&columns, &self.keys).ok_or_else(no_key)?;
        let Some(partition) = self.partition_of.remove(key.as_str()) else {
            return Ok(None);
        };
        self.held -= key.len() as u64 + KEY_OVERHEAD;
        // the key's upsert was placed, so its partition has a last upsert
        let (base, deletes) = self.last.get_mut(&partition).expect("a held key's partition has an upsert");
        *deletes += 1;
        let order = base.saturating_add(*deletes).min(MAX_ORDER);
        // the tombstone as ksqlDB sent it, with its key's partition filled in
        self.row.clear();
        self.row.push(b'[');
        for (index, value) in columns.iter().enumerate() {
            if index == 1 {
                self.row.extend_from_slice(partition.to_string().as_bytes());
            } else {
                self.row.extend_from_slice(value.get().as_bytes());
            }
            self.row.push(b',');
        }
        self.row.extend_from_slice(format!("\"delete\",{order}]").as_bytes());
        Ok(Some(Position { partition, offset: order }))
    }

    /// The last change placed, as the feed writes it.
    pub fn row(&self) -> &[u8] {
        &self.row
    }
}

/// What a held key costs beyond its text (the map's entry and allocation).
const KEY_OVERHEAD: u64 = 48;

/// The key values of a row as ksqlDB wrote them (each value's JSON text, so a DECIMAL key with
/// more digits than a double holds stays exact), `None` when the row is not an array that long.
pub fn row_key(values: &[u8], keys: &[usize]) -> Option<String> {
    let row: Vec<&serde_json::value::RawValue> = serde_json::from_slice(values).ok()?;
    key_of(&row, keys)
}

/// [`row_key`] of a row already split into its values.
fn key_of(row: &[&serde_json::value::RawValue], keys: &[usize]) -> Option<String> {
    let key: Vec<&str> = keys.iter().map(|&index| row.get(index).map(|value| value.get())).collect::<Option<_>>()?;
    Some(key.join("\u{1f}"))
}

fn no_key() -> Unplaced {
    Unplaced::Row("not a JSON array holding the table's key columns".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn columns() -> Vec<Column> {
        vec![
            Column::new("ROWTIME", KsqlType::Bigint),
            Column::new("ROWPARTITION", KsqlType::Integer),
            Column::new("ROWOFFSET", KsqlType::Bigint),
            Column::new("ID", KsqlType::String),
            Column::new("SCORE", KsqlType::Integer),
        ]
    }

    fn changelog() -> Changelog {
        Changelog::new(&columns(), &["ID".into()], 1 << 20).unwrap()
    }

    #[test]
    fn row_keys_are_the_json_of_the_key_values() {
        assert_eq!(row_key(br#"["a",1,null]"#, &[0]).as_deref(), Some(r#""a""#));
        assert_eq!(row_key(br#"["a",1,null]"#, &[1, 0]).as_deref(), Some("1\u{1f}\"a\""));
        // digits beyond a double's precision still tell keys apart
        let a = row_key(br#"[12345678901234567890.01,1]"#, &[0]);
        let b = row_key(br#"[12345678901234567890.02,1]"#, &[0]);
        assert_ne!(a, b);
        assert_eq!(row_key(br#"["a"]"#, &[2]), None);
        assert_eq!(row_key(b"not json", &[0]), None);
    }

    #[test]
    fn upserts_and_deletes_get_their_columns_and_orders() {
        let mut log = changelog();
        let at = |partition, offset| Some(Position { partition, offset });
        assert_eq!(log.place(br#"[5,1,7,"a",3]"#, false), Ok(at(1, 7)));
        assert_eq!(log.row(), br#"[5,1,7,"a",3,"upsert",7]"#);
        assert_eq!(log.place(br#"[6,1,9,"b",4]"#, false), Ok(at(1, 9)));
        // the tombstone of `a` comes after offset 9 of partition 1, the last one seen there
        assert_eq!(log.place(br#"[null,null,null,"a",null]"#, true), Ok(at(1, 10)));
        assert_eq!(log.row(), br#"[null,1,null,"a",null,"delete",10]"#);
        assert_eq!(log.place(br#"[null,null,null,"b",null]"#, true), Ok(at(1, 11)));
        // deleted already, or never there: nothing to keep
        assert_eq!(log.place(br#"[null,null,null,"a",null]"#, true), Ok(None));
        assert_eq!(log.place(br#"[null,null,null,"zz",null]"#, true), Ok(None));
        assert!(matches!(log.place(br#"[5,null,null,"c",3]"#, false), Err(Unplaced::Row(_))));
        assert!(matches!(log.place(b"{}", false), Err(Unplaced::Row(_))));
        assert_eq!(log.held, 0, "deleted keys are let go");
    }

    #[test]
    fn changes_that_cannot_be_ordered_stop_the_feed() {
        let stops = |rows: &[&str]| {
            let mut log = changelog();
            let (last, rest) = rows.split_last().unwrap();
            for row in rest {
                log.place(row.as_bytes(), row.starts_with("[null")).unwrap();
            }
            log.place(last.as_bytes(), false).unwrap_err()
        };
        // a key upserted in two partitions: its delete would land in either
        assert!(
            matches!(stops(&[r#"[1,0,3,"a",1]"#, r#"[1,1,4,"a",2]"#]), Unplaced::Feed(r) if r.contains("partitions 0 and 1"))
        );
        // an upsert at an order a delete took: more deletes than the offsets between allow
        let rows = [r#"[1,0,3,"a",1]"#, r#"[1,0,4,"b",1]"#, r#"[null,null,null,"a",null]"#, r#"[1,0,5,"c",1]"#];
        assert!(matches!(stops(&rows), Unplaced::Feed(r) if r.contains("more deletes")));
        // an offset that goes back, as a re-delivery sends it: read again from the start
        assert!(matches!(stops(&[r#"[1,0,8,"a",1]"#, r#"[1,0,2,"b",1]"#]), Unplaced::Replay(_)));
    }

    #[test]
    fn an_undecodable_line_takes_its_offset_so_later_deletes_keep_their_orders() {
        let mut log = changelog();
        let at = |partition, offset| Position { partition, offset };
        log.place(br#"[1,0,3,"a",1]"#, false).unwrap();
        assert_eq!(log.pass(at(0, 4)), Ok(at(0, 4)));
        assert_eq!(log.place(br#"[null,null,null,"a",null]"#, true), Ok(Some(at(0, 5))));
        // a position the partition has passed is sent again: read again from the start
        assert!(matches!(log.pass(at(0, 4)), Err(Unplaced::Replay(_))));
        // an upsert without its key still takes its offset
        assert!(matches!(log.place(br#"[1,0,7]"#, false), Err(Unplaced::Row(_))));
        assert!(matches!(log.pass(at(0, 7)), Err(Unplaced::Replay(_))));
    }

    #[test]
    fn a_table_without_keys_or_with_a_clashing_column_is_refused() {
        assert!(Changelog::new(&columns(), &[], 1 << 20).is_err());
        assert!(Changelog::new(&columns(), &["NOPE".into()], 1 << 20).is_err());
        let mut clashing = columns();
        clashing.push(Column::new("OP", KsqlType::String));
        // readers match column names without case
        assert!(Changelog::new(&clashing, &["ID".into()], 1 << 20).unwrap_err().contains("`OP`"));
    }

    #[test]
    fn too_many_keys_stop_the_feed() {
        let mut log = Changelog::new(&columns(), &["ID".into()], 200).unwrap();
        let mut stopped = false;
        for i in 0..10 {
            if let Err(Unplaced::Feed(reason)) = log.place(format!(r#"[1,0,{i},"k{i}",1]"#).as_bytes(), false) {
                assert!(reason.contains("memory budget"));
                stopped = true;
                break;
            }
        }
        assert!(stopped);
    }

    /// The changes of a random table: (key, delete?, undecodable?). An undecodable upsert is a
    /// line the source cannot read (too long, broken JSON) that still starts with its position.
    fn changes() -> impl Strategy<Value = Vec<(u8, bool, bool)>> {
        prop::collection::vec((0u8..12, prop::bool::weighted(0.35), prop::bool::weighted(0.1)), 1..300)
    }

    /// One line as a server sends it: the row, whether it is a tombstone or undecodable, and the
    /// offset the topic gave it.
    struct Served {
        row: Vec<u8>,
        tombstone: bool,
        undecodable: bool,
        offset: u64,
    }

    /// The rows a server sends for `changes`, per partition in offset order (each partition
    /// numbers its own records, tombstones included), interleaved by `mix` (any interleaving
    /// keeps each partition's order). A key lives in one partition.
    fn served(changes: &[(u8, bool, bool)], mix: &[u8]) -> Vec<Served> {
        let mut per_partition: Vec<Vec<Served>> = (0..3).map(|_| Vec::new()).collect();
        for &(key, delete, undecodable) in changes {
            let partition = u32::from(key) % 3;
            let offset = per_partition[partition as usize].len() as u64;
            let row = if delete {
                format!(r#"[null,null,null,"k{key}",null]"#)
            } else {
                format!(r#"[1,{partition},{offset},"k{key}",{offset}]"#)
            };
            let undecodable = undecodable && !delete;
            per_partition[partition as usize].push(Served {
                row: row.into_bytes(),
                tombstone: delete,
                undecodable,
                offset,
            });
        }
        let mut out = Vec::new();
        let mut turn = mix.iter().cycle();
        let mut queues: Vec<std::collections::VecDeque<Served>> = per_partition.into_iter().map(Into::into).collect();
        while queues.iter().any(|queue| !queue.is_empty()) {
            let pick = *turn.next().unwrap() as usize % 3;
            let pick = (0..3).map(|i| (pick + i) % 3).find(|&p| !queues[p].is_empty()).unwrap();
            out.push(queues[pick].pop_front().unwrap());
        }
        out
    }

    proptest! {
        /// Two connections that interleave the partitions differently place every change at the
        /// same position; positions are unique and increase within a partition, a delete's is
        /// at most its tombstone's offset (below the next change's), and the kept deletes are
        /// exactly the deletes of keys the table held.
        #[test]
        fn a_replay_places_every_change_where_the_first_reading_did(
            changes in changes(),
            first in prop::collection::vec(any::<u8>(), 1..40),
            second in prop::collection::vec(any::<u8>(), 1..40),
        ) {
            let place = |mix: &[u8]| {
                let mut log = changelog();
                let mut placed = std::collections::BTreeMap::new();
                let mut last: HashMap<u32, u64> = HashMap::new();
                for line in served(&changes, mix) {
                    let position = if line.undecodable {
                        let position = crate::pipeline::query::row_position(&line.row).unwrap();
                        prop_assert_eq!(log.pass(position), Ok(position));
                        continue;
                    } else {
                        log.place(&line.row, line.tombstone).unwrap()
                    };
                    if let Some(position) = position {
                        prop_assert!(position.offset <= line.offset, "placed at its offset or below");
                        let previous = last.insert(position.partition, position.offset);
                        prop_assert!(previous.is_none_or(|previous| previous < position.offset));
                        let text = String::from_utf8(log.row().to_vec()).unwrap();
                        prop_assert!(placed.insert((position.partition, position.offset), text).is_none());
                    }
                }
                Ok(placed)
            };
            let once = place(&first)?;
            prop_assert_eq!(&once, &place(&second)?);
            // the oracle: a delete counts when its key is in the table (an undecodable upsert
            // does not put its key there)
            let mut table = std::collections::BTreeSet::new();
            let mut deletes = 0;
            for &(key, delete, undecodable) in &changes {
                if delete {
                    deletes += usize::from(table.remove(&key));
                } else if !undecodable {
                    table.insert(key);
                }
            }
            let upserts = changes.iter().filter(|change| !change.1 && !change.2).count();
            prop_assert_eq!(once.values().filter(|row| row.contains("\"upsert\"")).count(), upserts);
            prop_assert_eq!(once.values().filter(|row| row.contains("\"delete\"")).count(), deletes);
        }
    }
}
