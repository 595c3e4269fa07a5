//! Hostile input: malformed lines and undecodable rows between good ones. Every good row lands
//! exactly once, every bad one is in the dead letter exactly once (across a restart too), and
//! the feed goes on; a line longer than `max_line_bytes` is kept truncated, never held whole.

mod pipeline_support;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use ksql_lake::lake::FeedKind;
use ksql_lake::schema::parse_schema;
use ksql_lake::simulator::{Simulator, SimulatorConfig, Value};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use pipeline_support::{config, fast_options, start, Running, BASE_MS, SOURCE};

/// What a bad row is made of, as the column texts the simulator writes verbatim.
fn bad_columns(kind: u64) -> [String; 2] {
    match kind % 3 {
        // A raw newline inside a string: two lines, neither JSON; the second has no position.
        0 => ["7".to_string(), "\"broken\nrow".to_string()],
        // A string where a BIGINT belongs.
        1 => ["\"abc\"".to_string(), "\"x\"".to_string()],
        // An object where a STRING belongs is fine JSON but the wrong type.
        _ => ["8".to_string(), "{\"a\":1}".to_string()],
    }
}

/// Produces good rows `ids` (NAME = `good-<id>`) with a bad row after every `every`-th one;
/// returns how many rejected lines they make (a row split in two lines makes two).
fn produce(simulator: &Simulator, ids: std::ops::Range<i64>, every: i64) -> u64 {
    let mut bad = 0;
    let mut lines = 0;
    for id in ids {
        simulator
            .produce(SOURCE, None, BASE_MS + id * 1000, vec![Value::Bigint(id), Value::string(format!("good-{id}"))])
            .unwrap();
        if id % every == every - 1 {
            let columns = bad_columns(bad);
            let texts: Vec<&str> = columns.iter().map(String::as_str).collect();
            simulator.produce_rendered(SOURCE, [(None, BASE_MS + id * 1000, texts.as_slice())]).unwrap();
            lines += if bad % 3 == 0 { 2 } else { 1 };
            bad += 1;
        }
    }
    lines
}

fn dead_letter(running: &Running) -> u64 {
    running.metrics.dead_letter_rows.with_label_values(&["everything"]).get()
}

