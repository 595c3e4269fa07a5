//! The per-feed manifest `_metadata.json`: what was committed, where, and up to which ksqlDB
//! positions. It is rewritten after every data file (read-modify-write, atomically replaced),
//! which makes it the commit point. Every field is documented in `docs/METADATA.md`.
//!
//! Since format 2 it is a small root: totals, schema, commit state and the list of the
//! manifest segments (`_manifests/*.json`, see [`super::manifests`]) that hold the file list,
//! so what a commit rewrites does not grow with the feed's history. In memory, `partitions`
//! holds only what is not in a segment yet: files recorded since the root was read, or the
//! inline list of a format-1 manifest, which the next write moves into a segment.
//!
//! The original fields (`source`, `last_export`, `total_records`, `total_size_mb`,
//! `partitions[].{path, records, size_mb}`) keep their names and meaning so existing readers
//! continue to work. Fields this version does not know are kept on rewrite (`extra`).

use arrow::datatypes::Schema;
use chrono::{DateTime, SecondsFormat, Utc};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::commit::CommitState;
use super::commit::Runs;
use super::layout::FeedKind;
pub use super::manifests::{ManifestRef, RetiredManifest};
use super::Positions;
use crate::schema::types::KSQL_TYPE_METADATA_KEY;

/// Version of this manifest format: 2 keeps the file list in manifest segments.
pub const FORMAT_VERSION: u32 = 2;

/// How many of the most recently committed files the root names (`recent_files`), so a retry
/// whose response was lost finds its file without reading the segments.
const RECENT_FILES: usize = 8;

