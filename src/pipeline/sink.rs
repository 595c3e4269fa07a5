//! The buffer stage of a feed: routes each decoded batch row by row to its partition, buffers
//! per partition, and commits files when a flush trigger fires (rows, bytes, age, partition
//! close, memory, schema change, shutdown).
//!
//! A commit that fails with a retryable error is retried with backoff, forever, while the rows
//! stay buffered: the stage stops taking batches meanwhile, which pauses the source and so the
//! push query. A permanent failure ends the feed with an error; nothing was committed for those
//! rows, so a restart re-reads them from ksqlDB.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
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

/// A file ready to commit, handed from the buffer stage to the commit stage.
struct Prepared {
    job: FlushJob,
    state: CommitState,
    queued: Instant,
}

/// How many prepared files may wait for the commit stage: one queued while one is written, so
/// encoding (on the blocking pool) overlaps routing and buffering, and memory stays bounded.
const COMMIT_QUEUE: usize = 1;

impl FeedSink {
    /// Runs until the source stage closes the channel, then flushes everything (reason
    /// `shutdown`).
    pub async fn run(mut self, mut receiver: mpsc::Receiver<SourceMessage>) -> Result<SinkSummary, SinkFailed> {
        let (jobs, queue) = mpsc::channel::<Prepared>(COMMIT_QUEUE);
        let in_flight = Arc::new(AtomicU64::new(0));
        let learned = Arc::new(std::sync::Mutex::new(Vec::new()));
        let committed_one = Arc::new(tokio::sync::Notify::new());
        let committer = Committer {
            feed: self.feed.clone(),
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            retry: self.retry.clone(),
            committed: self.committed.clone(),
            in_flight: in_flight.clone(),
            learned: learned.clone(),
            committed_one: committed_one.clone(),
        };
        let mut commit_task = tokio::spawn(committer.run(queue));
        let mut stage = Stage {
            projected: self.committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
            jobs: Some(jobs),
            in_flight,
            learned,
            committed_one,
        };
        let mut schema_seen = false;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended_early = loop {
            let sent = tokio::select! {
                message = receiver.recv() => match message {
                    None => break false,
                    Some(SourceMessage::Schema(_)) => {
                        // New columns (CREATE OR REPLACE): one file never mixes schemas.
                        let mut sent = true;
                        if schema_seen {
                            let drained = self.buffers.drain_all(FlushReason::SchemaChange);
                            sent = self.hand_on(&mut stage, drained).await;
                        }
                        schema_seen = true;
                        sent
                    }
                    Some(SourceMessage::Token(token)) => {
                        self.tracker.token(token);
                        true
                    }
                    Some(SourceMessage::Batch { batch, positions }) => self.take_batch(&mut stage, batch, positions).await,
                },
                _ = ticker.tick() => {
                    let ready = self.buffers.drain_ready(Instant::now());
                    self.hand_on(&mut stage, ready).await && !commit_task.is_finished()
                }
            };
            stage.apply_learned(&mut self.buffers);
            self.update_gauges();
            if !sent {
                break true; // the commit stage stopped on a permanent error
            }
        };
        if !ended_early {
            let rest = self.buffers.drain_all(FlushReason::Shutdown);
            self.hand_on(&mut stage, rest).await;
        }
        stage.jobs = None; // the commit stage finishes what is queued, then ends
        let summary = match (&mut commit_task).await {
            Ok(result) => result,
            Err(error) => panic!("the commit stage of feed {} panicked: {error}", self.feed),
        };
        stage.apply_learned(&mut self.buffers);
        self.update_gauges();
        summary
    }

    /// Routes one decoded batch row by row into the partition buffers and hands on what must be
    /// flushed. False when the commit stage has stopped.
    async fn take_batch(&mut self, stage: &mut Stage, batch: RecordBatch, positions: crate::lake::Positions) -> bool {
        let processing_ms = chrono::Utc::now().timestamp_millis();
        let routed = match self.router.route(&batch, processing_ms) {
            Ok(routed) => routed,
            Err(error) => {
                // Only a time outside chrono's range gets here; the rows are counted and logged
                // rather than blocking the feed.
                self.metrics.errors.with_label_values(&[&self.feed, "partition", "event_time"]).inc();
                tracing::error!(feed = %self.feed, %error, rows = batch.num_rows(), "rows not routable");
                return true;
            }
        };
        for part in routed {
            self.watermark.observe(part.stats.max_event_ms);
            let key = part.key;
            let mut rows: Vec<_> = positions_of(&part.batch).into_iter().map(|(p, o)| (p, o, key)).collect();
            // Jobs from a push (a schema change) are handed on before this part's rows count as
            // buffered, so the two never mix.
            let drained = self.buffers.push(part);
            if !self.hand_on(stage, drained).await {
                return false;
            }
            self.tracker.record(&mut rows);
            self.tracker.arrived(key);
        }
        // Rows skipped as already committed, or rejected, count as seen.
        for (&partition, &offset) in &positions {
            self.tracker.observe(partition, offset);
        }
        // Above the budget: flush the largest buffer while buffers alone exceed it; when files on
        // their way out hold the excess, wait for them (reading pauses) rather than grow.
        while self.budget.used() > self.budget.limit() {
            let in_flight = stage.in_flight.load(Ordering::Relaxed);
            if self.budget.used().saturating_sub(in_flight) > self.budget.limit() {
                if let Some(job) = self.buffers.drain_largest() {
                    if !self.hand_on(stage, vec![job]).await {
                        return false;
                    }
                    continue;
                }
            }
            if in_flight == 0 || stage.jobs.is_none() {
                break; // other feeds hold the memory; they flush their own
            }
            stage.committed_one.notified().await;
        }
        true
    }

