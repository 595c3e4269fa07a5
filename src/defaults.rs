//! Every default of the service, in one place: the config falls back to these, the library's
//! `Default` impls use them, and `ksql-lake config default` prints them (a test keeps the
//! printed file equal to these values).

use std::time::Duration;

const MIB: u64 = 1024 * 1024;

pub const HTTP_LISTEN: &str = "0.0.0.0:9464";
pub const MEMORY_BUDGET_BYTES: u64 = 512 * MIB;
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No byte from a push query for this long means it stalled: it is reopened.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One request to the lake's object store.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Between attempts to commit a file while the lake fails.
pub const WRITE_RETRY_INITIAL: Duration = Duration::from_millis(250);
pub const WRITE_RETRY_MAX: Duration = Duration::from_secs(15);

pub const PARTITIONING: &str = "daily";
pub const TIMESTAMP_COLUMN: &str = "ROWTIME";
/// The `timestamp_column` value that partitions by the time ksql-lake received a row.
pub const PROCESSING_TIME: &str = "processing-time";
pub const TIMEZONE: &str = "UTC";
pub const COMPRESSION: &str = "zstd";
pub const ZSTD_LEVEL: i32 = 3;
pub const GZIP_LEVEL: u32 = 6;
pub const ROW_GROUP_ROWS: usize = 1_048_576;
pub const BATCH_ROWS: usize = 8192;
pub const FLUSH_MAX_ROWS: usize = 5_000_000;
pub const FLUSH_MAX_BYTES: u64 = 128 * MIB;
pub const FLUSH_MAX_AGE: Duration = Duration::from_secs(5 * 60);
pub const ALLOWED_LATENESS: Duration = Duration::from_secs(10 * 60);
pub const DELIVERY: &str = "exactly-once";
pub const ERROR_POLICY: &str = "dead_letter";
/// More rejected rows than this within a minute stop a feed: a stream that is mostly garbage
/// is a broken producer, not a few bad rows.
pub const MAX_REJECTED_PER_MINUTE: u64 = 1000;
pub const MAX_LINE_BYTES: u64 = 16 * MIB;
pub const INVALID_EVENT_TIME: &str = "arrival-time";
/// A feed's writer lease in the lake (see `lake::lease`).
pub const WRITER_LEASE: Duration = Duration::from_secs(30);
/// How often `run` reads the feeds kept in the lake again.
pub const FEEDS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Table feeds: how often a snapshot version is taken.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(3600);
pub const SNAPSHOT_METHOD: &str = "auto";
/// Table feeds: complete versions kept.
pub const RETENTION_VERSIONS: u64 = 7;
/// Table feeds, changelog method: the snapshot is complete once no change arrived for this long.
pub const CHANGELOG_IDLE: Duration = Duration::from_secs(2);
/// Table feeds, changelog method: how long the first row may take to arrive.
pub const CHANGELOG_FIRST_ROW: Duration = Duration::from_secs(30);

/// Files larger than this go up as a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 256 * MIB as usize;
pub const MULTIPART_PART_SIZE: usize = 16 * MIB as usize;
