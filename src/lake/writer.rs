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
//! The writer makes one attempt and says whether a failure is worth retrying
//! ([`WriteError::is_retryable`]); the caller owns retries (the pipeline's commit stage, with
//! its backoff) and encodes a file once however often its commit is retried ([`LakeWriter::encode`],
//! then [`LakeWriter::commit`]). A failed data put leaves no object and the manifest untouched.
//! If the data file is written but the manifest update fails, the file stays as an orphan that
//! is not part of the committed lake; committing the same job again adopts it.

use bytes::Bytes;
use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart};
use tracing::{debug, info, warn};

use super::budget::MemoryBudget;
use super::buffer::{FlushJob, FlushReason};
use super::commit::highest_offsets;
use super::dead_letter::DeadLetterJob;
use super::layout::{FeedKind, LayoutError};
use super::manifests::lists_file;
use super::metadata::{
    columns_of, format_ms, load_manifest, replace_manifest_settling, DeadLetterFile, FeedMetadata, FileEntry,
    ManifestError,
};
use super::parquet::{encode, read_footer_of, EncodeError, EncodedFile, FileInfo, FooterError, ParquetOptions};
use super::partition::PartitionKey;
use super::store::Lake;
use super::Positions;
use crate::defaults;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct WriterOptions {
    pub parquet: ParquetOptions,
    /// Files larger than this go up as a multipart upload.
    pub multipart_threshold: usize,
    /// Part size of multipart uploads (S3 minimum: 5 MiB).
    pub part_size: usize,
}

/// Files encoded at the same time in the whole process, one per core: encoding is CPU-bound,
/// so more at once (8 feeds flushing together) would only hold more files in memory.
fn encode_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
    })
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            parquet: ParquetOptions::default(),
            multipart_threshold: defaults::MULTIPART_THRESHOLD,
            part_size: defaults::MULTIPART_PART_SIZE,
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
    /// The feed's committed positions (low watermark) after this commit.
    pub committed_positions: Positions,
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
    #[error("writing {path} failed")]
    Put {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("updating {path} failed")]
    Metadata {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path} kept changing under {attempts} concurrent updates")]
    Contended { path: String, attempts: u32 },
    #[error("{path} is not a valid manifest")]
    MetadataCorrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} conflicts with a committed file: {reason}")]
    Conflict { path: String, reason: String },
    #[error(transparent)]
    Manifest(ManifestError),
}

impl WriteError {
    /// Whether writing the same job again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WriteError::Put { source, .. } | WriteError::Metadata { source, .. } => is_retryable(source),
            WriteError::EncodeTask { .. } | WriteError::Contended { .. } => true,
            _ => false,
        }
    }
}

/// Network errors, 5xx, time-outs, lost conditional races.
fn is_retryable(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. }
            | object_store::Error::JoinError { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
    )
}

/// Manifest updates lost to a concurrent writer (a conditional put that found a newer
/// version) before one commit attempt gives up with [`WriteError::Contended`].
const MANIFEST_RACES: u32 = 5;

/// Writes flush jobs into a lake. Each feed's commit stage writes its files one at a time, so
/// nothing here serializes; a manifest changed by someone else is caught by the conditional
/// put and re-read.
#[derive(Debug)]
pub struct LakeWriter {
    lake: Lake,
    options: WriterOptions,
    /// This writer's `open_writer` mark while it runs a feed ([`LakeWriter::open`]): every
    /// manifest it writes carries it.
    mark: std::sync::Mutex<Option<String>>,
    /// Per manifest: segments of root puts that failed without telling whether they landed.
    unsettled: tokio::sync::Mutex<std::collections::HashMap<Path, Vec<Path>>>,
    /// The memory budget an encode's working memory is reserved in, when there is one.
    budget: Option<Arc<MemoryBudget>>,
}

/// What an encode holds besides the rows, which are reserved already (measured with a heap
/// profiler on the benchmark's 10-column rows): the Parquet writer keeps a column chunk's pages
/// until the chunk closes, and the file being written, about as much as the rows' Arrow size;
/// each column's dictionary and page buffers, up to about this much (a 256 KiB dictionary
/// limit and 1 MiB pages, with room for the encoder's tables); and
/// the zstd context. The last two grow with the data: a small file needs little.
const ENCODE_COLUMN_BYTES: u64 = 2 << 20;
const ENCODE_CONTEXT_BYTES: u64 = 4 << 20;

