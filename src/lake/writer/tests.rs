use std::sync::Arc;

use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::ObjectStore;

use super::*;
use crate::lake::parquet::Footer;
use crate::lake::partition::{PartitionSpec, Partitioning};
use crate::lake::testing::{orders, without_digest, FaultyStore, TestFeed};
use crate::lake::Runs;

const HOUR_MS: i64 = 3_600_000;
/// 2024-05-01T00:00:00Z
const DAY_MS: i64 = 1_714_521_600_000;

/// One job of `rows` rows in hour `hour` of 2024-05-01, offsets from `first_offset`.
fn job(hour: i64, first_offset: u64, rows: u64) -> FlushJob {
    let times: Vec<i64> = (first_offset..first_offset + rows).map(|o| DAY_MS + hour * HOUR_MS + o as i64).collect();
    let mut feed = TestFeed::with_spec(PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC), DAY_MS);
    let mut jobs = feed.jobs_for(&orders(&times, 0, first_offset));
    assert_eq!(jobs.len(), 1);
    let mut job = jobs.pop().unwrap();
    job.reason = FlushReason::Rows;
    job
}

fn writer_over(store: Arc<dyn ObjectStore>) -> LakeWriter {
    LakeWriter::new(Lake::new(store, Path::from("lake"), "memory://test"), WriterOptions::default())
}

async fn footer(store: &Arc<dyn ObjectStore>, path: &Path) -> Footer {
    let meta = store.head(path).await.unwrap();
    read_footer_of(store.as_ref(), &meta).await.unwrap()
}

/// The objects in the store, manifest segments aside (`segments` counts those).
async fn objects(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    let mut paths: Vec<String> = store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
    paths.retain(|path| !path.contains("/_manifests/"));
    paths.sort();
    paths
}

async fn segments(store: &Arc<dyn ObjectStore>) -> usize {
    let paths: Vec<String> = store.list(None).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
    paths.iter().filter(|path| path.contains("/_manifests/")).count()
}

/// The manifest with its whole file list.
async fn full(writer: &LakeWriter) -> FeedMetadata {
    let path = writer.lake().metadata_path(FeedKind::Stream, "orders").unwrap();
    crate::lake::manifests::load_full(writer.lake().store().as_ref(), &path).await.unwrap().unwrap().0
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
    let writer = writer_over(Arc::clone(&store));
    let first = writer.write(&job(10, 0, 5)).await.unwrap();
    let second = writer.write(&job(11, 5, 3)).await.unwrap();
    assert_eq!(first.outcome, CommitOutcome::Written);
    assert_eq!(second.committed_positions, Positions::from([(0, 7)]));
    let names: Vec<String> = objects(&store).await.iter().map(|name| without_digest(name)).collect();
    assert_eq!(
        names,
        [
            "lake/streams/orders/_metadata.json",
            "lake/streams/orders/year=2024/month=05/day=01/hour=10/data_20240501_100000_p0000000000o0000000000000000000.parquet",
            "lake/streams/orders/year=2024/month=05/day=01/hour=11/data_20240501_110000_p0000000000o0000000000000000005.parquet",
        ]
    );
    assert_eq!(segments(&store).await, 2, "one segment per commit while they are few");
    let metadata = full(&writer).await;
    assert_eq!(metadata.total_records, 8);
    assert_eq!(metadata.total_bytes, first.bytes + second.bytes);
    assert_eq!(metadata.partitions.len(), 2);
    assert_eq!(metadata.partitions[0].files[0].reason, "rows");
    assert_eq!(metadata.committed_positions, Positions::from([(0, 7)]));
    let data = store.get(&first.path).await.unwrap().bytes().await.unwrap();
    assert_eq!(data.len() as u64, first.bytes);
    let footer = footer(&store, &first.path).await;
    assert_eq!((footer.records, footer.positions), (5, Positions::from([(0, 4)])));
    assert_eq!(footer.runs, Runs::from([(0, vec![(0, 4)])]));
}

#[tokio::test]
async fn local_filesystem_commit_falls_back_to_atomic_overwrite_for_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let lake = crate::lake::open_lake(dir.path().to_str().unwrap(), &Default::default()).unwrap();
    let writer = LakeWriter::new(lake, WriterOptions::default());
    writer.write(&job(10, 0, 5)).await.unwrap();
    writer.write(&job(10, 5, 5)).await.unwrap();
    let hour = dir.path().join("streams/orders/year=2024/month=05/day=01/hour=10");
    let mut files: Vec<String> =
        std::fs::read_dir(&hour).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let text = std::fs::read_to_string(dir.path().join("streams/orders/_metadata.json")).unwrap();
    let root = FeedMetadata::from_json(text.as_bytes()).unwrap();
    assert_eq!((root.total_records, root.total_files, root.manifests.len()), (10, 2, 2));
    assert!(root.partitions.is_empty(), "the root lists segments, not files");
    let metadata = full(&writer).await;
    assert_eq!(metadata.partitions[0].files.len(), 2);
}

