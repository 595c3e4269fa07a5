//! A stream with every ksqlDB type, rows whose every value follows from the row's ID, and a
//! checker that reads a lake back and verifies each row value by value and partition by
//! partition.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type, Time32MillisecondType, TimestampMillisecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use futures::TryStreamExt;
use ksql_lake::config::Config;
use ksql_lake::metrics::{Health, Metrics};
use ksql_lake::pipeline::{run_with, RunOptions, RunSummary};
use ksql_lake::schema::parse_schema;
use ksql_lake::simulator::{Simulator, SimulatorConfig, SimulatorHandle, Value};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_util::sync::CancellationToken;

pub const SOURCE: &str = "EVERYTHING";
/// 2024-05-01T00:00:00Z: rows spread over three days from here, so daily and hourly partitions
/// both have several values.
pub const BASE_MS: i64 = 1_714_521_600_000;
pub const SPAN_MS: i64 = 3 * 86_400_000;

pub const SCHEMA: &str = "`ID` BIGINT, `FLAG` BOOLEAN, `QTY` INTEGER, `PRICE` DOUBLE, `AMOUNT` DECIMAL(12, 2), \
    `NAME` STRING, `BLOB` BYTES, `TS` TIMESTAMP, `D` DATE, `T` TIME, `TAGS` ARRAY<STRING>, \
    `ATTRS` MAP<STRING, INTEGER>, `INFO` STRUCT<`CITY` STRING, `ZIP` INTEGER, `GEO` STRUCT<`LAT` DOUBLE>>, \
    `NESTED` ARRAY<MAP<STRING, ARRAY<BIGINT>>>";

pub fn event_ms(id: i64, rows: i64) -> i64 {
    BASE_MS + id * (SPAN_MS / rows.max(1))
}

