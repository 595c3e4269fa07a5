//! The buffer stage of a feed: routes each decoded batch row by row to its partition, buffers
//! per partition, and commits files when a flush trigger fires (rows, bytes, age, partition
//! close, memory, schema change, shutdown).
//!
//! A commit that fails with a retryable error is retried with backoff, forever, while the rows
//! stay buffered: the stage stops taking batches meanwhile, which pauses the source and so the
//! push query. A permanent failure ends the feed with an error; nothing was committed for those
//! rows, so a restart re-reads them from ksqlDB.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::runs::{positions_of, RunTracker};
use super::source::SourceMessage;
use crate::lake::{
    CommitState, FlushJob, FlushReason, LakeWriter, MemoryBudget, PartitionBuffers, RetryPolicy, RowRouter, WallClock,
    WriteError,
};
use crate::metrics::{Health, Metrics};

/// Partition close follows the feed's event-time watermark: the highest event time seen, never
/// ahead of the wall clock. A backfill from `earliest` then closes old days one after another
/// as it passes them, instead of treating all history as late; an idle feed still flushes on
/// `flush_max_age`.
#[derive(Debug, Default)]
pub struct WatermarkClock {
    highest_event_ms: AtomicI64,
}

impl WatermarkClock {
    pub fn observe(&self, event_ms: i64) {
        self.highest_event_ms.fetch_max(event_ms, Ordering::Relaxed);
    }
}

impl WallClock for WatermarkClock {
    fn now_ms(&self) -> i64 {
        let wall = chrono::Utc::now().timestamp_millis();
        self.highest_event_ms.load(Ordering::Relaxed).min(wall)
    }
}

/// What a buffer stage did, for the final log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkSummary {
    pub rows_written: u64,
    pub files_written: u64,
}

/// A feed whose rows cannot be committed (a non-retryable write error).
#[derive(Debug, thiserror::Error)]
#[error("feed {feed}: committing {rows} rows failed")]
pub struct SinkFailed {
    pub feed: String,
    pub rows: usize,
    #[source]
    pub source: WriteError,
}

pub struct FeedSink {
    pub feed: String,
    pub router: RowRouter,
    pub buffers: PartitionBuffers,
    pub writer: Arc<LakeWriter>,
    pub budget: Arc<MemoryBudget>,
    pub watermark: Arc<WatermarkClock>,
    pub metrics: Metrics,
    pub health: Health,
    /// Backoff between commit attempts while the lake fails.
    pub retry: RetryPolicy,
    /// How often age and partition-close triggers are evaluated.
    pub tick: Duration,
    /// The feed's commit state, shared with the source stage (which resumes from it).
    pub committed: Arc<std::sync::Mutex<CommitState>>,
    pub tracker: RunTracker,
}

