//! A ksqlDB-compatible server (protocol of ksqlDB 0.29) for the tests, the benchmarks and the
//! demo. It is a test double: nothing in the client special-cases it. Everything it does is
//! read from ksqlDB 0.29's source and checked against recorded responses of real servers.
//!
//! - Data: streams and tables ([`Simulator::create_stream`], [`Simulator::create_table`]) with
//!   partitions, per-partition offsets from 0 and a ROWTIME per row. Rows are rendered to
//!   ksqlDB's JSON once, at produce time ([`value`]), so serving only copies text.
//! - HTTP ([`server`]): `GET /info`, `POST /query-stream`, `POST /query`, `POST /close-query`
//!   over HTTP/1.1 (chunked) and h2c with prior knowledge on one port.
//! - Push queries are live: rows produced after a query opened reach it, in produce order.
//! - Faults ([`Fault`]) cut, stall, fail or terminate running queries.
//!
//! Names follow ksqlDB: unquoted identifiers are uppercased, `` `backtick` `` names keep their
//! case. This applies to source and column names given to the API too (`"orders"` →
//! `ORDERS`); STRUCT field names are kept as given.
//!
//! # SQL subset
//!
//! ```text
//! statement := SELECT item ("," item)* FROM name [WHERE expr] [EMIT CHANGES] [LIMIT int] ";"
//! item      := "*" | name                 -- a column, ROWTIME, ROWPARTITION or ROWOFFSET
//! expr      := and (OR and)*
//! and       := not (AND not)*
//! not       := NOT not | "(" expr ")" | operand op operand | TRUE | FALSE
//! op        := "=" | "<>" | "!=" | "<" | "<=" | ">" | ">="
//! operand   := name | ["-"] integer | ["-"] decimal | 'string' | TRUE | FALSE | NULL
//! name      := identifier | `quoted identifier`
//! ```
//!
//! - With `EMIT CHANGES`: a push query. Without: a pull query; on a table it returns the
//!   current state (latest row per key, key order), on a stream the rows present when it
//!   started, ending with "Query Completed".
//! - `*` expands to the source columns (keys first) and never to pseudo columns. Pseudo
//!   columns are `ROWTIME BIGINT`, `ROWPARTITION INTEGER`, `ROWOFFSET BIGINT`; pull queries
//!   reject ROWPARTITION and ROWOFFSET as ksqlDB does.
//! - Comparisons: numbers with numbers, strings with strings (TIMESTAMP/DATE columns compare
//!   as their ISO text), booleans with booleans; anything else (or NULL) is not true.
//! - Properties: `auto.offset.reset` / `ksql.streams.auto.offset.reset` = `earliest` |
//!   `latest` (default) in `properties` (`/query-stream`) or `streamsProperties` (`/query`).
//!   Pull queries ignore it.
//! - Scalable push queries (ksqlDB 0.22 and later): with `ksql.query.push.v2.enabled` (server
//!   config [`SimulatorConfig::push_v2_enabled`] or a request property, a JSON boolean; `/query`
//!   also takes `"true"`), a push query on a stream that reads neither ROWPARTITION nor
//!   ROWOFFSET and does not ask for `earliest` runs as `SCALABLE_PUSH_QUERY_<uuid>`: no
//!   completion message, unknown to `/close-query`. With
//!   `ksql.query.push.v2.continuation.tokens.enabled` too it writes continuation tokens
//!   ([`token`]) and resumes from `request.ksql.query.push.continuation.token` in
//!   `requestProperties` (400 40000 for a token it cannot use). Other queries ignore tokens.
//! - Schema changes: [`Simulator::replace_columns`] appends columns as an additive
//!   `CREATE OR REPLACE` does; running queries keep the schema they started with.
//!
//! Values inside a STRUCT are written the way 0.29's Kafka Connect round trip would write
//! them: TIMESTAMP/DATE/TIME as numbers, DECIMAL as a double.

pub mod bench;
pub mod fault;
pub mod format;
mod ksql;
pub mod plan;
pub mod query;
pub mod server;
pub mod source;
pub mod sql;
pub mod token;
pub mod value;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use fault::Fault;
pub use format::Framing;
pub use server::{run_standalone, SimulatorHandle};
pub use source::SourceKind;
pub use value::Value;

use fault::QueryControl;
use source::{Pending, Source};

use crate::schema::{Column, ColumnRole};

