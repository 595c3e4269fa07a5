//! Names and paths inside the lake: feed kinds, feed-name validation and data file names.
//!
//! A data file is named `data_YYYYMMDD_HHMMSS_<unique>.parquet`:
//! - `YYYYMMDD_HHMMSS` is the event time of the **first row in the file** (the first row the
//!   buffer received, not the smallest), formatted in the feed's timezone;
//! - `<unique>` is `p<ROWPARTITION, 10 digits>o<ROWOFFSET, 19 digits>` of that first row when the
//!   push query carries positions. It is deterministic: a replay of the same rows after a crash
//!   produces the same name, so the create-only put detects the earlier attempt instead of
//!   writing a duplicate. Zero-padding keeps names of one partition lexically sorted by offset.
//! - Without positions, `<unique>` is a 26-character ULID (48-bit milliseconds + 80 random bits,
//!   Crockford base32): unique and sortable by creation time, but a replay writes a new file.

use std::fmt::Write as _;

use chrono::TimeZone;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::commit::Runs;
use super::Position;

/// Name of the per-feed manifest, next to the partition folders.
pub const METADATA_FILE: &str = "_metadata.json";

/// Whether a feed comes from a ksqlDB STREAM or TABLE; it picks the top-level folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    #[default]
    Stream,
    Table,
    /// The change stream of a table feed with `changelog = true`: the feed `<table>.changelog`,
    /// written like a stream under `tables/<table>/changelog/` (see [`changelog_feed_name`]).
    Changelog,
}

/// What a table feed's name gets to name its changelog feed.
pub const CHANGELOG_SUFFIX: &str = ".changelog";

/// The feed that keeps the changelog of table feed `table`.
pub fn changelog_feed_name(table: &str) -> String {
    format!("{table}{CHANGELOG_SUFFIX}")
}

