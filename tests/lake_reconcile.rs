//! Crash recovery: orphans adopted from their footers, staged files removed, manifests rebuilt.

mod lake_support;

use std::sync::Arc;

use bytes::Bytes;
use ksql_lake::lake::metadata::FeedMetadata;
use ksql_lake::lake::{
    encode, open_lake, rebuild, reconcile, CommitState, FeedKind, FileInfo, Lake, LakeWriter, ParquetOptions,
    PartitionSpec, Partitioning, Positions, Runs, S3Options, WriterOptions,
};
use ksql_lake::lake::{ADOPTED_REASON, BACKUP_FILE, REBUILT_REASON};
use lake_support::{jobs_for, orders, DAY_MS, HOUR_MS};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const FEED: &str = "orders";
const MINUTE_MS: i64 = 60_000;

fn spec() -> PartitionSpec {
    PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC)
}

/// `rows` event times in hour `hour` of 2024-05-01, a minute apart.
fn times(hour: i64, rows: i64) -> Vec<i64> {
    (0..rows).map(|row| DAY_MS + hour * HOUR_MS + row * MINUTE_MS).collect()
}

fn hour_dir(hour: i64) -> String {
    format!("year=2024/month=05/day=01/hour={hour:02}")
}

/// Commits `rows` rows (offsets from `first_offset`, partition 0) through the writer, with the
/// runs and commit state the pipeline would set.
async fn commit(writer: &LakeWriter, hour: i64, first_offset: u64, rows: i64, low: Option<u64>) {
    let mut jobs = jobs_for(&orders(&times(hour, rows), first_offset), spec());
    assert_eq!(jobs.len(), 1);
    let mut job = jobs.remove(0);
    let last = first_offset + rows as u64 - 1;
    job.runs = Runs::from([(0, vec![(first_offset, last)])]);
    let mut state = CommitState::default();
    match low {
        Some(low) => state.raise_low(0, low),
        None => state.ranges = job.runs.clone(),
    }
    job.commit = state;
    writer.write(&job).await.unwrap();
}

/// Puts a data file WITHOUT updating the manifest, as a crash after the data put leaves it.
async fn put_orphan(lake: &Lake, feed: &str, hour: i64, first_offset: u64, rows: i64, with_runs: bool) -> Path {
    let batch = orders(&times(hour, rows), first_offset).batch;
    let last = first_offset + rows as u64 - 1;
    let info = FileInfo {
        feed: feed.into(),
        kind: FeedKind::Stream,
        positions: Positions::from([(0, last)]),
        runs: if with_runs { Runs::from([(0, vec![(first_offset, last)])]) } else { Runs::new() },
        min_event_ms: times(hour, rows)[0],
        max_event_ms: *times(hour, rows).last().unwrap(),
    };
    let encoded = encode(&[batch], &info, &ParquetOptions::default()).unwrap();
    let name = format!("{}/data_20240501_{hour:02}0000_orphan{first_offset}.parquet", hour_dir(hour));
    let path = lake.feed_path(FeedKind::Stream, FEED, &name).unwrap();
    lake.store().put(&path, PutPayload::from(encoded.bytes)).await.unwrap();
    path
}

/// The root's bytes, and the manifest with its whole file list.
async fn manifest(lake: &Lake) -> (Bytes, FeedMetadata) {
    let path = lake.metadata_path(FeedKind::Stream, FEED).unwrap();
    let bytes = lake.store().get(&path).await.unwrap().bytes().await.unwrap();
    let (metadata, _) = ksql_lake::lake::manifests::load_full(lake.store().as_ref(), &path).await.unwrap().unwrap();
    (bytes, metadata)
}

/// A writer that runs the feed, as the pipeline's: it marks the manifest, so a start-up after
/// it (it "crashed": it is never closed) looks for what it left.
async fn running_writer(lake: &Lake) -> LakeWriter {
    let writer = LakeWriter::new(lake.clone(), WriterOptions::default());
    writer.open(FeedKind::Stream, FEED).await.unwrap();
    writer
}

