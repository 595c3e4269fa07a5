//! Rows → Arrow: decodes the JSON array of one ksqlDB row (`[1,"a",{"X":2}]`) straight from
//! the response bytes into column builders, and hands out RecordBatches.
//!
//! What the decoder guarantees:
//! - no per-row heap allocation on the hot path (builders and scratch buffers are reused);
//! - a row that fails to decode leaves the decoder exactly as it was before the row;
//! - DECIMAL is decoded from the number's text (no float rounding), BIGINT over the full
//!   i64 range, DOUBLE in Java's `Double.toString` forms plus `"NaN"`/`"Infinity"`/
//!   `"-Infinity"` strings, BYTES from base64, TIMESTAMP from `yyyy-MM-ddTHH:mm:ss.SSS` (UTC),
//!   DATE from `yyyy-MM-dd`, TIME from `HH:mm[:ss[.SSS]]`, MAP keys that arrive as JSON
//!   strings converted to the key type; nulls at every level.
//!
//! Values nested in a STRUCT go through Kafka Connect's JSON converter on the server, which
//! (as read from ksqlDB 0.29's source) writes TIMESTAMP/DATE/TIME as integers (epoch ms, days,
//! ms of day) and DECIMAL as a double. So every temporal column also accepts the integer
//! form, and DECIMAL accepts any JSON number spelling (`1.2`, `1.2E+3`), converted exactly
//! from its text. A decimal whose digits do not fit the column's scale or precision is
//! rejected rather than rounded. Dates use the proleptic Gregorian calendar (Java's
//! formatter switches to Julian before 1582; such dates would be off by days).
//!
//! Layout: `json` scans the text, `scalars` converts token text to values, `decode`
//! routes each value to its builder, `builders` holds the rollback-able columns.

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::types::Column;

mod builders;
mod decode;
mod json;
mod scalars;

use builders::Builder;
use json::Cursor;
pub(crate) use scalars::parse_i64;

/// Longest raw row text kept in a [`RowError`].
const MAX_RAW_BYTES: usize = 4096;

/// A row that could not be decoded. It names the column and carries the raw row text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row rejected: column {column}: {reason}; row: {raw}")]
pub struct RowError {
    /// The column that failed (`"<row>"` for arity or framing problems). Nested positions are
    /// spelled `COL.FIELD`, `COL[3]`, `COL{key}`.
    pub column: String,
    pub reason: String,
    /// The raw row text, lossily decoded as UTF-8 and cut to at most 4 KiB.
    pub raw: String,
}

/// Decodes rows of one query schema into Arrow.
pub struct RowDecoder {
    columns: Vec<Column>,
    schema: SchemaRef,
    builders: Vec<Builder>,
    rows: usize,
    /// Unescaping buffer, kept between rows so that escaped strings do not allocate.
    scratch: Vec<u8>,
}

impl RowDecoder {
    /// A decoder for rows with these columns, in this order.
    pub fn new(columns: &[Column]) -> Self {
        let schema = std::sync::Arc::new(super::types::arrow_schema(columns));
        RowDecoder {
            columns: columns.to_vec(),
            schema,
            builders: columns.iter().map(|column| Builder::new(&column.ty)).collect(),
            rows: 0,
            scratch: Vec::new(),
        }
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The Arrow schema of the batches this decoder produces.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Appends one row: `row` is the JSON array text of the row's values.
    pub fn append(&mut self, row: &[u8]) -> Result<(), RowError> {
        let mut cur = Cursor::new(row, std::mem::take(&mut self.scratch));
        // Most rows are ASCII, which is checked a word at a time.
        let result = if row.is_ascii() || std::str::from_utf8(row).is_ok() {
            decode_row(&mut self.builders, &mut cur)
        } else {
            Err((None, Fail::new("row is not valid UTF-8")))
        };
        self.scratch = cur.into_scratch();
        match result {
            Ok(()) => {
                self.rows += 1;
                Ok(())
            }
            Err((column, fail)) => {
                for builder in &mut self.builders {
                    builder.truncate(self.rows);
                }
                let column = match column {
                    Some(index) => fail.path(&self.columns[index].name),
                    None => "<row>".to_string(),
                };
                Err(RowError { column, reason: fail.0.reason, raw: raw_text(row) })
            }
        }
    }

    /// Rows appended since the last [`RowDecoder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate bytes of row data held by the builders (for the memory budget): the
    /// appended values, validity and offsets, close to the size of the batch
    /// [`RowDecoder::finish`] would return. It drops to about zero after `finish`, although
    /// the builders keep capacity for a batch as large as the last one.
    pub fn buffered_bytes(&self) -> usize {
        self.builders.iter().map(Builder::data_bytes).sum()
    }

    /// Takes the rows appended so far as one RecordBatch and starts a new one.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        // The builders are made from the same columns as the schema and always hold equal
        // numbers of slots, so this cannot fail on any input.
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .expect("column builders match the decoder schema")
    }
}

