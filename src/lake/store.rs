//! Opening the lake: a URL plus options → an object store and the root path inside it.
//!
//! - a plain path or `file://` URL: [`LocalFileSystem`] rooted at that directory (created if
//!   missing). Its `put` writes a staged file and renames it, so objects appear atomically,
//!   and fsync is on so committed files survive a power loss;
//! - `s3://bucket/prefix` (or `s3a://`): [`AmazonS3Builder`] seeded from the `AWS_*`
//!   environment, then overridden by [`S3Options`] (endpoint, region, plain HTTP, path or
//!   virtual-hosted style, static keys and session token);
//! - anything else object_store knows (`gs://`, `az://`, `abfss://`, `memory://` …) goes
//!   through [`object_store::parse_url_opts`] with [`S3Options::extra`] as its options.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};
use url::Url;

use super::layout::{validate_feed_name, FeedKind, LayoutError, CHANGELOG_SUFFIX, METADATA_FILE};

/// Connection options for S3-compatible stores. `None` fields fall back to the `AWS_*`
/// environment variables (AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, …).
#[derive(Clone, Default, PartialEq)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for MinIO or moto; `None` means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Permit `http://` endpoints (local test servers).
    pub allow_http: bool,
    /// `https://bucket.host/key` instead of the default path style `https://host/bucket/key`.
    pub virtual_hosted_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Raw object_store options: S3 config keys (`aws_…`) for s3://, or the options of other
    /// schemes (`google_service_account`, `azure_storage_account_name`, …).
    pub extra: Vec<(String, String)>,
}

impl fmt::Debug for S3Options {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("extra_keys", &self.extra.iter().map(|(key, _)| key).collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lake url `{url}` is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create lake directory {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open object store for `{url}`")]
    Open {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// The top-level folder of the dead letters, beside `streams/` and `tables/`.
pub const DEAD_LETTER_DIR: &str = "dead_letter";

/// An opened lake: the store and the root prefix every path is built under.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The URL without credentials, for logs.
    display: String,
    /// The directory of a local lake: LocalFileSystem hides its staged `<name>#<n>` files from
    /// `list`, so recovery has to look at the disk itself.
    local_dir: Option<std::path::PathBuf>,
}

impl Lake {
    /// A lake over any store (tests use `InMemory`).
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, display: impl Into<String>) -> Self {
        Lake { store, root, display: display.into(), local_dir: None }
    }

    /// Marks the lake as a LocalFileSystem rooted at `dir` (what [`open_lake`] does for paths).
    pub fn with_local_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.local_dir = Some(dir.into());
        self
    }

    /// The directory of a local lake, `None` for object stores.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/streams/<feed>` or `<root>/tables/<feed>`; the changelog feed `<table>.changelog`
    /// is `<root>/tables/<table>/changelog`.
    pub fn feed_dir(&self, kind: FeedKind, feed: &str) -> Result<Path, LayoutError> {
        Ok(self.join(&feed_parts(kind, feed)?))
    }

    pub fn metadata_path(&self, kind: FeedKind, feed: &str) -> Result<Path, LayoutError> {
        let mut parts = feed_parts(kind, feed)?;
        parts.push(METADATA_FILE);
        Ok(self.join(&parts))
    }

    /// The feed's dead-letter directory, `dead_letter/<feed>`.
    pub fn dead_letter_dir(&self, feed: &str) -> Result<Path, LayoutError> {
        validate_feed_name(feed)?;
        Ok(self.join(&[DEAD_LETTER_DIR, feed]))
    }

    /// A path below the feed's dead-letter directory.
    pub fn dead_letter_path(&self, feed: &str, relative: &str) -> Result<Path, LayoutError> {
        validate_feed_name(feed)?;
        let mut parts = vec![DEAD_LETTER_DIR, feed];
        parts.extend(relative.split('/').filter(|part| !part.is_empty()));
        Ok(self.join(&parts))
    }

    /// A path below the feed directory; `relative` is `/`-separated (`year=…/data_….parquet`).
    pub fn feed_path(&self, kind: FeedKind, feed: &str, relative: &str) -> Result<Path, LayoutError> {
        let mut parts = feed_parts(kind, feed)?;
        parts.extend(relative.split('/').filter(|part| !part.is_empty()));
        Ok(self.join(&parts))
    }

    fn join(&self, parts: &[&str]) -> Path {
        self.root.parts().chain(parts.iter().map(|part| (*part).into())).collect()
    }
}

/// The folders of a feed below the lake root, its name checked.
fn feed_parts(kind: FeedKind, feed: &str) -> Result<Vec<&str>, LayoutError> {
    validate_feed_name(feed)?;
    if kind != FeedKind::Changelog {
        return Ok(vec![kind.dir(), feed]);
    }
    match feed.strip_suffix(CHANGELOG_SUFFIX) {
        Some(table) if validate_feed_name(table).is_ok() => Ok(vec![kind.dir(), table, "changelog"]),
        _ => Err(LayoutError::NotAChangelog { name: feed.to_string() }),
    }
}

impl fmt::Display for Lake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Opens the lake at `url` (see the module doc for the forms accepted).
pub fn open_lake(url: &str, options: &S3Options) -> Result<Lake, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl { url: crate::config::redact_url(url), reason };
    if url.trim().is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if !url.contains("://") {
        return open_local(std::path::Path::new(url), url);
    }
    let parsed = Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    let mut display = parsed.clone();
    let _ = display.set_username("");
    let _ = display.set_password(None);
    let display = display.to_string();
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|_| invalid("not a local file path".into()))?;
            open_local(&path, &display)
        }
        "s3" | "s3a" => open_s3(&parsed, options, display),
        _ => {
            let (store, root) = object_store::parse_url_opts(&parsed, options.extra.clone())
                .map_err(|source| StoreError::Open { url: display.clone(), source })?;
            Ok(Lake::new(Arc::from(store), root, display))
        }
    }
}

