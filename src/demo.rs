//! The demo dataset: the original design's sources (`TRANSACTION_STREAM`,
//! `TRANSACTION_FLATTENED` and the table `USER_TRANSACTION_SUMMARY`) with realistic generated
//! rows. History over the last days is loaded first (event times in order, so days close one
//! after another), then rows keep arriving live at a steady rate.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::schema::{parse_schema, Column};
use crate::simulator::{Simulator, Value};

pub const TRANSACTION_STREAM: &str = "TRANSACTION_STREAM";
pub const TRANSACTION_FLATTENED: &str = "TRANSACTION_FLATTENED";
pub const USER_TRANSACTION_SUMMARY: &str = "USER_TRANSACTION_SUMMARY";

const PARTITIONS: u32 = 3;
const USERS: u32 = 500;
const MERCHANTS: [(&str, &str); 8] = [
    ("Corner Grocer", "groceries"),
    ("Fuel Stop", "fuel"),
    ("Book Nook", "books"),
    ("Cafe Lumen", "restaurants"),
    ("Metro Transit", "transport"),
    ("Stream Box", "subscriptions"),
    ("Gadget Hub", "electronics"),
    ("Pharma Plus", "health"),
];
const COUNTRIES: [&str; 5] = ["US", "DE", "FR", "GB", "JP"];
const CURRENCIES: [&str; 3] = ["USD", "EUR", "GBP"];

fn columns(schema: &str) -> Vec<Column> {
    parse_schema(schema).expect("the demo schemas are valid")
}

/// Creates the demo sources in the simulator.
pub fn create_sources(simulator: &Simulator) {
    simulator
        .create_stream(
            TRANSACTION_STREAM,
            columns(
                "`TRANSACTION_ID` STRING, `USER_ID` STRING, `AMOUNT` DECIMAL(12, 2), `CURRENCY` STRING, \
                 `MERCHANT` STRUCT<`NAME` STRING, `CATEGORY` STRING, `COUNTRY` STRING>, `TAGS` ARRAY<STRING>, \
                 `ATTRIBUTES` MAP<STRING, STRING>, `CARD_PRESENT` BOOLEAN, `TXN_TS` TIMESTAMP",
            ),
            PARTITIONS,
        )
        .expect("demo stream created once");
    simulator
        .create_stream(
            TRANSACTION_FLATTENED,
            columns(
                "`TRANSACTION_ID` STRING, `USER_ID` STRING, `AMOUNT` DOUBLE, `CURRENCY` STRING, \
                 `MERCHANT_NAME` STRING, `MERCHANT_CATEGORY` STRING, `COUNTRY` STRING, `CARD_PRESENT` BOOLEAN, \
                 `TXN_DATE` DATE, `TXN_TIME` TIME, `TXN_TS` TIMESTAMP",
            ),
            PARTITIONS,
        )
        .expect("demo stream created once");
    simulator
        .create_table(
            USER_TRANSACTION_SUMMARY,
            columns("`USER_ID` STRING KEY"),
            columns("`TXN_COUNT` BIGINT, `TOTAL_AMOUNT` DECIMAL(14, 2), `LAST_TXN_TS` TIMESTAMP"),
            PARTITIONS,
        )
        .expect("demo table created once");
}

/// Generates transactions and feeds all three sources.
pub struct Generator {
    rng: StdRng,
    sequence: u64,
    /// Per user: count and total in cents, for the summary table.
    totals: Vec<(i64, i128)>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator { rng: StdRng::seed_from_u64(seed), sequence: 0, totals: vec![(0, 0); USERS as usize] }
    }

    /// Produces one transaction at `event_ms` into every demo source.
    pub fn produce(&mut self, simulator: &Simulator, event_ms: i64) {
        self.sequence += 1;
        let user = self.rng.random_range(0..USERS);
        let user_id = format!("user_{user:04}");
        let transaction_id = format!("txn_{:010}", self.sequence);
        let cents: i128 = self.rng.random_range(50..50_000);
        let (merchant, category) = MERCHANTS[self.rng.random_range(0..MERCHANTS.len())];
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let currency = CURRENCIES[self.rng.random_range(0..CURRENCIES.len())];
        let card_present = self.rng.random_bool(0.6);
        let mut tags = vec![Value::string(category)];
        if cents > 20_000 {
            tags.push(Value::string("large"));
        }
        if !card_present {
            tags.push(Value::string("online"));
        }
        let channel = if card_present { "pos" } else { "web" };
        let attributes = Value::Map(vec![
            (Value::string("channel"), Value::string(channel)),
            (Value::string("risk"), if cents > 40_000 { Value::string("review") } else { Value::Null }),
        ]);
        let _ = simulator.produce(
            TRANSACTION_STREAM,
            None,
            event_ms,
            vec![
                Value::string(transaction_id.clone()),
                Value::string(user_id.clone()),
                Value::Decimal { unscaled: cents, scale: 2 },
                Value::string(currency),
                Value::Struct(vec![
                    ("NAME".into(), Value::string(merchant)),
                    ("CATEGORY".into(), Value::string(category)),
                    ("COUNTRY".into(), Value::string(country)),
                ]),
                Value::Array(tags),
                attributes,
                Value::Boolean(card_present),
                Value::Timestamp(event_ms),
            ],
        );
        let day_ms = 86_400_000;
        let _ = simulator.produce(
            TRANSACTION_FLATTENED,
            None,
            event_ms,
            vec![
                Value::string(transaction_id),
                Value::string(user_id.clone()),
                Value::Double(cents as f64 / 100.0),
                Value::string(currency),
                Value::string(merchant),
                Value::string(category),
                Value::string(country),
                Value::Boolean(card_present),
                Value::Date(event_ms.div_euclid(day_ms) as i32),
                Value::Time(event_ms.rem_euclid(day_ms) as i32),
                Value::Timestamp(event_ms),
            ],
        );
        let totals = &mut self.totals[user as usize];
        totals.0 += 1;
        totals.1 += cents;
        let _ = simulator.produce(
            USER_TRANSACTION_SUMMARY,
            None,
            event_ms,
            vec![
                Value::string(user_id),
                Value::Bigint(totals.0),
                Value::Decimal { unscaled: totals.1, scale: 2 },
                Value::Timestamp(event_ms),
            ],
        );
    }

    /// Loads `rows` transactions with event times spread evenly, in order, over `span` before `now_ms`.
    pub fn load_history(&mut self, simulator: &Simulator, now_ms: i64, span: Duration, rows: u64) {
        let span_ms = span.as_millis() as i64;
        let start = now_ms - span_ms;
        for index in 0..rows {
            let event_ms = start + (span_ms as i128 * index as i128 / rows.max(1) as i128) as i64;
            self.produce(simulator, event_ms);
        }
    }
}

/// Keeps producing `rate` transactions per second, stamped with the wall clock, until cancelled.
pub async fn produce_live(simulator: Arc<Simulator>, mut generator: Generator, rate: u32, stop: CancellationToken) {
    let tick = Duration::from_millis(100);
    let per_tick = (rate as f64 / 10.0).max(0.0);
    let mut carry = 0.0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        carry += per_tick;
        let now_ms = chrono::Utc::now().timestamp_millis();
        while carry >= 1.0 {
            generator.produce(&simulator, now_ms);
            carry -= 1.0;
        }
    }
}