/// Decodes a whole row into the builders; on failure names the column index (`None` for
/// the row itself).
fn decode_row(builders: &mut [Builder], cur: &mut Cursor<'_>) -> Result<(), (Option<usize>, Fail)> {
    let expected = builders.len();
    let row_error = |fail: Fail| (None, fail);
    if !cur.eat(b'[') {
        return Err(row_error(Fail::new(format!("expected a JSON array, found {}", cur.describe_next()))));
    }
    for (index, builder) in builders.iter_mut().enumerate() {
        if index > 0 && !cur.eat(b',') {
            let reason = if cur.peek() == Some(b']') {
                format!("row has {index} values, expected {expected}")
            } else {
                format!("expected `,` after a value, found {}", cur.describe_next())
            };
            return Err(row_error(Fail::new(reason)));
        }
        if index == 0 && cur.peek() == Some(b']') {
            return Err(row_error(Fail::new(format!("row has 0 values, expected {expected}"))));
        }
        decode::decode_value(builder, cur).map_err(|fail| (Some(index), fail))?;
    }
    if !cur.eat(b']') {
        let reason = if cur.peek() == Some(b',') {
            format!("row has more than {expected} values")
        } else {
            format!("expected `]`, found {}", cur.describe_next())
        };
        return Err(row_error(Fail::new(reason)));
    }
    if !cur.at_end() {
        return Err(row_error(Fail::new("trailing text after the row")));
    }
    Ok(())
}

/// The row text for an error: lossy UTF-8, at most [`MAX_RAW_BYTES`] bytes.
fn raw_text(row: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&row[..row.len().min(MAX_RAW_BYTES)]).into_owned();
    while text.len() > MAX_RAW_BYTES {
        text.pop();
    }
    text
}

/// Decodes `rows` into one batch; the first bad row fails the whole call.
pub fn decode_rows(columns: &[Column], rows: &[&[u8]]) -> Result<RecordBatch, RowError> {
    let mut decoder = RowDecoder::new(columns);
    for row in rows {
        decoder.append(row)?;
    }
    Ok(decoder.finish())
}

/// Why a value failed, and where, built only on the error path (boxed to keep `Result`s
/// small on the hot path).
pub(crate) struct Fail(Box<FailInner>);

struct FailInner {
    reason: String,
    /// Innermost position first.
    path: Vec<Segment>,
}

/// One step of a nested position.
pub(crate) enum Segment {
    Field(String),
    Index(usize),
    Key(String),
}

impl Fail {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Fail(Box::new(FailInner { reason: reason.into(), path: Vec::new() }))
    }

    /// Records that the failure happened inside `segment`.
    pub(crate) fn at(mut self, segment: Segment) -> Self {
        self.0.path.push(segment);
        self
    }

    /// `COL.FIELD[3]{key}` for this failure under column `column`.
    fn path(&self, column: &str) -> String {
        use std::fmt::Write as _;
        let mut path = column.to_string();
        for segment in self.0.path.iter().rev() {
            let _ = match segment {
                Segment::Field(name) => write!(path, ".{name}"),
                Segment::Index(index) => write!(path, "[{index}]"),
                Segment::Key(key) => write!(path, "{{{key}}}"),
            };
        }
        path
    }
}

impl std::fmt::Debug for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.reason)
    }
}

#[cfg(test)]
mod tests;
