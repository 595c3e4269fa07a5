//! Table feeds as versioned snapshots: every version equals the table at its time (deletes
//! included, by either method), versions are numbered from storage, retention never deletes
//! the newest complete version, and a crash at any put of a snapshot leaves the previous
//! version as the latest with nothing half-written left once the next snapshot starts.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use futures::TryStreamExt;
use ksql_lake::config::{Config, SnapshotMethod};
use ksql_lake::ksqldb::{ClientConfig, KsqlClient};
use ksql_lake::lake::metadata::FeedMetadata;
use ksql_lake::lake::testing::FaultyStore;
use ksql_lake::lake::{Lake, SnapshotWriter};
use ksql_lake::pipeline::table::{self, TableSettings};
use ksql_lake::simulator::{Simulator, SimulatorConfig, SimulatorHandle, Value};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use support::users_table;
use tokio_util::sync::CancellationToken;

const FEED: &str = "users";
const WAIT: Duration = Duration::from_secs(60);
/// The snapshot lease in the crash test: long enough never to need a renewal, short enough to
/// wait out a dead writer's.
const LEASE: Duration = Duration::from_millis(1500);

/// The table's current rows: ID → SCORE.
type Oracle = BTreeMap<String, i32>;

/// Random upserts and deletes over 60 keys, applied to the table and to the oracle.
fn random_changes(sim: &Simulator, oracle: &mut Oracle, rng: &mut rand::rngs::StdRng, changes: usize, time: &mut i64) {
    for _ in 0..changes {
        let id = format!("u{:02}", rng.random_range(0..60));
        *time += 1;
        if rng.random_bool(0.3) {
            sim.delete("USERS", vec![Value::string(&id)], *time).unwrap();
            oracle.remove(&id);
        } else {
            let score = rng.random_range(-1000..1000);
            sim.produce(
                "USERS",
                None,
                *time,
                vec![Value::string(&id), Value::string(format!("name-{id}")), Value::Integer(score)],
            )
            .unwrap();
            oracle.insert(id, score);
        }
    }
}

fn client(handle: &SimulatorHandle) -> KsqlClient {
    KsqlClient::new(ClientConfig::new(handle.url().parse().unwrap())).unwrap()
}

fn local_lake(dir: &std::path::Path, store: Option<Arc<dyn ObjectStore>>) -> Lake {
    let store = store.unwrap_or_else(|| Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap()));
    Lake::new(store, Path::default(), dir.display().to_string())
}

fn settings(method: SnapshotMethod, file_rows: usize) -> TableSettings {
    TableSettings {
        feed: FEED.into(),
        source: "USERS".into(),
        method,
        file_rows,
        file_bytes: 64 << 20,
        idle: Duration::from_millis(300),
        first_row: Duration::from_secs(5),
        budget_bytes: 64 << 20,
    }
}

fn writer(lake: &Lake, retention: usize) -> SnapshotWriter {
    SnapshotWriter::new(lake.clone(), FEED, Default::default(), retention).unwrap()
}

async fn snapshot(
    client: &KsqlClient,
    writer: &SnapshotWriter,
    settings: &TableSettings,
) -> Result<table::SnapshotSummary, table::TableError> {
    tokio::time::timeout(WAIT, table::snapshot(client, writer, settings, &CancellationToken::new()))
        .await
        .expect("a snapshot finishes within 60 s")
}

async fn manifest(lake: &Lake) -> FeedMetadata {
    let path = lake.metadata_path(ksql_lake::lake::FeedKind::Table, FEED).unwrap();
    let bytes = lake.store().get(&path).await.unwrap().bytes().await.unwrap();
    FeedMetadata::from_json(&bytes).unwrap()
}

/// The version folders in storage.
async fn stored_versions(lake: &Lake) -> Vec<u32> {
    writer(lake, 1).stored_versions().await.unwrap()
}

