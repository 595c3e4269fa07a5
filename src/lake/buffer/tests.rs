use std::sync::Arc;

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{TimeZone, Utc};

use super::*;
use crate::lake::partition::{EventTime, Partitioning, RowRouter};
use crate::lake::testing::{orders, Rows, TestFeed};

fn ms(h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(2024, 5, 1, h, mi, s).unwrap().timestamp_millis()
}

fn spec() -> PartitionSpec {
    PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC)
}

/// Rows at the given event times with offsets `first_offset..` in ksqlDB partition 0.
fn rows(times: &[i64], first_offset: u64) -> Rows {
    orders(times, 0, first_offset)
}

struct Fixture {
    feed: TestFeed,
    budget: Arc<MemoryBudget>,
}

fn fixture(policy: FlushPolicy) -> Fixture {
    let budget = MemoryBudget::new(1 << 30);
    let feed = TestFeed::new(spec(), policy, Arc::clone(&budget), ms(10, 30, 0));
    Fixture { feed, budget }
}

fn push_all(f: &mut Fixture, rows: Rows) {
    assert!(f.feed.push(&rows).is_empty());
}

#[tokio::test(start_paused = true)]
async fn rows_trigger_flushes_with_merged_runs_and_a_deterministic_name() {
    let mut f = fixture(FlushPolicy { max_rows: 3, ..FlushPolicy::default() });
    push_all(&mut f, rows(&[ms(10, 0, 1), ms(10, 0, 2)], 40));
    assert!(f.feed.drain_ready().is_empty());
    push_all(&mut f, rows(&[ms(10, 0, 0), ms(10, 0, 3)], 42));
    let jobs = f.feed.drain_ready();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.reason, FlushReason::Rows);
    assert_eq!(job.rows, 4);
    assert_eq!(job.batches.len(), 2);
    assert_eq!(job.runs, Runs::from([(0, vec![(40, 43)])]));
    assert_eq!(job.min_event_ms, ms(10, 0, 0));
    assert_eq!(job.max_event_ms, ms(10, 0, 3));
    // Named after the first row received (10:00:01, offset 40), not the earliest.
    assert!(job.file_name.starts_with("data_20240501_100001_p0000000000o0000000000000000040_"), "{}", job.file_name);
    assert_eq!(job.relative_path(), format!("year=2024/month=05/day=01/hour=10/{}", job.file_name));
    assert_eq!(f.feed.buffers.open_partitions(), 0);
}

#[tokio::test(start_paused = true)]
async fn bytes_trigger_uses_the_learned_compression_ratio() {
    let mut f = fixture(FlushPolicy::default());
    push_all(&mut f, rows(&[ms(10, 1, 0); 100], 0));
    let in_memory = f.feed.buffers.buffered_bytes();
    // With the initial 0.25 ratio the estimate is a quarter of the memory size.
    f.feed.buffers.policy.max_bytes = in_memory / 4 + 16;
    assert!(f.feed.drain_ready().is_empty());
    // A flush that encoded to half its memory size raises the estimate above the target.
    f.feed.buffers.learn_compression(1_000, 1_000);
    assert!(f.feed.buffers.compression_ratio() > 0.25);
    let jobs = f.feed.drain_ready();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::Bytes);
}

#[tokio::test(start_paused = true)]
async fn age_trigger_fires_exactly_at_max_age() {
    let mut f = fixture(FlushPolicy { max_age: Duration::from_secs(300), ..FlushPolicy::default() });
    let first_arrival = tokio::time::Instant::now();
    push_all(&mut f, rows(&[ms(10, 1, 0)], 0));
    tokio::time::advance(Duration::from_secs(299)).await;
    // A row arriving later does not reset the age of the oldest one.
    push_all(&mut f, rows(&[ms(10, 2, 0)], 1));
    assert!(f.feed.drain_ready().is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let jobs = f.feed.drain_ready();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::Age);
    assert_eq!(jobs[0].rows, 2);
    // Due when the oldest row turned max_age old: the delay metric counts from there.
    assert_eq!(jobs[0].due, Some(first_arrival + Duration::from_secs(300)));
}

#[tokio::test(start_paused = true)]
async fn partition_closes_once_the_watermark_passes_its_end_plus_allowed_lateness() {
    let mut f = fixture(FlushPolicy { allowed_lateness: Duration::from_secs(600), ..FlushPolicy::default() });
    push_all(&mut f, rows(&[ms(10, 59, 0), ms(11, 0, 0)], 0));
    assert_eq!(f.feed.buffers.open_partitions(), 2);
    f.feed.watermark_ms = ms(11, 9, 59);
    assert!(f.feed.drain_ready().is_empty());
    f.feed.watermark_ms = ms(11, 10, 0);
    let jobs = f.feed.drain_ready();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::PartitionClose);
    assert_eq!(jobs[0].due, None);
    assert_eq!(jobs[0].key.hour, Some(10));
    assert_eq!(f.feed.buffers.open_partitions(), 1);
}

