//! The source stage of a feed: keeps its push query open, decodes rows straight into Arrow
//! batches, and reopens the query (with backoff, from the resume positions) when it breaks.
//!
//! It sends batches over a bounded channel: when the writer falls behind, `send` waits, this
//! task stops reading the response body, and HTTP flow control pushes back on ksqlDB.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::query::{leading_position, push_query, Resume};
use crate::config::Delivery;
use crate::ksqldb::client::{ClientError, KsqlClient, QueryRequest};
use crate::ksqldb::Event;
use crate::lake::{self, CommitState};
use crate::metrics::{FeedState, Health, Metrics};
use crate::schema::{Column, RowDecoder};

/// What the source stage hands to the buffer stage.
#[derive(Debug)]
pub enum SourceMessage {
    /// The columns of the rows that follow. Sent on the first connect and whenever a reconnect
    /// brings different columns (the buffer then flushes with reason `schema_change`).
    Schema(Vec<Column>),
    /// Decoded rows, and the highest position per partition seen while decoding them
    /// (including rows skipped because they were already committed).
    Batch { batch: RecordBatch, positions: lake::Positions },
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
}

/// In `continuation-token` mode, rows are held until the token that follows them; without any
/// token after this many batches the server is assumed not to send them.
const HELD_BATCHES_WITHOUT_TOKEN: usize = 16;

/// Exponential backoff with jitter between reconnect attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(30), multiplier: 2.0 }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based): full jitter over the exponential bound.
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self.initial.as_secs_f64() * self.multiplier.powi(attempt.min(30) as i32);
        let bound = bound.min(self.max.as_secs_f64());
        let jittered = bound * (0.5 + rand::random::<f64>() * 0.5);
        Duration::from_secs_f64(jittered)
    }
}

/// Why a push query ended or was reopened; the values of the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Disconnect,
    ServerError,
    Terminated,
    Stall,
    InBandError,
    Decode,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Disconnect => "disconnect",
            EndReason::ServerError => "server_error",
            EndReason::Terminated => "terminated",
            EndReason::Stall => "stall",
            EndReason::InBandError => "in_band_error",
            EndReason::Decode => "decode",
        }
    }
}

/// A feed that cannot go on (unknown source, bad statement, bad credentials).
#[derive(Debug, thiserror::Error)]
#[error("feed {feed} stopped: {source}")]
pub struct FeedFailed {
    pub feed: String,
    #[source]
    pub source: ClientError,
}

/// The source stage of one feed.
pub struct FeedSource {
    pub settings: SourceSettings,
    pub client: Arc<KsqlClient>,
    pub metrics: Metrics,
    pub health: Health,
}

/// How one connection ended.
enum Ended {
    Shutdown,
    Reopen(EndReason, String),
}

