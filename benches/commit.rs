//! What a feed's history costs: with 100, 10,000 and 100,000 committed files in a local lake,
//! the time of one more commit (data file, then `_metadata.json`), of start-up (`reconcile`), of
//! the operator report, and the bytes each commit rewrites.
//!
//! `cargo bench --bench commit [-- FILES,FILES,...]`
//!
//! The history is made cheaply: one real commit, then its manifest entry repeated for files
//! one hour apart (hard links to, or copies of, the real file, each with its own offset), as a year or more of
//! hourly flushes would leave it.

use std::time::{Duration, Instant};

use ksql_lake::lake::metadata::{replace_manifest, FeedMetadata};
use ksql_lake::lake::testing::{orders, TestFeed};
use ksql_lake::lake::{
    open_lake, reconcile, CommitState, FeedKind, LakeWriter, PartitionSpec, Partitioning, Runs, S3Options,
    WriterOptions,
};
use object_store::ObjectStoreExt;

const FEED: &str = "orders";
/// 2024-05-01T00:00:00Z
const START_MS: i64 = 1_714_521_600_000;
const HOUR_MS: i64 = 3_600_000;
/// Timed commits per history size (the median is printed).
const COMMITS: usize = 5;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .map(|arg| arg.split(',').map(|n| n.parse().expect("file counts: 100,10000")).collect())
        .unwrap_or_else(|| vec![100, 10_000, 100_000]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("{:>8} files {:>10} {:>10} {:>10} {:>14}", "", "commit", "start-up", "report", "rewritten");
    let mut first: Option<[Duration; 3]> = None;
    for files in sizes {
        let Measured { timings, manifest_bytes } = runtime.block_on(measure(files));
        let [commit, startup, report] = timings;
        let base = *first.get_or_insert(timings);
        let ratio = |n: usize| timings[n].as_secs_f64() / base[n].as_secs_f64();
        println!(
            "{files:>8} files {:>8.1?} {:>10.1?} {:>10.1?} {:>11.1} MB   ({:.1}x, {:.1}x, {:.1}x the first size; target at most 2x)",
            commit,
            startup,
            report,
            manifest_bytes as f64 / 1e6,
            ratio(0),
            ratio(1),
            ratio(2)
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
    /// The median of one more commit, start-up, the report.
    timings: [Duration; 3],
    /// What a commit rewrites: the whole manifest.
    manifest_bytes: u64,
}

async fn measure(files: usize) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(&format!("file://{}", dir.path().display()), &S3Options::default()).unwrap();
    let writer = LakeWriter::new(lake.clone(), WriterOptions::default());
    commit(&writer, 0, 0).await;

    // The history: the first file's entry once per hour, each a hard link of the real file.
    let path = lake.metadata_path(FeedKind::Stream, FEED).unwrap();
    let store = lake.store();
    let result = store.get(&path).await.unwrap();
    let version =
        object_store::UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
    let mut metadata = FeedMetadata::from_json(&result.bytes().await.unwrap()).unwrap();
    let template = metadata.partitions[0].clone();
    let feed_dir = dir.path().join("streams").join(FEED);
    let real_file = feed_dir.join(&template.path).join(&template.files[0].name);
    metadata.partitions.clear();
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
        metadata.partitions.push(partition);
    }
    metadata.total_records = files as u64;
    let mut state = CommitState::default();
    state.raise_low(0, files as u64 - 1);
    metadata.set_commit_state(state);
    std::fs::remove_file(&real_file).unwrap();
    assert!(replace_manifest(store.as_ref(), &path, &metadata, Some(version)).await.unwrap());

    let mut commits = Vec::new();
    for k in 0..COMMITS as u64 {
        commits.push(commit(&writer, files as i64 + k as i64, files as u64 + k).await);
    }
    commits.sort();
    let started = Instant::now();
    reconcile(&lake, FeedKind::Stream, FEED).await.unwrap();
    let startup = started.elapsed();
    let started = Instant::now();
    let report = ksql_lake::report::build(&lake, None).await.unwrap();
    let report_time = started.elapsed();
    assert!(!report.feeds.is_empty());
    let manifest = std::fs::metadata(feed_dir.join("_metadata.json")).unwrap().len();
    Measured { timings: [commits[COMMITS / 2], startup, report_time], manifest_bytes: manifest }
}
