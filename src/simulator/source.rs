//! Streams and tables: partitioned, offset-numbered logs of pre-rendered rows.
//!
//! Every source keeps one log in produce order (rows of all partitions interleaved, which is
//! the order a live push query sees them), each row stamped with its partition and that
//! partition's offset. Tables also keep the latest row per key for pull queries. Readers wait
//! on a [`Notify`] and read batches by sequence number, so a slow client never makes the log
//! copy anything.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use super::value::Value;
use super::SimulatorError;
use crate::schema::{Column, ColumnRole};

/// Whether a source is a stream or a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stream,
    Table,
}

/// One produced row, rendered once.
#[derive(Debug)]
pub struct Row {
    pub rowtime: i64,
    pub partition: u32,
    pub offset: i64,
    /// The column values as JSON, joined by `,` (no brackets).
    pub text: Box<str>,
    /// End byte of each column in `text`; column `i` is `text[ends[i-1]+1 .. ends[i]]`.
    pub ends: Box<[u32]>,
    /// A table delete: key columns filled, every other column `null`.
    pub tombstone: bool,
}

impl Row {
    /// The JSON text of column `index` (`null` if out of range).
    pub fn column(&self, index: usize) -> &str {
        column_text(&self.text, &self.ends, index)
    }
}

/// Column `index` of a stored row text (`null` if out of range).
fn column_text<'a>(text: &'a str, ends: &[u32], index: usize) -> &'a str {
    let Some(&end) = ends.get(index) else {
        return "null";
    };
    let start = if index == 0 { 0 } else { ends[index - 1] as usize + 1 };
    text.get(start..end as usize).unwrap_or("null")
}

/// A stream or table with its columns, partitions and log.
#[derive(Debug)]
pub struct Source {
    /// The name as ksqlDB holds it (uppercased unless created quoted).
    pub name: String,
    pub kind: SourceKind,
    /// Key columns first (role [`ColumnRole::Key`]), then value columns. Behind a lock
    /// because `CREATE OR REPLACE` may append columns; readers take a snapshot.
    columns: RwLock<Arc<Vec<Column>>>,
    pub partitions: u32,
    /// Maximum rows kept in the log (oldest dropped first); `None` keeps everything.
    pub retention: Option<usize>,
    log: RwLock<Log>,
    /// Woken on every append.
    pub notify: Notify,
    round_robin: AtomicU64,
}

#[derive(Debug, Default)]
struct Log {
    /// Sequence number of `rows[0]`.
    base: u64,
    rows: VecDeque<Arc<Row>>,
    next_offsets: Vec<i64>,
    /// Latest row per rendered key (tables only); tombstones remove the key.
    state: BTreeMap<String, Arc<Row>>,
}

/// A batch read from a source log.
pub struct Batch {
    pub rows: Vec<Arc<Row>>,
    /// The sequence number to read from next.
    pub next: u64,
}

impl Source {
    pub fn new(
        name: String,
        kind: SourceKind,
        columns: Vec<Column>,
        partitions: u32,
        retention: Option<usize>,
    ) -> Self {
        let partitions = partitions.max(1);
        Source {
            name,
            kind,
            columns: RwLock::new(Arc::new(columns)),
            partitions,
            retention,
            log: RwLock::new(Log { next_offsets: vec![0; partitions as usize], ..Log::default() }),
            notify: Notify::new(),
            round_robin: AtomicU64::new(0),
        }
    }

    /// The current columns. Rows produced before a column was added have fewer values;
    /// [`Row::column`] reads the missing ones as `null`.
    pub fn columns(&self) -> Arc<Vec<Column>> {
        self.columns.read().map(|c| Arc::clone(&c)).unwrap_or_default()
    }

