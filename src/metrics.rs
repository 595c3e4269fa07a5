//! The Prometheus metric catalogue (docs/METRICS.md lists it) and the health state behind
//! `/readyz`.
//!
//! Metrics live on an injected [`prometheus::Registry`] (no global), so a test builds its own
//! and reads values back. Names follow `ksql_lake_<name>_<unit>[_total]`; label values come from
//! bounded sets: feed names from the config, reasons from enums, never raw error text.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric ksql-lake exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Rows decoded from ksqlDB, per feed.
    pub rows_received: IntCounterVec,
    /// Rows committed to the lake (data file and metadata written).
    pub rows_written: IntCounterVec,
    /// Encoded Parquet bytes committed to the lake.
    pub bytes_written: IntCounterVec,
    /// Files committed, by flush reason (rows, bytes, age, partition_close, memory, shutdown, schema_change).
    pub files_written: IntCounterVec,
    /// Rows that could not be decoded and were set aside.
    pub rows_rejected: IntCounterVec,
    /// Rejected rows committed to the dead letter.
    pub dead_letter_rows: IntCounterVec,
    /// Rows whose partition was already closed when they arrived.
    pub late_rows: IntCounterVec,
    /// Rows without a usable event time, routed by processing time.
    pub null_event_time_rows: IntCounterVec,
    /// Time to encode one file and commit it (its successful attempt): encode + put.
    pub flush_duration: HistogramVec,
    /// Time to encode one file as Parquet.
    pub encode_duration: HistogramVec,
    /// Time of the successful put of one data file and its manifest update.
    pub put_duration: HistogramVec,
    /// Size of committed files, in encoded bytes.
    pub file_size: HistogramVec,
    pub buffered_rows: IntGaugeVec,
    pub buffered_bytes: IntGaugeVec,
    pub open_partitions: IntGaugeVec,
    /// The configured memory budget, and what is held against it.
    pub memory_budget_bytes: Gauge,
    pub memory_used_bytes: Gauge,
    /// Errors by stage (connect, decode, encode, write, metadata) and a bounded error type.
    pub errors: IntCounterVec,
    /// Write attempts that failed and were retried.
    pub write_retries: IntCounterVec,
    /// 1 while the feed's push query is open and streaming.
    pub push_query_up: IntGaugeVec,
    /// Reopened push queries, by reason (disconnect, server_error, terminated, stall, in_band_error).
    pub push_query_reconnects: IntCounterVec,
    /// Unix time of the last committed file: alert on `time() - x`.
    pub last_commit_timestamp: GaugeVec,
    /// Highest event time committed, in Unix seconds.
    pub event_time_watermark: GaugeVec,
    /// Seconds a feed waited because buffers or writes were full.
    pub backpressure_seconds: prometheus::CounterVec,
    /// 1 while the last write to the lake succeeded.
    pub store_up: Gauge,
    /// Unix time the last row arrived from ksqlDB.
    pub last_row_timestamp: GaugeVec,
    /// Per committed file: commit time minus the oldest event time in it.
    pub commit_lag: HistogramVec,
    /// Files flushed for age: commit time minus the time the flush was due.
    pub age_flush_delay: HistogramVec,
    /// Age of the oldest row buffered and not yet committed (0 when none).
    pub oldest_buffered_seconds: GaugeVec,
    /// Table feeds: the latest complete version and how many are kept.
    pub table_latest_version: IntGaugeVec,
    pub table_versions: IntGaugeVec,
}

const SIZE_BUCKETS: [f64; 10] = [
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    33_554_432.0,
    67_108_864.0,
    134_217_728.0,
    268_435_456.0,
    536_870_912.0,
];

/// Lag buckets: 1 s to about 9 h.
fn lag_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, 16).expect("valid buckets")
}

/// The label values every feed's series are exported with from the first scrape (at 0), so
/// `increase()` and absence alerts work before the first event of each kind.
pub const FLUSH_REASONS: &[&str] =
    &["rows", "bytes", "age", "partition_close", "memory", "shutdown", "schema_change", "snapshot"];
