//! `ksql-lake demo`: the whole pipeline against the in-process simulator with the demo
//! dataset, into a local lake, for a bounded time; then a summary and how to read the result.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{run_with, RunOptions};
use crate::config::Config;
use crate::demo::{self, Generator};
use crate::lake::{self, FeedKind};
use crate::metrics::{Health, Metrics};
use crate::simulator::{Simulator, SimulatorConfig};

/// Transactions of history loaded before the live rows, spread over the last three days.
const HISTORY_ROWS: u64 = 60_000;
const HISTORY_SPAN: Duration = Duration::from_secs(3 * 86_400);
/// Rows each demo source keeps: all of the history, which the feeds read from the earliest
/// offset, and 30 s of live rows at the default rate; memory is flat from then on.
const DEMO_RETENTION_ROWS: usize = 2 * HISTORY_ROWS as usize;

/// The demo's feeds: one per source, with a short `flush_max_age` so files appear quickly.
fn demo_config(ksqldb_url: &str, lake_url: &str) -> String {
    format!(
        r#"
[ksqldb]
url = "{ksqldb_url}"
[lake]
url = "{lake_url}"
[http]
listen = "127.0.0.1:0"
[defaults]
flush_max_age = "10s"
[[feeds]]
name = "transaction_stream"
kind = "stream"
source = "{}"
partitioning = "daily"
[[feeds]]
name = "transaction_flattened"
kind = "stream"
source = "{}"
partitioning = "hourly"
[[feeds]]
name = "user_transaction_summary"
kind = "table"
source = "{}"
snapshot_interval = "10s"
"#,
        demo::TRANSACTION_STREAM,
        demo::TRANSACTION_FLATTENED,
        demo::USER_TRANSACTION_SUMMARY
    )
}

pub async fn run_demo(lake_url: &str, duration: Duration, rate: u32, stop: CancellationToken) -> anyhow::Result<()> {
    let simulator =
        Simulator::new(SimulatorConfig { retention: Some(DEMO_RETENTION_ROWS), ..SimulatorConfig::default() });
    demo::create_sources(&simulator);
    let mut generator = Generator::new(42);
    generator.load_history(&simulator, chrono::Utc::now().timestamp_millis(), HISTORY_SPAN, HISTORY_ROWS);
    let server = simulator.serve("127.0.0.1:0".parse().expect("valid address")).await?;
    let producing = CancellationToken::new();
    tokio::spawn(demo::produce_live(Arc::new(simulator.clone()), generator, rate, producing.clone()));

    let lake_url = local_lake_url(lake_url)?;
    let config = Config::from_toml(&demo_config(&server.url(), &lake_url), "demo", Vec::new())?;
    eprintln!(
        "ksql-lake demo: ksqlDB simulator at {}, {HISTORY_ROWS} transactions of history then {rate}/s live, \
         ingesting into {lake_url} for {duration:?} (Ctrl-C stops early)",
        server.url()
    );
    let run_stop = CancellationToken::new();
    let timer_stop = run_stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = stop.cancelled() => {}
        }
        timer_stop.cancel();
    });
    let feeds = config.feeds.clone();
    let lake_config = config.lake.clone();
    let metrics = Metrics::new(prometheus::Registry::new());
    let names: Vec<String> = feeds.iter().map(|feed| feed.name.clone()).collect();
    let health = Health::default();
    let display = tokio::spawn(show_progress(metrics.clone(), health.clone(), names, run_stop.clone()));
    let summary = run_with(config, run_stop, metrics, health, RunOptions::default()).await;
    display.abort();
    producing.cancel();
    server.shutdown().await;
    let summary = summary?;

    let lake = lake::open_lake(&lake_config.url, &lake_config.store)?;
    println!("\nwrote {} rows in {} files:", summary.rows_written, summary.files_written);
    for feed in &feeds {
        let kind = feed.kind;
        let path = lake.metadata_path(kind, &feed.name)?;
        let Some((metadata, _)) = lake::manifests::load_full(lake.store().as_ref(), &path).await? else {
            println!("  {}: nothing committed", feed.name);
            continue;
        };
        if let Some(latest) = metadata.latest() {
            println!(
                "  {}/{}: {} rows in {}/ ({} files, {:.2} MB), {} versions kept",
                kind.dir(),
                feed.name,
                latest.records,
                latest.path,
                latest.files.len(),
                latest.bytes as f64 / 1e6,
                metadata.versions.len()
            );
            continue;
        }
        let files: usize = metadata.partitions.iter().map(|partition| partition.files.len()).sum();
        println!(
            "  {}/{}: {} rows, {} files, {} partitions, {:.2} MB",
            kind.dir(),
            feed.name,
            metadata.total_records,
            files,
            metadata.partitions.len(),
            metadata.total_bytes as f64 / 1e6
        );
    }
    let root = lake_config.url.trim_start_matches("file://");
    let stream_dir = format!("{root}/{}/transaction_stream", FeedKind::Stream.dir());
    println!(
        "\nread it with DuckDB:\n  duckdb -c \"SELECT year, month, day, count(*), sum(AMOUNT) FROM \
         read_parquet('{stream_dir}/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\"\n\
         or pandas:\n  python3 -c \"import pandas as pd; df = pd.read_parquet('{stream_dir}'); \
         print(df.groupby('day').size())\"\n\
         each feed's _metadata.json (with the segments in _manifests/ it names) lists its partitions, files, schema and committed positions."
    );
    Ok(())
}

/// A few live lines per feed while the demo runs (every 5 s); the full log is `-v` away.
async fn show_progress(metrics: Metrics, health: Health, feeds: Vec<String>, stop: CancellationToken) {
    let started = std::time::Instant::now();
    for _ in 0..50 {
        if let Some(address) = health.http_address() {
            eprintln!("status page: http://{address}/ (metrics at /metrics, feeds as JSON at /feeds)");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names: Vec<&str> = feeds.iter().map(String::as_str).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        eprintln!("after {:.0} s:", started.elapsed().as_secs_f64());
        for line in super::export::progress(&metrics, &names, started.elapsed()) {
            eprintln!("{line}");
        }
    }
}

/// Marks a folder the demo wrote.
const DEMO_MARKER: &str = ".ksql-lake-demo";

/// Each demo starts a new simulator, whose offsets begin at 0 again, so the committed
/// positions of an earlier demo's lake would hide the new rows: an earlier demo lake is
/// replaced, and a folder that holds anything else is refused.
fn prepare_demo_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.join(DEMO_MARKER).is_file() {
        eprintln!("replacing the earlier demo lake in {}", dir.display());
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the earlier demo lake {}", dir.display()))?;
    } else if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "--lake {} is not empty and was not written by the demo: choose an empty or new folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(DEMO_MARKER), "written by `ksql-lake demo`; the next demo replaces this folder\n")
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    Ok(())
}

/// The demo writes to a local folder: make it absolute so the printed commands work anywhere.
fn local_lake_url(lake: &str) -> anyhow::Result<String> {
    if lake.contains("://") {
        return Ok(lake.to_string());
    }
    prepare_demo_dir(std::path::Path::new(lake))?;
    let absolute = std::fs::canonicalize(lake).with_context(|| format!("cannot resolve {lake}"))?;
    Ok(format!("file://{}", absolute.display()))
}
