//! Table feeds: complete snapshots of a ksqlDB table, written as versions by
//! [`lake::SnapshotWriter`] (see `lake::snapshot` for the commit protocol).
//!
//! Two ways to read the table, chosen per feed:
//! - `pull`: the table scan `SELECT * FROM T;`, which ends by itself with every current row;
//! - `changelog`: the push query `SELECT * FROM T EMIT CHANGES;` from the earliest offset in the
//!   StreamedRow framing (the only one that carries deletes), materialized by primary key until
//!   no change has arrived for the idle time. A tombstone removes its key. The key columns come
//!   from `DESCRIBE` on `/ksql`. The materialized rows must fit the memory budget.
//!
//! `auto` tries `pull` and falls back to `changelog` when ksqlDB refuses the statement (a table
//! that is not materialized, or table scans turned off).
//!
//! Guarantee: a version is complete or invisible. A failure or a kill mid-snapshot leaves the
//! previous version as the latest; its partial files are removed at the next snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::SnapshotMethod;
use crate::ksqldb::client::{ClientError, KsqlClient, QueryRequest};
use crate::ksqldb::frame::Event;
use crate::lake::{self, CommittedVersion, PendingVersion, SnapshotError, SnapshotWriter};
use crate::schema::rows::RowDecoder;
use crate::schema::Column;

/// Why a snapshot did not become a version.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("ksqlDB: {0}")]
    Ksql(String),
    #[error(transparent)]
    Lake(#[from] SnapshotError),
    #[error("row {index} of {source_name} cannot be decoded: {reason}")]
    Row { source_name: String, index: u64, reason: String },
    #[error(
        "the changelog of {source_name} holds more than {budget} bytes of current rows, above the memory budget; \
         use snapshot_method = \"pull\" or raise [memory] budget"
    )]
    TooLarge { source_name: String, budget: u64 },
    #[error("{source_name} has no key columns (DESCRIBE shows none): a changelog cannot be materialized by key")]
    NoKey { source_name: String },
    #[error("the snapshot was cancelled by a shutdown")]
    Cancelled,
}

impl TableError {
    /// The `error_type` label.
    pub fn kind(&self) -> &'static str {
        match self {
            TableError::Ksql(_) => "ksqldb",
            TableError::Lake(_) => "lake",
            TableError::Row { .. } => "row",
            TableError::TooLarge { .. } => "too_large",
            TableError::NoKey { .. } => "no_key",
            TableError::Cancelled => "cancelled",
        }
    }
}

impl From<ClientError> for TableError {
    fn from(error: ClientError) -> Self {
        TableError::Ksql(error.with_causes())
    }
}

/// How to take one table feed's snapshots.
#[derive(Debug, Clone)]
pub struct TableSettings {
    pub feed: String,
    pub source: String,
    pub method: SnapshotMethod,
    /// Rows per file of a version.
    pub file_rows: usize,
    /// Decoded bytes per file of a version (whichever of the two comes first).
    pub file_bytes: usize,
    /// `changelog`: the snapshot is complete once no change arrived for this long.
    pub idle: Duration,
    /// `changelog`: how long the first row may take (ksqlDB starts a transient query from the
    /// earliest offset in seconds); a table with no row at all is empty after it.
    pub first_row: Duration,
    /// `changelog`: the most bytes of current rows held in memory.
    pub budget_bytes: u64,
}

/// What one snapshot wrote.
#[derive(Debug, Clone)]
pub struct SnapshotSummary {
    pub committed: CommittedVersion,
    pub method: &'static str,
    /// Version folders of earlier interrupted snapshots that were removed first.
    pub removed: Vec<String>,
}

/// Takes one snapshot and commits it as the next version.
pub async fn snapshot(
    client: &KsqlClient,
    writer: &SnapshotWriter,
    settings: &TableSettings,
    stop: &CancellationToken,
) -> Result<SnapshotSummary, TableError> {
    let mut pending = writer.begin().await?;
    let removed = std::mem::take(&mut pending.removed);
    let result = tokio::select! {
        result = read_and_write(client, writer, settings, &mut pending) => result,
        _ = stop.cancelled() => Err(TableError::Cancelled),
    };
    let (method, sql, schema) = match result {
        Ok(done) => done,
        Err(error) => {
            writer.abandon(&pending).await;
            return Err(error);
        }
    };
    let committed = writer.commit(pending, &sql, method, Some(&schema)).await?;
    Ok(SnapshotSummary { committed, method, removed })
}