/// Good IDs in the data files (with their counts) and the dead-letter lines.
async fn read_lake(dir: &std::path::Path) -> (BTreeMap<i64, u32>, Vec<serde_json::Value>) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
    let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut ids = BTreeMap::new();
    let mut rejected = Vec::new();
    for meta in listed {
        let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap();
        let name = meta.location.as_ref();
        if name.ends_with(".parquet") {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let column = batch.column_by_name("ID").unwrap();
                let values = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(column.as_ref());
                for id in values.values().iter() {
                    *ids.entry(*id).or_insert(0) += 1;
                }
            }
        } else if name.ends_with(".jsonl") {
            assert!(name.starts_with("dead_letter/everything/year="), "{name}");
            for line in bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
                rejected.push(serde_json::from_slice(line).unwrap());
            }
        }
    }
    (ids, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_between_good_ones_go_to_the_dead_letter_exactly_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 2).unwrap();
    let mut bad = produce(&simulator, 0..1000, 50);
    let first_bad = bad;
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let lake_url = format!("file://{}", dir.path().display());
    let feed = "flush_max_age = \"300ms\"";
    let running = start(config(&server.url(), &lake_url, "daily", "", feed), fast_options());
    running.wait_until("the good rows", Duration::from_secs(60), |r| r.written() == 1000).await;
    running.wait_until("the bad rows", Duration::from_secs(60), |r| dead_letter(r) == bad).await;
    assert_eq!(running.health.report().1["feeds"]["everything"]["state"], "streaming", "the feed goes on");
    let by_type =
        |r: &Running, error_type: &str| r.metrics.rows_rejected.with_label_values(&["everything", error_type]).get();
    assert_eq!(by_type(&running, "frame") + by_type(&running, "value") + by_type(&running, "row_shape"), bad);
    assert!(by_type(&running, "frame") > 0 && by_type(&running, "value") > 0);
    running.shutdown().await;

    // A restart reads from the committed state: nothing is written twice, bad or good.
    bad += produce(&simulator, 1000..1200, 50);
    let running = start(config(&server.url(), &lake_url, "daily", "", feed), fast_options());
    running.wait_until("the new good rows", Duration::from_secs(60), |r| r.written() == 200).await;
    running.wait_until("the new bad rows", Duration::from_secs(60), |r| dead_letter(r) == bad - first_bad).await;
    running.shutdown().await;

    let (ids, rejected) = read_lake(dir.path()).await;
    assert_eq!(ids.len(), 1200, "every good row");
    assert!(ids.values().all(|&copies| copies == 1), "each once");
    assert_eq!(rejected.len() as u64, bad, "every bad row in the dead letter");
    let placed: Vec<&serde_json::Value> = rejected.iter().filter(|line| line["offset"].is_u64()).collect();
    let mut positions: Vec<(u64, u64)> =
        placed.iter().map(|line| (line["partition"].as_u64().unwrap(), line["offset"].as_u64().unwrap())).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), placed.len(), "each bad row with a position once");
    let unplaced = rejected.iter().filter(|line| line["offset"].is_null()).count();
    assert!(unplaced > 0 && rejected.iter().all(|line| line["offset"].is_u64() || line["raw"] == "row]"));
    assert!(rejected.iter().any(|line| line["raw"].as_str().unwrap().ends_with("\"broken")));
    assert!(rejected.iter().all(|line| line["feed"] == "everything" && line["error"].as_str().is_some()));

    let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let manifest = store.get(&Path::from("streams/everything/_metadata.json")).await.unwrap().bytes().await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["dead_letter"]["records"].as_u64(), Some(bad));
    assert_eq!(manifest["total_records"], 1200);
    let _ = FeedKind::Stream;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_max_line_bytes_is_kept_truncated_and_the_feed_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 1).unwrap();
    for id in 0..10 {
        simulator.produce(SOURCE, None, BASE_MS + id, vec![Value::Bigint(id), Value::string("a")]).unwrap();
    }
    let huge = format!("\"{}\"", "z".repeat(300_000));
    simulator.produce_rendered(SOURCE, [(None, BASE_MS + 10, ["10", huge.as_str()].as_slice())]).unwrap();
    for id in 11..20 {
        simulator.produce(SOURCE, None, BASE_MS + id, vec![Value::Bigint(id), Value::string("a")]).unwrap();
    }
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let feed = "flush_max_age = \"200ms\"\nmax_line_bytes = \"64KiB\"";
    let running =
        start(config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", feed), fast_options());
    running.wait_until("the other rows", Duration::from_secs(30), |r| r.written() == 19).await;
    running.wait_until("the long line", Duration::from_secs(30), |r| dead_letter(r) == 1).await;
    running.shutdown().await;
    let (ids, rejected) = read_lake(dir.path()).await;
    assert_eq!(ids.len(), 19);
    assert_eq!(rejected.len(), 1);
    let line = &rejected[0];
    assert_eq!(line["error_type"], "line_too_long");
    assert_eq!(line["truncated"], true);
    assert_eq!(line["raw"].as_str().unwrap().len(), 64 * 1024);
    assert!(line["length"].as_u64().unwrap() > 300_000);
    assert_eq!(line["offset"], 10, "its position is read from the start of the line");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_policy_fail_stops_the_feed_and_skip_keeps_nothing() {
    for (policy, stops) in [("fail", true), ("skip", false)] {
        let dir = tempfile::tempdir().unwrap();
        let simulator = Simulator::new(SimulatorConfig::default());
        simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 1).unwrap();
        let bad = produce(&simulator, 0..100, 25);
        let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let feed = format!("flush_max_age = \"200ms\"\nerror_policy = \"{policy}\"");
        let running = start(
            config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", &feed),
            fast_options(),
        );
        if stops {
            running
                .wait_until("the feed failed", Duration::from_secs(30), |r| {
                    r.health.report().1["feeds"]["everything"]["state"] == "failed"
                })
                .await;
            let error = running.health.report().1["feeds"]["everything"]["error"].as_str().unwrap().to_string();
            assert!(error.contains("could not be decoded"), "{error}");
            running.stop.cancel();
            let result = tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap().unwrap();
            assert!(format!("{:#}", result.unwrap_err()).contains("feed everything stopped"));
        } else {
            running.wait_until("the good rows", Duration::from_secs(30), |r| r.written() == 100).await;
            running.shutdown().await;
            let (ids, rejected) = read_lake(dir.path()).await;
            assert_eq!((ids.len(), rejected.len()), (100, 0));
        }
        let _ = bad;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_rejected_rows_than_the_limit_within_a_minute_stop_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 1).unwrap();
    produce(&simulator, 0..200, 2); // every other row is bad: 100 bad rows
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let feed = "flush_max_age = \"200ms\"\nmax_rejected_per_minute = 20";
    let running =
        start(config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", feed), fast_options());
    running
        .wait_until("the feed failed", Duration::from_secs(30), |r| {
            r.health.report().1["feeds"]["everything"]["state"] == "failed"
        })
        .await;
    let error = running.health.report().1["feeds"]["everything"]["error"].as_str().unwrap().to_string();
    assert!(error.contains("more than 20 rows could not be decoded within a minute"), "{error}");
    running.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_s3_shows_on_readyz_within_seconds_not_at_the_request_timeout() {
    let mut moto = support::Moto::start("lake").await;
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 1).unwrap();
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    // The default request timeout (30 s): the outage must show long before it.
    let lake_section = format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing\"\n[http]\nlisten = \"127.0.0.1:0\"",
        moto.endpoint
    );
    let feed = "flush_max_age = \"200ms\"";
    let mut options = fast_options();
    options.serve_http = true;
    let running = start(config(&server.url(), "s3://lake/frozen", "daily", &lake_section, feed), options);
    let good = |simulator: &Simulator, ids: std::ops::Range<i64>| {
        for id in ids {
            simulator.produce(SOURCE, None, BASE_MS + id, vec![Value::Bigint(id), Value::string("a")]).unwrap();
        }
    };
    good(&simulator, 0..100);
    running.wait_until("the first rows", Duration::from_secs(60), |r| r.written() == 100).await;
    let base = format!("http://{}", running.health.http_address().unwrap());
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);

    moto.pause();
    let frozen = std::time::Instant::now();
    good(&simulator, 100..200);
    let noticed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
            if ready.status() == 503 {
                return ready.json::<serde_json::Value>().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the frozen lake shows on /readyz");
    let after = frozen.elapsed();
    assert!(after < Duration::from_secs(4), "noticed after {after:?}");
    println!("a frozen S3 showed on /readyz after {after:?}");
    assert_eq!(noticed["store"]["state"], "failing", "{noticed}");
    assert!(running.metrics.store_up.get() == 0.0);
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(frozen.elapsed())).await;
    moto.resume();
    running.wait_until("every row after the outage", Duration::from_secs(90), |r| r.written() == 200).await;
    running.wait_until("ready again", Duration::from_secs(30), |r| r.health.report().0).await;
    running.shutdown().await;
    server.shutdown().await;
    moto.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_an_html_page_is_retried_not_fatal() {
    // A proxy in front of ksqlDB that answers every request with its own HTML page.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let proxy = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..200 {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await;
                let page = "<html><body>Gateway maintenance</body></html>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut options = fast_options();
    options.reconnect_backoff = Some(ksql_lake::backoff::Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        multiplier: 2.0,
    });
    let mut config = config(&url, &format!("file://{}", dir.path().display()), "daily", "", "");
    config.ksqldb.client.http2 = ksql_lake::ksqldb::client::Http2Mode::Never;
    let running = start(config, options);
    running
        .wait_until("retries with their own reason", Duration::from_secs(30), |r| {
            r.metrics.push_query_reconnects.with_label_values(&["everything", "content_type"]).get() >= 3
        })
        .await;
    assert_eq!(running.health.report().1["feeds"]["everything"]["state"], "reconnecting");
    running.stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap().unwrap();
    assert!(result.is_ok(), "never a permanent failure: {result:?}");
    proxy.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_timestamp_column_stops_the_feed_with_a_clear_error_before_any_row() {
    for (column, expected) in [("NOPE", "is not a column of EVERYTHING"), ("NAME", "has type STRING")] {
        let dir = tempfile::tempdir().unwrap();
        let simulator = Simulator::new(SimulatorConfig::default());
        simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 1).unwrap();
        produce(&simulator, 0..10, 1000);
        let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let feed = format!("timestamp_column = \"{column}\"");
        let running = start(
            config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", &feed),
            fast_options(),
        );
        running
            .wait_until("the feed failed", Duration::from_secs(30), |r| {
                r.health.report().1["feeds"]["everything"]["state"] == "failed"
            })
            .await;
        let error = running.health.report().1["feeds"]["everything"]["error"].as_str().unwrap().to_string();
        assert!(error.contains(expected) && error.contains("timestamp_column"), "{error}");
        assert_eq!(running.received(), 0, "no row was read and dropped");
        running.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), running.task).await.unwrap();
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_bad_rows_among_a_hundred_thousand_good_ones() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 3).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000);
    let mut bad_after: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    while bad_after.len() < 1000 {
        bad_after.insert(rng.random_range(0..100_000));
    }
    let mut lines = 0u64;
    let mut rows = Vec::new();
    for id in 0..100_000i64 {
        rows.push((None, BASE_MS + id * 1000, vec![Value::Bigint(id), Value::string(format!("good-{id}"))]));
        if bad_after.contains(&id) {
            simulator.produce_batch(SOURCE, std::mem::take(&mut rows)).unwrap();
            let kind = lines % 3;
            let columns = bad_columns(kind);
            let texts: Vec<&str> = columns.iter().map(String::as_str).collect();
            simulator.produce_rendered(SOURCE, [(None, BASE_MS + id * 1000, texts.as_slice())]).unwrap();
            lines += if kind == 0 { 2 } else { 1 };
        }
    }
    simulator.produce_batch(SOURCE, rows).unwrap();
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let feed = "flush_max_age = \"300ms\"\nmax_rejected_per_minute = 100000";
    let running =
        start(config(&server.url(), &format!("file://{}", dir.path().display()), "daily", "", feed), fast_options());
    running.wait_until("the good rows", Duration::from_secs(120), |r| r.written() == 100_000).await;
    running.wait_until("the bad rows", Duration::from_secs(60), |r| dead_letter(r) == lines).await;
    running.shutdown().await;
    let (ids, rejected) = read_lake(dir.path()).await;
    assert_eq!(ids.len(), 100_000);
    assert!(ids.values().all(|&copies| copies == 1));
    assert_eq!(rejected.len() as u64, lines);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_without_a_position_in_exactly_once_mode_goes_to_the_dead_letter() {
    // A server whose second row has null ROWPARTITION/ROWOFFSET: it cannot be tracked, so it
    // must not be written untracked (a crash would duplicate or lose it) but kept aside.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let header = r#"{"queryId":"q1","columnNames":["ROWTIME","ROWPARTITION","ROWOFFSET","ID"],"columnTypes":["BIGINT","INTEGER","BIGINT","BIGINT"]}"#;
        let mut served_rows = false;
        for _ in 0..50 {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut request = vec![0u8; 64 * 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await;
            let request = String::from_utf8_lossy(&request[..read.ok().and_then(Result::ok).unwrap_or(0)]).into_owned();
            if !request.starts_with("POST /query-stream") {
                let body = r#"{"KsqlServerInfo":{"version":"0.29.0","kafkaClusterId":"k","ksqlServiceId":"s","serverStatus":"RUNNING"}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                continue;
            }
            // Every connection gets the same rows and ends (the client reconnects): a row that
            // cannot be placed must still be kept only once. The broken line claims a position
            // far ahead; believing it would skip the genuine rows after it.
            let _ = std::mem::replace(&mut served_rows, true);
            let body = format!(
                "{header}\n[1714521600000,0,0,1]\n[1714521600001,null,null,2]\n[1714521600002,0,2,3]\n\
                 [1714521600003,0,99999999,\"broken\n[1714521600004,0,3,4]\n"
            );
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.ksqlapi.delimited.v1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        config(&url, &format!("file://{}", dir.path().display()), "daily", "", "flush_max_age = \"200ms\"");
    config.ksqldb.client.http2 = ksql_lake::ksqldb::client::Http2Mode::Never;
    let running = start(config, fast_options());
    running.wait_until("the tracked rows", Duration::from_secs(30), |r| r.written() == 3).await;
    let reconnects =
        |r: &Running| r.metrics.push_query_reconnects.with_label_values(&["everything", "terminated"]).get();
    running.wait_until("several reconnects", Duration::from_secs(30), |r| reconnects(r) >= 3).await;
    running.wait_until("the two unplaced lines", Duration::from_secs(30), |r| dead_letter(r) == 2).await;
    let position = running.metrics.rows_rejected.with_label_values(&["everything", "position"]).get();
    assert_eq!(position, 1, "the same untracked row on every reconnect is kept once");
    running.shutdown().await;
    let (ids, rejected) = read_lake(dir.path()).await;
    assert_eq!(ids.keys().copied().collect::<Vec<_>>(), [1, 3, 4], "the row after the broken line is not skipped");
    assert!(ids.values().all(|&copies| copies == 1));
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected.iter().any(|line| line["raw"] == "[1714521600001,null,null,2]"));
    assert!(rejected.iter().all(|line| line["offset"].is_null()), "neither position is believed");
    server.abort();
}
