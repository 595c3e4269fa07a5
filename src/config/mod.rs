//! Configuration: a TOML file, overridable key by key from the environment, validated into the
//! typed [`Config`] the service runs on.
//!
//! Every key can come from an environment variable named `KSQL_LAKE_` + the key's path in upper
//! case with `__` between the parts: `KSQL_LAKE_KSQLDB__URL`, `KSQL_LAKE_KSQLDB__PASSWORD`,
//! `KSQL_LAKE_DEFAULTS__FLUSH_MAX_AGE`, `KSQL_LAKE_FEEDS__TRANSACTION_STREAM__PARTITIONING`
//! (a feed is named by its `name`). The environment wins over the file.

mod default_file;
pub mod raw;
pub mod units;
pub mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use default_file::DEFAULT_CONFIG;
pub use raw::RawConfig;
pub use units::{parse_byte_size, parse_duration};
pub use validate::validate;

/// The domain types the config is parsed into, re-exported so config users need only this module.
pub use crate::ksqldb::client::{ClientConfig, Http2Mode};
pub use crate::lake::S3Options;
pub use crate::lake::{Compression, FeedKind, Partitioning};

/// The environment prefix of config overrides.
pub const ENV_PREFIX: &str = "KSQL_LAKE_";

/// A config that could not be loaded. The message names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub ksqldb: KsqldbConfig,
    pub lake: LakeConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_listen: SocketAddr,
    /// One budget for the buffered rows of every feed and partition.
    pub memory_budget_bytes: u64,
    /// How long a SIGTERM may take: below Kubernetes' default 30 s grace period.
    pub shutdown_grace: Duration,
    pub feeds: Vec<FeedConfig>,
    /// `[defaults]` as written: what feed files in the lake inherit (see `feeds`).
    pub feed_defaults: raw::RawFeedSettings,
    /// `(replicas, ordinal)`: this process runs the feeds `cluster::owner_of` gives it.
    pub cluster: (u32, u32),
}

impl Config {
    /// Whether this replica runs `feed`.
    pub fn runs_here(&self, feed: &str) -> bool {
        crate::cluster::owner_of(feed, self.cluster.0) == self.cluster.1
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KsqldbConfig {
    /// How to reach the server: URL, auth, TLS, HTTP version, connect timeout.
    pub client: ClientConfig,
    /// A push query that sends no byte for this long is treated as stalled and reopened.
    pub idle_timeout: Duration,
    /// Reconnect delays grow exponentially (with jitter) from the first to the largest.
    pub reconnect_backoff_initial: Duration,
    pub reconnect_backoff_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LakeConfig {
    /// Local path, file://, s3://bucket/prefix, gs://, az://.
    pub url: String,
    /// Endpoint, region, credentials and the request timeout (`extra` key `timeout`).
    pub store: S3Options,
    /// How long a feed's writer lease holds without renewal.
    pub lease: Duration,
}

/// Where a row's event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTime {
    /// ksqlDB's ROWTIME (selected explicitly: `SELECT *` leaves it out).
    Rowtime,
    /// A TIMESTAMP or epoch-milliseconds BIGINT column of the source.
    Column(String),
    /// The time ksql-lake received the row.
    ProcessingTime,
}

/// What survives a disconnect, a crash or a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
    Latest,
    ContinuationToken,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::ExactlyOnce => "exactly-once",
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::Latest => "latest",
            Delivery::ContinuationToken => "continuation-token",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    pub name: String,
    pub kind: FeedKind,
    /// The ksqlDB stream or table.
    pub source: String,
    pub enabled: bool,
    pub query: Option<String>,
    pub settings: FeedSettings,
}

impl FeedConfig {
    /// The stream feed that keeps this table feed's changelog, when `changelog = true`: named
    /// `<name>.changelog`, stored under `tables/<name>/changelog/`, read exactly once from the
    /// table's push query and partitioned by ROWTIME (a delete, which carries none, by its
    /// arrival time).
    pub fn changelog_feed(&self) -> Option<FeedConfig> {
        if self.kind != FeedKind::Table || !self.settings.changelog {
            return None;
        }
        let mut settings = self.settings.clone();
        settings.delivery = Delivery::ExactlyOnce;
        settings.event_time = EventTime::Rowtime;
        // deletes have no ROWTIME: they go by the time they arrive
        settings.invalid_event_time = crate::lake::InvalidEventTime::ArrivalTime;
        // the table's snapshot settings are not the changelog's: changing them must not
        // restart it (a restart replays the whole changelog)
        settings.snapshot_interval = Duration::ZERO;
        settings.snapshot_method = SnapshotMethod::Auto;
        settings.retention_versions = 0;
        Some(FeedConfig {
            name: crate::lake::changelog_feed_name(&self.name),
            kind: FeedKind::Changelog,
            source: self.source.clone(),
            enabled: self.enabled,
            query: None,
            settings,
        })
    }

