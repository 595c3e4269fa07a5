//! [`RawConfig`] → [`Config`]: fills defaults, parses units, and rejects invalid values with the
//! key's name and what is allowed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawConfig, RawFeed, RawFeedSettings};
use super::units::{parse_byte_size, parse_duration};
use super::*;

use crate::defaults;

/// Validates a raw config into the typed one.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let ksqldb = validate_ksqldb(&raw.ksqldb)?;
    let lake = validate_lake(&raw.lake)?;
    let listen = raw.http.listen.as_deref().unwrap_or(defaults::HTTP_LISTEN);
    let http_listen = listen.parse().map_err(|_| {
        ConfigError::invalid("http.listen", format!("`{listen}` is not an address such as 0.0.0.0:9464"))
    })?;
    let memory_budget_bytes = size("memory.budget", raw.memory.budget.as_deref(), defaults::MEMORY_BUDGET_BYTES)?;
    if memory_budget_bytes < 1 << 20 {
        return Err(ConfigError::invalid("memory.budget", "must be at least 1MiB"));
    }
    let shutdown_grace =
        duration("shutdown.grace_period", raw.shutdown.grace_period.as_deref(), defaults::SHUTDOWN_GRACE)?;
    if shutdown_grace.is_zero() {
        return Err(ConfigError::invalid(
            "shutdown.grace_period",
            "must be greater than zero: the buffers are committed within it at SIGTERM",
        ));
    }

    let mut names = HashSet::new();
    let mut feeds = Vec::with_capacity(raw.feeds.len());
    for (index, feed) in raw.feeds.iter().enumerate() {
        let key = |field: &str| format!("feeds[{index}].{field}");
        if !names.insert(feed.name.to_ascii_lowercase()) {
            return Err(ConfigError::invalid(key("name"), format!("feed `{}` is defined twice", feed.name)));
        }
        feeds.push(validate_feed(&format!("feeds[{index}]"), feed, &raw.defaults)?);
    }
    // Defaults are validated even without feeds, so a typo there is caught early.
    validate_settings("defaults", &RawFeedSettings::default(), &raw.defaults)?;

    let replicas = raw.cluster.replicas.unwrap_or(1);
    if replicas == 0 {
        return Err(ConfigError::invalid("cluster.replicas", "must be at least 1"));
    }
    let ordinal = match (raw.cluster.ordinal, replicas) {
        (Some(ordinal), _) if ordinal >= replicas => {
            return Err(ConfigError::invalid("cluster.ordinal", format!("{ordinal}: must be 0 to {}", replicas - 1)))
        }
        (Some(ordinal), _) => ordinal,
        (None, 1) => 0,
        (None, _) => {
            return Err(ConfigError::invalid(
                "cluster.ordinal",
                "must be set when cluster.replicas is above 1: each replica runs its share of the feeds \
                 (in a StatefulSet, set KSQL_LAKE_CLUSTER__ORDINAL from the pod index)",
            ))
        }
    };
    Ok(Config {
        ksqldb,
        lake,
        http_listen,
        memory_budget_bytes,
        shutdown_grace,
        feeds,
        feed_defaults: raw.defaults,
        cluster: (replicas, ordinal),
    })
}

/// One feed (a `[[feeds]]` entry or a feed file in the lake), with `defaults` for what it
/// leaves out; `prefix` names it in errors (`feeds[2]`, "feed `orders`").
pub fn validate_feed(prefix: &str, feed: &RawFeed, defaults: &RawFeedSettings) -> Result<FeedConfig, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    if let Err(error) = crate::lake::layout::validate_feed_name(&feed.name) {
        return Err(ConfigError::invalid(key("name"), error.to_string()));
    }
    let suffix = crate::lake::layout::CHANGELOG_SUFFIX;
    if feed.name.to_ascii_lowercase().ends_with(suffix) {
        return Err(ConfigError::invalid(
            key("name"),
            format!(
                "`{}`: names ending in `{suffix}` are the changelog feeds of tables; \
                 set `changelog = true` on the table's feed instead",
                feed.name
            ),
        ));
    }
    let kind = match feed.kind.as_str() {
        "stream" => FeedKind::Stream,
        "table" => FeedKind::Table,
        other => return Err(ConfigError::invalid(key("kind"), format!("`{other}`: allowed: stream, table"))),
    };
    if !is_ksql_identifier(feed.source.trim()) {
        return Err(ConfigError::invalid(
            key("source"),
            "must name a ksqlDB stream or table: letters, digits and `_` (not starting with a digit), \
             or a name in backquotes such as `my-stream`",
        ));
    }
    let settings = validate_settings(prefix, &feed.settings, defaults)?;
    if kind == FeedKind::Stream && feed.settings.changelog == Some(true) {
        return Err(ConfigError::invalid(
            key("changelog"),
            "is for table feeds: a stream feed is its changelog already",
        ));
    }
    if kind == FeedKind::Table && settings.changelog {
        let longest = crate::lake::layout::MAX_FEED_NAME_BYTES - crate::lake::layout::CHANGELOG_SUFFIX.len();
        if feed.name.len() > longest {
            return Err(ConfigError::invalid(
                key("name"),
                format!("a table feed with changelog = true has a name of at most {longest} characters (its changelog feed is `<name>.changelog`)"),
            ));
        }
        if feed.query.is_some() {
            return Err(ConfigError::invalid(
                key("changelog"),
                "cannot be combined with `query`: the changelog is the whole table's push query",
            ));
        }
    }
    Ok(FeedConfig {
        name: feed.name.clone(),
        kind,
        source: feed.source.trim().to_string(),
        enabled: feed.enabled.unwrap_or(true),
        query: feed.query.clone(),
        settings,
    })
}

