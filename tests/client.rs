//! The ksqlDB client against the simulator over real sockets: HTTP/1.1, h2c and auto
//! negotiation, live rows, typed errors, close-query, faults, and the pre-0.24 fallback.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ksql_lake::ksqldb::{ClientConfig, ClientError, Event, Framing, Http2Mode, KsqlClient, QueryRequest, QueryStream};
use ksql_lake::schema::{Column, ColumnRole, KsqlType, RowDecoder};
use ksql_lake::simulator::{Fault, Simulator, SimulatorConfig, SimulatorHandle, Value};
use serde_json::json;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn start(config: SimulatorConfig) -> (Simulator, SimulatorHandle) {
    let sim = Simulator::new(config);
    sim.create_stream(
        "pageviews",
        vec![
            Column { name: "userid".into(), ty: KsqlType::String, role: ColumnRole::Key },
            Column::new("pageid", KsqlType::String),
            Column::new("viewtime", KsqlType::Bigint),
        ],
        2,
    )
    .unwrap();
    let handle = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, handle)
}

fn view(sim: &Simulator, user: &str, time: i64) {
    let values = vec![Value::string(user), Value::string("PAGE"), Value::Bigint(time)];
    sim.produce("PAGEVIEWS", Some(0), 1_000 + time, values).unwrap();
}

fn new_client(url: &str, http2: Http2Mode) -> KsqlClient {
    let mut config = ClientConfig::new(url.parse().unwrap());
    config.http2 = http2;
    config.connect_timeout = Duration::from_secs(5);
    KsqlClient::new(config).unwrap()
}

fn earliest(sql: &str) -> QueryRequest {
    let mut properties = serde_json::Map::new();
    properties.insert("auto.offset.reset".into(), json!("earliest"));
    QueryRequest { sql: sql.into(), properties, ..QueryRequest::default() }
}

async fn open(client: &KsqlClient, request: QueryRequest) -> Result<QueryStream, ClientError> {
    timeout(WAIT, client.stream_query(request)).await.expect("query start timed out")
}

async fn next(stream: &mut QueryStream) -> Result<Option<Event>, ClientError> {
    timeout(WAIT, stream.next_event()).await.expect("no event in time")
}

async fn next_row(stream: &mut QueryStream) -> Bytes {
    match next(stream).await.unwrap() {
        Some(Event::Row { values, .. }) => values,
        other => panic!("expected a row, got {other:?}"),
    }
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

/// Header, history and live rows, decoded to Arrow; then close-query frees the slot and ends
/// the body.
async fn live_query_round_trip(http2: Http2Mode) {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, "USER_1", 1);
    let client = new_client(&handle.url(), http2);
    let info = timeout(WAIT, client.info()).await.unwrap().unwrap();
    assert_eq!(info.version, "0.29.0");

    let mut stream = open(&client, earliest("SELECT * FROM pageviews EMIT CHANGES;")).await.unwrap();
    assert_eq!(stream.framing(), Framing::Delimited);
    let query_id = stream.query_id().unwrap().to_string();
    assert!(query_id.starts_with("transient_PAGEVIEWS_"), "{query_id}");
    let names: Vec<&str> = stream.header().columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["USERID", "PAGEID", "VIEWTIME"]);

    let mut rows = RowDecoder::new(&stream.header().columns);
    rows.append(&next_row(&mut stream).await).unwrap();
    view(&sim, "USER_2", 2);
    let live = next_row(&mut stream).await;
    assert_eq!(&live[..], br#"["USER_2","PAGE",2]"#);
    rows.append(&live).unwrap();
    assert_eq!(rows.finish().num_rows(), 2);

    assert_eq!(sim.running_push_queries(), 1);
    timeout(WAIT, client.close_query(&query_id)).await.unwrap();
    wait_for(|| sim.running_push_queries() == 0).await;
    assert_eq!(next(&mut stream).await.unwrap(), None);
}

#[tokio::test]
async fn http1_live_query_and_close() {
    live_query_round_trip(Http2Mode::Never).await;
}

#[tokio::test]
async fn h2c_live_query_and_close() {
    live_query_round_trip(Http2Mode::Always).await;
}

#[tokio::test]
async fn auto_live_query_and_close() {
    live_query_round_trip(Http2Mode::Auto).await;
}

