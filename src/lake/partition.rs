//! Time partitions and routing: which `year=/month=/day=[/hour=]` folder a row belongs to, and
//! splitting one RecordBatch into one batch per partition.
//!
//! Partitions are **local** calendar periods of the feed's timezone (default UTC). Around DST:
//! - spring forward: the skipped local hour has no partition (no instant maps to it);
//! - fall back: the repeated local hour is one partition covering both occurrences (two real
//!   hours), because the folder name cannot tell them apart.
//!
//! Rows whose event time is null, or outside years 0 to 9999 (e.g. nanoseconds stored in a
//! milliseconds column), are routed by the processing time given to [`RowRouter::route`] and
//! counted in [`RowStats::null_event_time_rows`] (exported as
//! `ksql_lake_null_event_time_rows_total`, and logged at most once a minute): dropping them
//! would lose data, and failing the batch would stall the feed on one bad row.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, Int64Array, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;

use super::Position;

/// Event times before year 0 or after year 9999 fit no `year=YYYY` folder (nor a file name)
/// and are treated like nulls: 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
const MIN_EVENT_MS: i64 = -62_167_219_200_000;
const MAX_EVENT_MS: i64 = 253_402_300_799_999;

/// The partition grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Partitioning {
    #[default]
    Daily,
    Hourly,
}

impl Partitioning {
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioning::Daily => "daily",
            Partitioning::Hourly => "hourly",
        }
    }
}

/// One local calendar period. Fields are in the feed's timezone; `hour` is set only for hourly
/// partitioning. Ordering follows local time, which is what the folder names sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: Option<u32>,
}

impl PartitionKey {
    /// The folder below the feed directory: `year=2024/month=01/day=02[/hour=03]`.
    pub fn relative_path(&self) -> String {
        let day = format!("year={:04}/month={:02}/day={:02}", self.year, self.month, self.day);
        match self.hour {
            Some(hour) => format!("{day}/hour={hour:02}"),
            None => day,
        }
    }

    fn local_start(&self) -> Option<NaiveDateTime> {
        NaiveDate::from_ymd_opt(self.year, self.month, self.day)?.and_hms_opt(self.hour.unwrap_or(0), 0, 0)
    }
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.relative_path())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartitionError {
    #[error("event time {event_ms} ms is outside the supported date range")]
    TimeOutOfRange { event_ms: i64 },
    #[error("event-time column `{column}` is not in the batch")]
    MissingColumn { column: String },
    #[error("column `{column}` has type {data_type}; expected Timestamp or Int64 epoch milliseconds")]
    UnsupportedType { column: String, data_type: DataType },
    #[error("could not split the batch by partition: {reason}")]
    Split { reason: String },
}

/// Grain plus timezone: everything needed to map an instant to a partition and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec {
    pub partitioning: Partitioning,
    pub timezone: Tz,
}

impl Default for PartitionSpec {
    fn default() -> Self {
        PartitionSpec { partitioning: Partitioning::Daily, timezone: chrono_tz::UTC }
    }
}

impl PartitionSpec {
    pub fn new(partitioning: Partitioning, timezone: Tz) -> Self {
        PartitionSpec { partitioning, timezone }
    }

    /// The partition holding the instant `event_ms` (epoch milliseconds).
    pub fn key_for(&self, event_ms: i64) -> Result<PartitionKey, PartitionError> {
        let local =
            self.timezone.timestamp_millis_opt(event_ms).single().ok_or(PartitionError::TimeOutOfRange { event_ms })?;
        Ok(PartitionKey {
            year: local.year(),
            month: local.month(),
            day: local.day(),
            hour: match self.partitioning {
                Partitioning::Daily => None,
                Partitioning::Hourly => Some(local.hour()),
            },
        })
    }

    /// First instant (epoch ms) that belongs to `key`.
    pub fn start_ms(&self, key: &PartitionKey) -> Result<i64, PartitionError> {
        let start = key.local_start().ok_or(PartitionError::TimeOutOfRange { event_ms: 0 })?;
        self.first_instant_at_or_after(start)
    }

