//! RecordBatches → Parquet bytes, synchronously: callers run [`encode`] in `spawn_blocking`
//! (a 128 MiB file takes seconds of CPU and must not stall the runtime).
//!
//! Besides the Arrow schema (embedded by ArrowWriter), each file carries key-value metadata so
//! it explains itself without `_metadata.json`:
//!
//! | key | value |
//! |---|---|
//! | `ksql.columns` | JSON `[{"name": …, "type": <ksqlDB type>}]` (type from the field's `ksql.type` metadata, `null` if absent) |
//! | `ksql_lake.feed`, `ksql_lake.kind` | feed name, `stream` or `table` |
//! | `ksql_lake.positions` | JSON `{"<ROWPARTITION>": <max ROWOFFSET>}`; only when positions are known |
//! | `ksql_lake.min_event_time`, `ksql_lake.max_event_time` | epoch milliseconds |
//! | `ksql_lake.row_count` | rows in the file |

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Serialize;

use std::collections::HashMap;
use std::sync::Arc;

use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use parquet::file::FOOTER_SIZE;

use super::commit::Runs;
use super::layout::FeedKind;
use super::Positions;
use crate::defaults;
use crate::schema::types::KSQL_TYPE_METADATA_KEY;

pub const KV_COLUMNS: &str = "ksql.columns";
pub const KV_FEED: &str = "ksql_lake.feed";
pub const KV_KIND: &str = "ksql_lake.kind";
pub const KV_POSITIONS: &str = "ksql_lake.positions";
/// Exact runs of ksqlDB offsets in the file (`lake::commit`), so a file can be adopted from
/// its footer alone.
pub const KV_RUNS: &str = "ksql_lake.runs";
pub const KV_MIN_EVENT_TIME: &str = "ksql_lake.min_event_time";
pub const KV_MAX_EVENT_TIME: &str = "ksql_lake.max_event_time";
pub const KV_ROW_COUNT: &str = "ksql_lake.row_count";

/// Page compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at a level (1–22); the default, level 3, is a good size/CPU balance.
    Zstd(i32),
    Snappy,
    Lz4,
    /// gzip at a level (0–9).
    Gzip(u32),
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(defaults::ZSTD_LEVEL)
    }
}

