//! Test support, built only for tests (feature `test-support`, which the crate's own tests
//! turn on): an object store wrapper that fails chosen operations, and the one fixture that
//! turns rows into flush jobs the way the pipeline does (route, buffer, ledger).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::Schema;

use super::{
    EventTime, FeedKind, FlushJob, FlushPolicy, FlushReason, MemoryBudget, PartitionBuffers, PartitionSpec, Position,
    RowRouter,
};
use crate::schema::types::{arrow_schema, Column, KsqlType};
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// Delegates to `inner`, but the next `failures` puts (single or multipart) whose path
/// contains `path_filter` fail with a retryable `Generic` error before touching the store.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    path_filter: String,
    remaining_failures: AtomicUsize,
    /// Puts attempted through this wrapper (failed ones included).
    puts: AtomicUsize,
    /// Puts left before a simulated crash; `usize::MAX`: no crash planned.
    crash_in: AtomicUsize,
    /// The next matching puts that reach the store and still answer with an error, as when
    /// the response is lost.
    landed_failures: AtomicUsize,
    /// Listings asked for.
    lists: AtomicUsize,
    /// The next matching conditional puts that fail as if another writer had won the race.
    lost_races: AtomicUsize,
    /// The next matching conditional puts that land, then answer as if another writer had won
    /// the race (a retried put that had landed).
    landed_races: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            path_filter: String::new(),
            remaining_failures: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            crash_in: AtomicUsize::new(usize::MAX),
            landed_failures: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            lost_races: AtomicUsize::new(0),
            landed_races: AtomicUsize::new(0),
        })
    }

    /// Only paths containing `filter` fail (e.g. `".parquet"` or `"_metadata.json"`).
    pub fn with_filter(inner: Arc<dyn ObjectStore>, filter: &str) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            path_filter: filter.to_string(),
            remaining_failures: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            crash_in: AtomicUsize::new(usize::MAX),
            landed_failures: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            lost_races: AtomicUsize::new(0),
            landed_races: AtomicUsize::new(0),
        })
    }

    /// Makes the next `count` matching puts fail.
    pub fn fail_next_puts(&self, count: usize) {
        self.remaining_failures.store(count, Ordering::SeqCst);
    }

    /// From now on `puts` more puts succeed; every later put and every delete fails, as if the
    /// process had died right there (nothing it would do next reaches the store).
    pub fn crash_after_puts(&self, puts: usize) {
        self.crash_in.store(puts, Ordering::SeqCst);
    }

    fn crashed(&self) -> bool {
        self.crash_in.load(Ordering::SeqCst) == 0
    }

    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    /// Makes the next `count` matching puts reach the store and then fail, as a put whose
    /// response was lost.
    pub fn land_then_fail_next_puts(&self, count: usize) {
        self.landed_failures.store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` matching conditional puts (update or create-only) fail with a
    /// precondition error without reaching the store, as when another writer got there first.
    pub fn lose_next_races(&self, count: usize) {
        self.lost_races.store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` matching conditional puts land and then fail with a precondition
    /// error, as when the client retried a put whose first attempt had landed.
    pub fn land_then_lose_next_races(&self, count: usize) {
        self.landed_races.store(count, Ordering::SeqCst);
    }

    /// Listings asked for so far (`list`, `list_with_delimiter`).
    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    /// Whether a put that reached the store should still answer with an error.
    fn lose_response(&self, location: &Path) -> Result<()> {
        if !location.as_ref().contains(&self.path_filter) {
            return Ok(());
        }
        let lost = self.landed_failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1));
        match lost {
            Ok(_) => Err(object_store::Error::Generic { store: "faulty", source: "the response was lost".into() }),
            Err(_) => Ok(()),
        }
    }

    fn inject(&self, location: &Path) -> Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let left = self.crash_in.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
            0 | usize::MAX => None,
            n => Some(n - 1),
        });
        if left.is_err() && self.crashed() {
            return Err(object_store::Error::Generic { store: "faulty", source: "the process crashed".into() });
        }
        if !location.as_ref().contains(&self.path_filter) {
            return Ok(());
        }
        let failed = self
            .remaining_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if failed {
            return Err(object_store::Error::Generic { store: "faulty", source: "injected put failure".into() });
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inject(location)?;
        if location.as_ref().contains(&self.path_filter)
            && matches!(opts.mode, object_store::PutMode::Update(_))
            && self.lost_races.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
        {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: "another writer won the race".into(),
            });
        }
        let conditional = matches!(opts.mode, object_store::PutMode::Update(_) | object_store::PutMode::Create);
        let result = self.inner.put_opts(location, payload, opts).await?;
        if conditional
            && location.as_ref().contains(&self.path_filter)
            && self.landed_races.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
        {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: "a retry of a put that had landed".into(),
            });
        }
        self.lose_response(location)?;
        Ok(result)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inject(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        if self.crashed() {
            let crashed = object_store::Error::Generic { store: "faulty", source: "the process crashed".into() };
            return Box::pin(futures::stream::once(async move { Err(crashed) }));
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// The columns of [`orders`]: what a ksqlDB push query of ksql-lake returns.
pub fn orders_schema() -> Arc<Schema> {
    Arc::new(arrow_schema(&[
        Column::new("ROWTIME", KsqlType::Timestamp),
        Column::new("ROWPARTITION", KsqlType::Integer),
        Column::new("ROWOFFSET", KsqlType::Bigint),
        Column::new("ORDER_ID", KsqlType::String),
    ]))
}

/// Decoded rows and their positions, as the source stage sends them.
#[derive(Debug, Clone)]
pub struct Rows {
    pub batch: RecordBatch,
    pub positions: Vec<Option<Position>>,
}

/// Rows at event times `times` (ms) in ksqlDB partition `partition`, offsets `first_offset..`,
/// with `ORDER_ID` = `order-<offset>`.
pub fn orders(times: &[i64], partition: u32, first_offset: u64) -> Rows {
    let offsets: Vec<u64> = (first_offset..first_offset + times.len() as u64).collect();
    let batch = RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(times.to_vec()).with_timezone("UTC")),
            Arc::new(Int32Array::from(vec![partition as i32; times.len()])),
            Arc::new(Int64Array::from(offsets.iter().map(|&o| o as i64).collect::<Vec<_>>())),
            Arc::new(StringArray::from(offsets.iter().map(|o| format!("order-{o}")).collect::<Vec<_>>())),
        ],
    )
    .expect("columns match the schema");
    let positions = offsets.iter().map(|&offset| Some(Position { partition, offset })).collect();
    Rows { batch, positions }
}