fn open_local(path: &std::path::Path, display: &str) -> Result<Lake, StoreError> {
    std::fs::create_dir_all(path)
        .map_err(|source| StoreError::CreateDir { path: path.display().to_string(), source })?;
    // fsync: the manifest is the commit point, so a file it lists must survive a power loss.
    let store = LocalFileSystem::new_with_prefix(path)
        .map_err(|source| StoreError::Open { url: display.to_string(), source })?
        .with_fsync(true);
    Ok(Lake::new(Arc::new(store), Path::default(), display).with_local_dir(path))
}

fn open_s3(url: &Url, options: &S3Options, display: String) -> Result<Lake, StoreError> {
    let bucket = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| StoreError::InvalidUrl { url: display.clone(), reason: "no bucket name".into() })?;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in &options.extra {
        let key =
            AmazonS3ConfigKey::from_str(key).map_err(|source| StoreError::Open { url: display.clone(), source })?;
        builder = builder.with_config(key, value.clone());
    }
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region.clone());
    }
    if options.allow_http {
        builder = builder.with_allow_http(true);
    }
    if options.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(true);
    }
    if let Some(key) = &options.access_key_id {
        builder = builder.with_access_key_id(key.clone());
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret.clone());
    }
    if let Some(token) = &options.session_token {
        builder = builder.with_token(token.clone());
    }
    // The pipeline's commit stage is the one place that retries, with its own backoff, and it
    // shows every failed attempt on /readyz and in the metrics; retries hidden inside the
    // client would make an outage invisible for minutes.
    builder = builder.with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() });
    let store = builder.build().map_err(|source| StoreError::Open { url: display.clone(), source })?;
    let root = Path::from_url_path(url.path()).map_err(|source| StoreError::Open {
        url: display.clone(),
        source: object_store::Error::InvalidPath { source },
    })?;
    Ok(Lake::new(Arc::new(store), root, display))
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn local_paths_and_file_urls_create_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake/nested");
        let lake = open_lake(root.to_str().unwrap(), &S3Options::default()).unwrap();
        assert!(root.is_dir());
        let path = lake.feed_path(FeedKind::Stream, "orders", "year=2024/month=01/day=02/x.parquet").unwrap();
        lake.store().put(&path, bytes::Bytes::from_static(b"x").into()).await.unwrap();
        assert!(root.join("streams/orders/year=2024/month=01/day=02/x.parquet").is_file());

        let url = Url::from_file_path(dir.path().join("other")).unwrap();
        let lake = open_lake(url.as_str(), &S3Options::default()).unwrap();
        assert!(dir.path().join("other").is_dir());
        assert_eq!(lake.metadata_path(FeedKind::Table, "t").unwrap().as_ref(), "tables/t/_metadata.json");
    }

    #[test]
    fn s3_urls_keep_the_prefix_and_accept_explicit_options() {
        let options = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            allow_http: true,
            access_key_id: Some("k".into()),
            secret_access_key: Some("very-secret".into()),
            ..S3Options::default()
        };
        let lake = open_lake("s3://bucket/some/prefix", &options).unwrap();
        assert_eq!(lake.root().as_ref(), "some/prefix");
        assert_eq!(lake.feed_dir(FeedKind::Stream, "f").unwrap().as_ref(), "some/prefix/streams/f");
        assert!(!format!("{options:?}").contains("very-secret"));
        assert!(matches!(open_lake("s3:///x", &options), Err(StoreError::InvalidUrl { .. })));
    }

    #[test]
    fn other_schemes_go_through_parse_url_opts() {
        let lake = open_lake("memory:///", &S3Options::default()).unwrap();
        assert_eq!(lake.root().as_ref(), "");
        assert!(matches!(open_lake("", &S3Options::default()), Err(StoreError::InvalidUrl { .. })));
        assert!(open_lake("nosuch://x/y", &S3Options::default()).is_err());
    }

    #[test]
    fn feed_names_are_validated_when_paths_are_built() {
        let lake = open_lake("memory:///", &S3Options::default()).unwrap();
        assert!(lake.feed_dir(FeedKind::Stream, "../etc").is_err());
    }

    #[test]
    fn a_changelog_feed_lives_in_its_table_folder() {
        let lake = open_lake("memory:///", &S3Options::default()).unwrap();
        let name = crate::lake::layout::changelog_feed_name("users");
        assert_eq!(
            lake.metadata_path(FeedKind::Changelog, &name).unwrap().as_ref(),
            "tables/users/changelog/_metadata.json"
        );
        assert_eq!(
            lake.feed_path(FeedKind::Changelog, &name, "year=2024/x.parquet").unwrap().as_ref(),
            "tables/users/changelog/year=2024/x.parquet"
        );
        for bad in ["users", ".changelog", "-.changelog", "a/b.changelog"] {
            assert!(lake.feed_dir(FeedKind::Changelog, bad).is_err(), "{bad}");
        }
    }
}