const BYTES_PER_MB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedMetadata {
    #[serde(default = "default_format_version")]
    pub format_version: u32,
    /// The feed name (the ksqlDB source it exports).
    pub source: String,
    #[serde(default)]
    pub kind: FeedKind,
    /// When the last file was committed (RFC 3339, UTC).
    #[serde(default)]
    pub last_export: Option<String>,
    pub total_records: u64,
    /// `total_bytes` in MiB, rounded to 3 decimals (kept for older readers).
    pub total_size_mb: f64,
    #[serde(default)]
    pub total_bytes: u64,
    /// Data files committed.
    #[serde(default)]
    pub total_files: u64,
    /// Files not in a segment: a format-1 manifest's whole list, or files recorded since the
    /// root was read (the next write moves them into a segment). A format-2 root on storage
    /// has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionEntry>,
    /// The manifest segments holding the committed file list, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<ManifestRef>,
    /// Segments a compaction replaced, kept a while for readers of an older root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_manifests: Vec<RetiredManifest>,
    /// `<partition>/<name>` of the most recently committed files, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_files: Vec<String>,
    /// Set while a writer runs the feed, cleared when it stops cleanly: a start-up that finds
    /// it looks for what a crash may have left (files the manifest does not list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_writer: Option<String>,
    /// The schema of the most recent file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaInfo>,
    #[serde(default)]
    pub schema_history: Vec<SchemaVersion>,
    /// Highest committed ROWOFFSET per ROWPARTITION: where a restart resumes.
    #[serde(default)]
    pub committed_positions: Positions,
    /// Committed runs above `committed_positions` (see `lake::commit`).
    #[serde(default, skip_serializing_if = "Runs::is_empty")]
    pub committed_ranges: Runs,
    /// Delivery `continuation-token`: where the scalable push query resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
    /// Rows that could not be decoded, kept under `<lake>/dead_letter/<feed>/`.
    #[serde(default, skip_serializing_if = "DeadLetterInfo::is_empty")]
    pub dead_letter: DeadLetterInfo,
    /// Table feeds: the newest complete snapshot, the one to read (`version=v<N>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<u32>,
    /// Table feeds: the complete snapshot versions kept, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<TableVersion>,
    /// Fields written by other tools or newer versions, preserved on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// `partitions` holds the whole file list read from the segments (see
    /// [`super::manifests::load_full`]): such a value is for reading and is never written back.
    #[serde(skip)]
    pub expanded: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// Relative to the feed directory: `year=2024/month=01/day=02[/hour=03]`.
    pub path: String,
    pub records: u64,
    pub size_mb: f64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_event_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time: Option<String>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PartitionEntry {
    /// An entry of the same partition holding only `files`, its figures summed from them.
    pub fn of_files(like: &PartitionEntry, files: Vec<FileEntry>) -> PartitionEntry {
        let bytes = files.iter().map(|file| file.bytes).sum();
        PartitionEntry {
            path: like.path.clone(),
            records: files.iter().map(|file| file.records).sum(),
            size_mb: size_mb(bytes),
            bytes,
            min_event_time: files.iter().map(|file| file.min_event_time.clone()).min(),
            max_event_time: files.iter().map(|file| file.max_event_time.clone()).max(),
            files,
            extra: like.extra.clone(),
        }
    }

    /// Adds the files and figures of `other`, an entry of the same partition from a newer
    /// segment.
    pub fn absorb(&mut self, other: PartitionEntry) {
        if self.bytes == 0 && self.size_mb > 0.0 {
            self.bytes = (self.size_mb * BYTES_PER_MB) as u64;
        }
        self.records += other.records;
        // a format-1 entry may only have MiB
        self.bytes += if other.bytes == 0 { (other.size_mb * BYTES_PER_MB) as u64 } else { other.bytes };
        self.size_mb = size_mb(self.bytes);
        self.min_event_time = match (self.min_event_time.take(), other.min_event_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_event_time = match (self.max_event_time.take(), other.max_event_time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.files.extend(other.files);
        for (key, value) in other.extra {
            self.extra.entry(key).or_insert(value);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the partition folder.
    pub name: String,
    pub records: u64,
    pub bytes: u64,
    pub min_event_time: String,
    pub max_event_time: String,
    #[serde(default, skip_serializing_if = "Positions::is_empty")]
    pub positions: Positions,
    /// Exact runs of ksqlDB offsets in the file, per partition.
    #[serde(default, skip_serializing_if = "Runs::is_empty")]
    pub runs: Runs,
    pub written_at: String,
    /// The flush reason (`rows`, `bytes`, `age`, `partition_close`, `memory`, `shutdown`, `schema_change`).
    pub reason: String,
    /// Rows that arrived after the partition closed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// One complete snapshot of a table feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableVersion {
    pub version: u32,
    /// Relative to the feed directory: `version=vN`.
    pub path: String,
    pub records: u64,
    pub bytes: u64,
    /// When the snapshot started (RFC 3339, UTC).
    pub created_at: String,
    /// The statement the rows came from.
    pub source_query: String,
    /// `pull` (a table scan) or `changelog` (the push query materialized by key).
    pub method: String,
    pub files: Vec<VersionFile>,
}

/// One file of a snapshot version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFile {
    pub name: String,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// ksqlDB type string, when the column carries one.
    pub ksql_type: Option<String>,
    /// The Arrow type as Arrow prints it.
    pub arrow_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaInfo {
    pub version: u32,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: u32,
    pub columns: Vec<ColumnInfo>,
    /// When a file with this schema was first committed.
    pub first_seen: String,
}

/// Manifests without `format_version` are format 1.
fn default_format_version() -> u32 {
    1
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds (`2024-01-02T03:04:05.678Z`), which
/// also sorts correctly as text.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The manifest columns of an Arrow schema (ksqlDB type from the `ksql.type` field metadata).
pub fn columns_of(schema: &Schema) -> Vec<ColumnInfo> {
    schema
        .fields()
        .iter()
        .map(|field| ColumnInfo {
            name: field.name().clone(),
            ksql_type: field.metadata().get(KSQL_TYPE_METADATA_KEY).cloned(),
            arrow_type: field.data_type().to_string(),
        })
        .collect()
}

fn size_mb(bytes: u64) -> f64 {
    (bytes as f64 / BYTES_PER_MB * 1000.0).round() / 1000.0
}

impl FeedMetadata {
    pub fn new(feed: impl Into<String>, kind: FeedKind) -> Self {
        FeedMetadata {
            format_version: FORMAT_VERSION,
            source: feed.into(),
            kind,
            last_export: None,
            total_records: 0,
            total_size_mb: 0.0,
            total_bytes: 0,
            total_files: 0,
            partitions: Vec::new(),
            manifests: Vec::new(),
            retired_manifests: Vec::new(),
            recent_files: Vec::new(),
            open_writer: None,
            schema: None,
            schema_history: Vec::new(),
            committed_positions: Positions::new(),
            committed_ranges: Runs::new(),
            continuation_token: None,
            dead_letter: DeadLetterInfo::default(),
            latest_version: None,
            versions: Vec::new(),
            extra: Map::new(),
            expanded: false,
        }
    }

    /// Records a complete snapshot as the latest version and keeps the newest `keep` (at
    /// least 1); returns the versions that left the list, whose files the caller deletes.
    /// Totals describe what a reader of the table sees: `total_records` is the latest
    /// version's rows, `total_bytes` the bytes of every version kept.
    pub fn add_table_version(
        &mut self,
        version: TableVersion,
        keep: usize,
        schema: Option<&Schema>,
    ) -> Vec<TableVersion> {
        if let Some(schema) = schema {
            self.record_schema(columns_of(schema), &version.created_at);
        }
        self.last_export = Some(version.created_at.clone());
        self.latest_version = Some(version.version);
        self.total_records = version.records;
        self.versions.push(version);
        self.versions.sort_by_key(|entry| entry.version);
        let excess = self.versions.len().saturating_sub(keep.max(1));
        let retired: Vec<TableVersion> = self.versions.drain(..excess).collect();
        self.total_bytes = self.versions.iter().map(|entry| entry.bytes).sum();
        self.total_size_mb = size_mb(self.total_bytes);
        retired
    }

    /// The latest complete version's entry.
    pub fn latest(&self) -> Option<&TableVersion> {
        let latest = self.latest_version?;
        self.versions.iter().find(|entry| entry.version == latest)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut metadata: FeedMetadata = serde_json::from_slice(bytes)?;
        if metadata.manifests.is_empty() && metadata.total_files == 0 {
            // format 1 had no file count: its inline list is the whole history
            metadata.total_files = metadata.partitions.iter().map(|partition| partition.files.len() as u64).sum();
        }
        // sorted by path, as written; a hand-edited list may not be
        metadata.partitions.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(metadata)
    }

    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    pub fn partition(&self, path: &str) -> Option<&PartitionEntry> {
        let at = self.partitions.partition_point(|partition| partition.path.as_str() < path);
        self.partitions.get(at).filter(|partition| partition.path == path)
    }

    /// The commit state this manifest records.
    pub fn commit_state(&self) -> CommitState {
        CommitState {
            low: self.committed_positions.clone(),
            ranges: self.committed_ranges.clone(),
            token: self.continuation_token.clone(),
        }
    }

    /// Records `state` as the committed set, replacing the previous one (a token is kept when
    /// `state` has none).
    pub fn set_commit_state(&mut self, state: CommitState) {
        self.committed_positions = state.low;
        self.committed_ranges = state.ranges;
        if state.token.is_some() {
            self.continuation_token = state.token;
        }
    }

    /// Whether this root lists or keeps the segment at `segment` (the root being at `path`).
    pub fn names_segment(&self, path: &ObjectPath, segment: &ObjectPath) -> bool {
        self.manifests
            .iter()
            .map(|entry| entry.path.as_str())
            .chain(self.retired_manifests.iter().map(|old| old.path.as_str()))
            .any(|relative| super::manifests::segment_path(path, relative) == *segment)
    }

    /// Whether the root alone shows `name` in partition `path` as committed: among the files
    /// not yet in a segment or the most recent ones. Files further back are only in the
    /// segments ([`super::manifests::lists_file`]).
    pub fn contains_file(&self, path: &str, name: &str) -> bool {
        self.partition(path).is_some_and(|partition| partition.files.iter().any(|file| file.name == name))
            || self.recent_files.iter().any(|recent| {
                recent.len() == path.len() + 1 + name.len()
                    && recent.starts_with(path)
                    && recent.as_bytes()[path.len()] == b'/'
                    && recent.ends_with(name)
            })
    }

    /// Records a committed file: totals, partition entry and schema version. The commit state
    /// is not derived from files: the caller sets it ([`FeedMetadata::set_commit_state`]).
    /// Recording a file that is already listed changes nothing (replays count once).
    pub fn record_file(&mut self, partition_path: &str, file: FileEntry, columns: Vec<ColumnInfo>, now: DateTime<Utc>) {
        if self.contains_file(partition_path, &file.name) {
            return;
        }
        let now_text = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        self.record_schema(columns, &now_text);
        self.add_file(partition_path, file, now_text);
    }

    /// Records a data file a crash left unlisted (see `reconcile`). It is older than anything
    /// written since, so a schema the feed already had does not become the current one again.
    pub fn record_adopted_file(
        &mut self,
        partition_path: &str,
        file: FileEntry,
        columns: Vec<ColumnInfo>,
        now: DateTime<Utc>,
    ) {
        if self.contains_file(partition_path, &file.name) {
            return;
        }
        let now_text = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        if !self.schema_history.iter().any(|known| known.columns == columns) {
            self.record_schema(columns, &now_text);
        }
        self.add_file(partition_path, file, now_text);
    }

    /// Totals and the partition entry.
    fn add_file(&mut self, partition_path: &str, file: FileEntry, now_text: String) {
        // Manifests from before `total_bytes` existed only have MiB; start from those.
        if self.total_bytes == 0 && self.total_size_mb > 0.0 {
            self.total_bytes = (self.total_size_mb * BYTES_PER_MB) as u64;
        }
        self.total_records += file.records;
        self.total_bytes += file.bytes;
        self.total_size_mb = size_mb(self.total_bytes);
        self.total_files += 1;
        self.last_export = Some(now_text);
        self.recent_files.push(format!("{partition_path}/{}", file.name));
        let excess = self.recent_files.len().saturating_sub(RECENT_FILES);
        self.recent_files.drain(..excess);

        let at = self.partitions.partition_point(|partition| partition.path.as_str() < partition_path);
        let index = match self.partitions.get(at).filter(|partition| partition.path == partition_path) {
            Some(_) => at,
            None => {
                self.partitions.insert(
                    at,
                    PartitionEntry {
                        path: partition_path.to_string(),
                        records: 0,
                        size_mb: 0.0,
                        bytes: 0,
                        min_event_time: None,
                        max_event_time: None,
                        files: Vec::new(),
                        extra: Map::new(),
                    },
                );
                at
            }
        };
        let partition = &mut self.partitions[index];
        if partition.bytes == 0 && partition.size_mb > 0.0 {
            partition.bytes = (partition.size_mb * BYTES_PER_MB) as u64;
        }
        partition.records += file.records;
        partition.bytes += file.bytes;
        partition.size_mb = size_mb(partition.bytes);
        if partition.min_event_time.as_ref().is_none_or(|min| file.min_event_time < *min) {
            partition.min_event_time = Some(file.min_event_time.clone());
        }
        if partition.max_event_time.as_ref().is_none_or(|max| file.max_event_time > *max) {
            partition.max_event_time = Some(file.max_event_time.clone());
        }
        partition.files.push(file);
    }

    fn record_schema(&mut self, columns: Vec<ColumnInfo>, now: &str) {
        if self.schema.as_ref().is_some_and(|schema| schema.columns == columns) {
            return;
        }
        let version = self.schema_history.iter().map(|entry| entry.version).max().unwrap_or(0) + 1;
        self.schema_history.push(SchemaVersion { version, columns: columns.clone(), first_seen: now.to_string() });
        self.schema = Some(SchemaInfo { version, columns });
    }
}

/// The feed's dead letter: its files and totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    pub records: u64,
    pub bytes: u64,
    pub files: Vec<DeadLetterFile>,
}

/// One dead-letter file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterFile {
    /// Below `dead_letter/<feed>/`: `year=…/month=…/day=…/rejected_….jsonl`.
    pub path: String,
    pub records: u64,
    pub bytes: u64,
    /// The exact rows it holds that have a position.
    #[serde(default, skip_serializing_if = "Runs::is_empty")]
    pub runs: Runs,
    pub written_at: String,
}

impl DeadLetterInfo {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.files.iter().any(|file| file.path == path)
    }

    /// Lists a committed dead-letter file; listing it again changes nothing.
    pub fn record(&mut self, file: DeadLetterFile) {
        if self.contains(&file.path) {
            return;
        }
        self.records += file.records;
        self.bytes += file.bytes;
        self.files.push(file);
    }
}

/// Why the manifest could not be read or replaced.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: the store failed")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path} is not a valid manifest")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{root} lists the manifest segment {segment}, which is missing")]
    MissingSegment { root: String, segment: String },
    #[error("{path}: a manifest read with its whole file list cannot be written back")]
    Expanded { path: String },
    #[error(
        "{path} has format {found}, written by a newer ksql-lake; this version reads up to format {FORMAT_VERSION}"
    )]
    NewerFormat { path: String, found: u32 },
}