/// The first `failures` puts of paths containing `filter` fail; the same encoded file is
/// committed again after each failure (as the commit stage does), which must be retryable and
/// leave nothing visible, until it commits. Returns what committed and the stores.
async fn commit_through_failures(
    filter: &str,
    failures: usize,
) -> (CommittedFile, Arc<FaultyStore>, Arc<dyn ObjectStore>) {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), filter);
    faulty.fail_next_puts(failures);
    let writer = writer_over(faulty.clone());
    let job = job(10, 0, 5);
    let encoded = writer.encode(&job).await.unwrap();
    for _ in 0..failures {
        let error = writer.commit(&job, &encoded).await.unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert!(metadata_bytes(&inner).await.is_none(), "nothing is committed by a failed attempt");
    }
    let committed = writer.commit(&job, &encoded).await.unwrap();
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 5);
    (committed, faulty, inner)
}

#[tokio::test]
async fn a_failed_put_is_retryable_and_the_same_encoded_file_is_written_once() {
    let (committed, faulty, inner) = commit_through_failures(".parquet", 2).await;
    assert_eq!(committed.outcome, CommitOutcome::Written);
    assert_eq!(faulty.puts(), 5, "3 data attempts + 1 manifest segment + 1 root");
    assert_eq!(objects(&inner).await.len(), 2);
}

#[tokio::test]
async fn a_failed_data_write_leaves_no_file_and_the_manifest_untouched() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), ".parquet");
    let writer = writer_over(faulty.clone());
    writer.write(&job(9, 0, 2)).await.unwrap();
    let before_objects = objects(&inner).await;
    let before_metadata = metadata_bytes(&inner).await.unwrap();

    faulty.fail_next_puts(10);
    let pending = job(10, 2, 5);
    let error = writer.write(&pending).await.unwrap_err();
    assert!(matches!(error, WriteError::Put { .. }), "{error:?}");
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
async fn a_failed_manifest_update_is_retryable_and_the_retry_reuses_the_data_file() {
    let (committed, _, inner) = commit_through_failures("_metadata.json", 2).await;
    assert_eq!(committed.outcome, CommitOutcome::ReusedExisting, "found by its footer, not rewritten");
    assert_eq!(objects(&inner).await.len(), 2);
}

#[tokio::test]
async fn replaying_a_committed_job_is_idempotent() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = writer_over(Arc::clone(&store));
    writer.write(&job(10, 0, 5)).await.unwrap();
    let replay = writer.write(&job(10, 0, 5)).await.unwrap();
    assert_eq!(replay.outcome, CommitOutcome::AlreadyCommitted);
    assert_eq!(objects(&store).await.len(), 2);
    let metadata = full(&writer).await;
    assert_eq!(metadata.total_records, 5);
    assert_eq!(metadata.partitions[0].files.len(), 1);
}

#[tokio::test]
async fn a_crash_between_data_file_and_manifest_is_repaired_by_the_replay() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), "_metadata.json");
    faulty.fail_next_puts(100);
    let writer = writer_over(faulty.clone());
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
async fn a_replay_with_other_rows_from_the_same_first_row_gets_its_own_name() {
    // At-least-once after a restart: the same first row, but the buffer held more rows this
    // time. Both files are kept (duplicates are that mode's promise); neither conflicts.
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = writer_over(Arc::clone(&store));
    let first = writer.write(&job(10, 0, 3)).await.unwrap();
    let replay = writer.write(&job(10, 0, 6)).await.unwrap();
    assert_ne!(first.path, replay.path);
    assert_eq!(without_digest(first.path.as_ref()), without_digest(replay.path.as_ref()));
    assert_eq!(replay.outcome, CommitOutcome::Written);
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 9);
}

#[tokio::test]
async fn a_file_under_a_taken_name_with_other_rows_is_replaced_if_unlisted_and_refused_if_listed() {
    // Names carry a digest of the rows, so this takes a damaged or foreign file: one holding
    // other rows under the name of this job.
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::with_filter(Arc::clone(&inner), "_metadata.json");
    faulty.fail_next_puts(100);
    let writer = writer_over(faulty.clone());
    let small = job(10, 0, 3);
    writer.write(&small).await.unwrap_err();

    faulty.fail_next_puts(0);
    let mut bigger = job(10, 0, 6);
    bigger.file_name = small.file_name.clone();
    let committed = writer.write(&bigger).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::ReplacedOrphan);
    assert_eq!(footer(&inner, &committed.path).await.records, 6);
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 6);

    let mut other = job(10, 0, 2);
    other.file_name = small.file_name.clone();
    let error = writer.write(&other).await.unwrap_err();
    assert!(matches!(error, WriteError::Conflict { .. }), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn large_files_use_a_multipart_upload_and_replays_still_detect_them() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let options = WriterOptions { multipart_threshold: 0, ..WriterOptions::default() };
    let writer = LakeWriter::new(Lake::new(Arc::clone(&store), Path::from("lake"), "memory://test"), options);
    let committed = writer.write(&job(10, 0, 50)).await.unwrap();
    assert_eq!(committed.outcome, CommitOutcome::Written);
    let data = store.get(&committed.path).await.unwrap().bytes().await.unwrap();
    assert_eq!(data.len() as u64, committed.bytes);
    assert_eq!(footer(&store, &committed.path).await.records, 50);
    let replay = writer.write(&job(10, 0, 50)).await.unwrap();
    assert_eq!(replay.outcome, CommitOutcome::AlreadyCommitted);
}

