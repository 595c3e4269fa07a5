//! What a feed's stages report, as typed events: each event is emitted once per batch or per
//! file and is the only place that turns it into metrics, health and log lines. The stages
//! themselves hold no metric or log statements for these.

use std::time::Duration;

use prometheus::{Counter, Gauge, Histogram, IntCounter, IntGauge};

use crate::config::ErrorPolicy;
use crate::ksqldb::client::ClientError;
use crate::lake::Rejected;
use crate::lake::{CommittedFile, PartitionError, WriteError};
use crate::metrics::{FeedState, Health, Metrics};

/// A feed's metric series, resolved once (label lookups are not free per row or per batch).
#[derive(Clone)]
pub(crate) struct FeedMetrics {
    pub(crate) feed: String,
    pub(crate) metrics: Metrics,
    pub(crate) rows_received: IntCounter,
    pub(crate) push_query_up: IntGauge,
    rows_written: IntCounter,
    bytes_written: IntCounter,
    late_rows: IntCounter,
    null_event_time_rows: IntCounter,
    write_retries: IntCounter,
    flush_duration: Histogram,
    encode_duration: Histogram,
    put_duration: Histogram,
    file_size: Histogram,
    age_flush_delay: Histogram,
    last_commit_timestamp: Gauge,
    event_time_watermark: Gauge,
    pub(crate) backpressure_seconds: Counter,
    pub(crate) buffered_rows: IntGauge,
    pub(crate) buffered_bytes: IntGauge,
    pub(crate) open_partitions: IntGauge,
    pub(crate) memory_used_bytes: Gauge,
    store_up: Gauge,
    /// When rows without a usable event time were last logged (epoch ms): once a minute.
    event_time_logged_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl FeedMetrics {
    pub(crate) fn new(metrics: &Metrics, feed: &str) -> Self {
        let one = [feed];
        FeedMetrics {
            feed: feed.to_string(),
            rows_received: metrics.rows_received.with_label_values(&one),
            push_query_up: metrics.push_query_up.with_label_values(&one),
            rows_written: metrics.rows_written.with_label_values(&one),
            bytes_written: metrics.bytes_written.with_label_values(&one),
            late_rows: metrics.late_rows.with_label_values(&one),
            null_event_time_rows: metrics.null_event_time_rows.with_label_values(&one),
            write_retries: metrics.write_retries.with_label_values(&one),
            flush_duration: metrics.flush_duration.with_label_values(&one),
            encode_duration: metrics.encode_duration.with_label_values(&one),
            put_duration: metrics.put_duration.with_label_values(&one),
            file_size: metrics.file_size.with_label_values(&one),
            age_flush_delay: metrics.age_flush_delay.with_label_values(&one),
            last_commit_timestamp: metrics.last_commit_timestamp.with_label_values(&one),
            event_time_watermark: metrics.event_time_watermark.with_label_values(&one),
            backpressure_seconds: metrics.backpressure_seconds.with_label_values(&one),
            buffered_rows: metrics.buffered_rows.with_label_values(&one),
            buffered_bytes: metrics.buffered_bytes.with_label_values(&one),
            open_partitions: metrics.open_partitions.with_label_values(&one),
            memory_used_bytes: metrics.memory_used_bytes.clone(),
            store_up: metrics.store_up.clone(),
            event_time_logged_ms: Default::default(),
            metrics: metrics.clone(),
        }
    }

    pub(crate) fn reconnect(&self, reason: &str) {
        self.metrics.push_query_reconnects.with_label_values(&[&self.feed, reason]).inc();
    }

    fn error(&self, stage: &str, error_type: &str) {
        self.metrics.errors.with_label_values(&[&self.feed, stage, error_type]).inc();
    }
}

/// The source handed a batch to the buffer stage, after waiting `blocked` for room.
pub(crate) struct BatchSent {
    pub(crate) rows: usize,
    pub(crate) blocked: Duration,
}

impl BatchSent {
    pub(crate) fn emit(&self, metrics: &FeedMetrics) {
        metrics.rows_received.inc_by(self.rows as u64);
        if self.rows > 0 {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            metrics.metrics.last_row_timestamp.with_label_values(&[&metrics.feed]).set(now);
        }
        if self.blocked > Duration::from_millis(1) {
            metrics.backpressure_seconds.inc_by(self.blocked.as_secs_f64());
        }
    }
}

/// A row or line that could not be decoded.
pub(crate) struct RowRejected<'a> {
    pub(crate) record: &'a Rejected,
    pub(crate) policy: ErrorPolicy,
}

/// Rows shown in a rejection's log line are cut to this many bytes.
const LOGGED_ROW_BYTES: usize = 1024;

