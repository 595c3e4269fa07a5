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

/// What happens to one commit of the manifest model, before it goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The root's put fails before it reaches the store; the commit is retried.
    RootFails,
    /// The root's put reaches the store but its response is lost; the commit is retried.
    RootLandsThenFails,
    /// Another writer seems to win the race for the root once.
    LostRace,
    /// The root's put lands, and the store's retry of it answers that the root changed.
    RootLandsThenRaceLost,
    /// A manifest segment's put lands but its response is lost; the commit is retried.
    SegmentLandsThenFails,
    /// The process dies after this many more puts (data file, segment, root, …); a new one
    /// starts over the same lake and reconciles.
    CrashAfter(usize),
}

/// The manifest model: commits one row per step into hour `hour` of 2024-05-01 of feed
/// `orders` under `prefix`, with each step's fault, restarting after every crash as the
/// pipeline does (reconcile, then a writer that marks the manifest). Then checks, against an
/// oracle of what each step committed:
/// - the manifest (read as the writer reads it, and as `docs/METADATA.md` tells readers to)
///   lists exactly the committed files, each once, with the right totals;
/// - every data file in the lake is listed, and every segment is named by the root;
/// - the root lists few segments, and a start-up after the clean stop lists nothing.
pub async fn manifest_model(inner: std::sync::Arc<dyn object_store::ObjectStore>, prefix: &str, steps: &[(u8, Fault)]) {
    use futures::TryStreamExt;
    use ksql_lake::lake::testing::FaultyStore;
    use ksql_lake::lake::{reconcile, CommitState, FeedKind, Lake, LakeWriter, Runs, WriterOptions};
    use object_store::path::Path;
    use object_store::ObjectStoreExt;
    use std::collections::BTreeMap;

    let start = |inner: &std::sync::Arc<dyn object_store::ObjectStore>| {
        let segments = FaultyStore::with_filter(inner.clone(), "/_manifests/");
        let faulty = FaultyStore::with_filter(segments.clone(), "_metadata.json");
        let lake = Lake::new(faulty.clone(), Path::from(prefix), "model");
        (faulty, segments, lake.clone(), LakeWriter::new(lake, WriterOptions::default()))
    };
    let (mut faulty, mut segments, mut lake, mut writer) = start(&inner);
    writer.open(FeedKind::Stream, "orders").await.unwrap();
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    let spec = PartitionSpec::new(ksql_lake::lake::Partitioning::Hourly, chrono_tz::UTC);
    for (step, &(hour, fault)) in steps.iter().enumerate() {
        let offset = step as u64;
        let mut job = jobs_for(&orders(&[DAY_MS + hour as i64 * HOUR_MS + step as i64], offset), spec).remove(0);
        job.runs = Runs::from([(0, vec![(offset, offset)])]);
        job.commit = CommitState { ranges: job.runs.clone(), ..CommitState::default() };
        let relative = job.relative_path();
        let data_path = lake.feed_path(FeedKind::Stream, "orders", &relative).unwrap();
        let encoded = writer.encode(&job).await.unwrap();
        match fault {
            Fault::None => {}
            Fault::RootFails => faulty.fail_next_puts(1),
            Fault::RootLandsThenFails => faulty.land_then_fail_next_puts(1),
            Fault::LostRace => faulty.lose_next_races(1),
            Fault::RootLandsThenRaceLost => faulty.land_then_lose_next_races(1),
            Fault::SegmentLandsThenFails => segments.land_then_fail_next_puts(1),
            Fault::CrashAfter(puts) => faulty.crash_after_puts(puts),
        }
        let first = writer.commit(&job, &encoded).await;
        match fault {
            Fault::None | Fault::LostRace | Fault::RootLandsThenRaceLost => {
                first.unwrap();
            }
            Fault::RootFails | Fault::RootLandsThenFails | Fault::SegmentLandsThenFails => {
                assert!(first.unwrap_err().is_retryable());
                writer.commit(&job, &encoded).await.unwrap();
            }
            Fault::CrashAfter(_) => {
                // the process dies there, whether or not the commit got through
                (faulty, segments, lake, writer) = start(&inner);
                reconcile(&lake, FeedKind::Stream, "orders").await.unwrap();
                writer.open(FeedKind::Stream, "orders").await.unwrap();
                if first.is_err() && inner.head(&data_path).await.is_err() {
                    continue; // the row was never written: a replay would bring it again
                }
            }
        }
        committed.insert(relative, 1);
    }
    writer.close(FeedKind::Stream, "orders").await.unwrap();

    let root_path = Path::from(format!("{prefix}/streams/orders/_metadata.json"));
    let (full, _) = ksql_lake::lake::manifests::load_full(inner.as_ref(), &root_path).await.unwrap().unwrap();
    let listed = |partitions: Vec<(String, Vec<(String, u64)>)>| {
        let mut files = BTreeMap::new();
        for (path, names) in partitions {
            for (name, records) in names {
                assert!(files.insert(format!("{path}/{name}"), records).is_none(), "{path}/{name} listed twice");
            }
        }
        files
    };
    let by_writer = listed(
        full.partitions
            .iter()
            .map(|p| (p.path.clone(), p.files.iter().map(|f| (f.name.clone(), f.records)).collect()))
            .collect(),
    );
    assert_eq!(by_writer, committed, "the manifest lists exactly the committed files");
    assert_eq!(full.total_records, committed.len() as u64);
    assert_eq!(full.total_files, committed.len() as u64);
    assert!(full.open_writer.is_none(), "the clean stop cleared the mark");
    for partition in &full.partitions {
        let (records, bytes) = partition.files.iter().fold((0, 0), |(r, b), f| (r + f.records, b + f.bytes));
        assert_eq!(
            (partition.records, partition.bytes),
            (records, bytes),
            "{}: its sums are its files'",
            partition.path
        );
    }
    let bytes: u64 = full.partitions.iter().flat_map(|p| &p.files).map(|f| f.bytes).sum();
    assert_eq!(full.total_bytes, bytes, "the root's total is the files' bytes");

    let feed_dir = Path::from(format!("{prefix}/streams/orders"));
    let metas: Vec<_> = inner.list(Some(&feed_dir)).try_collect().await.unwrap();
    let mut objects = Vec::new();
    for meta in &metas {
        let relative = meta.location.as_ref()[feed_dir.as_ref().len() + 1..].to_string();
        objects.push((relative, inner.get(&meta.location).await.unwrap().bytes().await.unwrap()));
    }
    let json = ksql_lake::lake::testing::expanded_manifest(&objects);
    let by_reader = listed(
        json["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let files = p["files"].as_array().unwrap();
                (
                    p["path"].as_str().unwrap().to_string(),
                    files
                        .iter()
                        .map(|f| (f["name"].as_str().unwrap().to_string(), f["records"].as_u64().unwrap()))
                        .collect(),
                )
            })
            .collect(),
    );
    assert_eq!(by_reader, committed, "a reader following the documented format sees the same files");
    let data: Vec<&String> = objects.iter().map(|(relative, _)| relative).filter(|r| r.ends_with(".parquet")).collect();
    assert_eq!(data, committed.keys().collect::<Vec<_>>(), "no data file is left unlisted");
    let named: Vec<String> = json["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(json["retired_manifests"].as_array().into_iter().flatten())
        .map(|segment| segment["path"].as_str().unwrap().to_string())
        .collect();
    for (relative, _) in &objects {
        if ksql_lake::lake::testing::is_segment(relative) {
            assert!(named.iter().any(|name| name == relative), "{relative} is garbage no root names");
        }
    }
    assert!(full.manifests.len() <= committed.len() / 4096 + 28, "{} segments listed", full.manifests.len());

    // A start-up after the clean stop has nothing to look for: it lists nothing.
    let (faulty, _, lake, _) = start(&inner);
    let report = reconcile(&lake, FeedKind::Stream, "orders").await.unwrap();
    assert!(!report.changed());
    assert_eq!(faulty.lists(), 0, "a clean start-up does not list the feed's history");
}