/// Reads the table by the feed's method and writes its files; returns the method used, the
/// statement and the schema.
async fn read_and_write(
    client: &KsqlClient,
    writer: &SnapshotWriter,
    settings: &TableSettings,
    pending: &mut PendingVersion,
) -> Result<(&'static str, String, arrow::datatypes::Schema), TableError> {
    let pull_sql = format!("SELECT * FROM {};", settings.source);
    if settings.method != SnapshotMethod::Changelog {
        match client.stream_query(QueryRequest { sql: pull_sql.clone(), ..QueryRequest::default() }).await {
            Ok(stream) => {
                let schema = write_pull(stream, writer, settings, pending).await?;
                return Ok(("pull", pull_sql, schema));
            }
            // auto: a refused statement (400) means this table cannot be scanned
            Err(error) if settings.method == SnapshotMethod::Auto && error.status() == Some(400) => {
                tracing::info!(feed = %settings.feed, error = %error.with_causes(), "pull query refused; materializing the changelog");
            }
            Err(error) => return Err(error.into()),
        }
    }
    let (sql, schema) = write_changelog(client, writer, settings, pending).await?;
    Ok(("changelog", sql, schema))
}

/// Writes the rows of a pull query as they arrive, `file_rows` per file.
async fn write_pull(
    mut stream: crate::ksqldb::client::QueryStream,
    writer: &SnapshotWriter,
    settings: &TableSettings,
    pending: &mut PendingVersion,
) -> Result<arrow::datatypes::Schema, TableError> {
    let columns = stream.header().columns.clone();
    let mut decoder = RowDecoder::new(&columns);
    let mut index = 0u64;
    while let Some(event) = stream.next_event().await? {
        match event {
            Event::Row { values, tombstone: false } => {
                append(&mut decoder, &values, &settings.source, index)?;
                index += 1;
                if file_full(&decoder, settings) {
                    writer.write(pending, &[decoder.finish()]).await?;
                }
            }
            Event::Error(error) => return Err(TableError::Ksql(error.to_string())),
            _ => {}
        }
    }
    finish(decoder, writer, pending).await
}

/// The last (or only) file; an empty table still gets one file, holding its schema.
async fn finish(
    mut decoder: RowDecoder,
    writer: &SnapshotWriter,
    pending: &mut PendingVersion,
) -> Result<arrow::datatypes::Schema, TableError> {
    let schema = decoder.schema().as_ref().clone();
    if !decoder.is_empty() || pending.files.is_empty() {
        writer.write(pending, &[decoder.finish()]).await?;
    }
    Ok(schema)
}

fn file_full(decoder: &RowDecoder, settings: &TableSettings) -> bool {
    decoder.len() >= settings.file_rows || decoder.buffered_bytes() >= settings.file_bytes
}

fn append(decoder: &mut RowDecoder, values: &[u8], source: &str, index: u64) -> Result<(), TableError> {
    decoder.append(values).map_err(|error| TableError::Row {
        source_name: source.to_string(),
        index,
        reason: error.to_string(),
    })
}

