//! Recovery after a crash: make `_metadata.json` agree with the data files again.
//!
//! The writer puts a data file first and the manifest second (see [`super::writer`]). A crash
//! (SIGKILL, power loss) between the two leaves a complete data file the manifest does not
//! list; on a local lake it may also leave LocalFileSystem's staged `<name>#<n>` file of a put
//! that never got renamed. On S3, GCS and Azure nothing partial is ever visible.
//!
//! - [`reconcile`] removes the staged files and **adopts** every unlisted data file from its
//!   footer: the file is listed with reason `adopted`, and its exact runs join the committed
//!   set, so a restart does not write those rows a second time.
//! - [`rebuild`] writes a new manifest from the data files alone, for a manifest that is lost
//!   or corrupt; the previous one is kept as `_metadata.json.bak`.
//!
//! Both are meant to run while no writer of the feed is active (at start-up, before the feed's
//! pipeline starts): a staged file of a live writer looks exactly like a crashed one.
//! A data file whose footer cannot be read is reported and left alone, never deleted.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload, UpdateVersion};
use tracing::{error, info, warn};

use super::commit::{merge_runs, CommitState, Runs};
use super::dead_letter;
use super::layout::{FeedKind, LayoutError};
use super::manifests;
use super::metadata::{
    columns_of, format_ms, load_manifest, replace_manifest, DeadLetterFile, FeedMetadata, FileEntry, ManifestError,
    SchemaInfo, SchemaVersion,
};
use super::parquet::{read_footer_of, Footer, FooterError};
use super::store::Lake;
use super::{merge_positions, Positions};

/// `reason` of a file entry added by [`reconcile`].
pub const ADOPTED_REASON: &str = "adopted";
/// `reason` of the file entries written by [`rebuild`].
pub const REBUILT_REASON: &str = "rebuilt";
/// Name of the copy [`rebuild`] keeps of the manifest it replaces.
pub const BACKUP_FILE: &str = "_metadata.json.bak";

/// Manifest writes lost to a concurrent writer before [`reconcile`] gives up.
const MAX_ATTEMPTS: u32 = 5;

/// What [`reconcile`] did; paths are object paths (`streams/<feed>/year=…/data_….parquet`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Data files now listed in the manifest.
    pub adopted: Vec<String>,
    /// Staged temp files removed (local lakes only).
    pub removed_temp: Vec<String>,
    /// Data files whose footer could not be read; left in place and not listed.
    pub unreadable: Vec<String>,
}