impl RowRejected<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics) {
        let record = self.record;
        metrics.metrics.rows_rejected.with_label_values(&[&metrics.feed, record.error_type]).inc();
        let shown = String::from_utf8_lossy(&record.raw[..record.raw.len().min(LOGGED_ROW_BYTES)]);
        let action = match self.policy {
            ErrorPolicy::DeadLetter => "kept in the dead letter",
            ErrorPolicy::Skip => "skipped",
            ErrorPolicy::Fail => "the feed stops",
        };
        let position = record.position.map(|position| format!("{}/{}", position.partition, position.offset));
        tracing::warn!(feed = %metrics.feed, error_type = record.error_type, error = %record.error,
            column = record.column.as_deref().unwrap_or(""), position = position.as_deref().unwrap_or("unknown"),
            length = record.length, raw = %shown, "row rejected; {action}");
    }
}

/// The push query ended and is reopened after `delay`.
pub(crate) struct QueryReopening<'a> {
    pub(crate) reason: &'a str,
    pub(crate) detail: &'a str,
    pub(crate) attempt: u32,
    pub(crate) delay: Duration,
    /// Reopened at `latest`: what was produced meanwhile is not ingested.
    pub(crate) at_latest: bool,
}

impl QueryReopening<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics, health: &Health) {
        metrics.reconnect(self.reason);
        let delay_ms = self.delay.as_millis() as u64;
        let (reason, detail, attempt) = (self.reason, self.detail, self.attempt);
        if self.at_latest {
            tracing::warn!(feed = %metrics.feed, reason, detail, attempt, delay_ms,
                "push query ended; reopening at latest: rows produced meanwhile are not ingested");
        } else {
            tracing::warn!(feed = %metrics.feed, reason, detail, attempt, delay_ms, "push query ended; reopening");
        }
        health.set_feed(&metrics.feed, FeedState::Reconnecting { reason: reason.into() });
    }
}

/// The push query failed with an error that retrying cannot fix: the feed stops.
pub(crate) struct QueryFailed<'a> {
    pub(crate) error: &'a str,
}

impl QueryFailed<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics, health: &Health) {
        metrics.push_query_up.set(0);
        tracing::error!(feed = %metrics.feed, error = %self.error, "push query failed permanently; feed stopped");
        health.set_feed(&metrics.feed, FeedState::Failed { error: self.error.to_string() });
    }
}

/// ksqlDB refused ROWPARTITION/ROWOFFSET in the resume WHERE clause.
pub(crate) struct ResumeFilterRejected<'a> {
    pub(crate) error: &'a ClientError,
}

impl ResumeFilterRejected<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics) {
        tracing::warn!(feed = %metrics.feed, error = %self.error,
            "ksqlDB rejected the resume filter; reading from earliest and skipping committed rows client-side");
    }
}

/// One source batch routed into the partition buffers.
#[derive(Debug, Default)]
pub(crate) struct BatchRouted {
    /// Rows added to a partition that had already closed.
    pub(crate) late_rows: usize,
    /// Rows without a usable event time, routed by processing time.
    pub(crate) null_event_time_rows: usize,
}

impl BatchRouted {
    pub(crate) fn emit(&self, metrics: &FeedMetrics) {
        metrics.late_rows.inc_by(self.late_rows as u64);
        if self.null_event_time_rows > 0 {
            metrics.null_event_time_rows.inc_by(self.null_event_time_rows as u64);
            let now = chrono::Utc::now().timestamp_millis();
            let last = metrics.event_time_logged_ms.load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 60_000 {
                metrics.event_time_logged_ms.store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(feed = %metrics.feed, rows = self.null_event_time_rows,
                    total = metrics.null_event_time_rows.get(),
                    "rows with a null or out-of-range event time were partitioned by the time they arrived \
                     (ksql_lake_null_event_time_rows_total; logged at most once a minute)");
            }
        }
    }
}

/// A batch the router could not read (its event-time column is missing or unusable).
pub(crate) struct RowsNotRoutable<'a> {
    pub(crate) rows: usize,
    pub(crate) error: &'a PartitionError,
}

impl RowsNotRoutable<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics, health: &Health) {
        metrics.error("partition", "event_time");
        tracing::error!(feed = %metrics.feed, error = %self.error, rows = self.rows,
            "rows cannot be partitioned; feed stopped (nothing was skipped: a restart reads them again)");
        let error = format!("rows cannot be partitioned: {}", self.error);
        health.set_feed(&metrics.feed, FeedState::Failed { error });
    }
}