/// The manifest at `path` and the version it was read at, `None` when there is none.
pub async fn load_manifest(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<Option<(FeedMetadata, UpdateVersion)>, ManifestError> {
    let failed = |source| ManifestError::Store { path: path.to_string(), source };
    let result = match store.get(path).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(failed(source)),
    };
    let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
    let bytes = result.bytes().await.map_err(failed)?;
    let metadata =
        FeedMetadata::from_json(&bytes).map_err(|source| ManifestError::Corrupt { path: path.to_string(), source })?;
    if metadata.format_version > FORMAT_VERSION {
        return Err(ManifestError::NewerFormat { path: path.to_string(), found: metadata.format_version });
    }
    Ok(Some((metadata, version)))
}

/// Replaces the manifest that was read at `version` (`None`: there was none) with `metadata`,
/// atomically: a conditional put where the store has one (S3, GCS, Azure, in-memory), else an
/// atomic overwrite (LocalFileSystem stages the file and renames it). `Ok(false)` when someone
/// else changed it meanwhile: read it again and retry.
///
/// Files in `metadata.partitions` (recorded since it was read) go into a new manifest segment,
/// written before the root (see [`super::manifests`]).
pub async fn replace_manifest(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    metadata: &FeedMetadata,
    version: Option<UpdateVersion>,
) -> Result<bool, ManifestError> {
    replace_manifest_settling(store, path, metadata, version, &mut Vec::new()).await
}

