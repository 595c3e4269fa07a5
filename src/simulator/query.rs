//! Running one push (or stream pull) query: read batches from the source log, filter,
//! project, frame, and hand bounded chunks to the HTTP body. The body channel holds a few
//! chunks only, so a slow client stalls this task rather than growing a buffer.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::fault::{Fault, QueryControl};
use super::format::{End, Writer};
use super::plan::Plan;
use super::source::Row;
use super::token;

/// Writes for the connection, or the error that aborts it (a cut). Each `Bytes` is one write
/// (one HTTP/1.1 chunk, one HTTP/2 DATA frame). A read batch's per-row writes travel together,
/// so the hand-over costs one channel message per batch rather than per row; on the wire each
/// row is still its own write.
pub type Chunk = Result<Vec<Bytes>, io::Error>;

/// Rows read from the log per batch (and so at most per body chunk).
const BATCH_ROWS: usize = 1024;

/// Chunks buffered between the query task and the connection.
const BODY_CHANNEL_CHUNKS: usize = 4;

/// The query task's end of a response body.
pub struct BodySender {
    tx: mpsc::Sender<Chunk>,
    /// Writes sent and not yet given to hyper.
    unsent: Arc<AtomicUsize>,
}

/// The connection's end: writes arrive in batches, and each is counted off as hyper takes it.
pub struct BodyReceiver {
    pub rx: mpsc::Receiver<Chunk>,
    pub unsent: Arc<AtomicUsize>,
}

pub fn body_channel() -> (BodySender, BodyReceiver) {
    let (tx, rx) = mpsc::channel(BODY_CHANNEL_CHUNKS);
    let unsent = Arc::new(AtomicUsize::new(0));
    (BodySender { tx, unsent: Arc::clone(&unsent) }, BodyReceiver { rx, unsent })
}

/// A query ready to run.
pub struct RunningQuery {
    pub plan: Plan,
    pub writer: Writer,
    pub query_id: String,
    /// The sequence number to read from next.
    pub cursor: u64,
    /// Stream pull queries end here; push queries never end on their own.
    pub stop_at: Option<u64>,
    pub control: Arc<QueryControl>,
    pub heartbeat: bool,
    /// Released (freeing the push-query slot) when the task ends.
    pub slot: Option<Box<dyn Send + Sync>>,
    /// Set for a scalable push query with continuation tokens.
    pub tokens: Option<Tokens>,
    /// Write every row with its own write, as ksqlDB's push-query writers do (one HTTP/1.1
    /// chunk, normally one HTTP/2 DATA frame, per row); otherwise a read batch per write.
    pub per_row: bool,
}

/// Where a scalable push query stands in each partition, and when to tell the client.
pub struct Tokens {
    /// Next offset per partition; rows below it were sent or filtered out already.
    positions: Vec<i64>,
    /// A token at least every this many rows (besides one after each read batch).
    every: usize,
    rows_since: usize,
    /// The positions moved since the last token.
    moved: bool,
}

impl Tokens {
    pub fn new(positions: Vec<i64>, every: usize) -> Self {
        Tokens { positions, every: every.max(1), rows_since: 0, moved: false }
    }

    /// Takes `row` into the position; false for a row before it (already delivered before
    /// the token the query resumed from).
    fn admit(&mut self, row: &Row) -> bool {
        let Some(next) = self.positions.get_mut(row.partition as usize) else {
            return true;
        };
        if row.offset < *next {
            return false;
        }
        *next = row.offset + 1;
        self.moved = true;
        true
    }

    fn write(&mut self, writer: &Writer, out: &mut Vec<u8>) {
        writer.continuation_token(out, &token::encode(&self.positions));
        self.rows_since = 0;
        self.moved = false;
    }

    /// Counts a sent row; writes a token when `every` rows went by.
    fn after_row(&mut self, writer: &Writer, out: &mut Vec<u8>) {
        self.rows_since += 1;
        if self.rows_since >= self.every {
            self.write(writer, out);
        }
    }

    /// At the end of a read batch: a token if the position moved.
    fn after_batch(&mut self, writer: &Writer, out: &mut Vec<u8>) {
        if self.moved {
            self.write(writer, out);
        }
    }
}

struct Out {
    tx: mpsc::Sender<Chunk>,
    unsent: Arc<AtomicUsize>,
    bytes_sent: u64,
    rows_sent: u64,
    cut_bytes: Option<u64>,
    cut_rows: Option<u64>,
    /// Writes queued and not yet handed to the connection.
    pending: Vec<Bytes>,
}

/// Whether to go on after a send.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

impl Out {
    /// Queues one write; false once the byte cut is reached (what fits before it is queued).
    fn queue(&mut self, mut buf: Vec<u8>) -> bool {
        if buf.is_empty() {
            return true;
        }
        let len = buf.len() as u64;
        if let Some(limit) = self.cut_bytes {
            if self.bytes_sent + len >= limit {
                let keep = (limit.saturating_sub(self.bytes_sent)) as usize;
                buf.truncate(keep);
                if !buf.is_empty() {
                    self.pending.push(Bytes::from(buf));
                }
                self.bytes_sent += keep as u64;
                return false;
            }
        }
        self.pending.push(Bytes::from(buf));
        self.bytes_sent += len;
        true
    }

    /// Hands the queued writes to the connection.
    async fn flush(&mut self) -> Flow {
        if self.pending.is_empty() {
            return Flow::Go;
        }
        let writes = std::mem::take(&mut self.pending);
        self.unsent.fetch_add(writes.len(), Ordering::AcqRel);
        if self.tx.send(Ok(writes)).await.is_err() {
            return Flow::Stop;
        }
        Flow::Go
    }