fn validate_ksqldb(raw: &super::raw::RawKsqldb) -> Result<KsqldbConfig, ConfigError> {
    let url = url::Url::parse(&raw.url)
        .map_err(|error| ConfigError::invalid("ksqldb.url", format!("`{}`: {error}", redact_url(&raw.url))))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(
            "ksqldb.url",
            "must not contain a user name or password: set ksqldb.username and ksqldb.password \
             (or KSQL_LAKE_KSQLDB__PASSWORD) instead, which are never printed",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid("ksqldb.url", "must be an http:// or https:// URL"));
    }
    let http2 = match raw.http2.as_deref().unwrap_or("auto") {
        "auto" => Http2Mode::Auto,
        "always" => Http2Mode::Always,
        "never" => Http2Mode::Never,
        other => return Err(ConfigError::invalid("ksqldb.http2", format!("`{other}`: allowed: auto, always, never"))),
    };
    if raw.password.is_some() && raw.username.is_none() {
        return Err(ConfigError::invalid("ksqldb.password", "is set but `ksqldb.username` is not"));
    }
    if raw.client_cert.is_some() != raw.client_key.is_some() {
        return Err(ConfigError::invalid("ksqldb.client_cert", "`client_cert` and `client_key` go together"));
    }
    let connect_timeout =
        duration("ksqldb.connect_timeout", raw.connect_timeout.as_deref(), defaults::CONNECT_TIMEOUT)?;
    let idle_timeout = duration("ksqldb.idle_timeout", raw.idle_timeout.as_deref(), defaults::IDLE_TIMEOUT)?;
    if idle_timeout.is_zero() {
        return Err(ConfigError::invalid("ksqldb.idle_timeout", "must be greater than zero"));
    }
    let reconnect_backoff_initial = duration(
        "ksqldb.reconnect_backoff_initial",
        raw.reconnect_backoff_initial.as_deref(),
        defaults::RECONNECT_BACKOFF_INITIAL,
    )?;
    let reconnect_backoff_max = duration(
        "ksqldb.reconnect_backoff_max",
        raw.reconnect_backoff_max.as_deref(),
        defaults::RECONNECT_BACKOFF_MAX,
    )?;
    if reconnect_backoff_initial.is_zero() || reconnect_backoff_max < reconnect_backoff_initial {
        return Err(ConfigError::invalid(
            "ksqldb.reconnect_backoff_max",
            "must be at least `reconnect_backoff_initial`, which must be greater than zero",
        ));
    }
    Ok(KsqldbConfig {
        client: ClientConfig {
            url,
            username: raw.username.clone(),
            password: raw.password.clone(),
            ca_file: raw.ca_file.as_ref().map(PathBuf::from),
            client_cert: raw.client_cert.as_ref().map(PathBuf::from),
            client_key: raw.client_key.as_ref().map(PathBuf::from),
            http2,
            connect_timeout,
        },
        idle_timeout,
        reconnect_backoff_initial,
        reconnect_backoff_max,
    })
}