impl FeedSink {
    /// Runs until the source stage closes the channel, then flushes everything (reason
    /// `shutdown`).
    pub async fn run(mut self, mut receiver: mpsc::Receiver<SourceMessage>) -> Result<SinkSummary, SinkFailed> {
        let mut summary = SinkSummary::default();
        let mut schema_seen = false;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    None => break,
                    Some(SourceMessage::Schema(_)) => {
                        // New columns (CREATE OR REPLACE): one file never mixes schemas.
                        if schema_seen {
                            let jobs = self.buffers.drain_all(FlushReason::SchemaChange);
                            self.commit_all(jobs, &mut summary).await?;
                        }
                        schema_seen = true;
                    }
                    Some(SourceMessage::Token(token)) => self.tracker.token(token),
                    Some(SourceMessage::Batch { batch, positions }) => {
                        let processing_ms = chrono::Utc::now().timestamp_millis();
                        let routed = match self.router.route(&batch, processing_ms) {
                            Ok(routed) => routed,
                            Err(error) => {
                                // Only a time outside chrono's range gets here; the rows are
                                // counted and logged rather than blocking the feed.
                                self.metrics.errors.with_label_values(&[&self.feed, "partition", "event_time"]).inc();
                                tracing::error!(feed = %self.feed, %error, rows = batch.num_rows(), "rows not routable");
                                continue;
                            }
                        };
                        for part in routed {
                            self.watermark.observe(part.stats.max_event_ms);
                            let key = part.key;
                            let mut rows: Vec<_> =
                                positions_of(&part.batch).into_iter().map(|(p, o)| (p, o, key)).collect();
                            // Jobs from a push (a schema change) are written before this part's
                            // rows count as buffered, so the two never mix.
                            let jobs = self.buffers.push(part);
                            self.commit_all(jobs, &mut summary).await?;
                            self.tracker.record(&mut rows);
                            self.tracker.arrived(key);
                        }
                        // Rows skipped as already committed, or rejected, count as seen.
                        for (&partition, &offset) in &positions {
                            self.tracker.observe(partition, offset);
                        }
                        while self.budget.over_budget() {
                            let Some(job) = self.buffers.drain_largest() else { break };
                            self.commit(job, &mut summary).await?;
                        }
                    }
                },
                _ = ticker.tick() => {
                    let jobs = self.buffers.drain_ready(Instant::now());
                    self.commit_all(jobs, &mut summary).await?;
                }
            }
            self.update_gauges();
        }
        let jobs = self.buffers.drain_all(FlushReason::Shutdown);
        self.commit_all(jobs, &mut summary).await?;
        self.update_gauges();
        Ok(summary)
    }

    async fn commit_all(&mut self, jobs: Vec<FlushJob>, summary: &mut SinkSummary) -> Result<(), SinkFailed> {
        for job in jobs {
            self.commit(job, summary).await?;
        }
        Ok(())
    }

    /// Commits one file, retrying retryable failures until it succeeds.
    async fn commit(&mut self, mut job: FlushJob, summary: &mut SinkSummary) -> Result<(), SinkFailed> {
        let started = Instant::now();
        job.runs = self.tracker.take(&job.key);
        let current = self.committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let state = self.tracker.state_after(&current, &job.runs);
        job.commit = Some(state.clone());
        let mut attempt: u32 = 0;
        let committed = loop {
            match self.writer.write(&job).await {
                Ok(committed) => break committed,
                Err(error) if error.is_retryable() => {
                    attempt = attempt.saturating_add(1);
                    let delay = self.retry.backoff(attempt);
                    self.metrics.write_retries.with_label_values(&[&self.feed]).inc();
                    self.metrics.errors.with_label_values(&[&self.feed, "write", "store"]).inc();
                    self.metrics.store_up.set(0.0);
                    self.health.set_store_error(Some(format!("{error}")));
                    tracing::warn!(feed = %self.feed, error = %format!("{error:#}"), attempt,
                        retry_in_ms = delay.as_millis() as u64, rows = job.rows, "commit failed; rows stay buffered");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    self.metrics.errors.with_label_values(&[&self.feed, "write", "permanent"]).inc();
                    self.health.set_store_error(Some(format!("{error}")));
                    return Err(SinkFailed { feed: self.feed.clone(), rows: job.rows, source: error });
                }
            }
        };
        if attempt > 0 {
            tracing::info!(feed = %self.feed, attempts = attempt + 1, "lake writes recovered");
        }
        *self.committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
        self.health.set_store_error(None);
        self.metrics.store_up.set(1.0);
        self.buffers.learn_compression(committed.in_memory_bytes, committed.bytes);
        let feed = self.feed.as_str();
        self.metrics.rows_written.with_label_values(&[feed]).inc_by(committed.rows as u64);
        self.metrics.bytes_written.with_label_values(&[feed]).inc_by(committed.bytes);
        self.metrics.files_written.with_label_values(&[feed, committed.reason.as_str()]).inc();
        self.metrics.flush_duration.with_label_values(&[feed]).observe(started.elapsed().as_secs_f64());
        self.metrics.file_size.with_label_values(&[feed]).observe(committed.bytes as f64);
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        self.metrics.last_commit_timestamp.with_label_values(&[feed]).set(now);
        let watermark = self.metrics.event_time_watermark.with_label_values(&[feed]);
        watermark.set(watermark.get().max(job.max_event_ms as f64 / 1000.0));
        summary.rows_written += committed.rows as u64;
        summary.files_written += 1;
        Ok(())
    }

    fn update_gauges(&self) {
        let feed = self.feed.as_str();
        self.metrics.buffered_rows.with_label_values(&[feed]).set(self.buffers.buffered_rows() as i64);
        self.metrics.buffered_bytes.with_label_values(&[feed]).set(self.buffers.buffered_bytes() as i64);
        self.metrics.open_partitions.with_label_values(&[feed]).set(self.buffers.open_partitions() as i64);
        self.metrics.late_rows.with_label_values(&[feed]).reset();
        self.metrics.late_rows.with_label_values(&[feed]).inc_by(self.buffers.late_rows_total());
        self.metrics.memory_used_bytes.set(self.budget.used() as f64);
    }
}