#[tokio::test]
async fn basic_auth_is_sent_and_401_is_typed() {
    let config = SimulatorConfig { basic_auth: Some(("user".into(), "secret".into())), ..Default::default() };
    let (_sim, handle) = start(config).await;
    let anonymous = new_client(&handle.url(), Http2Mode::Never);
    let error = timeout(WAIT, anonymous.info()).await.unwrap().unwrap_err();
    assert!(matches!(error, ClientError::Server { status: 401, .. }), "{error:?}");
    assert_eq!(error.error_code(), Some(40100));
    assert!(!error.is_retryable());
    let error = open(&anonymous, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.err();
    assert_eq!(error.and_then(|error| error.error_code()), Some(40100));

    let mut config = ClientConfig::new(handle.url().parse().unwrap());
    config.username = Some("user".into());
    config.password = Some("secret".into());
    let authorised = KsqlClient::new(config).unwrap();
    assert!(timeout(WAIT, authorised.info()).await.unwrap().is_ok());
    let stream = open(&authorised, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await;
    assert!(stream.is_ok());
}

#[tokio::test]
async fn unknown_source_is_a_permanent_statement_error() {
    let (_sim, handle) = start(SimulatorConfig::default()).await;
    for mode in [Http2Mode::Never, Http2Mode::Always] {
        let client = new_client(&handle.url(), mode);
        let error = open(&client, earliest("SELECT * FROM NOPE EMIT CHANGES;")).await.err().unwrap();
        let ClientError::Server { status, error: server } = &error else {
            panic!("expected a server error, got {error:?}");
        };
        assert_eq!((*status, server.error_code), (400, 40001));
        assert!(server.message.contains("NOPE does not exist"), "{}", server.message);
        assert!(!error.is_retryable());
    }
}

#[tokio::test]
async fn close_query_frees_the_slot_for_the_next_query() {
    let config = SimulatorConfig { max_push_queries: 1, ..Default::default() };
    let (sim, handle) = start(config).await;
    let client = new_client(&handle.url(), Http2Mode::Auto);
    let sql = "SELECT * FROM PAGEVIEWS EMIT CHANGES;";
    let first = open(&client, earliest(sql)).await.unwrap();
    let full = open(&client, earliest(sql)).await.err().unwrap();
    assert_eq!(full.error_code(), Some(40003));
    assert!(full.is_retryable());
    timeout(WAIT, client.close_query(first.query_id().unwrap())).await.unwrap();
    wait_for(|| sim.running_push_queries() == 0).await;
    let second = open(&client, earliest(sql)).await.unwrap();
    assert_ne!(second.query_id(), first.query_id());
    // Unknown ids are only logged.
    timeout(WAIT, client.close_query("no_such_query")).await.unwrap();
}

#[tokio::test]
async fn dropping_the_stream_ends_the_query_on_both_protocols() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for mode in [Http2Mode::Never, Http2Mode::Always] {
        let client = new_client(&handle.url(), mode);
        let stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
        assert_eq!(sim.running_push_queries(), 1);
        drop(stream);
        wait_for(|| sim.running_push_queries() == 0).await;
    }
}

#[tokio::test]
async fn in_band_error_and_cut_stream_are_typed() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for mode in [Http2Mode::Never, Http2Mode::Always] {
        let client = new_client(&handle.url(), mode);
        let mut stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
        assert!(sim.inject(Fault::Error("java.lang.RuntimeException: boom".into())) == 1);
        // Rows produced by the previous round come first (earliest).
        let error = loop {
            match next(&mut stream).await {
                Ok(Some(Event::Row { .. })) => {}
                Ok(other) => panic!("expected the error, got {other:?}"),
                Err(error) => break error,
            }
        };
        let ClientError::InBand(server) = &error else { panic!("expected in-band, got {error:?}") };
        assert!(server.message.contains("boom"));
        assert!(error.is_retryable());
        assert_eq!(next(&mut stream).await.unwrap(), None);
        wait_for(|| sim.running_push_queries() == 0).await;

        let mut stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
        assert!(sim.inject(Fault::CutAfterRows(1)) == 1);
        view(&sim, "USER_9", 9);
        view(&sim, "USER_10", 10);
        let mut rows = 0;
        let error = loop {
            match next(&mut stream).await {
                Ok(Some(Event::Row { .. })) => rows += 1,
                Ok(other) => panic!("expected a cut, got {other:?} ({mode:?})"),
                Err(error) => break error,
            }
        };
        assert!(rows >= 1, "{mode:?}");
        assert!(matches!(error, ClientError::StreamCut { .. } | ClientError::Truncated(_)), "{error:?}");
        assert!(error.is_retryable());
        wait_for(|| sim.running_push_queries() == 0).await;
    }
}

#[tokio::test]
async fn next_event_survives_a_stall_timeout() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let client = new_client(&handle.url(), Http2Mode::Always);
    let mut stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
    // Nothing to send: the caller's stall timeout fires and drops the next_event future.
    let idle = timeout(Duration::from_millis(100), stream.next_event()).await;
    assert!(idle.is_err());
    view(&sim, "USER_1", 1);
    assert_eq!(&next_row(&mut stream).await[..], br#"["USER_1","PAGE",1]"#);
}

