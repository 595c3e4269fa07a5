//! What can go wrong talking to ksqlDB, split by what the caller should do about it
//! ([`ClientError::is_retryable`]).

use crate::ksqldb::error::ServerError;
use crate::ksqldb::frame::FrameError;

/// HTTP error bodies that are not ksqlDB errors are cut to this many bytes.
const BODY_SNIPPET_BYTES: usize = 4096;

/// The transport-level cause of a failure: reqwest's, or an I/O error of a streaming read.
pub type TransportError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of a ksqlDB request or query stream.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client configuration cannot be used (bad URL, unreadable or invalid PEM files).
    #[error("invalid ksqlDB client configuration: {0}")]
    Config(String),
    /// No connection could be made (refused, DNS, TLS handshake, connect timeout).
    #[error("cannot connect to ksqlDB at {url}")]
    Connect {
        url: String,
        #[source]
        source: TransportError,
    },
    /// The request failed at the transport level after connecting (reset, protocol error).
    #[error("request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: TransportError,
    },
    /// ksqlDB answered with an error status and one of its error bodies, shown verbatim.
    #[error("ksqlDB answered HTTP {status}: {error}")]
    Server { status: u16, error: ServerError },
    /// An error status whose body is not a ksqlDB error (proxies, 404 pages, empty bodies).
    #[error("ksqlDB answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// The response's Content-Type is not one of the query framings.
    #[error("unexpected response content type `{0}`")]
    ContentType(String),
    /// The response body broke off (connection reset, HTTP/2 stream reset, server shutdown).
    #[error("the query response stream was cut")]
    StreamCut {
        #[source]
        source: TransportError,
    },
    /// The body ended in the middle of a message: a cut that looked like a clean end.
    #[error("the query response ended inside a message")]
    Truncated(#[source] FrameError),
    /// The body did not start with the query header (it ended early, or another message came).
    #[error("the query response did not start with a header: found {found}")]
    NoHeader { found: &'static str },
    /// A message that is not valid ksqlDB output; later messages may still decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// ksqlDB wrote an error object after the 200 and ended the response.
    #[error("ksqlDB failed the query: {0}")]
    InBand(ServerError),
    /// `/info` answered with something that is not server info.
    #[error("invalid /info response: {0}")]
    Info(String),
}

impl ClientError {
    /// Whether retrying (with backoff) may succeed: transport failures, cut streams, 5xx, 429,
    /// "too many push queries" (40003) and a 200 that is not a query response (a proxy's page)
    /// are transient; statement errors, auth failures and unknown paths are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Request { .. }
            | ClientError::StreamCut { .. }
            | ClientError::Truncated(_)
            | ClientError::NoHeader { .. }
            | ClientError::ContentType(_) => true,
            ClientError::Server { status, error } => is_transient_status(*status) || error.error_code == 40003,
            ClientError::Http { status, .. } => is_transient_status(*status),
            ClientError::InBand(error) => error.error_code >= 50000 || error.error_code == 42900,
            ClientError::Config(_) | ClientError::Frame(_) | ClientError::Info(_) => false,
        }
    }

    /// A bounded label for what went wrong (the `reason` of a reconnect).
    pub fn reason(&self) -> &'static str {
        match self {
            ClientError::Config(_) => "config",
            ClientError::Connect { .. }
                if ["dns error", "failed to lookup address"].iter().any(|sign| self.with_causes().contains(sign)) =>
            {
                "dns"
            }
            ClientError::Connect { url, .. } if url.starts_with("https:") && is_tls_failure(&self.with_causes()) => {
                "tls"
            }
            ClientError::Connect { .. } => "connect",
            ClientError::Request { .. } | ClientError::StreamCut { .. } => "disconnect",
            ClientError::Server { error, .. } if error.error_code == 40003 => "too_many_queries",
            ClientError::Server { .. } | ClientError::Http { .. } => "server_error",
            ClientError::ContentType(_) => "content_type",
            ClientError::Truncated(_) | ClientError::NoHeader { .. } | ClientError::Frame(_) => "malformed_response",
            ClientError::InBand(_) => "in_band_error",
            ClientError::Info(_) => "info",
        }
    }

    /// The message with every cause behind it, for log lines: `cannot connect …: error
    /// trying to connect: tcp connect error: Connection refused`.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } | ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The ksqlDB error code, when ksqlDB sent one.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            ClientError::Server { error, .. } | ClientError::InBand(error) => Some(error.error_code),
            _ => None,
        }
    }

    /// The error for an HTTP error status and its body: a ksqlDB error when the body is one.
    pub(crate) fn from_status(status: u16, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ServerError>(body) {
            Ok(error) => ClientError::Server { status, error },
            Err(_) => {
                let cut = &body[..body.len().min(BODY_SNIPPET_BYTES)];
                ClientError::Http { status, body: String::from_utf8_lossy(cut).into_owned() }
            }
        }
    }

    /// A transport error of a request to `url`, split into connect and later failures.
    pub(crate) fn transport(url: &str, source: reqwest::Error) -> ClientError {
        if source.is_connect() {
            ClientError::Connect { url: url.to_string(), source: source.into() }
        } else {
            ClientError::Request { url: url.to_string(), source: source.into() }
        }
    }
}

/// Whether a connect failure's causes read like a failed TLS handshake (rustls says so only in
/// its messages: a bad certificate, an alert, or a peer that does not speak TLS at all).
fn is_tls_failure(causes: &str) -> bool {
    let causes = causes.to_ascii_lowercase();
    ["certificate", "handshake", "tls", "alert", "corrupt message", "invalidcontenttype"]
        .iter()
        .any(|sign| causes.contains(sign))
}

fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16, code: i64) -> ClientError {
        let body = format!(r#"{{"@type":"generic_error","error_code":{code},"message":"m"}}"#);
        ClientError::from_status(status, body.as_bytes())
    }

    #[test]
    fn status_errors_are_classified() {
        assert!(server(503, 50302).is_retryable());
        assert!(server(500, 50000).is_retryable());
        assert!(server(429, 42900).is_retryable());
        assert!(server(400, 40003).is_retryable());
        assert!(!server(400, 40001).is_retryable());
        assert!(!server(401, 40100).is_retryable());
        assert!(!server(403, 40300).is_retryable());
        assert!(!ClientError::from_status(404, b"Not Found").is_retryable());
        assert!(ClientError::from_status(502, b"<html>bad gateway</html>").is_retryable());
    }

    #[test]
    fn bodies_are_kept_verbatim() {
        let error = ClientError::from_status(
            400,
            br#"{"@type":"statement_error","error_code":40001,"message":"FOO does not exist.","statementText":"SELECT * FROM FOO;","entities":[]}"#,
        );
        assert_eq!(error.error_code(), Some(40001));
        assert_eq!(error.to_string(), "ksqlDB answered HTTP 400: ksqlDB error 40001: FOO does not exist.");
        let error = ClientError::from_status(404, b"Not Found");
        assert_eq!(error.to_string(), "ksqlDB answered HTTP 404: Not Found");
        assert!(matches!(error, ClientError::Http { status: 404, .. }));
    }

    #[test]
    fn in_band_errors_retry_only_for_server_failures() {
        let error = |code| ServerError { kind: None, error_code: code, message: String::new(), statement_text: None };
        assert!(ClientError::InBand(error(50000)).is_retryable());
        assert!(!ClientError::InBand(error(40001)).is_retryable());
    }
}
