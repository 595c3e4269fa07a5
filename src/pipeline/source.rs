//! The source stage of a feed: keeps its push query open, decodes rows straight into Arrow
//! batches, and reopens the query (with backoff, from the resume positions) when it breaks.
//!
//! It sends batches over a bounded channel: when the writer falls behind, `send` waits, this
//! task stops reading the response body, and HTTP flow control pushes back on ksqlDB.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::changelog::{Changelog, Unplaced as ChangeUnplaced};
use super::events::{BatchSent, FeedMetrics, QueryFailed, QueryReopening, ResumeFilterRejected, RowRejected};
use super::query::{event_time_problem, push_query, row_position, Resume};
use crate::backoff::Backoff;
use crate::config::{Delivery, ErrorPolicy};
use crate::ksqldb::client::{ClientError, KsqlClient, QueryRequest};
use crate::ksqldb::Event;
use crate::ksqldb::Framing;
use crate::lake::{CommitState, MemoryBudget, Position, Rejected, Reservation};
use crate::metrics::{FeedState, Health};
use crate::schema::{Column, RowDecoder};

/// What the source stage hands to the buffer stage.
#[derive(Debug)]
pub enum SourceMessage {
    /// New columns follow. Sent on the first connect and whenever a reconnect brings different
    /// columns (the buffer then flushes with reason `schema_change`).
    Schema,
    /// Decoded rows with their ksqlDB positions, read once where each row was decoded:
    /// `positions` has one entry per row of `batch` (empty when the query selects none), and
    /// `passed` lists the rows that arrived but are not in `batch` (skipped as committed,
    /// rejected and not kept), and `rejected` the rows for the dead letter.
    ///
    /// `reservation` holds the batch's memory against the budget while it waits in the channel,
    /// so what is queued counts like what is buffered.
    Batch {
        batch: RecordBatch,
        positions: Vec<Option<Position>>,
        passed: Vec<Position>,
        rejected: Vec<Rejected>,
        reservation: Reservation,
    },
    /// A continuation token: every row sent before it precedes it.
    Token(String),
}

/// How a feed's source behaves.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub feed: String,
    /// The ksqlDB stream or table, as written in the statement.
    pub source: String,
    pub delivery: Delivery,
    /// Rows per Arrow batch.
    pub batch_rows: usize,
    /// A partly filled batch is sent after this long, so a slow feed still moves.
    pub linger: Duration,
    /// No byte for this long means the query stalled: it is reopened.
    pub idle_timeout: Duration,
    pub backoff: Backoff,
    pub error_policy: ErrorPolicy,
    pub max_rejected_per_minute: u64,
    /// Longer rows are rejected without being held whole.
    pub max_line_bytes: usize,
    /// The `timestamp_column` when it is a column of the source (not ROWTIME or processing
    /// time): checked against every header, so a feed whose rows cannot be partitioned stops
    /// with a clear error before reading any.
    pub event_time_column: Option<String>,
    /// The feed is a table's changelog (`changelog = true`): the query asks for tombstones and
    /// every change is placed by [`super::changelog::Changelog`]; its keys may hold this many
    /// bytes.
    pub changelog: Option<u64>,
}

/// In `continuation-token` mode, rows are held until the token that follows them; without any
/// token after this many batches the server is assumed not to send them.
const HELD_BATCHES_WITHOUT_TOKEN: usize = 16;

/// Rows that have arrived already are taken this many at a time before shutdown, the linger
/// and the stall timers are looked at again.
const READY_STREAK: u32 = 256;

/// Why a push query ended or was reopened; the values of the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Disconnect,
    Terminated,
    Stall,
    InBandError,
    /// A changelog's partition went back to an offset it had passed: read it again from the
    /// start.
    OutOfOrder,
    /// Opening the query failed (`ClientError::reason`: connect, dns, tls, content_type, …).
    Open(&'static str),
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Disconnect => "disconnect",
            EndReason::Terminated => "terminated",
            EndReason::Stall => "stall",
            EndReason::InBandError => "in_band_error",
            EndReason::OutOfOrder => "out_of_order",
            EndReason::Open(reason) => reason,
        }
    }
}