/// A commit attempt failed; `retry_in` is `None` when it will not be retried.
pub(crate) struct CommitAttemptFailed<'a> {
    pub(crate) error: &'a WriteError,
    /// Failed attempts of this file so far, this one included.
    pub(crate) attempt: u32,
    pub(crate) retry_in: Option<Duration>,
    pub(crate) rows: usize,
}

impl CommitAttemptFailed<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics, health: &Health) {
        health.set_store_error(&metrics.feed, Some(self.error.to_string()));
        match self.retry_in {
            Some(delay) => {
                metrics.write_retries.inc();
                metrics.error("write", "store");
                metrics.store_up.set(0.0);
                tracing::warn!(feed = %metrics.feed, error = %format!("{:#}", self.error), attempt = self.attempt,
                    retry_in_ms = delay.as_millis() as u64, rows = self.rows, "commit failed; rows stay buffered");
            }
            None => {
                metrics.error("write", "permanent");
                tracing::error!(feed = %metrics.feed, error = %format!("{:#}", self.error), rows = self.rows,
                    "commit failed permanently");
            }
        }
    }
}

/// A commit attempt has had no answer from the lake for `waited`; it goes on waiting.
pub(crate) struct StoreSlow {
    pub(crate) waited: Duration,
}

impl StoreSlow {
    pub(crate) fn emit(&self, metrics: &FeedMetrics, health: &Health) {
        metrics.store_up.set(0.0);
        metrics.error("write", "store_slow");
        let error = format!("the lake has not answered for {:?}", self.waited);
        tracing::warn!(feed = %metrics.feed, waited_ms = self.waited.as_millis() as u64, "{error}; still waiting");
        health.set_store_error(&metrics.feed, Some(error));
    }
}

/// A file committed after `failed_attempts` failed attempts.
pub(crate) struct CommitsRecovered {
    pub(crate) failed_attempts: u32,
}

impl CommitsRecovered {
    pub(crate) fn emit(&self, metrics: &FeedMetrics, health: &Health) {
        if self.failed_attempts > 0 {
            tracing::info!(feed = %metrics.feed, attempts = self.failed_attempts + 1, "lake writes recovered");
        }
        health.set_store_error(&metrics.feed, None);
        metrics.store_up.set(1.0);
    }
}

/// A dead-letter file is in the lake and listed in the manifest.
pub(crate) struct DeadLetterCommitted {
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
}

impl DeadLetterCommitted {
    pub(crate) fn emit(&self, metrics: &FeedMetrics) {
        metrics.metrics.dead_letter_rows.with_label_values(&[&metrics.feed]).inc_by(self.rows as u64);
        tracing::info!(feed = %metrics.feed, rows = self.rows, bytes = self.bytes, "rejected rows kept in the dead letter");
    }
}

/// A file is in the lake and listed in the manifest.
pub(crate) struct FileCommitted<'a> {
    pub(crate) file: &'a CommittedFile,
    pub(crate) min_event_ms: i64,
    pub(crate) max_event_ms: i64,
    /// Time the file waited in the commit queue.
    pub(crate) queue_wait: Duration,
    pub(crate) encode: Duration,
    /// The successful put of the data file and the manifest.
    pub(crate) put: Duration,
    /// A flush for age: when it was due.
    pub(crate) due: Option<tokio::time::Instant>,
}

impl FileCommitted<'_> {
    pub(crate) fn emit(&self, metrics: &FeedMetrics) {
        let file = self.file;
        metrics.rows_written.inc_by(file.rows as u64);
        metrics.bytes_written.inc_by(file.bytes);
        metrics.metrics.files_written.with_label_values(&[&metrics.feed, file.reason.as_str()]).inc();
        metrics.encode_duration.observe(self.encode.as_secs_f64());
        metrics.put_duration.observe(self.put.as_secs_f64());
        metrics.flush_duration.observe((self.encode + self.put).as_secs_f64());
        metrics.file_size.observe(file.bytes as f64);
        if let Some(due) = self.due {
            metrics.age_flush_delay.observe(due.elapsed().as_secs_f64());
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        metrics.last_commit_timestamp.set(now_ms as f64 / 1000.0);
        let lag = (now_ms - self.min_event_ms).max(0) as f64 / 1000.0;
        metrics.metrics.commit_lag.with_label_values(&[&metrics.feed]).observe(lag);
        let watermark = self.max_event_ms as f64 / 1000.0;
        if watermark > metrics.event_time_watermark.get() {
            metrics.event_time_watermark.set(watermark);
        }
        tracing::debug!(feed = %metrics.feed, queue_wait_ms = self.queue_wait.as_millis() as u64,
            encode_ms = self.encode.as_millis() as u64, put_ms = self.put.as_millis() as u64, "file committed");
    }
}
