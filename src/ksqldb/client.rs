//! The ksqlDB HTTP client: `/info`, push and pull queries on `/query-stream` (falling back to
//! the legacy `/query` for servers before 0.24 that refuse HTTP/1.1), and `/close-query`.
//!
//! No Arrow here: a [`QueryStream`] hands out [`Event`](crate::ksqldb::Event)s whose rows are
//! slices of the response bytes, for the row decoder to consume.

mod error;
mod raw;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use url::Url;

pub use error::{ClientError, TransportError};
pub use stream::QueryStream;

use super::frame::Framing;

const DELIMITED: &str = "application/vnd.ksqlapi.delimited.v1";
const STREAMED_ROW: &str = "application/vnd.ksql.v1+json";

/// `/query-stream` over HTTP/1.1 on a server before 0.24.
const ERROR_CODE_HTTP2_ONLY: i64 = 40004;

/// TCP keep-alive is the only liveness signal of an idle push query on 0.24+ (no heartbeats).
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Which HTTP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http2Mode {
    /// `http://`: try h2c with prior knowledge, and on a protocol-level failure fall back to
    /// HTTP/1.1 for good. `https://`: negotiate with ALPN.
    #[default]
    Auto,
    /// HTTP/2 only (h2c with prior knowledge on `http://`).
    Always,
    /// HTTP/1.1 only.
    Never,
}

