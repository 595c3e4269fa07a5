use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{TimeZone, Utc};

use super::*;
use crate::lake::partition::{EventTime, Partitioning, PositionColumns, RowRouter};

fn ms(h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(2024, 5, 1, h, mi, s).unwrap().timestamp_millis()
}

fn spec() -> PartitionSpec {
    PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC)
}

/// Rows at the given event times with offsets `first_offset..` in ksqlDB partition 0.
fn routed(times: &[i64], first_offset: i64) -> Vec<RoutedBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ROWTIME", DataType::Int64, true),
        Field::new("V", DataType::Utf8, true),
        Field::new("ROWPARTITION", DataType::Int64, true),
        Field::new("ROWOFFSET", DataType::Int64, true),
    ]));
    let rows = times.len() as i64;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(times.to_vec())),
            Arc::new(StringArray::from(vec!["some payload text"; times.len()])),
            Arc::new(Int64Array::from(vec![0; times.len()])),
            Arc::new(Int64Array::from((first_offset..first_offset + rows).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    let router = RowRouter::new(
        spec(),
        EventTime::Column("ROWTIME".into()),
        Some(PositionColumns { partition: "ROWPARTITION".into(), offset: "ROWOFFSET".into() }),
    );
    router.route(&batch, 0).unwrap()
}

struct Fixture {
    buffers: PartitionBuffers,
    budget: Arc<MemoryBudget>,
    clock: Arc<ManualClock>,
}

fn fixture(policy: FlushPolicy) -> Fixture {
    let budget = MemoryBudget::new(1 << 30);
    let clock = ManualClock::new(ms(10, 30, 0));
    let buffers = PartitionBuffers::new("orders", FeedKind::Stream, spec(), policy, Arc::clone(&budget), clock.clone());
    Fixture { buffers, budget, clock }
}

fn push_all(buffers: &mut PartitionBuffers, batches: Vec<RoutedBatch>) {
    for batch in batches {
        assert!(buffers.push(batch).is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn rows_trigger_flushes_with_merged_positions_and_a_deterministic_name() {
    let mut f = fixture(FlushPolicy { max_rows: 3, ..FlushPolicy::default() });
    push_all(&mut f.buffers, routed(&[ms(10, 0, 1), ms(10, 0, 2)], 40));
    assert!(f.buffers.drain_ready(Instant::now()).is_empty());
    push_all(&mut f.buffers, routed(&[ms(10, 0, 0), ms(10, 0, 3)], 42));
    let jobs = f.buffers.drain_ready(Instant::now());
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.reason, FlushReason::Rows);
    assert_eq!(job.rows, 4);
    assert_eq!(job.batches.len(), 2);
    assert_eq!(job.positions, Positions::from([(0, 43)]));
    assert_eq!(job.min_event_ms, ms(10, 0, 0));
    assert_eq!(job.max_event_ms, ms(10, 0, 3));
    // Named after the first row received (10:00:01, offset 40), not the earliest.
    assert_eq!(job.file_name, "data_20240501_100001_p0000000000o0000000000000000040.parquet");
    assert_eq!(job.relative_path(), format!("year=2024/month=05/day=01/hour=10/{}", job.file_name));
    assert_eq!(f.buffers.open_partitions(), 0);
}

#[tokio::test(start_paused = true)]
async fn bytes_trigger_uses_the_learned_compression_ratio() {
    let mut f = fixture(FlushPolicy::default());
    push_all(&mut f.buffers, routed(&[ms(10, 1, 0); 100], 0));
    let in_memory = f.buffers.buffered_bytes();
    // With the initial 0.25 ratio the estimate is a quarter of the memory size.
    f.buffers.policy.max_bytes = in_memory / 4 + 16;
    assert!(f.buffers.drain_ready(Instant::now()).is_empty());
    // A flush that encoded to half its memory size raises the estimate above the target.
    f.buffers.learn_compression(1_000, 1_000);
    assert!(f.buffers.compression_ratio() > 0.25);
    let jobs = f.buffers.drain_ready(Instant::now());
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::Bytes);
}

#[tokio::test(start_paused = true)]
async fn age_trigger_fires_exactly_at_max_age() {
    let mut f = fixture(FlushPolicy { max_age: Duration::from_secs(300), ..FlushPolicy::default() });
    push_all(&mut f.buffers, routed(&[ms(10, 1, 0)], 0));
    tokio::time::advance(Duration::from_secs(299)).await;
    // A row arriving later does not reset the age of the oldest one.
    push_all(&mut f.buffers, routed(&[ms(10, 2, 0)], 1));
    assert!(f.buffers.drain_ready(Instant::now()).is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let jobs = f.buffers.drain_ready(Instant::now());
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::Age);
    assert_eq!(jobs[0].rows, 2);
}

#[tokio::test(start_paused = true)]
async fn partition_closes_after_end_plus_allowed_lateness_on_the_wall_clock() {
    let mut f = fixture(FlushPolicy { allowed_lateness: Duration::from_secs(600), ..FlushPolicy::default() });
    push_all(&mut f.buffers, routed(&[ms(10, 59, 0), ms(11, 0, 0)], 0));
    assert_eq!(f.buffers.open_partitions(), 2);
    f.clock.set(ms(11, 9, 59));
    assert!(f.buffers.drain_ready(Instant::now()).is_empty());
    f.clock.set(ms(11, 10, 0));
    let jobs = f.buffers.drain_ready(Instant::now());
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::PartitionClose);
    assert_eq!(jobs[0].key.hour, Some(10));
    assert_eq!(f.buffers.open_partitions(), 1);
}

#[tokio::test(start_paused = true)]
async fn late_rows_are_counted_and_flush_by_age_not_on_every_tick() {
    let mut f = fixture(FlushPolicy::default());
    f.clock.set(ms(12, 0, 0)); // hour 10 closed at 11:10
    push_all(&mut f.buffers, routed(&[ms(10, 5, 0), ms(10, 6, 0)], 0));
    assert_eq!(f.buffers.late_rows_total(), 2);
    assert!(f.buffers.drain_ready(Instant::now()).is_empty());
    tokio::time::advance(Duration::from_secs(300)).await;
    let jobs = f.buffers.drain_ready(Instant::now());
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].late);
    assert_eq!(jobs[0].reason, FlushReason::Age);
}