    /// Queues one write and hands everything queued on; at the byte cut, cuts the connection.
    async fn send(&mut self, buf: Vec<u8>) -> Flow {
        if !self.queue(buf) {
            self.cut().await;
            return Flow::Stop;
        }
        self.flush().await
    }

    /// At the byte cut: hands on what was queued before it, then drops the connection.
    async fn cut(&mut self) {
        if self.flush().await == Flow::Go {
            self.abort().await;
        }
    }

    /// Drops the connection abruptly, after letting the connection write what was sent.
    async fn abort(&self) {
        let drained = async {
            while self.unsent.load(Ordering::Acquire) > 0 && !self.tx.is_closed() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = self.tx.send(Err(io::Error::other("simulator fault: connection cut"))).await;
    }
}

impl RunningQuery {
    /// Runs until LIMIT, close, fault, stop point or client disconnect. `header` was already
    /// written into `first` so the client sees the metadata before any row.
    pub async fn run(mut self, body: BodySender) {
        let BodySender { tx, unsent } = body;
        let mut out =
            Out { tx, unsent, bytes_sent: 0, rows_sent: 0, cut_bytes: None, cut_rows: None, pending: Vec::new() };
        let mut head = Vec::new();
        self.writer.header(&mut head, &self.query_id, &self.plan);
        // faults armed before the start count from the first body byte
        let mut pending = self.control.take();
        let mut stall = None;
        let mut ending = None;
        self.absorb(&mut out, &mut pending, &mut stall, &mut ending);
        if out.send(head).await == Flow::Stop {
            return;
        }
        if self.plan.limit == Some(0) {
            ending = Some(End::LimitReached);
        }
        let source = Arc::clone(&self.plan.source);
        loop {
            let mut faults = self.control.take();
            self.absorb(&mut out, &mut faults, &mut stall, &mut ending);
            if out.cut_rows.is_some_and(|cut| out.rows_sent >= cut) {
                out.abort().await;
                return;
            }
            if self.control.close.is_cancelled() && ending.is_none() {
                ending = Some(End::Completed);
            }
            if let Some(end) = ending.take() {
                let mut buf = Vec::new();
                self.writer.end(&mut buf, &end);
                let _ = out.send(buf).await;
                tracing::debug!(query_id = %self.query_id, ?end, "query ended");
                return;
            }
            if let Some(duration) = stall.take() {
                tokio::select! {
                    _ = tokio::time::sleep(duration) => {}
                    _ = out.tx.closed() => return,
                    _ = self.control.close.cancelled() => {}
                }
                continue;
            }
            let notified = source.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = source.read(self.cursor, BATCH_ROWS);
            if batch.rows.is_empty() {
                if self.stop_at.is_some_and(|stop| self.cursor >= stop) {
                    ending = Some(End::Completed);
                    continue;
                }
                let heartbeat = self.heartbeat;
                tokio::select! {
                    _ = &mut notified => {}
                    _ = out.tx.closed() => return,
                    _ = self.control.close.cancelled() => {}
                    _ = self.control.wake.notified() => {}
                    _ = async {
                        if heartbeat {
                            tokio::time::sleep(Duration::from_secs(1)).await
                        } else {
                            std::future::pending().await
                        }
                    } => {
                        if out.send(b"\n".to_vec()).await == Flow::Stop {
                            return;
                        }
                    }
                }
                continue;
            }
            let start = batch.next - batch.rows.len() as u64;
            let mut buf = Vec::with_capacity(batch.rows.len() * (batch.rows[0].text.len() + 24));
            for (seq, row) in (start..).zip(&batch.rows) {
                if self.stop_at.is_some_and(|stop| seq >= stop) {
                    ending = Some(End::Completed);
                    break;
                }
                self.cursor = seq + 1;
                if let Some(tokens) = &mut self.tokens {
                    if !tokens.admit(row) {
                        continue;
                    }
                }
                if !self.plan.matches(row) {
                    continue;
                }
                self.writer.row(&mut buf, &self.plan, row);
                out.rows_sent += 1;
                if let Some(tokens) = &mut self.tokens {
                    tokens.after_row(&self.writer, &mut buf);
                }
                if self.per_row && !buf.is_empty() && out.cut_rows.is_none_or(|cut| out.rows_sent < cut) {
                    let row_bytes = std::mem::replace(&mut buf, Vec::with_capacity(row.text.len() + 48));
                    if !out.queue(row_bytes) {
                        out.cut().await;
                        return;
                    }
                }
                if out.cut_rows.is_some_and(|cut| out.rows_sent >= cut) {
                    if out.send(buf).await == Flow::Go {
                        out.abort().await;
                    }
                    return;
                }
                if self.plan.limit.is_some_and(|limit| out.rows_sent >= limit) {
                    ending = Some(End::LimitReached);
                    break;
                }
            }
            if let Some(tokens) = &mut self.tokens {
                tokens.after_batch(&self.writer, &mut buf);
            }
            if out.send(buf).await == Flow::Stop {
                return;
            }
        }
    }

    /// Turns faults into thresholds relative to what was sent so far.
    fn absorb(&self, out: &mut Out, faults: &mut Vec<Fault>, stall: &mut Option<Duration>, ending: &mut Option<End>) {
        for fault in faults.drain(..) {
            tracing::debug!(query_id = %self.query_id, ?fault, "fault applied");
            match fault {
                Fault::CutAfterRows(n) => out.cut_rows = Some(out.rows_sent + n),
                Fault::CutAfterBytes(n) => out.cut_bytes = Some(out.bytes_sent + n),
                Fault::Stall(duration) => *stall = Some(duration),
                Fault::Error(message) => *ending = Some(End::Error(message)),
                Fault::Terminate => {
                    if ending.is_none() {
                        *ending = Some(End::Completed);
                    }
                }
            }
        }
    }
}
