use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::*;
use crate::schema::types::{arrow_schema, Column, KsqlType};

fn sample(start: i64, rows: i64) -> RecordBatch {
    let columns = [
        Column::new("ROWTIME", KsqlType::Timestamp),
        Column::new("ID", KsqlType::Bigint),
        Column::new("COUNTRY", KsqlType::String),
    ];
    let schema = Arc::new(arrow_schema(&columns));
    let ids: Vec<i64> = (start..start + rows).collect();
    let countries: Vec<&str> = ids.iter().map(|id| if id % 2 == 0 { "DE" } else { "FR" }).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampMillisecondArray::from(ids.iter().map(|id| 1_000 * id).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(countries)),
        ],
    )
    .unwrap()
}

fn info() -> FileInfo {
    FileInfo {
        feed: "orders".into(),
        kind: FeedKind::Stream,
        positions: Positions::from([(0, 41), (2, 7)]),
        runs: [(0, vec![(30, 41)]), (2, vec![(7, 7)])].into(),
        min_event_ms: 0,
        max_event_ms: 14_000,
    }
}

#[test]
fn encoded_files_read_back_with_values_metadata_and_codec() {
    let batches = [sample(0, 10), sample(10, 5)];
    let options = ParquetOptions { row_group_rows: 4, ..ParquetOptions::default() };
    let encoded = encode(&batches, &info(), &options).unwrap();
    assert_eq!(encoded.rows, 15);
    assert_eq!(encoded.row_groups, 4);

    let builder = ParquetRecordBatchReaderBuilder::try_new(encoded.bytes.clone()).unwrap();
    let metadata = builder.metadata().clone();
    let kv: HashMap<String, String> = metadata
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|pair| (pair.key.clone(), pair.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(kv[KV_FEED], "orders");
    assert_eq!(kv[KV_KIND], "stream");
    assert_eq!(kv[KV_ROW_COUNT], "15");
    assert_eq!(kv[KV_MAX_EVENT_TIME], "14000");
    let positions: Positions = serde_json::from_str(&kv[KV_POSITIONS]).unwrap();
    assert_eq!(positions, info().positions);
    let columns: serde_json::Value = serde_json::from_str(&kv[KV_COLUMNS]).unwrap();
    assert_eq!(columns[0]["name"], "ROWTIME");
    assert_eq!(columns[0]["type"], "TIMESTAMP");
    assert_eq!(columns[2]["type"], "STRING");
    for row_group in metadata.row_groups() {
        for column in row_group.columns() {
            assert!(matches!(column.compression(), parquet::basic::Compression::ZSTD(_)));
            assert!(column.statistics().is_some(), "statistics are on");
        }
    }

    let schema = builder.schema().clone();
    assert_eq!(schema.field(0).metadata().get(KSQL_TYPE_METADATA_KEY).map(String::as_str), Some("TIMESTAMP"));
    let read: Vec<RecordBatch> = builder.build().unwrap().collect::<Result<_, _>>().unwrap();
    let ids: Vec<i64> = read.iter().flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(ids, (0..15).collect::<Vec<_>>());
    let times: Vec<i64> =
        read.iter().flat_map(|b| b.column(0).as_primitive::<TimestampMillisecondType>().values().to_vec()).collect();
    assert_eq!(times[14], 14_000);
    let countries: Vec<String> = read
        .iter()
        .flat_map(|b| b.column(2).as_string::<i32>().iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    assert_eq!(countries[..3], ["DE", "FR", "DE"]);
}

/// The footer of `bytes`, read back the way the lake reads it: two range reads of an object.
async fn footer_of(bytes: &Bytes) -> Footer {
    let store = object_store::memory::InMemory::new();
    let path = object_store::path::Path::from("data.parquet");
    store.put(&path, bytes.clone().into()).await.unwrap();
    let meta = store.head(&path).await.unwrap();
    read_footer_of(&store, &meta).await.unwrap()
}

#[tokio::test]
async fn the_footer_reads_back_what_was_written() {
    let encoded = encode(&[sample(0, 10), sample(10, 5)], &info(), &ParquetOptions::default()).unwrap();
    let footer = footer_of(&encoded.bytes).await;
    assert_eq!(footer.records, 15);
    assert_eq!((&footer.positions, &footer.runs), (&info().positions, &info().runs));
    assert_eq!((footer.min_event_ms, footer.max_event_ms), (0, 14_000));
    assert!(footer.belongs_to("orders", FeedKind::Stream).is_ok());
    assert!(matches!(footer.belongs_to("other", FeedKind::Stream), Err(FooterError::OtherFeed { .. })));
    assert!(matches!(footer.belongs_to("orders", FeedKind::Table), Err(FooterError::OtherFeed { .. })));
}

#[test]
fn every_codec_is_applied() {
    use parquet::basic::Compression as Codec;
    let cases = [
        (Compression::Snappy, "SNAPPY"),
        (Compression::Lz4, "LZ4_RAW"),
        (Compression::Gzip(6), "GZIP"),
        (Compression::None, "UNCOMPRESSED"),
        (Compression::Zstd(1), "ZSTD"),
    ];
    for (compression, expected) in cases {
        let options = ParquetOptions { compression, ..ParquetOptions::default() };
        let encoded = encode(&[sample(0, 100)], &FileInfo::default(), &options).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(encoded.bytes).unwrap();
        let codec: Codec = builder.metadata().row_group(0).column(1).compression();
        assert!(codec.to_string().starts_with(expected), "{compression:?} wrote {codec}");
        let rows: usize = builder.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 100);
    }
}

#[tokio::test]
async fn positions_are_omitted_when_unknown_and_bad_input_is_rejected() {
    let encoded = encode(&[sample(0, 3)], &FileInfo::default(), &ParquetOptions::default()).unwrap();
    let footer = footer_of(&encoded.bytes).await;
    assert_eq!((footer.records, footer.positions.is_empty(), footer.runs.is_empty()), (3, true, true));
    assert!(matches!(encode(&[], &FileInfo::default(), &ParquetOptions::default()), Err(EncodeError::Empty)));
    let other = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "X",
            arrow::datatypes::DataType::Int64,
            true,
        )])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    let mixed = encode(&[sample(0, 1), other], &FileInfo::default(), &ParquetOptions::default());
    assert!(matches!(mixed, Err(EncodeError::SchemaMismatch { index: 1 })));
    let bad_level = ParquetOptions { compression: Compression::Zstd(99), ..ParquetOptions::default() };
    assert!(matches!(encode(&[sample(0, 1)], &FileInfo::default(), &bad_level), Err(EncodeError::InvalidLevel { .. })));
}

#[test]
fn a_column_of_ten_thousand_user_ids_keeps_its_dictionary_and_unique_ids_fall_back_to_plain() {
    use parquet::basic::Encoding;
    let columns = [Column::new("USER_ID", KsqlType::String), Column::new("ID", KsqlType::Bigint)];
    let rows = 200_000i64;
    let users: Vec<String> = (0..rows).map(|row| format!("user-{:05}", (row * 7919) % 10_000)).collect();
    let batch = RecordBatch::try_new(
        Arc::new(arrow_schema(&columns)),
        vec![
            Arc::new(StringArray::from(users.iter().map(String::as_str).collect::<Vec<_>>())),
            Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    let file = encode(&[batch], &info(), &ParquetOptions::default()).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file.bytes).unwrap();
    let group = reader.metadata().row_group(0);
    // the encodings of a column's data pages, as the footer sums them up
    let mask = |column: usize| *group.column(column).page_encoding_stats_mask().expect("the writer records them");
    // every page of the user ids is dictionary-encoded; the unique ids gave up on it
    assert!(mask(0).is_only(Encoding::RLE_DICTIONARY), "{:?}", mask(0));
    assert!(mask(1).is_set(Encoding::PLAIN), "{:?}", mask(1));
}
