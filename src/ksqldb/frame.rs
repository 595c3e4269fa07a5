//! The incremental response decoder: turns any split of a query response's bytes into
//! [`Event`]s, for the three framings ksqlDB writes (delimited, StreamedRow, JSON array).
//!
//! Use: `push` bytes as they arrive, then call
//! `next_event` until it returns `Ok(None)` ("need more bytes"); at end of body call `finish`.
//! The events never depend on where the chunks were split.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::error::ServerError;
use crate::schema::Column;

mod message;
mod scan;
#[cfg(test)]
mod tests;

use message::MessageError;
use scan::ContainerScanner;

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
    Row {
        values: Bytes,
        tombstone: bool,
    },
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
    /// The offending message as received, cut to the decoder's message limit.
    pub raw: Bytes,
    /// Its whole length in bytes (more than `raw` holds when it was too long).
    pub length: u64,
    /// The message exceeded the decoder's limit.
    pub too_long: bool,
}

/// A single message larger than this is rejected instead of buffered without bound, unless
/// [`FrameDecoder::set_max_message_bytes`] sets another limit.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Snippets in [`FrameError`] are cut to this many bytes.
const SNIPPET_BYTES: usize = 512;

impl Framing {
    /// The framing of a `/query-stream` response with this Content-Type; parameters such as
    /// `; charset=utf-8` are ignored. `application/json` on the legacy `/query` endpoint is the
    /// StreamedRow format instead (pre-0.24 servers label it so): the client decides that.
    pub fn from_content_type(content_type: &str) -> Option<Framing> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case("application/vnd.ksqlapi.delimited.v1") {
            Some(Framing::Delimited)
        } else if media_type.eq_ignore_ascii_case("application/vnd.ksql.v1+json")
            || media_type.eq_ignore_ascii_case("application/vnd.ksql.v1+protobuf")
        {
            Some(Framing::StreamedRow)
        } else if media_type.eq_ignore_ascii_case("application/json") {
            Some(Framing::JsonArray)
        } else {
            None
        }
    }
}

impl FrameError {
    fn new(offset: u64, reason: impl Into<String>, text: &[u8]) -> Self {
        FrameError::of_message(offset, reason, Bytes::copy_from_slice(text))
    }

    /// An error about the message `raw`, kept whole.
    fn of_message(offset: u64, reason: impl Into<String>, raw: Bytes) -> Self {
        let text = &raw[..];
        let cut = &text[..text.len().min(SNIPPET_BYTES)];
        let mut snippet = String::from_utf8_lossy(cut).into_owned();
        let mut end = snippet.len().min(SNIPPET_BYTES);
        while !snippet.is_char_boundary(end) {
            end -= 1;
        }
        snippet.truncate(end);
        let length = raw.len() as u64;
        FrameError { offset, reason: reason.into(), snippet, raw, length, too_long: false }
    }
}

/// Where the JSON array scanner is, between and inside the elements of the outer array.
#[derive(Debug)]
enum ArrayState {
    /// Before the outer `[`.
    Opening,
    /// After `[` or `,`: an element or (tolerated after a comma) the closing `]`.
    BeforeElement,
    /// Inside an element; the scanner keeps string and nesting state across chunks.
    InElement(ContainerScanner),
    /// After an element: `,` or `]`.
    AfterElement,
    /// After the outer `]`: only whitespace may follow.
    Closed,
}

/// The incremental decoder of one response.
///
/// Messages that lie inside one pushed chunk are sliced out of it without copying; only a
/// message split across chunks is gathered into `carry`.
pub struct FrameDecoder {
    framing: Framing,
    /// Chunks pushed but not yet reached, oldest first.
    queue: VecDeque<Bytes>,
    /// The chunk being scanned; its consumed prefix is already cut off.
    current: Bytes,
    /// Offset in the whole response of `current[0]`, for error messages.
    current_offset: u64,
    /// The start of a message whose bytes arrived in earlier chunks.
    carry: BytesMut,
    /// Offset in the whole response of `carry[0]`.
    carry_offset: u64,
    /// `finish` was called: the body has ended, a last line without `\n` is complete.
    finishing: bool,
    /// An oversized line: its first bytes, where it started and its length so far; the rest
    /// is dropped up to the next `\n`, then it is reported.
    discarding_line: Option<(Bytes, u64, u64)>,
    /// Messages longer than this are rejected without being held whole.
    max_message_bytes: usize,
    /// JSON array framing only.
    array: ArrayState,
    /// JSON array framing only: once the structure is broken there is no way to resync.
    failure: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new(framing: Framing) -> Self {
        FrameDecoder {
            framing,
            queue: VecDeque::new(),
            current: Bytes::new(),
            current_offset: 0,
            carry: BytesMut::new(),
            carry_offset: 0,
            finishing: false,
            discarding_line: None,
            max_message_bytes: MAX_MESSAGE_BYTES,
            array: ArrayState::Opening,
            failure: None,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Messages longer than `limit` bytes are rejected: in the line framings only their first
    /// `limit` bytes are kept and the rest of the line is dropped as it arrives, so memory never
    /// grows with the line.
    pub fn set_max_message_bytes(&mut self, limit: usize) {
        self.max_message_bytes = limit.max(1);
    }

    /// Adds bytes received from the network.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.queue.push_back(chunk);
        }
    }