/// [`replace_manifest`] for a writer that keeps `unsettled`: the segments of its earlier root
/// puts that failed without telling whether they landed. A failed put adds its segments; a
/// successful one deletes those its root does not name.
pub async fn replace_manifest_settling(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    metadata: &FeedMetadata,
    version: Option<UpdateVersion>,
    unsettled: &mut Vec<ObjectPath>,
) -> Result<bool, ManifestError> {
    if metadata.expanded {
        return Err(ManifestError::Expanded { path: path.to_string() });
    }
    let mut root = metadata.clone();
    root.format_version = FORMAT_VERSION;
    let mut writes = super::manifests::SegmentWrites::default();
    if let Err(error) = super::manifests::write_segments(store, path, &mut root, Utc::now(), &mut writes).await {
        unsettled.extend(writes.written); // a failed segment put may have landed
        return Err(error);
    }
    let body = root.to_json().map_err(|source| ManifestError::Corrupt { path: path.to_string(), source })?;
    let put = |mode| store.put_opts(path, PutPayload::from(body.clone()), PutOptions { mode, ..PutOptions::default() });
    let mode = match version {
        None => PutMode::Create,
        Some(version) => PutMode::Update(version),
    };
    let result = match put(mode).await {
        Err(object_store::Error::NotImplemented { .. }) => put(PutMode::Overwrite).await,
        other => other,
    };
    let landed = match result {
        Ok(_) => true,
        // Another writer got there first, or the store retried a put of ours that had landed
        // (S3 may answer 500 to a write it applied): the root tells which, since only ours
        // names these new segments.
        Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
            match load_manifest(store, path).await {
                Ok(Some((current, _))) if writes.written.iter().any(|segment| current.names_segment(path, segment)) => {
                    true
                }
                Ok(_) => {
                    unsettled.extend(super::manifests::delete_quietly(store, &writes.written).await);
                    return Ok(false);
                }
                Err(_) => {
                    unsettled.extend(writes.written);
                    return Ok(false);
                }
            }
        }
        // The root may or may not have been written, so its segments (and those it would have
        // let go) wait until a later root is written that does not name them.
        Err(source) => {
            unsettled.extend(writes.written);
            unsettled.extend(writes.expired);
            return Err(ManifestError::Store { path: path.to_string(), source });
        }
    };
    debug_assert!(landed);
    let mut unused = std::mem::take(unsettled);
    unused.retain(|segment| !root.names_segment(path, segment));
    unused.extend(writes.expired);
    *unsettled = super::manifests::delete_quietly(store, &unused).await;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field};
    use chrono::TimeZone;

    use super::*;

    fn file(name: &str, records: u64, bytes: u64, min: i64, max: i64, positions: Positions) -> FileEntry {
        FileEntry {
            name: name.into(),
            records,
            bytes,
            min_event_time: format_ms(min),
            max_event_time: format_ms(max),
            positions,
            runs: Runs::new(),
            written_at: format_ms(max),
            reason: "rows".into(),
            late: false,
        }
    }

    fn columns(extra: bool) -> Vec<ColumnInfo> {
        let mut fields = vec![Field::new("ID", DataType::Int64, true)];
        if extra {
            fields.push(Field::new("NEW", DataType::Utf8, true));
        }
        columns_of(&Schema::new(fields))
    }

    #[test]
    fn recording_files_updates_totals_partitions_and_schema_versions() {
        let now = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let mut meta = FeedMetadata::new("orders", FeedKind::Stream);
        meta.record_file(
            "year=2024/month=01/day=02",
            file("b", 10, 1_048_576, 5_000, 9_000, Positions::from([(0, 9)])),
            columns(false),
            now,
        );
        meta.record_file(
            "year=2024/month=01/day=01",
            file("a", 5, 524_288, 1_000, 2_000, Positions::from([(1, 4)])),
            columns(false),
            now,
        );
        meta.record_file(
            "year=2024/month=01/day=02",
            file("c", 1, 0, 3_000, 4_000, Positions::from([(0, 12)])),
            columns(true),
            now,
        );
        // Replaying a committed file counts once.
        meta.record_file(
            "year=2024/month=01/day=02",
            file("c", 1, 0, 3_000, 4_000, Positions::new()),
            columns(true),
            now,
        );

        assert_eq!(meta.total_records, 16);
        assert_eq!(meta.total_bytes, 1_572_864);
        assert_eq!(meta.total_size_mb, 1.5);
        assert!(meta.committed_positions.is_empty(), "the commit state is the caller's, never derived from files");
        let paths: Vec<&str> = meta.partitions.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["year=2024/month=01/day=01", "year=2024/month=01/day=02"]);
        let day2 = &meta.partitions[1];
        assert_eq!((day2.records, day2.files.len()), (11, 2));
        assert_eq!(day2.min_event_time.as_deref(), Some("1970-01-01T00:00:03.000Z"));
        assert_eq!(day2.max_event_time.as_deref(), Some("1970-01-01T00:00:09.000Z"));
        assert_eq!(meta.schema.as_ref().unwrap().version, 2);
        assert_eq!(meta.schema_history.len(), 2);
        assert_eq!(meta.last_export.as_deref(), Some("2024-01-02T03:04:05.000Z"));
        assert_eq!(meta.schema_history[1].columns[1].arrow_type, "Utf8");
    }

    #[test]
    fn json_round_trips_and_keeps_unknown_fields() {
        let original = r#"{
            "source": "legacy", "last_export": "2023-01-01T00:00:00Z", "total_records": 3,
            "total_size_mb": 0.1, "owner": "team-a",
            "partitions": [{"path": "year=2023/month=01/day=01", "records": 3, "size_mb": 0.1, "note": "x"}]
        }"#;
        let mut meta = FeedMetadata::from_json(original.as_bytes()).unwrap();
        assert_eq!(meta.format_version, 1);
        assert_eq!(meta.kind, FeedKind::Stream);
        meta.record_file(
            "year=2023/month=01/day=01",
            file("n", 2, 10, 0, 1, Positions::new()),
            columns(false),
            Utc::now(),
        );
        let text = String::from_utf8(meta.to_json().unwrap()).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["owner"], "team-a");
        assert_eq!(value["partitions"][0]["note"], "x");
        assert_eq!(value["partitions"][0]["records"], 5);
        assert_eq!(value["total_records"], 5);
        // The legacy 0.1 MiB is carried into the exact byte count.
        assert_eq!(value["partitions"][0]["bytes"], 104_867);
        assert_eq!(FeedMetadata::from_json(text.as_bytes()).unwrap(), meta);
    }
}
