//! Table snapshots as numbered versions, visible only when complete.
//!
//! ```text
//! <lake>/tables/<feed>/version=v1/snapshot_20261201_220000.parquet
//! <lake>/tables/<feed>/version=v2/snapshot_20261201_230000.parquet   (one or more files per version)
//! <lake>/tables/<feed>/_metadata.json                                  latest_version: 2, versions: [1, 2]
//! ```
//!
//! The protocol, one writer per feed at a time, held by a lease (`_snapshot.lease`, taken
//! create-only, renewed while files are written, released at the end; a crashed writer's
//! lease lapses once another writer has seen it unchanged for [`LEASE`]). A second writer (`export --table` next to `run`) is refused
//! with [`SnapshotError::Lease`] instead of touching the first one's files.
//! 1. [`SnapshotWriter::begin`] takes the lease, removes every `version=vN/` folder the manifest does not list
//!    (files of an interrupted snapshot, or of a retired version whose deletion was cut short),
//!    then numbers the new version one above the highest found in storage or in the manifest.
//! 2. [`SnapshotWriter::write`] puts each file create-only inside the new folder. Nothing points
//!    at the folder yet, so a reader following the manifest never sees it.
//! 3. [`SnapshotWriter::commit`] replaces the manifest (conditionally): the new version becomes
//!    `latest_version`, and versions beyond `retention_versions` leave the list. This is the
//!    commit point; a crash before it leaves the previous version as the latest.
//! 4. Only then are the retired versions' files deleted. A crash here leaves folders the
//!    manifest no longer lists, which the next `begin` removes.

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::layout::{validate_feed_name, FeedKind, LayoutError};
use super::lease::{Lease, LeaseError};
use super::metadata::{load_manifest, replace_manifest, FeedMetadata, ManifestError, TableVersion, VersionFile};
use super::parquet::{encode, EncodeError, FileInfo, ParquetOptions};
use super::store::Lake;

/// How many times a contended manifest update is retried.
const MAX_ATTEMPTS: usize = 8;

/// The lease file next to the manifest (hidden from lake readers by its `_`).
pub const LEASE_FILE: &str = "_snapshot.lease";

/// How long a lease holds without renewal; a crashed writer's lease lapses after it.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(120);

/// Folder name of version `n`.
pub fn version_dir(version: u32) -> String {
    format!("version=v{version}")
}