/// ID → SCORE as the latest version's files hold them, read the way a reader following the
/// manifest reads them.
async fn latest_rows(lake: &Lake) -> Oracle {
    let metadata = manifest(lake).await;
    let latest = metadata.latest().expect("a latest version");
    let mut rows = Oracle::new();
    for file in &latest.files {
        let path =
            lake.feed_path(ksql_lake::lake::FeedKind::Table, FEED, &format!("{}/{}", latest.path, file.name)).unwrap();
        let bytes = lake.store().get(&path).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        let read: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(read as u64, file.records, "{} holds what the manifest says", file.name);
        for batch in batches {
            let ids = batch.column_by_name("ID").unwrap().as_string::<i32>();
            let scores = batch.column_by_name("SCORE").unwrap().as_primitive::<Int32Type>();
            for row in 0..batch.num_rows() {
                assert!(
                    rows.insert(ids.value(row).to_string(), scores.value(row)).is_none(),
                    "a key twice in one version"
                );
            }
        }
    }
    assert_eq!(rows.len() as u64, latest.records);
    rows
}

/// Random changes between snapshots, taken by the pull query and by the changelog in turn:
/// each version holds exactly the table's rows, deleted keys gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_equals_the_table_by_either_method_with_its_deletes() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 2).await;
    let client = client(&handle);
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path(), None);
    let writer = writer(&lake, 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    for round in 0..6u32 {
        random_changes(&sim, &mut oracle, &mut rng, 150, &mut time);
        let method = if round % 2 == 0 { SnapshotMethod::Pull } else { SnapshotMethod::Changelog };
        let summary = snapshot(&client, &writer, &settings(method, 16)).await.unwrap();
        assert_eq!(summary.committed.version, round + 1);
        assert_eq!(summary.method, if round % 2 == 0 { "pull" } else { "changelog" });
        assert_eq!(latest_rows(&lake).await, oracle, "round {round} ({})", summary.method);
    }
    let metadata = manifest(&lake).await;
    assert_eq!(metadata.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(stored_versions(&lake).await, [4, 5, 6]);
    assert_eq!(metadata.total_records, oracle.len() as u64);
    assert_eq!(metadata.total_bytes, metadata.versions.iter().map(|v| v.bytes).sum::<u64>());
    handle.shutdown().await;
}

/// Numbering and retention on one lake: run on a local directory and on S3.
async fn numbering_and_retention(lake: Lake) {
    let (sim, handle) = users_table(SimulatorConfig::default(), 2).await;
    let client = client(&handle);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    for expected in 1..=4u32 {
        random_changes(&sim, &mut oracle, &mut rng, 40, &mut time);
        let done = snapshot(&client, &writer(&lake, 2), &settings(SnapshotMethod::Auto, 1000)).await.unwrap();
        assert_eq!(done.committed.version, expected);
        let kept = stored_versions(&lake).await;
        assert!(kept.contains(&expected), "the newest complete version is kept: {kept:?}");
        assert!(kept.len() <= 2, "{kept:?}");
    }
    assert_eq!(manifest(&lake).await.latest_version, Some(4));
    // a folder no manifest lists (an interrupted snapshot) is removed, and numbering goes on
    // from what storage holds: a restarted writer, no memory of earlier runs
    let stray = lake.feed_path(ksql_lake::lake::FeedKind::Table, FEED, "version=v9/snapshot_partial.parquet").unwrap();
    lake.store().put(&stray, bytes::Bytes::from_static(b"partial").into()).await.unwrap();
    let done = snapshot(&client, &writer(&lake, 2), &settings(SnapshotMethod::Auto, 1000)).await.unwrap();
    assert_eq!(done.committed.version, 5);
    assert_eq!(done.removed, ["version=v9"]);
    assert_eq!(stored_versions(&lake).await, [4, 5]);
    assert_eq!(latest_rows(&lake).await, oracle);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_numbered_from_storage_and_retention_keeps_the_newest_on_a_local_lake() {
    let dir = tempfile::tempdir().unwrap();
    numbering_and_retention(local_lake(dir.path(), None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_numbered_from_storage_and_retention_keeps_the_newest_on_s3() {
    let mut moto = support::Moto::start("tables").await;
    let lake = ksql_lake::lake::open_lake("s3://tables/lake", &support::s3_options(&moto.endpoint)).unwrap();
    numbering_and_retention(lake).await;
    moto.stop().await;
}

/// A crash at every put of a snapshot (the lease, three data files, then the manifest): before the
/// manifest put the previous version stays the latest; after it the new one is; and once the
/// next snapshot starts, storage holds exactly the versions the manifest lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_put_of_a_snapshot_leaves_a_complete_latest_version() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 2).await;
    let client = client(&handle);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    random_changes(&sim, &mut oracle, &mut rng, 200, &mut time);
    assert!(oracle.len() > 40, "several files per version");
    // the puts a second snapshot makes, counted on a lake that does not crash (a local lake has no
    // conditional put, so the manifest takes two: the refused update, then the overwrite)
    let puts = {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        snapshot(
            &client,
            &writer(&local_lake(dir.path(), Some(local.clone())), 1),
            &settings(SnapshotMethod::Pull, 20),
        )
        .await
        .unwrap();
        let counting = FaultyStore::new(local);
        let lake = local_lake(dir.path(), Some(counting.clone()));
        snapshot(&client, &writer(&lake, 1).with_lease(LEASE), &settings(SnapshotMethod::Pull, 20)).await.unwrap();
        counting.puts()
    };
    assert!(puts >= 6, "{puts} puts: the lease, the data files, the manifest");
    for crash_at in 0..=puts {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let lake = local_lake(dir.path(), Some(local.clone()));
        snapshot(&client, &writer(&lake, 1), &settings(SnapshotMethod::Pull, 20)).await.unwrap();
        let before = latest_rows(&lake).await;
        let faulty = FaultyStore::new(local.clone());
        let crashing = local_lake(dir.path(), Some(faulty.clone()));
        faulty.crash_after_puts(crash_at);
        let crashing_writer = writer(&crashing, 1).with_lease(LEASE);
        let result = snapshot(&client, &crashing_writer, &settings(SnapshotMethod::Pull, 20)).await;
        let committed = crash_at >= puts;
        assert_eq!(result.is_ok(), committed, "crash after {crash_at} puts: {result:?}");
        let metadata = manifest(&lake).await;
        assert_eq!(metadata.latest_version, Some(if committed { 2 } else { 1 }), "crash after {crash_at} puts");
        assert_eq!(latest_rows(&lake).await, before, "the latest version is complete");
        // restart: once the dead writer's lease has been seen unchanged for a whole period,
        // the next snapshot clears what the crash left and commits
        let restarted = writer(&lake, 1).with_lease(LEASE).holding();
        let mut result = snapshot(&client, &restarted, &settings(SnapshotMethod::Pull, 20)).await;
        for _ in 0..4 {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(LEASE / 2).await;
            result = snapshot(&client, &restarted, &settings(SnapshotMethod::Pull, 20)).await;
        }
        let done = result.unwrap();
        assert_eq!(done.committed.version, if committed { 3 } else { 2 });
        assert_eq!(stored_versions(&lake).await, [done.committed.version], "crash after {crash_at} puts");
        assert_eq!(latest_rows(&lake).await, oracle);
    }
    handle.shutdown().await;
}

/// With table scans off, `auto` materializes the changelog and `pull` fails with ksqlDB's
/// words, leaving no version behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_the_changelog_when_ksqldb_refuses_table_scans() {
    let (sim, handle) = users_table(SimulatorConfig { table_scans: false, ..SimulatorConfig::default() }, 2).await;
    let client = client(&handle);
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path(), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    random_changes(&sim, &mut oracle, &mut rng, 120, &mut time);
    let error = snapshot(&client, &writer(&lake, 2), &settings(SnapshotMethod::Pull, 1000)).await.unwrap_err();
    assert!(error.to_string().contains("Missing WHERE clause"), "{error}");
    assert!(stored_versions(&lake).await.is_empty());
    let done = snapshot(&client, &writer(&lake, 2), &settings(SnapshotMethod::Auto, 1000)).await.unwrap();
    assert_eq!((done.method, done.committed.version), ("changelog", 1));
    assert_eq!(latest_rows(&lake).await, oracle);
    let metadata = manifest(&lake).await;
    assert_eq!(metadata.latest().unwrap().source_query, "SELECT * FROM USERS EMIT CHANGES;");
    handle.shutdown().await;
}

/// `run` snapshots a table feed at start and then on its interval, next to a stream feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_snapshots_a_table_feed_on_its_interval() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 2).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    random_changes(&sim, &mut oracle, &mut rng, 100, &mut time);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"{}\"\n[[feeds]]\nname = \"{FEED}\"\nkind = \"table\"\nsource = \"USERS\"\n\
         snapshot_interval = \"1s\"\nretention_versions = 2\n",
        handle.url(),
        dir.path().display()
    );
    let config = Config::from_toml(&text, "test", Vec::new()).unwrap();
    let metrics = ksql_lake::metrics::Metrics::new(prometheus::Registry::new());
    let stop = CancellationToken::new();
    let options = ksql_lake::pipeline::RunOptions { serve_http: false, ..Default::default() };
    let task =
        tokio::spawn(ksql_lake::pipeline::run_with(config, stop.clone(), metrics.clone(), Default::default(), options));
    let lake = local_lake(dir.path(), None);
    let path = lake.metadata_path(ksql_lake::lake::FeedKind::Table, FEED).unwrap();
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(result) = lake.store().get(&path).await {
                let metadata = FeedMetadata::from_json(&result.bytes().await.unwrap()).unwrap();
                if metadata.latest_version >= Some(3) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "three versions within 60 s");
    stop.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(latest_rows(&lake).await, oracle);
    assert!(stored_versions(&lake).await.len() <= 2);
    assert!(metrics.files_written.with_label_values(&[FEED, "snapshot"]).get() >= 3);
    handle.shutdown().await;
}

/// One writer per table at a time: a second one (`export --table` next to `run`) is refused
/// while the first holds the lease and leaves its files alone; a crashed writer's lease
/// lapses, and the next writer takes over and clears what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_refused_while_the_first_holds_the_lease() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 2).await;
    let client = client(&handle);
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path(), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    random_changes(&sim, &mut oracle, &mut rng, 100, &mut time);
    snapshot(&client, &writer(&lake, 3), &settings(SnapshotMethod::Pull, 1000)).await.unwrap();
    let first = writer(&lake, 3);
    let mut pending = first.begin().await.unwrap();
    assert_eq!(pending.version, 2);
    let batch = {
        let path = lake
            .feed_path(
                ksql_lake::lake::FeedKind::Table,
                FEED,
                &format!("version=v1/{}", manifest(&lake).await.versions[0].files[0].name),
            )
            .unwrap();
        let bytes = lake.store().get(&path).await.unwrap().bytes().await.unwrap();
        ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap().next().unwrap().unwrap()
    };
    first.write(&mut pending, &[batch]).await.unwrap();
    let second = snapshot(&client, &writer(&lake, 3), &settings(SnapshotMethod::Pull, 1000)).await.unwrap_err();
    assert!(second.to_string().contains("another process"), "{second}");
    assert!(writer(&lake, 3).cleanup().await.is_err(), "cleanup waits for the lease too");
    assert_eq!(stored_versions(&lake).await, [1, 2], "the first writer's files are untouched");
    let done = first.commit(pending, "SELECT * FROM USERS;", "pull", None).await.unwrap();
    assert_eq!(done.version, 2);
    // a writer that died holding the lease: once another has seen it unchanged for a whole
    // lease period (its own clock; the dead one's expiry time is not trusted), it takes over
    // and clears the dead writer's files
    let lease = lake.feed_path(ksql_lake::lake::FeedKind::Table, FEED, "_snapshot.lease").unwrap();
    let far = serde_json::json!({"owner": "dead", "expires_at_ms": chrono::Utc::now().timestamp_millis() + 3_600_000});
    lake.store().put(&lease, serde_json::to_vec(&far).unwrap().into()).await.unwrap();
    let partial =
        lake.feed_path(ksql_lake::lake::FeedKind::Table, FEED, "version=v3/snapshot_partial.parquet").unwrap();
    lake.store().put(&partial, bytes::Bytes::from_static(b"partial").into()).await.unwrap();
    let next = writer(&lake, 3).with_lease(LEASE).holding();
    assert!(snapshot(&client, &next, &settings(SnapshotMethod::Pull, 1000)).await.is_err(), "seen once: held");
    tokio::time::sleep(LEASE / 2).await;
    assert!(snapshot(&client, &next, &settings(SnapshotMethod::Pull, 1000)).await.is_err(), "not yet a whole period");
    tokio::time::sleep(LEASE).await;
    let done = snapshot(&client, &next, &settings(SnapshotMethod::Pull, 1000)).await.unwrap();
    assert_eq!((done.committed.version, done.removed.clone()), (3, vec!["version=v3".to_string()]));
    assert_eq!(latest_rows(&lake).await, oracle);
    assert!(lake.store().head(&lease).await.is_err(), "the lease is released after the commit");
    handle.shutdown().await;
}

