//! Test support: an object store wrapper that fails chosen operations, for retry and
//! shutdown tests (here and in the pipeline's tests).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            path_filter: String::new(),
            remaining_failures: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
        })
    }

    /// Only paths containing `filter` fail (e.g. `".parquet"` or `"_metadata.json"`).
    pub fn with_filter(inner: Arc<dyn ObjectStore>, filter: &str) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            path_filter: filter.to_string(),
            remaining_failures: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
        })
    }

    /// Makes the next `count` matching puts fail.
    pub fn fail_next_puts(&self, count: usize) {
        self.remaining_failures.store(count, Ordering::SeqCst);
    }

    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    fn inject(&self, location: &Path) -> Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
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
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inject(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