#[tokio::test]
async fn pre_024_server_over_http1_falls_back_to_query() {
    let config = SimulatorConfig { legacy_pre_024: true, ..Default::default() };
    let (sim, handle) = start(config).await;
    view(&sim, "USER_1", 1);
    let client = new_client(&handle.url(), Http2Mode::Never);
    let mut stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
    assert_eq!(stream.framing(), Framing::StreamedRow);
    assert_eq!(stream.header().columns.len(), 3);
    assert_eq!(&next_row(&mut stream).await[..], br#"["USER_1","PAGE",1]"#);
    // Over h2c the same server serves /query-stream directly.
    let client = new_client(&handle.url(), Http2Mode::Always);
    let stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
    assert_eq!(stream.framing(), Framing::Delimited);
    // `auto` asks over HTTP/1.1 first (read straight from the socket), is refused with 40004,
    // and asks again over h2c, then and for every later query.
    let client = new_client(&handle.url(), Http2Mode::Auto);
    for _ in 0..2 {
        let mut stream = open(&client, earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap();
        assert_eq!(stream.framing(), Framing::Delimited);
        assert_eq!(&next_row(&mut stream).await[..], br#"["USER_1","PAGE",1]"#);
    }
}

#[tokio::test]
async fn unreachable_server_is_a_retryable_connect_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    for mode in [Http2Mode::Never, Http2Mode::Always, Http2Mode::Auto] {
        let error = timeout(WAIT, new_client(&url, mode).info()).await.unwrap().unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{mode:?}: {error:?}");
        assert!(error.is_retryable());
    }
}

/// An HTTP/1.1-only server (a proxy in front of ksqlDB, say): counts connections that were
/// not HTTP/1.1.
async fn http1_only_server() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let broken = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (broken_counter, served_counter) = (broken.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let broken = broken_counter.clone();
            let served = served_counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    served.fetch_add(1, Ordering::SeqCst);
                    async {
                        let body =
                            r#"{"KsqlServerInfo":{"version":"0.28.2","kafkaClusterId":"c","ksqlServiceId":"s"}}"#;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service);
                if connection.await.is_err() {
                    broken.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (url, broken, served)
}

#[tokio::test]
async fn auto_falls_back_to_http1_and_remembers() {
    let (url, broken, served) = http1_only_server().await;
    let client = new_client(&url, Http2Mode::Auto);
    let info = timeout(WAIT, client.info()).await.unwrap().unwrap();
    assert_eq!(info.version, "0.28.2");
    wait_for(|| broken.load(Ordering::SeqCst) == 1).await;
    for _ in 0..3 {
        timeout(WAIT, client.info()).await.unwrap().unwrap();
    }
    assert_eq!(served.load(Ordering::SeqCst), 4);
    assert_eq!(broken.load(Ordering::SeqCst), 1, "h2c was tried again");

    let always = new_client(&url, Http2Mode::Always);
    let error = timeout(WAIT, always.info()).await.unwrap().unwrap_err();
    assert!(matches!(error, ClientError::Request { .. }), "{error:?}");
}

/// Refused connections and TLS mismatches are retryable and say which they are (the reconnect
/// `reason` label), with their causes in the message.
#[tokio::test]
async fn connection_failures_are_retryable_and_named_by_what_failed() {
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        new_client(&format!("http://127.0.0.1:{port}"), Http2Mode::Never)
    };
    let error = refused.stream_query(earliest("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.reason(), "connect");
    assert!(error.with_causes().contains("refused"), "{}", error.with_causes());

    // https:// to a plain-HTTP server: the TLS handshake fails.
    let (_simulator, server) = start(SimulatorConfig::default()).await;
    let plain = server.url().replace("http://", "https://");
    let error = new_client(&plain, Http2Mode::Never).info().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(error.reason(), "tls", "{}", error.with_causes());
    server.shutdown().await;
}

/// `DESCRIBE` on `/ksql` names the key columns, which a query's header does not.
#[tokio::test]
async fn describe_names_a_source_s_key_columns() {
    let (_simulator, server) = start(SimulatorConfig::default()).await;
    let client = new_client(&server.url(), Http2Mode::Never);
    let columns = client.describe("PAGEVIEWS").await.unwrap();
    assert!(columns.contains(&("USERID".to_string(), true)), "{columns:?}");
    assert!(columns.iter().any(|(name, key)| name == "PAGEID" && !key), "{columns:?}");
    let missing = client.describe("NOPE").await.unwrap_err();
    assert_eq!(missing.error_code(), Some(40001));
    assert!(!missing.is_retryable());
    server.shutdown().await;
}
