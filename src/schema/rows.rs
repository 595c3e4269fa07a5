//! Rows → Arrow: decodes the JSON array of one ksqlDB row (`[1,"a",{"X":2}]`) straight from
//! the response bytes into column builders, and hands out RecordBatches.
//!
//! CONTRACT (implemented by the rows work item):
//! - no per-row heap allocation on the hot path (builders and scratch buffers are reused);
//! - a row that fails to decode leaves the decoder exactly as it was before the row;
//! - DECIMAL is decoded from the number's text (no float rounding), BIGINT over the full
//!   i64 range, DOUBLE in Java's `Double.toString` forms plus `"NaN"`/`"Infinity"`/
//!   `"-Infinity"` strings, BYTES from base64, TIMESTAMP from `yyyy-MM-ddTHH:mm:ss.SSS` (UTC),
//!   DATE from `yyyy-MM-dd`, TIME from `HH:mm[:ss[.SSS]]`, MAP keys that arrive as JSON
//!   strings converted to the key type; nulls at every level.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::types::Column;

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
}

impl RowDecoder {
    /// A decoder for rows with these columns, in this order.
    pub fn new(columns: &[Column]) -> Self {
        let schema = std::sync::Arc::new(super::types::arrow_schema(columns));
        RowDecoder { columns: columns.to_vec(), schema }
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
        let _ = row;
        todo!("rows work item")
    }

    /// Rows appended since the last [`RowDecoder::finish`].
    pub fn len(&self) -> usize {
        todo!("rows work item")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes held by the builders (for the memory budget).
    pub fn buffered_bytes(&self) -> usize {
        todo!("rows work item")
    }

    /// Takes the rows appended so far as one RecordBatch and starts a new one.
    pub fn finish(&mut self) -> RecordBatch {
        todo!("rows work item")
    }
}