fn validate_lake(raw: &super::raw::RawLake) -> Result<LakeConfig, ConfigError> {
    let url = raw.url.trim();
    if url.is_empty() {
        return Err(ConfigError::invalid("lake.url", "must be a path, file://, s3://, gs:// or az:// URL"));
    }
    if let Some((_, rest)) = url.split_once("://") {
        if rest[..rest.find('/').unwrap_or(rest.len())].contains('@') {
            return Err(ConfigError::invalid(
                "lake.url",
                "must not contain credentials: set lake.access_key_id and lake.secret_access_key \
                 (or the AWS_* environment variables) instead",
            ));
        }
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !matches!(scheme, "file" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "memory") {
            return Err(ConfigError::invalid(
                "lake.url",
                format!("scheme `{scheme}`: allowed: file, s3, gs, az, abfs, abfss, memory, or a plain path"),
            ));
        }
    }
    let request_timeout = duration("lake.request_timeout", raw.request_timeout.as_deref(), defaults::REQUEST_TIMEOUT)?;
    let lease = duration("lake.lease", raw.lease.as_deref(), defaults::WRITER_LEASE)?;
    if lease < Duration::from_millis(500) {
        return Err(ConfigError::invalid("lake.lease", "must be at least 500ms"));
    }
    Ok(LakeConfig {
        url: url.to_string(),
        store: S3Options {
            endpoint: raw.endpoint.clone(),
            region: raw.region.clone(),
            allow_http: raw.allow_http.unwrap_or(false),
            virtual_hosted_style: raw.virtual_hosted_style.unwrap_or(false),
            access_key_id: raw.access_key_id.clone(),
            secret_access_key: raw.secret_access_key.clone(),
            session_token: raw.session_token.clone(),
            extra: vec![("timeout".to_string(), humantime::format_duration(request_timeout).to_string())],
        },
        lease,
    })
}

