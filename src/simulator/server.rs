//! The HTTP side: one listener serving HTTP/1.1 and h2c (prior knowledge) through
//! hyper-util's auto builder, routing, content negotiation and the errors ksqlDB
//! answers before a stream starts.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fault::QueryControl;
use super::format::{generic_error, statement_error, End, Framing, Writer};
use super::plan::{Plan, QueryKind};
use super::query::{body_channel, BodyReceiver, Chunk, RunningQuery, Tokens};
use super::source::{Source, SourceKind};
use super::sql::{self, SqlError};
use super::token::{self, TokenError};
use super::{Simulator, SimulatorConfig, SimulatorError};

type Body = BoxBody<Bytes, io::Error>;

/// Largest request body accepted.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A running server; dropping it (or [`SimulatorHandle::shutdown`]) stops it and cuts every
/// open connection, like a ksqlDB server going away.
pub struct SimulatorHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and drops every connection abruptly.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) async fn serve(sim: Simulator, addr: SocketAddr) -> Result<SimulatorHandle, SimulatorError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| SimulatorError::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(|source| SimulatorError::Bind { addr, source })?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(sim, listener, stop.clone()));
    tracing::info!(%addr, "ksqlDB simulator listening");
    Ok(SimulatorHandle { addr, stop, task: Some(task) })
}

/// Runs a simulator until `shutdown` resolves (for a `ksql-lake simulator` subcommand).
pub async fn run_standalone(
    listen: SocketAddr,
    simulator: Simulator,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimulatorError> {
    let handle = simulator.serve(listen).await?;
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

async fn accept_loop(sim: Simulator, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let service = service_fn(move |req| handle(sim.clone(), connection, req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// A body fed by the query task through a bounded channel.
struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
    /// Counted down as hyper takes each write (the query task's cut waits for zero).
    unsent: Arc<AtomicUsize>,
    /// Writes received and not yet given to hyper, one frame each.
    writes: std::collections::VecDeque<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(write) = self.writes.pop_front() {
                self.unsent.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                return Poll::Ready(Some(Ok(Frame::data(write))));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Ok(writes)) => self.writes.extend(writes),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A whole body sent as one write with no length announced: ksqlDB's Vert.x responses are
/// chunked on HTTP/1.1, error and pull-query bodies included.
fn full(body: impl Into<Bytes>) -> Body {
    let body: Bytes = body.into();
    if body.is_empty() {
        return Full::new(body).map_err(|never| match never {}).boxed();
    }
    let frame = futures::stream::once(async move { Ok::<_, io::Error>(hyper::body::Frame::data(body)) });
    http_body_util::StreamBody::new(frame).boxed()
}

fn respond(status: StatusCode, content_type: Option<&str>, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(CONTENT_TYPE, value);
        }
    }
    response
}

/// Which endpoint a query came through; errors on `/query` carry `application/json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    QueryStream,
    Query,
}

fn error_response(endpoint: Endpoint, status: StatusCode, body: String) -> Response<Body> {
    // FailureHandler (/query-stream, /close-query) sets no Content-Type
    let content_type = (endpoint == Endpoint::Query).then_some("application/json");
    respond(status, content_type, body)
}

/// A statement ksqlDB 0.29 refuses before running it, in the words of each endpoint:
/// `/query-stream` (`QueryEndpoint`) appends `Statement: <sql>` to the message, `/query`
/// (`StreamedQueryResource`) appends the cause of a syntax error and names the statement type it
/// does not serve.
fn parse_failure(endpoint: Endpoint, sql: &str, error: SqlError) -> Response<Body> {
    let statement = |message: &str, statement: &str| {
        error_response(endpoint, StatusCode::BAD_REQUEST, statement_error(message, statement))
    };
    match (endpoint, &error) {
        (Endpoint::QueryStream, SqlError::Syntax(syntax)) => {
            let line = syntax.failed_line(sql);
            statement(&format!("{syntax}\nStatement: {line}"), line)
        }
        (Endpoint::Query, SqlError::Syntax(syntax)) => {
            statement(&format!("{syntax}\nStatement: {}\nCaused by: {}", syntax.failed_line(sql), syntax.logged()), sql)
        }
        (Endpoint::QueryStream, SqlError::NotAQuery { .. } | SqlError::StatementCount(_)) => {
            statement(&format!("{error}\nStatement: {sql}"), sql)
        }
        (Endpoint::Query, SqlError::NotAQuery { statement_type }) => error_response(
            endpoint,
            StatusCode::BAD_REQUEST,
            generic_error(
                40000,
                &format!(
                    "Statement type `io.confluent.ksql.parser.tree.{statement_type}' not supported for this resource"
                ),
            ),
        ),
        (_, SqlError::StatementCount(_) | SqlError::Print) => statement(&error.to_string(), sql),
    }
}

/// Numbers the accepted connections, so `/close-query` can tell whether it arrived on the
/// query's own connection.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn handle(sim: Simulator, connection: u64, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let config = &sim.inner.config;
    if let Some(credentials) = &config.basic_auth {
        if !authorized(&req, credentials) {
            let mut response =
                respond(StatusCode::UNAUTHORIZED, Some("application/json"), generic_error(40100, "Unauthorized"));
            response.headers_mut().insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"\""));
            return Ok(response);
        }
    }
    let path = req.uri().path().to_string();
    let response = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/info") => info(config),
        (Method::GET, "/") => {
            let mut response = respond(StatusCode::TEMPORARY_REDIRECT, None, Bytes::new());
            response.headers_mut().insert(http::header::LOCATION, http::HeaderValue::from_static("/info"));
            response
        }
        (Method::GET, "/healthcheck") => healthcheck(&sim),
        (Method::GET, "/status") => {
            respond(StatusCode::OK, Some("application/json"), r#"{"commandStatuses":{}}"#.to_string())
        }
        (Method::POST, "/query-stream") => query_endpoint(&sim, connection, req, Endpoint::QueryStream).await,
        (Method::POST, "/query") => query_endpoint(&sim, connection, req, Endpoint::Query).await,
        (Method::POST, "/close-query") => close_query(&sim, connection, req).await,
        (Method::POST, "/ksql") => ksql_endpoint(&sim, req).await,
        (_, "/info" | "/query-stream" | "/query" | "/close-query" | "/healthcheck" | "/status" | "/ksql") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, None, Bytes::new())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            Some("text/html; charset=utf-8"),
            "<html><body><h1>Resource not found</h1></body></html>",
        ),
    };
    Ok(response)
}

