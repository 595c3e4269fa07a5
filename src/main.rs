//! The `ksql-lake` command: parses arguments, sets up logging, dispatches to the library and
//! maps errors to exit codes (2 for a bad config or usage, 1 for anything else).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "ksql-lake", version, about = "Streams ksqlDB push queries into a partitioned Parquet lake")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "KSQL_LAKE_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Log every step (`info`); `demo` and `export` otherwise show only their own progress
    /// and warnings. `RUST_LOG` overrides both.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// The ksqlDB server (overrides `[ksqldb] url`); no user name or password in it.
    #[arg(long, global = true, env = "KSQL_LAKE_KSQLDB__URL")]
    ksqldb: Option<String>,
    /// The lake: a path, file://, s3://bucket/prefix … (overrides `[lake] url`). S3
    /// credentials come from the config or the AWS_* environment variables.
    #[arg(long, global = true, env = "KSQL_LAKE_LAKE__URL")]
    lake: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every enabled feed until SIGTERM or Ctrl-C.
    Run {
        /// The config file.
        #[arg(long, short, env = "KSQL_LAKE_CONFIG")]
        config: PathBuf,
    },
    /// One pass, then exit: each stream feed from its committed position until idle (flushed
    /// and committed, exactly once), each table feed as a new snapshot version.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["stream", "table", "all"])))]
    Export {
        #[arg(long, short, env = "KSQL_LAKE_CONFIG")]
        config: PathBuf,
        /// Export this stream feed.
        #[arg(long)]
        stream: Option<String>,
        /// Snapshot this table feed.
        #[arg(long)]
        table: Option<String>,
        /// Export every enabled feed.
        #[arg(long)]
        all: bool,
        /// Feeds exported at once (default: the number of cores).
        #[arg(long)]
        parallel: Option<usize>,
        /// A stream is done once no row has arrived for this long.
        #[arg(long, default_value = "5s")]
        until_idle: String,
    },
    /// Manage the feeds kept in the lake (`<lake>/feeds/`); a running `run` picks up changes
    /// within seconds. Needs only `--lake` (and `--ksqldb` for `add --check`).
    Feeds {
        /// A config file, for its `[lake]`, `[ksqldb]` and `[defaults]` (optional).
        #[arg(long, short, env = "KSQL_LAKE_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: FeedsCommand,
    },
    /// What the lake holds per feed, from the manifests alone.
    Report {
        /// A config file, for its `[lake]` (optional: `--lake` is enough).
        #[arg(long, short, env = "KSQL_LAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Only this feed.
        #[arg(long)]
        feed: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Run the whole pipeline against a built-in ksqlDB simulator with sample data.
    Demo {
        /// How long to ingest.
        #[arg(long, default_value = "30s")]
        duration: String,
        /// Where to write the lake.
        #[arg(long, default_value = "./data_lake")]
        lake: String,
        /// Rows per second produced into each demo stream.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
    },
    /// Validate a config, then try ksqlDB and the lake.
    Check {
        #[arg(long, short, env = "KSQL_LAKE_CONFIG")]
        config: PathBuf,
    },
    /// Config helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage a feed's `_metadata.json`.
    Metadata {
        #[command(subcommand)]
        command: MetadataCommand,
    },
    /// Serve the ksqlDB-compatible simulator (for trying ksql-lake without ksqlDB).
    Simulator {
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: String,
        /// Load the demo streams and keep producing rows into them.
        #[arg(long)]
        demo_data: bool,
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Rows each source keeps, like a topic's retention: older ones are dropped, so memory
        /// stays flat however long it runs (0 keeps everything).
        #[arg(long, default_value_t = ksql_lake::simulator::DEFAULT_RETENTION_ROWS)]
        retention_rows: usize,
        /// Benchmarks: serve this many rows of the transactions dataset in each of the streams
        /// TRANSACTIONS_1, TRANSACTIONS_2, ... (kept whole, whatever --retention-rows says),
        /// then print one line `ready url=… rows=… bytes=…` on stdout.
        #[arg(long, value_name = "ROWS")]
        bench_rows: Option<u64>,
        /// Benchmarks: how many such streams.
        #[arg(long, default_value_t = 1, value_name = "STREAMS")]
        bench_streams: u32,
        /// Benchmarks: also write the rows of one stream to FILE as newline-delimited JSON.
        #[arg(long, value_name = "FILE", requires = "bench_rows")]
        bench_ndjson: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MetadataCommand {
    /// Rebuild `_metadata.json` from the feed's data files alone (the old one is kept as
    /// `_metadata.json.bak`). Run it while ksql-lake is stopped.
    Rebuild {
        #[arg(long, short, env = "KSQL_LAKE_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        feed: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args)]
struct AddArgs {
    #[arg(long)]
    name: String,
    /// stream or table.
    #[arg(long)]
    kind: String,
    /// The ksqlDB stream or table.
    #[arg(long)]
    source: String,
    /// daily or hourly.
    #[arg(long)]
    partitioning: Option<String>,
    #[arg(long)]
    timestamp_column: Option<String>,
    /// exactly-once, at-least-once, latest, continuation-token.
    #[arg(long)]
    delivery: Option<String>,
    #[arg(long)]
    flush_max_rows: Option<u64>,
    #[arg(long)]
    flush_max_bytes: Option<String>,
    #[arg(long)]
    flush_max_age: Option<String>,
    /// Table feeds.
    #[arg(long)]
    snapshot_interval: Option<String>,
    /// Table feeds: auto, pull, changelog.
    #[arg(long)]
    snapshot_method: Option<String>,
    /// Table feeds.
    #[arg(long)]
    retention_versions: Option<u64>,
    /// Table feeds: also keep every change (upserts and deletes) as the stream
    /// `tables/<name>/changelog/`, exactly once.
    #[arg(long)]
    changelog: bool,
    /// Add it disabled.
    #[arg(long)]
    disabled: bool,
    /// Ask ksqlDB first whether the source exists, and show its columns and key.
    #[arg(long)]
    check: bool,
}

impl AddArgs {
    /// The feed as a feed file holds it.
    fn into_feed(self) -> ksql_lake::config::raw::RawFeed {
        let settings = ksql_lake::config::raw::RawFeedSettings {
            partitioning: self.partitioning,
            timestamp_column: self.timestamp_column,
            delivery: self.delivery,
            flush_max_rows: self.flush_max_rows,
            flush_max_bytes: self.flush_max_bytes,
            flush_max_age: self.flush_max_age,
            snapshot_interval: self.snapshot_interval,
            snapshot_method: self.snapshot_method,
            retention_versions: self.retention_versions,
            changelog: self.changelog.then_some(true),
            ..Default::default()
        };
        ksql_lake::config::raw::RawFeed {
            name: self.name,
            kind: self.kind,
            source: self.source,
            enabled: Some(!self.disabled),
            query: None,
            settings,
        }
    }
}

#[derive(Subcommand)]
enum FeedsCommand {
    /// Add a feed (validated like a `[[feeds]]` entry; created disabled with `--disabled`).
    Add(Box<AddArgs>),
    /// Every feed with its state.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// One feed's definition, as stored.
    Show { name: String },
    /// Start ingesting an active feed.
    Enable { name: String },
    /// Stop ingesting an active feed (its buffers are committed first).
    Disable { name: String },
    /// Move a feed to `feeds/archived/`, disabled; its data stays.
    Archive { name: String },
    /// Move an archived feed back to `feeds/active/`, still disabled.
    Restore { name: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete, commented config with every default.
    Default,
}

/// glibc's malloc gives memory at the top of a heap back to the kernel once 128 KiB are free
/// there, and serves allocations from 128 KiB up (growing to 32 MiB) with mmap: at full speed
/// the same buffers went back and forth, and zeroing the fresh pages took 15% of the CPU.
/// Freed memory is kept for reuse up to these sizes instead. The service also keeps to two
/// arenas (glibc makes up to eight per core, each holding freed memory of its own): its
/// threads hand buffers to each other, and more arenas held 100 MiB more at the same budget.
/// The simulator keeps glibc's arenas: it allocates per row on every thread. An operator's
/// own settings (`GLIBC_TUNABLES`, `MALLOC_ARENA_MAX`, ...) win over these.
///
/// What is kept scales with the memory budget (a 32nd of it, 1 to 16 MiB): with a budget of
/// 64 MiB, 16 MiB kept per heap was a third of the peak.
fn tune_allocator(service: bool, budget: Option<u64>) {
    let keep = budget.map_or(16 << 20, |budget| (budget / 32).clamp(1 << 20, 16 << 20)) as libc::c_int;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none() && std::env::var_os("GLIBC_TUNABLES").is_none();
        // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
        unsafe {
            if unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, keep);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, keep);
            }
            if service && unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (service, keep);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let budget = match &cli.command {
        Command::Run { config } | Command::Export { config, .. } => {
            cli::memory_budget(config, cli.ksqldb.clone(), cli.lake.clone())
        }
        _ => None,
    };
    tune_allocator(!matches!(cli.command, Command::Simulator { .. }), budget);
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Export { .. }) && !cli.verbose;
    cli::init_logging(&cli.log_format, if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => cli::run(&config, cli.ksqldb, cli.lake).await,
            Command::Feeds { config, command } => {
                let target = cli::Target { config, ksqldb: cli.ksqldb, lake: cli.lake };
                match command {
                    FeedsCommand::Add(add) => {
                        let check = add.check;
                        cli::feeds_add(&target, add.into_feed(), check).await
                    }
                    FeedsCommand::List { format } => {
                        cli::feeds_list(&target, matches!(format, ReportFormat::Json)).await
                    }
                    FeedsCommand::Show { name } => cli::feeds_show(&target, &name).await,
                    FeedsCommand::Enable { name } => cli::feeds_change(&target, &name, cli::FeedChange::Enable).await,
                    FeedsCommand::Disable { name } => cli::feeds_change(&target, &name, cli::FeedChange::Disable).await,
                    FeedsCommand::Archive { name } => cli::feeds_change(&target, &name, cli::FeedChange::Archive).await,
                    FeedsCommand::Restore { name } => cli::feeds_change(&target, &name, cli::FeedChange::Restore).await,
                }
            }
            Command::Report { config, feed, format } => {
                let target = cli::Target { config, ksqldb: cli.ksqldb, lake: cli.lake };
                let format = match format {
                    ReportFormat::Table => "table",
                    ReportFormat::Csv => "csv",
                    ReportFormat::Json => "json",
                };
                cli::report(&target, feed.as_deref(), format).await
            }
            Command::Export { config, stream, table, all: _, parallel, until_idle } => {
                use ksql_lake::pipeline::export::Selection;
                let selection = match (stream, table) {
                    (Some(name), _) => Selection::Stream(name),
                    (None, Some(name)) => Selection::Table(name),
                    (None, None) => Selection::All,
                };
                let parallel = parallel.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                cli::export(&config, cli.ksqldb, cli.lake, selection, parallel, &until_idle).await
            }
            Command::Demo { duration, lake, rate } => cli::demo(&duration, &lake, rate).await,
            Command::Check { config } => cli::check(&config).await,
            Command::Config { command: ConfigCommand::Default } => {
                print!("{}", ksql_lake::config::DEFAULT_CONFIG);
                Ok(())
            }
            Command::Metadata { command: MetadataCommand::Rebuild { config, feed } } => {
                cli::rebuild_metadata(&config, &feed).await
            }
            Command::Simulator { listen, demo_data, rate, retention_rows, bench_rows, bench_streams, bench_ndjson } => {
                let bench =
                    bench_rows.map(|rows| cli::BenchData { rows, streams: bench_streams, ndjson: bench_ndjson });
                cli::simulator(&listen, demo_data, rate, retention_rows, bench).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<ksql_lake::config::ConfigError>().is_some()
                || error.downcast_ref::<cli::UsageError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
