//! Fault injection for push queries, so client tests can exercise every way a real ksqlDB
//! stream ends badly: a cut connection, a stall, an in-band error, a server-side TERMINATE.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Something to do to a running push query (or stream pull query).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Send N more rows, then drop the connection abruptly: no final message; HTTP/1.1 closes
    /// the socket mid-chunked-body, HTTP/2 resets the stream.
    CutAfterRows(u64),
    /// Send N more body bytes (counted from the start of the body for a query armed with
    /// [`super::Simulator::inject_next`]), then drop the connection as above.
    CutAfterBytes(u64),
    /// Stop writing for this long while keeping the connection open; rows produced meanwhile
    /// are sent afterwards.
    Stall(Duration),
    /// Write an in-band error object with this message (e.g.
    /// `"java.lang.RuntimeException: boom"`), then end the response.
    Error(String),
    /// Terminate the query server-side: it ends like a completed query
    /// (`"Query Completed"` in StreamedRow, end of body in delimited, `]` in JSON array).
    Terminate,
}

/// The control block of one running query: its id, the close signal (`/close-query`) and an
/// inbox of injected faults.
#[derive(Debug)]
pub struct QueryControl {
    pub id: String,
    /// Cancelled by `/close-query`: the query ends as completed.
    pub close: CancellationToken,
    inbox: Mutex<Vec<Fault>>,
    /// Woken (with a stored permit) when a fault arrives.
    pub wake: Notify,
    /// Whether `/close-query` can find it: scalable push queries are not registered there,
    /// though faults still reach them.
    pub closable: bool,
    /// The connection the query runs on.
    pub connection: Option<u64>,
}

impl QueryControl {
    pub fn new(id: String, faults: Vec<Fault>) -> Self {
        QueryControl {
            id,
            close: CancellationToken::new(),
            inbox: Mutex::new(faults),
            wake: Notify::new(),
            closable: true,
            connection: None,
        }
    }

    /// The query runs on this connection.
    pub fn on_connection(mut self, connection: u64) -> Self {
        self.connection = Some(connection);
        self
    }

    /// A control block `/close-query` does not know (a scalable push query).
    pub fn unclosable(id: String) -> Self {
        QueryControl { closable: false, ..QueryControl::new(id, Vec::new()) }
    }

    pub fn push(&self, fault: Fault) {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.push(fault);
        }
        self.wake.notify_one();
    }

    pub fn take(&self) -> Vec<Fault> {
        self.inbox.lock().map(|mut inbox| std::mem::take(&mut *inbox)).unwrap_or_default()
    }
}
