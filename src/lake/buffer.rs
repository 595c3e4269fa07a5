//! Per-feed partition buffers and the flush policy.
//!
//! Rows are held as the RecordBatches they arrived in, one list per [`PartitionKey`], until a
//! flush predicate fires. The caller drives it:
//! - after every [`PartitionBuffers::push_batch`] and on a periodic tick (about once a second) call
//!   [`PartitionBuffers::drain_ready`], so idle partitions flush by age and close even when no
//!   row arrives;
//! - while [`MemoryBudget::over_budget`], call [`PartitionBuffers::drain_largest`] (reason
//!   `memory`), across feeds largest first;
//! - at shutdown, [`PartitionBuffers::drain_all`] with [`FlushReason::Shutdown`].
//!
//! Ages use `tokio::time::Instant` (tests pause and advance tokio's clock). Partition close
//! compares partition bounds with the feed's event-time **watermark**, which the caller passes
//! to [`PartitionBuffers::push_batch`] and [`PartitionBuffers::drain_ready`] (epoch ms): the
//! buffers read no clock of their own.
//!
//! The buffers own the feed's [`CommitLedger`]: every job they hand out carries its exact
//! runs and the commit state the manifest records with it, so nothing downstream completes it.
//!
//! Late rows: rows for a partition that is already closed (end + allowed lateness has passed)
//! open a buffer marked `late`. It does not flush on partition close again (that would write a
//! file per tick) but by rows, bytes or age, so late data lands as one extra file per
//! `max_age` in the old folder. [`PartitionBuffers::push_batch`] says how many rows were late.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use tokio::time::Instant;

use super::budget::{MemoryBudget, Reservation};
use super::commit::{Bucket, CommitLedger, CommitState, Destination, Runs};
use super::dead_letter::{DeadLetterJob, Rejected};
use super::layout::{data_file_name, ulid, FeedKind};
use super::partition::{PartitionKey, PartitionSpec, RoutedBatch};
use super::Position;
use crate::defaults;

/// Why a file was written; `as_str()` is the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    Rows,
    Bytes,
    Age,
    PartitionClose,
    Memory,
    Shutdown,
    SchemaChange,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Age => "age",
            FlushReason::PartitionClose => "partition_close",
            FlushReason::Memory => "memory",
            FlushReason::Shutdown => "shutdown",
            FlushReason::SchemaChange => "schema_change",
        }
    }
}

/// Thresholds of the flush predicates.
#[derive(Debug, Clone, PartialEq)]
pub struct FlushPolicy {
    /// Flush once a partition buffers this many rows.
    pub max_rows: usize,
    /// Flush once the *estimated encoded* size reaches this: the file-size target.
    pub max_bytes: u64,
    /// Flush once the oldest buffered row waited this long: bounds data freshness.
    pub max_age: Duration,
    /// A partition closes (flushes) once its end plus this has passed on the wall clock.
    pub allowed_lateness: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_rows: defaults::FLUSH_MAX_ROWS,
            max_bytes: defaults::FLUSH_MAX_BYTES,
            max_age: defaults::FLUSH_MAX_AGE,
            allowed_lateness: defaults::ALLOWED_LATENESS,
        }
    }
}

/// Encoded/in-memory ratio assumed before the first flush teaches a better one.
pub const INITIAL_COMPRESSION_RATIO: f64 = 0.25;

/// What [`PartitionBuffers::push_batch`] did.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Buffers drained before the rows were added (a schema change), in commit order.
    pub drained: Vec<FlushJob>,
    /// The dead-letter rows, taken after `drained` (commit it after them): at once for a row
    /// without a position, or when the dead letter holds enough.
    pub dead_letter: Option<DeadLetterJob>,
    /// Rows buffered.
    pub rows: usize,
    /// Rows added to a partition that had already closed.
    pub late_rows: usize,
    /// Rows without a usable event time, routed by processing time.
    pub null_event_time_rows: usize,
}

/// The rows of one partition, ready to be written as one file.
#[derive(Debug)]
pub struct FlushJob {
    pub feed: String,
    pub kind: FeedKind,
    pub key: PartitionKey,
    /// Fixed when the job is drained, so every retry writes the same name.
    pub file_name: String,
    pub reason: FlushReason,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub in_memory_bytes: u64,
    pub first_event_ms: i64,
    pub min_event_ms: i64,
    pub max_event_ms: i64,
    pub first_position: Option<Position>,
    pub null_event_time_rows: usize,
    /// Rows that arrived after their partition closed.
    pub late: bool,
    /// A flush for age: when it became due (its oldest row's arrival plus `max_age`).
    pub due: Option<Instant>,
    /// Exact runs of ksqlDB offsets in this file, from the feed's [`CommitLedger`].
    pub runs: Runs,
    /// The feed's commit state once this file is committed, from the ledger: the manifest
    /// records it as it is.
    pub commit: CommitState,
    /// Released when the job is dropped, i.e. after the caller is done with it.
    reservation: Reservation,
}