/// The ROWTIME of row `id` when 30% of rows arrive early or late by up to `lateness_ms`: what
/// real streams do at every partition boundary. With 0, event time follows the stream order.
pub fn rowtime_ms(id: i64, rows: i64, lateness_ms: i64) -> i64 {
    let in_order = event_ms(id, rows);
    if lateness_ms == 0 {
        return in_order;
    }
    // SplitMix64: a fixed, well-spread shift per row, the same for producer and checker.
    let mut mix = (id as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix = (mix ^ (mix >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mix = (mix ^ (mix >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mix ^= mix >> 31;
    if mix % 10 >= 3 {
        return in_order;
    }
    in_order + ((mix >> 8) % (2 * lateness_ms as u64 + 1)) as i64 - lateness_ms
}

/// The values of row `id`; nulls at every level for some IDs.
pub fn row(id: i64, rows: i64) -> Vec<Value> {
    let null_if = |condition: bool, value: Value| if condition { Value::Null } else { value };
    vec![
        Value::Bigint(id),
        null_if(id % 11 == 5, Value::Boolean(id % 2 == 0)),
        Value::Integer((id * 3) as i32 - 1000),
        null_if(id % 17 == 4, Value::Double(id as f64 * 0.25 + 0.1)),
        Value::Decimal { unscaled: (id * 137 - 5000) as i128, scale: 2 },
        Value::string(format!("name-{id}-é\"\\\n")),
        Value::Bytes(vec![id as u8, 0, 255]),
        Value::Timestamp(event_ms(id, rows)),
        Value::Date((id % 20_000) as i32),
        Value::Time(((id % 86_400) * 1000) as i32),
        null_if(
            id % 13 == 0,
            Value::Array(vec![Value::string(format!("t{}", id % 5)), Value::Null, Value::string("x")]),
        ),
        Value::Map(vec![(Value::string("k1"), Value::Integer((id % 100) as i32)), (Value::string("k2"), Value::Null)]),
        null_if(
            id % 19 == 7,
            Value::Struct(vec![
                ("CITY".into(), Value::string(format!("city{}", id % 10))),
                ("ZIP".into(), null_if(id % 3 == 0, Value::Integer((id % 99_999) as i32))),
                ("GEO".into(), Value::Struct(vec![("LAT".into(), Value::Double(1.5))])),
            ]),
        ),
        Value::Array(vec![Value::Map(vec![(
            Value::string("m"),
            Value::Array(vec![Value::Bigint(id), Value::Bigint(-id)]),
        )])]),
    ]
}

/// A simulator serving the every-type stream (3 partitions) with `rows` rows produced.
pub async fn simulator_with_rows(rows: i64) -> (Simulator, SimulatorHandle) {
    let simulator = Simulator::new(SimulatorConfig::default());
    simulator.create_stream(SOURCE, parse_schema(SCHEMA).unwrap(), 3).unwrap();
    produce(&simulator, 0..rows, rows);
    let handle = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (simulator, handle)
}

pub fn produce(simulator: &Simulator, ids: std::ops::Range<i64>, rows: i64) {
    produce_with_lateness(simulator, ids, rows, 0);
}

/// Like [`produce`], with ROWTIMEs from [`rowtime_ms`].
pub fn produce_with_lateness(simulator: &Simulator, ids: std::ops::Range<i64>, rows: i64, lateness_ms: i64) {
    simulator.produce_batch(SOURCE, ids.map(|id| (None, rowtime_ms(id, rows, lateness_ms), row(id, rows)))).unwrap();
}

/// A config with one feed of the every-type stream.
pub fn config(ksqldb_url: &str, lake_url: &str, partitioning: &str, extra_lake: &str, extra_feed: &str) -> Config {
    let text = format!(
        "[ksqldb]\nurl = \"{ksqldb_url}\"\n[lake]\nurl = \"{lake_url}\"\n{extra_lake}\n\
         [[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\npartitioning = \"{partitioning}\"\n{extra_feed}\n"
    );
    Config::from_toml(&text, "test", Vec::new()).unwrap()
}

pub fn fast_options() -> RunOptions {
    RunOptions {
        tick: Duration::from_millis(100),
        linger: Duration::from_millis(50),
        serve_http: false,
        ..RunOptions::default()
    }
}

/// A running pipeline and the handles a test needs to watch and stop it.
pub struct Running {
    pub metrics: Metrics,
    pub health: Health,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<RunSummary>>,
}

pub fn start(config: Config, options: RunOptions) -> Running {
    // Logs with RUST_LOG=...; silent otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let metrics = Metrics::new(prometheus::Registry::new());
    let health = Health::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_with(config, stop.clone(), metrics.clone(), health.clone(), options));
    Running { metrics, health, stop, task }
}

impl Running {
    pub fn written(&self) -> u64 {
        self.metrics.rows_written.with_label_values(&["everything"]).get()
    }

    pub fn received(&self) -> u64 {
        self.metrics.rows_received.with_label_values(&["everything"]).get()
    }

    /// Waits (bounded) until `done` holds.
    pub async fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Running) -> bool) {
        let reached = tokio::time::timeout(limit, async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "{what} not reached within {limit:?} (received {}, written {})",
            self.received(),
            self.written()
        );
    }

    pub async fn shutdown(self) -> RunSummary {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the pipeline stops within 60 s")
            .expect("the pipeline task does not panic")
            .expect("the pipeline stops cleanly")
    }
}

/// Every object under a feed folder: (path relative to the feed, bytes).
pub async fn feed_objects(store: &Arc<dyn ObjectStore>, feed_dir: &Path) -> Vec<(String, Bytes)> {
    let listed: Vec<_> = store.list(Some(feed_dir)).try_collect().await.unwrap();
    let mut objects = Vec::new();
    for meta in listed {
        let relative = meta.location.as_ref()[feed_dir.as_ref().len() + 1..].to_string();
        let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap();
        objects.push((relative, bytes));
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    objects
}

/// Checks a feed folder: only Parquet files and `_metadata.json`, every row exactly once, every
/// value equal to what was produced, every row in the partition of its ROWTIME, and the
/// metadata listing exactly the files present with their row counts.
pub fn verify_feed(objects: &[(String, Bytes)], rows: i64, hourly: bool) {
    let duplicates = verify_feed_rows(objects, rows, hourly, false);
    assert_eq!(duplicates, 0);
}

/// Like [`verify_feed`], but rows may appear more than once (at-least-once); returns how many
/// extra copies there are. Nothing may be missing.
pub fn verify_feed_rows(objects: &[(String, Bytes)], rows: i64, hourly: bool, allow_duplicates: bool) -> u64 {
    verify_feed_rows_with_lateness(objects, rows, hourly, allow_duplicates, 0)
}

/// Like [`verify_feed_rows`] for rows produced with [`produce_with_lateness`].
pub fn verify_feed_rows_with_lateness(
    objects: &[(String, Bytes)],
    rows: i64,
    hourly: bool,
    allow_duplicates: bool,
    lateness_ms: i64,
) -> u64 {
    let mut seen_ids = BTreeSet::new();
    let mut seen_positions = BTreeSet::new();
    let mut files = 0;
    let mut duplicates = 0;
    let mut rows_in_files: std::collections::BTreeMap<String, u64> = Default::default();
    let mut listed: std::collections::BTreeMap<String, u64> = Default::default();
    let metadata = ksql_lake::lake::testing::expanded_manifest(objects);
    let total_records = metadata["total_records"].as_u64().unwrap();
    for partition in metadata["partitions"].as_array().unwrap() {
        for file in partition["files"].as_array().unwrap() {
            let path = format!("{}/{}", partition["path"].as_str().unwrap(), file["name"].as_str().unwrap());
            assert!(listed.insert(path.clone(), file["records"].as_u64().unwrap()).is_none(), "{path} listed twice");
        }
    }
    assert_eq!(metadata["total_files"].as_u64().unwrap(), listed.len() as u64, "the root counts every file once");
    for (relative, bytes) in objects {
        // the manifest and its segments (one a crash left unnamed is harmless garbage)
        if relative == "_metadata.json" || ksql_lake::lake::testing::is_segment(relative) {
            continue;
        }
        // a writer killed with SIGKILL leaves its lease until it lapses (tests check that a
        // clean stop removes it)
        if relative == "_writer.lease" {
            continue;
        }
        assert!(relative.ends_with(".parquet"), "unexpected object {relative}: nothing half-written is visible");
        files += 1;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            *rows_in_files.entry(relative.clone()).or_default() += batch.num_rows() as u64;
            for index in 0..batch.num_rows() {
                let id = verify_row(&batch, index, rows);
                let partition = batch.column_by_name("ROWPARTITION").unwrap().as_primitive::<Int32Type>().value(index);
                let offset = batch.column_by_name("ROWOFFSET").unwrap().as_primitive::<Int64Type>().value(index);
                let new_id = seen_ids.insert(id);
                let new_position = seen_positions.insert((partition, offset));
                assert_eq!(new_id, new_position, "row {id} and its position ({partition}, {offset}) go together");
                if !new_id {
                    assert!(allow_duplicates, "row {id} (position {partition}/{offset}) written twice");
                    duplicates += 1;
                }
                let rowtime = batch.column_by_name("ROWTIME").unwrap().as_primitive::<Int64Type>().value(index);
                assert_eq!(rowtime, rowtime_ms(id, rows, lateness_ms));
                let expected_dir = partition_dir(rowtime, hourly);
                assert!(
                    relative.starts_with(&expected_dir),
                    "row {id} at {rowtime} is in {relative}, not {expected_dir}"
                );
            }
        }
    }
    assert!(files > 0);
    assert_eq!(seen_ids.len() as i64, rows, "every row is in the lake");
    assert_eq!(listed, rows_in_files, "_metadata.json lists exactly the files present, with their rows");
    assert_eq!(total_records, rows_in_files.values().sum::<u64>(), "metadata total matches the files");
    duplicates
}

pub fn partition_dir(ms: i64, hourly: bool) -> String {
    let time = chrono::DateTime::from_timestamp_millis(ms).unwrap();
    if hourly {
        time.format("year=%Y/month=%m/day=%d/hour=%H/").to_string()
    } else {
        time.format("year=%Y/month=%m/day=%d/").to_string()
    }
}

fn text(batch: &RecordBatch, column: &str, index: usize) -> String {
    let array = batch.column_by_name(column).unwrap();
    let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default().with_null("null")).unwrap();
    formatter.value(index).to_string()
}

/// Checks every column of one row against the values produced for its ID; returns the ID.
fn verify_row(batch: &RecordBatch, index: usize, rows: i64) -> i64 {
    let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
    let id = column("ID").as_primitive::<Int64Type>().value(index);
    let flag = column("FLAG").as_boolean();
    if id % 11 == 5 {
        assert!(flag.is_null(index));
    } else {
        assert_eq!(flag.value(index), id % 2 == 0, "FLAG of {id}");
    }
    assert_eq!(column("QTY").as_primitive::<Int32Type>().value(index), (id * 3) as i32 - 1000);
    let price = column("PRICE").as_primitive::<Float64Type>();
    if id % 17 == 4 {
        assert!(price.is_null(index));
    } else {
        assert_eq!(price.value(index), id as f64 * 0.25 + 0.1, "PRICE of {id}");
    }
    assert_eq!(column("AMOUNT").as_primitive::<Decimal128Type>().value(index), (id * 137 - 5000) as i128);
    assert_eq!(column("NAME").as_string::<i32>().value(index), format!("name-{id}-é\"\\\n"));
    assert_eq!(column("BLOB").as_binary::<i32>().value(index), [id as u8, 0, 255]);
    assert_eq!(column("TS").as_primitive::<TimestampMillisecondType>().value(index), event_ms(id, rows));
    assert_eq!(column("D").as_primitive::<Date32Type>().value(index), (id % 20_000) as i32);
    assert_eq!(column("T").as_primitive::<Time32MillisecondType>().value(index), ((id % 86_400) * 1000) as i32);
    let tags = if id % 13 == 0 { "null".to_string() } else { format!("[t{}, null, x]", id % 5) };
    assert_eq!(text(batch, "TAGS", index), tags, "TAGS of {id}");
    assert_eq!(text(batch, "ATTRS", index), format!("{{k1: {}, k2: null}}", id % 100), "ATTRS of {id}");
    let info = if id % 19 == 7 {
        "null".to_string()
    } else {
        let zip = if id % 3 == 0 { "null".to_string() } else { (id % 99_999).to_string() };
        format!("{{CITY: city{}, ZIP: {zip}, GEO: {{LAT: 1.5}}}}", id % 10)
    };
    assert_eq!(text(batch, "INFO", index), info, "INFO of {id}");
    assert_eq!(text(batch, "NESTED", index), format!("[{{m: [{id}, {}]}}]", -id), "NESTED of {id}");
    id
}
