//! The buffer stage of a feed: routes each decoded batch row by row to its partition, buffers
//! per partition (the buffers record in the feed's commit ledger where every row went), and
//! hands files to the commit stage when a flush trigger fires (rows, bytes, age, partition close, memory,
//! schema change, shutdown).
//!
//! ```text
//! source ──SourceMessage──► buffer stage ──Prepared (job + its commit state)──► commit stage
//!                              ▲                                                  │
//!                              └───────────────Ack (sizes, reservation freed)─────┘
//! ```
//!
//! The commit stage writes files in the order they were handed on, retrying retryable lake
//! failures forever while the rows stay reserved: the buffer stage stops taking batches once
//! the one-slot queue is full, which pauses the source and so the push query. A permanent
//! failure ends the feed with an error; nothing was committed for those rows, so a restart
//! re-reads them from ksqlDB.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::events::{
    BatchRouted, CommitAttemptFailed, CommitsRecovered, DeadLetterCommitted, FeedMetrics, FileCommitted,
    RowsNotRoutable, StoreSlow,
};
use super::source::SourceMessage;
use crate::backoff::Backoff;
use crate::lake::{
    DeadLetterJob, EncodedFile, FlushJob, FlushReason, LakeWriter, MemoryBudget, PartitionBuffers, PartitionError,
    Position, Rejected, RowRouter, WriteError,
};
use crate::metrics::{FeedState, Health};

/// Partition close follows the feed's event-time watermark: the highest event time seen, never
/// ahead of the wall clock. A backfill from `earliest` then closes old days one after another
/// as it passes them, instead of treating all history as late; an idle feed still flushes on
/// `flush_max_age`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventWatermark {
    highest_event_ms: i64,
}

impl Default for EventWatermark {
    fn default() -> Self {
        EventWatermark { highest_event_ms: i64::MIN }
    }
}

impl EventWatermark {
    pub(crate) fn observe(&mut self, event_ms: i64) {
        self.highest_event_ms = self.highest_event_ms.max(event_ms);
    }

    /// The watermark at wall-clock time `wall_ms`.
    pub(crate) fn at(&self, wall_ms: i64) -> i64 {
        self.highest_event_ms.min(wall_ms)
    }
}

/// What a buffer stage did, for the final log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkSummary {
    pub rows_written: u64,
    pub files_written: u64,
}

/// A feed whose rows cannot be committed. Nothing of theirs was committed, so a restart (once
/// the cause is fixed) reads them again.
#[derive(Debug, thiserror::Error)]
pub enum SinkFailed {
    /// A write error that retrying cannot fix.
    #[error("feed {feed}: committing {rows} rows failed")]
    Commit {
        feed: String,
        rows: usize,
        #[source]
        source: WriteError,
    },
    /// Rows whose partition cannot be computed (the event-time column is missing or of an
    /// unusable type): they are not skipped, which would lose them, but stop the feed.
    #[error("feed {feed}: rows cannot be partitioned")]
    Route {
        feed: String,
        #[source]
        source: PartitionError,
    },
}

pub(crate) struct FeedSink {
    pub(crate) feed: String,
    pub(crate) router: RowRouter,
    /// The buffers, and with them the feed's commit ledger.
    pub(crate) buffers: PartitionBuffers,
    pub(crate) writer: Arc<LakeWriter>,
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) metrics: FeedMetrics,
    pub(crate) health: Health,
    /// Backoff between commit attempts while the lake fails.
    pub(crate) retry: Backoff,
    /// How often age and partition-close triggers are evaluated.
    pub(crate) tick: Duration,
}

/// A file ready to commit, handed from the buffer stage to the commit stage. The job carries
/// its runs and the commit state the manifest records with it.
struct Prepared {
    job: Job,
    queued: Instant,
}

/// A file for the commit stage: data, or the feed's dead letter.
enum Job {
    Data(FlushJob),
    DeadLetter(DeadLetterJob),
}

impl Job {
    fn reserved_bytes(&self) -> u64 {
        match self {
            Job::Data(job) => job.reserved_bytes(),
            Job::DeadLetter(job) => job.reserved_bytes(),
        }
    }
}