impl FlushJob {
    /// `year=…/…/data_….parquet`, relative to the feed directory.
    pub fn relative_path(&self) -> String {
        format!("{}/{}", self.key.relative_path(), self.file_name)
    }

    pub fn reserved_bytes(&self) -> u64 {
        self.reservation.bytes()
    }
}

#[derive(Debug)]
struct PartitionBuffer {
    batches: Vec<RecordBatch>,
    rows: usize,
    in_memory_bytes: u64,
    oldest_arrival: Instant,
    first_event_ms: i64,
    min_event_ms: i64,
    max_event_ms: i64,
    first_position: Option<Position>,
    null_event_time_rows: usize,
    /// Watermark (ms) at which the partition closes (end + allowed lateness).
    closes_at_ms: i64,
    late: bool,
    reservation: Reservation,
}

/// The buffers of one feed.
#[derive(Debug)]
pub struct PartitionBuffers {
    feed: String,
    kind: FeedKind,
    spec: PartitionSpec,
    policy: FlushPolicy,
    budget: Arc<MemoryBudget>,
    schema: Option<SchemaRef>,
    buffers: BTreeMap<PartitionKey, PartitionBuffer>,
    compression_ratio: f64,
    /// Where every row went, so each drained job carries its exact runs and commit state.
    ledger: CommitLedger,
    /// Rejected rows waiting for their dead-letter file.
    dead_letter: DeadLetterBuffer,
}

/// The dead-letter rows of a feed, flushed by age, by size, at once for a row without a
/// position, and at shutdown.
#[derive(Debug, Default)]
struct DeadLetterBuffer {
    records: Vec<Rejected>,
    bytes: u64,
    oldest_arrival: Option<Instant>,
    reservation: Option<Reservation>,
}

/// A dead-letter buffer holding this much is written at once.
const DEAD_LETTER_FLUSH_BYTES: u64 = 16 * 1024 * 1024;

impl PartitionBuffers {
    pub fn new(
        feed: impl Into<String>,
        kind: FeedKind,
        spec: PartitionSpec,
        policy: FlushPolicy,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        PartitionBuffers {
            feed: feed.into(),
            kind,
            spec,
            policy,
            budget,
            schema: None,
            buffers: BTreeMap::new(),
            compression_ratio: INITIAL_COMPRESSION_RATIO,
            ledger: CommitLedger::default(),
            dead_letter: DeadLetterBuffer::default(),
        }
    }

    /// Starts from the manifest's commit state (a restart); the default is an empty lake.
    pub fn resuming_from(mut self, committed: CommitState) -> Self {
        self.ledger = CommitLedger::new(committed);
        self
    }

    /// Buffers the routed parts of one source batch and records in the ledger where each of
    /// its rows went; `passed` are the rows that arrived but are not in the batch (skipped as
    /// committed, rejected). A part for a partition already closed at `watermark_ms` goes to a
    /// `late` buffer. If the batch's schema differs from the buffered one, every partition is
    /// drained first (reason `schema_change`) and returned: one file never mixes schemas.
    ///
    /// A batch is recorded as a whole: rows of one ksqlDB partition interleave between its
    /// parts, and only together do they say where each run of a time partition ends.
    pub fn push_batch(
        &mut self,
        parts: Vec<RoutedBatch>,
        passed: &[Position],
        rejected: Vec<Rejected>,
        watermark_ms: i64,
    ) -> Pushed {
        let mut pushed = Pushed::default();
        let mut arrivals: Vec<(Position, Destination)> =
            passed.iter().map(|&position| (position, Destination::Passed)).collect();
        for part in parts {
            let bucket = Bucket::Partition(part.key);
            arrivals.extend(part.positions.iter().map(|&position| (position, Destination::Buffered(bucket))));
            self.push_part(part, watermark_ms, &mut pushed);
            self.ledger.arrived(bucket);
        }
        // A line without a position is invisible to the ledger: its file must be handed on
        // before any later row is, so it is taken at once.
        let unplaced = rejected.iter().any(|record| record.position.is_none());
        if !rejected.is_empty() {
            arrivals.extend(
                rejected
                    .iter()
                    .filter_map(|record| record.position)
                    .map(|position| (position, Destination::Buffered(Bucket::DeadLetter))),
            );
            self.push_rejected(rejected);
            self.ledger.arrived(Bucket::DeadLetter);
        }
        self.ledger.record(&mut arrivals);
        if unplaced || self.dead_letter.bytes >= DEAD_LETTER_FLUSH_BYTES {
            pushed.dead_letter = self.take_dead_letter();
        }
        pushed
    }