impl ReconcileReport {
    /// True when the lake was changed.
    pub fn changed(&self) -> bool {
        !self.adopted.is_empty() || !self.removed_temp.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(
        "`{feed}` is a table feed: its _metadata.json names the complete versions, which its files alone \
         cannot tell; rebuild works on stream and changelog feeds"
    )]
    TableManifest { feed: String },
    #[error("listing {path} failed")]
    List {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("writing {path} failed")]
    Write {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("the manifest could not be read or replaced (a corrupt one can be rebuilt from the data files)")]
    Manifest(#[from] ManifestError),
    #[error("serializing the manifest of {path} failed")]
    Serialize {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("scanning {path} for staged files failed")]
    Scan {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} kept changing during {attempts} attempts")]
    Contended { path: String, attempts: u32 },
}

/// A data file under the feed directory.
#[derive(Debug, Clone)]
struct DataObject {
    /// Partition folder relative to the feed directory (`year=…/month=…/day=…[/hour=…]`).
    partition: String,
    name: String,
    meta: ObjectMeta,
}

/// Removes staged temp files under the feed and lists every data file the manifest does not,
/// adopting those whose footer is readable. Writes the manifest only when something was adopted.
/// A file holding rows the manifest already has is left alone (exactly-once).
pub async fn reconcile(lake: &Lake, kind: FeedKind, feed: &str) -> Result<ReconcileReport, ReconcileError> {
    reconcile_with(lake, kind, feed, false).await
}

/// [`reconcile`], for an at-least-once feed when `duplicates_allowed`: a file holding rows the
/// manifest already has is adopted too. Such a feed replays committed rows after a crash, so
/// a file cut off before its commit often repeats some; left unlisted it would stay in the
/// lake for good, visible to readers that list files, with rows the manifest does not count.
#[tracing::instrument(skip_all, fields(feed = %feed, kind = kind.as_str()))]
pub async fn reconcile_with(
    lake: &Lake,
    kind: FeedKind,
    feed: &str,
    duplicates_allowed: bool,
) -> Result<ReconcileReport, ReconcileError> {
    let dir = lake.feed_dir(kind, feed)?;
    let metadata_path = lake.metadata_path(kind, feed)?;
    let dead_letter_dir = lake.dead_letter_dir(feed)?;
    // A writer marks the manifest while it runs and clears the mark once everything it put is
    // committed: without the mark there is nothing to look for, and start-up does not list the
    // feed's history. A format-1 manifest had no mark.
    match load_manifest(lake.store().as_ref(), &metadata_path).await? {
        Some((metadata, _)) if metadata.format_version >= 2 && metadata.open_writer.is_none() => {
            return Ok(ReconcileReport::default())
        }
        _ => {}
    }
    let mut removed_temp = remove_staged(lake, &dir).await?;
    removed_temp.extend(remove_staged(lake, &dead_letter_dir).await?);
    let mut report = ReconcileReport { removed_temp, ..Default::default() };
    let objects = list_data_files(lake, &dir).await?;
    let dead_letters = list_dead_letter_files(lake, &dead_letter_dir).await?;
    let mut footers: HashMap<Path, Result<Footer, String>> = HashMap::new();
    let mut dead_letter_runs: HashMap<Path, Result<(u64, Runs), String>> = HashMap::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let (mut metadata, version) = match load_manifest(lake.store().as_ref(), &metadata_path).await? {
            Some((metadata, version)) => (metadata, Some(version)),
            None => (FeedMetadata::new(feed, kind), None),
        };
        let mut adopted = Vec::new();
        let mut unreadable = Vec::new();
        // Looked up once per data file: a scan of the manifest for each made start-up
        // quadratic in the feed's history (44 s at 100,000 files).
        let mut listed: HashMap<String, HashSet<String>> = HashMap::new();
        for partition in &manifests::load_partitions(lake.store().as_ref(), &metadata_path, &metadata).await? {
            listed.entry(partition.path.clone()).or_default().extend(partition.files.iter().map(|f| f.name.clone()));
        }
        for object in &objects {
            if listed.get(object.partition.as_str()).is_some_and(|names| names.contains(object.name.as_str())) {
                continue;
            }
            if !footers.contains_key(&object.meta.location) {
                let footer = match read_footer(lake, kind, feed, &object.meta).await {
                    Ok(footer) => Ok(footer),
                    // The store failed, not the file: leaving the file unlisted would let a
                    // replay write its rows again, so the start-up fails and is retried.
                    Err(FooterError::Store(source)) => {
                        return Err(ReconcileError::Read { path: object.meta.location.to_string(), source })
                    }
                    Err(error) => Err(error.to_string()),
                };
                footers.insert(object.meta.location.clone(), footer);
            }
            match &footers[&object.meta.location] {
                // rows the manifest already has from another file: written by a process that
                // no longer held the feed's lease. Adopting it would list them twice.
                Ok(footer) if !duplicates_allowed && overlaps_committed(&metadata.commit_state(), &footer.runs) => {
                    warn!(path = %object.meta.location, "file holds rows already committed in other files; not adopted");
                }
                Ok(footer) => {
                    adopt(&mut metadata, object, footer);
                    adopted.push(object.meta.location.to_string());
                }
                Err(reason) => unreadable.push((object.meta.location.to_string(), reason.clone())),
            }
        }
        for (relative, meta) in &dead_letters {
            if metadata.dead_letter.contains(relative) {
                continue;
            }
            if !dead_letter_runs.contains_key(&meta.location) {
                let read = lake.store().get(&meta.location).await;
                let contents = match read {
                    Ok(result) => result.bytes().await,
                    Err(error) => Err(error),
                }
                .map_err(|source| ReconcileError::Read { path: meta.location.to_string(), source })?;
                let runs = dead_letter::runs_of(&contents).map_err(|error| error.to_string());
                dead_letter_runs.insert(meta.location.clone(), runs);
            }
            match &dead_letter_runs[&meta.location] {
                Ok((records, runs)) => {
                    metadata.dead_letter.record(DeadLetterFile {
                        path: relative.clone(),
                        records: *records,
                        bytes: meta.size,
                        runs: runs.clone(),
                        written_at: format_ms(meta.last_modified.timestamp_millis()),
                    });
                    let mut state = metadata.commit_state();
                    state.adopt(runs);
                    metadata.set_commit_state(state);
                    adopted.push(meta.location.to_string());
                }
                Err(reason) => unreadable.push((meta.location.to_string(), reason.clone())),
            }
        }
        for (path, reason) in &unreadable {
            error!(path = %path, error = %reason, "file is not in the manifest and cannot be read; left alone");
        }
        report.unreadable = unreadable.into_iter().map(|(path, _)| path).collect();
        if adopted.is_empty() {
            report.removed_temp.extend(remove_unreferenced_segments(lake, &metadata_path, &metadata, version).await?);
            return Ok(report);
        }
        if replace_manifest(lake.store().as_ref(), &metadata_path, &metadata, version).await? {
            for path in &adopted {
                info!(path = %path, "adopted a data file the manifest did not list");
            }
            report.adopted = adopted;
            if let Some((written, version)) = load_manifest(lake.store().as_ref(), &metadata_path).await? {
                let segments = remove_unreferenced_segments(lake, &metadata_path, &written, Some(version)).await?;
                report.removed_temp.extend(segments);
            }
            return Ok(report);
        }
        warn!(path = %metadata_path, attempt, "manifest changed while reconciling; retrying");
    }
    Err(ReconcileError::Contended { path: metadata_path.to_string(), attempts: MAX_ATTEMPTS })
}