/// The version number of a `version=vN` folder name.
pub fn parse_version_dir(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("version=v")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: the store failed")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("encoding {path} failed")]
    Encode {
        path: String,
        #[source]
        source: EncodeError,
    },
    #[error("{path} already exists: another writer is snapshotting this table")]
    Exists { path: String },
    #[error("{path} kept changing under {attempts} concurrent updates")]
    Contended { path: String, attempts: usize },
    #[error("{path} lists version {version}, which is not newer than its latest version {latest}")]
    Stale { path: String, version: u32, latest: u32 },
    /// Another writer holds the table's lease (try again later), or it could not be read.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Writes and retires the versions of one table feed.
#[derive(Debug, Clone)]
pub struct SnapshotWriter {
    lake: Lake,
    feed: String,
    parquet: ParquetOptions,
    /// Complete versions kept (at least 1: the newest is never deleted).
    retention_versions: usize,
    /// How long the lease holds without renewal.
    lease: std::time::Duration,
    /// This writer's lease, one owner for all its snapshots: what it has seen of another
    /// owner's lease carries over from one attempt to the next.
    holder: Option<Lease>,
}

/// A version being written: its number, the time it started and the files put so far.
#[derive(Debug, Clone)]
pub struct PendingVersion {
    pub version: u32,
    pub started: DateTime<Utc>,
    pub files: Vec<VersionFile>,
    /// The folders `begin` removed.
    pub removed: Vec<String>,
    /// This writer's lease.
    lease: Lease,
    renewed: std::time::Instant,
}

/// What a commit did.
#[derive(Debug, Clone)]
pub struct CommittedVersion {
    pub version: u32,
    pub records: u64,
    pub bytes: u64,
    pub files: usize,
    /// Versions retired by retention (their files deleted).
    pub retired: Vec<u32>,
    /// Complete versions the manifest keeps now.
    pub kept: usize,
}

impl SnapshotWriter {
    pub fn new(
        lake: Lake,
        feed: &str,
        parquet: ParquetOptions,
        retention_versions: usize,
    ) -> Result<Self, LayoutError> {
        validate_feed_name(feed)?;
        Ok(SnapshotWriter {
            lake,
            feed: feed.to_string(),
            parquet,
            retention_versions: retention_versions.max(1),
            lease: LEASE,
            holder: None,
        })
    }

    /// A lease other than [`LEASE`] (tests use short ones).
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = lease;
        self.holder = None;
        self
    }

    fn dir(&self) -> Result<Path, LayoutError> {
        self.lake.feed_dir(FeedKind::Table, &self.feed)
    }

    fn store_error(path: &Path) -> impl FnOnce(object_store::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::Store { path: path.to_string(), source }
    }

    /// The version folders in storage that hold at least one object (a local lake keeps
    /// empty directories after their files are deleted; they do not count). Lists the feed's
    /// folder one level deep, then each version folder for its first object: the changelog
    /// beside the versions is never walked.
    pub async fn stored_versions(&self) -> Result<Vec<u32>, SnapshotError> {
        let dir = self.dir()?;
        let listed = self.lake.store().list_with_delimiter(Some(&dir)).await.map_err(Self::store_error(&dir))?;
        let mut versions = Vec::new();
        for prefix in listed.common_prefixes {
            let Some(version) = prefix.filename().and_then(parse_version_dir) else { continue };
            let first = self.lake.store().list(Some(&prefix)).try_next().await.map_err(Self::store_error(&prefix))?;
            if first.is_some() {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// The feed's manifest, if any.
    pub async fn manifest(&self) -> Result<Option<FeedMetadata>, SnapshotError> {
        let path = self.lake.metadata_path(FeedKind::Table, &self.feed)?;
        Ok(load_manifest(self.lake.store().as_ref(), &path).await?.map(|(metadata, _)| metadata))
    }

    /// Removes every version folder the manifest does not list; returns their names. Without
    /// a manifest nothing is removed: the folders may be all that is left of a lost one.
    pub async fn remove_unlisted(&self) -> Result<Vec<String>, SnapshotError> {
        Ok(self.clear_unlisted().await?.0)
    }

    /// [`Self::remove_unlisted`], reading the manifest and the folders once, plus the highest
    /// version left in either.
    async fn clear_unlisted(&self) -> Result<(Vec<String>, Option<u32>), SnapshotError> {
        let listed: Option<Vec<u32>> =
            self.manifest().await?.map(|manifest| manifest.versions.iter().map(|v| v.version).collect());
        let mut removed = Vec::new();
        let mut highest = listed.as_ref().and_then(|listed| listed.iter().copied().max());
        for version in self.stored_versions().await? {
            match &listed {
                Some(listed) if !listed.contains(&version) => {
                    self.delete_version(version).await?;
                    removed.push(version_dir(version));
                }
                _ => highest = highest.max(Some(version)),
            }
        }
        Ok((removed, highest))
    }

    async fn delete_version(&self, version: u32) -> Result<(), SnapshotError> {
        let dir = self.lake.feed_path(FeedKind::Table, &self.feed, &version_dir(version))?;
        let store = self.lake.store();
        let objects: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(Self::store_error(&dir))?;
        for object in objects {
            match store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(SnapshotError::Store { path: object.location.to_string(), source }),
            }
        }
        // a local lake keeps the empty directory; readers globbing `version=v*` would see it
        if let Some(local) = self.lake.local_dir() {
            let folder = local.join(FeedKind::Table.dir()).join(&self.feed).join(version_dir(version));
            let _ = std::fs::remove_dir(folder);
        }
        Ok(())
    }

    fn lease_path(&self) -> Result<Path, LayoutError> {
        self.lake.feed_path(FeedKind::Table, &self.feed, LEASE_FILE)
    }

    /// This writer's lease on the feed's snapshots (not necessarily taken).
    fn new_lease(&self) -> Result<Lease, SnapshotError> {
        if let Some(holder) = &self.holder {
            return Ok(holder.clone());
        }
        Ok(Lease::new(self.lake.store().clone(), self.lease_path()?, self.lease))
    }

    /// Fixes this writer's lease owner now (a writer used for several snapshots, as `run`'s).
    pub fn holding(mut self) -> Self {
        self.holder = self.new_lease().ok();
        self
    }

    /// Extends the lease while a long snapshot writes its files.
    async fn renew(&self, pending: &mut PendingVersion) -> Result<(), SnapshotError> {
        if pending.renewed.elapsed() < self.lease / 4 {
            return Ok(());
        }
        pending.lease.acquire().await?;
        pending.renewed = std::time::Instant::now();
        Ok(())
    }

    /// Removes what an interrupted snapshot left, under the lease; a lease error when another
    /// writer holds it (then its folder is not ours to remove).
    pub async fn cleanup(&self) -> Result<Vec<String>, SnapshotError> {
        let lease = self.new_lease()?;
        lease.acquire().await?;
        let removed = self.remove_unlisted().await;
        lease.release().await;
        removed
    }

    /// Starts a new version: takes the lease, removes leftovers, then numbers the version
    /// above everything found.
    pub async fn begin(&self) -> Result<PendingVersion, SnapshotError> {
        let lease = self.new_lease()?;
        lease.acquire().await?;
        let numbered = self.clear_unlisted().await.map(|(removed, highest)| (highest.unwrap_or(0) + 1, removed));
        match numbered {
            Ok((version, removed)) => Ok(PendingVersion {
                version,
                started: Utc::now(),
                files: Vec::new(),
                removed,
                lease,
                renewed: std::time::Instant::now(),
            }),
            Err(error) => {
                lease.release().await;
                Err(error)
            }
        }
    }

    /// Encodes `batches` into one file of the pending version and puts it, create-only.
    pub async fn write(&self, pending: &mut PendingVersion, batches: &[RecordBatch]) -> Result<(), SnapshotError> {
        let stamp = pending.started.format("%Y%m%d_%H%M%S");
        let name = match pending.files.len() {
            0 => format!("snapshot_{stamp}.parquet"),
            n => format!("snapshot_{stamp}_{n:04}.parquet"),
        };
        let relative = format!("{}/{name}", version_dir(pending.version));
        let path = self.lake.feed_path(FeedKind::Table, &self.feed, &relative)?;
        let now = pending.started.timestamp_millis();
        let info = FileInfo {
            feed: self.feed.clone(),
            kind: FeedKind::Table,
            min_event_ms: now,
            max_event_ms: now,
            ..FileInfo::default()
        };
        let parquet = self.parquet.clone();
        let owned = batches.to_vec();
        let encoded = tokio::task::spawn_blocking(move || encode(&owned, &info, &parquet))
            .await
            .map_err(|error| SnapshotError::Store {
                path: path.to_string(),
                source: object_store::Error::Generic { store: "encode", source: error.to_string().into() },
            })?
            .map_err(|source| SnapshotError::Encode { path: path.to_string(), source })?;
        let bytes = encoded.bytes.len() as u64;
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.lake.store().put_opts(&path, PutPayload::from(encoded.bytes), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(SnapshotError::Exists { path: path.to_string() })
            }
            Err(source) => return Err(SnapshotError::Store { path: path.to_string(), source }),
        }
        pending.files.push(VersionFile { name, records: encoded.rows as u64, bytes });
        self.renew(pending).await
    }

    /// Makes the pending version the latest (the commit point), then retires the versions
    /// beyond retention. `source_query` and `method` are recorded with the version.
    pub async fn commit(
        &self,
        pending: PendingVersion,
        source_query: &str,
        method: &str,
        schema: Option<&arrow::datatypes::Schema>,
    ) -> Result<CommittedVersion, SnapshotError> {
        let path = self.lake.metadata_path(FeedKind::Table, &self.feed)?;
        let records: u64 = pending.files.iter().map(|f| f.records).sum();
        let bytes: u64 = pending.files.iter().map(|f| f.bytes).sum();
        let entry = TableVersion {
            version: pending.version,
            path: version_dir(pending.version),
            records,
            bytes,
            created_at: pending.started.to_rfc3339_opts(SecondsFormat::Millis, true),
            source_query: source_query.to_string(),
            method: method.to_string(),
            files: pending.files.clone(),
        };
        let result = self.commit_manifest(&pending, entry, &path, schema).await;
        match &result {
            // certainly not committed: the files go now
            Err(SnapshotError::Stale { .. } | SnapshotError::Contended { .. }) => self.abandon(&pending).await,
            // a failed manifest put may still have landed: the files stay, and the next
            // snapshot removes them only if the manifest does not list them
            _ => pending.lease.release().await,
        }
        result
    }

    async fn commit_manifest(
        &self,
        pending: &PendingVersion,
        entry: TableVersion,
        path: &Path,
        schema: Option<&arrow::datatypes::Schema>,
    ) -> Result<CommittedVersion, SnapshotError> {
        let (records, bytes) = (entry.records, entry.bytes);
        for _ in 0..MAX_ATTEMPTS {
            let (mut metadata, version) = match load_manifest(self.lake.store().as_ref(), path).await? {
                Some((metadata, version)) => (metadata, Some(version)),
                None => (FeedMetadata::new(&self.feed, FeedKind::Table), None),
            };
            if let Some(latest) = metadata.latest_version.filter(|latest| *latest >= pending.version) {
                return Err(SnapshotError::Stale { path: path.to_string(), version: pending.version, latest });
            }
            let retired = metadata.add_table_version(entry.clone(), self.retention_versions, schema);
            if replace_manifest(self.lake.store().as_ref(), path, &metadata, version).await? {
                let mut retired_numbers = Vec::new();
                for old in retired {
                    // committed already: a failure here leaves a folder the next begin removes
                    if let Err(error) = self.delete_version(old.version).await {
                        tracing::warn!(feed = %self.feed, version = old.version, error = %error, "could not delete a retired version; it is removed at the next snapshot");
                    }
                    retired_numbers.push(old.version);
                }
                return Ok(CommittedVersion {
                    version: pending.version,
                    records,
                    bytes,
                    files: pending.files.len(),
                    retired: retired_numbers,
                    kept: metadata.versions.len(),
                });
            }
        }
        Err(SnapshotError::Contended { path: path.to_string(), attempts: MAX_ATTEMPTS })
    }

    /// Removes the files this writer put for a version that will not be committed, then gives
    /// the lease up (best effort: what is left is removed by the next snapshot).
    pub async fn abandon(&self, pending: &PendingVersion) {
        for file in &pending.files {
            let relative = format!("{}/{}", version_dir(pending.version), file.name);
            let Ok(path) = self.lake.feed_path(FeedKind::Table, &self.feed, &relative) else { continue };
            if let Err(error) = self.lake.store().delete(&path).await {
                tracing::warn!(feed = %self.feed, path = %path, error = %error, "could not remove a file of an abandoned snapshot; it is removed at the next start");
            }
        }
        pending.lease.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_folders_parse_only_canonical_numbers() {
        assert_eq!(parse_version_dir("version=v1"), Some(1));
        assert_eq!(parse_version_dir(&version_dir(42)), Some(42));
        for bad in ["version=v", "version=v01", "version=1", "version=v1a", "version=v-1", "v1", "version=v99999999999"]
        {
            assert_eq!(parse_version_dir(bad), None, "{bad}");
        }
    }
}
