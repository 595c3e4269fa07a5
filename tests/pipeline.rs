//! The main job end to end: the simulator's push query through the client, the decoder, the
//! partition buffers and the commit protocol into a lake on local disk and on a real
//! S3-compatible server (moto), read back value by value, then by DuckDB and pyarrow.

mod pipeline_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use ksql_lake::backoff::Backoff;
use ksql_lake::lake::testing::FaultyStore;
use ksql_lake::lake::{open_lake, FeedKind, Lake};
use ksql_lake::simulator::Fault;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use pipeline_support::*;
use support::{read_with_python, s3_options, Moto};

const ROWS: i64 = 6_000;

fn local_store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap())
}

fn feed_dir() -> Path {
    Path::from("streams/everything")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_lake_holds_every_row_once_with_every_type_in_its_hour() {
    let dir = tempfile::tempdir().unwrap();
    // Half the rows exist before the query opens, half arrive while it is open.
    let (simulator, server) = simulator_with_rows(0).await;
    produce(&simulator, 0..ROWS / 2, ROWS);
    let config = config(
        &server.url(),
        &format!("file://{}", dir.path().display()),
        "hourly",
        "",
        "flush_max_age = \"1s\"\nbatch_rows = 500",
    );
    let running = start(config, fast_options());
    running.wait_until("first half received", Duration::from_secs(60), |r| r.received() >= (ROWS / 2) as u64).await;
    produce(&simulator, ROWS / 2..ROWS, ROWS);
    running.wait_until("every row committed", Duration::from_secs(60), |r| r.written() == ROWS as u64).await;
    let files_by_age_or_close = running.metrics.files_written.with_label_values(&["everything", "age"]).get()
        + running.metrics.files_written.with_label_values(&["everything", "partition_close"]).get();
    assert!(files_by_age_or_close > 0, "the timer flushed files while the feed ran");
    let summary = running.shutdown().await;
    assert_eq!(summary.rows_written, ROWS as u64);
    assert_eq!(simulator.running_push_queries(), 0, "the push query was closed on shutdown");

    let objects = feed_objects(&local_store(dir.path()), &feed_dir()).await;
    verify_feed(&objects, ROWS, true);

    // DuckDB (hive partitioning) and pyarrow read the same lake and agree with what was produced.
    let read = read_with_python(&dir.path().join("streams/everything"), &["ID", "QTY"], None).await;
    let expected_ids: i64 = (0..ROWS).sum();
    let expected_qty: i64 = (0..ROWS).map(|id| id * 3 - 1000).sum();
    for reader in ["duckdb", "pyarrow"] {
        assert_eq!(read[reader]["count"], ROWS, "{reader}: {read}");
        assert_eq!(read[reader]["sum:ID"], expected_ids.to_string(), "{reader}");
        assert_eq!(read[reader]["sum:QTY"], expected_qty.to_string(), "{reader}");
    }
    let days: Vec<String> = read["duckdb"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[2].as_str().unwrap().to_string())
        .collect();
    assert_eq!(days, ["01", "02", "03"], "DuckDB sees the three days as hive partitions");
    assert_eq!(read["pyarrow"]["schema"]["AMOUNT"], "decimal128(12, 2)");
    assert_eq!(read["pyarrow"]["schema"]["TS"], "timestamp[ms, tz=UTC]");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_lake_holds_every_row_once_and_duckdb_reads_it_from_s3() {
    let moto = Moto::start("lake").await;
    let (_simulator, server) = simulator_with_rows(ROWS).await;
    let lake_section = format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"",
        moto.endpoint
    );
    // Nothing flushes on its own (no age, and days never close): every file is written by the
    // shutdown flush.
    let config = config(
        &server.url(),
        "s3://lake/warehouse",
        "daily",
        &lake_section,
        "flush_max_age = \"1h\"\nallowed_lateness = \"3650d\"",
    );
    let running = start(config, fast_options());
    running.wait_until("every row received", Duration::from_secs(60), |r| r.received() == ROWS as u64).await;
    assert_eq!(running.written(), 0);
    let metrics = running.metrics.clone();
    let summary = running.shutdown().await;
    assert_eq!(summary.rows_written, ROWS as u64);
    assert_eq!(metrics.files_written.with_label_values(&["everything", "shutdown"]).get(), summary.files_written);

    let lake = open_lake("s3://lake/warehouse", &s3_options(&moto.endpoint)).unwrap();
    let feed = lake.feed_dir(FeedKind::Stream, "everything").unwrap();
    let objects = feed_objects(lake.store(), &feed).await;
    verify_feed(&objects, ROWS, false);

    let read = read_with_python(
        std::path::Path::new("unused"),
        &["ID"],
        Some((&moto.endpoint.replace("http://", ""), "lake/warehouse/streams/everything")),
    )
    .await;
    assert_eq!(read["duckdb"]["count"], ROWS, "{read}");
    assert_eq!(read["duckdb"]["sum:ID"], (0..ROWS).sum::<i64>().to_string());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_bounds_buffers_under_a_flood() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000;
    let (_simulator, server) = simulator_with_rows(rows).await;
    let budget = 1 << 20;
    let config = config(
        &server.url(),
        &format!("file://{}", dir.path().display()),
        "daily",
        "[memory]\nbudget = \"1MiB\"",
        "flush_max_age = \"1h\"\nallowed_lateness = \"3650d\"\nbatch_rows = 256",
    );
    let running = start(config, fast_options());
    let mut peak = 0.0f64;
    let flood = tokio::time::timeout(Duration::from_secs(90), async {
        while running.received() < rows as u64 {
            peak = peak.max(running.metrics.memory_used_bytes.get());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(flood.is_ok(), "the flood was not received within 90 s (received {})", running.received());
    let by_memory = running.metrics.files_written.with_label_values(&["everything", "memory"]).get();
    // What stays under the budget is written by the shutdown flush.
    let summary = running.shutdown().await;
    assert_eq!(summary.rows_written, rows as u64);
    assert!(by_memory > 0, "the budget forced flushes");
    // What is reserved never grows with the flood: the buffers and queued batches stay within
    // the budget plus one decoded batch in flight; the two encodes under way each reserve their
    // file's rows' working memory, at most three times a file of at most a third of the budget.
    assert!(peak <= (budget * 3 + budget / 2) as f64, "peak {peak} bytes against a budget of {budget}");
    verify_feed(&feed_objects(&local_store(dir.path()), &feed_dir()).await, rows, false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_retried_and_leave_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (_simulator, server) = simulator_with_rows(ROWS).await;
    let faulty = FaultyStore::with_filter(local_store(dir.path()), ".parquet");
    faulty.fail_next_puts(4);
    let lake = Lake::new(faulty.clone(), Path::from(""), "faulty local lake");
    let config = config(&server.url(), "memory:///unused", "daily", "", "flush_max_age = \"1s\"");
    let mut options = fast_options();
    options.lake = Some(lake);
    options.write_retry.initial = Duration::from_millis(10);
    let running = start(config, options);
    running.wait_until("every row committed", Duration::from_secs(60), |r| r.written() == ROWS as u64).await;
    let retries = running.metrics.write_retries.with_label_values(&["everything"]).get();
    running.shutdown().await;
    assert!(retries >= 1, "failed puts were retried ({retries})");
    assert!(faulty.puts() > 4);
    verify_feed(&feed_objects(&local_store(dir.path()), &feed_dir()).await, ROWS, false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_are_reopened_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with_rows(0).await;
    let config =
        config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", "flush_max_age = \"1s\"");
    let mut options = fast_options();
    options.reconnect_backoff =
        Some(Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(50), multiplier: 2.0 });
    let running = start(config, options);
    running.wait_until("query open", Duration::from_secs(30), |_| simulator.running_push_queries() == 1).await;
    // Produce in rounds; after each round cut the connection a few hundred rows into the replay.
    let rounds = 5;
    for round in 0..rounds {
        produce_round(&simulator, round, rounds);
        simulator.inject_next(Fault::CutAfterRows(300));
        simulator.inject(Fault::CutAfterRows(200));
        let target = ((round + 1) * ROWS / rounds) as u64;
        running.wait_until("round received", Duration::from_secs(60), |r| r.received() >= target).await;
    }
    running.wait_until("every row committed", Duration::from_secs(60), |r| r.written() == ROWS as u64).await;
    let reconnects = running.metrics.push_query_reconnects.with_label_values(&["everything", "disconnect"]).get()
        + running.metrics.push_query_reconnects.with_label_values(&["everything", "terminated"]).get();
    running.shutdown().await;
    assert!(reconnects >= 1, "the connection was cut and reopened");
    verify_feed(&feed_objects(&local_store(dir.path()), &feed_dir()).await, ROWS, false);
    server.shutdown().await;
}

fn produce_round(simulator: &ksql_lake::simulator::Simulator, round: i64, rounds: i64) {
    let per_round = ROWS / rounds;
    produce(simulator, round * per_round..(round + 1) * per_round, ROWS);
}