fn file_names(metadata: &FeedMetadata) -> Vec<String> {
    let mut names: Vec<String> = metadata
        .partitions
        .iter()
        .flat_map(|p| p.files.iter().map(move |f| format!("{}/{}", p.path, f.name)))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn reconcile_adopts_orphans_removes_staged_files_and_leaves_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let writer = running_writer(&lake).await;
    commit(&writer, 0, 0, 5, Some(4)).await;
    commit(&writer, 1, 5, 5, Some(9)).await;
    let (_, before) = manifest(&lake).await;
    assert_eq!((before.total_records, before.committed_positions.clone()), (10, Positions::from([(0, 9)])));

    // Crash 1: a complete file of offsets 20..=24 that the manifest does not list, and the
    // staged file of a put that never got renamed.
    let orphan = put_orphan(&lake, FEED, 2, 20, 5, true).await;
    let staged_disk = dir.path().join(format!("{orphan}#3"));
    std::fs::write(&staged_disk, b"half a parquet file").unwrap();
    // A truncated data file.
    let garbage = lake.feed_path(FeedKind::Stream, FEED, &format!("{}/data_garbage.parquet", hour_dir(3))).unwrap();
    lake.store().put(&garbage, PutPayload::from(Bytes::from_static(b"PAR1 truncated"))).await.unwrap();

    let report = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert_eq!(report.adopted, vec![orphan.to_string()]);
    assert_eq!(report.removed_temp, vec![format!("{orphan}#3")]);
    assert_eq!(report.unreadable, vec![garbage.to_string()]);
    assert!(!staged_disk.exists(), "the staged file is removed");
    assert!(dir.path().join(garbage.as_ref()).is_file(), "an unreadable file is never deleted");

    let (bytes, after) = manifest(&lake).await;
    assert_eq!(after.total_records, 15);
    let orphan_size = lake.store().head(&orphan).await.unwrap().size;
    assert_eq!(after.total_bytes, before.total_bytes + orphan_size);
    let hour2 = after.partition(&hour_dir(2)).expect("the orphan's partition is listed");
    assert_eq!(hour2.records, 5);
    let entry = &hour2.files[0];
    assert_eq!((entry.reason.as_str(), entry.records, entry.bytes), (ADOPTED_REASON, 5, orphan_size));
    assert_eq!(entry.runs, Runs::from([(0, vec![(20, 24)])]));
    assert_eq!(entry.positions, Positions::from([(0, 24)]));
    assert_eq!(entry.min_event_time, "2024-05-01T02:00:00.000Z");
    assert_eq!(entry.max_event_time, "2024-05-01T02:04:00.000Z");
    // Offsets 10..=19 are not committed: the watermark stays, the run is recorded above it.
    assert_eq!(after.committed_positions, Positions::from([(0, 9)]));
    assert_eq!(after.committed_ranges, Runs::from([(0, vec![(20, 24)])]));
    assert!(after.partition(&hour_dir(3)).is_none());
    assert_eq!(after.schema, before.schema, "same schema, no new version");
    assert_eq!(after.schema_history.len(), 1);

    // A second pass changes nothing, not even the manifest's bytes.
    let again = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert!(again.adopted.is_empty() && again.removed_temp.is_empty());
    assert_eq!(again.unreadable, vec![garbage.to_string()]);
    assert!(!again.changed());
    assert_eq!(manifest(&lake).await.0, bytes);

    // Crash 2: the missing offsets 10..=19 turn up; the watermark absorbs everything.
    let second = put_orphan(&lake, FEED, 4, 10, 10, true).await;
    let report = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert_eq!(report.adopted, vec![second.to_string()]);
    let (_, last) = manifest(&lake).await;
    assert_eq!(last.total_records, 25);
    assert_eq!(last.committed_positions, Positions::from([(0, 24)]));
    assert!(last.committed_ranges.is_empty());
}