impl Compression {
    fn to_parquet(self) -> Result<parquet::basic::Compression, EncodeError> {
        use parquet::basic::Compression as Codec;
        Ok(match self {
            Compression::Zstd(level) => Codec::ZSTD(
                ZstdLevel::try_new(level)
                    .map_err(|_| EncodeError::InvalidLevel { codec: "zstd", level: level as i64 })?,
            ),
            Compression::Snappy => Codec::SNAPPY,
            Compression::Lz4 => Codec::LZ4_RAW,
            Compression::Gzip(level) => Codec::GZIP(
                GzipLevel::try_new(level)
                    .map_err(|_| EncodeError::InvalidLevel { codec: "gzip", level: level as i64 })?,
            ),
            Compression::None => Codec::UNCOMPRESSED,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParquetOptions {
    pub compression: Compression,
    /// Rows per row group: readers skip whole row groups by their statistics, so smaller groups
    /// prune better but cost more footer and less compression.
    pub row_group_rows: usize,
    /// Dictionary encoding: large wins on repetitive ksqlDB values (keys, enums, country codes).
    pub dictionary: bool,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: Compression::default(),
            row_group_rows: defaults::ROW_GROUP_ROWS,
            dictionary: true,
        }
    }
}

/// Facts about the file that go into its key-value metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileInfo {
    pub feed: String,
    pub kind: FeedKind,
    pub positions: Positions,
    pub runs: Runs,
    pub min_event_ms: i64,
    pub max_event_ms: i64,
}

/// An encoded Parquet file.
#[derive(Debug, Clone)]
pub struct EncodedFile {
    pub bytes: Bytes,
    pub rows: usize,
    pub row_groups: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("nothing to encode: no batches")]
    Empty,
    #[error("batch {index} has a different schema than the first batch")]
    SchemaMismatch { index: usize },
    #[error("invalid {codec} compression level {level}")]
    InvalidLevel { codec: &'static str, level: i64 },
    #[error("parquet encoding failed")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("metadata serialization failed")]
    Json(#[from] serde_json::Error),
}

#[derive(Serialize)]
struct ColumnType<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    ksql_type: Option<&'a str>,
}

/// The largest dictionary a column chunk builds before it falls back to plain encoding. A
/// column that repeats (user ids, enums) needs far less; one that does not (ids, amounts,
/// event times) only costs interning until it reaches this, in every row group.
const DICTIONARY_PAGE_BYTES: usize = 256 * 1024;

/// Encodes `batches` (all with the first batch's schema) into one Parquet file in memory.
pub fn encode(batches: &[RecordBatch], info: &FileInfo, options: &ParquetOptions) -> Result<EncodedFile, EncodeError> {
    let first = batches.first().ok_or(EncodeError::Empty)?;
    let schema = first.schema();
    if let Some(index) = batches.iter().position(|batch| batch.schema().fields() != schema.fields()) {
        return Err(EncodeError::SchemaMismatch { index });
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let properties = WriterProperties::builder()
        .set_compression(options.compression.to_parquet()?)
        .set_dictionary_enabled(options.dictionary)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_created_by(format!("ksql-lake {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(key_values(&schema, info, rows)?))
        .build();
    let capacity: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>() / 4;
    let mut buffer = Vec::with_capacity(capacity);
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    let row_groups = writer.close()?.num_row_groups();
    Ok(EncodedFile { bytes: Bytes::from(buffer), rows, row_groups })
}

fn key_values(schema: &SchemaRef, info: &FileInfo, rows: usize) -> Result<Vec<KeyValue>, EncodeError> {
    let columns: Vec<ColumnType<'_>> = schema
        .fields()
        .iter()
        .map(|field| ColumnType {
            name: field.name(),
            ksql_type: field.metadata().get(KSQL_TYPE_METADATA_KEY).map(String::as_str),
        })
        .collect();
    let mut pairs = vec![
        KeyValue::new(KV_COLUMNS.to_string(), serde_json::to_string(&columns)?),
        KeyValue::new(KV_FEED.to_string(), info.feed.clone()),
        KeyValue::new(KV_KIND.to_string(), info.kind.as_str().to_string()),
        KeyValue::new(KV_MIN_EVENT_TIME.to_string(), info.min_event_ms.to_string()),
        KeyValue::new(KV_MAX_EVENT_TIME.to_string(), info.max_event_ms.to_string()),
        KeyValue::new(KV_ROW_COUNT.to_string(), rows.to_string()),
    ];
    if !info.runs.is_empty() {
        pairs.push(KeyValue::new(KV_RUNS.to_string(), serde_json::to_string(&info.runs)?));
    }
    if !info.positions.is_empty() {
        pairs.push(KeyValue::new(KV_POSITIONS.to_string(), serde_json::to_string(&info.positions)?));
    }
    Ok(pairs)
}

/// What a data file's footer says about it: enough to list it in a manifest, or to tell
/// whether a file found under a name holds a job's rows, without reading its data.
#[derive(Debug, Clone)]
pub struct Footer {
    pub records: u64,
    pub min_event_ms: i64,
    pub max_event_ms: i64,
    pub positions: Positions,
    pub runs: Runs,
    pub schema: SchemaRef,
    feed: Option<String>,
    kind: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    #[error("reading the footer failed: {0}")]
    Store(#[from] object_store::Error),
    #[error("not a readable parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{size} bytes is too small for a parquet file")]
    TooSmall { size: u64 },
    #[error("footer key {key} is missing")]
    Missing { key: &'static str },
    #[error("footer key {key} is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("the file belongs to {found}, not this feed")]
    OtherFeed { found: String },
}

impl Footer {
    /// An error unless the footer names `feed` and `kind` (or names none).
    pub fn belongs_to(&self, feed: &str, kind: FeedKind) -> Result<(), FooterError> {
        if let Some(found) = self.feed.as_deref().filter(|found| *found != feed) {
            return Err(FooterError::OtherFeed { found: format!("feed {found}") });
        }
        if let Some(found) = self.kind.as_deref().filter(|found| *found != kind.as_str()) {
            return Err(FooterError::OtherFeed { found: format!("a {found} feed") });
        }
        Ok(())
    }
}

/// Reads a data file's footer: two range reads (the tail, then the metadata), never the data.
pub async fn read_footer_of(store: &dyn ObjectStore, meta: &ObjectMeta) -> Result<Footer, FooterError> {
    let tail_size = FOOTER_SIZE as u64;
    // The smallest file: magic, metadata length and magic around some metadata.
    if meta.size < tail_size + 4 {
        return Err(FooterError::TooSmall { size: meta.size });
    }
    let tail = store.get_range(&meta.location, meta.size - tail_size..meta.size).await?;
    let tail: [u8; FOOTER_SIZE] =
        tail.as_ref().try_into().map_err(|_| FooterError::TooSmall { size: tail.len() as u64 })?;
    let length = FooterTail::try_new(&tail)?.metadata_length() as u64;
    if length + tail_size + 4 > meta.size {
        return Err(FooterError::Invalid {
            key: "footer length",
            reason: format!("{length} bytes in a {} byte file", meta.size),
        });
    }
    let start = meta.size - tail_size - length;
    let encoded = store.get_range(&meta.location, start..meta.size - tail_size).await?;
    let decoded = ParquetMetaDataReader::decode_metadata(&encoded)?;
    let loaded = ArrowReaderMetadata::try_new(Arc::new(decoded), ArrowReaderOptions::new())?;
    let file = loaded.metadata().file_metadata();
    let pairs: HashMap<&str, &str> = file
        .key_value_metadata()
        .map(|pairs| pairs.iter().filter_map(|pair| Some((pair.key.as_str(), pair.value.as_deref()?))).collect())
        .unwrap_or_default();
    let millis = |key: &'static str| -> Result<i64, FooterError> {
        let text = pairs.get(key).ok_or(FooterError::Missing { key })?;
        text.parse().map_err(|error: std::num::ParseIntError| FooterError::Invalid { key, reason: error.to_string() })
    };
    let records = u64::try_from(file.num_rows())
        .map_err(|_| FooterError::Invalid { key: "num_rows", reason: format!("{} rows", file.num_rows()) })?;
    Ok(Footer {
        records,
        min_event_ms: millis(KV_MIN_EVENT_TIME)?,
        max_event_ms: millis(KV_MAX_EVENT_TIME)?,
        positions: optional_json(&pairs, KV_POSITIONS)?,
        runs: optional_json(&pairs, KV_RUNS)?,
        schema: Arc::clone(loaded.schema()),
        feed: pairs.get(KV_FEED).map(|found| found.to_string()),
        kind: pairs.get(KV_KIND).map(|found| found.to_string()),
    })
}

/// A JSON footer value, the default when the key is absent.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    pairs: &HashMap<&str, &str>,
    key: &'static str,
) -> Result<T, FooterError> {
    match pairs.get(key) {
        Some(text) => {
            serde_json::from_str(text).map_err(|error| FooterError::Invalid { key, reason: error.to_string() })
        }
        None => Ok(T::default()),
    }
}

#[cfg(test)]
mod tests;