    /// Appends columns (an additive `CREATE OR REPLACE`): `columns` must start with the
    /// current columns unchanged, and the added ones must be value columns with new names.
    pub fn replace_columns(&self, columns: Vec<Column>) -> Result<(), SimulatorError> {
        let mut current = self.columns.write().map_err(|_| SimulatorError::Poisoned)?;
        let incompatible =
            |reason: String| SimulatorError::IncompatibleSchema { source_name: self.name.clone(), reason };
        if columns.len() < current.len() {
            return Err(incompatible(format!(
                "{} columns would replace {}; columns can only be added",
                columns.len(),
                current.len()
            )));
        }
        if let Some((old, new)) = current.iter().zip(&columns).find(|(old, new)| old != new) {
            return Err(incompatible(format!(
                "column {} would become {} {}; existing columns cannot change",
                old.name, new.name, new.ty
            )));
        }
        for (index, added) in columns.iter().enumerate().skip(current.len()) {
            if added.role == ColumnRole::Key {
                return Err(incompatible(format!(
                    "added column {} is a key column; only value columns can be added",
                    added.name
                )));
            }
            if columns[..index].iter().any(|c| c.name == added.name) {
                return Err(incompatible(format!("column {} appears twice", added.name)));
            }
        }
        *current = Arc::new(columns);
        Ok(())
    }

    /// Next offset of every partition and the next sequence number, read together.
    pub fn end_positions(&self) -> (u64, Vec<i64>) {
        self.log
            .read()
            .map(|log| (log.base + log.rows.len() as u64, log.next_offsets.clone()))
            .unwrap_or_else(|_| (0, vec![0; self.partitions as usize]))
    }

    /// The first sequence number holding a row at or after `offsets` (per partition), i.e.
    /// where a query resuming from those positions must start reading. Rows before it in
    /// other partitions are skipped by the reader. `None` when an offset is ahead of its
    /// partition (a token from another source or another server).
    pub fn seek(&self, offsets: &[i64]) -> Option<u64> {
        let log = self.log.read().ok()?;
        if offsets.len() != log.next_offsets.len()
            || offsets.iter().zip(&log.next_offsets).any(|(wanted, next)| *wanted < 0 || wanted > next)
        {
            return None;
        }
        let skip = log
            .rows
            .iter()
            .position(|row| offsets.get(row.partition as usize).is_some_and(|o| row.offset >= *o))
            .unwrap_or(log.rows.len());
        Some(log.base + skip as u64)
    }

