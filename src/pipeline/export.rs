//! `ksql-lake export`: one pass over some feeds, then exit.
//!
//! - A stream feed runs the same pipeline as `run`, from its committed position, until no row
//!   has arrived for the idle time; then every buffer is flushed and committed, as at a
//!   shutdown. Its guarantee is the feed's delivery (exactly-once by default): two exports in a
//!   row write each row once.
//! - A table feed is snapshotted as a new version.
//!
//! Feeds run `parallel` at a time. On a terminal a line per feed shows its progress every
//! second; a summary follows in any case.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{run_with, table, RunOptions};
use crate::config::{Config, FeedConfig};
use crate::ksqldb::client::KsqlClient;
use crate::lake::{self, FeedKind};
use crate::metrics::{Health, Metrics};

/// Which feeds to export.
#[derive(Debug, Clone)]
pub enum Selection {
    Stream(String),
    Table(String),
    All,
}

/// One feed's figures at the end of an export.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportLine {
    pub feed: String,
    pub kind: &'static str,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// The table version written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Why an export could not run: `Unreachable` maps to exit status 1, `Usage` to 2.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Runs the export; `progress` prints live lines on standard error.
pub async fn export(
    config: &Config,
    selection: &Selection,
    parallel: usize,
    until_idle: Duration,
    stop: CancellationToken,
) -> Result<Vec<ExportLine>, ExportError> {
    let feeds = select(config, selection)?;
    let client = Arc::new(KsqlClient::new(config.ksqldb.client.clone()).context("ksqlDB client")?);
    let url = crate::config::redact_url(config.ksqldb.client.url.as_str());
    match tokio::time::timeout(Duration::from_secs(10), client.info()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            return Err(ExportError::Unreachable(format!("cannot reach ksqlDB at {url}: {}", error.with_causes())))
        }
        Err(_) => return Err(ExportError::Unreachable(format!("ksqlDB at {url} did not answer /info within 10 s"))),
    }
    let lake = lake::open_lake(&config.lake.url, &config.lake.store)
        .map_err(|error| ExportError::Unreachable(format!("cannot open the lake {}: {error}", config.lake.url)))?;
    let probe = lake.store().list_with_delimiter(Some(lake.root()));
    match tokio::time::timeout(Duration::from_secs(30), probe).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(ExportError::Unreachable(format!("cannot reach the lake {lake}: {error}"))),
        Err(_) => return Err(ExportError::Unreachable(format!("the lake {lake} did not answer within 30 s"))),
    }
    let parallel = parallel.max(1);
    let (tables, mut streams): (Vec<FeedConfig>, Vec<FeedConfig>) =
        feeds.into_iter().partition(|feed| feed.kind == FeedKind::Table);
    // a table's changelog is exported like a stream, from where it stopped
    streams.extend(tables.iter().filter_map(FeedConfig::changelog_feed));
    let mut lines = Vec::new();
    for group in tables.chunks(parallel) {
        let runs = group.iter().map(|feed| export_table(&client, &lake, feed, config, &stop));
        for line in futures::future::join_all(runs).await {
            lines.push(line?);
        }
    }
    for group in streams.chunks(parallel) {
        lines.extend(export_streams(config, group, &lake, until_idle, &stop).await?);
    }
    Ok(lines)
}

fn select(config: &Config, selection: &Selection) -> Result<Vec<FeedConfig>, ExportError> {
    let find = |name: &str, kind: FeedKind| {
        let feed = config.feeds.iter().find(|feed| feed.name == name).ok_or_else(|| {
            let known: Vec<&str> = config.feeds.iter().map(|feed| feed.name.as_str()).collect();
            ExportError::Usage(format!("no feed named `{name}`; the config has: {}", known.join(", ")))
        })?;
        if feed.kind != kind {
            return Err(ExportError::Usage(format!(
                "feed `{name}` is a {}: use --{} {name}",
                feed.kind.as_str(),
                feed.kind.as_str()
            )));
        }
        Ok(feed.clone())
    };
    let feeds = match selection {
        Selection::Stream(name) => vec![find(name, FeedKind::Stream)?],
        Selection::Table(name) => vec![find(name, FeedKind::Table)?],
        Selection::All => config.feeds.iter().filter(|feed| feed.enabled).cloned().collect(),
    };
    if feeds.is_empty() {
        return Err(ExportError::Usage("no enabled feed to export".into()));
    }
    Ok(feeds)
}

async fn export_table(
    client: &KsqlClient,
    lake: &lake::Lake,
    feed: &FeedConfig,
    config: &Config,
    stop: &CancellationToken,
) -> Result<ExportLine, ExportError> {
    let started = Instant::now();
    let (writer, settings) = super::table_feed(lake, feed, config.memory_budget_bytes, config.lake.lease)?;
    let summary = table::snapshot(client, &writer, &settings, stop)
        .await
        .with_context(|| format!("snapshot of table feed {}", feed.name))?;
    let done = summary.committed;
    Ok(ExportLine {
        feed: feed.name.clone(),
        kind: "table",
        rows: done.records,
        files: done.files as u64,
        bytes: done.bytes,
        seconds: started.elapsed().as_secs_f64(),
        version: Some(done.version),
    })
}