/// A feed's settings: its own value, else `[defaults]`, else the built-in default.
fn validate_settings(
    prefix: &str,
    own: &RawFeedSettings,
    defaults: &RawFeedSettings,
) -> Result<FeedSettings, ConfigError> {
    macro_rules! pick {
        ($field:ident) => {
            (
                own.$field.clone().or_else(|| defaults.$field.clone()),
                if own.$field.is_some() {
                    format!("{prefix}.{}", stringify!($field))
                } else {
                    format!("defaults.{}", stringify!($field))
                },
            )
        };
    }
    let (partitioning, key) = pick!(partitioning);
    let partitioning = match partitioning.as_deref().unwrap_or(defaults::PARTITIONING) {
        "daily" => Partitioning::Daily,
        "hourly" => Partitioning::Hourly,
        other => return Err(ConfigError::invalid(key, format!("`{other}`: allowed: daily, hourly"))),
    };
    let (timestamp_column, key) = pick!(timestamp_column);
    let timestamp_column = timestamp_column.unwrap_or_else(|| defaults::TIMESTAMP_COLUMN.to_string());
    let event_time = if timestamp_column.eq_ignore_ascii_case("ROWTIME") {
        EventTime::Rowtime
    } else if timestamp_column == defaults::PROCESSING_TIME {
        EventTime::ProcessingTime
    } else if timestamp_column.trim().is_empty() {
        return Err(ConfigError::invalid(key, "allowed: ROWTIME, a column name, or `processing-time`"));
    } else {
        EventTime::Column(timestamp_column)
    };
    let (timezone, key) = pick!(timezone);
    let timezone_name = timezone.unwrap_or_else(|| defaults::TIMEZONE.to_string());
    let timezone: chrono_tz::Tz = timezone_name.parse().map_err(|_| {
        ConfigError::invalid(key, format!("`{timezone_name}` is not an IANA time zone such as UTC or Europe/Paris"))
    })?;
    let (compression, key) = pick!(compression);
    let (level, level_key) = pick!(compression_level);
    let compression = match compression.as_deref().unwrap_or(defaults::COMPRESSION) {
        "zstd" => {
            let level = level.unwrap_or(defaults::ZSTD_LEVEL.into());
            if !(1..=22).contains(&level) {
                return Err(ConfigError::invalid(level_key, format!("{level}: zstd levels are 1 to 22")));
            }
            Compression::Zstd(level as i32)
        }
        "gzip" => {
            let level = level.unwrap_or(defaults::GZIP_LEVEL.into());
            if !(0..=9).contains(&level) {
                return Err(ConfigError::invalid(level_key, format!("{level}: gzip levels are 0 to 9")));
            }
            Compression::Gzip(level as u32)
        }
        "snappy" | "lz4" | "none" if level.is_some() => {
            return Err(ConfigError::invalid(level_key, "only zstd and gzip take a level"))
        }
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "none" => Compression::None,
        other => return Err(ConfigError::invalid(key, format!("`{other}`: allowed: zstd, snappy, lz4, gzip, none"))),
    };
    let (row_group_rows, key) = pick!(row_group_rows);
    let row_group_rows = positive(&key, row_group_rows.unwrap_or(defaults::ROW_GROUP_ROWS as u64))?;
    let (batch_rows, key) = pick!(batch_rows);
    let batch_rows = positive(&key, batch_rows.unwrap_or(defaults::BATCH_ROWS as u64))?;
    let (flush_max_rows, key) = pick!(flush_max_rows);
    let flush_max_rows = positive(&key, flush_max_rows.unwrap_or(defaults::FLUSH_MAX_ROWS as u64))?;
    let (flush_max_bytes, key) = pick!(flush_max_bytes);
    let flush_max_bytes = size(&key, flush_max_bytes.as_deref(), defaults::FLUSH_MAX_BYTES)?;
    if flush_max_bytes < 1024 {
        return Err(ConfigError::invalid(key, "must be at least 1KiB"));
    }
    let (flush_max_age, key) = pick!(flush_max_age);
    let flush_max_age = duration(&key, flush_max_age.as_deref(), defaults::FLUSH_MAX_AGE)?;
    if flush_max_age.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    let (allowed_lateness, key) = pick!(allowed_lateness);
    let allowed_lateness = duration(&key, allowed_lateness.as_deref(), defaults::ALLOWED_LATENESS)?;
    let (delivery, key) = pick!(delivery);
    let delivery = match delivery.as_deref().unwrap_or(defaults::DELIVERY) {
        "exactly-once" => Delivery::ExactlyOnce,
        "at-least-once" => Delivery::AtLeastOnce,
        "latest" => Delivery::Latest,
        "continuation-token" => Delivery::ContinuationToken,
        other => {
            return Err(ConfigError::invalid(
                key,
                format!("`{other}`: allowed: exactly-once, at-least-once, latest, continuation-token"),
            ))
        }
    };
    let (error_policy, key) = pick!(error_policy);
    let error_policy = match error_policy.as_deref().unwrap_or(defaults::ERROR_POLICY) {
        "dead_letter" => ErrorPolicy::DeadLetter,
        "skip" => ErrorPolicy::Skip,
        "fail" => ErrorPolicy::Fail,
        other => return Err(ConfigError::invalid(key, format!("`{other}`: allowed: dead_letter, skip, fail"))),
    };
    let (max_rejected_per_minute, key) = pick!(max_rejected_per_minute);
    let max_rejected_per_minute = positive(&key, max_rejected_per_minute.unwrap_or(defaults::MAX_REJECTED_PER_MINUTE))?;
    let (max_line_bytes, key) = pick!(max_line_bytes);
    let max_line_bytes = size(&key, max_line_bytes.as_deref(), defaults::MAX_LINE_BYTES)?;
    if !(1024..=1 << 30).contains(&max_line_bytes) {
        return Err(ConfigError::invalid(key, format!("{max_line_bytes} bytes: allowed: 1KiB to 1GiB")));
    }
    let (invalid_event_time, key) = pick!(invalid_event_time);
    let invalid_event_time = match invalid_event_time.as_deref().unwrap_or(defaults::INVALID_EVENT_TIME) {
        "arrival-time" => crate::lake::InvalidEventTime::ArrivalTime,
        "fixed-partition" => crate::lake::InvalidEventTime::FixedPartition,
        other => return Err(ConfigError::invalid(key, format!("`{other}`: allowed: arrival-time, fixed-partition"))),
    };
    let (snapshot_interval, key) = pick!(snapshot_interval);
    let snapshot_interval = duration(&key, snapshot_interval.as_deref(), defaults::SNAPSHOT_INTERVAL)?;
    if snapshot_interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(key, "must be at least 1s"));
    }
    let (snapshot_method, key) = pick!(snapshot_method);
    let snapshot_method = match snapshot_method.as_deref().unwrap_or(defaults::SNAPSHOT_METHOD) {
        "auto" => SnapshotMethod::Auto,
        "pull" => SnapshotMethod::Pull,
        "changelog" => SnapshotMethod::Changelog,
        other => return Err(ConfigError::invalid(key, format!("`{other}`: allowed: auto, pull, changelog"))),
    };
    let (retention_versions, key) = pick!(retention_versions);
    let retention_versions = positive(&key, retention_versions.unwrap_or(defaults::RETENTION_VERSIONS))?;
    let (changelog, _) = pick!(changelog);
    Ok(FeedSettings {
        changelog: changelog.unwrap_or(false),
        snapshot_interval,
        snapshot_method,
        retention_versions: retention_versions as usize,
        partitioning,
        event_time,
        timezone,
        compression,
        row_group_rows: row_group_rows as usize,
        batch_rows: batch_rows as usize,
        flush_max_rows,
        flush_max_bytes,
        flush_max_age,
        allowed_lateness,
        delivery,
        error_policy,
        max_rejected_per_minute,
        max_line_bytes: max_line_bytes as usize,
        invalid_event_time,
    })
}

/// A ksqlDB identifier as it may stand in `FROM …`: unquoted, or quoted in backquotes (with
/// doubled backquotes inside). Anything else would be pasted into the statement.
fn is_ksql_identifier(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('`').and_then(|rest| rest.strip_suffix('`')) {
        return !inner.is_empty() && !inner.replace("``", "").contains('`');
    }
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(value)
}

fn size(key: &str, value: Option<&str>, default: u64) -> Result<u64, ConfigError> {
    value.map_or(Ok(default), |text| parse_byte_size(text).map_err(|message| ConfigError::invalid(key, message)))
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |text| parse_duration(text).map_err(|message| ConfigError::invalid(key, message)))
}