#[tokio::test]
async fn rebuild_from_the_files_matches_the_manifest_and_keeps_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let writer = running_writer(&lake).await;
    commit(&writer, 0, 0, 5, Some(4)).await;
    commit(&writer, 1, 5, 5, Some(9)).await;
    put_orphan(&lake, FEED, 2, 20, 5, true).await;
    reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    let (old_bytes, expected) = manifest(&lake).await;

    let rebuilt = rebuild(&lake, FeedKind::Stream, FEED).await.unwrap();
    let backup = lake.feed_path(FeedKind::Stream, FEED, BACKUP_FILE).unwrap();
    assert_eq!(lake.store().get(&backup).await.unwrap().bytes().await.unwrap(), old_bytes);
    assert_eq!(manifest(&lake).await.1, rebuilt, "what is returned is what was written");

    assert_eq!(file_names(&rebuilt), file_names(&expected));
    assert_eq!(file_names(&rebuilt).len(), 3);
    assert_eq!((rebuilt.total_records, rebuilt.total_bytes), (expected.total_records, expected.total_bytes));
    assert_eq!(rebuilt.total_size_mb, expected.total_size_mb);
    assert_eq!(rebuilt.committed_positions, expected.committed_positions);
    assert_eq!(rebuilt.committed_ranges, expected.committed_ranges);
    assert_eq!(rebuilt.committed_ranges, Runs::from([(0, vec![(20, 24)])]));
    assert_eq!(rebuilt.schema.as_ref().map(|s| &s.columns), expected.schema.as_ref().map(|s| &s.columns));
    assert_eq!(rebuilt.schema_history.len(), 1);
    assert_eq!(rebuilt.schema.as_ref().unwrap().columns[0].ksql_type.as_deref(), Some("TIMESTAMP"));
    for partition in &expected.partitions {
        let other = rebuilt.partition(&partition.path).unwrap();
        assert_eq!((other.records, other.bytes), (partition.records, partition.bytes), "{}", partition.path);
        assert_eq!(
            (&other.min_event_time, &other.max_event_time),
            (&partition.min_event_time, &partition.max_event_time)
        );
        for file in &partition.files {
            let found = other.files.iter().find(|f| f.name == file.name).unwrap();
            assert_eq!(found.reason, REBUILT_REASON);
            assert_eq!(
                (
                    found.records,
                    found.bytes,
                    &found.min_event_time,
                    &found.max_event_time,
                    &found.positions,
                    &found.runs
                ),
                (file.records, file.bytes, &file.min_event_time, &file.max_event_time, &file.positions, &file.runs),
                "{}",
                file.name
            );
        }
    }

    // Without a manifest there is nothing to back up; an old backup is not touched.
    lake.store().delete(&lake.metadata_path(FeedKind::Stream, FEED).unwrap()).await.unwrap();
    lake.store().delete(&backup).await.unwrap();
    let again = rebuild(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert_eq!(file_names(&again), file_names(&expected));
    assert!(matches!(lake.store().head(&backup).await, Err(object_store::Error::NotFound { .. })));
}

