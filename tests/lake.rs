//! The lake end to end through its public API: batches → partitions → buffers → Parquet files
//! and `_metadata.json`, on local disk and in memory.

mod lake_support;

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use ksql_lake::lake::testing::{self, TestFeed};
use ksql_lake::lake::{
    open_lake, CommitOutcome, FeedKind, FlushPolicy, FlushReason, Lake, LakeWriter, MemoryBudget, PartitionSpec,
    Partitioning, Positions, S3Options, WriterOptions,
};
use lake_support::*;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

#[tokio::test]
async fn rows_spanning_three_hours_land_in_three_local_hour_folders() {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(&format!("file://{}", dir.path().join("lake").display()), &S3Options::default()).unwrap();
    let writer = LakeWriter::new(lake, WriterOptions::default());
    // 22:30, 23:10, 23:50 UTC on Apr 30 and 00:05 UTC May 1 → Berlin (UTC+2) 00, 01, 01, 02 on May 1.
    let times = [DAY_MS - 90 * 60_000, DAY_MS - 50 * 60_000, DAY_MS - 10 * 60_000, DAY_MS + 5 * 60_000];
    let spec = PartitionSpec::new(Partitioning::Hourly, chrono_tz::Europe::Berlin);
    let jobs = jobs_for(&orders(&times, 100), spec);
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        writer.write(job).await.unwrap();
    }

    let feed = dir.path().join("lake/streams/orders");
    let hour1 = feed.join("year=2024/month=05/day=01/hour=01");
    let names: Vec<String> =
        std::fs::read_dir(&hour1).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    // Named after the first row (01:10 Berlin) and its position.
    assert_eq!(names.len(), 1);
    assert_eq!(testing::without_digest(&names[0]), "data_20240501_011000_p0000000000o0000000000000000101.parquet");
    let bytes = bytes::Bytes::from(std::fs::read(hour1.join(&names[0])).unwrap());
    assert_eq!(order_ids(bytes), ["order-101", "order-102"]);
    assert!(feed.join("year=2024/month=05/day=01/hour=00").is_dir());
    assert!(feed.join("year=2024/month=05/day=01/hour=02").is_dir());

    let root: serde_json::Value = serde_json::from_slice(&std::fs::read(feed.join("_metadata.json")).unwrap()).unwrap();
    assert_eq!(root["format_version"], 2);
    assert_eq!(root["total_files"], 3);
    assert!(root.get("partitions").is_none(), "the files are listed in the segments");
    let mut objects = Vec::new();
    for relative in ["_metadata.json".to_string()]
        .into_iter()
        .chain(root["manifests"].as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap().to_string()))
    {
        objects.push((relative.clone(), bytes::Bytes::from(std::fs::read(feed.join(&relative)).unwrap())));
    }
    let metadata = ksql_lake::lake::testing::expanded_manifest(&objects);
    assert_eq!(metadata["source"], "orders");
    assert_eq!(metadata["kind"], "stream");
    assert_eq!(metadata["total_records"], 4);
    assert_eq!(metadata["committed_positions"]["0"], 103);
    assert_eq!(metadata["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(metadata["partitions"][1]["path"], "year=2024/month=05/day=01/hour=01");
    assert_eq!(metadata["partitions"][1]["files"][0]["reason"], "shutdown");
    assert_eq!(metadata["schema"]["columns"][0]["ksql_type"], "TIMESTAMP");
}

#[tokio::test(start_paused = true)]
async fn an_idle_partition_flushes_by_age_and_the_budget_is_released_after_commit() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = LakeWriter::new(Lake::new(Arc::clone(&store), Path::from(""), "memory"), WriterOptions::default());
    let budget = MemoryBudget::new(1 << 30);
    let spec = PartitionSpec::new(Partitioning::Daily, chrono_tz::UTC);
    let mut feed = TestFeed::new(spec, FlushPolicy::default(), Arc::clone(&budget), DAY_MS + HOUR_MS);
    assert!(feed.push(&orders(&[DAY_MS + 60_000], 0)).is_empty());
    assert!(budget.used() > 0);
    tokio::time::advance(Duration::from_secs(299)).await;
    assert!(feed.drain_ready().is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let jobs = feed.drain_ready();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].reason, FlushReason::Age);
    let committed = writer.write(&jobs[0]).await.unwrap();
    feed.buffers.learn_compression(committed.in_memory_bytes, committed.bytes);
    assert_ne!(feed.buffers.compression_ratio(), 0.25);
    assert!(budget.used() > 0, "still reserved until the job is dropped");
    drop(jobs);
    assert_eq!(budget.used(), 0);
    let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 3, "data file, manifest segment, root: {listed:?}");
}

#[tokio::test]
async fn memory_pressure_drains_the_largest_partition_and_wakes_the_reader() {
    let budget = MemoryBudget::new(1);
    let spec = PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC);
    let mut feed = TestFeed::new(spec, FlushPolicy::default(), Arc::clone(&budget), DAY_MS);
    let times: Vec<i64> = (0..40).map(|i| DAY_MS + if i < 30 { 0 } else { HOUR_MS }).collect();
    assert!(feed.push(&orders(&times, 0)).is_empty());
    assert!(budget.over_budget());
    let reader = {
        let budget = Arc::clone(&budget);
        tokio::spawn(async move { budget.wait_for_room().await })
    };
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let writer = LakeWriter::new(Lake::new(store, Path::from("x"), "memory"), WriterOptions::default());
    while budget.over_budget() {
        let Some(job) = feed.buffers.drain_largest() else { break };
        assert_eq!(job.reason, FlushReason::Memory);
        let committed = writer.write(&job).await.unwrap();
        assert_eq!(committed.reason, FlushReason::Memory);
        drop(job);
    }
    assert_eq!(feed.buffers.open_partitions(), 0);
    tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
    let metadata = writer.read_full_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    // The 30-row hour went first.
    assert_eq!(metadata.partitions[0].records, 30);
    assert_eq!(metadata.committed_positions, Positions::from([(0, 39)]));
}

#[tokio::test]
async fn replaying_after_restart_resumes_from_the_manifest_and_counts_once() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let lake = Lake::new(Arc::clone(&store), Path::from("lake"), "memory");
    let spec = PartitionSpec::default();
    let times = [DAY_MS + 1, DAY_MS + 2, DAY_MS + 3];
    let writer = LakeWriter::new(lake.clone(), WriterOptions::default());
    for job in jobs_for(&orders(&times, 0), spec) {
        writer.write(&job).await.unwrap();
    }
    // A new process reads where to resume, and the source replays the same rows.
    let restarted = LakeWriter::new(lake, WriterOptions::default());
    let resume = restarted.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().committed_positions;
    assert_eq!(resume, Positions::from([(0, 2)]));
    for job in jobs_for(&orders(&times, 0), spec) {
        assert_eq!(restarted.write(&job).await.unwrap().outcome, CommitOutcome::AlreadyCommitted);
    }
    let files: Vec<_> = store.list(Some(&Path::from("lake/streams/orders"))).try_collect().await.unwrap();
    assert_eq!(files.len(), 3, "data file, manifest segment, root: {files:?}");
    let metadata = restarted.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    assert_eq!(metadata.total_records, 3);
    let raw = store.get(&Path::from("lake/streams/orders/_metadata.json")).await.unwrap().bytes().await.unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&raw).is_ok());
}