/// Data jobs then the dead-letter job, in the order they were taken from the buffers.
fn in_order(data: Vec<FlushJob>, dead_letter: Option<DeadLetterJob>) -> Vec<Job> {
    data.into_iter().map(Job::Data).chain(dead_letter.map(Job::DeadLetter)).collect()
}

/// The commit stage's answer for one file, in hand-on order.
#[derive(Debug, Clone, Copy)]
struct Ack {
    /// Memory the file held against the budget; released by the time the ack is sent.
    reserved_bytes: u64,
    /// The file's rows in memory and encoded, for the compression estimate; `None` when it
    /// was not committed (the commit stage stopped on a permanent error).
    sizes: Option<(u64, u64)>,
}

/// A commit attempt without an answer for this long, plus the time its bytes need at
/// [`SLOWEST_HEALTHY_BYTES_PER_SECOND`], marks the lake as failing while it waits: a frozen
/// store shows within seconds, a large file on a healthy one does not.
const STORE_SLOW: Duration = Duration::from_millis(1500);
const SLOWEST_HEALTHY_BYTES_PER_SECOND: u64 = 16 * 1024 * 1024;

fn slow_after(bytes: usize) -> Duration {
    STORE_SLOW + Duration::from_secs_f64(bytes as f64 / SLOWEST_HEALTHY_BYTES_PER_SECOND as f64)
}

/// How many prepared files may wait for the commit stage: one queued while one is written, so
/// encoding (on the blocking pool) overlaps routing and buffering, and memory stays bounded.
const COMMIT_QUEUE: usize = 1;
/// Files of one feed encoded at the same time while the commit stage writes them in order.
const ENCODE_AHEAD: usize = 2;

/// How long the buffer stage waits at a time for encodes to give their working memory back.
const WORKING_WAIT: Duration = Duration::from_millis(500);

/// No partition buffer holds more than this fraction (1/n) of the memory budget.
const MAX_BUFFER_SHARE: u64 = 3;

/// A file ready for its commit: a data file with its encoding done (and how long that took),
/// or the dead letter, which is encoded when it is committed.
struct Encoded {
    job: EncodedJob,
    queued: Instant,
    started: Instant,
    seconds: Duration,
}

enum EncodedJob {
    /// Boxed: a flush job and its encoded file beside the dead letter's much smaller job.
    Data(Box<FlushJob>, Result<EncodedFile, WriteError>),
    DeadLetter(DeadLetterJob),
}

impl EncodedJob {
    fn reserved_bytes(&self) -> u64 {
        match self {
            EncodedJob::Data(job, _) => job.reserved_bytes(),
            EncodedJob::DeadLetter(job) => job.reserved_bytes(),
        }
    }
}