    fn key_indexes(columns: &[Column]) -> impl Iterator<Item = usize> + '_ {
        columns.iter().enumerate().filter(|(_, c)| c.role == ColumnRole::Key).map(|(i, _)| i)
    }

    pub fn has_key(&self) -> bool {
        Self::key_indexes(&self.columns()).next().is_some()
    }

    /// Renders values into the stored form, checking the column count.
    pub fn render(&self, values: &[Value]) -> Result<(String, Vec<u32>), SimulatorError> {
        let expected = self.columns().len();
        if values.len() != expected {
            return Err(SimulatorError::ColumnCount { source_name: self.name.clone(), expected, got: values.len() });
        }
        let mut text = String::with_capacity(values.len() * 8);
        let mut ends = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            value.render(&mut text);
            ends.push(text.len() as u32);
        }
        Ok((text, ends))
    }

    /// Joins already-rendered column texts into the stored form.
    pub fn join_rendered(&self, columns: &[&str]) -> Result<(String, Vec<u32>), SimulatorError> {
        let expected = self.columns().len();
        if columns.len() != expected {
            return Err(SimulatorError::ColumnCount { source_name: self.name.clone(), expected, got: columns.len() });
        }
        let mut text = String::with_capacity(columns.iter().map(|c| c.len() + 1).sum());
        let mut ends = Vec::with_capacity(columns.len());
        for (index, column) in columns.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            text.push_str(column);
            ends.push(text.len() as u32);
        }
        Ok((text, ends))
    }

    /// Appends rendered rows under one lock and wakes the readers once.
    pub fn append(&self, rows: impl IntoIterator<Item = Pending>) -> Result<Vec<(u32, i64)>, SimulatorError> {
        let mut positions = Vec::new();
        let columns = self.columns();
        {
            let mut log = self.log.write().map_err(|_| SimulatorError::Poisoned)?;
            for pending in rows {
                let key = Self::key_text(&columns, &pending.text, &pending.ends);
                let partition = match pending.partition {
                    Some(p) if p >= self.partitions => {
                        return Err(SimulatorError::NoSuchPartition {
                            source_name: self.name.clone(),
                            partition: p,
                            partitions: self.partitions,
                        })
                    }
                    Some(p) => p,
                    None => self.pick_partition(key.as_deref()),
                };
                let slot = &mut log.next_offsets[partition as usize];
                let offset = *slot;
                *slot += 1;
                let row = Arc::new(Row {
                    rowtime: pending.rowtime,
                    partition,
                    offset,
                    text: pending.text.into_boxed_str(),
                    ends: pending.ends.into_boxed_slice(),
                    tombstone: pending.tombstone,
                });
                if self.kind == SourceKind::Table {
                    let key = key.unwrap_or_default();
                    if row.tombstone {
                        log.state.remove(&key);
                    } else {
                        log.state.insert(key, Arc::clone(&row));
                    }
                }
                log.rows.push_back(row);
                if let Some(max) = self.retention {
                    while log.rows.len() > max {
                        log.rows.pop_front();
                        log.base += 1;
                    }
                }
                positions.push((partition, offset));
            }
        }
        self.notify.notify_waiters();
        Ok(positions)
    }

    /// The rendered key columns, `None` for a source without key columns.
    fn key_text(columns: &[Column], text: &str, ends: &[u32]) -> Option<String> {
        let mut key: Option<String> = None;
        for index in Self::key_indexes(columns) {
            let k = key.get_or_insert_with(String::new);
            if !k.is_empty() {
                k.push(',');
            }
            k.push_str(column_text(text, ends, index));
        }
        key
    }

    fn pick_partition(&self, key: Option<&str>) -> u32 {
        match key {
            Some(key) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % u64::from(self.partitions)) as u32
            }
            None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(self.partitions)) as u32,
        }
    }

    /// The sequence number the next appended row will get ("latest").
    pub fn end(&self) -> u64 {
        self.log.read().map(|log| log.base + log.rows.len() as u64).unwrap_or(0)
    }

    /// Up to `max` rows from sequence `from` (or from the oldest kept row if `from` was
    /// dropped by retention).
    pub fn read(&self, from: u64, max: usize) -> Batch {
        let Ok(log) = self.log.read() else {
            return Batch { rows: Vec::new(), next: from };
        };
        let start = from.max(log.base);
        let skip = (start - log.base) as usize;
        let rows: Vec<Arc<Row>> = log.rows.iter().skip(skip).take(max).cloned().collect();
        let next = start + rows.len() as u64;
        Batch { rows, next }
    }

    /// The current state of a table (rows in key order).
    pub fn snapshot(&self) -> Vec<Arc<Row>> {
        self.log.read().map(|log| log.state.values().cloned().collect()).unwrap_or_default()
    }

    /// Rows currently kept in the log.
    pub fn len(&self) -> usize {
        self.log.read().map(|log| log.rows.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A row ready to append.
pub struct Pending {
    pub partition: Option<u32>,
    pub rowtime: i64,
    pub text: String,
    pub ends: Vec<u32>,
    pub tombstone: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::KsqlType;

    fn stream(partitions: u32, retention: Option<usize>) -> Source {
        let columns = vec![Column::new("A", KsqlType::Integer), Column::new("B", KsqlType::String)];
        Source::new("S".into(), SourceKind::Stream, columns, partitions, retention)
    }

    fn pending(source: &Source, partition: Option<u32>, a: i32) -> Pending {
        let (text, ends) = source.render(&[Value::Integer(a), Value::string("x,y")]).unwrap();
        Pending { partition, rowtime: i64::from(a), text, ends, tombstone: false }
    }

    #[test]
    fn offsets_count_per_partition_and_columns_split() {
        let source = stream(2, None);
        let positions = source
            .append([pending(&source, Some(1), 1), pending(&source, Some(0), 2), pending(&source, Some(1), 3)])
            .unwrap();
        assert_eq!(positions, vec![(1, 0), (0, 0), (1, 1)]);
        let batch = source.read(0, 10);
        assert_eq!(batch.next, 3);
        assert_eq!(batch.rows[2].column(0), "3");
        assert_eq!(batch.rows[2].column(1), r#""x,y""#);
        assert!(source.append([pending(&source, Some(2), 4)]).is_err());
    }

    #[test]
    fn retention_drops_oldest_and_readers_skip_ahead() {
        let source = stream(1, Some(2));
        source.append((0..5).map(|a| pending(&source, None, a))).unwrap();
        let batch = source.read(0, 10);
        assert_eq!(batch.rows.len(), 2);
        assert_eq!(batch.rows[0].offset, 3);
        assert_eq!(batch.next, 5);
        assert_eq!(source.end(), 5);
    }

    #[test]
    fn seek_finds_the_first_row_after_per_partition_offsets() {
        let source = stream(2, None);
        // partition 0 gets a=0,2,4 (offsets 0,1,2), partition 1 gets a=1,3 (offsets 0,1)
        source.append((0..5).map(|a| pending(&source, Some((a % 2) as u32), a))).unwrap();
        assert_eq!(source.seek(&[0, 0]), Some(0));
        assert_eq!(source.seek(&[2, 0]), Some(1));
        assert_eq!(source.seek(&[2, 2]), Some(4));
        assert_eq!(source.seek(&[3, 2]), Some(5));
        assert_eq!(source.seek(&[4, 0]), None);
        assert_eq!(source.seek(&[0]), None);
        assert_eq!(source.end_positions(), (5, vec![3, 2]));
    }

    #[test]
    fn replaced_columns_read_null_in_older_rows() {
        let source = stream(1, None);
        source.append([pending(&source, None, 1)]).unwrap();
        let mut columns = source.columns().to_vec();
        columns.push(Column::new("C", KsqlType::Boolean));
        assert!(source.replace_columns(columns[1..].to_vec()).is_err());
        source.replace_columns(columns).unwrap();
        assert!(source.render(&[Value::Integer(2), Value::Null]).is_err());
        let (text, ends) = source.render(&[Value::Integer(2), Value::Null, Value::Boolean(true)]).unwrap();
        source.append([Pending { partition: None, rowtime: 2, text, ends, tombstone: false }]).unwrap();
        let rows = source.read(0, 10).rows;
        assert_eq!(rows[0].column(2), "null");
        assert_eq!(rows[1].column(2), "true");
    }

    #[test]
    fn tables_keep_latest_state_per_key() {
        let columns = vec![
            Column { name: "K".into(), ty: KsqlType::String, role: ColumnRole::Key },
            Column::new("V", KsqlType::Integer),
        ];
        let table = Source::new("T".into(), SourceKind::Table, columns, 3, None);
        let row = |k: &str, v: Value, tombstone| {
            let (text, ends) = table.render(&[Value::string(k), v]).unwrap();
            Pending { partition: None, rowtime: 0, text, ends, tombstone }
        };
        let positions = table
            .append([
                row("a", Value::Integer(1), false),
                row("b", Value::Integer(2), false),
                row("a", Value::Integer(3), false),
                row("b", Value::Null, true),
            ])
            .unwrap();
        // the same key always lands on the same partition
        assert_eq!(positions[0].0, positions[2].0);
        assert_eq!(positions[1].0, positions[3].0);
        let state = table.snapshot();
        assert_eq!(state.len(), 1);
        assert_eq!(&*state[0].text, r#""a",3"#);
        assert_eq!(table.len(), 4);
    }
}
