//! The commit protocol: one [`FlushJob`] becomes one Parquet file, then one manifest update.
//!
//! 1. Encode in `spawn_blocking`.
//! 2. Put the data file **create-only** (`PutMode::Create`). One put is atomic on every store
//!    (LocalFileSystem stages and links; S3 PutObject is all-or-nothing). Files above
//!    `multipart_threshold` use a multipart upload completed only at the end (nothing is
//!    visible before), after a `head` check since multipart has no create-only mode.
//! 3. `AlreadyExists` means an earlier attempt (a retry whose response was lost, or a replay
//!    after a crash with the deterministic `p…o…` name) already wrote this name. Its footer is
//!    compared with the job (row count and positions): equal → reused, nothing rewritten. If
//!    it differs and the manifest does not list it, it is an uncommitted orphan and is
//!    overwritten; if the manifest lists it, that is a [`WriteError::Conflict`].
//! 4. Only then `_metadata.json` is read, updated and replaced: `PutMode::Create` when absent,
//!    `PutMode::Update` with the ETag/version where the store supports it (S3, GCS, Azure,
//!    InMemory), else a plain put (LocalFileSystem: staged file + rename, atomic). A lost race
//!    (`Precondition`/`AlreadyExists`) re-reads and retries. A file already listed is not
//!    counted again.
//!
//! Retryable failures are retried with exponential backoff ([`RetryPolicy`]). A failed data put
//! leaves no object and the manifest untouched; the caller keeps the job and may write it again.
//! If the data file is written but the manifest update keeps failing, the file stays as an
//! orphan that is not part of the committed lake; a retry with the same job adopts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::buffer::{FlushJob, FlushReason};
use super::layout::{FeedKind, LayoutError};
use super::metadata::{columns_of, format_ms, FeedMetadata, FileEntry};
use super::parquet::{encode, footer_summary, EncodeError, EncodedFile, FileInfo, ParquetOptions};
use super::partition::PartitionKey;
use super::store::Lake;
use super::Positions;

/// Bounded exponential backoff for retryable store errors.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per step (data put, manifest update), including the first.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` (1-based `attempt` just failed), with jitter in
    /// [50%, 100%] so writers that failed together do not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(capped * rand::random_range(0.5..=1.0))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriterOptions {
    pub parquet: ParquetOptions,
    pub retry: RetryPolicy,
    /// Files larger than this go up as a multipart upload.
    pub multipart_threshold: usize,
    /// Part size of multipart uploads (S3 minimum: 5 MiB).
    pub part_size: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            parquet: ParquetOptions::default(),
            retry: RetryPolicy::default(),
            multipart_threshold: 256 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
        }
    }
}

/// How the data file came to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written now.
    Written,
    /// An identical file was already there (earlier attempt); the manifest now lists it.
    ReusedExisting,
    /// An uncommitted file with different contents was there and was replaced.
    ReplacedOrphan,
    /// The manifest already listed the file: nothing was written or counted.
    AlreadyCommitted,
}

impl CommitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitOutcome::Written => "written",
            CommitOutcome::ReusedExisting => "reused_existing",
            CommitOutcome::ReplacedOrphan => "replaced_orphan",
            CommitOutcome::AlreadyCommitted => "already_committed",
        }
    }
}

/// A committed file: what the caller needs for metrics and resume.
#[derive(Debug, Clone)]
pub struct CommittedFile {
    pub feed: String,
    pub kind: FeedKind,
    pub key: PartitionKey,
    pub path: Path,
    pub rows: usize,
    /// Encoded Parquet bytes.
    pub bytes: u64,
    /// Arrow bytes the rows held in memory (for `learn_compression`).
    pub in_memory_bytes: u64,
    pub reason: FlushReason,
    pub outcome: CommitOutcome,
    /// Store attempts taken (data + manifest); above 2 means retries happened.
    pub attempts: u32,
    /// The feed's committed positions after this commit.
    pub committed_positions: Positions,
    pub encode_duration: Duration,
    pub upload_duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("encoding {path} failed")]
    Encode {
        path: String,
        #[source]
        source: EncodeError,
    },
    #[error("encoding task for {path} failed: {reason}")]
    EncodeTask { path: String, reason: String },
    #[error("writing {path} failed after {attempts} attempt(s)")]
    Put {
        path: String,
        attempts: u32,
        #[source]
        source: object_store::Error,
    },
    #[error("updating {path} failed after {attempts} attempt(s)")]
    Metadata {
        path: String,
        attempts: u32,
        #[source]
        source: object_store::Error,
    },
    #[error("{path} is not a valid manifest")]
    MetadataCorrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} conflicts with a committed file: {reason}")]
    Conflict { path: String, reason: String },
}