    fn push_rejected(&mut self, rejected: Vec<Rejected>) {
        let buffer = &mut self.dead_letter;
        let bytes: u64 = rejected.iter().map(Rejected::memory_bytes).sum();
        buffer.bytes += bytes;
        buffer.oldest_arrival.get_or_insert_with(Instant::now);
        buffer.reservation.get_or_insert_with(|| self.budget.reserve(0)).grow(bytes);
        buffer.records.extend(rejected);
    }

    /// The dead-letter rows as one job, when their flush trigger holds at `now` (age) or
    /// `force` is set (shutdown).
    pub fn drain_dead_letter(&mut self, now: Instant, force: bool) -> Option<DeadLetterJob> {
        let since = self.dead_letter.oldest_arrival?;
        (force || now.saturating_duration_since(since) >= self.policy.max_age).then(|| self.take_dead_letter())?
    }

    fn take_dead_letter(&mut self) -> Option<DeadLetterJob> {
        if self.dead_letter.records.is_empty() {
            return None;
        }
        let buffer = std::mem::take(&mut self.dead_letter);
        let (runs, commit) = self.ledger.take(&Bucket::DeadLetter);
        let reservation = buffer.reservation.unwrap_or_else(|| self.budget.reserve(0));
        Some(DeadLetterJob::new(self.feed.clone(), self.kind, buffer.records, runs, commit, reservation))
    }

    /// Rows waiting for the dead letter.
    pub fn dead_letter_rows(&self) -> usize {
        self.dead_letter.records.len()
    }

    /// A continuation token: every row buffered so far precedes it.
    pub fn token(&mut self, token: String) {
        self.ledger.token(token);
    }

    fn push_part(&mut self, routed: RoutedBatch, watermark_ms: i64, pushed: &mut Pushed) {
        let schema = routed.batch.schema();
        if let Some(current) = &self.schema {
            if current.fields() != schema.fields() {
                let drained = self.drain_all(FlushReason::SchemaChange);
                pushed.drained.extend(drained);
            }
        }
        self.schema = Some(schema);
        let stats = routed.stats;
        if stats.rows == 0 {
            return;
        }
        pushed.rows += stats.rows;
        pushed.null_event_time_rows += stats.null_event_time_rows;
        let bytes = routed.batch.get_array_memory_size() as u64;
        let buffer = match self.buffers.get_mut(&routed.key) {
            Some(buffer) => buffer,
            None => {
                let end_ms = self.spec.end_ms(&routed.key).unwrap_or(i64::MAX);
                let closes_at_ms = end_ms.saturating_add(self.policy.allowed_lateness.as_millis() as i64);
                let buffer = PartitionBuffer {
                    batches: Vec::new(),
                    rows: 0,
                    in_memory_bytes: 0,
                    oldest_arrival: Instant::now(),
                    first_event_ms: stats.first_event_ms,
                    min_event_ms: stats.min_event_ms,
                    max_event_ms: stats.max_event_ms,
                    first_position: stats.first_position,
                    null_event_time_rows: 0,
                    closes_at_ms,
                    late: closes_at_ms <= watermark_ms,
                    reservation: self.budget.reserve(0),
                };
                self.buffers.entry(routed.key).or_insert(buffer)
            }
        };
        if buffer.late {
            pushed.late_rows += stats.rows;
        }
        buffer.batches.push(routed.batch);
        buffer.rows += stats.rows;
        buffer.in_memory_bytes += bytes;
        buffer.reservation.grow(bytes);
        buffer.min_event_ms = buffer.min_event_ms.min(stats.min_event_ms);
        buffer.max_event_ms = buffer.max_event_ms.max(stats.max_event_ms);
        if buffer.first_position.is_none() {
            buffer.first_position = stats.first_position;
        }
        buffer.null_event_time_rows += stats.null_event_time_rows;
    }

    /// Drains every partition whose flush predicate holds at `now` and `watermark_ms`.
    pub fn drain_ready(&mut self, now: Instant, watermark_ms: i64) -> Vec<FlushJob> {
        let ready: Vec<(PartitionKey, FlushReason)> = self
            .buffers
            .iter()
            .filter_map(|(key, buffer)| self.flush_reason(buffer, now, watermark_ms).map(|reason| (*key, reason)))
            .collect();
        ready.into_iter().filter_map(|(key, reason)| self.take(key, reason)).collect()
    }

