//! The subcommands. Each one reads its inputs, calls into the library, and prints for people.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use ksql_lake::config::{units::parse_duration, Config, FeedConfig};
use ksql_lake::demo;
use ksql_lake::simulator::{Simulator, SimulatorConfig};

/// Logs to standard error at `level` unless `RUST_LOG` says otherwise.
pub fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c received; shutting down"),
            _ = terminate => tracing::info!("SIGTERM received; shutting down"),
        }
        trigger.cancel();
    });
    token
}

pub async fn run(config_path: &Path, ksqldb: Option<String>, lake: Option<String>) -> anyhow::Result<()> {
    let config = load_with_overrides(config_path, ksqldb, lake)?;
    let shutdown = shutdown_on_signal();
    let summary = ksql_lake::pipeline::run(config, shutdown).await?;
    tracing::info!(rows = summary.rows_written, files = summary.files_written, "stopped cleanly");
    Ok(())
}

/// `ksql-lake export`: exit status 1 when ksqlDB or the lake cannot be reached, 2 for bad
/// arguments (see `main`).
pub async fn export(
    config_path: &Path,
    ksqldb: Option<String>,
    lake: Option<String>,
    selection: ksql_lake::pipeline::export::Selection,
    parallel: usize,
    until_idle: &str,
) -> anyhow::Result<()> {
    use ksql_lake::pipeline::export::{self, ExportError};
    let until_idle = ksql_lake::config::parse_duration(until_idle)
        .map_err(|message| UsageError(format!("--until-idle `{until_idle}`: {message}")))?;
    let config = load_with_overrides(config_path, ksqldb, lake)?;
    let started = std::time::Instant::now();
    match export::export(&config, &selection, parallel, until_idle, shutdown_on_signal()).await {
        Ok(lines) => {
            print!("{}", export::summary_table(&lines));
            let rows: u64 = lines.iter().map(|line| line.rows).sum();
            println!("exported {rows} rows from {} feeds in {:.1} s", lines.len(), started.elapsed().as_secs_f64());
            Ok(())
        }
        Err(ExportError::Usage(message)) => Err(UsageError(message).into()),
        Err(ExportError::Unreachable(message)) => Err(anyhow::anyhow!(message)),
        Err(ExportError::Failed(error)) => Err(error),
    }
}

/// A mistake in the command line: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The memory budget `run` or `export` will use, read early to size the allocator; `None` when
/// the config cannot be read (the command then reports why) or is not a plain file: a pipe or
/// `/dev/stdin` can be read only once, by the command itself.
pub fn memory_budget(config_path: &Path, ksqldb: Option<String>, lake: Option<String>) -> Option<u64> {
    if !std::fs::metadata(config_path).is_ok_and(|meta| meta.is_file()) {
        return None;
    }
    load_with_overrides(config_path, ksqldb, lake).ok().map(|config| config.memory_budget_bytes)
}

fn load_with_overrides(config_path: &Path, ksqldb: Option<String>, lake: Option<String>) -> anyhow::Result<Config> {
    let mut config = Config::load(config_path)?;
    if let Some(url) = ksqldb {
        config.ksqldb.client.url = ksqldb_flag(&url).map_err(anyhow::Error::msg)?;
    }
    if let Some(url) = lake {
        lake_flag(&url).map_err(anyhow::Error::msg)?;
        config.lake.url = url;
    }
    Ok(config)
}

/// `--ksqldb` as a URL, refused with a user name or password in it (they would be printed).
fn ksqldb_flag(url: &str) -> Result<url::Url, String> {
    let redacted = ksql_lake::config::redact_url(url);
    let parsed = url::Url::parse(url).map_err(|error| format!("--ksqldb `{redacted}` is not a URL: {error}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "--ksqldb must not contain a user name or password: set ksqldb.username and KSQL_LAKE_KSQLDB__PASSWORD"
                .into(),
        );
    }
    Ok(parsed)
}

