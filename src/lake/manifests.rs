//! Manifest segments: where a format-2 `_metadata.json` keeps the feed's file list, so that a
//! commit rewrites a small root and one small segment however long the feed's history is.
//!
//! ```text
//! <feed>/_metadata.json                 the root, the commit point: totals, schema, commit state,
//!                                       "manifests": [{path, files, records, bytes, …}, …]
//! <feed>/_manifests/m_<ms>_<random>.json   {"format_version": 2, "source", "partitions": [...]}
//! ```
//!
//! A segment is immutable: written create-only before the root that names it, never changed.
//! Its `partitions` have the shape the root's `partitions` had in format 1; a partition may
//! appear in several segments, and its files are the union, in segment order.
//!
//! Segments are kept in size tiers, like a binary counter in base [`FANOUT`]: a commit's new
//! files form a segment, and whenever the newest [`FANOUT`] segments are of the same tier they
//! are merged into one of the next tier. Each file is so rewritten about log₈(files) times in
//! all. A segment of [`SEGMENT_CAP`] files or more is never merged again, which bounds the largest
//! rewrite (one merge of the last tier: [`SEGMENT_CAP`] files with one file per commit, fewer
//! than 8 × [`SEGMENT_CAP`] in any case), and many files at once are cut into segments of
//! [`SEGMENT_CAP`]. A root lists at most `7 × 4` tiered segments plus the full ones.
//!
//! Segments a merge replaced stay listed under `retired_manifests` for [`RETIRED_GRACE`], so a
//! reader holding an older root can still read them, and are deleted by the first commit after
//! that. A segment whose root was not written is deleted by its writer once that is certain
//! (see [`super::metadata::replace_manifest_settling`]); one a crash leaves, by the start-up
//! after the crash.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::metadata::{format_ms, load_manifest, FeedMetadata, ManifestError, PartitionEntry, FORMAT_VERSION};

/// The folder of a feed's segments, next to its root manifest.
pub const SEGMENT_DIR: &str = "_manifests";
/// Segments of one tier merged into one of the next.
const FANOUT: u64 = 8;
/// A segment with this many files is never merged again.
const SEGMENT_CAP: u64 = FANOUT * FANOUT * FANOUT * FANOUT;
/// How long a segment a merge replaced is kept for readers of an older root.
pub const RETIRED_GRACE: Duration = Duration::from_secs(300);
/// Segments read at once.
const READ_CONCURRENCY: usize = 8;

/// One segment as the root lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRef {
    /// Relative to the feed directory: `_manifests/m_….json`.
    pub path: String,
    pub files: u64,
    pub records: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_event_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time: Option<String>,
}

/// A segment a merge replaced, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredManifest {
    pub path: String,
    pub retired_at: String,
}

/// A segment's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Segment {
    format_version: u32,
    source: String,
    partitions: Vec<PartitionEntry>,
}

/// The objects one root write depends on or frees.
#[derive(Debug, Default)]
pub(crate) struct SegmentWrites {
    /// Segments written for this root: garbage if the root is not written.
    pub written: Vec<Path>,
    /// Retired segments the root no longer names: to delete once it is written.
    pub expired: Vec<Path>,
}

/// The feed directory of the root manifest at `metadata_path`.
fn feed_dir_of(metadata_path: &Path) -> Path {
    let parts: Vec<_> = metadata_path.parts().collect();
    Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned())
}

/// `name` next to the root manifest at `metadata_path`.
pub fn sibling(metadata_path: &Path, name: &str) -> Path {
    feed_dir_of(metadata_path).join(name)
}

pub(crate) fn segment_path(metadata_path: &Path, relative: &str) -> Path {
    let mut path = feed_dir_of(metadata_path);
    for part in relative.split('/') {
        path = path.clone().join(part);
    }
    path
}

/// The tier of a segment of `files` files; `None` once it is full.
fn tier(files: u64) -> Option<u32> {
    (files < SEGMENT_CAP).then(|| files.max(1).ilog(FANOUT))
}

