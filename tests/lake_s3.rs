//! The lake against a real S3 API: a moto server on 127.0.0.1. The server comes from the
//! project's Python venv (`$KSQL_LAKE_VENV`, default `<crate>/.venv`), which `scripts/test.sh`
//! creates. A missing venv fails the test: the S3 path is never silently skipped.

mod lake_support;
mod support;

use futures::TryStreamExt;
use ksql_lake::lake::{open_lake, CommitOutcome, FeedKind, LakeWriter, PartitionSpec, Partitioning, WriterOptions};
use lake_support::*;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use support::{s3_options as options, Moto};

const BUCKET: &str = "lake-test";

#[tokio::test]
async fn files_and_manifest_round_trip_through_s3() {
    let mut moto = Moto::start(BUCKET).await;
    let lake = open_lake(&format!("s3://{BUCKET}/warehouse"), &options(&moto.endpoint)).unwrap();
    let store = lake.store().clone();
    let writer = LakeWriter::new(lake, WriterOptions::default());
    let spec = PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC);
    let times = [DAY_MS + 60_000, DAY_MS + 120_000, DAY_MS + HOUR_MS + 60_000];
    let jobs = jobs_for(&orders(&times, 10), spec);
    assert_eq!(jobs.len(), 2);
    let mut committed = Vec::new();
    for job in &jobs {
        // The first write creates the manifest (If-None-Match), the second replaces it with
        // If-Match on its ETag.
        committed.push(writer.write(job).await.unwrap());
    }

    let mut listed: Vec<String> = store
        .list(Some(&Path::from("warehouse/streams/orders")))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    let segments = listed.iter().filter(|name| name.contains("/_manifests/m_")).count();
    assert_eq!(segments, 2, "one manifest segment per commit while they are few: {listed:?}");
    listed.retain(|name| !name.contains("/_manifests/"));
    let listed: Vec<String> = listed.iter().map(|name| ksql_lake::lake::testing::without_digest(name)).collect();
    assert_eq!(
        listed,
        [
            "warehouse/streams/orders/_metadata.json",
            "warehouse/streams/orders/year=2024/month=05/day=01/hour=00/data_20240501_000100_p0000000000o0000000000000000010.parquet",
            "warehouse/streams/orders/year=2024/month=05/day=01/hour=01/data_20240501_010100_p0000000000o0000000000000000012.parquet",
        ]
    );
    let first = store.get(&committed[0].path).await.unwrap().bytes().await.unwrap();
    assert_eq!(order_ids(first), ["order-10", "order-11"]);
    let second = store.get(&committed[1].path).await.unwrap().bytes().await.unwrap();
    assert_eq!(order_ids(second), ["order-12"]);

    let metadata = writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap();
    assert_eq!(metadata.total_records, 3);
    assert_eq!(metadata.total_bytes, committed[0].bytes + committed[1].bytes);
    assert_eq!(metadata.committed_positions.get(&0), Some(&12));

    // A replay of the same rows is recognised: no second copy, counted once.
    let replay = writer.write(&jobs_for(&orders(&times[..2], 10), spec)[0]).await.unwrap();
    assert_eq!(replay.outcome, CommitOutcome::AlreadyCommitted);
    assert_eq!(writer.read_metadata(FeedKind::Stream, "orders").await.unwrap().unwrap().total_records, 3);

    moto.stop().await;
}

#[tokio::test]
async fn create_only_puts_are_enforced_by_s3() {
    let mut moto = Moto::start(BUCKET).await;
    let lake = open_lake(&format!("s3://{BUCKET}"), &options(&moto.endpoint)).unwrap();
    let store = lake.store().clone();
    let writer = LakeWriter::new(lake, WriterOptions::default());
    let spec = PartitionSpec::default();
    let job = jobs_for(&orders(&[DAY_MS], 0), spec).pop().unwrap();
    let committed = writer.write(&job).await.unwrap();
    assert_eq!(committed.path.as_ref(), format!("streams/orders/year=2024/month=05/day=01/{}", job.file_name));
    let before = store.head(&committed.path).await.unwrap();
    let again = store
        .put_opts(
            &committed.path,
            bytes::Bytes::from_static(b"x").into(),
            object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() },
        )
        .await;
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    assert_eq!(store.head(&committed.path).await.unwrap().size, before.size);
    moto.stop().await;
}

/// The manifest model on S3: 90 commits (two tiers of segment merges) with a failed root put,
/// a lost response, a lost race and crashes at each put of a commit, the root's conditional
/// puts checked by the server's ETags.
#[tokio::test]
async fn the_manifest_model_holds_on_s3() {
    let mut moto = Moto::start(BUCKET).await;
    let lake = open_lake(&format!("s3://{BUCKET}"), &options(&moto.endpoint)).unwrap();
    let faults = [
        Fault::RootFails,
        Fault::RootLandsThenFails,
        Fault::LostRace,
        Fault::RootLandsThenRaceLost,
        Fault::SegmentLandsThenFails,
        Fault::CrashAfter(0),
        Fault::CrashAfter(1),
        Fault::CrashAfter(2),
        Fault::CrashAfter(3),
    ];
    let steps: Vec<(u8, Fault)> = (0..90)
        .map(|n: usize| ((n * 7 % 30) as u8, if n % 11 == 5 { faults[n / 11 % faults.len()] } else { Fault::None }))
        .collect();
    manifest_model(lake.store().clone(), "model", &steps).await;
    moto.stop().await;
}