impl FeedSink {
    /// Runs until the source stage closes the channel, then flushes everything (reason
    /// `shutdown`).
    pub(crate) async fn run(mut self, mut receiver: mpsc::Receiver<SourceMessage>) -> Result<SinkSummary, SinkFailed> {
        let (jobs, queue) = mpsc::channel::<Prepared>(COMMIT_QUEUE);
        let (ack_sender, acks) = mpsc::unbounded_channel();
        let committer = Committer {
            feed: self.feed.clone(),
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            retry: self.retry,
            acks: ack_sender,
        };
        // aborted if this future is dropped (the feed lost its lease): nothing more is committed
        let mut commit_task = AbortOnDrop(tokio::spawn(committer.run(queue)));
        let mut stage =
            Stage { jobs: Some(jobs), acks, in_flight: 0, watermark: EventWatermark::default(), failure: None };
        let mut schema_seen = false;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended_early = loop {
            let sent = tokio::select! {
                message = receiver.recv() => match message {
                    None => break false,
                    Some(SourceMessage::Schema) => {
                        // New columns (CREATE OR REPLACE): one file never mixes schemas.
                        let mut sent = true;
                        if schema_seen {
                            let drained = self.buffers.drain_all(FlushReason::SchemaChange);
                            sent = self.hand_on(&mut stage, in_order(drained, None)).await;
                        }
                        schema_seen = true;
                        sent
                    }
                    Some(SourceMessage::Token(token)) => {
                        self.buffers.token(token);
                        true
                    }
                    Some(SourceMessage::Batch { batch, positions, passed, rejected, reservation }) => {
                        match self.take_batch(&mut stage, batch, positions, passed, rejected, reservation).await {
                            Ok(sent) => sent,
                            Err(failure) => {
                                stage.failure = Some(failure);
                                false
                            }
                        }
                    }
                },
                Some(ack) = stage.acks.recv() => {
                    stage.apply(ack, &mut self.buffers);
                    true
                }
                _ = ticker.tick() => {
                    let watermark = stage.watermark.at(wall_ms());
                    let ready = self.buffers.drain_ready(Instant::now(), watermark);
                    let dead_letter = self.buffers.drain_dead_letter(Instant::now(), false);
                    self.hand_on(&mut stage, in_order(ready, dead_letter)).await && !commit_task.0.is_finished()
                }
            };
            self.update_gauges();
            if !sent {
                break true; // the commit stage stopped on a permanent error
            }
        };
        if !ended_early {
            let rest = self.buffers.drain_all(FlushReason::Shutdown);
            let dead_letter = self.buffers.drain_dead_letter(Instant::now(), true);
            self.hand_on(&mut stage, in_order(rest, dead_letter)).await;
        }
        stage.jobs = None; // the commit stage finishes what is queued, then ends
        let mut summary = match (&mut commit_task.0).await {
            Ok(result) => result,
            Err(error) => panic!("the commit stage of feed {} panicked: {error}", self.feed),
        };
        if let Some(failure) = stage.failure.take() {
            summary = Err(failure);
        }
        if let Err(failure) = &summary {
            let mut error = failure.to_string();
            let mut source = std::error::Error::source(failure);
            while let Some(cause) = source {
                error = format!("{error}: {cause}");
                source = cause.source();
            }
            self.health.set_feed(&self.feed, FeedState::Failed { error });
        }
        while let Ok(ack) = stage.acks.try_recv() {
            stage.apply(ack, &mut self.buffers);
        }
        self.update_gauges();
        summary
    }