#[tokio::test]
async fn a_format_1_manifest_moves_its_files_into_a_segment_at_the_first_commit() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = writer_over(Arc::clone(&store));
    let v1 = r#"{"source": "orders", "kind": "stream", "total_records": 4, "total_size_mb": 0.0, "total_bytes": 40,
        "owner": "team-a",
        "partitions": [{"path": "year=2024/month=04/day=30/hour=23", "records": 4, "size_mb": 0.0, "bytes": 40,
            "files": [{"name": "data_old.parquet", "records": 4, "bytes": 40, "min_event_time": "2024-04-30T23:00:00.000Z",
                "max_event_time": "2024-04-30T23:01:00.000Z", "written_at": "2024-04-30T23:05:00.000Z", "reason": "rows"}]}],
        "committed_positions": {"0": 9}}"#;
    store
        .put(&Path::from("lake/streams/orders/_metadata.json"), PutPayload::from(v1.as_bytes().to_vec()))
        .await
        .unwrap();
    let old = writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    assert_eq!((old.format_version, old.total_files), (1, 1), "format 1 counts its inline files");

    writer.write(&job(10, 10, 2)).await.unwrap();
    let root: serde_json::Value = serde_json::from_slice(&metadata_bytes(&store).await.unwrap()).unwrap();
    assert_eq!(root["format_version"], 2);
    assert!(root.get("partitions").is_none(), "{root}");
    assert_eq!((root["total_files"].as_u64(), root["total_records"].as_u64()), (Some(2), Some(6)));
    assert_eq!(root["owner"], "team-a", "unknown fields stay");
    assert_eq!(root["manifests"].as_array().unwrap().len(), 1, "old and new files in one segment");
    let metadata = full(&writer).await;
    let names: Vec<String> =
        metadata.partitions.iter().flat_map(|p| p.files.iter().map(|f| without_digest(&f.name))).collect();
    assert_eq!(names, ["data_old.parquet", "data_20240501_100000_p0000000000o0000000000000000010.parquet"]);
}

#[tokio::test]
async fn a_writer_clears_only_its_own_mark_and_a_newer_format_is_refused() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let first = writer_over(Arc::clone(&store));
    first.open(FeedKind::Stream, "orders").await.unwrap();
    first.write(&job(10, 0, 2)).await.unwrap();
    let mark = |metadata: Option<FeedMetadata>| metadata.unwrap().open_writer;
    let own =
        mark(first.read_metadata(FeedKind::Stream, "orders").await.unwrap()).expect("the first commit carries it");
    // a second writer takes the feed over (the first one's lease lapsed) and marks it
    let second = writer_over(Arc::clone(&store));
    second.open(FeedKind::Stream, "orders").await.unwrap();
    let theirs = mark(second.read_metadata(FeedKind::Stream, "orders").await.unwrap()).unwrap();
    assert_ne!(own, theirs);
    // the first one's late commit and clean stop leave the second one's mark
    first.write(&job(11, 2, 2)).await.unwrap();
    first.close(FeedKind::Stream, "orders").await.unwrap();
    assert_eq!(mark(first.read_metadata(FeedKind::Stream, "orders").await.unwrap()), Some(theirs));
    second.close(FeedKind::Stream, "orders").await.unwrap();
    assert_eq!(mark(first.read_metadata(FeedKind::Stream, "orders").await.unwrap()), None);

    let path = Path::from("lake/streams/orders/_metadata.json");
    let mut root: serde_json::Value = serde_json::from_slice(&metadata_bytes(&store).await.unwrap()).unwrap();
    root["format_version"] = 3.into();
    store.put(&path, PutPayload::from(serde_json::to_vec(&root).unwrap())).await.unwrap();
    let error = second.write(&job(12, 4, 2)).await.unwrap_err();
    assert!(error.to_string().contains("format 3, written by a newer ksql-lake"), "{error}");
    assert!(!error.is_retryable());
}