/// Rows each source of `ksql-lake simulator` keeps (older ones are dropped, like a topic's
/// retention), so memory stays flat however long it runs: with the demo data at its default
/// rate, 2,000 rows/s into each of three sources, it fills within 10 s of live rows and the
/// process levels off under 100 MiB (it grew by 100 MB a minute with no bound).
pub const DEFAULT_RETENTION_ROWS: usize = 50_000;

/// Server behaviour switches.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// `(user, password)`: require HTTP Basic auth on every endpoint (401 40100 otherwise).
    pub basic_auth: Option<(String, String)>,
    /// `ksql.max.push.queries`: more concurrent push queries get 400 40003.
    pub max_push_queries: usize,
    /// Reported by `/info`.
    pub version: String,
    /// Emulate a server before 0.24: `/query-stream` over HTTP/1.1 gets 400 40004 and
    /// `/query` over HTTP/2 gets 405.
    pub legacy_pre_024: bool,
    /// Write a bare `\n` every second while a push query is idle (the old writer's liveness
    /// probe); 0.24+ writes nothing.
    pub heartbeat: bool,
    /// Default log retention per source (rows kept); `None` keeps everything. `ksql-lake
    /// simulator` keeps [`DEFAULT_RETENTION_ROWS`], the demo all of its history and 30 s more.
    pub retention: Option<usize>,
    /// Write a push query's rows a read batch (up to 1024 rows) per write instead of one write
    /// per row as ksqlDB does. Only for tests or benchmarks that ask for it by name.
    pub batched_writes: bool,
    /// `/close-query` on another connection than the query's answers 500 "On wrong context or
    /// worker" (after closing the query), as ksqlDB 0.29 does. On by default.
    pub close_query_wrong_context: bool,
    /// `ksql.query.pull.table.scan.enabled`: a pull query on a table without WHERE is a table
    /// scan. When off, ksqlDB refuses it with "Missing WHERE clause". On by default.
    pub table_scans: bool,
    /// `ksql.query.push.v2.enabled` as server config: qualifying push queries run as
    /// scalable push queries. A request's `properties` (`streamsProperties` on `/query`)
    /// can set it either way per query.
    pub push_v2_enabled: bool,
    /// `ksql.query.push.v2.continuation.tokens.enabled` as server config (per request too).
    pub continuation_tokens_enabled: bool,
    /// A scalable push query writes a continuation token at least every this many rows,
    /// and after the last row of every read batch.
    pub continuation_token_every_rows: usize,
    /// Emulates a server that selects ROWPARTITION/ROWOFFSET but rejects them in WHERE
    /// (400 statement error), for clients' fallback paths. Default false.
    pub reject_offset_filters: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            basic_auth: None,
            max_push_queries: 100,
            version: "0.29.0".to_string(),
            legacy_pre_024: false,
            heartbeat: false,
            batched_writes: false,
            close_query_wrong_context: true,
            table_scans: true,
            retention: None,
            push_v2_enabled: false,
            continuation_tokens_enabled: false,
            continuation_token_every_rows: 100,
            reject_offset_filters: false,
        }
    }
}

/// Misuse of the simulator's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("source {0} already exists")]
    SourceExists(String),
    #[error("{0} does not exist")]
    UnknownSource(String),
    #[error("source {source_name} has {expected} columns, got {got} values")]
    ColumnCount { source_name: String, expected: usize, got: usize },
    #[error("source {source_name} has {partitions} partitions, no partition {partition}")]
    NoSuchPartition { source_name: String, partition: u32, partitions: u32 },
    #[error("cannot replace the columns of {source_name}: {reason}")]
    IncompatibleSchema { source_name: String, reason: String },
    #[error("source {0} is not a table")]
    NotATable(String),
    #[error("a simulator lock was poisoned")]
    Poisoned,
    #[error("cannot serve on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The simulator: sources, running queries and faults. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) config: SimulatorConfig,
    sources: RwLock<HashMap<String, Arc<Source>>>,
    /// False while "starting": query endpoints answer 503 50302.
    not_ready: AtomicBool,
    pub(crate) queries: Mutex<HashMap<String, Arc<QueryControl>>>,
    next_faults: Mutex<Vec<Fault>>,
    push_queries: AtomicUsize,
}

