//! The benchmark dataset: card transactions in ten columns, the same rows every time.
//!
//! `ksql-lake simulator --bench-rows N` serves them; `--bench-ndjson FILE` also writes them as
//! newline-delimited JSON objects, so another tool can be timed on exactly the same rows.
//! The shape: a BIGINT id, a STRING user id with 10,007 distinct values, a DOUBLE amount, a
//! DECIMAL(10, 2) price, three low-cardinality STRING columns, a TIMESTAMP, a BOOLEAN and an
//! INTEGER. Event time (ROWTIME, and the `AT` column) covers three days, a few seconds out of
//! order, as real streams are.

use std::io::{self, Write};

use super::{Simulator, SimulatorError};
use crate::schema::parse_schema;

/// The columns, as `DESCRIBE` would list them.
pub const TRANSACTIONS_SCHEMA: &str = "`ID` BIGINT, `USER_ID` STRING, `AMOUNT` DOUBLE, `PRICE` DECIMAL(10, 2), \
     `CURRENCY` STRING, `CHANNEL` STRING, `STATUS` STRING, `AT` TIMESTAMP, `FLAGGED` BOOLEAN, `QUANTITY` INTEGER";

const COLUMN_NAMES: [&str; 10] =
    ["ID", "USER_ID", "AMOUNT", "PRICE", "CURRENCY", "CHANNEL", "STATUS", "AT", "FLAGGED", "QUANTITY"];

/// 2026-11-01T00:00:00Z: the first row's event time.
const START_MS: i64 = 1_761_955_200_000;
const SPAN_MS: i64 = 3 * 86_400_000;
/// Event time runs up to this far behind or ahead of arrival order.
const DISORDER_MS: i64 = 5_000;
const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "CHF"];
const CHANNELS: [&str; 5] = ["web", "app", "pos", "phone", "partner"];
const STATUSES: [&str; 3] = ["approved", "declined", "pending"];
const PARTITIONS: u32 = 4;
/// Rows rendered per append, to bound the memory of the rendering itself.
const APPEND_BATCH: u64 = 100_000;

/// Row `n` of a dataset of `rows`: its event time and its ten values as JSON text.
pub fn transaction(n: u64, rows: u64) -> (i64, [String; 10]) {
    let random = mix(n);
    let step = SPAN_MS / rows.max(1) as i64;
    let jitter = (random % (2 * DISORDER_MS as u64 + 1)) as i64 - DISORDER_MS;
    let rowtime = (START_MS + n as i64 * step + jitter).max(START_MS);
    let at = chrono::DateTime::from_timestamp_millis(rowtime).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3f");
    let cents = (random >> 8) % 1_000_000;
    let values = [
        (1_000_000_000 + n).to_string(),
        format!("\"user-{:05}\"", (random >> 20) % 10_007),
        format!("{}.{:02}", cents / 100, cents % 100),
        format!("{}.{:02}", (random >> 28) % 100_000, (random >> 12) % 100),
        format!("\"{}\"", CURRENCIES[(random >> 36) as usize % CURRENCIES.len()]),
        format!("\"{}\"", CHANNELS[(random >> 40) as usize % CHANNELS.len()]),
        format!("\"{}\"", STATUSES[((random >> 44) % 16).min(2) as usize]),
        format!("\"{at}\""),
        (random >> 48).is_multiple_of(50).to_string(),
        ((random >> 52) % 20 + 1).to_string(),
    ];
    (rowtime, values)
}

/// Creates the stream `name` with `rows` transactions; returns the bytes its delimited push
/// query response carries for them (one JSON array and a newline per row).
pub fn load_transactions(simulator: &Simulator, name: &str, rows: u64) -> Result<u64, SimulatorError> {
    let columns = parse_schema(TRANSACTIONS_SCHEMA).expect("the transactions schema parses");
    simulator.create_stream(name, columns, PARTITIONS)?;
    let mut bytes = 0u64;
    let mut start = 0;
    while start < rows {
        let end = (start + APPEND_BATCH).min(rows);
        let batch: Vec<(i64, [String; 10])> = (start..end).map(|n| transaction(n, rows)).collect();
        let refs: Vec<[&str; 10]> =
            batch.iter().map(|(_, values)| std::array::from_fn(|c| values[c].as_str())).collect();
        let positions = simulator
            .produce_rendered(name, batch.iter().zip(&refs).map(|((rowtime, _), row)| (None, *rowtime, &row[..])))?;
        // Per row: `[`, the values and the commas between them, ROWPARTITION and ROWOFFSET
        // (which the feed selects), `]` and a newline.
        for ((_, values), (partition, offset)) in batch.iter().zip(positions) {
            let text = values.iter().map(String::len).sum::<usize>() + values.len() - 1;
            bytes += (text + digits(partition as u64) + digits(offset as u64) + 5) as u64;
        }
        start = end;
    }
    Ok(bytes)
}

/// Writes the same `rows` transactions as newline-delimited JSON objects keyed by column name,
/// with `ROWTIME` (epoch milliseconds) first.
pub fn write_ndjson(out: &mut impl Write, rows: u64) -> io::Result<()> {
    for n in 0..rows {
        let (rowtime, values) = transaction(n, rows);
        write!(out, "{{\"ROWTIME\":{rowtime}")?;
        for (name, value) in COLUMN_NAMES.iter().zip(&values) {
            write!(out, ",\"{name}\":{value}")?;
        }
        out.write_all(b"}\n")?;
    }
    Ok(())
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().unwrap_or(0) as usize + 1
}

/// SplitMix64: a fixed, well-spread value per row number.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_the_same_every_time_and_valid_json() {
        assert_eq!(transaction(12_345, 1000), transaction(12_345, 1000));
        let mut out = Vec::new();
        write_ndjson(&mut out, 500).unwrap();
        let lines: Vec<serde_json::Value> =
            out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(lines[7]["ID"], 1_000_000_007u64);
        let users: std::collections::HashSet<_> = lines.iter().map(|l| l["USER_ID"].as_str().unwrap()).collect();
        assert!(users.len() > 400, "user ids spread: {}", users.len());
        // Event time: within the three days, and (at a benchmark's size) not in arrival order.
        let times: Vec<i64> = lines.iter().map(|l| l["ROWTIME"].as_i64().unwrap()).collect();
        assert!(times.iter().all(|&t| (START_MS..START_MS + SPAN_MS + DISORDER_MS).contains(&t)));
        let times: Vec<i64> = (0..500).map(|n| transaction(n, 2_000_000).0).collect();
        assert!(times.windows(2).any(|w| w[1] < w[0]), "some rows arrive late");
    }

    #[test]
    fn the_simulator_serves_them_with_their_byte_count() {
        let simulator = Simulator::new(Default::default());
        let bytes = load_transactions(&simulator, "TX", 1000).unwrap();
        assert!(bytes > 1000 * 100, "{bytes}");
        assert_eq!(simulator.source("TX").unwrap().len(), 1000);
    }
}