/// How many of the newest existing segments merge with a new one of `new_files` files.
fn merge_count(existing: &[ManifestRef], new_files: u64) -> usize {
    let mut files = new_files;
    let mut taken = 0;
    while let Some(level) = tier(files) {
        let rest = &existing[..existing.len() - taken];
        let same = rest.iter().rev().take_while(|segment| tier(segment.files) == Some(level)).count();
        if (same as u64) + 1 < FANOUT {
            break;
        }
        files += rest[rest.len() - same..].iter().map(|segment| segment.files).sum::<u64>();
        taken += same;
    }
    taken
}

/// Joins lists of partition entries, older lists first: a partition in several gets their
/// files in that order and their figures summed. The result is sorted by path.
fn join_partitions(lists: impl IntoIterator<Item = Vec<PartitionEntry>>) -> Vec<PartitionEntry> {
    let mut merged: BTreeMap<String, PartitionEntry> = BTreeMap::new();
    for partition in lists.into_iter().flatten() {
        match merged.get_mut(&partition.path) {
            Some(entry) => entry.absorb(partition),
            None => {
                merged.insert(partition.path.clone(), partition);
            }
        }
    }
    merged.into_values().collect()
}

async fn read_segment(store: &dyn ObjectStore, metadata_path: &Path, relative: &str) -> Result<Segment, ManifestError> {
    let path = segment_path(metadata_path, relative);
    let failed = |source| ManifestError::Store { path: path.to_string(), source };
    let bytes = match store.get(&path).await {
        Ok(result) => result.bytes().await.map_err(failed)?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ManifestError::MissingSegment { root: metadata_path.to_string(), segment: path.to_string() })
        }
        Err(source) => return Err(failed(source)),
    };
    serde_json::from_slice(&bytes).map_err(|source| ManifestError::Corrupt { path: path.to_string(), source })
}

/// The segments `refs` name, in order, [`READ_CONCURRENCY`] at a time.
async fn read_segments(
    store: &dyn ObjectStore,
    metadata_path: &Path,
    refs: &[ManifestRef],
) -> Result<Vec<Segment>, ManifestError> {
    let mut segments = Vec::with_capacity(refs.len());
    for chunk in refs.chunks(READ_CONCURRENCY) {
        let reads = chunk.iter().map(|segment| read_segment(store, metadata_path, &segment.path));
        segments.extend(futures::future::try_join_all(reads).await?);
    }
    Ok(segments)
}

/// Every committed partition entry of `root`: its segments' and its own, merged by path.
pub async fn load_partitions(
    store: &dyn ObjectStore,
    metadata_path: &Path,
    root: &FeedMetadata,
) -> Result<Vec<PartitionEntry>, ManifestError> {
    let segments = read_segments(store, metadata_path, &root.manifests).await?;
    let lists = segments.into_iter().map(|segment| segment.partitions);
    Ok(join_partitions(lists.chain([root.partitions.clone()])))
}

