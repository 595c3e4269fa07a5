//! Lose nothing, duplicate nothing: the guarantees of each delivery mode, proven by counting
//! rows after cut connections, killed processes and a stopped S3 server.

mod pipeline_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use ksql_lake::backoff::Backoff;
use ksql_lake::ksqldb::Http2Mode;
use ksql_lake::lake::{open_lake, FeedKind};
use ksql_lake::metrics::FeedState;
use ksql_lake::schema::parse_schema;
use ksql_lake::simulator::{Fault, Simulator, SimulatorConfig, Value};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use pipeline_support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{s3_options, spawn_run, Moto};

fn local_store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap())
}

fn fast_reconnects() -> ksql_lake::pipeline::RunOptions {
    let mut options = fast_options();
    options.reconnect_backoff =
        Some(Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(50), multiplier: 2.0 });
    options
}

fn reconnects(running: &Running) -> u64 {
    [
        "disconnect",
        "terminated",
        "server_error",
        "in_band_error",
        "stall",
        "connect",
        "content_type",
        "malformed_response",
    ]
    .iter()
    .map(|reason| running.metrics.push_query_reconnects.with_label_values(&["everything", reason]).get())
    .sum()
}

async fn wait_for(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let reached = tokio::time::timeout(limit, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{what} not reached within {limit:?}");
}

/// How a test's rows are timed: the feed's partitioning, and how far (ms) 30% of the rows
/// arrive early or late (`pipeline_support::rowtime_ms`).
#[derive(Debug, Clone, Copy)]
struct Timing {
    partitioning: &'static str,
    lateness_ms: i64,
    /// How long a buffer may wait. With late rows it is long, so that closed partitions are
    /// committed while the late buffers beside them still hold rows of the same ksqlDB
    /// partitions: the moments a crash used to lose rows in.
    flush_max_age: &'static str,
    /// A row that cannot be decoded after every this many good ones (0: none).
    bad_every: i64,
}

impl Timing {
    fn hourly(&self) -> bool {
        self.partitioning == "hourly"
    }
}

const HOUR_MS: i64 = 3_600_000;
/// Event time follows the stream, as in a quiet test stream.
const IN_ORDER: Timing = Timing { partitioning: "hourly", lateness_ms: 0, flush_max_age: "200ms", bad_every: 0 };
const IN_ORDER_DAILY: Timing = Timing { partitioning: "daily", lateness_ms: 0, flush_max_age: "300ms", bad_every: 0 };
/// Rows off by up to two partitions' width, so several partitions are open at once and a
/// ksqlDB partition's rows interleave between them.
const LATE_HOURLY: Timing =
    Timing { partitioning: "hourly", lateness_ms: 2 * HOUR_MS, flush_max_age: "3s", bad_every: 0 };
const LATE_DAILY: Timing =
    Timing { partitioning: "daily", lateness_ms: 48 * HOUR_MS, flush_max_age: "3s", bad_every: 0 };
/// Late and early rows, and an undecodable row after every 97 good ones.
const LATE_WITH_BAD_ROWS: Timing = Timing { bad_every: 97, ..LATE_HOURLY };

/// 100,000 rows produced in 50 rounds; before each round the simulator is told to cut the
/// connection a random number of rows into it. Over cleartext HTTP/1.1 (the default on
/// `http://`, read straight from the socket) unless `http2` says `Always`.
async fn cut_connections_50_times(delivery: &str, timing: Timing) -> u64 {
    cut_connections_50_times_over(delivery, timing, Http2Mode::Auto).await
}

async fn cut_connections_50_times_over(delivery: &str, timing: Timing, http2: Http2Mode) -> u64 {
    let rows: i64 = 100_000;
    let rounds: i64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with_rows(0).await;
    let config = config(
        &server.url(),
        &format!("file://{}", dir.path().display()),
        timing.partitioning,
        "",
        &format!("flush_max_age = \"300ms\"\ndelivery = \"{delivery}\"\nbatch_rows = 1000"),
    );
    let mut config = config;
    config.ksqldb.client.http2 = http2;
    let running = start(config, fast_reconnects());
    let mut rng = StdRng::seed_from_u64(50);
    let per_round = rows / rounds;
    for round in 0..rounds {
        wait_for("the query reopened", Duration::from_secs(30), || simulator.running_push_queries() == 1).await;
        let before = reconnects(&running);
        let cut_after = rng.random_range(1..per_round as u64);
        assert_eq!(simulator.inject(Fault::CutAfterRows(cut_after)), 1);
        produce_with_lateness(&simulator, round * per_round..(round + 1) * per_round, rows, timing.lateness_ms);
        running.wait_until("the cut noticed", Duration::from_secs(30), |r| reconnects(r) > before).await;
    }
    assert!(reconnects(&running) >= rounds as u64);
    running.wait_until("every row committed", Duration::from_secs(120), |r| r.received() >= rows as u64).await;
    running.shutdown().await;
    let objects = feed_objects(&local_store(dir.path()), &Path::from("streams/everything")).await;
    let duplicates = verify_feed_rows_with_lateness(
        &objects,
        rows,
        timing.hourly(),
        delivery == "at-least-once",
        timing.lateness_ms,
    );
    server.shutdown().await;
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_50_cut_connections() {
    assert_eq!(cut_connections_50_times("exactly-once", IN_ORDER).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_50_cut_connections() {
    let duplicates = cut_connections_50_times("at-least-once", IN_ORDER).await;
    println!("at-least-once after 50 cuts: {duplicates} duplicate rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_50_cut_connections_with_late_and_early_rows() {
    assert_eq!(cut_connections_50_times("exactly-once", LATE_HOURLY).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_50_cut_http2_streams_with_late_and_early_rows() {
    assert_eq!(cut_connections_50_times_over("exactly-once", LATE_HOURLY, Http2Mode::Always).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_50_cut_connections_with_late_and_early_rows() {
    let duplicates = cut_connections_50_times("at-least-once", LATE_DAILY).await;
    println!("at-least-once after 50 cuts, late and early rows: {duplicates} duplicate rows");
}

/// The binary is killed with SIGKILL at 20 random moments while rows keep coming, and restarted
/// each time; a last run commits the rest and stops on SIGTERM.
async fn kill_the_process_20_times(delivery: &str, timing: Timing) -> u64 {
    let rows: i64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with_rows(0).await;
    let config_path = dir.path().join("ksql-lake.toml");
    let write_config = |port: u16| {
        std::fs::write(
            &config_path,
            format!(
                "[ksqldb]\nurl = \"{}\"\nreconnect_backoff_initial = \"10ms\"\nreconnect_backoff_max = \"100ms\"\n\
                 [lake]\nurl = \"file://{}/lake\"\nlease = \"1s\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\npartitioning = \"{}\"\n\
                 flush_max_age = \"{}\"\nbatch_rows = 500\ndelivery = \"{delivery}\"\n",
                server.url(),
                dir.path().display(),
                timing.partitioning,
                timing.flush_max_age,
            ),
        )
        .unwrap();
    };
    let spawn = |port: u16| {
        write_config(port);
        spawn_run(&config_path)
    };
    // Rows keep arriving during the kills.
    let producer = {
        let simulator = simulator.clone();
        tokio::spawn(async move {
            let mut bad = 0;
            for chunk in 0..60 {
                for id in chunk * 500..(chunk + 1) * 500 {
                    produce_with_lateness(&simulator, id..id + 1, rows, timing.lateness_ms);
                    if timing.bad_every > 0 && id % timing.bad_every == 0 {
                        // A string where the BIGINT ID belongs: the row cannot be decoded.
                        let mut columns = vec!["\"bad\""; 14];
                        columns[1] = "true";
                        simulator.produce_rendered(SOURCE, [(None, event_ms(id, rows), columns.as_slice())]).unwrap();
                        bad += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            bad
        })
    };
    let mut rng = StdRng::seed_from_u64(20);
    for _ in 0..20 {
        let mut child = spawn(0);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        child.start_kill().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
        assert!(!status.success(), "killed, not exited");
    }
    let bad_rows = producer.await.unwrap();
    // A last run commits what is left, then stops on SIGTERM.
    let mut child = spawn(0);
    let lake_store = local_store(&dir.path().join("lake"));
    wait_for_every_row(&lake_store, rows, "after the restarts").await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let objects = feed_objects(&lake_store, &Path::from("streams/everything")).await;
    let duplicates = verify_feed_rows_with_lateness(
        &objects,
        rows,
        timing.hourly(),
        delivery == "at-least-once",
        timing.lateness_ms,
    );
    // Every undecodable row is in the dead letter exactly once (at least once).
    let dead_letter = feed_objects(&lake_store, &Path::from("dead_letter/everything")).await;
    let mut rejected: Vec<(u64, u64)> = Vec::new();
    for (_, bytes) in &dead_letter {
        for line in bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            rejected.push((line["partition"].as_u64().unwrap(), line["offset"].as_u64().unwrap()));
        }
    }
    let copies = rejected.len();
    rejected.sort_unstable();
    rejected.dedup();
    assert_eq!(rejected.len(), bad_rows, "every undecodable row is in the dead letter");
    if delivery == "exactly-once" {
        assert_eq!(copies, bad_rows, "and only once");
    }
    server.shutdown().await;
    duplicates
}

/// Distinct (ROWPARTITION, ROWOFFSET) pairs in the Parquet files of `objects`.
/// Two processes configured on one feed (a second replica by mistake, or a pod that has not
/// died yet): the second waits for the first one's lease instead of writing, and takes over
/// once the first is killed and its lease lapses. Every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_feed_write_it_once_through_its_lease() {
    let rows: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with_rows(0).await;
    let config_path = dir.path().join("ksql-lake.toml");
    std::fs::write(
        &config_path,
        format!(
            "[ksqldb]\nurl = \"{}\"\nreconnect_backoff_initial = \"10ms\"\nreconnect_backoff_max = \"100ms\"\n\
             [lake]\nurl = \"file://{}/lake\"\nlease = \"2s\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\nflush_max_age = \"1s\"\nbatch_rows = 500\n",
            server.url(),
            dir.path().display(),
        ),
    )
    .unwrap();
    let spawn = || spawn_run(&config_path);
    let producer = {
        let simulator = simulator.clone();
        tokio::spawn(async move {
            for chunk in 0..40 {
                produce(&simulator, chunk * 500..(chunk + 1) * 500, rows);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut first = spawn();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut second = spawn();
    let lake_store = local_store(&dir.path().join("lake"));
    // both run side by side for a while, the second waiting
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(first.try_wait().unwrap().is_none() && second.try_wait().unwrap().is_none(), "both keep running");
    first.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), first.wait()).await.unwrap().unwrap();
    producer.await.unwrap();
    wait_for_every_row(&lake_store, rows, "after the takeover").await;
    let pid = second.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let objects = feed_objects(&lake_store, &Path::from("streams/everything")).await;
    verify_feed(&objects, rows, false);
    assert!(!objects.iter().any(|(path, _)| path == "_writer.lease"), "a clean stop releases the lease");
    server.shutdown().await;
}

/// Waits (at most 90 s) until every one of `rows` rows is in a committed file of the feed;
/// copies count once, so at-least-once cannot stop early on copies while rows are missing.
async fn wait_for_every_row(store: &Arc<dyn ObjectStore>, rows: i64, when: &str) {
    let dir = Path::from("streams/everything");
    let all = tokio::time::timeout(Duration::from_secs(90), async {
        while distinct_positions(&feed_objects(store, &dir).await) < rows as usize {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let found = distinct_positions(&feed_objects(store, &dir).await);
    assert!(all.is_ok(), "only {found} of {rows} rows committed {when}");
}

fn distinct_positions(objects: &[(String, bytes::Bytes)]) -> usize {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    let mut positions = std::collections::BTreeSet::new();
    for (name, bytes) in objects.iter().filter(|(name, _)| name.ends_with(".parquet")) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap_or_else(|error| panic!("{name}: {error}"))
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partitions = batch.column_by_name("ROWPARTITION").unwrap().as_primitive::<Int32Type>().clone();
            let offsets = batch.column_by_name("ROWOFFSET").unwrap().as_primitive::<Int64Type>().clone();
            positions.extend(partitions.values().iter().copied().zip(offsets.values().iter().copied()));
        }
    }
    positions.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_20_sigkills() {
    assert_eq!(kill_the_process_20_times("exactly-once", IN_ORDER).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_20_sigkills_with_late_rows_and_dead_letters() {
    assert_eq!(kill_the_process_20_times("exactly-once", LATE_WITH_BAD_ROWS).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_20_sigkills() {
    let duplicates = kill_the_process_20_times("at-least-once", IN_ORDER).await;
    println!("at-least-once after 20 kills: {duplicates} duplicate rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_20_sigkills_with_late_and_early_rows_hourly() {
    assert_eq!(kill_the_process_20_times("exactly-once", LATE_HOURLY).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_20_sigkills_with_late_and_early_rows_daily() {
    assert_eq!(kill_the_process_20_times("exactly-once", LATE_DAILY).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_20_sigkills_with_late_and_early_rows() {
    let duplicates = kill_the_process_20_times("at-least-once", LATE_HOURLY).await;
    println!("at-least-once after 20 kills, late and early rows: {duplicates} duplicate rows");
}

/// The S3 server is frozen for 30 s while rows keep coming: the process stays up, /readyz and
/// the metrics show the outage while it lasts, and afterwards every row is in the lake.
async fn stop_s3_for_30_seconds(delivery: &str, timing: Timing) -> u64 {
    let rows: i64 = 20_000;
    let mut moto = Moto::start("lake").await;
    let (simulator, server) = simulator_with_rows(0).await;
    let lake_section = format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing\"\nrequest_timeout = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"",
        moto.endpoint
    );
    let config = config(
        &server.url(),
        "s3://lake/outage",
        timing.partitioning,
        &lake_section,
        &format!("flush_max_age = \"300ms\"\ndelivery = \"{delivery}\""),
    );
    let mut options = fast_reconnects();
    options.serve_http = true;
    options.write_retry.initial = Duration::from_millis(100);
    options.write_retry.max = Duration::from_secs(1);
    let running = start(config, options);
    produce_with_lateness(&simulator, 0..rows / 2, rows, timing.lateness_ms);
    running.wait_until("the first half committed", Duration::from_secs(60), |r| r.written() >= (rows / 2) as u64).await;

    let http = reqwest::Client::new();
    let base = format!("http://{}", running.health.http_address().expect("serving /metrics"));
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    moto.pause();
    let outage = std::time::Instant::now();
    produce_with_lateness(&simulator, rows / 2..rows, rows, timing.lateness_ms);
    // While S3 is down: not ready, store_up 0, retries counted, the process up.
    let seen = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
            let status = ready.status();
            let body: serde_json::Value = ready.json().await.unwrap();
            let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
            if status == 503 && body["store"]["state"] == "failing" && metrics.contains("ksql_lake_store_up 0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the outage did not show on /readyz and /metrics");
    assert!(!running.task.is_finished(), "the process stays up during the outage");
    assert!(running.written() < rows as u64, "nothing more could be committed during the outage");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    moto.resume();

    running
        .wait_until("every row committed", Duration::from_secs(90), |r| {
            r.received() >= rows as u64 && r.metrics.store_up.get() == 1.0
        })
        .await;
    let recovered = tokio::time::timeout(Duration::from_secs(30), async {
        while http.get(format!("{base}/readyz")).send().await.unwrap().status() != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "ready again after the outage");
    assert!(running.metrics.write_retries.with_label_values(&["everything"]).get() > 0);
    running.shutdown().await;
    let lake = open_lake("s3://lake/outage", &s3_options(&moto.endpoint)).unwrap();
    let feed = lake.feed_dir(FeedKind::Stream, "everything").unwrap();
    let objects = feed_objects(lake.store(), &feed).await;
    let duplicates = verify_feed_rows_with_lateness(
        &objects,
        rows,
        timing.hourly(),
        delivery == "at-least-once",
        timing.lateness_ms,
    );
    server.shutdown().await;
    moto.stop().await;
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_a_30_second_s3_outage() {
    assert_eq!(stop_s3_for_30_seconds("exactly-once", IN_ORDER_DAILY).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_a_30_second_s3_outage_with_late_and_early_rows() {
    assert_eq!(stop_s3_for_30_seconds("exactly-once", LATE_HOURLY).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_in_a_30_second_s3_outage() {
    let duplicates = stop_s3_for_30_seconds("at-least-once", IN_ORDER_DAILY).await;
    println!("at-least-once after the S3 outage: {duplicates} duplicate rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_stops_the_feed_with_the_ksqldb_error_and_unhealthy_status() {
    let dir = tempfile::tempdir().unwrap();
    let (_simulator, server) = simulator_with_rows(0).await;
    let mut config = config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", "");
    config.feeds[0].source = "NOPE".into();
    let running = start(config, fast_reconnects());
    running
        .wait_until("the feed failed", Duration::from_secs(30), |r| {
            matches!(r.health.report().1["feeds"]["everything"]["state"].as_str(), Some("failed"))
        })
        .await;
    let (ready, body) = running.health.report();
    assert!(!ready);
    let error = body["feeds"]["everything"]["error"].as_str().unwrap();
    assert!(error.contains("40001") && error.contains("NOPE does not exist"), "{error}");
    assert_eq!(reconnects(&running), 0, "a permanent error is not retried");
    // With every feed stopped the run ends by itself (the process exits 1), without a SIGTERM.
    let result = tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap().unwrap();
    let message = format!("{:#}", result.unwrap_err());
    assert!(message.contains("every feed has stopped") && message.contains("feed everything stopped"), "{message}");
    let _ = FeedState::Stopped;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_column_after_reconnect_flushes_and_records_a_new_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 2).unwrap();
    for id in 0..100 {
        simulator.produce(SOURCE, None, BASE_MS + id, vec![Value::Bigint(id), Value::string("a")]).unwrap();
    }
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let config =
        config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", "flush_max_age = \"1h\"");
    let running = start(config, fast_reconnects());
    running.wait_until("old rows", Duration::from_secs(30), |r| r.received() == 100).await;
    // CREATE OR REPLACE adds a column; the open query keeps its schema until it ends, so end it
    // and let ksql-lake reopen it before the new rows come.
    simulator.replace_columns(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING, `EXTRA` DOUBLE").unwrap()).unwrap();
    simulator.inject(Fault::Terminate);
    running.wait_until("the query reopened", Duration::from_secs(30), |r| reconnects(r) >= 1).await;
    wait_for("the new query open", Duration::from_secs(30), || simulator.running_push_queries() == 1).await;
    for id in 100..150 {
        simulator
            .produce(SOURCE, None, BASE_MS + id, vec![Value::Bigint(id), Value::string("b"), Value::Double(0.5)])
            .unwrap();
    }
    running.wait_until("new rows", Duration::from_secs(30), |r| r.received() == 150).await;
    // The old schema's buffer is drained before any new row is buffered; its commit may still
    // be on its way.
    let by_schema = |r: &Running| r.metrics.files_written.with_label_values(&["everything", "schema_change"]).get();
    running
        .wait_until("the old schema's buffer flushed with reason schema_change", Duration::from_secs(30), |r| {
            by_schema(r) >= 1
        })
        .await;
    running.shutdown().await;
    let objects = feed_objects(&local_store(dir.path()), &Path::from("streams/everything")).await;
    let metadata: serde_json::Value =
        serde_json::from_slice(&objects.iter().find(|(name, _)| name == "_metadata.json").unwrap().1).unwrap();
    assert_eq!(metadata["total_records"], 150, "every row once across the schema change");
    let history = metadata["schema_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    let last_columns: Vec<&str> =
        history[1]["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(last_columns.contains(&"EXTRA"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_tokens_resume_a_scalable_push_query_across_cuts_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::new(SimulatorConfig {
        push_v2_enabled: true,
        continuation_tokens_enabled: true,
        continuation_token_every_rows: 50,
        ..SimulatorConfig::default()
    });
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 2).unwrap();
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let produce_ids = |ids: std::ops::Range<i64>| {
        for id in ids {
            simulator.produce(SOURCE, None, BASE_MS + id, vec![Value::Bigint(id), Value::string("x")]).unwrap();
        }
    };
    let lake_url = format!("file://{}", dir.path().display());
    let feed = "delivery = \"continuation-token\"\nflush_max_age = \"200ms\"";
    let running = start(config(&server.url(), &lake_url, "daily", "", feed), fast_reconnects());
    wait_for("the query open", Duration::from_secs(30), || simulator.running_push_queries() == 1).await;
    for round in 0..5 {
        let before = reconnects(&running);
        simulator.inject(Fault::CutAfterRows(120));
        produce_ids(round * 300..(round + 1) * 300);
        running.wait_until("the cut noticed", Duration::from_secs(30), |r| reconnects(r) > before).await;
        wait_for("the query reopened", Duration::from_secs(30), || simulator.running_push_queries() == 1).await;
    }
    running.wait_until("every row", Duration::from_secs(30), |r| r.received() == 1500).await;
    running.shutdown().await;
    // Produced while ksql-lake was down: a new run resumes from the committed token.
    produce_ids(1500..1800);
    let running = start(config(&server.url(), &lake_url, "daily", "", feed), fast_reconnects());
    running.wait_until("the rows produced while down", Duration::from_secs(30), |r| r.received() == 300).await;
    running.shutdown().await;

    let objects = feed_objects(&local_store(dir.path()), &Path::from("streams/everything")).await;
    let mut ids = Vec::new();
    for (name, bytes) in &objects {
        if name.ends_with(".parquet") {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let column = batch.column_by_name("ID").unwrap();
                let values = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(column.as_ref());
                ids.extend(values.values().iter().copied());
            }
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..1800).collect::<Vec<_>>(), "every row once across cuts and a restart");
    server.shutdown().await;
}

/// A simulator with the every-type stream and its first `count` of `rows` rows.
async fn simulator_with(
    config: SimulatorConfig,
    count: i64,
    rows: i64,
) -> (Simulator, ksql_lake::simulator::SimulatorHandle) {
    let simulator = Simulator::new(config);
    simulator.create_stream(SOURCE, parse_schema(SCHEMA).unwrap(), 3).unwrap();
    produce(&simulator, 0..count, rows);
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (simulator, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rejects_the_resume_filter_is_still_read_exactly_once() {
    let rows = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let config_sim = SimulatorConfig { reject_offset_filters: true, ..SimulatorConfig::default() };
    let (simulator, server) = simulator_with(config_sim, rows / 2, rows).await;
    let config =
        config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", "flush_max_age = \"200ms\"");
    let running = start(config, fast_reconnects());
    running.wait_until("first half", Duration::from_secs(30), |r| r.written() == (rows / 2) as u64).await;
    // The reconnect carries a resume filter, which this server refuses: the client falls back.
    simulator.inject(Fault::CutAfterRows(1));
    produce(&simulator, rows / 2..rows, rows);
    running.wait_until("every row", Duration::from_secs(30), |r| r.written() == rows as u64).await;
    assert_eq!(running.health.report().1["feeds"]["everything"]["state"], "streaming");
    running.shutdown().await;
    verify_feed(&feed_objects(&local_store(dir.path()), &Path::from("streams/everything")).await, rows, false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_query_is_reopened_after_the_idle_timeout() {
    let rows = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with(SimulatorConfig::default(), rows / 2, rows).await;
    let mut config =
        config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", "flush_max_age = \"200ms\"");
    config.ksqldb.idle_timeout = Duration::from_millis(500);
    let running = start(config, fast_reconnects());
    running.wait_until("first half", Duration::from_secs(30), |r| r.received() == (rows / 2) as u64).await;
    // The server stops sending but keeps the connection open, with rows waiting.
    simulator.inject(Fault::Stall(Duration::from_secs(120)));
    produce(&simulator, rows / 2..rows, rows);
    running
        .wait_until("a stall reconnect", Duration::from_secs(30), |r| {
            r.metrics.push_query_reconnects.with_label_values(&["everything", "stall"]).get() >= 1
        })
        .await;
    running.wait_until("every row", Duration::from_secs(30), |r| r.written() == rows as u64).await;
    running.shutdown().await;
    verify_feed(&feed_objects(&local_store(dir.path()), &Path::from("streams/everything")).await, rows, false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_ksqldb_answering_503_is_retried_until_ready() {
    let rows = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with(SimulatorConfig::default(), rows, rows).await;
    simulator.set_ready(false);
    let config =
        config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", "flush_max_age = \"200ms\"");
    let running = start(config, fast_reconnects());
    running.wait_until("retries while starting", Duration::from_secs(30), |r| reconnects(r) >= 3).await;
    assert_eq!(running.received(), 0);
    let (ready, body) = running.health.report();
    assert!(!ready && body["feeds"]["everything"]["state"] == "reconnecting", "{body}");
    simulator.set_ready(true);
    running.wait_until("every row", Duration::from_secs(30), |r| r.written() == rows as u64).await;
    assert!(running.health.report().0, "ready once streaming");
    running.shutdown().await;
    verify_feed(&feed_objects(&local_store(dir.path()), &Path::from("streams/everything")).await, rows, false);
    server.shutdown().await;
}