    /// This feed, then its changelog feed if it has one: what runs for it.
    pub fn with_changelog(&self) -> impl Iterator<Item = FeedConfig> {
        std::iter::once(self.clone()).chain(self.changelog_feed())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedSettings {
    pub partitioning: Partitioning,
    pub event_time: EventTime,
    pub timezone: chrono_tz::Tz,
    pub compression: Compression,
    pub row_group_rows: usize,
    /// Rows decoded into one Arrow batch before it is routed to partitions.
    pub batch_rows: usize,
    pub flush_max_rows: u64,
    /// Target Parquet file size, in encoded bytes.
    pub flush_max_bytes: u64,
    pub flush_max_age: Duration,
    pub allowed_lateness: Duration,
    pub delivery: Delivery,
    /// What happens to a row or line that cannot be decoded.
    pub error_policy: ErrorPolicy,
    /// More rejected rows than this within a minute stop the feed.
    pub max_rejected_per_minute: u64,
    /// A longer line is rejected (and dead-lettered truncated) without being held whole.
    pub max_line_bytes: usize,
    /// Where rows without a usable event time are partitioned.
    pub invalid_event_time: crate::lake::InvalidEventTime,
    /// Table feeds: how often a snapshot is taken.
    pub snapshot_interval: Duration,
    /// Table feeds: how a snapshot reads the table.
    pub snapshot_method: SnapshotMethod,
    /// Table feeds: complete versions kept (the newest is never deleted).
    pub retention_versions: usize,
    /// Table feeds: also keep the table's changes, upserts and deletes, as the stream feed
    /// `<name>.changelog` (see [`FeedConfig::changelog_feed`]).
    pub changelog: bool,
}

/// How a table feed reads its table for a snapshot (see `pipeline::table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMethod {
    /// `pull`, or `changelog` when ksqlDB refuses the table scan.
    Auto,
    /// The table scan `SELECT * FROM T;`.
    Pull,
    /// The push-query changelog from the earliest offset, materialized by key.
    Changelog,
}

/// What happens to a row or line that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Kept in `<lake>/dead_letter/<feed>/` as JSON lines, exactly once; the feed goes on.
    DeadLetter,
    /// Counted and logged, not kept; the feed goes on.
    Skip,
    /// The feed stops with the error.
    Fail,
}

impl Config {
    /// Loads a config file, applies the environment overrides and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses TOML text, overlays the given environment, and validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // toml's own message quotes the offending line, which may hold a password: say where
        // and what, not the line.
        let mut document: toml::Table = text.parse().map_err(|error: toml::de::Error| {
            let line = error.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let place = line.map(|line| format!("line {line}: ")).unwrap_or_default();
            ConfigError::Parse { origin: origin.to_string(), message: format!("{place}{}", error.message()) }
        })?;
        apply_env(&mut document, env)?;
        let secrets = secret_values(&document);
        let feed_tables = document.get("feeds").cloned();
        // The path names the key of a wrong type (`feeds[0].batch_rows`), which toml alone does not.
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(document)).map_err(|error| {
            let mut path = error.path().to_string();
            let message = redact(error.inner().message(), &secrets);
            if let Some(key) = flattened_key(&path, feed_tables.as_ref()) {
                path = format!("{path}.{key}");
            }
            if path.is_empty() || path == "." {
                ConfigError::Parse { origin: origin.to_string(), message }
            } else {
                ConfigError::Invalid { key: path, message }
            }
        })?;
        validate(raw).map_err(|error| match error {
            ConfigError::Invalid { key, message } => ConfigError::Invalid { key, message: redact(&message, &secrets) },
            other => other,
        })
    }

    pub fn feed(&self, name: &str) -> Option<&FeedConfig> {
        self.feeds.iter().find(|feed| feed.name == name)
    }
}

