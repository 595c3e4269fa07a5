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

use super::layout::FeedKind;
use super::Positions;
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
    /// gzip at a level (0–10).
    Gzip(u32),
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(3)
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
        ParquetOptions { compression: Compression::default(), row_group_rows: 1_000_000, dictionary: true }
    }
}

/// Facts about the file that go into its key-value metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileInfo {
    pub feed: String,
    pub kind: FeedKind,
    pub positions: Positions,
    pub runs: super::commit::Runs,
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

/// Reads the `ksql_lake.positions` and row count of an existing file's footer (used to check
/// whether a file found under a deterministic name holds the same rows).
pub fn footer_summary(bytes: &Bytes) -> Result<(i64, Option<Positions>), EncodeError> {
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(bytes)?;
    let file = metadata.file_metadata();
    let positions = file
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|pair| pair.key == KV_POSITIONS))
        .and_then(|pair| pair.value.as_deref())
        .map(serde_json::from_str::<Positions>)
        .transpose()?;
    Ok((file.num_rows(), positions))
}

#[cfg(test)]
mod tests;