/// The manifest at `path` with its whole file list in `partitions` (`expanded`): for reading
/// only, [`super::metadata::replace_manifest`] refuses it.
pub async fn load_full(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<(FeedMetadata, UpdateVersion)>, ManifestError> {
    let Some((mut metadata, version)) = load_manifest(store, path).await? else { return Ok(None) };
    metadata.partitions = load_partitions(store, path, &metadata).await?;
    metadata.expanded = true;
    Ok(Some((metadata, version)))
}

/// Whether `root` lists `name` in partition `partition`, reading the segments when the root
/// alone does not tell.
pub async fn lists_file(
    store: &dyn ObjectStore,
    metadata_path: &Path,
    root: &FeedMetadata,
    partition: &str,
    name: &str,
) -> Result<bool, ManifestError> {
    if root.contains_file(partition, name) {
        return Ok(true);
    }
    let partitions = load_partitions(store, metadata_path, root).await?;
    let at = partitions.partition_point(|entry| entry.path.as_str() < partition);
    Ok(partitions.get(at).is_some_and(|entry| entry.path == partition && entry.files.iter().any(|f| f.name == name)))
}

/// Prepares `root` for writing: moves its own `partitions` into new segments (merged with the
/// newest segments when their tier is full), and drops the retired segments past their grace.
/// The segments are written here, create-only, and named in `writes` before each put, so one
/// whose put failed is known too; the caller writes the root.
pub(crate) async fn write_segments(
    store: &dyn ObjectStore,
    metadata_path: &Path,
    root: &mut FeedMetadata,
    now: DateTime<Utc>,
    writes: &mut SegmentWrites,
) -> Result<(), ManifestError> {
    let now_ms = now.timestamp_millis();
    let grace_ms = RETIRED_GRACE.as_millis() as i64;
    let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut root.retired_manifests).into_iter().partition(|old| {
        chrono::DateTime::parse_from_rfc3339(&old.retired_at)
            .map_or(true, |at| now_ms - at.timestamp_millis() >= grace_ms)
    });
    root.retired_manifests = kept;
    writes.expired = expired.iter().map(|old| segment_path(metadata_path, &old.path)).collect();

    let pending = std::mem::take(&mut root.partitions);
    if pending.is_empty() {
        return Ok(());
    }
    // Many files at once (a format-1 list, a rebuild, an adoption): full segments first, so no
    // segment grows past the cap; the rest goes through the tiers like any commit.
    let mut chunks = split_at_cap(pending);
    let rest = chunks.pop().expect("pending files make at least one chunk");
    for chunk in chunks {
        let entry = write_segment(store, metadata_path, &root.source, chunk, now_ms, writes).await?;
        root.manifests.push(entry);
    }
    let new_files: u64 = rest.iter().map(|partition| partition.files.len() as u64).sum();
    let merged = merge_count(&root.manifests, new_files);
    let replaced: Vec<ManifestRef> = root.manifests.split_off(root.manifests.len() - merged);
    let older = read_segments(store, metadata_path, &replaced).await?;
    let partitions = join_partitions(older.into_iter().map(|segment| segment.partitions).chain([rest]));
    let entry = write_segment(store, metadata_path, &root.source, partitions, now_ms, writes).await?;
    root.manifests.push(entry);
    let retired_at = format_ms(now_ms);
    root.retired_manifests
        .extend(replaced.into_iter().map(|old| RetiredManifest { path: old.path, retired_at: retired_at.clone() }));
    Ok(())
}

/// Splits partition entries (sorted by path) into lists of [`SEGMENT_CAP`] files, the last one
/// holding what is left (never empty); a partition's files may be split between two lists.
fn split_at_cap(partitions: Vec<PartitionEntry>) -> Vec<Vec<PartitionEntry>> {
    let total: u64 = partitions.iter().map(|partition| partition.files.len() as u64).sum();
    if total <= SEGMENT_CAP {
        return vec![partitions];
    }
    let mut chunks: Vec<Vec<PartitionEntry>> = vec![Vec::new()];
    let mut room = SEGMENT_CAP as usize;
    for mut partition in partitions {
        while partition.files.len() > room {
            let tail = partition.files.split_off(room);
            let head = std::mem::replace(&mut partition.files, tail);
            chunks.last_mut().expect("never empty").push(PartitionEntry::of_files(&partition, head));
            chunks.push(Vec::new());
            room = SEGMENT_CAP as usize;
        }
        room -= partition.files.len();
        let files = std::mem::take(&mut partition.files);
        if !files.is_empty() {
            chunks.last_mut().expect("never empty").push(PartitionEntry::of_files(&partition, files));
        }
        if room == 0 {
            chunks.push(Vec::new());
            room = SEGMENT_CAP as usize;
        }
    }
    if chunks.last().is_some_and(|chunk| chunk.is_empty()) {
        chunks.pop();
    }
    chunks
}

/// Writes one segment of `partitions`, create-only under a new name, and returns its entry.
async fn write_segment(
    store: &dyn ObjectStore,
    metadata_path: &Path,
    source: &str,
    partitions: Vec<PartitionEntry>,
    now_ms: i64,
    writes: &mut SegmentWrites,
) -> Result<ManifestRef, ManifestError> {
    let relative = format!("{SEGMENT_DIR}/m_{now_ms:013}_{:016x}.json", rand::random::<u64>());
    let entry = ManifestRef {
        path: relative.clone(),
        files: partitions.iter().map(|partition| partition.files.len() as u64).sum(),
        records: partitions.iter().map(|partition| partition.records).sum(),
        bytes: partitions.iter().map(|partition| partition.bytes).sum(),
        min_event_time: partitions.iter().filter_map(|partition| partition.min_event_time.clone()).min(),
        max_event_time: partitions.iter().filter_map(|partition| partition.max_event_time.clone()).max(),
    };
    let segment = Segment { format_version: FORMAT_VERSION, source: source.to_string(), partitions };
    let path = segment_path(metadata_path, &relative);
    let mut body =
        serde_json::to_vec(&segment).map_err(|source| ManifestError::Corrupt { path: path.to_string(), source })?;
    body.push(b'\n');
    // named before the put: a put that fails may still have landed
    writes.written.push(path.clone());
    let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    store
        .put_opts(&path, PutPayload::from(body), options)
        .await
        .map_err(|source| ManifestError::Store { path: path.to_string(), source })?;
    Ok(entry)
}