/// Runs the pipeline for `feeds` until none has received a row for `until_idle`.
async fn export_streams(
    config: &Config,
    feeds: &[FeedConfig],
    lake: &lake::Lake,
    until_idle: Duration,
    stop: &CancellationToken,
) -> Result<Vec<ExportLine>, ExportError> {
    let started = Instant::now();
    let mut config = config.clone();
    config.feeds = feeds.iter().cloned().map(|feed| FeedConfig { enabled: true, ..feed }).collect();
    let metrics = Metrics::new(prometheus::Registry::new());
    let idle = stop.child_token();
    let watcher = tokio::spawn(watch_idle(metrics.clone(), feeds.to_vec(), until_idle, idle.clone()));
    let options =
        RunOptions { serve_http: false, lake: Some(lake.clone()), lake_feeds: false, ..RunOptions::default() };
    let result = run_with(config, idle.clone(), metrics.clone(), Health::default(), options).await;
    idle.cancel();
    let _ = watcher.await;
    result?;
    Ok(feeds
        .iter()
        .map(|feed| {
            let labels = [feed.name.as_str()];
            ExportLine {
                feed: feed.name.clone(),
                kind: feed.kind.as_str(),
                rows: metrics.rows_written.with_label_values(&labels).get(),
                files: files_written(&metrics, &feed.name),
                bytes: metrics.bytes_written.with_label_values(&labels).get(),
                seconds: started.elapsed().as_secs_f64(),
                version: None,
            }
        })
        .collect())
}

/// Files committed for `feed`, whatever the flush reason.
fn files_written(metrics: &Metrics, feed: &str) -> u64 {
    use prometheus::core::Collector;
    let families = metrics.files_written.collect();
    let series = families.iter().flat_map(|family| family.get_metric());
    series
        .filter(|series| series.get_label().iter().any(|label| label.name() == "feed" && label.value() == feed))
        .map(|series| series.get_counter().get_value() as u64)
        .sum()
}

/// How long an export waits for a first row before the idle time starts counting.
const FIRST_ROW_WAIT: Duration = Duration::from_secs(10);

/// Cancels `idle` once no feed has received a row for `until_idle`; prints progress on a terminal.
async fn watch_idle(metrics: Metrics, feeds: Vec<FeedConfig>, until_idle: Duration, idle: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let received = |feed: &FeedConfig| metrics.rows_received.with_label_values(&[feed.name.as_str()]).get();
    let mut last: Vec<u64> = feeds.iter().map(received).collect();
    // the idle clock starts with the first row: opening the queries (and ksqlDB starting them
    // from the earliest offset) may take longer than the idle time; a feed with nothing new
    // ends after FIRST_ROW_WAIT more
    let mut quiet_since = Instant::now() + FIRST_ROW_WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut printed = Instant::now();
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = idle.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now: Vec<u64> = feeds.iter().map(received).collect();
        if now != last {
            quiet_since = Instant::now();
            last = now;
        }
        if terminal && printed.elapsed() >= Duration::from_secs(1) {
            printed = Instant::now();
            let names: Vec<&str> = feeds.iter().map(|feed| feed.name.as_str()).collect();
            for line in progress(&metrics, &names, started.elapsed()) {
                eprintln!("{line}");
            }
        }
        if Instant::now() >= quiet_since && quiet_since.elapsed() >= until_idle {
            tracing::info!(idle = ?until_idle, "no row arrived for the idle time; flushing and committing");
            idle.cancel();
            return;
        }
    }
}

/// One line per feed: rows received and committed, the rate, files and MiB written.
pub fn progress(metrics: &Metrics, feeds: &[&str], elapsed: Duration) -> Vec<String> {
    feeds
        .iter()
        .map(|feed| {
            let received = metrics.rows_received.with_label_values(&[*feed]).get();
            let written = metrics.rows_written.with_label_values(&[*feed]).get();
            let bytes = metrics.bytes_written.with_label_values(&[*feed]).get();
            let rate = received as f64 / elapsed.as_secs_f64().max(0.001);
            format!(
                "  {feed:<28} {received:>10} rows read {rate:>9.0}/s {written:>10} committed {:>5} files {:>8.1} MiB",
                files_written(metrics, feed),
                bytes as f64 / 1048576.0
            )
        })
        .collect()
}

/// The summary table: feed, kind, rows, files, bytes, seconds.
pub fn summary_table(lines: &[ExportLine]) -> String {
    let mut out =
        format!("{:<32} {:<10} {:>12} {:>6} {:>14} {:>8}\n", "FEED", "KIND", "ROWS", "FILES", "BYTES", "SECONDS");
    for line in lines {
        let kind = match line.version {
            Some(version) => format!("{} v{version}", line.kind),
            None => line.kind.to_string(),
        };
        out.push_str(&format!(
            "{:<32} {:<10} {:>12} {:>6} {:>14} {:>8.1}\n",
            line.feed, kind, line.rows, line.files, line.bytes, line.seconds
        ));
    }
    out
}