pub const RECONNECT_REASONS: &[&str] = &[
    "disconnect",
    "terminated",
    "stall",
    "in_band_error",
    "connect",
    "dns",
    "tls",
    "too_many_queries",
    "server_error",
    "content_type",
    "malformed_response",
];
pub const REJECT_TYPES: &[&str] = &["frame", "line_too_long", "position", "row_shape", "value"];
pub const ERROR_KINDS: &[(&str, &str)] = &[
    ("partition", "event_time"),
    ("write", "store"),
    ("write", "permanent"),
    ("write", "store_slow"),
    ("snapshot", "ksqldb"),
    ("snapshot", "lake"),
    ("snapshot", "row"),
    ("snapshot", "too_large"),
    ("snapshot", "no_key"),
];

fn seconds_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.005, 2.0, 14).expect("valid buckets")
}

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("metric registered once");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("metric registered once");
            metric
        };
        let float_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("metric registered once");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = Gauge::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("metric registered once");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric =
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["feed"]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("metric registered once");
            metric
        };
        let backpressure_seconds = prometheus::CounterVec::new(
            Opts::new("ksql_lake_backpressure_seconds_total", "Seconds a feed waited for room in buffers or writes"),
            &["feed"],
        )
        .expect("valid metric");
        registry.register(Box::new(backpressure_seconds.clone())).expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("ksql_lake_build_info", "Always 1; the version of the running ksql-lake"),
            &["version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info)).expect("metric registered once");
        Metrics {
            rows_received: counter("ksql_lake_rows_received_total", "Rows decoded from ksqlDB", &["feed"]),
            rows_written: counter("ksql_lake_rows_written_total", "Rows committed to the lake", &["feed"]),
            bytes_written: counter("ksql_lake_bytes_written_total", "Encoded Parquet bytes committed", &["feed"]),
            files_written: counter("ksql_lake_files_written_total", "Parquet files committed", &["feed", "reason"]),
            rows_rejected: counter(
                "ksql_lake_rows_rejected_total",
                "Rows or lines that could not be decoded, by error type",
                &["feed", "error_type"],
            ),
            dead_letter_rows: counter(
                "ksql_lake_dead_letter_rows_total",
                "Rejected rows committed to the dead letter",
                &["feed"],
            ),
            late_rows: counter("ksql_lake_late_rows_total", "Rows for an already closed partition", &["feed"]),
            null_event_time_rows: counter(
                "ksql_lake_null_event_time_rows_total",
                "Rows without a usable event time, routed by processing time",
                &["feed"],
            ),
            flush_duration: histogram(
                "ksql_lake_flush_duration_seconds",
                "Time to encode one file and commit it, without queue wait and failed attempts",
                seconds_buckets(),
            ),
            encode_duration: histogram(
                "ksql_lake_encode_duration_seconds",
                "Time to encode one file as Parquet",
                seconds_buckets(),
            ),
            put_duration: histogram(
                "ksql_lake_put_duration_seconds",
                "Time of the successful put of one data file and its manifest",
                seconds_buckets(),
            ),
            file_size: histogram("ksql_lake_file_size_bytes", "Size of committed files", SIZE_BUCKETS.to_vec()),
            buffered_rows: gauge_vec("ksql_lake_buffered_rows", "Rows buffered, not yet committed", &["feed"]),
            buffered_bytes: gauge_vec("ksql_lake_buffered_bytes", "Memory held by buffered rows", &["feed"]),
            open_partitions: gauge_vec("ksql_lake_open_partitions", "Partitions with buffered rows", &["feed"]),
            memory_budget_bytes: gauge("ksql_lake_memory_budget_bytes", "The configured memory budget"),
            memory_used_bytes: gauge("ksql_lake_memory_used_bytes", "Memory held against the budget"),
            errors: counter("ksql_lake_errors_total", "Errors by stage and type", &["feed", "stage", "error_type"]),
            write_retries: counter("ksql_lake_write_retries_total", "Failed writes that were retried", &["feed"]),
            push_query_up: gauge_vec("ksql_lake_push_query_up", "1 while the push query streams", &["feed"]),
            push_query_reconnects: counter(
                "ksql_lake_push_query_reconnects_total",
                "Push queries reopened",
                &["feed", "reason"],
            ),
            last_commit_timestamp: float_gauge_vec(
                "ksql_lake_last_commit_timestamp_seconds",
                "Unix time of the last committed file",
                &["feed"],
            ),
            event_time_watermark: float_gauge_vec(
                "ksql_lake_event_time_watermark_seconds",
                "Highest committed event time",
                &["feed"],
            ),
            backpressure_seconds,
            store_up: gauge("ksql_lake_store_up", "1 while the last write to the lake succeeded"),
            last_row_timestamp: float_gauge_vec(
                "ksql_lake_last_row_timestamp_seconds",
                "Unix time the last row arrived from ksqlDB",
                &["feed"],
            ),
            commit_lag: histogram(
                "ksql_lake_commit_lag_seconds",
                "Per committed file: commit time minus the oldest event time in it",
                lag_buckets(),
            ),
            age_flush_delay: histogram(
                "ksql_lake_age_flush_delay_seconds",
                "Files flushed for age: commit time minus the time the flush was due",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            ),
            oldest_buffered_seconds: float_gauge_vec(
                "ksql_lake_oldest_buffered_seconds",
                "Age of the oldest buffered, uncommitted row (0 when none)",
                &["feed"],
            ),
            table_latest_version: gauge_vec(
                "ksql_lake_table_latest_version",
                "Table feeds: the latest complete snapshot version",
                &["feed"],
            ),
            table_versions: gauge_vec("ksql_lake_table_versions", "Table feeds: complete versions kept", &["feed"]),
            registry,
        }
    }

    /// Exports every series of `feed` whose labels are known in advance, at 0.
    pub fn init_feed(&self, feed: &str) {
        let one = [feed];
        for counter in [
            &self.rows_received,
            &self.rows_written,
            &self.bytes_written,
            &self.dead_letter_rows,
            &self.late_rows,
            &self.null_event_time_rows,
            &self.write_retries,
        ] {
            counter.with_label_values(&one);
        }
        for reason in FLUSH_REASONS {
            self.files_written.with_label_values(&[feed, reason]);
        }
        for reason in RECONNECT_REASONS {
            self.push_query_reconnects.with_label_values(&[feed, reason]);
        }
        for error_type in REJECT_TYPES {
            self.rows_rejected.with_label_values(&[feed, error_type]);
        }
        for (stage, error_type) in ERROR_KINDS {
            self.errors.with_label_values(&[feed, stage, error_type]);
        }
        for histogram in [
            &self.flush_duration,
            &self.encode_duration,
            &self.put_duration,
            &self.file_size,
            &self.commit_lag,
            &self.age_flush_delay,
        ] {
            histogram.with_label_values(&one);
        }
        for gauge in [&self.buffered_rows, &self.buffered_bytes, &self.open_partitions, &self.push_query_up] {
            gauge.with_label_values(&one);
        }
        self.backpressure_seconds.with_label_values(&one);
        self.oldest_buffered_seconds.with_label_values(&one);
        self.last_row_timestamp.with_label_values(&one);
        self.last_commit_timestamp.with_label_values(&one);
        self.event_time_watermark.with_label_values(&one);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

/// What a feed is doing, for `/readyz` and the logs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FeedState {
    Starting,
    Streaming,
    Reconnecting {
        reason: String,
    },
    /// Waiting for the feed's lease, which another process holds: nothing to do here, and
    /// nothing wrong with this process (ready, so a rollout does not stall on it).
    Standby {
        reason: String,
    },
    /// A permanent error (unknown source, bad statement, 401/403): the feed stopped.
    Failed {
        error: String,
    },
    Stopped,
}

