use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::ObjectStore;

use super::*;
use crate::lake::budget::MemoryBudget;
use crate::lake::buffer::{ManualClock, PartitionBuffers};
use crate::lake::partition::{EventTime, PartitionSpec, Partitioning, PositionColumns, RowRouter};
use crate::lake::testing::FaultyStore;
use crate::lake::FlushPolicy;

const HOUR_MS: i64 = 3_600_000;
/// 2024-05-01T00:00:00Z
const DAY_MS: i64 = 1_714_521_600_000;

/// One job of `rows` rows in hour `hour` of 2024-05-01, offsets from `first_offset`.
fn job(hour: i64, first_offset: i64, rows: i64) -> FlushJob {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ROWTIME", DataType::Int64, true),
        Field::new("V", DataType::Utf8, true),
        Field::new("ROWPARTITION", DataType::Int64, true),
        Field::new("ROWOFFSET", DataType::Int64, true),
    ]));
    let offsets: Vec<i64> = (first_offset..first_offset + rows).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(offsets.iter().map(|o| DAY_MS + hour * HOUR_MS + o).collect::<Vec<_>>())),
            Arc::new(StringArray::from(offsets.iter().map(|o| format!("v{o}")).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(vec![0; rows as usize])),
            Arc::new(Int64Array::from(offsets.clone())),
        ],
    )
    .unwrap();
    let spec = PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC);
    let router = RowRouter::new(
        spec,
        EventTime::Column("ROWTIME".into()),
        Some(PositionColumns { partition: "ROWPARTITION".into(), offset: "ROWOFFSET".into() }),
    );
    let mut buffers = PartitionBuffers::new(
        "orders",
        FeedKind::Stream,
        spec,
        FlushPolicy::default(),
        MemoryBudget::new(1 << 30),
        ManualClock::new(DAY_MS),
    );
    for routed in router.route(&batch, 0).unwrap() {
        assert!(buffers.push(routed).is_empty());
    }
    let mut jobs = buffers.drain_all(FlushReason::Rows);
    assert_eq!(jobs.len(), 1);
    jobs.pop().unwrap()
}

fn options(max_attempts: u32) -> WriterOptions {
    WriterOptions {
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            multiplier: 2.0,
        },
        ..WriterOptions::default()
    }
}

fn writer_over(store: Arc<dyn ObjectStore>, max_attempts: u32) -> LakeWriter {
    LakeWriter::new(Lake::new(store, Path::from("lake"), "memory://test"), options(max_attempts))
}

async fn objects(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    let mut paths: Vec<String> = store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
    paths.sort();
    paths
}

async fn metadata_bytes(store: &Arc<dyn ObjectStore>) -> Option<Bytes> {
    match store.get(&Path::from("lake/streams/orders/_metadata.json")).await {
        Ok(result) => Some(result.bytes().await.unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test]
async fn in_memory_commit_writes_the_data_file_then_the_manifest() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = writer_over(Arc::clone(&store), 3);
    let first = writer.write(&job(10, 0, 5)).await.unwrap();
    let second = writer.write(&job(11, 5, 3)).await.unwrap();
    assert_eq!(first.outcome, CommitOutcome::Written);
    assert_eq!(first.attempts, 2);
    assert_eq!(second.committed_positions, Positions::from([(0, 7)]));
    assert_eq!(
        objects(&store).await,
        [
            "lake/streams/orders/_metadata.json",
            "lake/streams/orders/year=2024/month=05/day=01/hour=10/data_20240501_100000_p0000000000o0000000000000000000.parquet",
            "lake/streams/orders/year=2024/month=05/day=01/hour=11/data_20240501_110000_p0000000000o0000000000000000005.parquet",
        ]
    );
    let metadata = writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    assert_eq!(metadata.total_records, 8);
    assert_eq!(metadata.total_bytes, first.bytes + second.bytes);
    assert_eq!(metadata.partitions.len(), 2);
    assert_eq!(metadata.partitions[0].files[0].reason, "rows");
    assert_eq!(metadata.committed_positions, Positions::from([(0, 7)]));
    let data = store.get(&first.path).await.unwrap().bytes().await.unwrap();
    assert_eq!(data.len() as u64, first.bytes);
    assert_eq!(footer_summary(&data).unwrap(), (5, Some(Positions::from([(0, 4)]))));
}

#[tokio::test]
async fn local_filesystem_commit_falls_back_to_atomic_overwrite_for_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let lake = crate::lake::open_lake(dir.path().to_str().unwrap(), &Default::default()).unwrap();
    let writer = LakeWriter::new(lake, options(3));
    writer.write(&job(10, 0, 5)).await.unwrap();
    writer.write(&job(10, 5, 5)).await.unwrap();
    let hour = dir.path().join("streams/orders/year=2024/month=05/day=01/hour=10");
    let mut files: Vec<String> =
        std::fs::read_dir(&hour).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let text = std::fs::read_to_string(dir.path().join("streams/orders/_metadata.json")).unwrap();
    let metadata = FeedMetadata::from_json(text.as_bytes()).unwrap();
    assert_eq!(metadata.total_records, 10);
    assert_eq!(metadata.partitions[0].files.len(), 2);
}

