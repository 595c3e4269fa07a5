//! The subcommands. Each one reads its inputs, calls into the library, and prints for people.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use ksql_lake::config::{units::parse_duration, Config};
use ksql_lake::demo;
use ksql_lake::simulator::{Simulator, SimulatorConfig};

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    let mut config = Config::load(config_path)?;
    if let Some(url) = ksqldb {
        let redacted = ksql_lake::config::redact_url(&url);
        let parsed = url::Url::parse(&url).with_context(|| format!("--ksqldb `{redacted}` is not a URL"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            anyhow::bail!(
                "--ksqldb must not contain a user name or password: set ksqldb.username and KSQL_LAKE_KSQLDB__PASSWORD"
            );
        }
        config.ksqldb.client.url = parsed;
    }
    if lake.as_deref().is_some_and(|url| {
        url.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
    }) {
        anyhow::bail!("--lake must not contain credentials: set them in [lake] or the AWS_* environment variables");
    }
    if let Some(url) = lake {
        config.lake.url = url;
    }
    let shutdown = shutdown_on_signal();
    let summary = ksql_lake::pipeline::run(config, shutdown).await?;
    tracing::info!(rows = summary.rows_written, files = summary.files_written, "stopped cleanly");
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

pub async fn simulator(listen: &str, demo_data: bool, rate: u32, retention_rows: usize) -> anyhow::Result<()> {
    let listen: SocketAddr = listen.parse().with_context(|| format!("--listen `{listen}` is not an address"))?;
    let retention = (retention_rows > 0).then_some(retention_rows);
    let simulator = Simulator::new(SimulatorConfig { retention, ..SimulatorConfig::default() });
    let stop = shutdown_on_signal();
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
    let Some(feed_config) = config.feed(feed) else {
        bail!("no feed named `{feed}` in {}", config_path.display());
    };
    let lake = ksql_lake::lake::open_lake(&config.lake.url, &config.lake.store)?;
    let metadata = ksql_lake::lake::rebuild(&lake, feed_config.kind, feed).await?;
    let files: usize = metadata.partitions.iter().map(|partition| partition.files.len()).sum();
    println!(
        "rebuilt _metadata.json of {feed}: {} rows in {files} files over {} partitions (previous kept as _metadata.json.bak)",
        metadata.total_records,
        metadata.partitions.len()
    );
    Ok(())
}