/// A feed's settings are flattened into its table, which hides the key of a wrong-typed value
/// from the path (`feeds[0]`): find it by reading the settings on their own.
fn flattened_key(path: &str, feeds: Option<&toml::Value>) -> Option<String> {
    let index: usize = path.strip_prefix("feeds[")?.strip_suffix(']')?.parse().ok()?;
    let mut table = feeds?.as_array()?.get(index)?.as_table()?.clone();
    for own in ["name", "kind", "source", "enabled", "query"] {
        table.remove(own);
    }
    let error = serde_path_to_error::deserialize::<_, raw::RawFeedSettings>(toml::Value::Table(table)).err()?;
    Some(error.path().to_string())
}

/// Keys whose values never appear in any output.
pub const SECRET_KEYS: [&str; 3] = ["password", "secret_access_key", "session_token"];

/// The values of the secret keys in `document`, to keep them out of error messages.
fn secret_values(document: &toml::Table) -> Vec<String> {
    let mut found = Vec::new();
    for value in document.values() {
        if let toml::Value::Table(table) = value {
            for (key, value) in table {
                if SECRET_KEYS.contains(&key.as_str()) {
                    found.push(value.as_str().map_or_else(|| value.to_string(), str::to_string));
                }
            }
        }
    }
    found.retain(|secret| !secret.is_empty());
    found
}

fn redact(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_string(), |message, secret| message.replace(secret.as_str(), "<redacted>"))
}

/// `url` with any user name and password replaced, for messages; works on text that does not
/// parse as a URL too.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Overlays `KSQL_LAKE_SECTION__KEY[__KEY]` variables onto the parsed file. Variables without a
/// `__` (such as `KSQL_LAKE_CAPTURES`) are not config keys and are left alone.
fn apply_env(document: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let overrides: BTreeMap<String, String> =
        env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__")).collect();
    for (name, value) in overrides {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|part| part.to_ascii_lowercase()).collect();
        // A secret is text whatever it looks like: `123456` is a password, not a number.
        let value = if path.last().is_some_and(|key| SECRET_KEYS.contains(&key.as_str())) {
            toml::Value::String(value)
        } else {
            env_value(&value)
        };
        match path.as_slice() {
            [section, key] if section != "feeds" => {
                let table = document.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(table) = table else {
                    return Err(ConfigError::invalid(section.clone(), "must be a table"));
                };
                table.insert(key.clone(), value);
            }
            [section, feed_name, key] if section == "feeds" => {
                let Some(toml::Value::Array(feeds)) = document.get_mut("feeds") else {
                    return Err(ConfigError::invalid(name.clone(), "no [[feeds]] are configured"));
                };
                let feed = feeds.iter_mut().find(|feed| {
                    feed.get("name").and_then(toml::Value::as_str).map(str::to_ascii_lowercase).as_deref()
                        == Some(feed_name.as_str())
                });
                let Some(toml::Value::Table(feed)) = feed else {
                    return Err(ConfigError::invalid(name.clone(), format!("no feed named `{feed_name}`")));
                };
                feed.insert(key.clone(), value);
            }
            _ => {
                return Err(ConfigError::invalid(
                    name.clone(),
                    "environment overrides are KSQL_LAKE_<SECTION>__<KEY> or KSQL_LAKE_FEEDS__<FEED>__<KEY>",
                ))
            }
        }
    }
    Ok(())
}

/// An environment value: a TOML boolean or integer when it reads as one, else a string.
fn env_value(text: &str) -> toml::Value {
    if let Ok(boolean) = text.parse::<bool>() {
        return toml::Value::Boolean(boolean);
    }
    if let Ok(integer) = text.parse::<i64>() {
        return toml::Value::Integer(integer);
    }
    toml::Value::String(text.to_string())
}

#[cfg(test)]
mod tests;
