//! A push query over cleartext HTTP/1.1 read straight from the socket.
//!
//! ksqlDB writes each row of a push query as its own HTTP chunk. Through hyper, every chunk
//! is handed from the connection task to the reader through a channel, one wake-up and task
//! switch per row, which cost more than decoding the row. Here the reader owns the socket:
//! it reads 64 KiB at a time and strips the chunk framing in place, so a burst of rows reaches
//! the frame decoder as one buffer. Everything else (TLS, HTTP/2, `/info`, `/ksql`,
//! `/close-query`) goes through reqwest.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

use super::error::{ClientError, TransportError};
use super::stream::BodyStream;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;
/// A response head larger than this is not from ksqlDB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// An error body is read up to this size.
const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;
const MAX_HEADERS: usize = 64;
/// ksqlDB answers a query's request once the query runs; a server that accepts the request and
/// says nothing for this long is taken as gone.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// An error answer's body is read within this time.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive probes of an idle push query after `keepalive`: a peer that answers none of
/// them is gone (about 30 s later, instead of Linux's 11 minutes).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// What to send.
pub(super) struct RawRequest<'a> {
    pub url: &'a Url,
    pub accept: &'a str,
    pub body: &'a [u8],
    pub basic_auth: Option<(&'a str, Option<&'a str>)>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

/// The status line and headers of an answer, and its body still to be read.
pub(super) struct RawResponse {
    pub status: u16,
    pub content_type: Option<String>,
    body: Body,
}

impl RawResponse {
    /// The body as a stream of decoded byte runs.
    pub fn into_stream(self) -> BodyStream {
        Box::pin(futures::stream::unfold(self.body, |mut body| async move {
            match body.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), body)),
                Ok(None) => None,
                Err(error) => {
                    body.framing = Framing::Done;
                    Some((Err(error), body))
                }
            }
        }))
    }

    /// The whole body of an error answer (cut at a bound); an error when the connection breaks
    /// or the body does not end in time, so a cut answer is not taken for the server's word.
    pub async fn error_body(self) -> Result<Vec<u8>, TransportError> {
        let mut body = self.body;
        let read = async {
            let mut all = Vec::new();
            while all.len() < MAX_ERROR_BODY_BYTES {
                match body.next().await? {
                    Some(bytes) => all.extend_from_slice(&bytes),
                    None => break,
                }
            }
            Ok::<_, TransportError>(all)
        };
        match tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await {
            Ok(read) => read,
            Err(_) => Err(format!("the error answer's body did not end within {ERROR_BODY_TIMEOUT:?}").into()),
        }
    }
}

/// Sends `request` on a new connection and reads the answer's head.
pub(super) async fn send(request: RawRequest<'_>) -> Result<RawResponse, ClientError> {
    let url = request.url;
    let connect_error = |source: TransportError| ClientError::Connect { url: url.to_string(), source };
    let host = url.host_str().ok_or_else(|| ClientError::Config(format!("no host in {url}")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let connect = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port));
    let mut socket = match tokio::time::timeout(request.connect_timeout, connect).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return Err(connect_error(error.into())),
        Err(_) => return Err(connect_error(format!("connect timed out after {:?}", request.connect_timeout).into())),
    };
    let _ = socket.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(request.keepalive)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive);

    let request_error = |source: TransportError| ClientError::Request { url: url.to_string(), source };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ksql-lake/{}\r\nAccept: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        path_and_query(url),
        host_header(url),
        env!("CARGO_PKG_VERSION"),
        request.accept,
        request.body.len()
    );
    if let Some((user, password)) = request.basic_auth {
        use base64::Engine;
        let credentials = format!("{user}:{}", password.unwrap_or(""));
        head.push_str("Authorization: Basic ");
        head.push_str(&base64::engine::general_purpose::STANDARD.encode(credentials));
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(request.body);
    socket.write_all(&message).await.map_err(|error| request_error(error.into()))?;
    match tokio::time::timeout(HEAD_TIMEOUT, read_head(socket)).await {
        Ok(head) => head.map_err(request_error),
        Err(_) => Err(request_error(format!("no answer within {HEAD_TIMEOUT:?}").into())),
    }
}

