//! `ksql-lake report`: what the lake holds, per feed, from the manifests alone (no data file is
//! read, ksqlDB is not asked). The JSON shape is documented in `docs/REPORT.md` and stable:
//! fields are only ever added.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::feeds::FeedRegistry;
use crate::lake::manifests::load_full;
use crate::lake::metadata::FeedMetadata;
use crate::lake::{FeedKind, Lake};

/// A file below this size counts as small (a lake reader pays per file; the default flush
/// target is 128 MiB).
pub const SMALL_FILE_BYTES: u64 = 8 << 20;

/// Version of the JSON shape.
pub const REPORT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedReport {
    pub feed: String,
    /// `stream` or `table`.
    pub kind: &'static str,
    /// `active` or `archived` (from `<lake>/feeds/`); `active` for a feed only a config file names.
    pub state: &'static str,
    pub total_records: u64,
    pub total_bytes: u64,
    pub files: u64,
    pub partitions: u64,
    pub last_export: Option<String>,
    /// Seconds between `last_export` and the report.
    pub last_export_age_seconds: Option<i64>,
    /// Tables: the latest complete version, and how many are kept.
    pub latest_version: Option<u32>,
    pub versions_kept: u64,
    /// Files under [`SMALL_FILE_BYTES`] among all files (0 when there are none).
    pub small_file_ratio: f64,
    /// Rows in files written after their partition had closed.
    pub late_rows: u64,
    /// Rows kept in the dead letter.
    pub rejected_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub feeds: u64,
    pub total_records: u64,
    pub total_bytes: u64,
    pub files: u64,
    pub partitions: u64,
    pub late_rows: u64,
    pub rejected_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub generated_at: String,
    pub lake: String,
    pub feeds: Vec<FeedReport>,
    pub totals: Totals,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("listing {path} failed")]
    List {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error(transparent)]
    Manifest(#[from] crate::lake::metadata::ManifestError),
    #[error(transparent)]
    Layout(#[from] crate::lake::LayoutError),
    #[error(transparent)]
    Feeds(#[from] crate::feeds::FeedsError),
    #[error("no feed named `{0}` in the lake")]
    UnknownFeed(String),
}

/// One feed's figures from its manifest.
pub fn feed_report(metadata: &FeedMetadata, state: &'static str, now: DateTime<Utc>) -> FeedReport {
    let stream_files = metadata.partitions.iter().flat_map(|partition| &partition.files);
    let table_files = metadata.versions.iter().flat_map(|version| &version.files);
    let sizes: Vec<u64> =
        stream_files.clone().map(|file| file.bytes).chain(table_files.map(|file| file.bytes)).collect();
    let small = sizes.iter().filter(|bytes| **bytes < SMALL_FILE_BYTES).count();
    let age = metadata
        .last_export
        .as_deref()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| (now - time.with_timezone(&Utc)).num_seconds());
    FeedReport {
        feed: metadata.source.clone(),
        kind: metadata.kind.as_str(),
        state,
        total_records: metadata.total_records,
        total_bytes: metadata.total_bytes,
        files: sizes.len() as u64,
        partitions: metadata.partitions.len() as u64,
        last_export: metadata.last_export.clone(),
        last_export_age_seconds: age,
        latest_version: metadata.latest_version,
        versions_kept: metadata.versions.len() as u64,
        small_file_ratio: if sizes.is_empty() { 0.0 } else { small as f64 / sizes.len() as f64 },
        late_rows: stream_files.filter(|file| file.late).map(|file| file.records).sum(),
        rejected_rows: metadata.dead_letter.records,
    }
}

/// Reads every feed's manifest in the lake (or only `only`).
pub async fn build(lake: &Lake, only: Option<&str>) -> Result<Report, ReportError> {
    let now = Utc::now();
    let registry = FeedRegistry::new(lake.clone());
    let archived = registry.archived_names().await?;
    let mut feeds = Vec::new();
    for kind in [FeedKind::Stream, FeedKind::Table] {
        for name in feed_names(lake, kind).await? {
            let changelog = crate::lake::changelog_feed_name(&name);
            if only.is_some_and(|only| only != name && only != changelog) {
                continue;
            }
            let state = if archived.contains(&name) { "archived" } else { "active" };
            let path = lake.metadata_path(kind, &name)?;
            if only.is_none_or(|only| only == name) {
                if let Some((metadata, _)) = load_full(lake.store().as_ref(), &path).await? {
                    feeds.push(feed_report(&metadata, state, now));
                }
            }
            if kind == FeedKind::Table {
                // `changelog = true`: the table's changes, a feed of their own
                let path = lake.metadata_path(FeedKind::Changelog, &changelog)?;
                if let Some((metadata, _)) = load_full(lake.store().as_ref(), &path).await? {
                    feeds.push(feed_report(&metadata, state, now));
                }
            }
        }
    }
    if let Some(only) = only.filter(|_| feeds.is_empty()) {
        return Err(ReportError::UnknownFeed(only.to_string()));
    }
    feeds.sort_by(|a, b| (a.kind, &a.feed).cmp(&(b.kind, &b.feed)));
    let totals = Totals {
        feeds: feeds.len() as u64,
        total_records: feeds.iter().map(|feed| feed.total_records).sum(),
        total_bytes: feeds.iter().map(|feed| feed.total_bytes).sum(),
        files: feeds.iter().map(|feed| feed.files).sum(),
        partitions: feeds.iter().map(|feed| feed.partitions).sum(),
        late_rows: feeds.iter().map(|feed| feed.late_rows).sum(),
        rejected_rows: feeds.iter().map(|feed| feed.rejected_rows).sum(),
    };
    Ok(Report {
        format_version: REPORT_FORMAT_VERSION,
        generated_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        lake: lake.to_string(),
        feeds,
        totals,
    })
}

/// The feed folders under `streams/` or `tables/`.
async fn feed_names(lake: &Lake, kind: FeedKind) -> Result<Vec<String>, ReportError> {
    let dir: object_store::path::Path = lake.root().parts().chain(std::iter::once(kind.dir().into())).collect();
    let listing = lake
        .store()
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|source| ReportError::List { path: dir.to_string(), source })?;
    let mut names: Vec<String> =
        listing.common_prefixes.iter().filter_map(|prefix| prefix.filename().map(str::to_string)).collect();
    names.retain(|name| crate::lake::layout::validate_feed_name(name).is_ok());
    names.sort();
    Ok(names)
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1048576.0)
}