/// A feed's buffer stage without its tasks: rows go through the router and the buffers (and
/// their commit ledger) exactly as in the pipeline, and come out as flush jobs carrying their
/// runs and commit state, ready for [`LakeWriter`](super::LakeWriter).
#[derive(Debug)]
pub struct TestFeed {
    pub router: RowRouter,
    pub buffers: PartitionBuffers,
    /// The event-time watermark handed to the buffers (ms).
    pub watermark_ms: i64,
}

impl TestFeed {
    /// Feed `orders`, ROWTIME event time, the given budget, watermark at `watermark_ms`.
    pub fn new(spec: PartitionSpec, policy: FlushPolicy, budget: Arc<MemoryBudget>, watermark_ms: i64) -> Self {
        TestFeed {
            router: RowRouter::new(spec, EventTime::Column("ROWTIME".into())),
            buffers: PartitionBuffers::new("orders", FeedKind::Stream, spec, policy, budget),
            watermark_ms,
        }
    }

    /// Default policy and a large budget.
    pub fn with_spec(spec: PartitionSpec, watermark_ms: i64) -> Self {
        TestFeed::new(spec, FlushPolicy::default(), MemoryBudget::new(1 << 30), watermark_ms)
    }

    /// Routes and buffers `rows`; returns the jobs a schema change drained.
    pub fn push(&mut self, rows: &Rows) -> Vec<FlushJob> {
        let routed = self.router.route(&rows.batch, &rows.positions, self.watermark_ms).expect("routable rows");
        self.buffers.push_batch(routed, &[], Vec::new(), self.watermark_ms).drained
    }

    /// The jobs whose flush trigger holds now.
    pub fn drain_ready(&mut self) -> Vec<FlushJob> {
        self.buffers.drain_ready(tokio::time::Instant::now(), self.watermark_ms)
    }

    /// Every buffer as a job.
    pub fn drain_all(&mut self, reason: FlushReason) -> Vec<FlushJob> {
        self.buffers.drain_all(reason)
    }

    /// Pushes `rows` and drains everything: one job per partition.
    pub fn jobs_for(&mut self, rows: &Rows) -> Vec<FlushJob> {
        assert!(self.push(rows).is_empty());
        self.drain_all(FlushReason::Shutdown)
    }
}

/// A data file name without its 8-hex-digit digest of the file's runs, for comparing with names
/// written out by hand.
pub fn without_digest(name: &str) -> String {
    match name.strip_suffix(".parquet") {
        Some(stem)
            if stem.len() > 9
                && stem.as_bytes()[stem.len() - 9] == b'_'
                && stem[stem.len() - 8..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            format!("{}.parquet", &stem[..stem.len() - 9])
        }
        _ => name.to_string(),
    }
}

/// The feed's manifest as a reader following `docs/METADATA.md` sees it: the root at
/// `_metadata.json` in `objects` (paths relative to the feed directory), with `partitions`
/// the merged lists of every segment the root names (plus any inline ones), sorted by path.
/// Written against the JSON alone, apart from the writer's code, so tests check the format.
/// Panics when the root names a segment that is not there.
pub fn expanded_manifest(objects: &[(String, bytes::Bytes)]) -> serde_json::Value {
    use serde_json::Value;
    let find = |name: &str| {
        let (_, bytes) = objects.iter().find(|(relative, _)| relative == name).unwrap_or_else(|| {
            panic!("{name} is missing; the feed holds {:?}", objects.iter().map(|o| &o.0).collect::<Vec<_>>())
        });
        serde_json::from_slice::<Value>(bytes).unwrap_or_else(|error| panic!("{name}: {error}"))
    };
    let mut root = find("_metadata.json");
    let mut lists: Vec<Value> = Vec::new();
    for segment in root["manifests"].as_array().cloned().unwrap_or_default() {
        let segment = find(segment["path"].as_str().expect("a segment has a path"));
        lists.extend(segment["partitions"].as_array().cloned().unwrap_or_default());
    }
    lists.extend(root["partitions"].as_array().cloned().unwrap_or_default());
    let mut merged: std::collections::BTreeMap<String, Value> = Default::default();
    for partition in lists {
        let path = partition["path"].as_str().unwrap().to_string();
        match merged.get_mut(&path) {
            None => {
                merged.insert(path, partition);
            }
            Some(entry) => {
                for field in ["records", "bytes"] {
                    entry[field] = (entry[field].as_u64().unwrap_or(0) + partition[field].as_u64().unwrap_or(0)).into();
                }
                let files = entry["files"].as_array_mut().unwrap();
                files.extend(partition["files"].as_array().cloned().unwrap_or_default());
            }
        }
    }
    root["partitions"] = Value::Array(merged.into_values().collect());
    root
}

/// Whether `relative` (below a feed directory) is a manifest segment.
pub fn is_segment(relative: &str) -> bool {
    relative.starts_with("_manifests/") && relative.ends_with(".json")
}