#[tokio::test]
async fn failed_puts_are_retried_and_the_file_is_written_once() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), ".parquet");
    faulty.fail_next_puts(2);
    let writer = writer_over(faulty.clone(), 5);
    let committed = writer.write(&job(10, 0, 5)).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::Written);
    assert_eq!(committed.attempts, 4, "3 data attempts + 1 manifest");
    assert_eq!(objects(&inner).await.len(), 2);
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 5);
}

#[tokio::test]
async fn a_failed_data_write_leaves_no_file_and_the_manifest_untouched() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), ".parquet");
    let writer = writer_over(faulty.clone(), 3);
    writer.write(&job(9, 0, 2)).await.unwrap();
    let before_objects = objects(&inner).await;
    let before_metadata = metadata_bytes(&inner).await.unwrap();

    faulty.fail_next_puts(10);
    let pending = job(10, 2, 5);
    let error = writer.write(&pending).await.unwrap_err();
    assert!(matches!(error, WriteError::Put { attempts: 3, .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(objects(&inner).await, before_objects);
    assert_eq!(metadata_bytes(&inner).await.unwrap(), before_metadata);

    // The caller kept the job; once the store recovers the same job commits.
    faulty.fail_next_puts(0);
    let committed = writer.write(&pending).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::Written);
    assert_eq!(committed.committed_positions, Positions::from([(0, 6)]));
}

#[tokio::test]
async fn manifest_failures_are_retried() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), "_metadata.json");
    faulty.fail_next_puts(2);
    let writer = writer_over(faulty.clone(), 5);
    let committed = writer.write(&job(10, 0, 5)).await.unwrap();
    assert_eq!(committed.attempts, 4, "1 data attempt + 3 manifest attempts");
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 5);
}

#[tokio::test]
async fn replaying_a_committed_job_is_idempotent() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = writer_over(Arc::clone(&store), 3);
    writer.write(&job(10, 0, 5)).await.unwrap();
    let replay = writer.write(&job(10, 0, 5)).await.unwrap();
    assert_eq!(replay.outcome, CommitOutcome::AlreadyCommitted);
    assert_eq!(objects(&store).await.len(), 2);
    let metadata = writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    assert_eq!(metadata.total_records, 5);
    assert_eq!(metadata.partitions[0].files.len(), 1);
}

#[tokio::test]
async fn a_crash_between_data_file_and_manifest_is_repaired_by_the_replay() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), "_metadata.json");
    faulty.fail_next_puts(100);
    let writer = writer_over(faulty.clone(), 2);
    let error = writer.write(&job(10, 0, 5)).await.unwrap_err();
    assert!(matches!(error, WriteError::Metadata { .. }), "{error:?}");
    assert_eq!(objects(&inner).await.len(), 1, "orphan data file, no manifest");

    // After a restart the same rows are replayed from the last committed position.
    faulty.fail_next_puts(0);
    let committed = writer.write(&job(10, 0, 5)).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::ReusedExisting);
    assert_eq!(objects(&inner).await.len(), 2);
    let metadata = writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    assert_eq!(metadata.total_records, 5);
}

#[tokio::test]
async fn an_uncommitted_file_with_other_rows_is_replaced_but_a_committed_one_is_a_conflict() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), "_metadata.json");
    faulty.fail_next_puts(100);
    let writer = writer_over(faulty.clone(), 1);
    writer.write(&job(10, 0, 3)).await.unwrap_err();

    // The replay flushed at a different boundary: same first row, more rows.
    faulty.fail_next_puts(0);
    let bigger = job(10, 0, 6);
    let committed = writer.write(&bigger).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::ReplacedOrphan);
    let data = inner.get(&committed.path).await.unwrap().bytes().await.unwrap();
    assert_eq!(footer_summary(&data).unwrap().0, 6);
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 6);

    let error = writer.write(&job(10, 0, 2)).await.unwrap_err();
    assert!(matches!(error, WriteError::Conflict { .. }), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn large_files_use_a_multipart_upload_and_replays_still_detect_them() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut options = options(3);
    options.multipart_threshold = 0;
    let writer = LakeWriter::new(Lake::new(Arc::clone(&store), Path::from("lake"), "memory://test"), options);
    let committed = writer.write(&job(10, 0, 50)).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::Written);
    let data = store.get(&committed.path).await.unwrap().bytes().await.unwrap();
    assert_eq!(data.len() as u64, committed.bytes);
    assert_eq!(footer_summary(&data).unwrap().0, 50);
    let replay = writer.write(&job(10, 0, 50)).await.unwrap();
    assert_eq!(replay.outcome, CommitOutcome::AlreadyCommitted);
}

#[test]
fn backoff_grows_exponentially_within_bounds() {
    let policy = RetryPolicy::default();
    for attempt in 1..10 {
        let delay = policy.backoff(attempt);
        let full = (0.2 * 2f64.powi(attempt as i32 - 1)).min(10.0);
        assert!(delay.as_secs_f64() <= full + 1e-9 && delay.as_secs_f64() >= full / 2.0 - 1e-9, "{attempt}: {delay:?}");
    }
}