    /// The next complete event, or `Ok(None)` when more bytes are needed.
    ///
    /// After an error in a line-based framing the offending line is skipped, so decoding can go
    /// on; in the JSON array framing a structural error is final and is returned again.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        match self.framing {
            Framing::Delimited | Framing::StreamedRow => self.next_line_event(),
            Framing::JsonArray => self.next_array_event(),
        }
    }

    /// Called at end of body: returns the last event if the body ended without a final newline,
    /// `Ok(None)` when nothing is left, or an error for trailing bytes that are not a message.
    ///
    /// It may be called repeatedly (until `Ok(None)`) and also drains complete messages that
    /// were not yet taken with [`FrameDecoder::next_event`].
    pub fn finish(&mut self) -> Result<Option<Event>, FrameError> {
        self.finishing = true;
        self.next_event()
    }

    /// Makes the next queued chunk current; false when none is left.
    fn next_chunk(&mut self) -> bool {
        match self.queue.pop_front() {
            Some(chunk) => {
                self.current = chunk;
                true
            }
            None => false,
        }
    }

    fn consume(&mut self, length: usize) {
        self.current.advance(length);
        self.current_offset += length as u64;
    }

    /// Moves the rest of `current` into `carry` (the message continues in the next chunk).
    fn carry_rest(&mut self) -> Result<(), FrameError> {
        if self.carry.is_empty() {
            self.carry_offset = self.current_offset;
        }
        let room = self.max_message_bytes.saturating_sub(self.carry.len());
        let length = self.current.len();
        if length > room {
            // Too long: keep its first bytes, drop the rest as it comes.
            let total = (self.carry.len() + length) as u64;
            self.carry.extend_from_slice(&self.current[..room]);
            self.consume(length);
            let prefix = self.carry.split().freeze();
            if self.framing == Framing::JsonArray {
                let mut error = FrameError::of_message(self.carry_offset, self.too_long_reason(), prefix);
                (error.length, error.too_long) = (total, true);
                return Err(error);
            }
            self.discarding_line = Some((prefix, self.carry_offset, total));
            return Ok(());
        }
        self.carry.extend_from_slice(&self.current);
        self.consume(length);
        Ok(())
    }

    fn too_long_reason(&self) -> String {
        format!("message longer than {} bytes", self.max_message_bytes)
    }

    /// Takes the message ending at `end` in `current`, with any carried start.
    fn take_message(&mut self, end: usize) -> (Bytes, u64) {
        let taken = if self.carry.is_empty() {
            (self.current.slice(..end), self.current_offset)
        } else {
            self.carry.extend_from_slice(&self.current[..end]);
            (self.carry.split().freeze(), self.carry_offset)
        };
        self.consume(end);
        taken
    }

    fn next_line_event(&mut self) -> Result<Option<Event>, FrameError> {
        loop {
            if self.current.is_empty() && !self.next_chunk() {
                if self.finishing {
                    if let Some((prefix, offset, length)) = self.discarding_line.take() {
                        let mut error = FrameError::of_message(offset, self.too_long_reason(), prefix);
                        (error.length, error.too_long) = (length, true);
                        return Err(error);
                    }
                }
                if self.finishing && !self.carry.is_empty() {
                    let offset = self.carry_offset;
                    let line = self.carry.split().freeze();
                    if let Some(event) = self.line_event(line, offset)? {
                        return Ok(Some(event));
                    }
                }
                return Ok(None);
            }
            match memchr::memchr(b'\n', &self.current) {
                Some(newline) if self.discarding_line.is_some() => {
                    let (prefix, offset, length) = self.discarding_line.take().expect("checked");
                    self.consume(newline + 1);
                    let mut error = FrameError::of_message(offset, self.too_long_reason(), prefix);
                    (error.length, error.too_long) = (length + newline as u64, true);
                    return Err(error);
                }
                Some(newline) if self.carry.len() + newline > self.max_message_bytes => {
                    // The line ends in this chunk but is too long all the same.
                    let length = (self.carry.len() + newline) as u64;
                    let keep = self.max_message_bytes - self.carry.len();
                    let (prefix, offset) = self.take_message(keep);
                    self.consume(newline - keep + 1);
                    let mut error = FrameError::of_message(offset, self.too_long_reason(), prefix);
                    (error.length, error.too_long) = (length, true);
                    return Err(error);
                }
                Some(newline) => {
                    let (line, offset) = self.take_message(newline);
                    self.consume(1);
                    if let Some(event) = self.line_event(line, offset)? {
                        return Ok(Some(event));
                    }
                }
                None if self.discarding_line.is_some() => {
                    let length = self.current.len();
                    if let Some((_, _, total)) = &mut self.discarding_line {
                        *total += length as u64;
                    }
                    self.consume(length);
                }
                None => self.carry_rest()?,
            }
        }
    }

    /// Decodes one line (without its `\n`); `Ok(None)` for lines that carry no message.
    fn line_event(&self, line: Bytes, offset: u64) -> Result<Option<Event>, FrameError> {
        let trimmed = scan::trim(&line, 0..line.len());
        let range = match self.framing {
            Framing::StreamedRow => strip_array_punctuation(&line, trimmed),
            _ => strip_trailing(&line, trimmed, b','),
        };
        if range.is_empty() {
            return Ok(None);
        }
        let message_offset = offset + range.start as u64;
        // The line itself when nothing was trimmed: one reference count less per row.
        let text = if range.start == 0 && range.end == line.len() { line } else { line.slice(range) };
        match self.framing {
            Framing::StreamedRow => message::streamed_row_message(&text)
                .map(Some)
                .map_err(|error: MessageError| error.into_frame_error(message_offset, &text)),
            _ => message::query_stream_message(text, message_offset).map(Some),
        }
    }

    fn next_array_event(&mut self) -> Result<Option<Event>, FrameError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        loop {
            if self.current.is_empty() && !self.next_chunk() {
                if self.finishing && matches!(self.array, ArrayState::InElement(_)) {
                    let error = FrameError::new(self.carry_offset, "response ended inside a message", &self.carry);
                    return Err(self.fail(error));
                }
                return Ok(None);
            }
            if let ArrayState::InElement(scanner) = &mut self.array {
                let element_offset = if self.carry.is_empty() { self.current_offset } else { self.carry_offset };
                match scanner.feed(&self.current) {
                    Ok(Some(end)) => {
                        self.array = ArrayState::AfterElement;
                        let (text, offset) = self.take_message(end);
                        return message::query_stream_message(text, offset).map(Some);
                    }
                    Ok(None) => {
                        if let Err(error) = self.carry_rest() {
                            return Err(self.fail(error));
                        }
                    }
                    Err(error) => {
                        let mut text = self.carry.to_vec();
                        text.extend_from_slice(&self.current);
                        // Cut after the offending byte, so the snippet is the same however
                        // the response was split.
                        text.truncate(error.position + 1);
                        let reason = format!("{} at message byte {}", error.reason, error.position);
                        return Err(self.fail(FrameError::new(element_offset, reason, &text)));
                    }
                }
                continue;
            }
            let whitespace = scan::skip_whitespace(&self.current, 0);
            self.consume(whitespace);
            let Some(&byte) = self.current.first() else {
                continue;
            };
            let next_state = match (&self.array, byte) {
                (ArrayState::Opening, b'[') => Some(ArrayState::BeforeElement),
                (ArrayState::BeforeElement | ArrayState::AfterElement, b']') => Some(ArrayState::Closed),
                (ArrayState::AfterElement, b',') => Some(ArrayState::BeforeElement),
                (ArrayState::BeforeElement, b'{' | b'[') => {
                    self.array = ArrayState::InElement(ContainerScanner::new());
                    continue;
                }
                _ => None,
            };
            match next_state {
                Some(state) => {
                    self.array = state;
                    self.consume(1);
                }
                None => {
                    let reason = match self.array {
                        ArrayState::Opening => "expected the opening `[`",
                        ArrayState::BeforeElement => "expected an object or array element",
                        ArrayState::AfterElement => "expected `,` or `]` after an element",
                        _ => "unexpected text after the closing `]`",
                    };
                    let error = FrameError::new(self.current_offset, reason, &[byte]);
                    return Err(self.fail(error));
                }
            }
        }
    }

    /// Records a JSON array structural error: every later call returns it again.
    fn fail(&mut self, error: FrameError) -> FrameError {
        self.failure = Some(error.clone());
        self.carry.clear();
        self.queue.clear();
        self.current = Bytes::new();
        error
    }
}

/// `range` without one trailing `byte` (and the whitespace before it).
fn strip_trailing(text: &[u8], range: std::ops::Range<usize>, byte: u8) -> std::ops::Range<usize> {
    if range.end > range.start && text[range.end - 1] == byte {
        scan::trim(text, range.start..range.end - 1)
    } else {
        range
    }
}

/// The StreamedRow line rule (ksqlDB's `BytesUtils.toJsonMsg`): strip one leading `[`, one
/// trailing `]` and one trailing `,`, so that `[{header},`, `{row},`, `{final}]`, `,` and `]`
/// all reduce to the bare object or to nothing.
fn strip_array_punctuation(text: &[u8], range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let mut range = range;
    if range.start < range.end && text[range.start] == b'[' {
        range = scan::trim(text, range.start + 1..range.end);
    }
    let range = strip_trailing(text, range, b']');
    strip_trailing(text, range, b',')
}
