//! The config file as written: TOML, every table `deny_unknown_fields`, every optional key an
//! `Option` so that a feed can inherit from `[defaults]`. [`super::validate`] turns it into the
//! typed [`super::Config`] the service runs on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub ksqldb: RawKsqldb,
    pub lake: RawLake,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub defaults: RawFeedSettings,
    #[serde(default)]
    pub memory: RawMemory,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub feeds: Vec<RawFeed>,
}

/// Several replicas splitting the feeds (see `cluster`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub replicas: Option<u32>,
    /// This replica's ordinal, 0 to replicas − 1 (in a StatefulSet, from the pod's index).
    pub ordinal: Option<u32>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKsqldb {
    pub url: String,
    pub username: Option<String>,
    /// Better set through `KSQL_LAKE_KSQLDB__PASSWORD` than written in the file.
    pub password: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub http2: Option<String>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub reconnect_backoff_initial: Option<String>,
    pub reconnect_backoff_max: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLake {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub virtual_hosted_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub request_timeout: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    pub budget: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace_period: Option<String>,
}

/// Settings a feed may set for itself and `[defaults]` may set for every feed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeedSettings {
    pub partitioning: Option<String>,
    pub timestamp_column: Option<String>,
    pub timezone: Option<String>,
    pub compression: Option<String>,
    pub compression_level: Option<i64>,
    pub row_group_rows: Option<u64>,
    pub batch_rows: Option<u64>,
    pub flush_max_rows: Option<u64>,
    pub flush_max_bytes: Option<String>,
    pub flush_max_age: Option<String>,
    pub allowed_lateness: Option<String>,
    pub delivery: Option<String>,
    pub error_policy: Option<String>,
    pub max_rejected_per_minute: Option<u64>,
    pub max_line_bytes: Option<String>,
    pub invalid_event_time: Option<String>,
    pub snapshot_interval: Option<String>,
    pub snapshot_method: Option<String>,
    pub retention_versions: Option<u64>,
    pub changelog: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub name: String,
    pub kind: String,
    pub source: String,
    pub enabled: Option<bool>,
    /// A full `SELECT` to run instead of `SELECT * FROM <source>`; advanced.
    pub query: Option<String>,
    #[serde(flatten)]
    pub settings: RawFeedSettings,
}

/// Shown without its password.
impl std::fmt::Debug for RawKsqldb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKsqldb")
            .field("url", &super::redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Shown without its secret key or session token.
impl std::fmt::Debug for RawLake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawLake")
            .field("url", &super::redact_url(&self.url))
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}
