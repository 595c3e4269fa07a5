//! End-to-end throughput of one feed: the simulator's push query over HTTP, the client and
//! decoder, partition routing, buffering, Parquet encoding (zstd) and commits to a local lake.
//! Prints rows/s, response MB/s, the Parquet bytes written and the process's peak memory.
//!
//! `cargo bench --bench pipeline [-- ROWS]` (default 2,000,000 rows of the 8-column shape).
//! The simulator runs in the same process, so both cores are shared with it.

use std::time::{Duration, Instant};

use ksql_lake::config::Config;
use ksql_lake::metrics::{Health, Metrics};
use ksql_lake::pipeline::{run_with, RunOptions};
use ksql_lake::schema::parse_schema;
use ksql_lake::simulator::{Simulator, SimulatorConfig};
use tokio_util::sync::CancellationToken;

const SCHEMA: &str = "`ID` BIGINT, `NAME` STRING, `PRICE` DOUBLE, `AMOUNT` DECIMAL(20, 4), \
                      `AT` TIMESTAMP, `OK` BOOLEAN, `QTY` INTEGER, `NOTE` STRING";

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let rows: usize = std::env::args().skip(1).find_map(|arg| arg.parse().ok()).unwrap_or(2_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(rows));
}

async fn run(rows: usize) {
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream("BENCH", parse_schema(SCHEMA).unwrap(), 4).unwrap();
    let base_ms: i64 = 1_700_000_000_000;
    let generated = Instant::now();
    let mut response_bytes = 0usize;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(100_000) {
        let texts: Vec<[String; 8]> = chunk
            .iter()
            .map(|&i| {
                let ms = base_ms + i as i64 * 37;
                let at = chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.3f");
                [
                    (1_000_000_000_000i64 + i as i64).to_string(),
                    format!("\"customer-{}\"", i % 10_007),
                    format!("{}.{}", i % 1000, i % 97 + 1),
                    format!("{}.{:04}", i % 100_000, i % 10_000),
                    format!("\"{at}\""),
                    (i % 3 == 0).to_string(),
                    (i % 5000).to_string(),
                    format!("\"note {}\"", i % 101),
                ]
            })
            .collect();
        response_bytes += texts.iter().map(|row| row.iter().map(String::len).sum::<usize>() + 40).sum::<usize>();
        let refs: Vec<[&str; 8]> = texts.iter().map(|row| std::array::from_fn(|c| row[c].as_str())).collect();
        simulator
            .produce_rendered(
                "BENCH",
                refs.iter().enumerate().map(|(n, row)| (None, base_ms + (chunk[n] as i64) * 37, &row[..])),
            )
            .unwrap();
    }
    eprintln!("generated {rows} rows in {:.1?}", generated.elapsed());
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        &format!(
            "[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"file://{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [[feeds]]\nname = \"bench\"\nkind = \"stream\"\nsource = \"BENCH\"\npartitioning = \"hourly\"\n",
            server.url(),
            dir.path().display()
        ),
        "bench",
        Vec::new(),
    )
    .unwrap();
    let metrics = Metrics::new(prometheus::Registry::new());
    let stop = CancellationToken::new();
    let options = RunOptions { serve_http: false, ..RunOptions::default() };
    let started = Instant::now();
    let task = tokio::spawn(run_with(config, stop.clone(), metrics.clone(), Health::default(), options));
    let received = metrics.rows_received.with_label_values(&["bench"]);
    while (received.get() as usize) < rows {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Everything is decoded; the shutdown flush commits what is still buffered.
    stop.cancel();
    let summary = task.await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(summary.rows_written as usize, rows, "every row committed");
    let parquet_bytes = metrics.bytes_written.with_label_values(&["bench"]).get();
    let seconds = elapsed.as_secs_f64();
    println!(
        "pipeline: {rows} rows in {seconds:.2} s = {:.0} rows/s, {:.1} MB/s of ksqlDB response, \
         {} files, {:.1} MB Parquet, peak RSS {:.0} MiB",
        rows as f64 / seconds,
        response_bytes as f64 / 1e6 / seconds,
        summary.files_written,
        parquet_bytes as f64 / 1e6,
        peak_rss_mib()
    );
    server.shutdown().await;
}
