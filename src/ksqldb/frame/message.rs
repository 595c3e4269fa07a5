//! One complete message → [`Event`]: the `/query-stream` shapes (delimited lines and JSON
//! array elements) and the StreamedRow objects of `/query`.
//!
//! Rows never go through `serde_json`: their values array is sliced out of the message. The
//! rare non-row messages are parsed with `serde_json` into small typed shapes.

use bytes::Bytes;
use serde::Deserialize;

use super::scan::{self, ObjectMembers, ScanError};
use super::{Event, FrameError, Header};
use crate::ksqldb::error::ServerError;
use crate::schema::{columns_from_metadata, parse_schema};

/// A problem found in one message; the decoder adds the message's offset and text.
pub(super) struct MessageError {
    pub reason: String,
}

impl MessageError {
    fn new(reason: impl Into<String>) -> Self {
        MessageError { reason: reason.into() }
    }

    pub(super) fn into_frame_error(self, offset: u64, text: &[u8]) -> FrameError {
        FrameError::new(offset, self.reason, text)
    }
}

impl From<ScanError> for MessageError {
    fn from(error: ScanError) -> Self {
        MessageError::new(format!("{} at message byte {}", error.reason, error.position))
    }
}

/// The non-row objects of `/query-stream` (delimited and JSON array): metadata, tokens and
/// error objects. Unknown fields are ignored, as ksqlDB's own client does.
#[derive(Deserialize)]
struct QueryStreamObject {
    #[serde(rename = "queryId", default)]
    query_id: Option<String>,
    #[serde(rename = "columnNames", default)]
    column_names: Option<Vec<String>>,
    #[serde(rename = "columnTypes", default)]
    column_types: Option<Vec<String>>,
    #[serde(rename = "continuationToken", default)]
    continuation_token: Option<String>,
    #[serde(rename = "consistencyToken", default)]
    consistency_token: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
}

/// `{"header":{...}}` of the StreamedRow format; `protoSchema` is ignored.
#[derive(Deserialize)]
struct StreamedRowHeader {
    #[serde(rename = "queryId", default)]
    query_id: Option<String>,
    schema: String,
}

/// A token as StreamedRow writes it (`{"continuationToken":"..."}` inside the message), or a
/// bare string as the other formats do.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenValue {
    Bare(String),
    ContinuationWrapped {
        #[serde(rename = "continuationToken")]
        token: String,
    },
    ConsistencyWrapped {
        #[serde(rename = "consistencyToken")]
        token: String,
    },
}

impl TokenValue {
    fn into_string(self) -> String {
        match self {
            TokenValue::Bare(token)
            | TokenValue::ContinuationWrapped { token }
            | TokenValue::ConsistencyWrapped { token } => token,
        }
    }
}

/// A delimited line or JSON array element (no surrounding whitespace) at `offset`: a row
/// array, which becomes the event's values as it is (no copy, no further reference to the
/// response buffer), or an object.
pub(super) fn query_stream_message(text: Bytes, offset: u64) -> Result<Event, FrameError> {
    if text.first() == Some(&b'[') && text.last() == Some(&b']') {
        return Ok(Event::Row { values: text, tombstone: false });
    }
    let decoded = match text.first() {
        Some(b'[') => Err(MessageError::new("row does not end with `]`")),
        Some(b'{') => query_stream_object(&text),
        _ => Err(MessageError::new("expected a JSON object or array")),
    };
    decoded.map_err(|error| error.into_frame_error(offset, &text))
}

fn query_stream_object(text: &[u8]) -> Result<Event, MessageError> {
    let object: QueryStreamObject =
        serde_json::from_slice(text).map_err(|error| MessageError::new(format!("invalid JSON object: {error}")))?;
    if object.error_code.is_some() {
        return server_error(text).map(Event::Error);
    }
    if let Some(names) = object.column_names {
        let Some(types) = object.column_types else {
            return Err(MessageError::new("metadata has `columnNames` but no `columnTypes`"));
        };
        let columns = columns_from_metadata(&names, &types)
            .map_err(|error| MessageError::new(format!("invalid metadata: {error}")))?;
        return Ok(Event::Header(Header { query_id: object.query_id, columns }));
    }
    if let Some(token) = object.continuation_token {
        return Ok(Event::ContinuationToken(token));
    }
    if let Some(token) = object.consistency_token {
        return Ok(Event::ConsistencyToken(token));
    }
    Err(MessageError::new("unknown message: not metadata, a token or an error"))
}