/// A feed that cannot go on (unknown source, bad statement, bad credentials).
#[derive(Debug, thiserror::Error)]
pub enum FeedFailed {
    #[error("feed {feed} stopped")]
    Query {
        feed: String,
        #[source]
        source: ClientError,
    },
    /// A rejected row under `error_policy = "fail"`, or more rejected rows than the limit.
    #[error("feed {feed} stopped: {reason}")]
    Rejected { feed: String, reason: String },
}

/// The source stage of one feed.
pub struct FeedSource {
    pub settings: SourceSettings,
    pub client: Arc<KsqlClient>,
    pub(crate) metrics: FeedMetrics,
    pub health: Health,
    /// The process's memory budget: each batch sent is reserved in it.
    pub(crate) budget: Arc<MemoryBudget>,
}

/// Rejected rows in the last minute, to stop a feed whose input is mostly garbage.
#[derive(Debug)]
struct Rejections {
    recent: std::collections::VecDeque<Instant>,
    limit: u64,
    /// Lines without a position kept already.
    unplaced: Unplaced,
}

impl Rejections {
    /// Notes one rejected row; true when more than the limit were rejected within a minute.
    fn note(&mut self) -> bool {
        let now = Instant::now();
        while self.recent.front().is_some_and(|&at| now.duration_since(at) > Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() as u64 > self.limit
    }
}

/// Rejected lines without a position already kept in this run, so a reconnect that sends one
/// again does not keep it again. Such a line has no offset; it is known by its text, the last
/// position before it in the stream and how many unplaced lines came since that position
/// (identical garbage after different rows is kept each time). Bounded: past the limit it
/// starts over, and a line may then be kept twice.
#[derive(Debug, Default)]
struct Unplaced {
    seen: std::collections::HashSet<u64>,
    /// The last position read from the stream (skipped rows included), and the unplaced lines
    /// since it.
    after: Option<Position>,
    since: u32,
}

impl Unplaced {
    const LIMIT: usize = 100_000;

    /// Notes a row with a position, kept or skipped.
    fn passed(&mut self, position: Position) {
        if self.after != Some(position) {
            self.after = Some(position);
            self.since = 0;
        }
    }

    /// A new connection: positions restart with its first row.
    fn reconnected(&mut self) {
        self.after = None;
        self.since = 0;
    }