/// After a crash: removes the manifest segments that neither `root` (when it was found,
/// `version` is `Some`) nor the rebuilt manifest's backup names.
async fn remove_unreferenced_segments(
    lake: &Lake,
    metadata_path: &Path,
    root: &FeedMetadata,
    version: Option<UpdateVersion>,
) -> Result<Vec<String>, ReconcileError> {
    if version.is_none() {
        return Ok(Vec::new()); // no root: nothing tells which segments are garbage
    }
    let mut keep = root.clone();
    let backup_path = manifests::sibling(metadata_path, BACKUP_FILE);
    match load_manifest(lake.store().as_ref(), &backup_path).await {
        Ok(Some((backup, _))) => {
            keep.manifests.extend(backup.manifests);
            keep.retired_manifests.extend(backup.retired_manifests);
        }
        Ok(None) => {}
        Err(error) => {
            // which segments the backup needs is unknown: keep them all
            warn!(path = %backup_path, %error, "the manifest backup cannot be read; keeping every manifest segment");
            return Ok(Vec::new());
        }
    }
    let removed = manifests::remove_unreferenced(lake.store().as_ref(), metadata_path, &keep).await?;
    for path in &removed {
        info!(path = %path, "removed a manifest segment no manifest names");
    }
    Ok(removed)
}