impl FeedSource {
    /// Runs until shutdown (Ok) or a permanent error (Err). `committed` is the feed's commit
    /// state, kept current by the buffer stage; committed rows are never sent again.
    pub async fn run(
        self,
        committed: Arc<std::sync::Mutex<CommitState>>,
        sender: mpsc::Sender<SourceMessage>,
        shutdown: CancellationToken,
    ) -> Result<(), FeedFailed> {
        let mut resume = Resume::default();
        let feed = self.settings.feed.clone();
        let up = self.metrics.push_query_up.with_label_values(&[&feed]);
        let mut columns: Option<Vec<Column>> = None;
        let mut attempt: u32 = 0;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            resume.committed = committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            if self.settings.delivery == Delivery::AtLeastOnce {
                // At-least-once resumes after the watermark only: committed runs above it (rows
                // written ahead of older buffered ones) may come again after a restart.
                resume.committed.ranges.clear();
            }
            let filtered = !resume.start_after().is_empty();
            let ended = match self.stream_once(&mut resume, &mut columns, &sender, &shutdown, &mut attempt).await {
                Ok(ended) => ended,
                Err(error) if filtered && error.error_code() == Some(40001) => {
                    // A server that refuses ROWPARTITION/ROWOFFSET in WHERE: resume without the
                    // server-side filter; the client-side check still skips committed rows.
                    tracing::warn!(feed = %feed, %error,
                        "ksqlDB rejected the resume filter; reading from earliest and skipping committed rows client-side");
                    resume.server_filter = false;
                    continue;
                }
                Err(error) if !error.is_retryable() => {
                    up.set(0);
                    tracing::error!(feed = %feed, %error, "push query failed permanently; feed stopped");
                    self.health.set_feed(&feed, FeedState::Failed { error: error.to_string() });
                    return Err(FeedFailed { feed, source: error });
                }
                Err(error) => Ended::Reopen(EndReason::ServerError, error.to_string()),
            };
            up.set(0);
            match ended {
                Ended::Shutdown => {
                    self.health.set_feed(&feed, FeedState::Stopped);
                    return Ok(());
                }
                Ended::Reopen(reason, detail) => {
                    let delay = self.settings.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    self.metrics.push_query_reconnects.with_label_values(&[&feed, reason.as_str()]).inc();
                    if self.settings.delivery == Delivery::Latest {
                        tracing::warn!(feed = %feed, reason = reason.as_str(), detail = %detail, attempt,
                            delay_ms = delay.as_millis() as u64,
                            "push query ended; reopening at latest: rows produced meanwhile are not ingested");
                    } else {
                        tracing::warn!(feed = %feed, reason = reason.as_str(), detail = %detail, attempt,
                            delay_ms = delay.as_millis() as u64, "push query ended; reopening");
                    }
                    self.health.set_feed(&feed, FeedState::Reconnecting { reason: reason.as_str().into() });
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
    ) -> Result<Ended, ClientError> {
        let settings = &self.settings;
        let (sql, properties) = push_query(&settings.source, settings.delivery, &resume.start_after());
        tracing::info!(feed = %settings.feed, sql = %sql, "opening push query");
        let mut request_properties = serde_json::Map::new();
        if settings.delivery == Delivery::ContinuationToken {
            if let Some(token) = resume.token.as_ref().or(resume.committed.token.as_ref()) {
                request_properties
                    .insert("request.ksql.query.push.continuation.token".into(), token.clone().into());
            }
        }
        let request = QueryRequest { sql, properties, request_properties };
        let mut stream = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            opened = self.client.stream_query(request) => opened?,
        };
        let header_columns = stream.header().columns.clone();
        if columns.as_ref() != Some(&header_columns) {
            if columns.is_some() {
                tracing::info!(feed = %settings.feed, "push query schema changed");
            }
            *columns = Some(header_columns.clone());
            if sender.send(SourceMessage::Schema(header_columns.clone())).await.is_err() {
                return Ok(Ended::Shutdown);
            }
        }
        self.health.set_feed(&settings.feed, FeedState::Streaming);
        self.metrics.push_query_up.with_label_values(&[&settings.feed]).set(1);
        let query_id = stream.query_id().map(str::to_string);

        let mut decoder = RowDecoder::new(&header_columns);
        let mut batch_positions = lake::Positions::new();
        let mut hold_for_token = settings.delivery == Delivery::ContinuationToken;
        let rejected = self.metrics.rows_rejected.with_label_values(&[&settings.feed]);
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
        let ended = loop {
            let now = Instant::now();
            if now.duration_since(idle_armed_at) >= idle_slack {
                idle.as_mut().reset(now + settings.idle_timeout);
                idle_armed_at = now;
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ended::Shutdown,
                _ = &mut linger, if lingering => {
                    if !self.send_batch(&mut decoder, &mut batch_positions, sender).await {
                        break Ended::Shutdown;
                    }
                    lingering = false;
                    continue;
                }
                _ = &mut idle => {
                    break Ended::Reopen(EndReason::Stall, format!("no data for {:?}", settings.idle_timeout));
                }
                event = stream.next_event() => event,
            };
            match event {
                Ok(Some(Event::Row { values, .. })) => {
                    let position = leading_position(&values).and_then(|(_, partition, offset)| {
                        Some((u32::try_from(partition).ok()?, u64::try_from(offset).ok()?))
                    });
                    if let Some((partition, offset)) = position {
                        let seen = batch_positions.entry(partition).or_insert(offset);
                        *seen = (*seen).max(offset);
                        if settings.delivery != Delivery::Latest && resume.covers(partition, offset) {
                            continue; // already in the lake or in a buffer: never twice
                        }
                        resume.observe(partition, offset);
                    }
                    match decoder.append(&values) {
                        Ok(()) => {}
                        Err(error) => {
                            rejected.inc();
                            tracing::warn!(feed = %settings.feed, column = %error.column, reason = %error.reason,
                                raw = %error.raw, "row rejected");
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
                        if !self.send_batch(&mut decoder, &mut batch_positions, sender).await {
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
                    if !self.send_batch(&mut decoder, &mut batch_positions, sender).await
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
                Err(error) if error.is_retryable() => {
                    break Ended::Reopen(EndReason::Disconnect, error.to_string());
                }
                Err(error) => return Err(error),
            }
        };
        if hold_for_token {
            // Not covered by a token: the next query (from the last token) sends them again.
            decoder.finish();
        } else {
            // Whatever was decoded goes on to the buffer; nothing received is dropped.
            self.send_batch(&mut decoder, &mut batch_positions, sender).await;
        }
        drop(stream);
        if let Some(query_id) = query_id {
            self.client.close_query(&query_id).await;
        }
        Ok(ended)
    }

    /// Sends the decoded rows on; false when the buffer stage is gone.
    async fn send_batch(
        &self,
        decoder: &mut RowDecoder,
        positions: &mut lake::Positions,
        sender: &mpsc::Sender<SourceMessage>,
    ) -> bool {
        if decoder.is_empty() && positions.is_empty() {
            return true;
        }
        let batch = decoder.finish();
        self.metrics.rows_received.with_label_values(&[&self.settings.feed]).inc_by(batch.num_rows() as u64);
        let positions = std::mem::take(positions);
        let waited = Instant::now();
        let sent = sender.send(SourceMessage::Batch { batch, positions }).await.is_ok();
        let blocked = waited.elapsed();
        if blocked > Duration::from_millis(1) {
            self.metrics.backpressure_seconds.with_label_values(&[&self.settings.feed]).inc_by(blocked.as_secs_f64());
        }
        sent
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), multiplier: 2.0 };
        for attempt in 0..50 {
            let delay = backoff.delay(attempt);
            let bound = (0.1 * 2f64.powi(attempt.min(30) as i32)).min(2.0);
            assert!(delay.as_secs_f64() <= bound + 1e-9, "attempt {attempt}: {delay:?}");
            assert!(delay.as_secs_f64() >= bound * 0.5 - 1e-9, "attempt {attempt}: {delay:?}");
        }
    }
}
