//! The three response framings of ksqlDB 0.29 (delimited, StreamedRow and JSON array), byte
//! for byte.

use super::plan::{Plan, QueryKind};
use super::source::Row;
use super::value::write_json_string;
use crate::schema::format_schema;

/// Which writer answers a query (chosen from `Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/vnd.ksqlapi.delimited.v1`: metadata line, then one array per line.
    Delimited,
    /// `application/json` on `/query-stream`: `[{metadata},[row],[row]]`, no newlines.
    JsonArray,
    /// `application/vnd.ksql.v1+json`: `[{"header":...},\n{"row":...},\n...]`.
    StreamedRow,
}

/// How a query ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    LimitReached,
    /// Completion, close, TERMINATE, or the end of a pull query.
    Completed,
    /// An error after the 200: the message of the in-band `generic_error` 50000.
    Error(String),
}

impl Framing {
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Delimited => "application/vnd.ksqlapi.delimited.v1",
            Framing::JsonArray => "application/json",
            Framing::StreamedRow => "application/vnd.ksql.v1+json",
        }
    }
}

/// Writes one query's response; knows the framing and the query kind.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    pub framing: Framing,
    /// Table pull queries are buffered: StreamedRow puts separators before rows instead of
    /// after them and ends without a final message.
    pub pull_table: bool,
    /// Scalable push queries have no completion message: StreamedRow ends `},\n]`.
    pub scalable: bool,
}

impl Writer {
    pub fn new(framing: Framing, kind: QueryKind) -> Self {
        Writer { framing, pull_table: kind == QueryKind::PullTable, scalable: false }
    }

    /// Appends a standalone continuation-token entry (a scalable push query's).
    pub fn continuation_token(&self, out: &mut Vec<u8>, token: &str) {
        let mut text = String::new();
        match self.framing {
            Framing::Delimited | Framing::JsonArray => {
                if self.framing == Framing::JsonArray {
                    text.push(',');
                }
                text.push_str("{\"continuationToken\":");
                write_json_string(&mut text, token);
                text.push('}');
                if self.framing == Framing::Delimited {
                    text.push('\n');
                }
            }
            Framing::StreamedRow => {
                text.push_str("{\"continuationToken\":{\"continuationToken\":");
                write_json_string(&mut text, token);
                text.push_str("}},\n");
            }
        }
        out.extend_from_slice(text.as_bytes());
    }

    pub fn header(&self, out: &mut Vec<u8>, query_id: &str, plan: &Plan) {
        match self.framing {
            Framing::Delimited | Framing::JsonArray => {
                let mut text = String::new();
                if self.framing == Framing::JsonArray {
                    text.push('[');
                }
                text.push_str("{\"queryId\":");
                write_json_string(&mut text, query_id);
                text.push_str(",\"columnNames\":[");
                for (index, column) in plan.columns.iter().enumerate() {
                    if index > 0 {
                        text.push(',');
                    }
                    write_json_string(&mut text, &column.name);
                }
                text.push_str("],\"columnTypes\":[");
                for (index, column) in plan.columns.iter().enumerate() {
                    if index > 0 {
                        text.push(',');
                    }
                    write_json_string(&mut text, &column.ty.to_string());
                }
                text.push_str("]}");
                if self.framing == Framing::Delimited {
                    text.push('\n');
                }
                out.extend_from_slice(text.as_bytes());
            }
            Framing::StreamedRow => {
                let mut text = String::from("[{\"header\":{\"queryId\":");
                write_json_string(&mut text, query_id);
                text.push_str(",\"schema\":");
                write_json_string(&mut text, &format_schema(&plan.columns));
                text.push_str("}}");
                if !self.pull_table {
                    text.push_str(",\n");
                }
                out.extend_from_slice(text.as_bytes());
            }
        }
    }

    /// Appends one row; returns false when the framing drops it (tombstones outside
    /// StreamedRow).
    pub fn row(&self, out: &mut Vec<u8>, plan: &Plan, row: &Row) -> bool {
        // The delimited and JSON-array framings carry no tombstones: ksqlDB drops them.
        let (before, after): (&[u8], &[u8]) = match self.framing {
            Framing::Delimited | Framing::JsonArray if row.tombstone => return false,
            Framing::Delimited => (b"[", b"]\n"),
            Framing::JsonArray => (b",[", b"]"),
            Framing::StreamedRow => {
                if self.pull_table {
                    out.extend_from_slice(b",\n");
                }
                let end: &[u8] = if row.tombstone { b"],\"tombstone\":true}}" } else { b"]}}" };
                (b"{\"row\":{\"columns\":[", end)
            }
        };
        out.extend_from_slice(before);
        plan.write_values(out, row);
        out.extend_from_slice(after);
        if self.framing == Framing::StreamedRow && !self.pull_table {
            out.extend_from_slice(b",\n");
        }
        true
    }

    pub fn end(&self, out: &mut Vec<u8>, end: &End) {
        match (self.framing, end) {
            (Framing::Delimited, End::Error(message)) => {
                out.extend_from_slice(error_object(message).as_bytes());
                out.push(b'\n');
            }
            (Framing::Delimited, _) => {}
            (Framing::JsonArray, End::Error(message)) => {
                out.push(b',');
                out.extend_from_slice(error_object(message).as_bytes());
                out.push(b']');
            }
            (Framing::JsonArray, _) => out.push(b']'),
            (Framing::StreamedRow, End::Error(message)) => {
                if self.pull_table {
                    out.extend_from_slice(b",\n");
                }
                out.extend_from_slice(b"{\"errorMessage\":");
                out.extend_from_slice(error_object(message).as_bytes());
                out.extend_from_slice(b"},\n]");
            }
            (Framing::StreamedRow, _) if self.pull_table => out.push(b']'),
            (Framing::StreamedRow, End::Completed) if self.scalable => out.push(b']'),
            (Framing::StreamedRow, End::LimitReached) => {
                out.extend_from_slice(b"{\"finalMessage\":\"Limit Reached\"}]");
            }
            (Framing::StreamedRow, End::Completed) => {
                out.extend_from_slice(b"{\"finalMessage\":\"Query Completed\"}]");
            }
        }
    }
}

/// `{"@type":"generic_error","error_code":50000,"message":...}`.
pub fn error_object(message: &str) -> String {
    generic_error(50000, message)
}

/// A `KsqlErrorMessage` body.
pub fn generic_error(code: u32, message: &str) -> String {
    let mut text = format!("{{\"@type\":\"generic_error\",\"error_code\":{code},\"message\":");
    write_json_string(&mut text, message);
    text.push('}');
    text
}

/// A `KsqlStatementErrorMessage` body (code 40001).
pub fn statement_error(message: &str, statement: &str) -> String {
    let mut text = String::from("{\"@type\":\"statement_error\",\"error_code\":40001,\"message\":");
    write_json_string(&mut text, message);
    text.push_str(",\"statementText\":");
    write_json_string(&mut text, statement);
    text.push_str(",\"entities\":[]}");
    text
}