impl WriteError {
    /// Whether writing the same job again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WriteError::Put { source, .. } | WriteError::Metadata { source, .. } => is_retryable(source),
            WriteError::EncodeTask { .. } => true,
            _ => false,
        }
    }
}

/// Network errors, 5xx after object_store's own retries, lost conditional races.
fn is_retryable(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. }
            | object_store::Error::JoinError { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
    )
}

/// A feed as the lock map knows it.
type FeedId = (FeedKind, String);

/// Writes flush jobs into a lake. Cheap to share (`Arc`); writes of different partitions may
/// run concurrently, manifest updates of one feed are serialized inside the process.
#[derive(Debug)]
pub struct LakeWriter {
    lake: Lake,
    options: WriterOptions,
    /// One lock per feed so concurrent commits do not race on `_metadata.json`.
    feed_locks: StdMutex<HashMap<FeedId, Arc<Mutex<()>>>>,
    /// Cleared once the store answers NotImplemented to a conditional update.
    conditional_update: AtomicBool,
}

impl LakeWriter {
    pub fn new(lake: Lake, options: WriterOptions) -> Self {
        LakeWriter {
            lake,
            options,
            feed_locks: StdMutex::new(HashMap::new()),
            conditional_update: AtomicBool::new(true),
        }
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The feed's manifest, or `None` before its first commit. Read it at start-up to resume
    /// from `committed_positions`.
    pub async fn read_metadata(&self, kind: FeedKind, feed: &str) -> Result<Option<FeedMetadata>, WriteError> {
        let path = self.lake.metadata_path(kind, feed)?;
        Ok(self.load_metadata(&path, 1).await?.map(|(metadata, _)| metadata))
    }

    /// Encodes and commits `job`. On error the job is untouched and can be written again.
    #[tracing::instrument(skip_all, fields(feed = %job.feed, partition = %job.key, file = %job.file_name))]
    pub async fn write(&self, job: &FlushJob) -> Result<CommittedFile, WriteError> {
        let relative = job.relative_path();
        let data_path = self.lake.feed_path(job.kind, &job.feed, &relative)?;
        let metadata_path = self.lake.metadata_path(job.kind, &job.feed)?;

        let encode_started = Instant::now();
        let encoded = self.encode(job, &data_path).await?;
        let encode_duration = encode_started.elapsed();

        let upload_started = Instant::now();
        let (data_outcome, data_attempts) = self.put_data(job, &data_path, &metadata_path, &encoded).await?;
        let lock = self.feed_lock(job.kind, &job.feed);
        let _guard = lock.lock().await;
        let (committed_positions, listed_before, metadata_attempts) =
            self.commit_metadata(job, &metadata_path, &encoded).await?;
        let upload_duration = upload_started.elapsed();
        let outcome = if listed_before { CommitOutcome::AlreadyCommitted } else { data_outcome };
        info!(
            rows = job.rows,
            bytes = encoded.bytes.len(),
            reason = job.reason.as_str(),
            outcome = outcome.as_str(),
            attempts = data_attempts + metadata_attempts,
            "committed data file"
        );
        Ok(CommittedFile {
            feed: job.feed.clone(),
            kind: job.kind,
            key: job.key,
            path: data_path,
            rows: job.rows,
            bytes: encoded.bytes.len() as u64,
            in_memory_bytes: job.in_memory_bytes,
            reason: job.reason,
            outcome,
            attempts: data_attempts + metadata_attempts,
            committed_positions,
            encode_duration,
            upload_duration,
        })
    }

    async fn encode(&self, job: &FlushJob, path: &Path) -> Result<EncodedFile, WriteError> {
        let batches = job.batches.clone();
        let info = FileInfo {
            feed: job.feed.clone(),
            kind: job.kind,
            positions: job.positions.clone(),
            runs: job.runs.clone(),
            min_event_ms: job.min_event_ms,
            max_event_ms: job.max_event_ms,
        };
        let options = self.options.parquet.clone();
        tokio::task::spawn_blocking(move || encode(&batches, &info, &options))
            .await
            .map_err(|error| WriteError::EncodeTask { path: path.to_string(), reason: error.to_string() })?
            .map_err(|source| WriteError::Encode { path: path.to_string(), source })
    }

    /// Step 2 and 3: the data file, create-only, with retries.
    async fn put_data(
        &self,
        job: &FlushJob,
        path: &Path,
        metadata_path: &Path,
        encoded: &EncodedFile,
    ) -> Result<(CommitOutcome, u32), WriteError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.put_create(path, &encoded.bytes).await {
                Ok(()) => Ok(CommitOutcome::Written),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    match self.resolve_existing(job, path, metadata_path, encoded).await {
                        Ok(outcome) => Ok(outcome),
                        Err(Resolve::Store(error)) => Err(error),
                        Err(Resolve::Fatal(error)) => return Err(error),
                    }
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(outcome) => return Ok((outcome, attempt)),
                Err(error) if is_retryable(&error) && attempt < self.options.retry.max_attempts => {
                    let delay = self.options.retry.backoff(attempt);
                    warn!(path = %path, attempt, error = %error, delay_ms = delay.as_millis() as u64, "data file write failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(source) => return Err(WriteError::Put { path: path.to_string(), attempts: attempt, source }),
            }
        }
    }

    async fn put_create(&self, path: &Path, bytes: &Bytes) -> object_store::Result<()> {
        let store = self.lake.store();
        if bytes.len() <= self.options.multipart_threshold {
            let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
            store.put_opts(path, PutPayload::from(bytes.clone()), options).await?;
            return Ok(());
        }
        match store.head(path).await {
            Ok(_) => {
                return Err(object_store::Error::AlreadyExists {
                    path: path.to_string(),
                    source: "found by head before multipart upload".into(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        let upload = store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.options.part_size.max(5 * 1024 * 1024));
        writer.put(bytes.clone());
        // `finish` completes the upload; until then no object exists, and on failure it aborts
        // the upload so no parts linger.
        writer.finish().await?;
        Ok(())
    }

    /// An object already has this name: adopt it, replace an uncommitted orphan, or refuse.
    async fn resolve_existing(
        &self,
        job: &FlushJob,
        path: &Path,
        metadata_path: &Path,
        encoded: &EncodedFile,
    ) -> Result<CommitOutcome, Resolve> {
        let existing = self.lake.store().get(path).await?.bytes().await?;
        let same = match footer_summary(&existing) {
            Ok((rows, positions)) => rows == job.rows as i64 && positions.unwrap_or_default() == job.positions,
            Err(_) => false,
        };
        if same {
            debug!(path = %path, "identical file already present; reusing it");
            return Ok(CommitOutcome::ReusedExisting);
        }
        let listed = match self.load_metadata(metadata_path, 1).await {
            Ok(Some((metadata, _))) => metadata.contains_file(&job.key.relative_path(), &job.file_name),
            Ok(None) => false,
            Err(WriteError::Metadata { source, .. }) => return Err(Resolve::Store(source)),
            Err(error) => return Err(Resolve::Fatal(error)),
        };
        if listed {
            return Err(Resolve::Fatal(WriteError::Conflict {
                path: path.to_string(),
                reason: "the manifest lists a file of this name holding different rows".into(),
            }));
        }
        warn!(path = %path, "replacing an uncommitted file with different contents");
        self.lake.store().put(path, PutPayload::from(encoded.bytes.clone())).await?;
        Ok(CommitOutcome::ReplacedOrphan)
    }

    /// Step 4: read-modify-write of the manifest. Returns the committed positions, whether the
    /// file was already listed, and the attempts taken.
    async fn commit_metadata(
        &self,
        job: &FlushJob,
        path: &Path,
        encoded: &EncodedFile,
    ) -> Result<(Positions, bool, u32), WriteError> {
        let partition_path = job.key.relative_path();
        let columns = columns_of(&job.schema);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.load_metadata(path, attempt).await?;
            let (mut metadata, version) = match current {
                Some((metadata, version)) => (metadata, Some(version)),
                None => (FeedMetadata::new(job.feed.clone(), job.kind), None),
            };
            if metadata.contains_file(&partition_path, &job.file_name) {
                return Ok((metadata.committed_positions, true, attempt));
            }
            let now = Utc::now();
            let entry = FileEntry {
                name: job.file_name.clone(),
                records: job.rows as u64,
                bytes: encoded.bytes.len() as u64,
                min_event_time: format_ms(job.min_event_ms),
                max_event_time: format_ms(job.max_event_ms),
                positions: job.positions.clone(),
                runs: job.runs.clone(),
                written_at: format_ms(now.timestamp_millis()),
                reason: job.reason.as_str().to_string(),
                late: job.late,
            };
            metadata.record_file(&partition_path, entry, columns.clone(), now);
            if let Some(commit) = &job.commit {
                // The caller knows what is still buffered: its state is the exact committed set.
                metadata.committed_positions = commit.low.clone();
                metadata.committed_ranges = commit.ranges.clone();
                if commit.token.is_some() {
                    metadata.continuation_token = commit.token.clone();
                }
            }
            let body =
                metadata.to_json().map_err(|source| WriteError::MetadataCorrupt { path: path.to_string(), source })?;
            let conditional = self.conditional_update.load(Ordering::Relaxed);
            let mode = match version {
                None => PutMode::Create,
                Some(version) if conditional => PutMode::Update(version),
                Some(_) => PutMode::Overwrite,
            };
            let options = PutOptions { mode, ..PutOptions::default() };
            match self.lake.store().put_opts(path, PutPayload::from(body), options).await {
                Ok(_) => return Ok((metadata.committed_positions, false, attempt)),
                Err(object_store::Error::NotImplemented { .. }) if conditional => {
                    debug!(path = %path, "store has no conditional update; using atomic overwrite");
                    self.conditional_update.store(false, Ordering::Relaxed);
                    attempt -= 1;
                }
                Err(error) if is_retryable(&error) && attempt < self.options.retry.max_attempts => {
                    let delay = self.options.retry.backoff(attempt);
                    warn!(path = %path, attempt, error = %error, "manifest update failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(source) => return Err(WriteError::Metadata { path: path.to_string(), attempts: attempt, source }),
            }
        }
    }

    /// The manifest and its version, `None` if absent.
    async fn load_metadata(
        &self,
        path: &Path,
        attempt: u32,
    ) -> Result<Option<(FeedMetadata, UpdateVersion)>, WriteError> {
        let result = match self.lake.store().get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(WriteError::Metadata { path: path.to_string(), attempts: attempt, source }),
        };
        let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
        let bytes = result.bytes().await.map_err(|source| WriteError::Metadata {
            path: path.to_string(),
            attempts: attempt,
            source,
        })?;
        let metadata = FeedMetadata::from_json(&bytes)
            .map_err(|source| WriteError::MetadataCorrupt { path: path.to_string(), source })?;
        Ok(Some((metadata, version)))
    }

    fn feed_lock(&self, kind: FeedKind, feed: &str) -> Arc<Mutex<()>> {
        let mut locks = self.feed_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry((kind, feed.to_string())).or_default())
    }
}

/// Failure while resolving an existing file: a store error (maybe retryable) or a final one.
enum Resolve {
    Store(object_store::Error),
    Fatal(WriteError),
}

impl From<object_store::Error> for Resolve {
    fn from(error: object_store::Error) -> Self {
        Resolve::Store(error)
    }
}

#[cfg(test)]
mod tests;