/// `--lake`, refused with credentials in it.
fn lake_flag(url: &str) -> Result<(), String> {
    if url.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@')) {
        return Err("--lake must not contain credentials: set them in [lake] or the AWS_* environment variables".into());
    }
    Ok(())
}

pub async fn check(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    println!("✔ config {} is valid ({} feeds)", config_path.display(), config.feeds.len());
    let report = ksql_lake::pipeline::check(&config).await;
    let mut failed = false;
    for (what, result) in report {
        match result {
            Ok(detail) => println!("✔ {what}: {detail}"),
            Err(error) => {
                failed = true;
                println!("✖ {what}: {error}");
            }
        }
    }
    if failed {
        bail!("some checks failed");
    }
    Ok(())
}

/// The benchmark dataset the simulator serves (`--bench-rows`).
pub struct BenchData {
    pub rows: u64,
    pub streams: u32,
    pub ndjson: Option<PathBuf>,
}

pub async fn simulator(
    listen: &str,
    demo_data: bool,
    rate: u32,
    retention_rows: usize,
    bench: Option<BenchData>,
) -> anyhow::Result<()> {
    let listen: SocketAddr = listen.parse().with_context(|| format!("--listen `{listen}` is not an address"))?;
    let retention = (retention_rows > 0 && bench.is_none()).then_some(retention_rows);
    let simulator = Simulator::new(SimulatorConfig { retention, ..SimulatorConfig::default() });
    let stop = shutdown_on_signal();
    if let Some(bench) = bench {
        let mut bytes = 0;
        for stream in 1..=bench.streams {
            bytes += ksql_lake::simulator::bench::load_transactions(
                &simulator,
                &format!("TRANSACTIONS_{stream}"),
                bench.rows,
            )?;
        }
        if let Some(path) = &bench.ndjson {
            let file = std::fs::File::create(path).with_context(|| format!("--bench-ndjson {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            ksql_lake::simulator::bench::write_ndjson(&mut out, bench.rows)?;
            std::io::Write::flush(&mut out)?;
        }
        let server = simulator.serve(listen).await?;
        println!("ready url={} rows={} bytes={bytes}", server.url(), bench.rows * u64::from(bench.streams));
        stop.cancelled().await;
        server.shutdown().await;
        return Ok(());
    }
    if demo_data {
        demo::create_sources(&simulator);
        let mut generator = demo::Generator::new(7);
        let now = chrono::Utc::now().timestamp_millis();
        generator.load_history(&simulator, now, Duration::from_secs(3 * 86_400), 30_000);
        tokio::spawn(demo::produce_live(Arc::new(simulator.clone()), generator, rate, stop.clone()));
    }
    eprintln!("ksqlDB simulator listening on http://{listen} (Ctrl-C to stop)");
    let stopped = stop.clone();
    ksql_lake::simulator::run_standalone(listen, simulator, async move { stopped.cancelled().await }).await?;
    Ok(())
}

pub async fn demo(duration: &str, lake: &str, rate: u32) -> anyhow::Result<()> {
    let duration = parse_duration(duration).map_err(anyhow::Error::msg).context("--duration")?;
    ksql_lake::pipeline::demo::run_demo(lake, duration, rate, shutdown_on_signal()).await
}

pub async fn rebuild_metadata(config_path: &Path, feed: &str) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // a table's changelog feed is named after it, not in the file
    let kind =
        config.feeds.iter().flat_map(FeedConfig::with_changelog).find(|run| run.name == feed).map(|run| run.kind);
    let Some(kind) = kind else {
        bail!("no feed named `{feed}` in {}", config_path.display());
    };
    let lake = ksql_lake::lake::open_lake(&config.lake.url, &config.lake.store)?;
    let metadata = ksql_lake::lake::rebuild(&lake, kind, feed).await?;
    let files: usize = metadata.partitions.iter().map(|partition| partition.files.len()).sum();
    println!(
        "rebuilt _metadata.json of {feed}: {} rows in {files} files over {} partitions (previous kept as _metadata.json.bak)",
        metadata.total_records,
        metadata.partitions.len()
    );
    Ok(())
}

/// Where `feeds` and `report` find the lake (and ksqlDB): the global flags, else the config.
pub struct Target {
    pub config: Option<PathBuf>,
    pub ksqldb: Option<String>,
    pub lake: Option<String>,
}

impl Target {
    fn config(&self) -> anyhow::Result<Option<Config>> {
        match &self.config {
            Some(path) => Ok(Some(load_with_overrides(path, self.ksqldb.clone(), self.lake.clone())?)),
            None => Ok(None),
        }
    }

    fn lake(&self) -> anyhow::Result<ksql_lake::lake::Lake> {
        let (url, options) = match self.config()? {
            Some(config) => (config.lake.url, config.lake.store),
            None => match &self.lake {
                Some(url) => {
                    lake_flag(url).map_err(UsageError)?;
                    (url.clone(), ksql_lake::lake::S3Options::default())
                }
                None => {
                    return Err(UsageError(
                        "give the lake: --lake URL (or KSQL_LAKE_LAKE__URL), or --config FILE".into(),
                    )
                    .into())
                }
            },
        };
        ksql_lake::lake::open_lake(&url, &options).with_context(|| format!("cannot open the lake {url}"))
    }

    fn defaults(&self) -> anyhow::Result<ksql_lake::config::raw::RawFeedSettings> {
        Ok(self.config()?.map(|config| config.feed_defaults).unwrap_or_default())
    }

    fn client(&self) -> anyhow::Result<(ksql_lake::ksqldb::KsqlClient, String)> {
        let client_config = match self.config()? {
            Some(config) => config.ksqldb.client,
            None => {
                let url = self.ksqldb.as_deref().ok_or_else(|| {
                    UsageError("--check needs ksqlDB: --ksqldb URL (or KSQL_LAKE_KSQLDB__URL), or --config FILE".into())
                })?;
                ksql_lake::config::ClientConfig::new(ksqldb_flag(url).map_err(UsageError)?)
            }
        };
        let url = ksql_lake::config::redact_url(client_config.url.as_str());
        Ok((ksql_lake::ksqldb::KsqlClient::new(client_config)?, url))
    }
}

/// `feeds` errors a person can act on are usage errors (exit 2); the store failing is not.
fn feeds_error(error: ksql_lake::feeds::FeedsError) -> anyhow::Error {
    use ksql_lake::feeds::FeedsError;
    match error {
        FeedsError::Store { .. } | FeedsError::Corrupt { .. } => anyhow::Error::new(error),
        other => UsageError(other.to_string()).into(),
    }
}

pub async fn feeds_add(target: &Target, raw: ksql_lake::config::raw::RawFeed, check: bool) -> anyhow::Result<()> {
    let defaults = target.defaults()?;
    // validate before asking anyone anything
    ksql_lake::config::validate::validate_feed("feed", &raw, &defaults).map_err(|error| match error {
        // name the flag to fix: `feed.flush_max_age` → `--flush-max-age`
        ksql_lake::config::ConfigError::Invalid { key, message } => {
            let field = key.rsplit('.').next().unwrap_or(&key).replace('_', "-");
            UsageError(format!("--{field}: {message}"))
        }
        other => UsageError(other.to_string()),
    })?;
    if check {
        let (client, url) = target.client()?;
        let columns = tokio::time::timeout(std::time::Duration::from_secs(15), client.describe(&raw.source))
            .await
            .map_err(|_| anyhow::anyhow!("ksqlDB at {url} did not answer DESCRIBE within 15 s"))?
            .map_err(|error| anyhow::anyhow!("ksqlDB at {url}: {}", error.with_causes()))?;
        let keys: Vec<&str> = columns.iter().filter(|(_, key)| *key).map(|(name, _)| name.as_str()).collect();
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        println!("✔ {} exists: {} columns: {}", raw.source, names.len(), names.join(", "));
        println!("  key: {}", if keys.is_empty() { "none".to_string() } else { keys.join(", ") });
    }
    let registry = ksql_lake::feeds::FeedRegistry::new(target.lake()?);
    let feed = registry.add(&raw, &defaults).await.map_err(feeds_error)?;
    println!(
        "added {} feed `{}` ({}) from {}{}",
        feed.kind.as_str(),
        feed.name,
        if feed.enabled { "enabled" } else { "disabled" },
        feed.source,
        if feed.enabled { ": a running ksql-lake starts it within seconds" } else { "" }
    );
    Ok(())
}

pub async fn feeds_list(target: &Target, json: bool) -> anyhow::Result<()> {
    let registry = ksql_lake::feeds::FeedRegistry::new(target.lake()?);
    let (feeds, problems) = registry.list().await.map_err(feeds_error)?;
    for (path, reason) in &problems {
        eprintln!("✖ {path} is not a valid feed file: {reason}");
    }
    if json {
        let entries: Vec<serde_json::Value> =
            feeds.iter().map(|feed| serde_json::json!({"state": feed.state.dir(), "feed": feed.json})).collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    println!("{:<32} {:<6} {:<9} {:<8} SOURCE", "FEED", "KIND", "STATE", "ENABLED");
    for feed in &feeds {
        println!(
            "{:<32} {:<6} {:<9} {:<8} {}",
            feed.raw.name,
            feed.raw.kind,
            feed.state.dir(),
            if feed.raw.enabled.unwrap_or(true) { "yes" } else { "no" },
            feed.raw.source
        );
    }
    if feeds.is_empty() {
        println!("(no feeds in the lake: add one with `ksql-lake --lake URL feeds add …`)");
    }
    Ok(())
}

pub async fn feeds_show(target: &Target, name: &str) -> anyhow::Result<()> {
    let registry = ksql_lake::feeds::FeedRegistry::new(target.lake()?);
    match registry.find(name).await.map_err(feeds_error)? {
        Some(feed) => {
            let shown = serde_json::json!({"state": feed.state.dir(), "feed": feed.json});
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        None => Err(UsageError(format!("no feed named `{name}` in the lake")).into()),
    }
}

/// A change of a feed's state.
pub enum FeedChange {
    Enable,
    Disable,
    Archive,
    Restore,
}

pub async fn feeds_change(target: &Target, name: &str, change: FeedChange) -> anyhow::Result<()> {
    let registry = ksql_lake::feeds::FeedRegistry::new(target.lake()?);
    let message = match change {
        FeedChange::Enable => match registry.set_enabled(name, true).await.map_err(feeds_error)? {
            true => format!("enabled `{name}`: a running ksql-lake starts it within seconds"),
            false => format!("`{name}` was already enabled"),
        },
        FeedChange::Disable => match registry.set_enabled(name, false).await.map_err(feeds_error)? {
            true => format!("disabled `{name}`: a running ksql-lake commits its buffers and stops it"),
            false => format!("`{name}` was already disabled"),
        },
        FeedChange::Archive => {
            registry.archive(name).await.map_err(feeds_error)?;
            format!("archived `{name}`; its data stays in the lake (`feeds restore {name}` brings it back)")
        }
        FeedChange::Restore => {
            registry.restore(name).await.map_err(feeds_error)?;
            format!("restored `{name}`, disabled: `feeds enable {name}` starts it")
        }
    };
    println!("{message}");
    Ok(())
}

pub async fn report(target: &Target, feed: Option<&str>, format: &str) -> anyhow::Result<()> {
    let lake = target.lake()?;
    let report = match ksql_lake::report::build(&lake, feed).await {
        Ok(report) => report,
        Err(error @ ksql_lake::report::ReportError::UnknownFeed(_)) => return Err(UsageError(error.to_string()).into()),
        Err(error) => return Err(anyhow::Error::new(error).context(format!("reading the lake {lake}"))),
    };
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "csv" => print!("{}", ksql_lake::report::render_csv(&report)),
        _ => print!("{}", ksql_lake::report::render_table(&report)),
    }
    Ok(())
}
