//! What a feed's history costs: with 100, 10,000 and 100,000 committed files in a local lake,
//! the time of one more commit (data file, manifest segment, root `_metadata.json`), of start-up
//! (`reconcile`) after a clean stop and after a crash, of the operator report, and the bytes each
//! commit rewrites (the root and the segment it writes, merges included, averaged).
//!
//! `cargo bench --bench commit [-- FILES,FILES,...]`
//!
//! The history is made cheaply: one real commit, then its manifest entry repeated for files
//! one hour apart (hard links to, or copies of, the real file, each with its own offset), as a year or more of
//! hourly flushes would leave it.

use std::time::{Duration, Instant};

use ksql_lake::lake::manifests::load_full;
use ksql_lake::lake::metadata::{load_manifest, replace_manifest};
use ksql_lake::lake::testing::{orders, TestFeed};
use ksql_lake::lake::{
    open_lake, reconcile, CommitState, FeedKind, LakeWriter, PartitionSpec, Partitioning, Runs, S3Options,
    WriterOptions,
};

const FEED: &str = "orders";
/// 2024-05-01T00:00:00Z
const START_MS: i64 = 1_714_521_600_000;
const HOUR_MS: i64 = 3_600_000;
/// Files per segment of the made-up history: full segments, as the tiers leave them.
const HISTORY_SEGMENT: usize = 4096;
/// Timed commits per history size: the median is printed, and the mean of what they rewrite
/// (enough commits for segment merges of the first two tiers).
const COMMITS: usize = 72;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .map(|arg| arg.split(',').map(|n| n.parse().expect("file counts: 100,10000")).collect())
        .unwrap_or_else(|| vec![100, 10_000, 100_000]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "{:>8} files {:>10} {:>10} {:>12} {:>10} {:>14}",
        "", "commit", "start-up", "after crash", "report", "rewritten"
    );
    let mut first: Option<[Duration; 4]> = None;
    for files in sizes {
        let Measured { timings, rewritten } = runtime.block_on(measure(files));
        let [commit, startup, recovery, report] = timings;
        let base = *first.get_or_insert(timings);
        let ratio = |n: usize| timings[n].as_secs_f64() / base[n].as_secs_f64();
        println!(
            "{files:>8} files {:>8.1?} {:>10.1?} {:>12.1?} {:>10.1?} {:>11.1} KB   (commit {:.1}x, start-up {:.1}x the first size, \
             target at most 2x; after a crash {:.0}x, report {:.0}x)",
            commit,
            startup,
            recovery,
            report,
            rewritten as f64 / 1e3,
            ratio(0),
            ratio(1),
            ratio(2),
            ratio(3)
        );
    }
}

fn spec() -> PartitionSpec {
    PartitionSpec::new(Partitioning::Hourly, chrono_tz::UTC)
}

/// Commits one file of one row at hour `hour`, offset `offset`, with the commit state
/// `0..=offset`; returns how long the commit took (the encoding is not timed).
async fn commit(writer: &LakeWriter, hour: i64, offset: u64) -> Duration {
    let mut jobs = TestFeed::with_spec(spec(), START_MS).jobs_for(&orders(&[START_MS + hour * HOUR_MS], 0, offset));
    let mut job = jobs.remove(0);
    job.runs = Runs::from([(0, vec![(offset, offset)])]);
    let mut state = CommitState::default();
    state.raise_low(0, offset);
    job.commit = state;
    let encoded = writer.encode(&job).await.unwrap();
    let started = Instant::now();
    writer.commit(&job, &encoded).await.unwrap();
    started.elapsed()
}

/// One history size's figures.
struct Measured {
    /// The median of one more commit; start-up after a clean stop, after a crash; the report.
    timings: [Duration; 4],
    /// What a commit rewrites on average: the root and the segment it writes.
    rewritten: u64,
}

