use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMillisecondArray, TimestampSecondArray};
use arrow::datatypes::{Field, Schema};
use chrono::{TimeZone, Utc};
use chrono_tz::Europe::Berlin;

use super::*;

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_millis()
}

fn hourly(tz: Tz) -> PartitionSpec {
    PartitionSpec::new(Partitioning::Hourly, tz)
}

#[test]
fn daily_and_hourly_paths_in_utc() {
    let daily = PartitionSpec::default();
    let key = daily.key_for(ms(2024, 1, 2, 3, 4)).unwrap();
    assert_eq!(key.relative_path(), "year=2024/month=01/day=02");
    let key = hourly(chrono_tz::UTC).key_for(ms(2024, 1, 2, 3, 4)).unwrap();
    assert_eq!(key.relative_path(), "year=2024/month=01/day=02/hour=03");
    assert_eq!(hourly(chrono_tz::UTC).start_ms(&key).unwrap(), ms(2024, 1, 2, 3, 0));
    assert_eq!(hourly(chrono_tz::UTC).end_ms(&key).unwrap(), ms(2024, 1, 2, 4, 0));
}

#[test]
fn partitions_follow_the_feed_timezone() {
    // 23:30 UTC on Jan 1 is 00:30 on Jan 2 in Berlin (UTC+1), and 08:30 on Jan 2 in Tokyo.
    let instant = ms(2024, 1, 1, 23, 30);
    let berlin = PartitionSpec::new(Partitioning::Daily, Berlin).key_for(instant).unwrap();
    assert_eq!(berlin.relative_path(), "year=2024/month=01/day=02");
    let tokyo = hourly(chrono_tz::Asia::Tokyo).key_for(instant).unwrap();
    assert_eq!(tokyo.relative_path(), "year=2024/month=01/day=02/hour=08");
    let berlin_day = PartitionSpec::new(Partitioning::Daily, Berlin);
    assert_eq!(berlin_day.start_ms(&berlin).unwrap(), ms(2024, 1, 1, 23, 0));
    assert_eq!(berlin_day.end_ms(&berlin).unwrap(), ms(2024, 1, 2, 23, 0));
}

#[test]
fn spring_forward_skips_the_missing_local_hour() {
    // Berlin, 2024-03-31: 02:00 CET jumps to 03:00 CEST at 01:00 UTC.
    let spec = hourly(Berlin);
    let before = spec.key_for(ms(2024, 3, 31, 0, 59)).unwrap();
    let after = spec.key_for(ms(2024, 3, 31, 1, 0)).unwrap();
    assert_eq!(before.hour, Some(1));
    assert_eq!(after.hour, Some(3));
    assert_eq!(spec.end_ms(&before).unwrap(), ms(2024, 3, 31, 1, 0));
    assert_eq!(spec.start_ms(&after).unwrap(), ms(2024, 3, 31, 1, 0));
    // The day is 23 hours long.
    let day = PartitionSpec::new(Partitioning::Daily, Berlin);
    let key = day.key_for(ms(2024, 3, 31, 12, 0)).unwrap();
    assert_eq!(day.end_ms(&key).unwrap() - day.start_ms(&key).unwrap(), 23 * 3_600_000);
}

#[test]
fn fall_back_merges_the_repeated_local_hour() {
    // Berlin, 2024-10-27: 03:00 CEST falls back to 02:00 CET at 01:00 UTC, so local 02:xx
    // happens at 00:xx UTC and again at 01:xx UTC.
    let spec = hourly(Berlin);
    let first = spec.key_for(ms(2024, 10, 27, 0, 30)).unwrap();
    let second = spec.key_for(ms(2024, 10, 27, 1, 30)).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.hour, Some(2));
    assert_eq!(spec.start_ms(&first).unwrap(), ms(2024, 10, 27, 0, 0));
    assert_eq!(spec.end_ms(&first).unwrap(), ms(2024, 10, 27, 2, 0));
}

/// A batch and the positions its rows were decoded with.
struct Input {
    batch: RecordBatch,
    positions: Vec<Option<Position>>,
}