    /// Prepares files for the commit stage, in order: each carries the commit state that holds
    /// once it and every file before it are committed. False when the commit stage has stopped.
    async fn hand_on(&mut self, stage: &mut Stage, drained: Vec<FlushJob>) -> bool {
        for mut job in drained {
            job.runs = self.tracker.take(&job.key);
            let state = self.tracker.state_after(&stage.projected, &job.runs);
            stage.projected = state.clone();
            job.commit = Some(state.clone());
            let Some(jobs) = &stage.jobs else { return false };
            stage.in_flight.fetch_add(job.reserved_bytes(), Ordering::Relaxed);
            if jobs.send(Prepared { job, state, queued: Instant::now() }).await.is_err() {
                return false;
            }
        }
        true
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

/// The buffer stage's view of the commit stage.
struct Stage {
    /// The commit state once every file handed on so far is committed.
    projected: CommitState,
    /// `None` once the buffer stage is done.
    jobs: Option<mpsc::Sender<Prepared>>,
    /// Memory reserved by files handed on but not yet committed.
    in_flight: Arc<AtomicU64>,
    /// (in-memory, encoded) sizes of committed files, for the compression estimate.
    learned: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    /// Signalled each time the commit stage is done with a file.
    committed_one: Arc<tokio::sync::Notify>,
}

impl Stage {
    fn apply_learned(&self, buffers: &mut PartitionBuffers) {
        let learned = std::mem::take(&mut *self.learned.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for (in_memory, encoded) in learned {
            buffers.learn_compression(in_memory, encoded);
        }
    }
}

/// The commit stage of a feed: writes prepared files in order, retrying retryable failures
/// forever while the rows stay reserved; a permanent failure ends it with an error.
struct Committer {
    feed: String,
    writer: Arc<LakeWriter>,
    metrics: Metrics,
    health: Health,
    retry: RetryPolicy,
    committed: Arc<std::sync::Mutex<CommitState>>,
    in_flight: Arc<AtomicU64>,
    learned: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    committed_one: Arc<tokio::sync::Notify>,
}

impl Committer {
    async fn run(self, mut queue: mpsc::Receiver<Prepared>) -> Result<SinkSummary, SinkFailed> {
        let mut summary = SinkSummary::default();
        while let Some(prepared) = queue.recv().await {
            let reserved = prepared.job.reserved_bytes();
            let result = self.commit(prepared, &mut summary).await;
            self.in_flight.fetch_sub(reserved, Ordering::Relaxed);
            self.committed_one.notify_one();
            result?;
        }
        Ok(summary)
    }

    /// Commits one file, retrying retryable failures until it succeeds.
    async fn commit(&self, prepared: Prepared, summary: &mut SinkSummary) -> Result<(), SinkFailed> {
        let Prepared { job, state, queued } = prepared;
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
        self.learned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((committed.in_memory_bytes, committed.bytes));
        let feed = self.feed.as_str();
        self.metrics.rows_written.with_label_values(&[feed]).inc_by(committed.rows as u64);
        self.metrics.bytes_written.with_label_values(&[feed]).inc_by(committed.bytes);
        self.metrics.files_written.with_label_values(&[feed, committed.reason.as_str()]).inc();
        self.metrics.flush_duration.with_label_values(&[feed]).observe(queued.elapsed().as_secs_f64());
        self.metrics.file_size.with_label_values(&[feed]).observe(committed.bytes as f64);
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        self.metrics.last_commit_timestamp.with_label_values(&[feed]).set(now);
        let watermark = self.metrics.event_time_watermark.with_label_values(&[feed]);
        watermark.set(watermark.get().max(job.max_event_ms as f64 / 1000.0));
        summary.rows_written += committed.rows as u64;
        summary.files_written += 1;
        Ok(())
    }
}