fn age(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// The console table's columns: width, and whether the column is right-aligned.
const COLUMNS: [(usize, bool); 12] = [
    (28, false),
    (9, false),
    (8, false),
    (12, true),
    (10, true),
    (6, true),
    (6, true),
    (8, true),
    (8, true),
    (6, true),
    (8, true),
    (8, true),
];

fn table_row(out: &mut String, cells: [String; 12]) {
    let padded: Vec<String> = cells
        .iter()
        .zip(COLUMNS)
        .map(|(cell, (width, right))| if right { format!("{cell:>width$}") } else { format!("{cell:<width$}") })
        .collect();
    let _ = writeln!(out, "{}", padded.join(" "));
}

/// The console table.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let header =
        ["FEED", "KIND", "STATE", "RECORDS", "MIB", "FILES", "PARTS", "LAST", "VERSION", "SMALL", "LATE", "REJECTED"];
    table_row(&mut out, header.map(String::from));
    for feed in &report.feeds {
        let version = match feed.latest_version {
            Some(version) => format!("v{version}/{}", feed.versions_kept),
            None => "-".into(),
        };
        table_row(
            &mut out,
            [
                feed.feed.clone(),
                feed.kind.to_string(),
                feed.state.to_string(),
                feed.total_records.to_string(),
                mib(feed.total_bytes),
                feed.files.to_string(),
                feed.partitions.to_string(),
                age(feed.last_export_age_seconds),
                version,
                format!("{:.0}%", feed.small_file_ratio * 100.0),
                feed.late_rows.to_string(),
                feed.rejected_rows.to_string(),
            ],
        );
    }
    let totals = &report.totals;
    table_row(
        &mut out,
        [
            format!("TOTAL ({} feeds)", totals.feeds),
            String::new(),
            String::new(),
            totals.total_records.to_string(),
            mib(totals.total_bytes),
            totals.files.to_string(),
            totals.partitions.to_string(),
            String::new(),
            String::new(),
            String::new(),
            totals.late_rows.to_string(),
            totals.rejected_rows.to_string(),
        ],
    );
    out
}

/// CSV: a header, one line per feed, then a `TOTAL` line.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::from(
        "feed,kind,state,total_records,total_bytes,files,partitions,last_export,last_export_age_seconds,\
         latest_version,versions_kept,small_file_ratio,late_rows,rejected_rows\n",
    );
    let opt = |value: Option<String>| value.unwrap_or_default();
    for feed in &report.feeds {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{:.4},{},{}",
            feed.feed,
            feed.kind,
            feed.state,
            feed.total_records,
            feed.total_bytes,
            feed.files,
            feed.partitions,
            opt(feed.last_export.clone()),
            opt(feed.last_export_age_seconds.map(|s| s.to_string())),
            opt(feed.latest_version.map(|v| v.to_string())),
            feed.versions_kept,
            feed.small_file_ratio,
            feed.late_rows,
            feed.rejected_rows
        );
    }
    let totals = &report.totals;
    let _ = writeln!(
        out,
        "TOTAL,,,{},{},{},{},,,,,,{},{}",
        totals.total_records,
        totals.total_bytes,
        totals.files,
        totals.partitions,
        totals.late_rows,
        totals.rejected_rows
    );
    out
}