/// `/close-query` is given this long.
const CLOSE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach one ksqlDB server. Its `Debug` output shows no password.
#[derive(Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://ksqldb:8088` (a path prefix is kept).
    pub url: Url,
    /// Basic auth user (Confluent Cloud: the API key); no auth when `None`.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM bundle of the CAs to trust instead of the system roots (private ksqlDB CAs).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    pub http2: Http2Mode,
    /// Bound on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &crate::config::redact_url(self.url.as_str()))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("http2", &self.http2)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientConfig {
    pub fn new(url: Url) -> Self {
        ClientConfig {
            url,
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            http2: Http2Mode::Auto,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What `GET /info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    pub kafka_cluster_id: String,
    pub service_id: String,
}

#[derive(Deserialize)]
struct InfoBody {
    #[serde(rename = "KsqlServerInfo")]
    info: InfoFields,
}

#[derive(Deserialize)]
struct InfoFields {
    version: String,
    #[serde(rename = "kafkaClusterId", default)]
    kafka_cluster_id: String,
    #[serde(rename = "ksqlServiceId", default)]
    service_id: String,
}

impl ServerInfo {
    /// Parses a `/info` body: `{"KsqlServerInfo":{"version":...,"kafkaClusterId":...,...}}`.
    pub fn from_body(body: &[u8]) -> Result<ServerInfo, ClientError> {
        let parsed: InfoBody = serde_json::from_slice(body).map_err(|error| ClientError::Info(error.to_string()))?;
        Ok(ServerInfo {
            version: parsed.info.version,
            kafka_cluster_id: parsed.info.kafka_cluster_id,
            service_id: parsed.info.service_id,
        })
    }
}

/// A push or pull query to run.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    /// One statement ending in `;`.
    pub sql: String,
    /// Config overrides (`auto.offset.reset`, ...). Sent with their JSON types: `/query-stream`
    /// does not coerce strings to booleans.
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// Request-scoped settings, e.g. `request.ksql.query.push.continuation.token`.
    pub request_properties: serde_json::Map<String, serde_json::Value>,
    /// Ask for the StreamedRow framing, the only one in which ksqlDB sends a table's deletes
    /// (tombstones); the delimited framing drops them.
    pub tombstones: bool,
}

/// What the `Auto` mode has learnt about a cleartext server.
const PROTOCOL_UNKNOWN: u8 = 0;
const PROTOCOL_H2: u8 = 1;
const PROTOCOL_H1: u8 = 2;

/// A ksqlDB client. Cheap to share by reference; connections are pooled.
pub struct KsqlClient {
    base: Url,
    username: Option<String>,
    password: Option<String>,
    /// The client used first: HTTP/2 for `Always`/`Auto`, HTTP/1.1 for `Never`.
    primary: reqwest::Client,
    /// `Auto` on `http://` only: the HTTP/1.1 client to fall back to.
    fallback: Option<reqwest::Client>,
    /// `Auto` on `http://` only: PROTOCOL_* learnt from the first exchanges.
    protocol: AtomicU8,
    /// Push and pull queries on `/query-stream` over cleartext HTTP/1.1 (`Never`, and `Auto`
    /// on `http://`), read straight from the socket ([`raw`]) instead of through reqwest:
    /// ksqlDB writes one HTTP chunk per row, and reqwest hands each to the reader with a task
    /// switch of its own.
    raw_queries: bool,
    /// `Auto` only: the server refused `/query-stream` over HTTP/1.1 (before 0.24), so queries
    /// go through reqwest's HTTP/2 from then on.
    raw_refused: AtomicBool,
    connect_timeout: Duration,
}

impl KsqlClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let mut base = config.url.clone();
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Config(format!("`url` must be http or https: {base}")));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let cleartext = base.scheme() == "http";
        let (primary, fallback) = match config.http2 {
            Http2Mode::Never => (build(&config, Protocol::Http1)?, None),
            Http2Mode::Always => (build(&config, Protocol::Http2)?, None),
            Http2Mode::Auto if cleartext => (build(&config, Protocol::Http2)?, Some(build(&config, Protocol::Http1)?)),
            Http2Mode::Auto => (build(&config, Protocol::Negotiate)?, None),
        };
        Ok(KsqlClient {
            base,
            username: config.username,
            password: config.password,
            primary,
            fallback,
            protocol: AtomicU8::new(PROTOCOL_UNKNOWN),
            raw_queries: cleartext && matches!(config.http2, Http2Mode::Never | Http2Mode::Auto) && !proxy_configured(),
            raw_refused: AtomicBool::new(false),
            connect_timeout: config.connect_timeout,
        })
    }

    /// `GET /info`.
    pub async fn info(&self) -> Result<ServerInfo, ClientError> {
        let url = self.endpoint("info")?;
        let response = self.send(|client| client.get(url.clone()), &url).await?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|error| ClientError::transport(url.as_str(), error))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_status(status, &body));
        }
        ServerInfo::from_body(&body)
    }

    /// `DESCRIBE <source>;` on `/ksql`: the source's columns as (name, is a key column).
    pub async fn describe(&self, source: &str) -> Result<Vec<(String, bool)>, ClientError> {
        let url = self.endpoint("ksql")?;
        let body = serde_json::json!({ "ksql": format!("DESCRIBE {source};"), "streamsProperties": {} });
        let response = self
            .send(|client| client.post(url.clone()).header(ACCEPT, "application/vnd.ksql.v1+json").json(&body), &url)
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|error| ClientError::transport(url.as_str(), error))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_status(status, &body));
        }
        let entities: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| ClientError::Info(format!("DESCRIBE answer: {error}")))?;
        let fields = entities[0]["sourceDescription"]["fields"]
            .as_array()
            .ok_or_else(|| ClientError::Info("DESCRIBE answer without sourceDescription.fields".into()))?;
        Ok(fields
            .iter()
            .filter_map(|field| Some((field["name"].as_str()?.to_string(), field["type"] == "KEY")))
            .collect())
    }

    /// Starts a query and reads its header. Uses `/query-stream` (delimited framing); a server
    /// before 0.24 that refuses HTTP/1.1 there (400 40004) is asked again on `/query`.
    pub async fn stream_query(&self, request: QueryRequest) -> Result<QueryStream, ClientError> {
        let url = self.endpoint("query-stream")?;
        let body = serde_json::json!({
            "sql": request.sql,
            "properties": request.properties,
            "requestProperties": request.request_properties,
        });
        let accept = if request.tombstones { STREAMED_ROW } else { DELIMITED };
        let raw = self.raw_queries && !self.raw_refused.load(Ordering::Relaxed);
        let (status, error_body) = if raw {
            let body = serde_json::to_vec(&body).map_err(|error| ClientError::Config(error.to_string()))?;
            let response = raw::send(raw::RawRequest {
                url: &url,
                accept,
                body: &body,
                basic_auth: self.username.as_deref().map(|user| (user, self.password.as_deref())),
                connect_timeout: self.connect_timeout,
                keepalive: TCP_KEEPALIVE,
            })
            .await?;
            if (200..300).contains(&response.status) {
                let framing = query_stream_framing(response.content_type.clone())?;
                return QueryStream::open_body(response.into_stream(), framing).await;
            }
            let status = response.status;
            let body =
                response.error_body().await.map_err(|source| ClientError::Request { url: url.to_string(), source })?;
            (status, body.into())
        } else {
            let response =
                self.send(|client| client.post(url.clone()).header(ACCEPT, accept).json(&body), &url).await?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                let framing = query_stream_framing(content_type(&response))?;
                return QueryStream::open(response, framing).await;
            }
            (status, response.bytes().await.map_err(|error| ClientError::transport(url.as_str(), error))?)
        };
        let error = ClientError::from_status(status, &error_body);
        if status != 400 || error.error_code() != Some(ERROR_CODE_HTTP2_ONLY) {
            return Err(error);
        }
        if raw && self.fallback.is_some() {
            self.raw_refused.store(true, Ordering::Relaxed);
            // `Auto`: this server takes `/query-stream` over HTTP/2 only.
            tracing::debug!(url = %url, "ksqlDB wants HTTP/2 on /query-stream; asking again over h2c");
            return Box::pin(self.stream_query(request)).await;
        }
        tracing::debug!(url = %url, "ksqlDB wants HTTP/2 on /query-stream; using /query");
        self.legacy_query(request).await
    }

    /// The same query on the legacy `/query` endpoint (StreamedRow framing).
    async fn legacy_query(&self, request: QueryRequest) -> Result<QueryStream, ClientError> {
        let url = self.endpoint("query")?;
        let body = serde_json::json!({
            "ksql": request.sql,
            "streamsProperties": request.properties,
            "requestProperties": request.request_properties,
        });
        let response =
            self.send(|client| client.post(url.clone()).header(ACCEPT, STREAMED_ROW).json(&body), &url).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let error_body = response.bytes().await.map_err(|error| ClientError::transport(url.as_str(), error))?;
            return Err(ClientError::from_status(status, &error_body));
        }
        // The old writer labels StreamedRow output `application/json`.
        let framing = match content_type(&response).as_deref().map(Framing::from_content_type) {
            Some(Some(Framing::Delimited)) => Framing::Delimited,
            _ => Framing::StreamedRow,
        };
        QueryStream::open(response, framing).await
    }

    /// `POST /close-query`: best effort. Dropping the [`QueryStream`] ends the query anyway;
    /// failures (including 0.29's 500 "On wrong context or worker", which still closes the
    /// query) are only logged.
    pub async fn close_query(&self, query_id: &str) {
        let Ok(url) = self.endpoint("close-query") else {
            return;
        };
        let body = serde_json::json!({ "queryId": query_id });
        // Best effort, and never for long: a server that accepts but does not answer must not
        // hold up a reconnect or a shutdown.
        let sent =
            tokio::time::timeout(CLOSE_QUERY_TIMEOUT, self.send(|client| client.post(url.clone()).json(&body), &url));
        let Ok(sent) = sent.await else {
            tracing::debug!(query_id, "close-query got no answer within {CLOSE_QUERY_TIMEOUT:?}");
            return;
        };
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                let error = ClientError::from_status(status, &body);
                tracing::debug!(query_id, error = %error, "close-query refused");
            }
            Err(error) => tracing::debug!(query_id, error = %error, "close-query failed"),
        }
    }

    fn endpoint(&self, path: &str) -> Result<Url, ClientError> {
        self.base.join(path).map_err(|error| ClientError::Config(format!("bad url: {error}")))
    }

    /// Sends a request built by `make` (called again for a fallback attempt), with auth.
    async fn send(
        &self,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, ClientError> {
        let authorise = |builder: reqwest::RequestBuilder| match &self.username {
            Some(username) => builder.basic_auth(username, self.password.as_ref()),
            None => builder,
        };
        let Some(fallback) = &self.fallback else {
            return authorise(make(&self.primary))
                .send()
                .await
                .map_err(|error| ClientError::transport(url.as_str(), error));
        };
        if self.protocol.load(Ordering::Relaxed) == PROTOCOL_H1 {
            return authorise(make(fallback)).send().await.map_err(|error| ClientError::transport(url.as_str(), error));
        }
        match authorise(make(&self.primary)).send().await {
            Ok(response) => {
                self.protocol.store(PROTOCOL_H2, Ordering::Relaxed);
                Ok(response)
            }
            Err(error) if self.protocol.load(Ordering::Relaxed) == PROTOCOL_UNKNOWN => {
                // An HTTP/1.1-only server answers the h2 preface with garbage or a close. Only
                // remember HTTP/1.1 once it has worked, so a down server teaches us nothing.
                let response = authorise(make(fallback))
                    .send()
                    .await
                    .map_err(|error| ClientError::transport(url.as_str(), error))?;
                tracing::debug!(url = %url, error = %error, "h2c failed; using HTTP/1.1");
                self.protocol.store(PROTOCOL_H1, Ordering::Relaxed);
                Ok(response)
            }
            Err(error) => Err(ClientError::transport(url.as_str(), error)),
        }
    }
}