/// Reads the answer's status line and headers, past any interim (1xx) answers.
async fn read_head(mut socket: TcpStream) -> Result<RawResponse, TransportError> {
    let mut buffer = BytesMut::with_capacity(READ_SIZE);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(length)) => {
                let status = response.code.unwrap_or(0);
                if (100..200).contains(&status) && status != 101 {
                    // `100 Continue` and the like: the answer follows.
                    buffer.advance(length);
                    continue;
                }
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|header| header.name.eq_ignore_ascii_case(name))
                        .map(|header| String::from_utf8_lossy(header.value).trim().to_string())
                };
                let content_type = header("content-type");
                let chunked =
                    header("transfer-encoding").is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
                let length_header = header("content-length");
                let framing = if chunked {
                    Framing::Chunked(Chunk::Size)
                } else if let Some(length) = length_header {
                    let length = length
                        .parse::<u64>()
                        .map_err(|_| format!("invalid Content-Length `{length}` in the answer"))?;
                    Framing::Length(length)
                } else {
                    Framing::UntilClose
                };
                buffer.advance(length);
                let body = Body { socket, buffer, framing, out: BytesMut::new() };
                return Ok(RawResponse { status, content_type, body });
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("answer head longer than {MAX_HEAD_BYTES} bytes").into())
            }
            Err(error) => return Err(format!("not an HTTP/1.1 answer: {error}").into()),
        }
        buffer.reserve(READ_SIZE);
        if socket.read_buf(&mut buffer).await? == 0 {
            return Err("the connection closed before an answer".into());
        }
    }
}

fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked(Chunk),
    /// Bytes left of a Content-Length body.
    Length(u64),
    UntilClose,
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk's size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last (empty) chunk: trailer lines up to an empty one.
    Trailers,
}

struct Body {
    socket: TcpStream,
    /// Read from the socket and not yet decoded.
    buffer: BytesMut,
    framing: Framing,
    /// Decoded body bytes not yet handed out.
    out: BytesMut,
}

impl Body {
    /// The next run of body bytes: everything that has arrived, chunk framing removed; `None`
    /// at the body's end.
    async fn next(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            self.out.reserve(self.buffer.len());
            self.decode()?;
            if !self.out.is_empty() {
                return Ok(Some(self.out.split().freeze()));
            }
            if self.framing == Framing::Done {
                return Ok(None);
            }
            self.buffer.reserve(READ_SIZE);
            if self.socket.read_buf(&mut self.buffer).await? == 0 {
                return match self.framing {
                    Framing::UntilClose => {
                        self.framing = Framing::Done;
                        Ok(None)
                    }
                    _ => Err("the connection closed inside the body".into()),
                };
            }
        }
    }

    /// Moves what can be decoded from `buffer` to `out`.
    fn decode(&mut self) -> Result<(), TransportError> {
        loop {
            match self.framing {
                Framing::Done => return Ok(()),
                Framing::UntilClose => {
                    let all = self.buffer.split();
                    self.out.extend_from_slice(&all);
                    return Ok(());
                }
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(());
                }
                Framing::Length(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(self.buffer.len());
                    if take == 0 {
                        return Ok(());
                    }
                    self.out.extend_from_slice(&self.buffer.split_to(take));
                    self.framing = Framing::Length(left - take as u64);
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(self.buffer.len());
                    if take == 0 {
                        return Ok(());
                    }
                    self.out.extend_from_slice(&self.buffer[..take]);
                    self.buffer.advance(take);
                    let left = left - take as u64;
                    self.framing = Framing::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                }
                Framing::Chunked(state) => {
                    let Some(end) = memchr::memchr(b'\n', &self.buffer) else {
                        if self.buffer.len() > MAX_HEAD_BYTES {
                            return Err("a chunk size or trailer line is too long".into());
                        }
                        return Ok(());
                    };
                    let line = self.buffer.split_to(end + 1);
                    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(&line);
                    self.framing = Framing::Chunked(match state {
                        Chunk::Size => match chunk_size(line)? {
                            0 => Chunk::Trailers,
                            size => Chunk::Data(size),
                        },
                        Chunk::DataEnd if line.is_empty() => Chunk::Size,
                        Chunk::DataEnd => return Err("a chunk's data is longer than its size".into()),
                        Chunk::Trailers if line.is_empty() => {
                            self.framing = Framing::Done;
                            continue;
                        }
                        Chunk::Trailers => Chunk::Trailers,
                        Chunk::Data(_) => unreachable!("handled above"),
                    });
                }
            }
        }
    }
}