#[tokio::test(start_paused = true)]
async fn memory_is_reserved_while_buffered_and_released_when_the_job_is_dropped() {
    let mut f = fixture(FlushPolicy::default());
    push_all(&mut f.buffers, routed(&[ms(10, 1, 0)], 0));
    push_all(&mut f.buffers, routed(&[ms(11, 1, 0); 50], 1));
    let buffered = f.buffers.buffered_bytes();
    assert!(buffered > 0);
    assert_eq!(f.budget.used(), buffered);
    let largest = f.buffers.drain_largest().unwrap();
    assert_eq!(largest.reason, FlushReason::Memory);
    assert_eq!(largest.key.hour, Some(11));
    // Drained but not yet written: still counted.
    assert_eq!(f.budget.used(), buffered);
    let remaining = f.buffers.buffered_bytes();
    assert_eq!(largest.reserved_bytes(), buffered - remaining);
    drop(largest);
    assert_eq!(f.budget.used(), remaining);
    let rest = f.buffers.drain_all(FlushReason::Shutdown);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].reason, FlushReason::Shutdown);
    drop(rest);
    assert_eq!(f.budget.used(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_schema_drains_everything_buffered_first() {
    let mut f = fixture(FlushPolicy::default());
    push_all(&mut f.buffers, routed(&[ms(10, 1, 0), ms(11, 1, 0)], 0));
    let schema = Arc::new(Schema::new(vec![Field::new("ROWTIME", DataType::Int64, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![ms(10, 2, 0)]))]).unwrap();
    let routed = RowRouter::new(spec(), EventTime::Column("ROWTIME".into()), None).route(&batch, 0).unwrap();
    let jobs = f.buffers.push(routed.into_iter().next().unwrap());
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|job| job.reason == FlushReason::SchemaChange && job.schema.fields().len() == 4));
    assert_eq!(f.buffers.buffered_rows(), 1);
    // Without positions the name ends in a ULID.
    let job = f.buffers.drain_all(FlushReason::Shutdown).pop().unwrap();
    assert!(job.file_name.starts_with("data_20240501_100200_") && !job.file_name.contains("_p0"));
}

#[test]
fn reasons_have_stable_metric_labels() {
    let all = [
        FlushReason::Rows,
        FlushReason::Bytes,
        FlushReason::Age,
        FlushReason::PartitionClose,
        FlushReason::Memory,
        FlushReason::Shutdown,
        FlushReason::SchemaChange,
    ];
    let labels: Vec<&str> = all.iter().map(|reason| reason.as_str()).collect();
    assert_eq!(labels, ["rows", "bytes", "age", "partition_close", "memory", "shutdown", "schema_change"]);
}
