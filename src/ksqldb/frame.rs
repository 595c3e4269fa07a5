//! The incremental response decoder: turns any split of a query response's bytes into
//! [`Event`]s, for the three framings ksqlDB writes (delimited, StreamedRow, JSON array).
//!
//! CONTRACT (implemented by the frame work item): `push` bytes as they arrive, then call
//! `next_event` until it returns `Ok(None)` ("need more bytes"); at end of body call `finish`.
//! The events never depend on where the chunks were split.

use bytes::Bytes;

use super::error::ServerError;
use crate::schema::Column;

/// Which framing a response uses, chosen from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/vnd.ksqlapi.delimited.v1`: a metadata line, then one JSON array per line.
    Delimited,
    /// `application/vnd.ksql.v1+json`: `[{"header":...},\n{"row":...},\n...]`.
    StreamedRow,
    /// `application/json` on `/query-stream`: `[{metadata},[row],[row]]`, no newlines needed.
    JsonArray,
}

/// The header of a query: its id and columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// `null` in pull-query metadata before 0.24.
    pub query_id: Option<String>,
    pub columns: Vec<Column>,
}

/// One decoded message of a query response.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Header(Header),
    /// One row: `values` is the JSON array text of the row's values (`[1,"a"]`), a slice of the
    /// response bytes; `tombstone` is set for table deletes (StreamedRow only).
    Row { values: Bytes, tombstone: bool },
    /// A row in protobuf form (`{"row":{"protobufBytes":"..."}}`, base64).
    ProtobufRow(String),
    /// An error written after the 200; the response ends after it.
    Error(ServerError),
    /// `{"finalMessage":"Limit Reached"}` / `"Query Completed"` (StreamedRow only).
    FinalMessage(String),
    /// A scalable push query's continuation token (base64, opaque).
    ContinuationToken(String),
    /// A pull query's consistency token (parsed and ignored).
    ConsistencyToken(String),
}

/// Bytes that are not a valid ksqlDB response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid ksqlDB response at byte {offset}: {reason}: {snippet}")]
pub struct FrameError {
    /// Offset in the whole response of the start of the offending message.
    pub offset: u64,
    pub reason: String,
    /// The offending text, lossily decoded, cut to at most 512 bytes.
    pub snippet: String,
}

/// The incremental decoder of one response.
pub struct FrameDecoder {
    framing: Framing,
}

impl FrameDecoder {
    pub fn new(framing: Framing) -> Self {
        FrameDecoder { framing }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Adds bytes received from the network.
    pub fn push(&mut self, chunk: Bytes) {
        let _ = chunk;
        todo!("frame work item")
    }

    /// The next complete event, or `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        todo!("frame work item")
    }

    /// Called at end of body: returns the last event if the body ended without a final newline,
    /// `Ok(None)` when nothing is left, or an error for trailing bytes that are not a message.
    pub fn finish(&mut self) -> Result<Option<Event>, FrameError> {
        todo!("frame work item")
    }
}