impl std::fmt::Debug for KsqlClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KsqlClient")
            .field("base", &self.base.as_str())
            .field("username", &self.username)
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the environment names an HTTP proxy, which reqwest honours and the socket reader
/// does not: queries then go through reqwest too.
fn proxy_configured() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

fn content_type(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(CONTENT_TYPE)?;
    value.to_str().ok().map(str::to_string)
}

/// The framing of a `/query-stream` answer; a missing Content-Type means the default
/// (delimited), which is also what we asked for.
fn query_stream_framing(content_type: Option<String>) -> Result<Framing, ClientError> {
    match content_type {
        None => Ok(Framing::Delimited),
        Some(value) => Framing::from_content_type(&value).ok_or(ClientError::ContentType(value)),
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    /// ALPN over TLS.
    Negotiate,
}

fn build(config: &ClientConfig, protocol: Protocol) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .tcp_keepalive(TCP_KEEPALIVE)
        .user_agent(concat!("ksql-lake/", env!("CARGO_PKG_VERSION")));
    builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_prior_knowledge(),
        Protocol::Negotiate => builder,
    };
    if !matches!(protocol, Protocol::Http1) {
        builder = builder
            .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
            .http2_keep_alive_timeout(HTTP2_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true);
    }
    if let Some(ca_file) = &config.ca_file {
        let pem = read_pem(ca_file, "ca_file")?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| ClientError::Config(format!("`ca_file` {}: {error}", ca_file.display())))?;
        if certificates.is_empty() {
            return Err(ClientError::Config(format!("`ca_file` {} holds no certificate", ca_file.display())));
        }
        builder = builder.tls_certs_only(certificates);
    }
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read_pem(cert, "client_cert")?;
            pem.push(b'\n');
            pem.extend_from_slice(&read_pem(key, "client_key")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|error| ClientError::Config(format!("client certificate: {error}")))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => return Err(ClientError::Config("`client_cert` and `client_key` must be given together".to_string())),
    }
    builder.build().map_err(|error| ClientError::Config(format!("http client: {error}")))
}