/// A chunk size line: hexadecimal digits, then maybe `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, TransportError> {
    let digits = line.split(|&byte| byte == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).map_err(|_| "a chunk size that is not text")?.trim();
    u64::from_str_radix(digits, 16)
        .ok()
        .filter(|size| *size < 1 << 40)
        .ok_or_else(|| format!("invalid chunk size `{}`", digits.escape_debug()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::net::TcpListener;

    /// Serves `answer` (written in pieces of `piece` bytes) to one request; returns its URL.
    async fn serve(answer: Vec<u8>, piece: usize) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/query-stream", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            for part in answer.chunks(piece) {
                socket.write_all(part).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        url
    }

    async fn answer(answer: &[u8], piece: usize) -> RawResponse {
        let url = serve(answer.to_vec(), piece).await;
        let request = RawRequest {
            url: &url,
            accept: "application/vnd.ksqlapi.delimited.v1",
            body: b"{}",
            basic_auth: None,
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(30),
        };
        send(request).await.unwrap()
    }

    async fn body_of(answer_bytes: &[u8], piece: usize) -> (u16, Result<Vec<u8>, String>) {
        let response = answer(answer_bytes, piece).await;
        let status = response.status;
        let mut stream = response.into_stream();
        let mut body = Vec::new();
        while let Some(part) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap() {
            match part {
                Ok(bytes) => body.extend_from_slice(&bytes),
                Err(error) => return (status, Err(error.to_string())),
            }
        }
        (status, Ok(body))
    }

    #[tokio::test]
    async fn chunked_bodies_decode_however_the_bytes_arrive() {
        let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.ksqlapi.delimited.v1\r\n\
                           transfer-encoding: chunked\r\n\r\n"
            .to_vec();
        let mut expected = Vec::new();
        for n in 0..300 {
            let row = format!("[{n},\"row {n}\"]\n");
            answer.extend_from_slice(format!("{:x}\r\n{row}\r\n", row.len()).as_bytes());
            expected.extend_from_slice(row.as_bytes());
        }
        answer.extend_from_slice(b"3;ext=1\r\nend\r\n0\r\nx-trailer: 1\r\n\r\n");
        expected.extend_from_slice(b"end");
        for piece in [1, 2, 7, 64, 100_000] {
            assert_eq!(body_of(&answer, piece).await, (200, Ok(expected.clone())), "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn length_and_close_delimited_bodies_and_cuts() {
        let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(body_of(answer, 3).await, (400, Ok(b"hello".to_vec())));
        let answer = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(body_of(answer, 4).await, (200, Ok(b"until the end".to_vec())));
        // A cut inside a chunk, and a size that is not hexadecimal, are errors, not an end.
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nshort";
        assert!(body_of(answer, 5).await.1.unwrap_err().contains("closed inside the body"));
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nxx\r\n";
        assert!(body_of(answer, 5).await.1.unwrap_err().contains("invalid chunk size"));
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n";
        assert!(body_of(answer, 50).await.1.unwrap_err().contains("longer than its size"));
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_cut_error_bodies_are_errors() {
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(body_of(interim, 7).await, (200, Ok(b"ok".to_vec())));
        // A 400 whose body breaks off is not the server's whole word: no error code to act on.
        let cut = answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 90\r\n\r\n{\"error_code\":40003", 1000).await;
        assert_eq!(cut.status, 400);
        assert!(cut.error_body().await.is_err());
        let whole = answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nhello", 1000).await;
        assert_eq!(whole.error_body().await.unwrap(), b"hello");
    }
}