/// Writes a new manifest built from the data files' footers alone, keeping the previous one
/// (if any) as `_metadata.json.bak`. Files whose footer is unreadable are logged and left out.
#[tracing::instrument(skip_all, fields(feed = %feed, kind = kind.as_str()))]
pub async fn rebuild(lake: &Lake, kind: FeedKind, feed: &str) -> Result<FeedMetadata, ReconcileError> {
    if kind == FeedKind::Table {
        return Err(ReconcileError::TableManifest { feed: feed.to_string() });
    }
    let dir = lake.feed_dir(kind, feed)?;
    let metadata_path = lake.metadata_path(kind, feed)?;
    let objects = list_data_files(lake, &dir).await?;

    let mut metadata = FeedMetadata::new(feed, kind);
    let mut state = CommitState::default();
    let mut legacy_positions = Positions::new();
    let mut history: Vec<SchemaVersion> = Vec::new();
    let mut current: Option<SchemaInfo> = None;
    for object in &objects {
        let footer = match read_footer(lake, kind, feed, &object.meta).await {
            Ok(footer) => footer,
            Err(FooterError::Store(source)) => {
                return Err(ReconcileError::Read { path: object.meta.location.to_string(), source })
            }
            Err(reason) => {
                error!(path = %object.meta.location, error = %reason, "data file footer unreadable; left out of the rebuilt manifest");
                continue;
            }
        };
        let written_at = format_ms(object.meta.last_modified.timestamp_millis());
        let columns = columns_of(&footer.schema);
        metadata.record_file(
            &object.partition,
            entry(object, &footer, REBUILT_REASON),
            columns.clone(),
            object.meta.last_modified,
        );
        if footer.runs.is_empty() {
            merge_positions(&mut legacy_positions, &footer.positions);
        } else {
            merge_runs(&mut state.ranges, &footer.runs);
        }
        let version = match history.iter().find(|known| known.columns == columns) {
            Some(known) => known.version,
            None => {
                let version = history.len() as u32 + 1;
                history.push(SchemaVersion { version, columns: columns.clone(), first_seen: written_at });
                version
            }
        };
        current = Some(SchemaInfo { version, columns });
    }
    state.absorb();
    // Files from before runs existed only tell their highest offset, which was the watermark.
    for (&partition, &offset) in &legacy_positions {
        state.raise_low(partition, offset);
    }
    metadata.set_commit_state(state);
    metadata.schema = current;
    metadata.schema_history = history;

    let backup_path = lake.feed_path(kind, feed, BACKUP_FILE)?;
    match lake.store().get(&metadata_path).await {
        Ok(previous) => {
            let bytes = previous
                .bytes()
                .await
                .map_err(|source| ReconcileError::Read { path: metadata_path.to_string(), source })?;
            lake.store()
                .put(&backup_path, PutPayload::from(bytes))
                .await
                .map_err(|source| ReconcileError::Write { path: backup_path.to_string(), source })?;
            info!(path = %backup_path, "kept the previous manifest");
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(source) => return Err(ReconcileError::Read { path: metadata_path.to_string(), source }),
    }
    let partitions = metadata.partitions.clone();
    let mut root = metadata;
    manifests::write_segments(lake.store().as_ref(), &metadata_path, &mut root, Utc::now(), &mut Default::default())
        .await?;
    let body =
        root.to_json().map_err(|source| ReconcileError::Serialize { path: metadata_path.to_string(), source })?;
    lake.store()
        .put(&metadata_path, PutPayload::from(body))
        .await
        .map_err(|source| ReconcileError::Write { path: metadata_path.to_string(), source })?;
    info!(path = %metadata_path, files = root.total_files, records = root.total_records, "rebuilt the manifest from the data files");
    // what was written, with its whole file list (all in the one new segment)
    root.partitions = partitions;
    root.expanded = true;
    Ok(root)
}

/// The manifest entry of a data file, from its footer and object metadata.
fn entry(object: &DataObject, footer: &Footer, reason: &str) -> FileEntry {
    FileEntry {
        name: object.name.clone(),
        records: footer.records,
        bytes: object.meta.size,
        min_event_time: format_ms(footer.min_event_ms),
        max_event_time: format_ms(footer.max_event_ms),
        positions: footer.positions.clone(),
        runs: footer.runs.clone(),
        written_at: format_ms(object.meta.last_modified.timestamp_millis()),
        reason: reason.to_string(),
        late: false,
    }
}

/// Lists an orphan: totals and partition through `record_file`; its exact runs join the
/// committed set (never its highest offset: rows below that may still be missing). A file
/// from before runs existed keeps the old rule: its highest offset was the watermark.
/// Whether any row of `runs` is already committed.
fn overlaps_committed(state: &CommitState, runs: &Runs) -> bool {
    runs.iter().any(|(&partition, ranges)| {
        ranges.iter().any(|&(first, last)| {
            state.covers(partition, first)
                || state.covers(partition, last)
                || state
                    .ranges
                    .get(&partition)
                    .is_some_and(|committed| committed.iter().any(|&(a, b)| a <= last && first <= b))
        })
    })
}

fn adopt(metadata: &mut FeedMetadata, object: &DataObject, footer: &Footer) {
    let columns = columns_of(&footer.schema);
    metadata.record_adopted_file(&object.partition, entry(object, footer, ADOPTED_REASON), columns, Utc::now());
    let mut state = metadata.commit_state();
    if footer.runs.is_empty() {
        for (&partition, &offset) in &footer.positions {
            state.raise_low(partition, offset);
        }
    } else {
        state.adopt(&footer.runs);
    }
    metadata.set_commit_state(state);
}

/// Every object under `dir`.
async fn list_all(lake: &Lake, dir: &Path) -> Result<Vec<ObjectMeta>, ReconcileError> {
    lake.store()
        .list(Some(dir))
        .try_collect()
        .await
        .map_err(|source| ReconcileError::List { path: dir.to_string(), source })
}

/// Dead-letter files (`rejected_*.jsonl`) under `dir`, as (path relative to `dir`, metadata).
async fn list_dead_letter_files(lake: &Lake, dir: &Path) -> Result<Vec<(String, ObjectMeta)>, ReconcileError> {
    Ok(list_all(lake, dir)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let parts: Vec<String> = meta.location.prefix_match(dir)?.map(|part| part.as_ref().to_string()).collect();
            let name = parts.last()?;
            (name.starts_with("rejected_") && name.ends_with(".jsonl")).then(|| (parts.join("/"), meta))
        })
        .collect())
}

