//! Throughput of the row decoder on the 8-column shape used for sizing (bigint, string,
//! double, decimal, timestamp, boolean, int, string).
//!
//! `cargo bench --bench rows [-- ROWS]` (default 2,000,000 rows, batches of 8192).

use std::time::Instant;

use ksql_lake::schema::{parse_schema, RowDecoder};

const BATCH_ROWS: usize = 8192;

const SCHEMA: &str = "`ID` BIGINT, `NAME` STRING, `PRICE` DOUBLE, `AMOUNT` DECIMAL(20, 4), \
                      `AT` TIMESTAMP, `OK` BOOLEAN, `QTY` INTEGER, `NOTE` STRING";

/// The rows as one text buffer plus each row's byte range.
fn generate(count: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut text = Vec::with_capacity(count * 130);
    let mut ranges = Vec::with_capacity(count);
    let base_ms: i64 = 1_700_000_000_000;
    for i in 0..count {
        let start = text.len();
        let ms = base_ms + i as i64 * 37;
        let secs = ms / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let date = chrono::DateTime::from_timestamp(days * 86_400, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let row = format!(
            "[{},\"customer-{}\",{}.{},{}.{:04},\"{}T{:02}:{:02}:{:02}.{:03}\",{},{},\"note {} \\\"quoted\\\"\"]",
            1_000_000_000_000i64 + i as i64,
            i % 10_007,
            i % 1000,
            i % 97 + 1,
            i % 100_000,
            i % 10_000,
            date,
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            ms % 1000,
            i % 2 == 0,
            i % 50_000,
            i % 13,
        );
        text.extend_from_slice(row.as_bytes());
        ranges.push((start, text.len()));
    }
    (text, ranges)
}

fn main() {
    let count = std::env::args().skip(1).find_map(|arg| arg.parse::<usize>().ok()).unwrap_or(2_000_000);
    let columns = parse_schema(SCHEMA).expect("benchmark schema parses");
    let (text, ranges) = generate(count);
    let mut decoder = RowDecoder::new(&columns);

    // Warm-up: one batch, so the first allocations are not timed alone.
    for &(start, end) in ranges.iter().take(BATCH_ROWS) {
        decoder.append(&text[start..end]).expect("generated row decodes");
    }
    decoder.finish();

    let started = Instant::now();
    let mut rows_out = 0;
    for chunk in ranges.chunks(BATCH_ROWS) {
        for &(start, end) in chunk {
            decoder.append(&text[start..end]).expect("generated row decodes");
        }
        rows_out += decoder.finish().num_rows();
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(rows_out, count);
    println!(
        "rows: {count} rows ({} bytes) in {elapsed:.3} s: {:.0} rows/s, {:.1} MB/s",
        text.len(),
        count as f64 / elapsed,
        text.len() as f64 / elapsed / 1e6,
    );
}