    /// Drains every partition.
    pub fn drain_all(&mut self, reason: FlushReason) -> Vec<FlushJob> {
        let keys: Vec<PartitionKey> = self.buffers.keys().copied().collect();
        keys.into_iter().filter_map(|key| self.take(key, reason)).collect()
    }

    /// Drains the partition holding the most memory (reason `memory`).
    pub fn drain_largest(&mut self) -> Option<FlushJob> {
        let key = self.buffers.iter().max_by_key(|(_, buffer)| buffer.in_memory_bytes).map(|(key, _)| *key)?;
        self.take(key, FlushReason::Memory)
    }

    /// Teaches the encoded-size estimate from a finished file (moving average).
    pub fn learn_compression(&mut self, in_memory_bytes: u64, encoded_bytes: u64) {
        if in_memory_bytes == 0 {
            return;
        }
        let observed = (encoded_bytes as f64 / in_memory_bytes as f64).clamp(0.001, 4.0);
        self.compression_ratio = 0.5 * self.compression_ratio + 0.5 * observed;
    }

    pub fn compression_ratio(&self) -> f64 {
        self.compression_ratio
    }

    pub fn feed(&self) -> &str {
        &self.feed
    }

    pub fn buffered_rows(&self) -> usize {
        self.buffers.values().map(|buffer| buffer.rows).sum()
    }

    pub fn buffered_bytes(&self) -> u64 {
        self.buffers.values().map(|buffer| buffer.in_memory_bytes).sum()
    }

    /// The largest single partition buffer, for choosing which feed to drain under pressure.
    pub fn largest_buffer_bytes(&self) -> u64 {
        self.buffers.values().map(|buffer| buffer.in_memory_bytes).max().unwrap_or(0)
    }

    pub fn open_partitions(&self) -> usize {
        self.buffers.len()
    }

    /// How long the oldest buffered row has waited (zero when nothing is buffered).
    pub fn oldest_buffered_age(&self, now: Instant) -> std::time::Duration {
        self.buffers
            .values()
            .map(|buffer| now.saturating_duration_since(buffer.oldest_arrival))
            .max()
            .unwrap_or_default()
    }

    /// The predicates, checked in this order: rows, bytes, partition close, age.
    fn flush_reason(&self, buffer: &PartitionBuffer, now: Instant, watermark_ms: i64) -> Option<FlushReason> {
        let estimated_encoded = (buffer.in_memory_bytes as f64 * self.compression_ratio) as u64;
        if buffer.rows >= self.policy.max_rows {
            Some(FlushReason::Rows)
        } else if estimated_encoded >= self.policy.max_bytes {
            Some(FlushReason::Bytes)
        } else if !buffer.late && buffer.closes_at_ms <= watermark_ms {
            Some(FlushReason::PartitionClose)
        } else if now.saturating_duration_since(buffer.oldest_arrival) >= self.policy.max_age {
            Some(FlushReason::Age)
        } else {
            None
        }
    }

    /// Every job is taken here, in the order it must be committed in: the ledger's state for
    /// it assumes every job taken before it is committed first.
    fn take(&mut self, key: PartitionKey, reason: FlushReason) -> Option<FlushJob> {
        let buffer = self.buffers.remove(&key)?;
        let schema = self.schema.clone()?;
        let (runs, commit) = self.ledger.take(&Bucket::Partition(key));
        let now_ms = chrono::Utc::now().timestamp_millis();
        let file_name = data_file_name(buffer.first_event_ms, self.spec.timezone, buffer.first_position, &runs, now_ms)
            .unwrap_or_else(|_| format!("data_00000000_000000_{}.parquet", ulid(now_ms)));
        Some(FlushJob {
            feed: self.feed.clone(),
            kind: self.kind,
            key,
            file_name,
            reason,
            schema,
            batches: buffer.batches,
            rows: buffer.rows,
            in_memory_bytes: buffer.in_memory_bytes,
            first_event_ms: buffer.first_event_ms,
            min_event_ms: buffer.min_event_ms,
            max_event_ms: buffer.max_event_ms,
            first_position: buffer.first_position,
            null_event_time_rows: buffer.null_event_time_rows,
            late: buffer.late,
            due: (reason == FlushReason::Age).then(|| buffer.oldest_arrival + self.policy.max_age),
            runs,
            commit,
            reservation: buffer.reservation,
        })
    }
}

#[cfg(test)]
mod tests;