impl LakeWriter {
    pub fn new(lake: Lake, options: WriterOptions) -> Self {
        LakeWriter { lake, options, mark: std::sync::Mutex::new(None), unsettled: Default::default(), budget: None }
    }

    /// Reserves each encode's working memory in `budget` while it runs, so the buffers leave
    /// room for it.
    pub fn with_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Replaces the manifest at `path`, settling this writer's earlier uncertain puts there.
    async fn replace(
        &self,
        path: &Path,
        metadata: &FeedMetadata,
        version: Option<UpdateVersion>,
    ) -> Result<bool, ManifestError> {
        let mut unsettled = self.unsettled.lock().await;
        let list = unsettled.entry(path.clone()).or_default();
        replace_manifest_settling(self.lake.store().as_ref(), path, metadata, version, list).await
    }

    fn mark(&self) -> Option<String> {
        self.mark.lock().expect("the mark is never poisoned").clone()
    }

    /// Marks the feed's manifest as written by a running writer, before this writer puts any
    /// file: a start-up that finds the mark (this writer crashed) looks for the files it may
    /// have left unlisted. Without a manifest yet, the first commit carries the mark.
    pub async fn open(&self, kind: FeedKind, feed: &str) -> Result<(), WriteError> {
        let mark = format!("{:016x}", rand::random::<u64>());
        *self.mark.lock().expect("the mark is never poisoned") = Some(mark.clone());
        self.set_open_writer(kind, feed, Some(mark), None).await
    }

    /// Clears the mark: call it only once everything this writer put is committed, so that the
    /// next start-up has nothing to look for.
    pub async fn close(&self, kind: FeedKind, feed: &str) -> Result<(), WriteError> {
        let Some(mark) = self.mark.lock().expect("the mark is never poisoned").take() else { return Ok(()) };
        self.set_open_writer(kind, feed, None, Some(mark)).await
    }

    /// Sets the mark to `mark`; when clearing, only this writer's own (`own`): another mark
    /// belongs to a writer that took the feed over, and must stay.
    async fn set_open_writer(
        &self,
        kind: FeedKind,
        feed: &str,
        mark: Option<String>,
        own: Option<String>,
    ) -> Result<(), WriteError> {
        let path = self.lake.metadata_path(kind, feed)?;
        for _ in 0..MANIFEST_RACES {
            let Some((mut metadata, version)) = self.load_metadata(&path).await? else { return Ok(()) };
            if metadata.open_writer == mark {
                return Ok(());
            }
            if mark.is_none() && metadata.open_writer != own {
                warn!(feed, "another writer's mark is on the manifest; leaving it");
                return Ok(());
            }
            metadata.open_writer = mark.clone();
            if self.replace(&path, &metadata, Some(version)).await? {
                return Ok(());
            }
        }
        Err(WriteError::Contended { path: path.to_string(), attempts: MANIFEST_RACES })
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The feed's manifest, or `None` before its first commit. Read it at start-up to resume
    /// from `committed_positions`.
    pub async fn read_metadata(&self, kind: FeedKind, feed: &str) -> Result<Option<FeedMetadata>, WriteError> {
        let path = self.lake.metadata_path(kind, feed)?;
        Ok(self.load_metadata(&path).await?.map(|(metadata, _)| metadata))
    }

    /// The feed's manifest with its whole file list in `partitions` (read from its segments),
    /// for reading only.
    pub async fn read_full_metadata(&self, kind: FeedKind, feed: &str) -> Result<Option<FeedMetadata>, WriteError> {
        let path = self.lake.metadata_path(kind, feed)?;
        Ok(super::manifests::load_full(self.lake.store().as_ref(), &path).await?.map(|(metadata, _)| metadata))
    }

    /// Encodes and commits `job` once. On error the job is untouched and can be written again.
    pub async fn write(&self, job: &FlushJob) -> Result<CommittedFile, WriteError> {
        let encoded = self.encode(job).await?;
        self.commit(job, &encoded).await
    }

    /// Encodes `job` as Parquet on the blocking pool.
    pub async fn encode(&self, job: &FlushJob) -> Result<EncodedFile, WriteError> {
        let path = job.relative_path();
        let batches = job.batches.clone();
        let info = FileInfo {
            feed: job.feed.clone(),
            kind: job.kind,
            positions: highest_offsets(&job.runs),
            runs: job.runs.clone(),
            min_event_ms: job.min_event_ms,
            max_event_ms: job.max_event_ms,
        };
        let options = self.options.parquet.clone();
        let _permit = encode_permits().acquire().await.expect("the encode semaphore is never closed");
        let columns = job.schema.fields().len() as u64;
        // buffers and context grow with the data only up to their limits
        let fixed = (columns * ENCODE_COLUMN_BYTES + ENCODE_CONTEXT_BYTES).min(2 * job.in_memory_bytes);
        let working = job.in_memory_bytes + fixed;
        let _working = self.budget.as_ref().map(|budget| budget.reserve_working(working));
        tokio::task::spawn_blocking(move || encode(&batches, &info, &options))
            .await
            .map_err(|error| WriteError::EncodeTask { path: path.clone(), reason: error.to_string() })?
            .map_err(|source| WriteError::Encode { path, source })
    }

    /// One attempt to commit an encoded job: the data file, then the manifest. Safe to repeat
    /// with the same job and bytes after any failure.
    #[tracing::instrument(skip_all, fields(feed = %job.feed, partition = %job.key, file = %job.file_name))]
    pub async fn commit(&self, job: &FlushJob, encoded: &EncodedFile) -> Result<CommittedFile, WriteError> {
        let data_path = self.lake.feed_path(job.kind, &job.feed, &job.relative_path())?;
        let metadata_path = self.lake.metadata_path(job.kind, &job.feed)?;
        let data_outcome = self.put_data(job, &data_path, &metadata_path, encoded).await?;
        let (committed_positions, listed_before) =
            self.commit_metadata(job, &metadata_path, encoded, data_outcome).await?;
        let outcome = if listed_before { CommitOutcome::AlreadyCommitted } else { data_outcome };
        info!(
            rows = job.rows,
            bytes = encoded.bytes.len(),
            reason = job.reason.as_str(),
            outcome = outcome.as_str(),
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
            committed_positions,
        })
    }

