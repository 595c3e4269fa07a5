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
        /// Overrides `[ksqldb] url`.
        #[arg(long)]
        ksqldb: Option<String>,
        /// Overrides `[lake] url`.
        #[arg(long)]
        lake: Option<String>,
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

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete, commented config with every default.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config, ksqldb, lake } => cli::run(&config, ksqldb, lake).await,
            Command::Demo { duration, lake, rate } => cli::demo(&duration, &lake, rate).await,
            Command::Check { config } => cli::check(&config).await,
            Command::Config { command: ConfigCommand::Default } => {
                print!("{}", ksql_lake::config::DEFAULT_CONFIG);
                Ok(())
            }
            Command::Metadata { command: MetadataCommand::Rebuild { config, feed } } => {
                cli::rebuild_metadata(&config, &feed).await
            }
            Command::Simulator { listen, demo_data, rate, retention_rows } => {
                cli::simulator(&listen, demo_data, rate, retention_rows).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<ksql_lake::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