/// The health of the process: each feed's state and whether the lake accepts writes.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthInner>>,
}

#[derive(Default)]
struct HealthInner {
    feeds: BTreeMap<String, FeedState>,
    /// Per feed, the lake error its commit stage last saw (cleared by its next success): one
    /// feed's success does not hide another's failing writes.
    store_errors: BTreeMap<String, String>,
    shutting_down: bool,
    http_address: Option<std::net::SocketAddr>,
    /// What each feed is (kind, source, delivery), for `/feeds`.
    info: BTreeMap<String, FeedInfo>,
}

/// One feed as `/feeds` shows it.
#[derive(Debug, Clone)]
pub struct FeedStatus {
    pub name: String,
    pub state: Option<FeedState>,
    pub info: Option<FeedInfo>,
    /// The lake error its commit stage last saw.
    pub store_error: Option<String>,
}

/// A feed's definition as `/feeds` shows it (nothing secret is in it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedInfo {
    pub kind: &'static str,
    pub source: String,
    pub delivery: &'static str,
}

impl Health {
    pub fn set_feed(&self, feed: &str, state: FeedState) {
        self.lock().feeds.insert(feed.to_string(), state);
    }

    /// Marks a feed stopped, unless it failed: the failure is what an operator must see.
    pub fn stop_feed(&self, feed: &str) {
        let mut inner = self.lock();
        if !matches!(inner.feeds.get(feed), Some(FeedState::Failed { .. })) {
            inner.feeds.insert(feed.to_string(), FeedState::Stopped);
        }
    }