/// Materializes the changelog by key until it has been idle, then writes the current rows.
async fn write_changelog(
    client: &KsqlClient,
    writer: &SnapshotWriter,
    settings: &TableSettings,
    pending: &mut PendingVersion,
) -> Result<(String, arrow::datatypes::Schema), TableError> {
    let described = client.describe(&settings.source).await?;
    let key_names: Vec<&str> = described.iter().filter(|(_, key)| *key).map(|(name, _)| name.as_str()).collect();
    if key_names.is_empty() {
        return Err(TableError::NoKey { source_name: settings.source.clone() });
    }
    let sql = format!("SELECT * FROM {} EMIT CHANGES;", settings.source);
    let mut properties = serde_json::Map::new();
    properties.insert("auto.offset.reset".into(), "earliest".into());
    let request = QueryRequest { sql: sql.clone(), properties, tombstones: true, ..QueryRequest::default() };
    let mut stream = client.stream_query(request).await?;
    let columns: Vec<Column> = stream.header().columns.clone();
    let keys: Vec<usize> = key_names
        .iter()
        .map(|name| {
            columns.iter().position(|column| column.name == *name).ok_or_else(|| {
                TableError::Ksql(format!("key column {name} of {} is not in its query's columns", settings.source))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut current: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut held = 0u64;
    let mut index = 0u64;
    loop {
        let wait = if index == 0 { settings.first_row.max(settings.idle) } else { settings.idle };
        let event = match tokio::time::timeout(wait, stream.next_event()).await {
            Err(_) => break,
            Ok(event) => event?,
        };
        // a push query does not end by itself: an end is a server going away mid-read
        let Some(event) = event else {
            return Err(TableError::Ksql(format!(
                "the changelog query of {} ended before it had been idle for {:?}: the snapshot would be partial",
                settings.source, settings.idle
            )));
        };
        let (values, tombstone) = match event {
            Event::Row { values, tombstone } => (values, tombstone),
            Event::Error(error) => return Err(TableError::Ksql(error.to_string())),
            _ => continue,
        };
        let key = super::changelog::row_key(&values, &keys).ok_or_else(|| TableError::Row {
            source_name: settings.source.clone(),
            index,
            reason: "not a JSON array with its key columns".into(),
        })?;
        index += 1;
        let key_bytes = key.len() as u64;
        if tombstone {
            if let Some(old) = current.remove(&key) {
                held -= old.len() as u64 + key_bytes;
            }
            continue;
        }
        held += values.len() as u64 + key_bytes;
        // a copy: the row is a slice of its response chunk, which it would keep alive whole
        if let Some(old) = current.insert(key, Bytes::copy_from_slice(&values)) {
            held -= old.len() as u64 + key_bytes;
        }
        if held > settings.budget_bytes {
            return Err(TableError::TooLarge { source_name: settings.source.clone(), budget: settings.budget_bytes });
        }
    }
    let query_id = stream.query_id().map(str::to_string);
    drop(stream);
    if let Some(query_id) = query_id {
        client.close_query(&query_id).await;
    }
    let mut decoder = RowDecoder::new(&columns);
    for (row, values) in current.values().enumerate() {
        append(&mut decoder, values, &settings.source, row as u64)?;
        if file_full(&decoder, settings) {
            writer.write(pending, &[decoder.finish()]).await?;
        }
    }
    Ok((sql, finish(decoder, writer, pending).await?))
}

/// When the next snapshot of a feed is due: `interval` after the latest version, or now.
pub fn next_due(metadata: Option<&lake::FeedMetadata>, interval: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let Some(created) = metadata.and_then(|m| m.latest()).map(|latest| latest.created_at.clone()) else {
        return now;
    };
    let Ok(created) = chrono::DateTime::parse_from_rfc3339(&created) else {
        return now;
    };
    let age = (chrono::Utc::now() - created.with_timezone(&chrono::Utc)).to_std().unwrap_or_default();
    now + interval.saturating_sub(age)
}

/// Runs a table feed until `stop`: a snapshot when one is due (at once when the latest
/// version is older than `interval`), then one every `interval`. A failed snapshot is retried
/// after a minute (or the interval, if shorter); the previous version stays the latest.
pub async fn run_table_feed(
    client: std::sync::Arc<KsqlClient>,
    writer: SnapshotWriter,
    settings: TableSettings,
    interval: Duration,
    metrics: crate::metrics::Metrics,
    health: crate::metrics::Health,
    stop: CancellationToken,
) -> u64 {
    use crate::metrics::FeedState;
    let feed = settings.feed.clone();
    let labels = [feed.as_str()];
    let retry = interval.min(Duration::from_secs(60));
    let mut rows = 0;
    health.set_feed(&feed, FeedState::Starting);
    // what an interrupted snapshot left goes at start, not only before the next snapshot
    match writer.cleanup().await {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(feed = %feed, removed = ?removed, "removed the files of an interrupted snapshot");
        }
        Ok(_) => {}
        Err(error) => tracing::info!(feed = %feed, error = %error, "left the version folders alone"),
    }
    let mut due = match writer.manifest().await {
        Ok(metadata) => next_due(metadata.as_ref(), interval),
        Err(_) => tokio::time::Instant::now(),
    };
    if due > tokio::time::Instant::now() {
        // the latest version is fresh: the feed is where it should be
        health.set_feed(&feed, FeedState::Streaming);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let started = std::time::Instant::now();
        match snapshot(&client, &writer, &settings, &stop).await {
            Ok(summary) => {
                let done = &summary.committed;
                tracing::info!(feed = %feed, version = done.version, rows = done.records, bytes = done.bytes,
                    files = done.files, method = summary.method, retired = ?done.retired, removed = ?summary.removed,
                    seconds = started.elapsed().as_secs_f64(), "table snapshot committed");
                metrics.rows_received.with_label_values(&labels).inc_by(done.records);
                metrics.rows_written.with_label_values(&labels).inc_by(done.records);
                metrics.bytes_written.with_label_values(&labels).inc_by(done.bytes);
                metrics.files_written.with_label_values(&[feed.as_str(), "snapshot"]).inc_by(done.files as u64);
                metrics.last_commit_timestamp.with_label_values(&labels).set(chrono::Utc::now().timestamp() as f64);
                metrics.table_latest_version.with_label_values(&labels).set(i64::from(done.version));
                metrics.table_versions.with_label_values(&labels).set(done.kept as i64);
                health.set_feed(&feed, FeedState::Streaming);
                rows += done.records;
                due = tokio::time::Instant::now() + interval;
            }
            Err(TableError::Cancelled) => break,
            Err(error) => {
                tracing::warn!(feed = %feed, error = %error, retry_in = ?retry, "table snapshot failed; the previous version stays the latest");
                metrics.errors.with_label_values(&[feed.as_str(), "snapshot", error.kind()]).inc();
                health.set_feed(&feed, FeedState::Reconnecting { reason: error.to_string() });
                due = tokio::time::Instant::now() + retry;
            }
        }
    }
    health.stop_feed(&feed);
    rows
}