/// Canonical ksqlDB name: backtick-quoted keeps case, anything else is uppercased.
pub fn canonical_name(name: &str) -> String {
    match name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) {
        Some(quoted) => quoted.to_string(),
        None => name.to_uppercase(),
    }
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        Simulator { inner: Arc::new(Inner { config, ..Inner::default() }) }
    }

    pub fn config(&self) -> &SimulatorConfig {
        &self.inner.config
    }

    fn add_source(&self, source: Source) -> Result<(), SimulatorError> {
        let mut sources = self.inner.sources.write().map_err(|_| SimulatorError::Poisoned)?;
        if sources.contains_key(&source.name) {
            return Err(SimulatorError::SourceExists(source.name));
        }
        sources.insert(source.name.clone(), Arc::new(source));
        Ok(())
    }

    /// Creates a stream. Columns with [`ColumnRole::Key`] are key columns (used to pick a
    /// partition); they should come first, as ksqlDB lists them.
    pub fn create_stream(&self, name: &str, columns: Vec<Column>, partitions: u32) -> Result<(), SimulatorError> {
        let columns = columns.into_iter().map(|c| Column { name: canonical_name(&c.name), ..c }).collect();
        let retention = self.inner.config.retention;
        self.add_source(Source::new(canonical_name(name), SourceKind::Stream, columns, partitions, retention))
    }

    /// Creates a (materialized, queryable) table: key columns first, then value columns.
    /// Produce values in that order.
    pub fn create_table(
        &self,
        name: &str,
        key_columns: Vec<Column>,
        value_columns: Vec<Column>,
        partitions: u32,
    ) -> Result<(), SimulatorError> {
        let keys =
            key_columns.into_iter().map(|c| Column { name: canonical_name(&c.name), ty: c.ty, role: ColumnRole::Key });
        let values = value_columns.into_iter().map(|c| Column {
            name: canonical_name(&c.name),
            ty: c.ty,
            role: ColumnRole::Value,
        });
        let retention = self.inner.config.retention;
        let columns = keys.chain(values).collect();
        self.add_source(Source::new(canonical_name(name), SourceKind::Table, columns, partitions, retention))
    }

    pub(crate) fn source(&self, name: &str) -> Result<Arc<Source>, SimulatorError> {
        self.inner
            .sources
            .read()
            .map_err(|_| SimulatorError::Poisoned)?
            .get(name)
            .cloned()
            .ok_or_else(|| SimulatorError::UnknownSource(name.to_string()))
    }

    /// Names of the sources, as ksqlDB holds them.
    pub fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.sources.read().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// Appends one row. `partition: None` hashes the key columns, or goes round robin for a
    /// source without keys. Returns the row's partition and offset.
    pub fn produce(
        &self,
        source: &str,
        partition: Option<u32>,
        rowtime_ms: i64,
        values: Vec<Value>,
    ) -> Result<(u32, i64), SimulatorError> {
        let source = self.source(&canonical_name(source))?;
        let (text, ends) = source.render(&values)?;
        let pending = Pending { partition, rowtime: rowtime_ms, text, ends, tombstone: false };
        source.append([pending]).map(|p| p[0])
    }

    /// Appends many rows under one lock with one wake-up (for benchmarks).
    pub fn produce_batch(
        &self,
        source: &str,
        rows: impl IntoIterator<Item = (Option<u32>, i64, Vec<Value>)>,
    ) -> Result<Vec<(u32, i64)>, SimulatorError> {
        self.append_with(source, rows, |source, values: Vec<Value>| source.render(&values))
    }

    /// Appends rows whose column values are already JSON text (one string per column, as
    /// [`Value::to_json`] writes them). The cheapest way to fill a source for a benchmark.
    pub fn produce_rendered<'a>(
        &self,
        source: &str,
        rows: impl IntoIterator<Item = (Option<u32>, i64, &'a [&'a str])>,
    ) -> Result<Vec<(u32, i64)>, SimulatorError> {
        self.append_with(source, rows, |source, columns: &[&str]| source.join_rendered(columns))
    }

    /// Renders each row with `render` (to its JSON text and column ends) and appends them all.
    fn append_with<T>(
        &self,
        source: &str,
        rows: impl IntoIterator<Item = (Option<u32>, i64, T)>,
        render: impl Fn(&Source, T) -> Result<(String, Vec<u32>), SimulatorError>,
    ) -> Result<Vec<(u32, i64)>, SimulatorError> {
        let source = self.source(&canonical_name(source))?;
        let pending = rows
            .into_iter()
            .map(|(partition, rowtime, row)| {
                let (text, ends) = render(&source, row)?;
                Ok(Pending { partition, rowtime, text, ends, tombstone: false })
            })
            .collect::<Result<Vec<_>, SimulatorError>>()?;
        source.append(pending)
    }

    /// Deletes a key from a table: push queries see a tombstone (StreamedRow only), pull
    /// queries no longer see the key.
    pub fn delete(&self, table: &str, key: Vec<Value>, rowtime_ms: i64) -> Result<(u32, i64), SimulatorError> {
        let source = self.source(&canonical_name(table))?;
        if source.kind != SourceKind::Table {
            return Err(SimulatorError::NotATable(source.name.clone()));
        }
        let mut values = key;
        values.resize(source.columns().len(), Value::Null);
        let (text, ends) = source.render(&values)?;
        let pending = Pending { partition: None, rowtime: rowtime_ms, text, ends, tombstone: true };
        source.append([pending]).map(|p| p[0])
    }

    /// `CREATE OR REPLACE` with added columns: `columns` must start with the source's
    /// current columns unchanged (what ksqlDB accepts); the rest are new value columns.
    ///
    /// - Rows produced before are served with `null` for the added columns.
    /// - From now on `produce` takes values for every column (the old arity is an error).
    /// - Push queries already running keep the header and projection they started with, as
    ///   ksqlDB's transient queries do; end them with [`Fault::Terminate`] (or a cut) to
    ///   make a client reconnect. New queries see the new columns (`SELECT *` expands to
    ///   them).
    pub fn replace_columns(&self, source: &str, columns: Vec<Column>) -> Result<(), SimulatorError> {
        let source = self.source(&canonical_name(source))?;
        let columns: Vec<Column> = columns.into_iter().map(|c| Column { name: canonical_name(&c.name), ..c }).collect();
        source.replace_columns(columns)?;
        tracing::info!(source = %source.name, columns = source.columns().len(), "source columns replaced");
        Ok(())
    }

    /// `false` makes the query endpoints answer 503 50302, as a starting server does.
    pub fn set_ready(&self, ready: bool) {
        self.inner.not_ready.store(!ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        !self.inner.not_ready.load(Ordering::SeqCst)
    }

    /// Push queries currently running (each holds one of `max_push_queries` slots).
    pub fn running_push_queries(&self) -> usize {
        self.inner.push_queries.load(Ordering::SeqCst)
    }

    /// Ids of the push queries currently running.
    pub fn query_ids(&self) -> Vec<String> {
        self.inner.queries.lock().map(|q| q.keys().cloned().collect()).unwrap_or_default()
    }

    /// Applies a fault to every push query running now. Returns how many got it.
    pub fn inject(&self, fault: Fault) -> usize {
        let queries: Vec<Arc<QueryControl>> =
            self.inner.queries.lock().map(|q| q.values().cloned().collect()).unwrap_or_default();
        for query in &queries {
            query.push(fault.clone());
        }
        queries.len()
    }

    /// Arms a fault for the next push query to start (thresholds count from its first byte).
    pub fn inject_next(&self, fault: Fault) {
        if let Ok(mut next) = self.inner.next_faults.lock() {
            next.push(fault);
        }
    }

    /// Applies a fault to one running push query; false if no such query.
    pub fn inject_query(&self, query_id: &str, fault: Fault) -> bool {
        let query = self.inner.queries.lock().ok().and_then(|q| q.get(query_id).cloned());
        match query {
            Some(query) => {
                query.push(fault);
                true
            }
            None => false,
        }
    }

    pub(crate) fn take_next_faults(&self) -> Vec<Fault> {
        self.inner.next_faults.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default()
    }

    /// Reserves a push-query slot, or `None` when `max_push_queries` are running.
    pub(crate) fn reserve_slot(&self, control: Arc<QueryControl>) -> Option<SlotGuard> {
        let max = self.inner.config.max_push_queries;
        self.inner
            .push_queries
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()?;
        if let Ok(mut queries) = self.inner.queries.lock() {
            queries.insert(control.id.clone(), Arc::clone(&control));
        }
        Some(SlotGuard { inner: Arc::clone(&self.inner), id: control.id.clone() })
    }

    /// Serves HTTP/1.1 and h2c on `addr` (use port 0 in tests).
    pub async fn serve(&self, addr: SocketAddr) -> Result<SimulatorHandle, SimulatorError> {
        server::serve(self.clone(), addr).await
    }
}

/// Holds a push-query slot and the query's registry entry; both go when dropped.
pub(crate) struct SlotGuard {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut queries) = self.inner.queries.lock() {
            queries.remove(&self.id);
        }
        self.inner.push_queries.fetch_sub(1, Ordering::SeqCst);
    }
}
