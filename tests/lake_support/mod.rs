//! Shared by tests/lake.rs and tests/lake_s3.rs: the library's own row fixture and buffer stage
//! (`ksql_lake::lake::testing`), and reading files back.
#![allow(dead_code)]

use arrow::array::StringArray;
use bytes::Bytes;
use ksql_lake::lake::testing::{self, Rows, TestFeed};
use ksql_lake::lake::{FlushJob, PartitionSpec};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const HOUR_MS: i64 = 3_600_000;
/// 2024-05-01T00:00:00Z
pub const DAY_MS: i64 = 1_714_521_600_000;

/// Rows at `times` (ms), ksqlDB partition 0, offsets from `first_offset`.
pub fn orders(times: &[i64], first_offset: u64) -> Rows {
    testing::orders(times, 0, first_offset)
}

/// Routes and buffers `rows` as the pipeline does, then drains everything.
pub fn jobs_for(rows: &Rows, spec: PartitionSpec) -> Vec<FlushJob> {
    TestFeed::with_spec(spec, DAY_MS).jobs_for(rows)
}

/// ORDER_ID values of a Parquet file, in file order.
pub fn order_ids(bytes: Bytes) -> Vec<String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column_by_name("ORDER_ID").unwrap();
        let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
        ids.extend(strings.iter().map(|v| v.unwrap().to_string()));
    }
    ids
}