    pub fn set_feed_info(&self, feed: &str, info: FeedInfo) {
        self.lock().info.insert(feed.to_string(), info);
    }

    /// Every feed's state and definition.
    pub fn feeds(&self) -> Vec<FeedStatus> {
        let inner = self.lock();
        let names: std::collections::BTreeSet<&String> = inner.feeds.keys().chain(inner.info.keys()).collect();
        names
            .into_iter()
            .map(|name| FeedStatus {
                name: name.clone(),
                state: inner.feeds.get(name).cloned(),
                info: inner.info.get(name).cloned(),
                store_error: inner.store_errors.get(name).cloned(),
            })
            .collect()
    }

    /// Forgets a feed that was stopped on purpose (disabled or archived).
    pub fn remove_feed(&self, feed: &str) {
        let mut inner = self.lock();
        inner.feeds.remove(feed);
        inner.info.remove(feed);
        inner.store_errors.remove(feed);
    }

    pub fn set_store_error(&self, feed: &str, error: Option<String>) {
        let mut inner = self.lock();
        match error {
            Some(error) => inner.store_errors.insert(feed.to_string(), error),
            None => inner.store_errors.remove(feed),
        };
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on (a listen port of 0
    /// picks one).
    pub fn set_http_address(&self, address: std::net::SocketAddr) {
        self.lock().http_address = Some(address);
    }

    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.lock().http_address
    }

    pub fn set_shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// Ready when every feed streams and the lake accepts writes.
    pub fn report(&self) -> (bool, serde_json::Value) {
        let inner = self.lock();
        let feeds_ok =
            inner.feeds.values().all(|state| matches!(state, FeedState::Streaming | FeedState::Standby { .. }));
        let ready = feeds_ok && inner.store_errors.is_empty() && !inner.shutting_down;
        let body = serde_json::json!({
            "ready": ready,
            "shutting_down": inner.shutting_down,
            "store": match inner.store_errors.values().next() {
                None => serde_json::json!({"state": "ok"}),
                Some(error) => serde_json::json!({"state": "failing", "error": error, "feeds": inner.store_errors}),
            },
            "feeds": inner.feeds,
        });
        (ready, body)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_renders_with_values() {
        let metrics = Metrics::new(Registry::new());
        metrics.rows_written.with_label_values(&["orders"]).inc_by(42);
        metrics.files_written.with_label_values(&["orders", "age"]).inc();
        let text = metrics.render();
        assert!(text.contains("ksql_lake_rows_written_total{feed=\"orders\"} 42"), "{text}");
        assert!(text.contains("ksql_lake_files_written_total{feed=\"orders\",reason=\"age\"} 1"));
    }

    #[test]
    fn ready_only_when_every_feed_streams_and_the_store_works() {
        let health = Health::default();
        health.set_feed("a", FeedState::Streaming);
        assert!(health.report().0);
        health.set_feed("b", FeedState::Reconnecting { reason: "disconnect".into() });
        assert!(!health.report().0);
        health.set_feed("b", FeedState::Streaming);
        health.set_store_error("a", Some("connection refused".into()));
        let (ready, body) = health.report();
        assert!(!ready);
        assert_eq!(body["store"]["state"], "failing");
        health.set_store_error("b", None);
        assert!(!health.report().0, "feed b's success does not clear feed a's failure");
        health.set_store_error("a", None);
        assert!(health.report().0);
        health.set_shutting_down();
        assert!(!health.report().0);
    }
}
