//! One open query response: the header read eagerly, then events pulled on demand.

use std::pin::Pin;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};

use super::error::{ClientError, TransportError};
use crate::ksqldb::frame::{Event, FrameDecoder, Framing, Header};

pub(super) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>;

/// An open push or pull query. Dropping it closes the connection (HTTP/1.1) or resets the
/// stream (HTTP/2), which ends the query on the server.
///
/// [`QueryStream::next_event`] is cancel-safe: the only await point is the read of the next
/// body chunk, and state changes only once a chunk has arrived. So a caller can wrap it in
/// `tokio::time::timeout` as a stall detector and call it again after a timeout.
pub struct QueryStream {
    header: Header,
    framing: Framing,
    body: BodyStream,
    decoder: FrameDecoder,
    /// The body has ended; what is left is in the decoder.
    body_done: bool,
    /// No more events: end of body, or an in-band error was returned.
    ended: bool,
}

impl QueryStream {
    /// Reads up to the header of `response`'s body.
    pub(super) async fn open(response: reqwest::Response, framing: Framing) -> Result<QueryStream, ClientError> {
        let body = response.bytes_stream().map(|chunk| chunk.map_err(TransportError::from));
        QueryStream::open_body(Box::pin(body), framing).await
    }

    /// Reads up to the header of `body`.
    pub(super) async fn open_body(body: BodyStream, framing: Framing) -> Result<QueryStream, ClientError> {
        let mut stream = QueryStream {
            header: Header { query_id: None, columns: Vec::new() },
            framing,
            body,
            decoder: FrameDecoder::new(framing),
            body_done: false,
            ended: false,
        };
        match stream.next_event().await? {
            Some(Event::Header(header)) => {
                stream.header = header;
                Ok(stream)
            }
            Some(other) => Err(ClientError::NoHeader { found: event_name(&other) }),
            None => Err(ClientError::NoHeader { found: "the end of the body" }),
        }
    }

    /// The query's header: its id and columns.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The query id from the header (`None` for pull queries on servers before 0.24).
    pub fn query_id(&self) -> Option<&str> {
        self.header.query_id.as_deref()
    }

    /// The framing the server chose.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Messages (rows) longer than `limit` bytes come back as [`ClientError::Frame`] errors
    /// with their first `limit` bytes, and are never held whole.
    pub fn set_max_message_bytes(&mut self, limit: usize) {
        self.decoder.set_max_message_bytes(limit);
    }

    /// The next event; `Ok(None)` once the body has ended. An in-band error object is returned
    /// as [`ClientError::InBand`] and ends the stream. A [`ClientError::Frame`] error concerns
    /// one bad message: calling again continues with the next one.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(outcome) = self.decoded() {
                return outcome;
            }
            let chunk = self.body.next().await;
            self.take(chunk)?;
        }
    }

    /// The next event if it can be had without waiting: from what was read already, or from
    /// body chunks that have arrived. `None` when the next event needs more of the body than
    /// has arrived; then [`QueryStream::next_event`] waits for it. Lets a reader take the rows
    /// of a burst one after another without a wake-up per row.
    pub fn next_ready(&mut self) -> Option<Result<Option<Event>, ClientError>> {
        loop {
            if let Some(outcome) = self.decoded() {
                return Some(outcome);
            }
            let chunk = self.body.next().now_or_never()?;
            if let Err(error) = self.take(chunk) {
                return Some(Err(error));
            }
        }
    }

    /// What the bytes read so far decide: an event, the end, an error; `None` when the next
    /// event needs more of the body.
    fn decoded(&mut self) -> Option<Result<Option<Event>, ClientError>> {
        if self.ended {
            return Some(Ok(None));
        }
        let decoded = if self.body_done {
            self.decoder.finish().map_err(|error| {
                // Whatever was wrong at the end of the body, nothing can follow it.
                self.ended = true;
                ClientError::Truncated(error)
            })
        } else {
            self.decoder.next_event().map_err(ClientError::from)
        };
        match decoded {
            Err(error) => Some(Err(error)),
            Ok(Some(Event::Error(error))) => {
                self.ended = true;
                Some(Err(ClientError::InBand(error)))
            }
            Ok(Some(event)) => Some(Ok(Some(event))),
            Ok(None) if self.body_done => {
                self.ended = true;
                Some(Ok(None))
            }
            Ok(None) => None,
        }
    }

    /// Takes the next body chunk, or its end.
    fn take(&mut self, chunk: Option<Result<Bytes, TransportError>>) -> Result<(), ClientError> {
        match chunk {
            Some(Ok(chunk)) => self.decoder.push(chunk),
            Some(Err(source)) => {
                self.body_done = true;
                self.ended = true;
                return Err(ClientError::StreamCut { source });
            }
            None => self.body_done = true,
        }
        Ok(())
    }
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("QueryStream")
            .field("query_id", &self.header.query_id)
            .field("columns", &self.header.columns.len())
            .field("framing", &self.framing)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Header(_) => "a header",
        Event::Row { .. } => "a row",
        Event::ProtobufRow(_) => "a protobuf row",
        Event::Error(_) => "an error",
        Event::FinalMessage(_) => "a final message",
        Event::ContinuationToken(_) => "a continuation token",
        Event::ConsistencyToken(_) => "a consistency token",
    }
}