impl FeedKind {
    /// The folder under the lake root: `streams` or `tables`.
    pub fn dir(self) -> &'static str {
        match self {
            FeedKind::Stream => "streams",
            FeedKind::Table | FeedKind::Changelog => "tables",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Stream => "stream",
            FeedKind::Table => "table",
            FeedKind::Changelog => "changelog",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("feed name `{name}` is invalid: {reason}")]
    InvalidFeedName { name: String, reason: &'static str },
    #[error("feed `{name}` is a changelog feed, but its name does not end in `.changelog`")]
    NotAChangelog { name: String },
    #[error("event time {event_ms} ms is outside the supported date range")]
    TimeOutOfRange { event_ms: i64 },
}

/// The one rule for feed names, checked when the config is loaded and again wherever a path is
/// built from a name. A name becomes a folder, a metric label and often a table name in
/// Trino or Spark, so it is 1 to 128 ASCII letters, digits, `_`, `.` and `-`, starting with a
/// letter or digit (names starting with `_` or `.` are hidden from most lake readers), and
/// never `..`.
pub fn validate_feed_name(name: &str) -> Result<(), LayoutError> {
    let invalid = |reason| Err(LayoutError::InvalidFeedName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_FEED_NAME_BYTES {
        return invalid("it is longer than 128 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return invalid("only letters, digits, `_`, `.` and `-` are allowed");
    }
    if name.contains("..") {
        return invalid("it contains `..`");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("it must start with a letter or digit");
    }
    Ok(())
}

/// The longest feed name.
pub const MAX_FEED_NAME_BYTES: usize = 128;

/// The data file name for a file whose first row has `first_event_ms` and, if known,
/// `first_position`; `runs` are the file's exact rows. `creation_ms` feeds the ULID when there
/// is no position.
///
/// With positions the name is deterministic: the same rows always get the same name, so a
/// retry whose response was lost finds its own file. The digest of the runs tells apart two
/// files that start at the same row but hold different rows (an at-least-once replay that
/// buffered more rows than the first time), which must both be kept.
pub fn data_file_name(
    first_event_ms: i64,
    timezone: Tz,
    first_position: Option<Position>,
    runs: &Runs,
    creation_ms: i64,
) -> Result<String, LayoutError> {
    let local = timezone
        .timestamp_millis_opt(first_event_ms)
        .single()
        .ok_or(LayoutError::TimeOutOfRange { event_ms: first_event_ms })?;
    let unique = match first_position {
        Some(position) => format!("{}_{:08x}", position_id(position), runs_digest(runs)),
        None => ulid(creation_ms),
    };
    Ok(format!("data_{}_{unique}.parquet", local.format("%Y%m%d_%H%M%S")))
}

/// A stable 32-bit digest (FNV-1a, folded) of a file's runs.
fn runs_digest(runs: &Runs) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (&partition, ranges) in runs {
        let bytes = std::iter::once(u64::from(partition)).chain(ranges.iter().flat_map(|&(a, b)| [a, b]));
        for byte in bytes.flat_map(u64::to_le_bytes) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (hash ^ (hash >> 32)) as u32
}

/// `p<partition>o<offset>`, zero-padded to the widest u32 / non-negative i64 so names sort.
pub fn position_id(position: Position) -> String {
    format!("p{:010}o{:019}", position.partition, position.offset)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID: 10 base32 characters of milliseconds, then 16 of randomness.
pub fn ulid(now_ms: i64) -> String {
    let time = (now_ms.max(0) as u128) & ((1u128 << 48) - 1);
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let value = (time << 80) | random;
    let mut out = String::with_capacity(26);
    for index in (0..26).rev() {
        let digit = ((value >> (index * 5)) & 0x1f) as usize;
        let _ = out.write_char(CROCKFORD[digit] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_names_are_single_safe_segments() {
        assert!(validate_feed_name("orders_v2.eu-1").is_ok());
        assert!(validate_feed_name(&"a".repeat(MAX_FEED_NAME_BYTES)).is_ok());
        let long = "a".repeat(MAX_FEED_NAME_BYTES + 1);
        for bad in ["", "_x", "-x", ".x", "a..b", "a/b", "a\\b", "a b", "é", "..", long.as_str()] {
            assert!(validate_feed_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn deterministic_name_uses_local_first_event_time_and_position() {
        // 2024-03-10T01:02:03.456Z is 2024-03-09 20:02:03 in New York (UTC-5).
        let ms = 1_710_032_523_456;
        let position = Some(Position { partition: 3, offset: 12_345 });
        let runs = Runs::from([(3, vec![(12_345, 12_400)])]);
        let utc = data_file_name(ms, chrono_tz::UTC, position, &runs, 0).unwrap();
        assert!(utc.starts_with("data_20240310_010203_p0000000003o0000000000000012345_"), "{utc}");
        assert_eq!(utc.len(), "data_20240310_010203_p0000000003o0000000000000012345_01234567.parquet".len());
        let ny = data_file_name(ms, chrono_tz::America::New_York, position, &runs, 0).unwrap();
        assert!(ny.starts_with("data_20240309_200203_p0000000003o0000000000000012345_"), "{ny}");
        // Same rows, same name: the property retries rely on.
        assert_eq!(utc, data_file_name(ms, chrono_tz::UTC, position, &runs, 99).unwrap());
        // Same first row, other rows: another name, so an at-least-once replay never collides.
        let more = Runs::from([(3, vec![(12_345, 12_500)])]);
        assert_ne!(utc, data_file_name(ms, chrono_tz::UTC, position, &more, 0).unwrap());
    }

    #[test]
    fn position_ids_sort_like_offsets() {
        let small = position_id(Position { partition: 0, offset: 9 });
        let large = position_id(Position { partition: 0, offset: 10 });
        assert!(small < large);
    }

    #[test]
    fn ulids_are_unique_and_sort_by_time() {
        let first = ulid(1_000);
        let second = ulid(1_000);
        let later = ulid(2_000);
        assert_eq!(first.len(), 26);
        assert_ne!(first, second);
        assert!(first < later && second < later);
        let name = data_file_name(0, chrono_tz::UTC, None, &Runs::new(), 5).unwrap();
        assert!(name.starts_with("data_19700101_000000_") && name.ends_with(".parquet"));
    }
}