/// `run` removes what an interrupted snapshot left when it starts, not an hour later at the
/// next snapshot, and a fresh latest version makes the feed ready without a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_removes_an_interrupted_snapshot_at_start() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 2).await;
    let client = client(&handle);
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path(), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut oracle, mut time) = (Oracle::new(), 0);
    random_changes(&sim, &mut oracle, &mut rng, 50, &mut time);
    snapshot(&client, &writer(&lake, 3), &settings(SnapshotMethod::Pull, 1000)).await.unwrap();
    let partial =
        lake.feed_path(ksql_lake::lake::FeedKind::Table, FEED, "version=v2/snapshot_partial.parquet").unwrap();
    lake.store().put(&partial, bytes::Bytes::from_static(b"partial").into()).await.unwrap();
    let text = format!(
        "[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"{}\"\n[[feeds]]\nname = \"{FEED}\"\nkind = \"table\"\nsource = \"USERS\"\n",
        handle.url(),
        dir.path().display()
    );
    let config = Config::from_toml(&text, "test", Vec::new()).unwrap();
    let health = ksql_lake::metrics::Health::default();
    let stop = CancellationToken::new();
    let options = ksql_lake::pipeline::RunOptions { serve_http: false, ..Default::default() };
    let metrics = ksql_lake::metrics::Metrics::new(prometheus::Registry::new());
    let task = tokio::spawn(ksql_lake::pipeline::run_with(config, stop.clone(), metrics, health.clone(), options));
    let cleared = tokio::time::timeout(WAIT, async {
        while stored_versions(&lake).await != [1] || !health.report().0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        cleared.is_ok(),
        "the partial version is removed and the feed is ready: {:?}",
        stored_versions(&lake).await
    );
    assert_eq!(manifest(&lake).await.latest_version, Some(1), "no new snapshot before its interval");
    stop.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    handle.shutdown().await;
}

/// Lists every object under the lake, for a failure message.
#[allow(dead_code)]
async fn listing(lake: &Lake) -> Vec<String> {
    let objects: Vec<_> = lake.store().list(None).try_collect().await.unwrap();
    objects.into_iter().map(|meta| meta.location.to_string()).collect()
}