/// Deletes `paths`; returns those that could not be deleted, for a later try.
pub(crate) async fn delete_quietly(store: &dyn ObjectStore, paths: &[Path]) -> Vec<Path> {
    let mut failed = Vec::new();
    for path in paths {
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => {
                warn!(path = %path, %error, "could not delete a manifest segment no root needs; trying again later");
                failed.push(path.clone());
            }
        }
    }
    failed
}

/// Removes the segments under the feed that `root` neither lists nor keeps as retired: left by
/// a crash between a segment and its root, or by a root that was rebuilt. Run it only while no
/// writer of the feed is active. Returns the paths removed.
pub async fn remove_unreferenced(
    store: &dyn ObjectStore,
    metadata_path: &Path,
    root: &FeedMetadata,
) -> Result<Vec<String>, ManifestError> {
    let dir = feed_dir_of(metadata_path).join(SEGMENT_DIR);
    let referenced: HashSet<Path> = root
        .manifests
        .iter()
        .map(|segment| segment.path.as_str())
        .chain(root.retired_manifests.iter().map(|old| old.path.as_str()))
        .map(|relative| segment_path(metadata_path, relative))
        .collect();
    let listed: Vec<_> = store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|source| ManifestError::Store { path: dir.to_string(), source })?;
    let unreferenced: Vec<Path> =
        listed.into_iter().map(|meta| meta.location).filter(|path| !referenced.contains(path)).collect();
    let failed = delete_quietly(store, &unreferenced).await;
    Ok(unreferenced.iter().filter(|path| !failed.contains(path)).map(|path| path.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed file's entry; `time` is both its event times.
    fn file(name: &str, records: u64, bytes: u64, time: &str) -> super::super::metadata::FileEntry {
        super::super::metadata::FileEntry {
            name: name.to_string(),
            records,
            bytes,
            min_event_time: time.to_string(),
            max_event_time: time.to_string(),
            positions: Default::default(),
            runs: Default::default(),
            written_at: String::new(),
            reason: "rows".into(),
            late: false,
        }
    }

    fn segment(files: u64) -> ManifestRef {
        ManifestRef { path: String::new(), files, records: files, bytes: 0, min_event_time: None, max_event_time: None }
    }

    #[test]
    fn tiers_merge_like_a_counter_in_base_eight_and_stop_at_the_cap() {
        let mut segments: Vec<ManifestRef> = Vec::new();
        let mut most = 0;
        for commit in 1..=100_000u64 {
            let merged = merge_count(&segments, 1);
            let files = 1 + segments.split_off(segments.len() - merged).iter().map(|s| s.files).sum::<u64>();
            segments.push(segment(files));
            most = most.max(segments.len());
            assert_eq!(segments.iter().map(|s| s.files).sum::<u64>(), commit);
            assert!(segments.iter().all(|s| s.files <= SEGMENT_CAP), "no segment grows past the cap");
        }
        let full = segments.iter().filter(|s| s.files == SEGMENT_CAP).count();
        assert_eq!(full, 100_000 / SEGMENT_CAP as usize);
        assert!(most <= full + 7 * 4, "{most} segments listed at most");
        assert!(segments.windows(2).all(|w| w[0].files >= w[1].files), "oldest first, largest first");
    }

    #[tokio::test]
    async fn retired_segments_stay_for_the_grace_period_then_leave_the_root() {
        use super::super::metadata::FeedMetadata;
        let store = object_store::memory::InMemory::new();
        let root_path = Path::from("streams/orders/_metadata.json");
        let mut root = FeedMetadata::new("orders", super::super::layout::FeedKind::Stream);
        let start = Utc::now();
        for n in 0..8 {
            root.record_file("p", file(&format!("f{n}"), 1, 1, ""), Vec::new(), start);
            let mut writes = SegmentWrites::default();
            write_segments(&store, &root_path, &mut root, start, &mut writes).await.unwrap();
            assert!(writes.expired.is_empty());
        }
        assert_eq!(root.manifests.len(), 1, "the eighth commit merged the tier");
        assert_eq!(root.retired_manifests.len(), 7, "the seven it replaced are kept for readers");
        let later = start + chrono::Duration::from_std(RETIRED_GRACE).unwrap() - chrono::Duration::seconds(1);
        let mut writes = SegmentWrites::default();
        write_segments(&store, &root_path, &mut root, later, &mut writes).await.unwrap();
        assert!(writes.expired.is_empty());
        let after = start + chrono::Duration::from_std(RETIRED_GRACE).unwrap();
        let mut writes = SegmentWrites::default();
        write_segments(&store, &root_path, &mut root, after, &mut writes).await.unwrap();
        assert_eq!(writes.expired.len(), 7, "past the grace period they go");
        assert!(root.retired_manifests.is_empty());
        assert_eq!(load_partitions(&store, &root_path, &root).await.unwrap()[0].files.len(), 8);
    }

    #[tokio::test]
    async fn many_files_at_once_are_cut_into_segments_no_larger_than_the_cap() {
        use super::super::metadata::FeedMetadata;
        let store = object_store::memory::InMemory::new();
        let root_path = Path::from("streams/orders/_metadata.json");
        let mut root = FeedMetadata::new("orders", super::super::layout::FeedKind::Stream);
        let now = Utc::now();
        // 10,000 files: one partition of 5,000, then 5,000 partitions of one
        for n in 0..10_000usize {
            let partition = if n < 5_000 { "a".to_string() } else { format!("b{n:05}") };
            root.record_file(&partition, file(&format!("f{n}"), 2, 3, &format!("t{n:05}")), Vec::new(), now);
        }
        let mut writes = SegmentWrites::default();
        write_segments(&store, &root_path, &mut root, now, &mut writes).await.unwrap();
        let sizes: Vec<u64> = root.manifests.iter().map(|segment| segment.files).collect();
        assert_eq!(sizes, [SEGMENT_CAP, SEGMENT_CAP, 10_000 - 2 * SEGMENT_CAP]);
        assert_eq!(root.manifests.iter().map(|segment| segment.records).sum::<u64>(), 20_000);
        let partitions = load_partitions(&store, &root_path, &root).await.unwrap();
        assert_eq!(partitions.len(), 5_001);
        let a = &partitions[0];
        assert_eq!((a.files.len(), a.records, a.bytes), (5_000, 10_000, 15_000), "split, then joined again");
        assert!(a.files.windows(2).all(|w| w[0].name < w[1].name || w[0].name.len() < w[1].name.len()));
        assert_eq!(a.min_event_time.as_deref(), Some("t00000"));
        assert_eq!(a.max_event_time.as_deref(), Some("t04999"));
    }

    #[test]
    fn a_partition_in_several_segments_keeps_its_files_in_order_and_its_sums() {
        let entry = |path: &str, names: &[&str]| PartitionEntry {
            path: path.into(),
            records: names.len() as u64,
            size_mb: 0.0,
            bytes: 10 * names.len() as u64,
            min_event_time: Some(format!("2024-01-0{}", names.len())),
            max_event_time: Some(format!("2024-01-0{}", names.len())),
            files: names.iter().map(|name| file(name, 1, 10, "")).collect(),
            extra: Default::default(),
        };
        let merged = join_partitions([
            vec![entry("b", &["b1"]), entry("c", &["c1"])],
            vec![entry("a", &["a1"]), entry("b", &["b2", "b3"])],
        ]);
        let paths: Vec<_> = merged.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "c"]);
        let names: Vec<_> = merged[1].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["b1", "b2", "b3"]);
        assert_eq!((merged[1].records, merged[1].bytes), (3, 30));
        assert_eq!(merged[1].min_event_time.as_deref(), Some("2024-01-01"));
        assert_eq!(merged[1].max_event_time.as_deref(), Some("2024-01-02"));
    }
}