fn batch(times: Vec<Option<i64>>, partitions: Vec<i32>, offsets: Vec<i64>) -> Input {
    let positions = partitions
        .iter()
        .zip(&offsets)
        .map(|(&partition, &offset)| Some(Position { partition: partition as u32, offset: offset as u64 }))
        .collect();
    let names: Vec<String> = (0..times.len()).map(|i| format!("row{i}")).collect();
    let schema = Schema::new(vec![
        Field::new("ROWTIME", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("NAME", DataType::Utf8, true),
        Field::new("ROWPARTITION", DataType::Int32, true),
        Field::new("ROWOFFSET", DataType::Int64, true),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(TimestampMillisecondArray::from(times).with_timezone("UTC")),
            Arc::new(StringArray::from(names)),
            Arc::new(Int32Array::from(partitions)),
            Arc::new(Int64Array::from(offsets)),
        ],
    )
    .unwrap();
    Input { batch, positions }
}

fn router(spec: PartitionSpec) -> RowRouter {
    RowRouter::new(spec, EventTime::Column("ROWTIME".into()))
}

fn route(router: &RowRouter, input: &Input, processing_ms: i64) -> Result<Vec<RoutedBatch>, PartitionError> {
    router.route(&input.batch, &input.positions, processing_ms)
}

fn names(batch: &RecordBatch) -> Vec<String> {
    let column = batch.column_by_name("NAME").unwrap().as_string::<i32>();
    column.iter().map(|v| v.unwrap().to_string()).collect()
}

#[test]
fn one_batch_spanning_three_hours_is_split_in_row_order() {
    let times = vec![
        Some(ms(2024, 5, 1, 10, 5)),
        Some(ms(2024, 5, 1, 11, 0)),
        Some(ms(2024, 5, 1, 10, 59)),
        Some(ms(2024, 5, 1, 12, 30)),
        Some(ms(2024, 5, 1, 11, 45)),
    ];
    let input = batch(times, vec![0, 1, 0, 1, 0], vec![10, 7, 11, 8, 12]);
    let routed = route(&router(hourly(chrono_tz::UTC)), &input, 0).unwrap();
    let hours: Vec<Option<u32>> = routed.iter().map(|r| r.key.hour).collect();
    assert_eq!(hours, vec![Some(10), Some(11), Some(12)]);
    assert_eq!(names(&routed[0].batch), vec!["row0", "row2"]);
    assert_eq!(names(&routed[1].batch), vec!["row1", "row4"]);
    assert_eq!(names(&routed[2].batch), vec!["row3"]);
    let eleven = &routed[1].stats;
    assert_eq!(eleven.rows, 2);
    assert_eq!(eleven.first_event_ms, ms(2024, 5, 1, 11, 0));
    assert_eq!(eleven.min_event_ms, ms(2024, 5, 1, 11, 0));
    assert_eq!(eleven.max_event_ms, ms(2024, 5, 1, 11, 45));
    assert_eq!(eleven.first_position, Some(Position { partition: 1, offset: 7 }));
    assert_eq!(routed[1].positions, [Position { partition: 1, offset: 7 }, Position { partition: 0, offset: 12 }]);
    let total: usize = routed.iter().map(|r| r.batch.num_rows()).sum();
    assert_eq!(total, input.batch.num_rows());
}

#[test]
fn single_partition_batches_pass_through_unchanged() {
    let input = batch(vec![Some(ms(2024, 5, 1, 10, 1)), Some(ms(2024, 5, 1, 10, 2))], vec![0, 0], vec![1, 2]);
    let routed = route(&router(PartitionSpec::default()), &input, 0).unwrap();
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0].batch, input.batch);
    assert_eq!(routed[0].positions, [Position { partition: 0, offset: 1 }, Position { partition: 0, offset: 2 }]);
}

#[test]
fn null_event_times_use_processing_time_and_are_counted() {
    let processing = ms(2024, 6, 1, 8, 0);
    let input = batch(vec![Some(ms(2024, 5, 1, 10, 1)), None], vec![0, 0], vec![1, 2]);
    let routed = route(&router(PartitionSpec::default()), &input, processing).unwrap();
    assert_eq!(routed.len(), 2);
    assert_eq!(routed[1].key.relative_path(), "year=2024/month=06/day=01");
    assert_eq!(routed[1].stats.null_event_time_rows, 1);
    assert_eq!(routed[0].stats.null_event_time_rows, 0);
}

#[test]
fn int64_and_second_timestamps_are_accepted_other_types_are_not() {
    let event = ms(2024, 2, 29, 23, 59);
    let schema = Arc::new(Schema::new(vec![
        Field::new("T_MS", DataType::Int64, true),
        Field::new("T_S", DataType::Timestamp(TimeUnit::Second, None), true),
        Field::new("NAME", DataType::Utf8, true),
    ]));
    let input = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![event])),
            Arc::new(TimestampSecondArray::from(vec![event / 1000])),
            Arc::new(StringArray::from(vec!["x"])),
        ],
    )
    .unwrap();
    for column in ["T_MS", "T_S"] {
        let routed =
            RowRouter::new(PartitionSpec::default(), EventTime::Column(column.into())).route(&input, &[], 0).unwrap();
        assert_eq!(routed[0].key.relative_path(), "year=2024/month=02/day=29", "{column}");
        assert_eq!(routed[0].stats.first_position, None);
    }
    let wrong = RowRouter::new(PartitionSpec::default(), EventTime::Column("NAME".into())).route(&input, &[], 0);
    assert!(matches!(wrong, Err(PartitionError::UnsupportedType { .. })));
    let missing = RowRouter::new(PartitionSpec::default(), EventTime::Column("NOPE".into())).route(&input, &[], 0);
    assert!(matches!(missing, Err(PartitionError::MissingColumn { .. })));
}