    /// True the first time this line is seen at this place in the stream.
    fn first_time(&mut self, raw: &[u8]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (raw, self.after, self.since).hash(&mut hasher);
        self.since += 1;
        if self.seen.len() >= Self::LIMIT {
            self.seen.clear();
        }
        self.seen.insert(hasher.finish())
    }
}

/// Connections in a row a changelog may end because a partition sent an offset again (a
/// re-delivery); beyond, the cause is lasting and the feed stops.
const MAX_OUT_OF_ORDER: u32 = 5;

/// How the connection ends for a change the changelog cannot place, or (`Err`) why this row
/// alone is rejected.
fn connection_end(problem: ChangeUnplaced) -> Result<Ended, String> {
    match problem {
        ChangeUnplaced::Feed(reason) => Ok(Ended::Failed(reason)),
        ChangeUnplaced::Replay(reason) => Ok(Ended::Reopen(EndReason::OutOfOrder, reason)),
        ChangeUnplaced::Row(reason) => Err(reason),
    }
}

/// The position at the start of a StreamedRow row line, `{"row":{"columns":[ROWTIME,
/// ROWPARTITION, ROWOFFSET, …`, as ksqlDB writes it; `None` for any other text.
fn streamed_row_position(line: &[u8]) -> Option<Position> {
    const START: &[u8] = br#"{"row":{"columns":["#;
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    line[start..].starts_with(START).then_some(())?;
    // from the array's `[`
    row_position(&line[start + START.len() - 1..])
}

/// How one connection ended.
enum Ended {
    /// The feed must stop: a rejected row under `error_policy = "fail"`, or too many.
    Failed(String),
    Shutdown,
    Reopen(EndReason, String),
}

impl FeedSource {
    /// Runs until shutdown (Ok) or a permanent error (Err). `committed` is the feed's commit
    /// state at start: rows in it are never sent again, and neither is any row already sent
    /// in this run (it is buffered, on its way to the lake, or committed).
    pub async fn run(
        self,
        committed: CommitState,
        sender: mpsc::Sender<SourceMessage>,
        shutdown: CancellationToken,
    ) -> Result<(), FeedFailed> {
        let mut committed = committed;
        if self.settings.delivery == Delivery::AtLeastOnce {
            // At-least-once resumes after the watermark only: committed runs above it (rows
            // written ahead of older buffered ones) may come again after a restart.
            committed.ranges.clear();
        }
        let mut resume = Resume::new(committed);
        if self.settings.changelog.is_some() {
            // every connection reads the whole changelog: its deletes are placed by what came
            // before them (and a WHERE on a table turns the rows it filters into tombstones)
            resume.server_filter = false;
        }
        let mut rejections = Rejections {
            recent: std::collections::VecDeque::new(),
            limit: self.settings.max_rejected_per_minute,
            unplaced: Unplaced::default(),
        };
        let feed = self.settings.feed.clone();
        let mut columns: Option<Vec<Column>> = None;
        let mut attempt: u32 = 0;
        // connections in a row that a changelog ended for an offset sent again
        let mut out_of_order = 0;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let filtered = !resume.start_after().is_empty();
            let ended = match self
                .stream_once(&mut resume, &mut columns, &sender, &shutdown, &mut attempt, &mut rejections)
                .await
            {
                Ok(ended) => ended,
                Err(error) if filtered && error.error_code() == Some(40001) => {
                    // A server that refuses ROWPARTITION/ROWOFFSET in WHERE: resume without the
                    // server-side filter; the client-side check still skips committed rows.
                    ResumeFilterRejected { error: &error }.emit(&self.metrics);
                    resume.server_filter = false;
                    continue;
                }
                Err(error) if !error.is_retryable() => {
                    QueryFailed { error: &error.to_string() }.emit(&self.metrics, &self.health);
                    return Err(FeedFailed::Query { feed, source: error });
                }
                Err(error) => Ended::Reopen(EndReason::Open(error.reason()), error.with_causes()),
            };
            self.metrics.push_query_up.set(0);
            out_of_order = match ended {
                Ended::Reopen(EndReason::OutOfOrder, _) => out_of_order + 1,
                _ => 0,
            };
            let ended = match ended {
                Ended::Reopen(_, reason) if out_of_order > MAX_OUT_OF_ORDER => Ended::Failed(format!(
                    "{reason}, on {out_of_order} readings in a row: the changelog cannot be read the same way twice"
                )),
                ended => ended,
            };
            match ended {
                Ended::Failed(reason) => {
                    QueryFailed { error: &reason }.emit(&self.metrics, &self.health);
                    return Err(FeedFailed::Rejected { feed, reason });
                }
                Ended::Shutdown => {
                    self.health.stop_feed(&feed);
                    return Ok(());
                }
                Ended::Reopen(reason, detail) => {
                    let delay = self.settings.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    let at_latest = self.settings.delivery == Delivery::Latest;
                    QueryReopening { reason: reason.as_str(), detail: &detail, attempt, delay, at_latest }
                        .emit(&self.metrics, &self.health);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Opens the query once and streams it until it ends.
    async fn stream_once(
        &self,
        resume: &mut Resume,
        columns: &mut Option<Vec<Column>>,
        sender: &mpsc::Sender<SourceMessage>,
        shutdown: &CancellationToken,
        attempt: &mut u32,
        rejections: &mut Rejections,
    ) -> Result<Ended, ClientError> {
        let settings = &self.settings;
        let (sql, properties) = push_query(&settings.source, settings.delivery, &resume.start_after());
        tracing::info!(feed = %settings.feed, sql = %sql, "opening push query");
        let mut request_properties = serde_json::Map::new();
        if settings.delivery == Delivery::ContinuationToken {
            if let Some(token) = resume.token.as_ref().or(resume.committed.token.as_ref()) {
                request_properties.insert("request.ksql.query.push.continuation.token".into(), token.clone().into());
            }
        }
        let mut properties = properties;
        if settings.changelog.is_some() {
            // one output per change: the record cache would fold changes of a key together,
            // differently on every reading. Only the name every ksqlDB knows: a server refuses a
            // request naming a Kafka Streams setting its own Kafka does not have.
            properties.insert("ksql.streams.cache.max.bytes.buffering".into(), 0.into());
        }
        let key_names = match settings.changelog {
            Some(_) => {
                let described = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                    described = self.client.describe(&settings.source) => described?,
                };
                described.into_iter().filter(|(_, key)| *key).map(|(name, _)| name).collect()
            }
            None => Vec::new(),
        };
        let tombstones = settings.changelog.is_some();
        let request = QueryRequest { sql, properties, request_properties, tombstones };
        let mut stream = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            opened = self.client.stream_query(request) => opened?,
        };
        let header_columns = stream.header().columns.clone();
        if let Some(problem) =
            event_time_problem(settings.event_time_column.as_deref(), &settings.source, &header_columns)
        {
            return Ok(Ended::Failed(problem));
        }
        if columns.as_ref() != Some(&header_columns) {
            if columns.is_some() {
                tracing::info!(feed = %settings.feed, "push query schema changed");
            }
            *columns = Some(header_columns.clone());
            if sender.send(SourceMessage::Schema).await.is_err() {
                return Ok(Ended::Shutdown);
            }
        }
        self.health.set_feed(&settings.feed, FeedState::Streaming);
        self.metrics.push_query_up.set(1);
        rejections.unplaced.reconnected();
        let query_id = stream.query_id().map(str::to_string);
        stream.set_max_message_bytes(settings.max_line_bytes);

        let mut changelog = match settings.changelog {
            Some(limit) => match Changelog::new(&header_columns, &key_names, limit) {
                Ok(changelog) => Some(changelog),
                Err(problem) => return Ok(Ended::Failed(format!("the changelog of {}: {problem}", settings.source))),
            },
            None => None,
        };
        let mut decoder = match changelog {
            Some(_) => RowDecoder::new(&Changelog::columns(&header_columns)),
            None => RowDecoder::new(&header_columns),
        };
        let mut batch = Pending::default();
        // Scalable push queries cannot select ROWPARTITION/ROWOFFSET.
        let positioned = settings.delivery != Delivery::ContinuationToken;
        let mut hold_for_token = settings.delivery == Delivery::ContinuationToken;
        // Two timers made once and reset sparingly (not one per row): the linger of a partly
        // filled batch, and the stall detector, which fires between 7/8 and all of
        // `idle_timeout` after the last event.
        let linger = tokio::time::sleep(settings.linger);
        tokio::pin!(linger);
        let mut lingering = false;
        let idle = tokio::time::sleep(settings.idle_timeout);
        tokio::pin!(idle);
        let mut idle_armed_at = Instant::now();
        let idle_slack = settings.idle_timeout / 8;
        // Rows taken one after another without waiting since the timers and the shutdown
        // were last looked at.
        let mut ready_streak = 0;
        let ended = loop {
            // A burst's rows are taken straight from what has arrived; every READY_STREAK rows
            // (and whenever nothing has) the select below looks at shutdown and the timers.
            let ready = if ready_streak < READY_STREAK { stream.next_ready() } else { None };
            let event = if let Some(event) = ready {
                ready_streak += 1;
                event
            } else {
                ready_streak = 0;
                let now = Instant::now();
                if now.duration_since(idle_armed_at) >= idle_slack {
                    idle.as_mut().reset(now + settings.idle_timeout);
                    idle_armed_at = now;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ended::Shutdown,
                    // The buffer stage stopped (a permanent failure): so does this feed.
                    _ = sender.closed() => break Ended::Shutdown,
                    _ = &mut linger, if lingering => {
                        if !self.send_batch(&mut decoder, &mut batch, sender).await {
                            break Ended::Shutdown;
                        }
                        lingering = false;
                        continue;
                    }
                    _ = &mut idle => {
                        break Ended::Reopen(EndReason::Stall, format!("no data for {:?}", settings.idle_timeout));
                    }
                    event = stream.next_event() => event,
                }
            };
            match event {
                Ok(Some(Event::Row { values, tombstone })) => {
                    // a change that cannot be placed is rejected below like a row without a position
                    let mut unplaced = None;
                    let (values, position) = match changelog.as_mut().map(|log| log.place(&values, tombstone)) {
                        None => {
                            let position = positioned.then(|| row_position(&values)).flatten();
                            (values, position)
                        }
                        Some(Ok(Some(position))) => {
                            let placed = changelog.as_ref().map(Changelog::row).unwrap_or_default();
                            (Bytes::copy_from_slice(placed), Some(position))
                        }
                        // a delete of a key the table does not hold: no change
                        Some(Ok(None)) => continue,
                        Some(Err(problem)) => match connection_end(problem) {
                            Ok(ended) => break ended,
                            Err(reason) => {
                                unplaced = Some(reason);
                                (values, None)
                            }
                        },
                    };
                    if let Some(position) = position {
                        rejections.unplaced.passed(position);
                    }
                    if position.is_none() && positioned && settings.delivery != Delivery::Latest {
                        if !rejections.unplaced.first_time(&values) {
                            continue; // the same row again after a reconnect: kept once already
                        }
                        // Exactly-once and at-least-once place every row by its position; a row
                        // without one cannot be tracked, so it is kept aside, not guessed at.
                        let record = Rejected {
                            length: values.len() as u64,
                            raw: Bytes::copy_from_slice(&values),
                            error_type: "position",
                            error: unplaced.unwrap_or_else(|| {
                                "the row has no ROWPARTITION/ROWOFFSET (null or not integers)".into()
                            }),
                            column: None,
                            position: None,
                            received_ms: chrono::Utc::now().timestamp_millis(),
                        };
                        if let Some(ended) = self.reject(record, &mut batch, rejections) {
                            break ended;
                        }
                        continue;
                    }
                    if let Some(position) = position {
                        if settings.delivery != Delivery::Latest {
                            if resume.handed_on(position) {
                                continue; // sent on in this run already: buffered or committed
                            }
                            resume.observe(position);
                            if resume.committed.covers(position.partition, position.offset) {
                                batch.passed.push(position); // in the lake already: never twice
                                                             // A replay of committed history sends only these: hand them
                                                             // on in bounded batches rather than hold them all.
                                if batch.passed.len() >= settings.batch_rows {
                                    if !self.send_batch(&mut decoder, &mut batch, sender).await {
                                        break Ended::Shutdown;
                                    }
                                    lingering = false;
                                }
                                continue;
                            }
                        }
                    }
                    match decoder.append(&values) {
                        Ok(()) => batch.positions.push(position),
                        Err(error) => {
                            let error_type = if error.column == "<row>" { "row_shape" } else { "value" };
                            // A copy: a slice would pin the whole network chunk in memory.
                            let record = Rejected {
                                length: values.len() as u64,
                                raw: Bytes::copy_from_slice(&values),
                                error_type,
                                error: error.reason,
                                column: Some(error.column),
                                position,
                                received_ms: chrono::Utc::now().timestamp_millis(),
                            };
                            if let Some(ended) = self.reject(record, &mut batch, rejections) {
                                break ended;
                            }
                        }
                    }
                    *attempt = 0;
                    if hold_for_token {
                        // Rows wait for the token that follows them: after a cut the query
                        // resumes from the last token and sends them again.
                        if decoder.len() >= settings.batch_rows.saturating_mul(HELD_BATCHES_WITHOUT_TOKEN) {
                            tracing::warn!(feed = %settings.feed,
                                "no continuation token after many rows: is ksql.query.push.v2.continuation.tokens.enabled \
                                 set on the server? sending rows on (at-least-once)");
                            hold_for_token = false;
                        }
                        continue;
                    }
                    if decoder.len() >= settings.batch_rows {
                        if !self.send_batch(&mut decoder, &mut batch, sender).await {
                            break Ended::Shutdown;
                        }
                        lingering = false;
                    } else if !lingering && !decoder.is_empty() {
                        linger.as_mut().reset(Instant::now() + settings.linger);
                        lingering = true;
                    }
                }
                Ok(Some(Event::Header(_))) => {}
                Ok(Some(Event::ContinuationToken(token))) => {
                    // Rows before the token go first, so the buffer stage sees them in order.
                    if !self.send_batch(&mut decoder, &mut batch, sender).await
                        || sender.send(SourceMessage::Token(token.clone())).await.is_err()
                    {
                        break Ended::Shutdown;
                    }
                    lingering = false;
                    resume.token = Some(token);
                }
                Ok(Some(Event::FinalMessage(message))) => {
                    break Ended::Reopen(EndReason::Terminated, message);
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ended::Reopen(EndReason::Terminated, "response ended".into()),
                Err(ClientError::InBand(error)) => {
                    break Ended::Reopen(EndReason::InBandError, error.to_string());
                }
                Err(ClientError::Frame(error)) if stream.framing() == Framing::JsonArray => {
                    // A JSON-array response cannot be resynchronized, and reopening would hit
                    // the same element for ever. ksql-lake asks for the delimited framing: a
                    // server (or proxy) that answers otherwise is misconfigured.
                    break Ended::Failed(format!(
                        "the server answered in the JSON-array framing and one of its elements is broken ({}); \
                         ksql-lake asks for application/vnd.ksqlapi.delimited.v1: check what stands between them",
                        error.reason
                    ));
                }
                Err(ClientError::Frame(error)) => {
                    // One malformed line: the line framings go on at the next one. Its position
                    // is trusted only when it is the plausible next offset of a partition this
                    // run has seen: a broken line's first values may be anything, and a false
                    // position would mark genuine rows as handed on.
                    //
                    // A changelog line keeps its position when it is a StreamedRow row that
                    // starts with it: the line then takes its offset like an upsert, so the
                    // orders of the deletes after it do not depend on whether it decodes.
                    let position = match changelog.as_mut() {
                        Some(log) => match streamed_row_position(&error.raw).map(|position| log.pass(position)) {
                            Some(Ok(position)) => Some(position),
                            Some(Err(problem)) => match connection_end(problem) {
                                Ok(ended) => break ended,
                                Err(_) => None,
                            },
                            None => None,
                        },
                        None => positioned
                            .then(|| row_position(&error.raw))
                            .flatten()
                            .filter(|&position| resume.is_next(position)),
                    };
                    if let Some(position) = position {
                        rejections.unplaced.passed(position);
                        if settings.delivery != Delivery::Latest && resume.covers(position) {
                            continue; // handed on or committed already
                        }
                        resume.observe(position);
                    } else if !rejections.unplaced.first_time(&error.raw) {
                        continue; // the same line again after a reconnect: kept once already
                    }
                    let record = Rejected {
                        error_type: if error.too_long { "line_too_long" } else { "frame" },
                        error: error.reason,
                        column: None,
                        position,
                        length: error.length,
                        raw: error.raw,
                        received_ms: chrono::Utc::now().timestamp_millis(),
                    };
                    if let Some(ended) = self.reject(record, &mut batch, rejections) {
                        break ended;
                    }
                    *attempt = 0;
                    // Held rows wait for their token; the rejected row waits with them.
                    if !lingering && !hold_for_token {
                        linger.as_mut().reset(Instant::now() + settings.linger);
                        lingering = true;
                    }
                }
                Err(error) if error.is_retryable() => {
                    break Ended::Reopen(EndReason::Disconnect, error.with_causes());
                }
                Err(error) => return Err(error),
            }
        };
        // Held rows are sent again by the next query only when it can start from a token; with
        // none yet (a server that sends none), dropping them would lose them.
        let replayable = resume.token.is_some() || resume.committed.token.is_some();
        if hold_for_token && replayable {
            // Not covered by a token: the next query (from the last token) sends them again.
            decoder.finish();
        } else {
            // Whatever was decoded goes on to the buffer; nothing received is dropped.
            self.send_batch(&mut decoder, &mut batch, sender).await;
        }
        drop(stream);
        if let Some(query_id) = query_id {
            self.client.close_query(&query_id).await;
        }
        Ok(ended)
    }

    /// A row or line that could not be decoded, handled by the feed's `error_policy`; `Some`
    /// when the feed must stop.
    fn reject(&self, record: Rejected, batch: &mut Pending, rejections: &mut Rejections) -> Option<Ended> {
        RowRejected { record: &record, policy: self.settings.error_policy }.emit(&self.metrics);
        let limit = self.settings.max_rejected_per_minute;
        let over_limit = rejections.note();
        match self.settings.error_policy {
            ErrorPolicy::Fail => {
                return Some(Ended::Failed(format!(
                    "a row could not be decoded ({}): {}",
                    record.error_type, record.error
                )))
            }
            ErrorPolicy::Skip => batch.passed.extend(record.position),
            ErrorPolicy::DeadLetter => batch.rejected.push(record),
        }
        over_limit.then(|| {
            Ended::Failed(format!(
                "more than {limit} rows could not be decoded within a minute (max_rejected_per_minute); \
                 the producer or the feed's schema is likely broken"
            ))
        })
    }

    /// Sends the decoded rows on; false when the buffer stage is gone.
    async fn send_batch(
        &self,
        decoder: &mut RowDecoder,
        pending: &mut Pending,
        sender: &mpsc::Sender<SourceMessage>,
    ) -> bool {
        if decoder.is_empty() && pending.passed.is_empty() && pending.rejected.is_empty() {
            return true;
        }
        let batch = decoder.finish();
        let rows = batch.num_rows();
        let Pending { mut positions, passed, rejected } = std::mem::take(pending);
        if positions.iter().all(Option::is_none) {
            positions.clear();
        }
        let waited = Instant::now();
        let reservation = self.budget.reserve(batch.get_array_memory_size() as u64);
        let message = SourceMessage::Batch { batch, positions, passed, rejected, reservation };
        let sent = sender.send(message).await.is_ok();
        BatchSent { rows, blocked: waited.elapsed() }.emit(&self.metrics);
        sent
    }
}

/// The positions of the rows decoded since the last batch was sent.
#[derive(Debug, Default)]
struct Pending {
    /// One per decoded row.
    positions: Vec<Option<Position>>,
    /// Rows that arrived and were not decoded into the batch, nor kept in the dead letter.
    passed: Vec<Position>,
    /// Rows that could not be decoded, for the dead letter.
    rejected: Vec<Rejected>,
}