#[tokio::test(start_paused = true)]
async fn late_rows_are_counted_and_flush_by_age_not_on_every_tick() {
    let mut f = fixture(FlushPolicy::default());
    let late = rows(&[ms(10, 5, 0), ms(10, 6, 0)], 0);
    let routed = f.feed.router.route(&late.batch, &late.positions, 0).unwrap();
    let pushed = f.feed.buffers.push_batch(routed, &[], Vec::new(), ms(12, 0, 0)); // hour 10 closed at 11:10
    assert_eq!(pushed.late_rows, 2);
    assert!(pushed.drained.is_empty());
    assert!(f.feed.drain_ready().is_empty());
    tokio::time::advance(Duration::from_secs(300)).await;
    let jobs = f.feed.drain_ready();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].late);
    assert_eq!(jobs[0].reason, FlushReason::Age);
}

#[tokio::test(start_paused = true)]
async fn memory_is_reserved_while_buffered_and_released_when_the_job_is_dropped() {
    let mut f = fixture(FlushPolicy::default());
    push_all(&mut f, rows(&[ms(10, 1, 0)], 0));
    push_all(&mut f, rows(&[ms(11, 1, 0); 50], 1));
    let buffered = f.feed.buffers.buffered_bytes();
    assert!(buffered > 0);
    assert_eq!(f.budget.used(), buffered);
    let largest = f.feed.buffers.drain_largest().unwrap();
    assert_eq!(largest.reason, FlushReason::Memory);
    assert_eq!(largest.key.hour, Some(11));
    // Drained but not yet written: still counted.
    assert_eq!(f.budget.used(), buffered);
    let remaining = f.feed.buffers.buffered_bytes();
    assert_eq!(largest.reserved_bytes(), buffered - remaining);
    drop(largest);
    assert_eq!(f.budget.used(), remaining);
    let rest = f.feed.buffers.drain_all(FlushReason::Shutdown);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].reason, FlushReason::Shutdown);
    drop(rest);
    assert_eq!(f.budget.used(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_schema_drains_everything_buffered_first() {
    let mut f = fixture(FlushPolicy::default());
    push_all(&mut f, rows(&[ms(10, 1, 0), ms(11, 1, 0)], 0));
    let schema = Arc::new(Schema::new(vec![Field::new("ROWTIME", DataType::Int64, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![ms(10, 2, 0)]))]).unwrap();
    let routed = RowRouter::new(spec(), EventTime::Column("ROWTIME".into())).route(&batch, &[], 0).unwrap();
    let jobs = f.feed.buffers.push_batch(routed, &[], Vec::new(), ms(10, 30, 0)).drained;
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|job| job.reason == FlushReason::SchemaChange && job.schema.fields().len() == 4));
    assert_eq!(f.feed.buffers.buffered_rows(), 1);
    // Without positions the name ends in a ULID.
    let job = f.feed.buffers.drain_all(FlushReason::Shutdown).pop().unwrap();
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

/// Rows of one ksqlDB partition alternating between two hours in one batch (late and early
/// rows at an hour boundary): each job holds exactly its own rows' runs, and the first job's
/// commit state never covers a row the other hour still buffers.
#[tokio::test(start_paused = true)]
async fn interleaved_hours_give_each_job_its_exact_runs() {
    let mut f = fixture(FlushPolicy::default());
    let times: Vec<i64> = (0..10).map(|i| if i % 2 == 0 { ms(10, 59, 0) } else { ms(11, 0, 0) }).collect();
    push_all(&mut f, rows(&times, 0));
    let mut jobs = f.feed.drain_all(FlushReason::Shutdown);
    assert_eq!(jobs.len(), 2);
    let eleven = jobs.pop().unwrap();
    let ten = jobs.pop().unwrap();
    assert_eq!(ten.runs[&0], [(0, 0), (2, 2), (4, 4), (6, 6), (8, 8)]);
    assert_eq!(eleven.runs[&0], [(1, 1), (3, 3), (5, 5), (7, 7), (9, 9)]);
    for offset in [1, 3, 5, 7, 9] {
        assert!(!ten.commit.covers(0, offset), "offset {offset} is still buffered in hour 11");
    }
    assert!((0..10).step_by(2).all(|offset| ten.commit.covers(0, offset)));
    assert_eq!(eleven.commit.low[&0], 9, "both committed: everything up to 9");
    assert!(eleven.commit.ranges.is_empty());
}