#[test]
fn processing_time_routes_everything_to_now() {
    let input = batch(vec![Some(0), Some(1)], vec![0, 0], vec![1, 2]);
    let now = ms(2025, 12, 31, 23, 0);
    let routed = route(&RowRouter::new(hourly(chrono_tz::UTC), EventTime::ProcessingTime), &input, now).unwrap();
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0].key.relative_path(), "year=2025/month=12/day=31/hour=23");
}

#[test]
fn rows_without_a_usable_event_time_can_go_to_one_fixed_partition() {
    let input = batch(vec![None, Some(ms(2024, 6, 1, 8, 1)), Some(i64::MAX)], vec![0, 0, 0], vec![1, 2, 3]);
    let router = router(hourly(chrono_tz::UTC)).with_invalid_event_time(InvalidEventTime::FixedPartition);
    let routed = route(&router, &input, ms(2024, 6, 1, 9, 0)).unwrap();
    let paths: Vec<String> = routed.iter().map(|part| part.key.relative_path()).collect();
    assert_eq!(paths, ["year=1970/month=01/day=01/hour=00", "year=2024/month=06/day=01/hour=08"]);
    assert_eq!(routed[0].stats.null_event_time_rows, 2);
}

#[test]
fn unrepresentable_event_times_are_routed_like_nulls() {
    let processing = ms(2024, 6, 1, 8, 0);
    // Nanoseconds written into a milliseconds column, and a date in year 10000.
    let year_10000 = ms(9999, 12, 31, 23, 59) + 86_400_000;
    let input = batch(
        vec![Some(1_714_521_600_000_000_000), Some(year_10000), Some(ms(2024, 6, 1, 8, 1))],
        vec![0, 0, 0],
        vec![1, 2, 3],
    );
    let routed = route(&router(PartitionSpec::default()), &input, processing).unwrap();
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0].stats.null_event_time_rows, 2);
    assert_eq!(routed[0].stats.min_event_ms, processing);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    const ZONES: [Tz; 5] = [
        chrono_tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::Asia::Kolkata,
    ];

    /// Every 10 minutes of 2024 (all DST transitions of these zones included), both grains.
    #[test]
    fn a_year_of_instants_falls_inside_its_partitions() {
        let year_start = ms(2024, 1, 1, 0, 0);
        for zone in ZONES {
            for grain in [Partitioning::Daily, Partitioning::Hourly] {
                let spec = PartitionSpec::new(grain, zone);
                let mut previous: Option<PartitionKey> = None;
                for step in 0..(366 * 24 * 6) {
                    let event_ms = year_start + step * 600_000;
                    let key = spec.key_for(event_ms).unwrap();
                    let (start, end) = (spec.start_ms(&key).unwrap(), spec.end_ms(&key).unwrap());
                    assert!(start <= event_ms && event_ms < end, "{zone} {key}: {start} <= {event_ms} < {end}");
                    assert!(previous.is_none_or(|previous| previous <= key), "{zone}: keys go forward");
                    previous = Some(key);
                }
            }
        }
    }

    proptest! {
        /// Every instant lies inside its partition, and the partition's start maps back to it.
        #[test]
        fn instants_fall_inside_their_partition(
            event_ms in -2_000_000_000_000i64..5_000_000_000_000,
            zone in 0usize..ZONES.len(),
            hourly in any::<bool>(),
        ) {
            let grain = if hourly { Partitioning::Hourly } else { Partitioning::Daily };
            let spec = PartitionSpec::new(grain, ZONES[zone]);
            let key = spec.key_for(event_ms).unwrap();
            let start = spec.start_ms(&key).unwrap();
            let end = spec.end_ms(&key).unwrap();
            prop_assert!(start <= event_ms && event_ms < end, "{key}: {start} <= {event_ms} < {end}");
            prop_assert_eq!(spec.key_for(start).unwrap(), key);
            prop_assert!(spec.key_for(end).unwrap() > key);
        }
    }
}
