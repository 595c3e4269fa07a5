//! A table feed with `changelog = true` keeps every change of the table, upserts and deletes,
//! exactly once under `tables/<feed>/changelog/`, across cut connections and SIGKILLs: proven
//! by an oracle that knows where ksqlDB put every change, including the tombstones, whose
//! positions ksqlDB never sends.

mod pipeline_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use futures::TryStreamExt;
use ksql_lake::config::Config;
use ksql_lake::pipeline::RunOptions;
use ksql_lake::simulator::{Fault, Simulator, SimulatorConfig, Value};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline_support::start;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{spawn_run, users_table, BINARY};

/// What the table's topic holds, as the simulator placed it.
#[derive(Default)]
struct Log {
    /// Every upsert: (partition, offset) → (key, score).
    upserts: BTreeMap<(u32, u64), (String, i32)>,
    /// Every delete of a key the table held: its partition and the order the changelog gives
    /// it (the last upsert of its partition before it, plus how many such deletes follow that
    /// upsert), with its key.
    deletes: BTreeMap<(u32, u64), String>,
    /// The table now: key → score.
    table: BTreeMap<String, i32>,
    /// Per partition: the order of its last upsert, and deletes since.
    last: BTreeMap<u32, (u64, u64)>,
    /// Upserts that cannot be decoded, each of a key of its own: (partition, offset). Some
    /// have a SCORE that is not an integer, some are longer than `max_line_bytes`. They go to
    /// the dead letter at their offsets.
    bad: BTreeSet<(u32, u64)>,
    time: i64,
}

impl Log {
    /// Random upserts and deletes over 80 keys; a third are deletes, some of keys the table
    /// does not hold (which change nothing and are not kept); one in 40 is an undecodable upsert.
    fn change(&mut self, sim: &Simulator, rng: &mut StdRng, changes: usize) {
        for _ in 0..changes {
            let id = format!("u{:02}", rng.random_range(0..80));
            self.time += 1;
            if rng.random_bool(0.01) {
                let key = format!("long{}", self.bad.len());
                let values = vec![Value::string(&key), Value::string("n".repeat(3000)), Value::Integer(1)];
                let (partition, offset) = sim.produce("USERS", None, self.time, values).unwrap();
                self.last.insert(partition, (offset as u64, 0));
                self.bad.insert((partition, offset as u64));
            } else if rng.random_bool(0.025) {
                let key = format!("\"bad{}\"", self.bad.len());
                let columns: [&str; 3] = [&key, "\"n\"", "\"not a number\""];
                let placed = sim.produce_rendered("USERS", [(None, self.time, columns.as_slice())]).unwrap();
                let (partition, offset) = placed[0];
                self.last.insert(partition, (offset as u64, 0));
                self.bad.insert((partition, offset as u64));
            } else if rng.random_bool(0.33) {
                let (partition, offset) = sim.delete("USERS", vec![Value::string(&id)], self.time).unwrap();
                if self.table.remove(&id).is_some() {
                    let (base, deletes) = self.last.get_mut(&partition).expect("a held key was upserted here");
                    *deletes += 1;
                    // each tombstone takes an offset of its own: its order is at most that
                    assert!(*base + *deletes <= offset as u64);
                    self.deletes.insert((partition, *base + *deletes), id);
                }
            } else {
                let score = rng.random_range(-1000..1000);
                let values = vec![Value::string(&id), Value::string(format!("name-{id}")), Value::Integer(score)];
                let (partition, offset) = sim.produce("USERS", None, self.time, values).unwrap();
                self.upserts.insert((partition, offset as u64), (id.clone(), score));
                self.last.insert(partition, (offset as u64, 0));
                self.table.insert(id, score);
            }
        }
    }