#[tokio::test]
async fn in_memory_lakes_reconcile_with_conditional_updates_and_rebuild_without_a_start_at_zero() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let lake = Lake::new(Arc::clone(&store), Path::from("lake"), "memory");
    // No manifest at all yet: two orphans whose runs do not start at offset 0, one file of
    // another feed that was copied here, and one written before runs existed.
    let first = put_orphan(&lake, FEED, 0, 100, 5, true).await;
    let second = put_orphan(&lake, FEED, 1, 105, 5, true).await;
    let foreign = put_orphan(&lake, "payments", 2, 0, 3, true).await;

    let report = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    let mut adopted = report.adopted.clone();
    adopted.sort();
    assert_eq!(adopted, vec![first.to_string(), second.to_string()]);
    assert_eq!(report.unreadable, vec![foreign.to_string()], "a file of another feed is not adopted");
    assert!(report.removed_temp.is_empty());
    let (_, metadata) = manifest(&lake).await;
    assert_eq!(metadata.total_records, 10);
    assert!(metadata.committed_positions.is_empty(), "offsets 0..=99 may be missing: no watermark");
    assert_eq!(metadata.committed_ranges, Runs::from([(0, vec![(100, 109)])]));

    // Adoption on top of an existing manifest goes through a conditional update. (A writer ran
    // and crashed again: it marked the manifest first.)
    running_writer(&lake).await;
    let legacy = put_orphan(&lake, FEED, 3, 110, 2, false).await;
    let report = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert_eq!(report.adopted, vec![legacy.to_string()]);
    let (_, metadata) = manifest(&lake).await;
    assert_eq!(metadata.total_records, 12);
    // A file without runs raises the watermark to its highest offset, as before runs existed.
    assert_eq!(metadata.committed_positions, Positions::from([(0, 111)]));
    assert!(metadata.committed_ranges.is_empty(), "runs below the watermark are dropped");

    let rebuilt = rebuild(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert_eq!(file_names(&rebuilt), file_names(&metadata));
    assert_eq!(rebuilt.committed_positions, Positions::from([(0, 111)]));
    assert!(rebuilt.committed_ranges.is_empty());
}

#[tokio::test]
async fn a_dead_letter_file_a_crash_left_unlisted_is_adopted_with_its_rows() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let lake = Lake::new(store, Path::from("lake"), "memory");
    let writer = running_writer(&lake).await;
    commit(&writer, 10, 0, 10, Some(9)).await;
    // Rows 10 and 11 could not be decoded; their dead-letter file was put, the manifest not.
    let lines = "{\"feed\":\"orders\",\"error_type\":\"frame\",\"partition\":0,\"offset\":10,\"raw\":\"[1,\"}\n\
                 {\"feed\":\"orders\",\"error_type\":\"frame\",\"partition\":null,\"offset\":null,\"raw\":\"x]\"}\n\
                 {\"feed\":\"orders\",\"error_type\":\"value\",\"partition\":0,\"offset\":11,\"raw\":\"[\\\"a\\\"]\"}\n";
    let relative = "year=2024/month=05/day=01/rejected_20240501_100000_p0000000000o0000000000000000010.jsonl";
    let path = lake.dead_letter_path(FEED, relative).unwrap();
    lake.store().put(&path, PutPayload::from(lines.as_bytes().to_vec())).await.unwrap();

    let report = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert_eq!(report.adopted, [path.to_string()]);
    let (_, metadata) = manifest(&lake).await;
    assert_eq!(metadata.dead_letter.records, 3);
    assert_eq!(metadata.dead_letter.files[0].path, relative);
    assert_eq!(metadata.committed_positions, Positions::from([(0, 11)]), "its rows are committed: not read again");
    // Reconciling again changes nothing.
    assert!(!reconcile(&lake, FeedKind::Stream, FEED).await.unwrap().changed());
}

#[tokio::test]
async fn a_file_repeating_committed_rows_is_adopted_only_where_duplicates_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let writer = running_writer(&lake).await;
    commit(&writer, 0, 0, 10, Some(9)).await;
    // Offsets 5..=14: an at-least-once replay cut off before its commit repeats 5..=9.
    let orphan = put_orphan(&lake, FEED, 1, 5, 10, true).await;
    let report = ksql_lake::lake::reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    assert!(report.adopted.is_empty(), "exactly-once never lists a row twice");
    assert_eq!(manifest(&lake).await.1.total_records, 10);
    let report = ksql_lake::lake::reconcile_with(&lake, FeedKind::Stream, FEED, true).await.unwrap();
    assert_eq!(report.adopted, vec![orphan.to_string()]);
    let (_, after) = manifest(&lake).await;
    assert_eq!(after.total_records, 20, "its rows count, the repeated ones twice");
    assert_eq!(after.committed_positions, Positions::from([(0, 14)]));
}