    /// Routes one decoded batch row by row into the partition buffers, records where each row
    /// went, and hands on what must be flushed. False when the commit stage has stopped.
    async fn take_batch(
        &mut self,
        stage: &mut Stage,
        batch: arrow::record_batch::RecordBatch,
        positions: Vec<Option<Position>>,
        passed: Vec<Position>,
        rejected: Vec<Rejected>,
        queued: crate::lake::Reservation,
    ) -> Result<bool, SinkFailed> {
        let processing_ms = wall_ms();
        let routed = match self.router.route(&batch, &positions, processing_ms) {
            Ok(routed) => routed,
            Err(error) => {
                // A batch the router cannot read (a missing or unusable event-time column, as
                // after a CREATE OR REPLACE that dropped it): the feed stops rather than skip
                // rows it would then never read again.
                RowsNotRoutable { rows: batch.num_rows(), error: &error }.emit(&self.metrics, &self.health);
                return Err(SinkFailed::Route { feed: self.feed.clone(), source: error });
            }
        };
        for part in &routed {
            stage.watermark.observe(part.stats.max_event_ms);
        }
        let pushed = self.buffers.push_batch(routed, &passed, rejected, stage.watermark.at(processing_ms));
        // the buffers hold the rows now, and reserve them
        drop(queued);
        drop(batch);
        BatchRouted { late_rows: pushed.late_rows, null_event_time_rows: pushed.null_event_time_rows }
            .emit(&self.metrics);
        if !self.hand_on(stage, in_order(pushed.drained, pushed.dead_letter)).await {
            return Ok(false);
        }
        // A file on its way out holds its rows and, while it is encoded, about as much again:
        // no buffer grows past a third of the budget, so one flushed still fits beside the rest.
        while self.buffers.largest_buffer_bytes() > self.budget.limit() / MAX_BUFFER_SHARE {
            let Some(job) = self.buffers.drain_largest() else { break };
            if !self.hand_on(stage, in_order(vec![job], None)).await {
                return Ok(false);
            }
        }
        // Above the budget: flush the largest buffer while buffers alone exceed it; when files on
        // their way out hold the excess, wait for them (reading pauses) rather than grow. When
        // only encodes' working memory is over it, wait for them too: flushing more would just
        // write smaller files.
        while self.budget.used() > self.budget.limit() {
            let working = self.budget.working();
            if self.budget.used().saturating_sub(working) <= self.budget.limit() {
                let _ = tokio::time::timeout(WORKING_WAIT, self.budget.wait_for_room()).await;
                if self.budget.working() < working || !self.budget.over_budget() {
                    continue;
                }
                break; // encodes that run long: go on reading rather than stall
            }
            if self.budget.used().saturating_sub(working + stage.in_flight) > self.budget.limit() {
                if let Some(job) = self.buffers.drain_largest() {
                    if !self.hand_on(stage, in_order(vec![job], None)).await {
                        return Ok(false);
                    }
                    continue;
                }
            }
            if stage.in_flight == 0 || stage.jobs.is_none() {
                break; // other feeds hold the memory; they flush their own
            }
            match stage.acks.recv().await {
                Some(ack) => stage.apply(ack, &mut self.buffers),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Hands files to the commit stage in the order the buffers drained them (each carries the
    /// commit state that holds once it and every file before it are committed). False when the
    /// commit stage has stopped.
    async fn hand_on(&mut self, stage: &mut Stage, drained: Vec<Job>) -> bool {
        for job in drained {
            let Some(jobs) = &stage.jobs else { return false };
            stage.in_flight += job.reserved_bytes();
            if jobs.send(Prepared { job, queued: Instant::now() }).await.is_err() {
                return false;
            }
        }
        true
    }

    fn update_gauges(&self) {
        self.metrics.buffered_rows.set(self.buffers.buffered_rows() as i64);
        self.metrics.buffered_bytes.set(self.buffers.buffered_bytes() as i64);
        self.metrics.open_partitions.set(self.buffers.open_partitions() as i64);
        let oldest = self.buffers.oldest_buffered_age(tokio::time::Instant::now());
        self.metrics.metrics.oldest_buffered_seconds.with_label_values(&[&self.metrics.feed]).set(oldest.as_secs_f64());
        self.metrics.memory_used_bytes.set(self.budget.used() as f64);
    }
}

/// A task handle that aborts the task when dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// The task's result; a panic in it goes on here.
    async fn join(mut self) -> T {
        match (&mut self.0).await {
            Ok(value) => value,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("a task was cancelled while awaited: {error}"),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The buffer stage's view of the commit stage.
struct Stage {
    /// `None` once the buffer stage is done.
    jobs: Option<mpsc::Sender<Prepared>>,
    acks: mpsc::UnboundedReceiver<Ack>,
    /// Memory reserved by files handed on and not yet acknowledged.
    in_flight: u64,
    watermark: EventWatermark,
    /// Why the buffer stage stopped early, when it did.
    failure: Option<SinkFailed>,
}

impl Stage {
    fn apply(&mut self, ack: Ack, buffers: &mut PartitionBuffers) {
        self.in_flight = self.in_flight.saturating_sub(ack.reserved_bytes);
        if let Some((in_memory, encoded)) = ack.sizes {
            buffers.learn_compression(in_memory, encoded);
        }
    }
}

/// The commit stage of a feed: writes prepared files in order. It is the one place that
/// retries lake writes: a file is encoded once, and its put and manifest update are retried
/// with backoff, forever, while the rows stay reserved; a permanent failure ends it.
struct Committer {
    feed: String,
    writer: Arc<LakeWriter>,
    metrics: FeedMetrics,
    health: Health,
    retry: Backoff,
    acks: mpsc::UnboundedSender<Ack>,
}

/// Encodes a data file (a dead-letter file is encoded when it is committed).
async fn encode(writer: Arc<LakeWriter>, prepared: Prepared) -> Encoded {
    let Prepared { job, queued } = prepared;
    let started = Instant::now();
    let job = match job {
        Job::Data(job) => {
            let file = writer.encode(&job).await;
            EncodedJob::Data(Box::new(job), file)
        }
        Job::DeadLetter(job) => EncodedJob::DeadLetter(job),
    };
    Encoded { job, queued, started, seconds: started.elapsed() }
}

impl Committer {
    async fn run(self, mut queue: mpsc::Receiver<Prepared>) -> Result<SinkSummary, SinkFailed> {
        let mut summary = SinkSummary::default();
        // Files are encoded up to ENCODE_AHEAD at a time (the shutdown flush of several
        // partitions uses every core) and committed one by one, in order. Each encode is a
        // task of its own: it runs, and gives its encode permit back, while this loop waits
        // on a commit, however long the lake takes.
        let mut encoded = futures::stream::poll_fn(|cx| queue.poll_recv(cx))
            .map(|prepared| AbortOnDrop(tokio::spawn(encode(Arc::clone(&self.writer), prepared))).join())
            .buffered(ENCODE_AHEAD);
        while let Some(ready) = encoded.next().await {
            let reserved_bytes = ready.job.reserved_bytes();
            let result = self.commit(ready, &mut summary).await;
            // The job, and with it its reservation, is gone by now.
            let sizes = result.as_ref().ok().copied().flatten();
            let _ = self.acks.send(Ack { reserved_bytes, sizes });
            result?;
        }
        Ok(summary)
    }

    /// Commits one file, retrying retryable failures until it succeeds. Returns a data file's
    /// in-memory and encoded sizes.
    async fn commit(&self, ready: Encoded, summary: &mut SinkSummary) -> Result<Option<(u64, u64)>, SinkFailed> {
        let Encoded { job, queued, started, seconds } = ready;
        match job {
            EncodedJob::Data(job, file) => {
                let encoded = file.map_err(|error| {
                    CommitAttemptFailed { error: &error, attempt: 1, retry_in: None, rows: job.rows }
                        .emit(&self.metrics, &self.health);
                    SinkFailed::Commit { feed: self.feed.clone(), rows: job.rows, source: error }
                })?;
                let put_started = Instant::now();
                let slow = slow_after(encoded.bytes.len());
                let committed = self.with_retries(job.rows, slow, || self.writer.commit(&job, &encoded)).await?;
                FileCommitted {
                    file: &committed,
                    min_event_ms: job.min_event_ms,
                    max_event_ms: job.max_event_ms,
                    queue_wait: started.duration_since(queued),
                    encode: seconds,
                    put: put_started.elapsed(),
                    due: job.due,
                }
                .emit(&self.metrics);
                summary.rows_written += committed.rows as u64;
                summary.files_written += 1;
                Ok(Some((committed.in_memory_bytes, committed.bytes)))
            }
            EncodedJob::DeadLetter(job) => {
                let contents = job.encode();
                let rows = job.records.len();
                self.with_retries(rows, slow_after(contents.len()), || self.writer.commit_dead_letter(&job, &contents))
                    .await?;
                DeadLetterCommitted { rows, bytes: contents.len() }.emit(&self.metrics);
                Ok(None)
            }
        }
    }

    /// Runs `attempt` until it succeeds, waiting with backoff after each retryable failure;
    /// the commit stage is the only place that retries lake writes.
    async fn with_retries<T, F, Fut>(&self, rows: usize, slow: Duration, mut attempt: F) -> Result<T, SinkFailed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let mut failures: u32 = 0;
        loop {
            let outcome = {
                // A lake that does not answer at all (a frozen S3) shows on /readyz after
                // STORE_SLOW, not only once the request times out.
                let pending = attempt();
                tokio::pin!(pending);
                tokio::select! {
                    outcome = &mut pending => outcome,
                    _ = tokio::time::sleep(slow) => {
                        StoreSlow { waited: slow }.emit(&self.metrics, &self.health);
                        pending.await
                    }
                }
            };
            match outcome {
                Ok(done) => {
                    CommitsRecovered { failed_attempts: failures }.emit(&self.metrics, &self.health);
                    return Ok(done);
                }
                Err(error) if error.is_retryable() => {
                    let delay = self.retry.delay(failures);
                    failures = failures.saturating_add(1);
                    CommitAttemptFailed { error: &error, attempt: failures, retry_in: Some(delay), rows }
                        .emit(&self.metrics, &self.health);
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    CommitAttemptFailed { error: &error, attempt: failures + 1, retry_in: None, rows }
                        .emit(&self.metrics, &self.health);
                    return Err(SinkFailed::Commit { feed: self.feed.clone(), rows, source: error });
                }
            }
        }
    }
}