async fn measure(files: usize) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(&format!("file://{}", dir.path().display()), &S3Options::default()).unwrap();
    let writer = LakeWriter::new(lake.clone(), WriterOptions::default());
    commit(&writer, 0, 0).await;

    // The history: the first file's entry once per hour, each a hard link of the real file,
    // listed in full segments as a long-running feed's commits would leave them.
    let path = lake.metadata_path(FeedKind::Stream, FEED).unwrap();
    let store = lake.store();
    let (full, _) = load_full(store.as_ref(), &path).await.unwrap().unwrap();
    let template = full.partitions[0].clone();
    let feed_dir = dir.path().join("streams").join(FEED);
    let real_file = feed_dir.join(&template.path).join(&template.files[0].name);
    let (mut root, mut version) = load_manifest(store.as_ref(), &path).await.unwrap().unwrap();
    for segment in root.manifests.drain(..) {
        std::fs::remove_file(feed_dir.join(&segment.path)).unwrap();
    }
    root.total_records = files as u64;
    root.total_files = files as u64;
    root.recent_files.clear();
    let mut state = CommitState::default();
    state.raise_low(0, files as u64 - 1);
    root.set_commit_state(state);
    let mut partitions = Vec::new();
    for n in 0..files as u64 {
        let at = chrono::DateTime::from_timestamp_millis(START_MS + n as i64 * HOUR_MS).unwrap();
        let mut partition = template.clone();
        partition.path = at.format("year=%Y/month=%m/day=%d/hour=%H").to_string();
        let file = &mut partition.files[0];
        file.name = format!("data_{}_p0000000000o{n:019}.parquet", at.format("%Y%m%d_%H%M%S"));
        file.runs = Runs::from([(0, vec![(n, n)])]);
        file.positions = [(0, n)].into();
        std::fs::create_dir_all(feed_dir.join(&partition.path)).unwrap();
        let copy = feed_dir.join(&partition.path).join(&file.name);
        if std::fs::hard_link(&real_file, &copy).is_err() {
            std::fs::copy(&real_file, &copy).unwrap(); // past the file system's link limit
        }
        partitions.push(partition);
        if partitions.len() == HISTORY_SEGMENT || n + 1 == files as u64 {
            // the files of one partition stay within one segment here: they sort by path
            root.partitions = std::mem::take(&mut partitions);
            assert!(replace_manifest(store.as_ref(), &path, &root, Some(version)).await.unwrap());
            (root, version) = load_manifest(store.as_ref(), &path).await.unwrap().unwrap();
        }
    }
    std::fs::remove_file(&real_file).unwrap();

    let mut commits = Vec::new();
    let mut rewritten = 0;
    for k in 0..COMMITS as u64 {
        commits.push(commit(&writer, files as i64 + k as i64, files as u64 + k).await);
        let root = std::fs::metadata(feed_dir.join("_metadata.json")).unwrap().len();
        let (metadata, _) = load_manifest(store.as_ref(), &path).await.unwrap().unwrap();
        let newest = metadata.manifests.last().expect("a commit writes a segment");
        rewritten += root + std::fs::metadata(feed_dir.join(&newest.path)).unwrap().len();
    }
    commits.sort();
    let started = Instant::now();
    let clean = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    let startup = started.elapsed();
    assert!(!clean.changed());

    // The same start-up after a crash: the writer's mark is left, so the feed's files are listed.
    let crashed = LakeWriter::new(lake.clone(), WriterOptions::default());
    crashed.open(FeedKind::Stream, FEED).await.unwrap();
    let started = Instant::now();
    let recovered = reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    let recovery = started.elapsed();
    assert!(!recovered.changed(), "nothing was left behind");

    let started = Instant::now();
    let report = ksql_lake::report::build(&lake, None).await.unwrap();
    let report_time = started.elapsed();
    assert!(!report.feeds.is_empty());
    assert_eq!(report.feeds[0].files, (files + COMMITS) as u64);
    Measured { timings: [commits[COMMITS / 2], startup, recovery, report_time], rewritten: rewritten / COMMITS as u64 }
}