fn read_pem(path: &Path, field: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|error| ClientError::Config(format!("`{field}` {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn clients_and_streams_can_move_between_tasks() {
        assert_send_sync::<KsqlClient>();
        assert_send::<QueryStream>();
    }

    #[test]
    fn base_url_keeps_its_path_prefix() {
        let client = KsqlClient::new(ClientConfig::new("http://h:8088/ksql".parse().unwrap())).unwrap();
        assert_eq!(client.endpoint("query-stream").unwrap().as_str(), "http://h:8088/ksql/query-stream");
        let client = KsqlClient::new(ClientConfig::new("http://h:8088".parse().unwrap())).unwrap();
        assert_eq!(client.endpoint("info").unwrap().as_str(), "http://h:8088/info");
        assert!(!format!("{client:?}").contains("password"));
    }

    #[test]
    fn info_bodies_parse() {
        let info = ServerInfo::from_body(
            br#"{"KsqlServerInfo":{"version":"0.29.0","kafkaClusterId":"k","ksqlServiceId":"s","serverStatus":"RUNNING"}}"#,
        )
        .unwrap();
        assert_eq!(info, ServerInfo { version: "0.29.0".into(), kafka_cluster_id: "k".into(), service_id: "s".into() });
        assert!(matches!(ServerInfo::from_body(b"{}"), Err(ClientError::Info(_))));
    }
}