    fn changes(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

fn config_text(url: &str, lake: &std::path::Path) -> String {
    format!(
        "[ksqldb]\nurl = \"{url}\"\nreconnect_backoff_initial = \"10ms\"\nreconnect_backoff_max = \"100ms\"\n\
         [lake]\nurl = \"file://{}\"\nlease = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[feeds]]\nname = \"users\"\nkind = \"table\"\nsource = \"USERS\"\nchangelog = true\n\
         snapshot_interval = \"1h\"\npartitioning = \"hourly\"\nflush_max_age = \"300ms\"\nbatch_rows = 50\n\
         max_line_bytes = \"2KiB\"\n",
        lake.display()
    )
}

/// One change as the lake holds it.
#[derive(Debug)]
struct Kept {
    partition: u32,
    order: u64,
    op: String,
    key: String,
    score: Option<i32>,
    offset: Option<u64>,
}

/// Every change in the changelog's data files (a file the manifest does not name would show as
/// a change kept twice or one the oracle does not know).
async fn kept(store: &Arc<dyn ObjectStore>) -> Vec<Kept> {
    let root = Path::from("tables/users/changelog");
    let objects: Vec<_> = store.list(Some(&root)).try_collect().await.unwrap();
    let mut out = Vec::new();
    for object in objects.iter().filter(|object| object.location.as_ref().ends_with(".parquet")) {
        let bytes = store.get(&object.location).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partitions = batch.column_by_name("ROWPARTITION").unwrap().as_primitive::<Int32Type>().clone();
            let offsets = batch.column_by_name("ROWOFFSET").unwrap().as_primitive::<Int64Type>().clone();
            let ops = batch.column_by_name("op").unwrap().as_string::<i32>().clone();
            let orders = batch.column_by_name("op_order").unwrap().as_primitive::<Int64Type>().clone();
            let ids = batch.column_by_name("ID").unwrap().as_string::<i32>().clone();
            let scores = batch.column_by_name("SCORE").unwrap().as_primitive::<Int32Type>().clone();
            for row in 0..batch.num_rows() {
                out.push(Kept {
                    partition: partitions.value(row) as u32,
                    order: orders.value(row) as u64,
                    op: ops.value(row).to_string(),
                    key: ids.value(row).to_string(),
                    score: scores.is_valid(row).then(|| scores.value(row)),
                    offset: offsets.is_valid(row).then(|| offsets.value(row) as u64),
                });
            }
        }
    }
    out
}

/// Exactly once: every upsert and every effective delete once, nothing else, each where the
/// oracle put it; replaying them by partition and order rebuilds the table.
fn verify(log: &Log, kept: &[Kept]) {
    let mut seen = BTreeSet::new();
    for change in kept {
        assert!(seen.insert((change.partition, change.order)), "{change:?} is kept twice");
        match change.op.as_str() {
            "upsert" => {
                let offset = change.offset.expect("an upsert keeps its offset");
                assert_eq!(change.order, offset);
                let (key, score) = &log.upserts[&(change.partition, offset)];
                assert_eq!((&change.key, change.score), (key, Some(*score)));
            }
            "delete" => {
                assert_eq!(change.offset, None);
                assert_eq!(change.score, None, "a delete carries its key only");
                let key = log.deletes.get(&(change.partition, change.order));
                assert_eq!(key, Some(&change.key), "{change:?} is a delete the table saw there");
            }
            other => panic!("op {other}"),
        }
    }
    assert_eq!(kept.len(), log.changes(), "every change kept: none lost");
    let mut ordered: Vec<&Kept> = kept.iter().collect();
    ordered.sort_by_key(|change| (change.partition, change.order));
    let mut table = BTreeMap::new();
    for change in ordered {
        match change.score {
            Some(score) => table.insert(change.key.clone(), score),
            None => table.remove(&change.key),
        };
    }
    assert_eq!(table, log.table, "the changelog replayed is the table");
}

/// The dead letter's rows: (partition, offset) of each.
async fn dead_lettered(store: &Arc<dyn ObjectStore>) -> Vec<(u32, u64)> {
    let root = Path::from("dead_letter/users.changelog");
    let objects: Vec<_> = store.list(Some(&root)).try_collect().await.unwrap();
    let mut out = Vec::new();
    for object in objects.iter().filter(|object| object.location.as_ref().ends_with(".jsonl")) {
        let bytes = store.get(&object.location).await.unwrap().bytes().await.unwrap();
        for line in bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            out.push((line["partition"].as_u64().unwrap() as u32, line["offset"].as_u64().unwrap()));
        }
    }
    out.sort_unstable();
    out
}