    /// First instant (epoch ms) after `key`: its exclusive end.
    pub fn end_ms(&self, key: &PartitionKey) -> Result<i64, PartitionError> {
        let start = key.local_start().ok_or(PartitionError::TimeOutOfRange { event_ms: 0 })?;
        let next = match self.partitioning {
            Partitioning::Daily => start + Duration::days(1),
            Partitioning::Hourly => start + Duration::hours(1),
        };
        self.first_instant_at_or_after(next)
    }

    /// Resolves a local wall time: the earlier instant of a repeated time, and for a skipped
    /// time the first valid one after it (DST gaps are 30 or 60 minutes; checked in 15-minute
    /// steps up to 4 hours).
    fn first_instant_at_or_after(&self, local: NaiveDateTime) -> Result<i64, PartitionError> {
        for step in 0..=16 {
            let candidate = local + Duration::minutes(15 * step);
            if let Some(instant) = self.timezone.from_local_datetime(&candidate).earliest() {
                return Ok(instant.timestamp_millis());
            }
        }
        Err(PartitionError::TimeOutOfRange { event_ms: local.and_utc().timestamp_millis() })
    }
}

/// Where the event time of a row comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTime {
    /// A column by name: Timestamp (any unit, converted to ms) or Int64 epoch milliseconds,
    /// typically ksqlDB's `ROWTIME`.
    Column(String),
    /// The processing time passed to [`RowRouter::route`].
    ProcessingTime,
}

/// What the buffer needs to know about the rows of one routed batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowStats {
    pub rows: usize,
    /// Event time (ms) of the first row, in batch order: it names the file.
    pub first_event_ms: i64,
    pub min_event_ms: i64,
    pub max_event_ms: i64,
    /// Position of the first row with one: it makes the file name deterministic.
    pub first_position: Option<Position>,
    /// Rows whose event time was null (or unrepresentable) and were routed by processing time.
    pub null_event_time_rows: usize,
}

/// The rows of one input batch that fall into one partition.
#[derive(Debug, Clone)]
pub struct RoutedBatch {
    pub key: PartitionKey,
    pub batch: RecordBatch,
    pub stats: RowStats,
    /// The ksqlDB positions of its rows that have one, in row order.
    pub positions: Vec<Position>,
}

/// Splits batches by partition.
#[derive(Debug, Clone)]
pub struct RowRouter {
    pub spec: PartitionSpec,
    pub event_time: EventTime,
    /// Where rows without a usable event time go.
    pub invalid: InvalidEventTime,
}

/// Where a row whose event time is null or outside years 0 to 9999 is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidEventTime {
    /// By the time it was received (the processing time given to [`RowRouter::route`]).
    #[default]
    ArrivalTime,
    /// Into the partition of 1970-01-01T00:00:00Z, where such rows are easy to find.
    FixedPartition,
}

impl RowRouter {
    pub fn new(spec: PartitionSpec, event_time: EventTime) -> Self {
        RowRouter { spec, event_time, invalid: InvalidEventTime::default() }
    }

    /// Rows without a usable event time go to `invalid`'s partition.
    pub fn with_invalid_event_time(mut self, invalid: InvalidEventTime) -> Self {
        self.invalid = invalid;
        self
    }

    /// Routes every row of `batch`; `positions` has one entry per row (its ksqlDB position, read
    /// where the row was decoded) or is empty when no row has one. Output is ordered by
    /// partition; rows keep their order within each output batch. When all rows fall into one
    /// partition the batch is passed through without copying.
    pub fn route(
        &self,
        batch: &RecordBatch,
        positions: &[Option<Position>],
        processing_ms: i64,
    ) -> Result<Vec<RoutedBatch>, PartitionError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        if !positions.is_empty() && positions.len() != batch.num_rows() {
            return Err(PartitionError::Split {
                reason: format!("{} positions for {} rows", positions.len(), batch.num_rows()),
            });
        }
        let (times, null_rows) = self.event_times(batch, processing_ms)?;