/// Data files (`data_*.parquet` inside a partition folder) under `dir`, oldest first.
async fn list_data_files(lake: &Lake, dir: &Path) -> Result<Vec<DataObject>, ReconcileError> {
    let mut objects: Vec<DataObject> = list_all(lake, dir)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let parts: Vec<String> = meta.location.prefix_match(dir)?.map(|part| part.as_ref().to_string()).collect();
            let (name, folders) = parts.split_last()?;
            let data = name.starts_with("data_") && name.ends_with(".parquet") && !folders.is_empty();
            data.then(|| DataObject { partition: folders.join("/"), name: name.clone(), meta })
        })
        .collect();
    objects.sort_by(|a, b| (a.meta.last_modified, &a.meta.location).cmp(&(b.meta.last_modified, &b.meta.location)));
    Ok(objects)
}

/// The footer of one of this feed's data files.
async fn read_footer(lake: &Lake, kind: FeedKind, feed: &str, meta: &ObjectMeta) -> Result<Footer, FooterError> {
    let footer = read_footer_of(lake.store().as_ref(), meta).await?;
    footer.belongs_to(feed, kind)?;
    Ok(footer)
}

/// True for LocalFileSystem's staging names: `<name>#<digits>` (object_store's `local.rs`
/// hides exactly these from `list`).
pub fn is_staged_name(name: &str) -> bool {
    name.split_once('#').is_some_and(|(base, suffix)| {
        !base.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Deletes staged files below the feed directory of a local lake; returns their object paths.
async fn remove_staged(lake: &Lake, dir: &Path) -> Result<Vec<String>, ReconcileError> {
    let Some(local) = lake.local_dir() else {
        return Ok(Vec::new());
    };
    let mut disk_dir = local.to_path_buf();
    disk_dir.extend(dir.parts().map(|part| part.as_ref().to_string()));
    let prefix = dir.to_string();
    let scan_dir = disk_dir.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        scan_staged(&scan_dir, &scan_dir, &mut found).map(|()| found)
    })
    .await
    .map_err(|error| ReconcileError::Scan {
        path: disk_dir.display().to_string(),
        source: std::io::Error::other(error),
    })?
    .map_err(|source| ReconcileError::Scan { path: disk_dir.display().to_string(), source })?;
    let mut removed = Vec::new();
    for (file, relative) in found {
        let path = if prefix.is_empty() { relative } else { format!("{prefix}/{relative}") };
        match tokio::fs::remove_file(&file).await {
            Ok(()) => {
                info!(path = %path, "removed a staged temp file left by an interrupted put");
                removed.push(path);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ReconcileError::Scan { path, source }),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Collects staged files below `dir` as (disk path, `/`-separated path relative to `base`).
fn scan_staged(
    base: &std::path::Path,
    dir: &std::path::Path,
    found: &mut Vec<(std::path::PathBuf, String)>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            scan_staged(base, &path, found)?;
        } else if entry.file_name().to_str().is_some_and(is_staged_name) {
            let relative = path.strip_prefix(base).unwrap_or(&path);
            let relative: Vec<String> =
                relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
            found.push((path, relative.join("/")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::layout::METADATA_FILE;
    use crate::lake::Runs;

    #[test]
    fn staged_names_are_name_hash_digits_only() {
        assert!(is_staged_name("data_1.parquet#3"));
        assert!(is_staged_name("_metadata.json#12"));
        assert!(!is_staged_name("data_1.parquet"));
        assert!(!is_staged_name("data#x1"));
        assert!(!is_staged_name("data#"));
        assert!(!is_staged_name("#3"));
        assert!(!is_staged_name(METADATA_FILE));
    }

    #[test]
    fn absorbing_starts_a_watermark_only_at_offset_zero() {
        let mut state = CommitState::default();
        merge_runs(&mut state.ranges, &Runs::from([(0, vec![(0, 9), (11, 20)]), (1, vec![(5, 9)])]));
        state.low.insert(2, 4);
        merge_runs(&mut state.ranges, &Runs::from([(2, vec![(5, 7), (9, 9)])]));
        state.absorb();
        assert_eq!(state.low, Positions::from([(0, 9), (2, 7)]));
        assert_eq!(state.ranges, Runs::from([(0, vec![(11, 20)]), (1, vec![(5, 9)]), (2, vec![(9, 9)])]));
    }
}