    /// One attempt to commit a dead-letter file (its JSON lines in `contents`): the file
    /// create-only, then the manifest, like a data file. Returns whether it was listed before.
    #[tracing::instrument(skip_all, fields(feed = %job.feed, file = %job.relative_path))]
    pub async fn commit_dead_letter(&self, job: &DeadLetterJob, contents: &Bytes) -> Result<bool, WriteError> {
        let path = self.lake.dead_letter_path(&job.feed, &job.relative_path)?;
        let metadata_path = self.lake.metadata_path(job.kind, &job.feed)?;
        let put = |source| WriteError::Put { path: path.to_string(), source };
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.lake.store().put_opts(&path, PutPayload::from(contents.clone()), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // An earlier attempt of this job (its response lost), or a file a crash left
                // unlisted: if the manifest does not list it, it holds nothing committed.
                let listed = self
                    .load_metadata(&metadata_path)
                    .await?
                    .is_some_and(|(metadata, _)| metadata.dead_letter.contains(&job.relative_path));
                if !listed {
                    self.lake.store().put(&path, PutPayload::from(contents.clone())).await.map_err(put)?;
                }
            }
            Err(error) => return Err(put(error)),
        }
        let mut races = 0;
        loop {
            let (mut metadata, version) = match self.load_metadata(&metadata_path).await? {
                Some((metadata, version)) => (metadata, Some(version)),
                None => (FeedMetadata::new(job.feed.clone(), job.kind), None),
            };
            if metadata.dead_letter.contains(&job.relative_path) {
                return Ok(true);
            }
            metadata.dead_letter.record(DeadLetterFile {
                path: job.relative_path.clone(),
                records: job.records.len() as u64,
                bytes: contents.len() as u64,
                runs: job.runs.clone(),
                written_at: format_ms(Utc::now().timestamp_millis()),
            });
            metadata.set_commit_state(job.commit.clone());
            // a writer that took the feed over has its own mark there: either makes the next
            // start-up look for leftovers
            if metadata.open_writer.is_none() {
                metadata.open_writer = self.mark();
            }
            if self.replace(&metadata_path, &metadata, version).await? {
                info!(rows = job.records.len(), bytes = contents.len(), "committed dead-letter file");
                return Ok(false);
            }
            races += 1;
            if races >= MANIFEST_RACES {
                return Err(WriteError::Contended { path: metadata_path.to_string(), attempts: MANIFEST_RACES });
            }
        }
    }

    /// Steps 2 and 3: the data file, create-only.
    async fn put_data(
        &self,
        job: &FlushJob,
        path: &Path,
        metadata_path: &Path,
        encoded: &EncodedFile,
    ) -> Result<CommitOutcome, WriteError> {
        let put = |source| WriteError::Put { path: path.to_string(), source };
        match self.put_create(path, &encoded.bytes).await {
            Ok(()) => Ok(CommitOutcome::Written),
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.resolve_existing(job, path, metadata_path, encoded).await {
                    Ok(outcome) => Ok(outcome),
                    Err(Resolve::Store(error)) => Err(put(error)),
                    Err(Resolve::Fatal(error)) => Err(error),
                }
            }
            Err(error) => Err(put(error)),
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
        let meta = self.lake.store().head(path).await?;
        let same = match read_footer_of(self.lake.store().as_ref(), &meta).await {
            Ok(footer) => footer.records == job.rows as u64 && footer.runs == job.runs,
            Err(FooterError::Store(error)) => return Err(Resolve::Store(error)),
            Err(_) => false,
        };
        if same {
            debug!(path = %path, "identical file already present; reusing it");
            return Ok(CommitOutcome::ReusedExisting);
        }
        let store = self.lake.store().as_ref();
        let listed = match load_manifest(store, metadata_path).await {
            Ok(Some((metadata, _))) => {
                lists_file(store, metadata_path, &metadata, &job.key.relative_path(), &job.file_name).await
            }
            Ok(None) => Ok(false),
            Err(error) => Err(error),
        };
        let listed = match listed {
            Ok(listed) => listed,
            Err(ManifestError::Store { source, .. }) => return Err(Resolve::Store(source)),
            Err(error) => return Err(Resolve::Fatal(error.into())),
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

    /// Step 4: read-modify-write of the manifest. Returns the committed positions and whether
    /// the file was already listed.
    async fn commit_metadata(
        &self,
        job: &FlushJob,
        path: &Path,
        encoded: &EncodedFile,
        data_outcome: CommitOutcome,
    ) -> Result<(Positions, bool), WriteError> {
        let partition_path = job.key.relative_path();
        let columns = columns_of(&job.schema);
        let mut races = 0;
        loop {
            let current = self.load_metadata(path).await?;
            let (mut metadata, version) = match current {
                Some((metadata, version)) => (metadata, Some(version)),
                None => (FeedMetadata::new(job.feed.clone(), job.kind), None),
            };
            // A file that was there before this attempt may be listed further back than the
            // root tells (a replay): only then are the segments read.
            let listed = match data_outcome {
                CommitOutcome::Written => metadata.contains_file(&partition_path, &job.file_name),
                _ => lists_file(self.lake.store().as_ref(), path, &metadata, &partition_path, &job.file_name).await?,
            };
            if listed {
                return Ok((metadata.committed_positions, true));
            }
            let now = Utc::now();
            let entry = FileEntry {
                name: job.file_name.clone(),
                records: job.rows as u64,
                bytes: encoded.bytes.len() as u64,
                min_event_time: format_ms(job.min_event_ms),
                max_event_time: format_ms(job.max_event_ms),
                positions: highest_offsets(&job.runs),
                runs: job.runs.clone(),
                written_at: format_ms(now.timestamp_millis()),
                reason: job.reason.as_str().to_string(),
                late: job.late,
            };
            metadata.record_file(&partition_path, entry, columns.clone(), now);
            // The ledger's state for this file: the exact committed set, recorded as it is.
            metadata.set_commit_state(job.commit.clone());
            // a writer that took the feed over has its own mark there: either makes the next
            // start-up look for leftovers
            if metadata.open_writer.is_none() {
                metadata.open_writer = self.mark();
            }
            if self.replace(path, &metadata, version).await? {
                return Ok((metadata.committed_positions, false));
            }
            races += 1;
            if races >= MANIFEST_RACES {
                return Err(WriteError::Contended { path: path.to_string(), attempts: MANIFEST_RACES });
            }
            warn!(path = %path, races, "the manifest changed meanwhile; reading it again");
        }
    }

    /// The manifest and its version, `None` if absent.
    async fn load_metadata(&self, path: &Path) -> Result<Option<(FeedMetadata, UpdateVersion)>, WriteError> {
        Ok(load_manifest(self.lake.store().as_ref(), path).await?)
    }
}

impl From<ManifestError> for WriteError {
    fn from(error: ManifestError) -> Self {
        match error {
            ManifestError::Store { path, source } => WriteError::Metadata { path, source },
            ManifestError::Corrupt { path, source } => WriteError::MetadataCorrupt { path, source },
            other => WriteError::Manifest(other),
        }
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