        // Rows usually arrive in time order, so remember the current partition's range and only
        // do the timezone lookup when a row leaves it.
        let mut groups: BTreeMap<PartitionKey, Vec<u32>> = BTreeMap::new();
        let mut current: Option<(PartitionKey, i64, i64)> = None;
        let mut row_keys = Vec::with_capacity(times.len());
        for &event_ms in &times {
            let key = match current {
                Some((key, start, end)) if event_ms >= start && event_ms < end => key,
                _ => {
                    let key = self.spec.key_for(event_ms)?;
                    current = Some((key, self.spec.start_ms(&key)?, self.spec.end_ms(&key)?));
                    key
                }
            };
            row_keys.push(key);
        }

        let single = row_keys.iter().all(|key| *key == row_keys[0]);
        if single {
            let all: Vec<u32> = (0..times.len() as u32).collect();
            let (stats, positions) = stats_for(&all, &times, &null_rows, positions);
            return Ok(vec![RoutedBatch { key: row_keys[0], batch: batch.clone(), stats, positions }]);
        }
        for (row, key) in row_keys.iter().enumerate() {
            groups.entry(*key).or_default().push(row as u32);
        }
        let mut routed = Vec::with_capacity(groups.len());
        for (key, rows) in groups {
            let indices = UInt32Array::from(rows.clone());
            let part = take_record_batch(batch, &indices)
                .map_err(|error| PartitionError::Split { reason: error.to_string() })?;
            let (stats, positions) = stats_for(&rows, &times, &null_rows, positions);
            routed.push(RoutedBatch { key, batch: part, stats, positions });
        }
        Ok(routed)
    }

    /// Event time per row (ms) and whether it was null.
    fn event_times(&self, batch: &RecordBatch, processing_ms: i64) -> Result<(Vec<i64>, Vec<bool>), PartitionError> {
        let name = match &self.event_time {
            EventTime::ProcessingTime => {
                return Ok((vec![processing_ms; batch.num_rows()], vec![false; batch.num_rows()]));
            }
            EventTime::Column(name) => name,
        };
        let column =
            batch.column_by_name(name).ok_or_else(|| PartitionError::MissingColumn { column: name.clone() })?;
        let millis: Int64Array = match column.data_type() {
            DataType::Int64 => column.as_primitive::<Int64Type>().clone(),
            DataType::Timestamp(_, tz) => {
                let target = DataType::Timestamp(TimeUnit::Millisecond, tz.clone());
                let converted = cast(column, &target).map_err(|_| PartitionError::UnsupportedType {
                    column: name.clone(),
                    data_type: column.data_type().clone(),
                })?;
                converted.as_primitive::<TimestampMillisecondType>().reinterpret_cast::<Int64Type>()
            }
            other => {
                return Err(PartitionError::UnsupportedType { column: name.clone(), data_type: other.clone() });
            }
        };
        let nulls: Vec<bool> = (0..millis.len())
            .map(|row| millis.is_null(row) || !(MIN_EVENT_MS..=MAX_EVENT_MS).contains(&millis.value(row)))
            .collect();
        let fallback = match self.invalid {
            InvalidEventTime::ArrivalTime => processing_ms,
            InvalidEventTime::FixedPartition => 0,
        };
        let values = (0..millis.len()).map(|row| if nulls[row] { fallback } else { millis.value(row) }).collect();
        Ok((values, nulls))
    }
}

fn stats_for(rows: &[u32], times: &[i64], nulls: &[bool], positions: &[Option<Position>]) -> (RowStats, Vec<Position>) {
    let mut stats = RowStats {
        rows: rows.len(),
        first_event_ms: times[rows[0] as usize],
        min_event_ms: i64::MAX,
        max_event_ms: i64::MIN,
        ..RowStats::default()
    };
    let mut known = Vec::with_capacity(if positions.is_empty() { 0 } else { rows.len() });
    for &row in rows {
        let row = row as usize;
        stats.min_event_ms = stats.min_event_ms.min(times[row]);
        stats.max_event_ms = stats.max_event_ms.max(times[row]);
        if nulls[row] {
            stats.null_event_time_rows += 1;
        }
        let Some(&Some(position)) = positions.get(row) else { continue };
        if stats.first_position.is_none() {
            stats.first_position = Some(position);
        }
        known.push(position);
    }
    (stats, known)
}

#[cfg(test)]
mod tests;