fn server_error(text: &[u8]) -> Result<ServerError, MessageError> {
    serde_json::from_slice(text).map_err(|error| MessageError::new(format!("invalid error object: {error}")))
}

/// One StreamedRow object (`{"row":...}`, `{"header":...}`, ...), no surrounding whitespace.
pub(super) fn streamed_row_message(text: &Bytes) -> Result<Event, MessageError> {
    let bytes: &[u8] = text;
    let mut members = ObjectMembers::new(bytes, 0)?;
    let mut event = None;
    while let Some((key, value_start)) = members.next_key()? {
        let decoded = if key == b"row" {
            // The hot path: scan the row object once, slicing its columns out on the way.
            let (row, end) = row(text, value_start)?;
            members.value_done(end);
            row
        } else {
            let end = scan::value_end(bytes, value_start)?;
            members.value_done(end);
            let value = &bytes[value_start..end];
            match key {
                b"header" => header(value)?,
                b"errorMessage" => Event::Error(server_error(value)?),
                b"finalMessage" => Event::FinalMessage(parse_json(value, "finalMessage")?),
                b"continuationToken" => {
                    Event::ContinuationToken(parse_json::<TokenValue>(value, "token")?.into_string())
                }
                b"consistencyToken" => Event::ConsistencyToken(parse_json::<TokenValue>(value, "token")?.into_string()),
                // `sourceHost` accompanies rows in debug mode; other members are future additions.
                _ => continue,
            }
        };
        if event.is_some() {
            return Err(MessageError::new("more than one message in one object"));
        }
        event = Some(decoded);
    }
    if scan::skip_whitespace(bytes, members.end()) != bytes.len() {
        return Err(MessageError::new("unexpected text after the object"));
    }
    event.ok_or_else(|| MessageError::new("unknown message: no row, header, error or final message"))
}

fn parse_json<'a, T: Deserialize<'a>>(value: &'a [u8], what: &str) -> Result<T, MessageError> {
    serde_json::from_slice(value).map_err(|error| MessageError::new(format!("invalid {what}: {error}")))
}

fn header(value: &[u8]) -> Result<Event, MessageError> {
    let header: StreamedRowHeader = parse_json(value, "header")?;
    let columns =
        parse_schema(&header.schema).map_err(|error| MessageError::new(format!("invalid header schema: {error}")))?;
    Ok(Event::Header(Header { query_id: header.query_id, columns }))
}

/// `{"columns":[...],"tombstone":true}` or `{"protobufBytes":"..."}` starting at `start`: the
/// columns array is sliced out of `message` without copying. Returns the event and the end of
/// the row object.
fn row(message: &Bytes, start: usize) -> Result<(Event, usize), MessageError> {
    let bytes: &[u8] = message;
    let mut members = ObjectMembers::new(bytes, start)?;
    let mut columns = None;
    let mut tombstone = false;
    let mut protobuf = None;
    while let Some((key, value)) = members.next_member()? {
        match key {
            b"columns" => {
                if bytes[value.start] != b'[' {
                    return Err(MessageError::new("row `columns` is not an array"));
                }
                columns = Some(value);
            }
            b"tombstone" => tombstone = &bytes[value] == b"true",
            b"protobufBytes" => protobuf = Some(parse_json::<String>(&bytes[value], "protobufBytes")?),
            _ => {}
        }
    }
    let event = match (columns, protobuf) {
        (Some(columns), _) => Event::Row { values: message.slice(columns), tombstone },
        (None, Some(encoded)) => Event::ProtobufRow(encoded),
        (None, None) => return Err(MessageError::new("row has neither `columns` nor `protobufBytes`")),
    };
    Ok((event, members.end()))
}