async fn wait_for_changes(store: &Arc<dyn ObjectStore>, changes: usize, when: &str) {
    let all = tokio::time::timeout(Duration::from_secs(90), async {
        while kept(store).await.len() < changes {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(all.is_ok(), "only {} of {changes} changes committed {when}", kept(store).await.len());
}

/// Every undecodable upsert is in the dead letter once, at its offset.
async fn verify_dead_letter(log: &Log, store: &Arc<dyn ObjectStore>) {
    let expected: Vec<(u32, u64)> = log.bad.iter().copied().collect();
    assert!(!expected.is_empty(), "the run made bad rows");
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while dead_lettered(store).await.len() < expected.len() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(all.is_ok(), "the bad rows reach the dead letter");
    assert_eq!(dead_lettered(store).await, expected, "each bad row once");
}

/// Connections cut at random rows while changes keep coming: each reconnect reads the
/// changelog from the start again, and no change is kept twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_is_kept_exactly_once_across_30_cut_connections() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_text(&handle.url(), dir.path()), "test", Vec::new()).unwrap();
    let running = start(config, RunOptions { serve_http: false, ..Default::default() });
    let mut rng = StdRng::seed_from_u64(30);
    let mut log = Log::default();
    for _ in 0..30 {
        // the push query of the changelog (the table's snapshot is a pull query that ends)
        let opened = tokio::time::timeout(Duration::from_secs(30), async {
            while sim.running_push_queries() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(opened.is_ok(), "the changelog query reopened");
        let replayed = log.changes() as u64;
        sim.inject(Fault::CutAfterRows(rng.random_range(1..replayed + 40)));
        log.change(&sim, &mut rng, 40);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
    }
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    wait_for_changes(&store, log.changes(), "after the cuts").await;
    running.stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap().unwrap().unwrap();
    verify(&log, &kept(&store).await);
    verify_dead_letter(&log, &store).await;
    assert!(log.deletes.len() > 50, "the run deleted keys: {}", log.deletes.len());
    // the README's DuckDB query rebuilds the table from the changelog
    let readme = include_str!("../README.md");
    let start = readme.find("SELECT * EXCLUDE (rn) FROM (").expect("the README shows the query");
    let sql = readme[start..start + readme[start..].find(';').unwrap()]
        .replace("data_lake/tables/users/changelog", &format!("{}/tables/users/changelog", dir.path().display()));
    let script = format!(
        "import duckdb, json\nrows = duckdb.sql({sql:?}).fetchall()\ncolumns = duckdb.sql({sql:?}).columns\n\
         print(json.dumps({{r[columns.index('ID')]: r[columns.index('SCORE')] for r in rows}}))"
    );
    let output = std::process::Command::new(support::venv().join("bin/python")).args(["-c", &script]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table: BTreeMap<String, i32> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(table, log.table, "DuckDB reads the table back from its changelog");
    handle.shutdown().await;
}

/// The service killed ten times mid-stream: each start reconciles, reads the changelog from
/// the start and keeps only what was not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_is_kept_exactly_once_across_10_sigkills() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let config_path = dir.path().join("ksql-lake.toml");
    std::fs::write(&config_path, config_text(&handle.url(), &lake)).unwrap();
    let spawn = || spawn_run(&config_path);
    let mut rng = StdRng::seed_from_u64(10);
    let mut log = Log::default();
    for _ in 0..10 {
        let mut child = spawn();
        for _ in 0..rng.random_range(2..8) {
            log.change(&sim, &mut rng, 30);
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        }
        child.start_kill().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
        assert!(!status.success(), "killed, not exited");
    }
    let mut child = spawn();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&lake).unwrap());
    wait_for_changes(&store, log.changes(), "after the restarts").await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    verify(&log, &kept(&store).await);
    verify_dead_letter(&log, &store).await;
    // the operator report shows the changelog as a feed of its own, with what its files hold
    let output = std::process::Command::new(BINARY)
        .args(["--lake", &format!("file://{}", lake.display()), "report", "--format", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let changelog = report["feeds"].as_array().unwrap().iter().find(|feed| feed["kind"] == "changelog").unwrap();
    assert_eq!(changelog["feed"], "users.changelog");
    assert_eq!(changelog["total_records"], log.changes() as u64);
    assert_eq!(changelog["rejected_rows"], log.bad.len() as u64);
    // the changelog's manifest rebuilt from its files holds the same changes
    let output = std::process::Command::new(BINARY)
        .args(["metadata", "rebuild", "--feed", "users.changelog", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest = store.get(&Path::from("tables/users/changelog/_metadata.json")).await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.bytes().await.unwrap()).unwrap();
    assert_eq!(manifest["total_records"], log.changes() as u64);
    verify(&log, &kept(&store).await);
    // a table's own manifest cannot be rebuilt from files: which versions are complete is not in them
    let output = std::process::Command::new(BINARY)
        .args(["metadata", "rebuild", "--feed", "users", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is a table feed"));
    handle.shutdown().await;
}

/// A quiet table's changelog is reopened after four idle timeouts, not one: each reopen
/// replays the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_changelog_waits_four_idle_timeouts_before_reopening() {
    let (sim, handle) = users_table(SimulatorConfig::default(), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&handle.url(), dir.path()).replace("[lake]", "idle_timeout = \"250ms\"\n[lake]");
    let config = Config::from_toml(&text, "test", Vec::new()).unwrap();
    let running = start(config, RunOptions { serve_http: false, ..Default::default() });
    let mut queries = BTreeSet::new();
    for _ in 0..80 {
        queries.extend(sim.query_ids());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap().unwrap().unwrap();
    // 4 s of silence: one idle timeout would reopen it about 15 times, four about 4 times
    assert!((2..=6).contains(&queries.len()), "{} queries in 4 s", queries.len());
    handle.shutdown().await;
}