fn authorized<B>(req: &Request<B>, (user, password): &(String, String)) -> bool {
    let Some(header) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(encoded) = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{user}:{password}").into_bytes()
}

fn info(config: &SimulatorConfig) -> Response<Body> {
    let mut version = String::new();
    super::value::write_json_string(&mut version, &config.version);
    let body = format!(
        "{{\"KsqlServerInfo\":{{\"version\":{version},\"kafkaClusterId\":\"sim-kafka-cluster-0\",\
         \"ksqlServiceId\":\"default_\",\"serverStatus\":\"RUNNING\"}}}}"
    );
    respond(StatusCode::OK, Some("application/json"), body)
}

/// Picks the framing from `Accept`, by quality (`q=`, default 1; `q=0` refuses a type; equal
/// weights keep their order); `None` means 406.
fn negotiate<B>(req: &Request<B>, endpoint: Endpoint) -> Option<Framing> {
    let header = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut any = false;
    let mut best: Option<(f32, Framing)> = None;
    for media in header.split(',') {
        let mut parts = media.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|parameter| parameter.trim().strip_prefix("q="))
            .find_map(|value| value.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let framing = match (media.as_str(), endpoint) {
            ("", _) => continue,
            ("application/vnd.ksqlapi.delimited.v1", _) | ("*/*", _) => Framing::Delimited,
            ("application/vnd.ksql.v1+json", _) => Framing::StreamedRow,
            ("application/json", Endpoint::QueryStream) => Framing::JsonArray,
            ("application/json", Endpoint::Query) => Framing::StreamedRow,
            _ => {
                any = true;
                continue;
            }
        };
        if quality <= 0.0 {
            any = true;
            continue;
        }
        if best.is_none_or(|(weight, _)| quality > weight) {
            best = Some((quality, framing));
        }
    }
    if let Some((_, framing)) = best {
        return Some(framing);
    }
    if any {
        return None;
    }
    Some(match endpoint {
        Endpoint::QueryStream => Framing::Delimited,
        Endpoint::Query => Framing::StreamedRow,
    })
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, String> {
    let bytes = Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|error| format!("Invalid JSON in request: {error}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|error| format!("Invalid JSON in request: {error}"))
}

/// `POST /ksql`: SHOW, LIST and DESCRIBE statements (see [`super::ksql`]).
async fn ksql_endpoint(sim: &Simulator, req: Request<Incoming>) -> Response<Body> {
    let versioned = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/vnd.ksql.v1+json"));
    let content_type = if versioned { "application/vnd.ksql.v1+json" } else { "application/json" };
    if !sim.is_ready() {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(content_type),
            generic_error(50302, "KSQL is not yet ready to serve requests."),
        );
    }
    let body = match read_json(req).await {
        Ok(body) => body,
        Err(message) => return respond(StatusCode::BAD_REQUEST, Some(content_type), generic_error(40000, &message)),
    };
    let (status, entity) = super::ksql::run(sim, &body);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    respond(status, Some(content_type), entity.to_string())
}

/// `GET /healthcheck`: ksqlDB's shape; unhealthy (503) while the server is not ready.
fn healthcheck(sim: &Simulator) -> Response<Body> {
    let healthy = sim.is_ready();
    let body = serde_json::json!({
        "isHealthy": healthy,
        "details": {
            "metastore": {"isHealthy": healthy},
            "kafka": {"isHealthy": healthy},
            "commandRunner": {"isHealthy": healthy}
        }
    });
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    respond(status, Some("application/json"), body.to_string())
}

async fn query_endpoint(
    sim: &Simulator,
    connection: u64,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<Body> {
    let config = &sim.inner.config;
    if !sim.is_ready() {
        return error_response(
            endpoint,
            StatusCode::SERVICE_UNAVAILABLE,
            generic_error(50302, "KSQL is not yet ready to serve requests."),
        );
    }
    let http2 = req.version() == Version::HTTP_2;
    if config.legacy_pre_024 && endpoint == Endpoint::QueryStream && !http2 {
        return error_response(
            endpoint,
            StatusCode::BAD_REQUEST,
            generic_error(40004, "This endpoint is only available when using HTTP2"),
        );
    }
    if config.legacy_pre_024 && endpoint == Endpoint::Query && http2 {
        return respond(StatusCode::METHOD_NOT_ALLOWED, None, Bytes::new());
    }
    let Some(framing) = negotiate(&req, endpoint) else {
        return respond(StatusCode::NOT_ACCEPTABLE, None, Bytes::new());
    };
    // with Accept: delimited, /query errors come from FailureHandler like /query-stream
    let error_endpoint = if framing == Framing::Delimited { Endpoint::QueryStream } else { endpoint };
    let bad = |message: String| error_response(error_endpoint, StatusCode::BAD_REQUEST, generic_error(40000, &message));
    let body = match read_json(req).await {
        Ok(body) => body,
        Err(message) => return bad(message),
    };
    let (sql_field, props_field) = match endpoint {
        Endpoint::QueryStream => ("sql", "properties"),
        Endpoint::Query => ("ksql", "streamsProperties"),
    };
    let sql = match body.get(sql_field).and_then(|v| v.as_str()) {
        Some(sql) if !sql.trim().is_empty() || endpoint == Endpoint::QueryStream => sql.to_string(),
        _ if endpoint == Endpoint::Query => return bad("\"ksql\" field must be populated".into()),
        _ => return bad("Invalid JSON in request: Missing required creator property 'sql' (index 0)".into()),
    };
    let props = body.get(props_field);
    let earliest = props
        .and_then(|props| props.get("ksql.streams.auto.offset.reset").or_else(|| props.get("auto.offset.reset")))
        .and_then(|v| v.as_str())
        .is_some_and(|v| v.eq_ignore_ascii_case("earliest"));
    // /query coerces property types, /query-stream passes them through
    let flag = |name: &str, default: bool| match props.and_then(|props| props.get(name)) {
        Some(serde_json::Value::Bool(value)) => *value,
        Some(serde_json::Value::String(value)) if endpoint == Endpoint::Query => value.eq_ignore_ascii_case("true"),
        Some(_) => false,
        None => default,
    };
    let push_v2 = flag("ksql.query.push.v2.enabled", config.push_v2_enabled);
    let tokens = flag("ksql.query.push.v2.continuation.tokens.enabled", config.continuation_tokens_enabled);
    let resume_token = body
        .get("requestProperties")
        .and_then(|props| props.get(RESUME_TOKEN_PROPERTY))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let options = QueryOptions { earliest, push_v2, tokens, resume_token };
    start_query(sim, connection, &sql, &options, framing, error_endpoint)
}

/// ksqlDB 0.29's answer to a table scan when table scans are off (`QueryFilterNode`).
const MISSING_WHERE: &str = "Missing WHERE clause.  See https://cnfl.io/queries for more info.\n\
Add EMIT CHANGES if you intended to issue a push query.\n\
Pull queries require a WHERE clause that:\n \
- includes a key equality expression, e.g. `SELECT * FROM X WHERE <key-column> = Y;`.\n \
- in the case of a multi-column key, is a conjunction of equality expressions that cover all key columns.\n \
- to support range expressions, e.g.,  SELECT * FROM X WHERE <key-column> < Y;`, range scans need to be enabled by \
setting ksql.query.pull.range.scan.enabled=true\n\
If more flexible queries are needed, , table scans can be enabled by setting ksql.query.pull.table.scan.enabled=true.";

/// The request property carrying the continuation token to resume from.
const RESUME_TOKEN_PROPERTY: &str = "request.ksql.query.push.continuation.token";

/// What the request's properties ask for.
struct QueryOptions {
    /// `auto.offset.reset=earliest`.
    earliest: bool,
    /// `ksql.query.push.v2.enabled`.
    push_v2: bool,
    /// `ksql.query.push.v2.continuation.tokens.enabled`.
    tokens: bool,
    /// `request.ksql.query.push.continuation.token`.
    resume_token: Option<String>,
}

/// A `SCALABLE_PUSH_QUERY_<uuid>` id (a random version-4-shaped UUID).
fn scalable_query_id() -> String {
    let bits: u128 = rand::random();
    let hex = format!("{bits:032x}");
    format!("SCALABLE_PUSH_QUERY_{}-{}-4{}-{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[16..20], &hex[20..32])
}

fn start_query(
    sim: &Simulator,
    connection: u64,
    sql: &str,
    options: &QueryOptions,
    framing: Framing,
    endpoint: Endpoint,
) -> Response<Body> {
    let statement_failure =
        |message: &str| error_response(endpoint, StatusCode::BAD_REQUEST, statement_error(message, sql));
    let select = match sql::parse(sql) {
        Ok(select) => select,
        Err(error) => return parse_failure(endpoint, sql, error),
    };
    let source = match sim.source(&select.from) {
        Ok(source) => source,
        Err(_) => {
            return statement_failure(&format!("Exception while preparing statement: {} does not exist.", select.from))
        }
    };
    let plan = match Plan::new(&select, Arc::clone(&source)) {
        Ok(plan) => plan,
        Err(error) => return statement_failure(&error.0),
    };
    if !sim.config().table_scans && plan.kind == super::plan::QueryKind::PullTable && select.filter.is_none() {
        return statement_failure(MISSING_WHERE);
    }
    if sim.config().reject_offset_filters && plan.filters_on_offset_columns() {
        return statement_failure("WHERE clause on ROWPARTITION or ROWOFFSET is not supported.");
    }
    let mut writer = Writer::new(framing, plan.kind);
    let streaming = |body: BodyReceiver| {
        let BodyReceiver { rx, unsent } = body;
        let mut response = Response::new(ChannelBody { rx, unsent, writes: Default::default() }.boxed());
        if let Ok(value) = framing.content_type().parse() {
            response.headers_mut().insert(CONTENT_TYPE, value);
        }
        response
    };
    let transient_id = || format!("transient_{}_{}", source.name, rand::random::<u64>() >> 1);
    match plan.kind {
        QueryKind::PullTable => {
            let query_id = format!("query_{}", chrono::Utc::now().timestamp_millis());
            let mut out = Vec::new();
            writer.header(&mut out, &query_id, &plan);
            let mut count = 0u64;
            for row in source.snapshot() {
                if plan.limit.is_some_and(|limit| count >= limit) {
                    break;
                }
                if plan.matches(&row) {
                    writer.row(&mut out, &plan, &row);
                    count += 1;
                }
            }
            writer.end(&mut out, &End::Completed);
            tracing::debug!(%query_id, rows = count, "pull query served");
            respond(StatusCode::OK, Some(framing.content_type()), out)
        }
        QueryKind::PullStream => {
            let query_id = transient_id();
            let control = Arc::new(QueryControl::new(query_id.clone(), Vec::new()));
            let (tx, rx) = body_channel();
            let stop_at = Some(source.end());
            let query = RunningQuery {
                plan,
                writer,
                query_id,
                cursor: 0,
                stop_at,
                control,
                heartbeat: false,
                slot: None,
                tokens: None,
                // A pull query's StreamedRow response is buffered by ksqlDB too.
                per_row: false,
            };
            tokio::spawn(query.run(tx));
            streaming(rx)
        }
        QueryKind::Push => {
            // ScalablePushUtil.isScalablePushQuery; otherwise silently an ordinary push query
            let scalable = options.push_v2
                && source.kind == SourceKind::Stream
                && !options.earliest
                && !plan.uses_offset_columns();
            let (mut cursor, positions) = source.end_positions();
            let mut tokens = None;
            if scalable && options.tokens {
                let mut positions = positions;
                if let Some(token) = &options.resume_token {
                    match resume_point(&source, token) {
                        Ok((seq, offsets)) => {
                            cursor = seq;
                            positions = offsets;
                        }
                        Err(error) => {
                            return error_response(
                                endpoint,
                                StatusCode::BAD_REQUEST,
                                generic_error(40000, &format!("Invalid continuation token: {error}")),
                            )
                        }
                    }
                }
                tokens = Some(Tokens::new(positions, sim.inner.config.continuation_token_every_rows));
            }
            let (query_id, control) = if scalable {
                writer.scalable = true;
                let id = scalable_query_id();
                (id.clone(), QueryControl::unclosable(id))
            } else {
                let id = transient_id();
                (id.clone(), QueryControl::new(id, Vec::new()).on_connection(connection))
            };
            let control = Arc::new(control);
            let Some(slot) = sim.reserve_slot(Arc::clone(&control)) else {
                return error_response(
                    endpoint,
                    StatusCode::BAD_REQUEST,
                    generic_error(40003, "Maximum number of push queries exceeded"),
                );
            };
            for fault in sim.take_next_faults() {
                control.push(fault);
            }
            if options.earliest {
                cursor = 0;
            }
            tracing::info!(
                %query_id,
                source = %source.name,
                earliest = options.earliest,
                scalable,
                resumed = tokens.is_some() && options.resume_token.is_some(),
                ?framing,
                "push query started"
            );
            let (tx, rx) = body_channel();
            let query = RunningQuery {
                plan,
                writer,
                query_id,
                cursor,
                stop_at: None,
                control,
                heartbeat: sim.inner.config.heartbeat,
                slot: Some(Box::new(slot)),
                tokens,
                per_row: !sim.inner.config.batched_writes,
            };
            tokio::spawn(query.run(tx));
            streaming(rx)
        }
    }
}

/// Where a query resuming from `token` starts: the sequence number to read from and the
/// next offset per partition.
fn resume_point(source: &Source, token: &str) -> Result<(u64, Vec<i64>), TokenError> {
    let offsets = token::decode(token)?;
    if offsets.len() != source.partitions as usize {
        return Err(TokenError::Partitions { got: offsets.len(), expected: source.partitions as usize });
    }
    let seq = source.seek(&offsets).ok_or(TokenError::Ahead)?;
    Ok((seq, offsets))
}

async fn close_query(sim: &Simulator, connection: u64, req: Request<Incoming>) -> Response<Body> {
    if !sim.is_ready() {
        return error_response(
            Endpoint::QueryStream,
            StatusCode::SERVICE_UNAVAILABLE,
            generic_error(50302, "KSQL is not yet ready to serve requests."),
        );
    }
    let bad = |message: String| {
        error_response(Endpoint::QueryStream, StatusCode::BAD_REQUEST, generic_error(40000, &message))
    };
    let body = match read_json(req).await {
        Ok(body) => body,
        Err(message) => return bad(message),
    };
    let Some(query_id) = body.get("queryId").and_then(|v| v.as_str()) else {
        return bad("Invalid JSON in request: Missing required creator property 'queryId' (index 0)".into());
    };
    let control = sim.inner.queries.lock().ok().and_then(|q| q.get(query_id).cloned());
    match control.filter(|control| control.closable) {
        Some(control) => {
            control.close.cancel();
            tracing::info!(%query_id, "query closed by /close-query");
            // 0.29 closes the query, then fails the request when it came on another connection
            // than the query's (its Vert.x context check).
            if sim.inner.config.close_query_wrong_context && control.connection.is_some_and(|own| own != connection) {
                return error_response(
                    Endpoint::QueryStream,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    generic_error(50000, "On wrong context or worker"),
                );
            }
            respond(StatusCode::OK, None, Bytes::new())
        }
        None => bad(format!("No query with id {query_id}")),
    }
}
