//! Shared by tests/lake.rs and tests/lake_s3.rs: ksqlDB-like batches and the route → buffer
//! → drain chain through the public API.
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::Schema;
use bytes::Bytes;
use ksql_lake::lake::{
    EventTime, FeedKind, FlushJob, FlushPolicy, FlushReason, ManualClock, MemoryBudget, PartitionBuffers,
    PartitionSpec, PositionColumns, RowRouter, WallClock,
};
use ksql_lake::schema::types::{arrow_schema, Column, KsqlType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const HOUR_MS: i64 = 3_600_000;
/// 2024-05-01T00:00:00Z
pub const DAY_MS: i64 = 1_714_521_600_000;

pub fn schema() -> Arc<Schema> {
    Arc::new(arrow_schema(&[
        Column::new("ROWTIME", KsqlType::Timestamp),
        Column::new("ROWPARTITION", KsqlType::Integer),
        Column::new("ROWOFFSET", KsqlType::Bigint),
        Column::new("ORDER_ID", KsqlType::String),
    ]))
}

/// Rows at `times` (ms), ksqlDB partition 0, offsets from `first_offset`.
pub fn orders(times: &[i64], first_offset: i64) -> RecordBatch {
    let offsets: Vec<i64> = (first_offset..first_offset + times.len() as i64).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(times.to_vec()).with_timezone("UTC")),
            Arc::new(Int32Array::from(vec![0; times.len()])),
            Arc::new(Int64Array::from(offsets.clone())),
            Arc::new(StringArray::from(offsets.iter().map(|o| format!("order-{o}")).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

pub fn router(spec: PartitionSpec) -> RowRouter {
    RowRouter::new(
        spec,
        EventTime::Column("ROWTIME".into()),
        Some(PositionColumns { partition: "ROWPARTITION".into(), offset: "ROWOFFSET".into() }),
    )
}

pub fn buffers(spec: PartitionSpec, budget: Arc<MemoryBudget>, clock: Arc<dyn WallClock>) -> PartitionBuffers {
    PartitionBuffers::new("orders", FeedKind::Stream, spec, FlushPolicy::default(), budget, clock)
}

/// Routes and buffers `batch`, then drains everything.
pub fn jobs_for(batch: &RecordBatch, spec: PartitionSpec) -> Vec<FlushJob> {
    let mut buffers = buffers(spec, MemoryBudget::new(1 << 30), ManualClock::new(DAY_MS));
    for routed in router(spec).route(batch, DAY_MS).unwrap() {
        assert!(buffers.push(routed).is_empty());
    }
    buffers.drain_all(FlushReason::Shutdown)
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
