//! The simulator over real sockets: framings byte for byte, live push queries, offsets and
//! resume filters, every pre-stream error, the push-query limit, faults, h2c.

mod support;

use std::time::Duration;

use ksql_lake::schema::{Column, ColumnRole, KsqlType};
use ksql_lake::simulator::{Fault, Simulator, SimulatorConfig, SimulatorHandle, Value};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const DELIMITED: &str = "application/vnd.ksqlapi.delimited.v1";
const V1_JSON: &str = "application/vnd.ksql.v1+json";

fn key(name: &str, ty: KsqlType) -> Column {
    Column { name: name.into(), ty, role: ColumnRole::Key }
}

async fn start(config: SimulatorConfig) -> (Simulator, SimulatorHandle) {
    let sim = Simulator::new(config);
    sim.create_stream(
        "pageviews",
        vec![
            key("userid", KsqlType::String),
            Column::new("pageid", KsqlType::String),
            Column::new("viewtime", KsqlType::Bigint),
        ],
        2,
    )
    .unwrap();
    sim.create_table(
        "users",
        vec![Column::new("ID", KsqlType::String)],
        vec![Column::new("NAME", KsqlType::String), Column::new("SCORE", KsqlType::Integer)],
        2,
    )
    .unwrap();
    let handle = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, handle)
}

fn view(sim: &Simulator, partition: u32, user: &str, page: &str, time: i64) -> (u32, i64) {
    sim.produce(
        "PAGEVIEWS",
        Some(partition),
        1_000 + time,
        vec![Value::string(user), Value::string(page), Value::Bigint(time)],
    )
    .unwrap()
}

fn h1() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn h2() -> reqwest::Client {
    reqwest::Client::builder().http2_prior_knowledge().build().unwrap()
}

async fn post(
    client: &reqwest::Client,
    handle: &SimulatorHandle,
    path: &str,
    accept: Option<&str>,
    body: Json,
) -> reqwest::Response {
    let mut request = client.post(format!("{}{path}", handle.url())).json(&body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    timeout(WAIT, request.send()).await.unwrap().unwrap()
}

async fn body_text(response: reqwest::Response) -> String {
    timeout(WAIT, response.text()).await.unwrap().unwrap()
}

/// Reads chunks until `text` holds `lines` newline-terminated lines.
async fn read_lines(response: &mut reqwest::Response, text: &mut String, lines: usize) {
    while text.matches('\n').count() < lines {
        let chunk = timeout(WAIT, response.chunk()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// Opens `SELECT * FROM PAGEVIEWS EMIT CHANGES` on /query (StreamedRow) and reads its header line.
async fn open_pageviews_push_query(handle: &SimulatorHandle) -> (reqwest::Response, String) {
    let mut response =
        post(&h1(), handle, "/query", Some(V1_JSON), json!({"ksql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;"})).await;
    let mut text = String::new();
    read_lines(&mut response, &mut text, 1).await;
    (response, text)
}

/// Replaces the random query id in a body by `<ID>` (and returns it).
fn strip_id(body: &str) -> (String, String) {
    let start = body.find("\"queryId\":\"").unwrap() + 11;
    let end = start + body[start..].find('"').unwrap();
    let id = body[start..end].to_string();
    (body.replacen(&id, "<ID>", 1), id)
}

fn earliest_qs(sql: &str) -> Json {
    json!({"sql": sql, "properties": {"auto.offset.reset": "earliest"}})
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn push_query_limit_delimited_exact_framing() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "USER_1", "PAGE_1", 1);
    view(&sim, 1, "USER_2", "PAGE_2", 2);
    view(&sim, 0, "USER_3", "PAGE_3", 3);
    let response =
        post(&h1(), &handle, "/query-stream", None, earliest_qs("SELECT * FROM pageviews EMIT CHANGES LIMIT 2;")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], DELIMITED);
    let (body, id) = strip_id(&body_text(response).await);
    assert!(id.starts_with("transient_PAGEVIEWS_"), "{id}");
    assert!(id["transient_PAGEVIEWS_".len()..].parse::<i64>().unwrap() >= 0);
    assert_eq!(
        body,
        "{\"queryId\":\"<ID>\",\"columnNames\":[\"USERID\",\"PAGEID\",\"VIEWTIME\"],\
         \"columnTypes\":[\"STRING\",\"STRING\",\"BIGINT\"]}\n\
         [\"USER_1\",\"PAGE_1\",1]\n[\"USER_2\",\"PAGE_2\",2]\n"
    );
    wait_for(|| sim.running_push_queries() == 0).await;
}

#[tokio::test]
async fn push_query_limit_streamed_row_and_json_array_framing() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "USER_1", "PAGE_1", 1);
    view(&sim, 1, "USER_2", "PAGE_2", 2);
    let query = json!({"ksql": "SELECT * FROM PAGEVIEWS EMIT CHANGES LIMIT 2;",
                       "streamsProperties": {"ksql.streams.auto.offset.reset": "earliest"}});
    let response = post(&h1(), &handle, "/query", Some(V1_JSON), query).await;
    assert_eq!(response.headers()["content-type"], V1_JSON);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let (body, id) = strip_id(&body_text(response).await);
    assert!(id.starts_with("transient_PAGEVIEWS_"));
    assert_eq!(
        body,
        "[{\"header\":{\"queryId\":\"<ID>\",\"schema\":\"`USERID` STRING, `PAGEID` STRING, `VIEWTIME` BIGINT\"}},\n\
         {\"row\":{\"columns\":[\"USER_1\",\"PAGE_1\",1]}},\n\
         {\"row\":{\"columns\":[\"USER_2\",\"PAGE_2\",2]}},\n\
         {\"finalMessage\":\"Limit Reached\"}]"
    );
    let response = post(
        &h1(),
        &handle,
        "/query-stream",
        Some("application/json"),
        earliest_qs("SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES LIMIT 2;"),
    )
    .await;
    assert_eq!(response.headers()["content-type"], "application/json");
    let (body, _) = strip_id(&body_text(response).await);
    assert_eq!(body, "[{\"queryId\":\"<ID>\",\"columnNames\":[\"VIEWTIME\"],\"columnTypes\":[\"BIGINT\"]},[1],[2]]");
}

/// Sends one HTTP/1.1 request by hand and returns the head and the de-chunked body.
async fn raw_request(handle: &SimulatorHandle, path: &str, accept: Option<&str>, body: &str) -> (String, String) {
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{accept}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(handle.local_addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, chunked) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"));
    let mut rest = chunked;
    let mut decoded = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            assert_eq!(after, "\r\n");
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap();
    }
    (head.to_ascii_lowercase(), decoded)
}

#[tokio::test]
async fn raw_http1_responses_are_chunked_with_exact_bytes_and_default_framings() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "U", "P", 7);
    let body = earliest_qs("SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES LIMIT 1;").to_string();
    let (head, decoded) = raw_request(&handle, "/query-stream", None, &body).await;
    assert!(head.contains(&format!("content-type: {DELIMITED}")));
    let (decoded, _) = strip_id(&decoded);
    assert_eq!(decoded, "{\"queryId\":\"<ID>\",\"columnNames\":[\"VIEWTIME\"],\"columnTypes\":[\"BIGINT\"]}\n[7]\n");
    // /query without Accept: StreamedRow; with */* (curl): delimited
    let body = json!({"ksql": "SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES LIMIT 1;",
                      "streamsProperties": {"auto.offset.reset": "earliest"}})
    .to_string();
    let (head, decoded) = raw_request(&handle, "/query", None, &body).await;
    assert!(head.contains(&format!("content-type: {V1_JSON}")));
    assert!(
        decoded.ends_with(
            "\"schema\":\"`VIEWTIME` BIGINT\"}},\n{\"row\":{\"columns\":[7]}},\n{\"finalMessage\":\"Limit Reached\"}]"
        ),
        "{decoded}"
    );
    let (head, decoded) = raw_request(&handle, "/query", Some("*/*"), &body).await;
    assert!(head.contains(&format!("content-type: {DELIMITED}")));
    assert!(decoded.ends_with("]}\n[7]\n"), "{decoded}");
}

#[tokio::test]
async fn pull_queries_on_tables_and_streams() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let user = |id: &str, name: &str, score: i32| {
        sim.produce("users", None, 5, vec![Value::string(id), Value::string(name), Value::Integer(score)]).unwrap()
    };
    let empty = post(&h1(), &handle, "/query", Some(V1_JSON), json!({"ksql": "SELECT * FROM USERS;"})).await;
    let (empty, id) = strip_id(&body_text(empty).await);
    assert!(id.starts_with("query_"));
    assert_eq!(
        empty,
        "[{\"header\":{\"queryId\":\"<ID>\",\"schema\":\"`ID` STRING KEY, `NAME` STRING, `SCORE` INTEGER\"}}]"
    );
    user("a", "Ann", 1);
    user("b", "Bob", 2);
    user("a", "Ann", 3);
    sim.delete("users", vec![Value::string("b")], 6).unwrap();
    user("c", "Cy", 4);
    let response = post(
        &h1(),
        &handle,
        "/query",
        Some("application/json"),
        json!({"ksql": "SELECT * FROM USERS WHERE SCORE > 1;"}),
    )
    .await;
    let (body, _) = strip_id(&body_text(response).await);
    assert_eq!(
        body,
        "[{\"header\":{\"queryId\":\"<ID>\",\"schema\":\"`ID` STRING KEY, `NAME` STRING, `SCORE` INTEGER\"}},\n\
         {\"row\":{\"columns\":[\"a\",\"Ann\",3]}},\n{\"row\":{\"columns\":[\"c\",\"Cy\",4]}}]"
    );
    let response = post(&h2(), &handle, "/query-stream", None, json!({"sql": "SELECT NAME FROM USERS LIMIT 1;"})).await;
    let (body, _) = strip_id(&body_text(response).await);
    assert_eq!(body, "{\"queryId\":\"<ID>\",\"columnNames\":[\"NAME\"],\"columnTypes\":[\"STRING\"]}\n[\"Ann\"]\n");
    // stream pull query: bounded, ignores auto.offset.reset=latest, ends "Query Completed"
    view(&sim, 0, "U1", "P1", 1);
    view(&sim, 1, "U2", "P2", 2);
    let query =
        json!({"ksql": "SELECT VIEWTIME FROM PAGEVIEWS;", "streamsProperties": {"auto.offset.reset": "latest"}});
    let response = post(&h1(), &handle, "/query", Some(V1_JSON), query).await;
    let (body, id) = strip_id(&body_text(response).await);
    assert!(id.starts_with("transient_PAGEVIEWS_"));
    assert_eq!(
        body,
        "[{\"header\":{\"queryId\":\"<ID>\",\"schema\":\"`VIEWTIME` BIGINT\"}},\n\
         {\"row\":{\"columns\":[1]}},\n{\"row\":{\"columns\":[2]}},\n{\"finalMessage\":\"Query Completed\"}]"
    );
}

#[tokio::test]
async fn live_rows_reach_an_open_query_and_latest_skips_history() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "OLD", "P", 0);
    let mut latest =
        post(&h1(), &handle, "/query-stream", None, json!({"sql": "SELECT USERID FROM PAGEVIEWS EMIT CHANGES;"})).await;
    let mut earliest =
        post(&h2(), &handle, "/query-stream", None, earliest_qs("SELECT USERID FROM PAGEVIEWS EMIT CHANGES;")).await;
    assert_eq!(earliest.version(), reqwest::Version::HTTP_2);
    let (mut a, mut b) = (String::new(), String::new());
    read_lines(&mut latest, &mut a, 1).await; // metadata arrives before any row
    read_lines(&mut earliest, &mut b, 2).await;
    assert!(b.ends_with("[\"OLD\"]\n"));
    assert_eq!(sim.running_push_queries(), 2);
    view(&sim, 1, "NEW1", "P", 1);
    view(&sim, 0, "NEW2", "P", 2);
    read_lines(&mut latest, &mut a, 3).await;
    read_lines(&mut earliest, &mut b, 4).await;
    assert_eq!(a.lines().skip(1).collect::<Vec<_>>(), ["[\"NEW1\"]", "[\"NEW2\"]"]);
    assert_eq!(b.lines().skip(1).collect::<Vec<_>>(), ["[\"OLD\"]", "[\"NEW1\"]", "[\"NEW2\"]"]);
    // dropping the h1 connection and the h2 stream both free the slots
    drop(latest);
    drop(earliest);
    wait_for(|| sim.running_push_queries() == 0).await;
}

#[tokio::test]
async fn pseudo_columns_and_resume_filter() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let mut expected = Vec::new();
    for i in 0..12 {
        let (partition, offset) = view(&sim, (i % 2) as u32, "U", "P", i);
        // resume after offset 3 of partition 0 and offset 4 of partition 1
        if (partition == 0 && offset > 3) || (partition == 1 && offset > 4) {
            expected.push(format!("[{},{partition},{offset},\"U\",\"P\",{i}]", 1000 + i));
        }
    }
    let sql = "SELECT ROWTIME, ROWPARTITION, ROWOFFSET, * FROM PAGEVIEWS WHERE \
               (ROWPARTITION = 0 AND ROWOFFSET > 3) OR (ROWPARTITION = 1 AND ROWOFFSET > 4) OR ROWPARTITION > 1 \
               EMIT CHANGES LIMIT 3;";
    let response = post(&h1(), &handle, "/query-stream", None, earliest_qs(sql)).await;
    let body = body_text(response).await;
    let mut lines = body.lines();
    let meta: Json = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(meta["columnNames"], json!(["ROWTIME", "ROWPARTITION", "ROWOFFSET", "USERID", "PAGEID", "VIEWTIME"]));
    assert_eq!(meta["columnTypes"], json!(["BIGINT", "INTEGER", "BIGINT", "STRING", "STRING", "BIGINT"]));
    assert_eq!(lines.collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn table_push_query_shows_tombstones_only_in_streamed_row() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    sim.produce("USERS", None, 1, vec![Value::string("a"), Value::string("Ann"), Value::Integer(1)]).unwrap();
    sim.delete("USERS", vec![Value::string("a")], 2).unwrap();
    sim.produce("USERS", None, 3, vec![Value::string("b"), Value::string("Bob"), Value::Integer(2)]).unwrap();
    let query = json!({"ksql": "SELECT * FROM USERS EMIT CHANGES LIMIT 3;", "streamsProperties": {"auto.offset.reset": "earliest"}});
    let (body, _) = strip_id(&body_text(post(&h1(), &handle, "/query", Some(V1_JSON), query).await).await);
    assert_eq!(
        body,
        "[{\"header\":{\"queryId\":\"<ID>\",\"schema\":\"`ID` STRING, `NAME` STRING, `SCORE` INTEGER\"}},\n\
         {\"row\":{\"columns\":[\"a\",\"Ann\",1]}},\n{\"row\":{\"columns\":[\"a\",null,null],\"tombstone\":true}},\n\
         {\"row\":{\"columns\":[\"b\",\"Bob\",2]}},\n{\"finalMessage\":\"Limit Reached\"}]"
    );
    let (body, _) = strip_id(
        &body_text(
            post(&h1(), &handle, "/query-stream", None, earliest_qs("SELECT NAME FROM USERS EMIT CHANGES LIMIT 3;"))
                .await,
        )
        .await,
    );
    assert_eq!(body.lines().skip(1).collect::<Vec<_>>(), ["[\"Ann\"]", "[\"Bob\"]"]);
}

async fn expect_error(response: reqwest::Response, status: u16, expected: Json) {
    assert_eq!(response.status().as_u16(), status);
    let body: Json = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body, expected);
}

#[tokio::test]
async fn errors_before_the_stream() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let client = h1();
    let sql = "SELECT * FROM FOO EMIT CHANGES;";
    let unknown = json!({"@type": "statement_error", "error_code": 40001,
        "message": "Exception while preparing statement: FOO does not exist.", "statementText": sql, "entities": []});
    expect_error(post(&client, &handle, "/query-stream", None, json!({"sql": sql})).await, 400, unknown.clone()).await;
    let response = post(&client, &handle, "/query", Some(V1_JSON), json!({"ksql": sql})).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    expect_error(response, 400, unknown).await;
    // the texts of ksqlDB 0.29: QueryEndpoint adds the statement, StreamedQueryResource the cause
    let typo = "SLECTT * from X EMIT CHANGES;";
    let suggestion = "line 1:1: Syntax Error\nUnknown statement 'SLECTT'\nDid you mean 'SELECT'?\nStatement: SLECTT * from X EMIT CHANGES;";
    let syntax = json!({"@type": "statement_error", "error_code": 40001, "message": suggestion,
        "statementText": typo, "entities": []});
    expect_error(post(&client, &handle, "/query-stream", None, json!({"sql": typo})).await, 400, syntax).await;
    let syntax = json!({"@type": "statement_error", "error_code": 40001,
        "message": format!("{suggestion}\nCaused by: line 1:1: Syntax error at line 1:1"), "statementText": typo, "entities": []});
    expect_error(post(&client, &handle, "/query", Some(V1_JSON), json!({"ksql": typo})).await, 400, syntax).await;
    let two_lines = "SELECT *\nFROM X EMIT CHANGES";
    let body: Json =
        post(&client, &handle, "/query-stream", None, json!({"sql": two_lines})).await.json().await.unwrap();
    assert_eq!(body["message"], "line 2:20: Syntax Error\nSyntax error at or near \";\"\n'}', ']', or ')' is missing\nStatement: FROM X EMIT CHANGES");
    assert_eq!(body["statementText"], "FROM X EMIT CHANGES");
    let not_query = json!({"@type": "statement_error", "error_code": 40001,
        "message": "Neither a query nor a print statement\nStatement: SHOW STREAMS;", "statementText": "SHOW STREAMS;", "entities": []});
    expect_error(post(&client, &handle, "/query-stream", None, json!({"sql": "SHOW STREAMS;"})).await, 400, not_query)
        .await;
    let not_query = json!({"@type": "generic_error", "error_code": 40000,
        "message": "Statement type `io.confluent.ksql.parser.tree.ListStreams' not supported for this resource"});
    expect_error(
        post(&client, &handle, "/query", Some(V1_JSON), json!({"ksql": "SHOW STREAMS;"})).await,
        400,
        not_query,
    )
    .await;
    let pull = "SELECT ROWOFFSET FROM PAGEVIEWS;";
    let offsets = json!({"@type": "statement_error", "error_code": 40001,
        "message": "Pull queries don't support the following columns in SELECT clauses: `ROWOFFSET`\n See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.",
        "statementText": pull, "entities": []});
    expect_error(post(&client, &handle, "/query-stream", None, json!({"sql": pull})).await, 400, offsets.clone()).await;
    expect_error(post(&client, &handle, "/query", Some(V1_JSON), json!({"ksql": pull})).await, 400, offsets).await;
    let missing = json!({"@type": "generic_error", "error_code": 40000,
        "message": "Invalid JSON in request: Missing required creator property 'sql' (index 0)"});
    expect_error(post(&client, &handle, "/query-stream", None, json!({"ksql": sql})).await, 400, missing).await;
    let empty_ksql =
        json!({"@type": "generic_error", "error_code": 40000, "message": "\"ksql\" field must be populated"});
    expect_error(post(&client, &handle, "/query", None, json!({"ksql": ""})).await, 400, empty_ksql).await;
    let malformed = timeout(WAIT, client.post(format!("{}/query-stream", handle.url())).body("{nope").send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json::<Json>().await.unwrap()["error_code"], 40000);
    let close = json!({"@type": "generic_error", "error_code": 40000, "message": "No query with id xyzfasgf"});
    expect_error(post(&client, &handle, "/close-query", None, json!({"queryId": "xyzfasgf"})).await, 400, close).await;
    let response = post(&client, &handle, "/query", Some("unsupported/type"), json!({"ksql": sql})).await;
    assert_eq!(response.status(), 406);
    assert_eq!(body_text(response).await, "");
    let response = timeout(WAIT, client.get(format!("{}/nope", handle.url())).send()).await.unwrap().unwrap();
    assert_eq!(response.status(), 404);
    let info: Json = timeout(WAIT, client.get(format!("{}/info", handle.url())).send())
        .await
        .unwrap()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["KsqlServerInfo"]["version"], "0.29.0");
    assert_eq!(info["KsqlServerInfo"]["serverStatus"], "RUNNING");
    sim.set_ready(false);
    let starting = post(&client, &handle, "/query-stream", None, json!({"sql": sql})).await;
    assert_eq!(starting.status(), 503);
    assert_eq!(starting.json::<Json>().await.unwrap()["error_code"], 50302);
    sim.set_ready(true);
    let two = "SELECT * FROM A; SELECT * FROM B;";
    expect_error(
        post(&client, &handle, "/query-stream", None, json!({"sql": two})).await,
        400,
        json!({"@type": "statement_error", "error_code": 40001, "statementText": two, "entities": [],
            "message": format!("Expected exactly one KSQL statement; found 2 instead\nStatement: {two}")}),
    )
    .await;
    expect_error(
        post(&client, &handle, "/query", Some(V1_JSON), json!({"ksql": two})).await,
        400,
        json!({"@type": "statement_error", "error_code": 40001, "statementText": two, "entities": [],
            "message": "Expected exactly one KSQL statement; found 2 instead"}),
    )
    .await;
}

#[tokio::test]
async fn basic_auth_and_legacy_server() {
    let config =
        SimulatorConfig { basic_auth: Some(("u".into(), "p".into())), legacy_pre_024: true, ..Default::default() };
    let (_sim, handle) = start(config).await;
    let unauthorized = json!({"@type": "generic_error", "error_code": 40100, "message": "Unauthorized"});
    let query = json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES LIMIT 0;"});
    expect_error(post(&h2(), &handle, "/query-stream", None, query.clone()).await, 401, unauthorized.clone()).await;
    let wrong = h2().post(format!("{}/query-stream", handle.url())).basic_auth("u", Some("x")).json(&query).send();
    expect_error(timeout(WAIT, wrong).await.unwrap().unwrap(), 401, unauthorized).await;
    let right = h2().post(format!("{}/query-stream", handle.url())).basic_auth("u", Some("p")).json(&query).send();
    let right = timeout(WAIT, right).await.unwrap().unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(body_text(right).await.lines().count(), 1);
    let http1 = h1().post(format!("{}/query-stream", handle.url())).basic_auth("u", Some("p")).json(&query).send();
    expect_error(
        timeout(WAIT, http1).await.unwrap().unwrap(),
        400,
        json!({"@type": "generic_error",
        "error_code": 40004, "message": "This endpoint is only available when using HTTP2"}),
    )
    .await;
    // the old /query endpoint refuses HTTP/2 with 405 and an empty body
    let old = h2()
        .post(format!("{}/query", handle.url()))
        .basic_auth("u", Some("p"))
        .json(&json!({"ksql": "SELECT * FROM PAGEVIEWS EMIT CHANGES LIMIT 0;"}))
        .send();
    let old = timeout(WAIT, old).await.unwrap().unwrap();
    assert_eq!(old.status(), 405);
    assert_eq!(body_text(old).await, "");
}

#[tokio::test]
async fn push_query_limit_and_close_query_frees_slots() {
    let config = SimulatorConfig { max_push_queries: 2, ..Default::default() };
    let (sim, handle) = start(config).await;
    let client = h1();
    let sql = json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;"});
    let mut first = post(&client, &handle, "/query-stream", Some(V1_JSON), sql.clone()).await;
    let second = post(&client, &handle, "/query-stream", None, sql.clone()).await;
    assert_eq!(sim.running_push_queries(), 2);
    let full =
        json!({"@type": "generic_error", "error_code": 40003, "message": "Maximum number of push queries exceeded"});
    expect_error(post(&client, &handle, "/query-stream", None, sql.clone()).await, 400, full).await;
    let mut text = String::new();
    read_lines(&mut first, &mut text, 1).await;
    let (_, id) = strip_id(&text);
    // Over HTTP/1.1 the close arrives on another connection than the query's: 0.29 closes the
    // query, then answers 500.
    let closed = post(&client, &handle, "/close-query", None, json!({"queryId": id})).await;
    assert_eq!(closed.status(), 500);
    assert!(body_text(closed).await.contains("On wrong context or worker"));
    let rest = timeout(WAIT, first.text()).await.unwrap().unwrap();
    assert_eq!(rest, "{\"finalMessage\":\"Query Completed\"}]");
    wait_for(|| sim.running_push_queries() == 1).await;
    drop(second);
    wait_for(|| sim.running_push_queries() == 0).await;
    let again = post(&client, &handle, "/query-stream", None, sql).await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn fault_cut_after_rows_drops_the_connection() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for i in 0..5 {
        view(&sim, 0, "U", "P", i);
    }
    sim.inject_next(Fault::CutAfterRows(3));
    let mut response =
        post(&h1(), &handle, "/query-stream", None, earliest_qs("SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES;")).await;
    let mut received = Vec::new();
    let error = loop {
        match timeout(WAIT, response.chunk()).await.unwrap() {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("body ended cleanly"),
            Err(error) => break error,
        }
    };
    assert!(error.is_body() || error.is_decode() || error.is_request(), "{error:?}");
    let text = String::from_utf8(received).unwrap();
    assert_eq!(text.lines().skip(1).collect::<Vec<_>>(), ["[0]", "[1]", "[2]"]);
    wait_for(|| sim.running_push_queries() == 0).await;
}

#[tokio::test]
async fn fault_cut_after_bytes_on_h1_and_h2() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for i in 0..50 {
        view(&sim, 1, "U", "P", i);
    }
    for client in [h1(), h2()] {
        sim.inject_next(Fault::CutAfterBytes(100));
        let mut response = post(
            &client,
            &handle,
            "/query-stream",
            Some(V1_JSON),
            earliest_qs("SELECT * FROM PAGEVIEWS EMIT CHANGES;"),
        )
        .await;
        let mut received = Vec::new();
        loop {
            match timeout(WAIT, response.chunk()).await.unwrap() {
                Ok(Some(chunk)) => received.extend_from_slice(&chunk),
                Ok(None) => panic!("body ended cleanly"),
                Err(_) => break,
            }
        }
        assert_eq!(received.len(), 100);
        assert!(received.starts_with(b"[{\"header\":{\"queryId\":\"transient_PAGEVIEWS_"));
    }
    wait_for(|| sim.running_push_queries() == 0).await;
}

#[tokio::test]
async fn fault_stall_then_resume() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let mut response =
        post(&h1(), &handle, "/query-stream", None, json!({"sql": "SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES;"}))
            .await;
    let mut text = String::new();
    read_lines(&mut response, &mut text, 1).await;
    assert_eq!(sim.inject(Fault::Stall(Duration::from_millis(400))), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    view(&sim, 0, "U", "P", 1);
    // nothing arrives during the stall; the row arrives after it
    assert!(timeout(Duration::from_millis(200), response.chunk()).await.is_err());
    read_lines(&mut response, &mut text, 2).await;
    assert!(text.ends_with("[1]\n"));
}

#[tokio::test]
async fn fault_in_band_error_in_each_framing() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "U", "P", 1);
    let message = "java.lang.RuntimeException: boom";
    let error = "{\"@type\":\"generic_error\",\"error_code\":50000,\"message\":\"java.lang.RuntimeException: boom\"}";
    for (accept, expected_tail) in [
        (DELIMITED, format!("[1]\n{error}\n")),
        (V1_JSON, format!("{{\"row\":{{\"columns\":[1]}}}},\n{{\"errorMessage\":{error}}},\n]")),
        ("application/json", format!(",[1],{error}]")),
    ] {
        let mut response = post(
            &h2(),
            &handle,
            "/query-stream",
            Some(accept),
            earliest_qs("SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES;"),
        )
        .await;
        let mut text = String::new();
        while !text.contains("[1]") {
            let chunk = timeout(WAIT, response.chunk()).await.unwrap().unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(sim.inject(Fault::Error(message.into())), 1);
        text.push_str(&timeout(WAIT, response.text()).await.unwrap().unwrap());
        assert!(text.ends_with(&expected_tail), "{accept}: {text}");
        wait_for(|| sim.running_push_queries() == 0).await;
    }
}

#[tokio::test]
async fn fault_terminate_ends_like_completion() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let (response, _header) = open_pageviews_push_query(&handle).await;
    let id = sim.query_ids().pop().unwrap();
    assert!(sim.inject_query(&id, Fault::Terminate));
    let rest = timeout(WAIT, response.text()).await.unwrap().unwrap();
    assert_eq!(rest, "{\"finalMessage\":\"Query Completed\"}]");
    let response =
        post(&h1(), &handle, "/query-stream", None, json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;"})).await;
    wait_for(|| sim.running_push_queries() == 1).await;
    sim.inject(Fault::Terminate);
    assert_eq!(body_text(response).await.lines().count(), 1);
}

#[tokio::test]
async fn heartbeat_mode_writes_newlines_while_idle() {
    let config = SimulatorConfig { heartbeat: true, ..Default::default() };
    let (_sim, handle) = start(config).await;
    let mut response =
        post(&h1(), &handle, "/query", Some(V1_JSON), json!({"ksql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;"})).await;
    let mut text = String::new();
    read_lines(&mut response, &mut text, 2).await;
    assert!(text.starts_with("[{\"header\""));
    assert!(text.ends_with("}},\n\n"), "{text:?}");
}

#[tokio::test]
async fn value_types_render_in_rows() {
    let sim = Simulator::new(SimulatorConfig::default());
    sim.create_stream(
        "`Typed`",
        vec![
            Column::new("d", KsqlType::Double),
            Column::new("m", KsqlType::Decimal { precision: 4, scale: 2 }),
            Column::new("ts", KsqlType::Timestamp),
            Column::new("b", KsqlType::Bytes),
            Column::new("mp", KsqlType::Map(Box::new(KsqlType::Integer), Box::new(KsqlType::String))),
        ],
        1,
    )
    .unwrap();
    let handle = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    sim.produce(
        "`Typed`",
        None,
        0,
        vec![
            Value::Double(4.2e-4),
            Value::Decimal { unscaled: 450, scale: 2 },
            Value::Timestamp(1),
            Value::Bytes(vec![0x21]),
            Value::Map(vec![(Value::Integer(1), Value::string("a"))]),
        ],
    )
    .unwrap();
    let body = body_text(
        post(&h1(), &handle, "/query-stream", None, earliest_qs("SELECT * FROM `Typed` EMIT CHANGES LIMIT 1;")).await,
    )
    .await;
    let lines: Vec<&str> = body.lines().collect();
    let meta: Json = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(meta["columnTypes"], json!(["DOUBLE", "DECIMAL(4, 2)", "TIMESTAMP", "BYTES", "MAP<INTEGER, STRING>"]));
    assert!(meta["queryId"].as_str().unwrap().starts_with("transient_Typed_"));
    assert_eq!(lines[1], "[4.2E-4,4.50,\"1970-01-01T00:00:00.001\",\"IQ==\",{\"1\":\"a\"}]");
}

#[tokio::test]
async fn shutdown_cuts_open_queries_abruptly() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let (response, _header) = open_pageviews_push_query(&handle).await;
    timeout(WAIT, handle.shutdown()).await.unwrap();
    // no final message: the body fails instead of ending
    let rest = timeout(WAIT, response.text()).await.unwrap();
    assert!(rest.is_err(), "{rest:?}");
    wait_for(|| sim.running_push_queries() == 0).await;
}

fn pageviews_with_referrer() -> Vec<Column> {
    vec![
        key("USERID", KsqlType::String),
        Column::new("PAGEID", KsqlType::String),
        Column::new("VIEWTIME", KsqlType::Bigint),
        Column::new("referrer", KsqlType::String),
    ]
}

#[tokio::test]
async fn replace_columns_adds_columns_for_new_queries_only() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "OLD", "P1", 1);
    let mut before =
        post(&h1(), &handle, "/query-stream", None, earliest_qs("SELECT * FROM PAGEVIEWS EMIT CHANGES;")).await;
    let mut old_text = String::new();
    read_lines(&mut before, &mut old_text, 2).await;

    sim.replace_columns("pageviews", pageviews_with_referrer()).unwrap();
    let short =
        sim.produce("PAGEVIEWS", Some(1), 1_002, vec![Value::string("X"), Value::string("P"), Value::Bigint(2)]);
    assert!(short.is_err(), "{short:?}");
    sim.produce(
        "PAGEVIEWS",
        Some(1),
        1_002,
        vec![Value::string("NEW"), Value::string("P2"), Value::Bigint(2), Value::string("search")],
    )
    .unwrap();

    // the query opened before keeps its header and its three columns
    read_lines(&mut before, &mut old_text, 3).await;
    let (old_body, _) = strip_id(&old_text);
    assert_eq!(
        old_body.lines().collect::<Vec<_>>(),
        [
            r#"{"queryId":"<ID>","columnNames":["USERID","PAGEID","VIEWTIME"],"columnTypes":["STRING","STRING","BIGINT"]}"#,
            r#"["OLD","P1",1]"#,
            r#"["NEW","P2",2]"#,
        ]
    );

    // a new query gets the new header, pseudo columns first, NULL for the old row
    let mut after =
        post(&h2(), &handle, "/query-stream", None, earliest_qs("SELECT ROWTIME, * FROM PAGEVIEWS EMIT CHANGES;"))
            .await;
    let mut new_text = String::new();
    read_lines(&mut after, &mut new_text, 3).await;
    let (new_body, _) = strip_id(&new_text);
    assert_eq!(
        new_body.lines().collect::<Vec<_>>(),
        [
            r#"{"queryId":"<ID>","columnNames":["ROWTIME","USERID","PAGEID","VIEWTIME","REFERRER"],"columnTypes":["BIGINT","STRING","STRING","BIGINT","STRING"]}"#,
            r#"[1001,"OLD","P1",1,null]"#,
            r#"[1002,"NEW","P2",2,"search"]"#,
        ]
    );
    // SELECT * copies new rows and pads old ones, in StreamedRow too
    let pull = post(&h1(), &handle, "/query", Some(V1_JSON), json!({"ksql": "SELECT * FROM PAGEVIEWS;"})).await;
    let (pull_body, _) = strip_id(&body_text(pull).await);
    assert_eq!(
        pull_body,
        "[{\"header\":{\"queryId\":\"<ID>\",\"schema\":\"`USERID` STRING, `PAGEID` STRING, `VIEWTIME` BIGINT, `REFERRER` STRING\"}},\n\
         {\"row\":{\"columns\":[\"OLD\",\"P1\",1,null]}},\n\
         {\"row\":{\"columns\":[\"NEW\",\"P2\",2,\"search\"]}},\n\
         {\"finalMessage\":\"Query Completed\"}]"
    );

    // terminating the old queries is how a test makes clients reconnect
    assert_eq!(sim.inject(Fault::Terminate), 2);
    assert_eq!(body_text(before).await, "");
    assert_eq!(body_text(after).await, "");
    wait_for(|| sim.running_push_queries() == 0).await;
}

#[tokio::test]
async fn replace_columns_rejects_non_additive_changes() {
    let (sim, _handle) = start(SimulatorConfig::default()).await;
    let mut changed = pageviews_with_referrer();
    changed[1].ty = KsqlType::Integer;
    let mut dropped = pageviews_with_referrer();
    dropped.truncate(2);
    let mut new_key = pageviews_with_referrer();
    new_key[3].role = ColumnRole::Key;
    let mut duplicate = pageviews_with_referrer();
    duplicate[3].name = "pageid".into();
    for columns in [changed, dropped, new_key, duplicate] {
        let error = sim.replace_columns("PAGEVIEWS", columns.clone()).unwrap_err();
        assert!(error.to_string().starts_with("cannot replace the columns of PAGEVIEWS"), "{columns:?}: {error}");
    }
    assert!(sim.replace_columns("NOPE", pageviews_with_referrer()).is_err());
    // the schema is unchanged: produce still takes three values
    view(&sim, 0, "U", "P", 1);
}

const SPQ_PROPS: &str = r#"{"ksql.query.push.v2.enabled":true,"ksql.query.push.v2.continuation.tokens.enabled":true}"#;

fn spq_props() -> Json {
    serde_json::from_str(SPQ_PROPS).unwrap()
}

/// The per-partition offsets inside a continuation token.
fn token_offsets(token: &str) -> Vec<i64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(token).unwrap();
    let range: Json = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(range["v"], 0, "{range}");
    range["e"]["o"].as_array().unwrap().iter().map(|o| o.as_i64().unwrap()).collect()
}

/// Reads chunks until `text` contains `needle`.
async fn read_until(response: &mut reqwest::Response, text: &mut String, needle: &str) {
    while !text.contains(needle) {
        let chunk = timeout(WAIT, response.chunk()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn scalable_push_queries_write_tokens_in_each_framing() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    view(&sim, 0, "BEFORE", "P", 0);
    let sql = "SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES;";
    let client = h1();
    let mut delimited =
        post(&client, &handle, "/query-stream", None, json!({"sql": sql, "properties": spq_props()})).await;
    let mut array =
        post(&h2(), &handle, "/query-stream", Some("application/json"), json!({"sql": sql, "properties": spq_props()}))
            .await;
    // /query coerces property values: strings work there
    let mut streamed = post(
        &client,
        &handle,
        "/query",
        Some(V1_JSON),
        json!({"ksql": sql, "streamsProperties": {
            "ksql.query.push.v2.enabled": "true",
            "ksql.query.push.v2.continuation.tokens.enabled": "true"}}),
    )
    .await;
    // without the flags (or with earliest, or ROWOFFSET) it stays an ordinary push query
    let mut plain = post(
        &client,
        &handle,
        "/query-stream",
        None,
        json!({"sql": sql, "properties": {"ksql.query.push.v2.enabled": true,
            "ksql.query.push.v2.continuation.tokens.enabled": true, "auto.offset.reset": "earliest"}}),
    )
    .await;
    let (mut d, mut a, mut s, mut p) = (String::new(), String::new(), String::new(), String::new());
    read_lines(&mut delimited, &mut d, 1).await;
    read_until(&mut array, &mut a, "}").await;
    read_lines(&mut streamed, &mut s, 1).await;
    read_lines(&mut plain, &mut p, 2).await;
    wait_for(|| sim.running_push_queries() == 4).await;
    sim.produce_batch(
        "PAGEVIEWS",
        [
            (Some(0), 1_001, vec![Value::string("A"), Value::string("P"), Value::Bigint(1)]),
            (Some(1), 1_002, vec![Value::string("B"), Value::string("P"), Value::Bigint(2)]),
            (Some(0), 1_003, vec![Value::string("C"), Value::string("P"), Value::Bigint(3)]),
        ],
    )
    .unwrap();
    read_until(&mut delimited, &mut d, "continuationToken").await;
    read_until(&mut array, &mut a, "continuationToken").await;
    read_until(&mut streamed, &mut s, "continuationToken").await;
    read_lines(&mut plain, &mut p, 5).await;

    let (d_body, d_id) = strip_id(&d);
    assert!(d_id.starts_with("SCALABLE_PUSH_QUERY_"), "{d_id}");
    assert_eq!(d_id.len(), "SCALABLE_PUSH_QUERY_".len() + 36, "{d_id}");
    let lines: Vec<&str> = d_body.lines().collect();
    assert_eq!(lines[1..4], ["[1]", "[2]", "[3]"]);
    let token_line: Json = serde_json::from_str(lines[4]).unwrap();
    let token = token_line["continuationToken"].as_str().unwrap().to_string();
    assert_eq!(token_offsets(&token), [3, 1]);

    let (a_body, a_id) = strip_id(&a);
    assert!(a_id.starts_with("SCALABLE_PUSH_QUERY_") && a_id != d_id);
    assert!(a_body.ends_with(&format!(",[1],[2],[3],{{\"continuationToken\":\"{token}\"}}")), "{a_body}");
    let (s_body, s_id) = strip_id(&s);
    assert!(s_id.starts_with("SCALABLE_PUSH_QUERY_"));
    assert!(
        s_body.ends_with(&format!(
            "{{\"row\":{{\"columns\":[3]}}}},\n{{\"continuationToken\":{{\"continuationToken\":\"{token}\"}}}},\n"
        )),
        "{s_body}"
    );
    let (p_body, p_id) = strip_id(&p);
    assert!(p_id.starts_with("transient_PAGEVIEWS_"), "{p_id}");
    assert!(!p_body.contains("continuationToken"));

    // scalable push queries are not registered for /close-query, the plain one is
    for id in [&d_id, &a_id, &s_id] {
        expect_error(
            post(&client, &handle, "/close-query", None, json!({"queryId": id})).await,
            400,
            json!({"@type": "generic_error", "error_code": 40000,
                "message": format!("No query with id {id}")}),
        )
        .await;
    }
    let closed = post(&client, &handle, "/close-query", None, json!({"queryId": p_id})).await;
    assert_eq!(closed.status(), 500, "another connection than the query's");
    assert_eq!(body_text(plain).await, "");
    assert_eq!(sim.running_push_queries(), 3);

    // a terminated SPQ ends without a completion message
    assert_eq!(sim.inject(Fault::Terminate), 3);
    assert_eq!(body_text(delimited).await, "");
    assert_eq!(body_text(array).await, "]");
    assert_eq!(body_text(streamed).await, "]");
    wait_for(|| sim.running_push_queries() == 0).await;
}

/// Collects the body of a query that gets cut, until the connection drops.
async fn read_until_cut(response: &mut reqwest::Response) -> String {
    let mut received = Vec::new();
    loop {
        match timeout(WAIT, response.chunk()).await.unwrap() {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("body ended cleanly"),
            Err(_) => break,
        }
    }
    String::from_utf8(received).unwrap()
}

/// Row values and tokens of a delimited body, after the metadata line.
fn rows_and_tokens(body: &str) -> (Vec<i64>, Vec<(usize, String)>) {
    let mut rows = Vec::new();
    let mut tokens = Vec::new();
    for line in body.lines().skip(1) {
        let value: Json = serde_json::from_str(line).unwrap();
        match value.get("continuationToken") {
            Some(token) => tokens.push((rows.len(), token.as_str().unwrap().to_string())),
            None => rows.push(value[0].as_i64().unwrap()),
        }
    }
    (rows, tokens)
}

fn batch(range: std::ops::Range<i64>) -> Vec<(Option<u32>, i64, Vec<Value>)> {
    range
        .map(|i| {
            let user = Value::string(format!("U{i}"));
            (None, 1_000 + i, vec![user, Value::string("P"), Value::Bigint(i)])
        })
        .collect()
}

#[tokio::test]
async fn continuation_token_resumes_after_a_cut() {
    let config = SimulatorConfig { push_v2_enabled: true, continuation_tokens_enabled: true, ..Default::default() };
    assert_eq!(config.continuation_token_every_rows, 100);
    let (sim, handle) = start(config).await;
    let sql = "SELECT VIEWTIME FROM PAGEVIEWS EMIT CHANGES;";
    sim.inject_next(Fault::CutAfterRows(150));
    let mut first = post(&h1(), &handle, "/query-stream", None, json!({"sql": sql})).await;
    let mut text = String::new();
    read_lines(&mut first, &mut text, 1).await;
    wait_for(|| sim.running_push_queries() == 1).await;
    sim.produce_batch("PAGEVIEWS", batch(0..250)).unwrap();
    let body = read_until_cut(&mut first).await;
    let (rows, tokens) = rows_and_tokens(&format!("{text}{body}"));
    assert_eq!(rows, (0..150).collect::<Vec<_>>());
    // one token every 100 rows; the cut came before the end-of-batch token
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let (after_rows, token) = tokens[0].clone();
    assert_eq!(after_rows, 100);
    assert_eq!(token_offsets(&token).iter().sum::<i64>(), 100);
    wait_for(|| sim.running_push_queries() == 0).await;

    // rows produced while disconnected are delivered too, nothing before the token again
    let positions = sim.produce_batch("PAGEVIEWS", batch(250..270)).unwrap();
    let mut resumed = post(
        &h2(),
        &handle,
        "/query-stream",
        None,
        json!({"sql": sql, "requestProperties": {
            "request.ksql.query.push.continuation.token": token}}),
    )
    .await;
    assert_eq!(resumed.status(), 200);
    let mut text = String::new();
    // 170 rows, a token after 100 of them and one after the batch
    read_lines(&mut resumed, &mut text, 1 + 170 + 2).await;
    let (rows, tokens) = rows_and_tokens(&text);
    assert_eq!(rows, (100..270).collect::<Vec<_>>());
    assert_eq!(tokens.iter().map(|(at, _)| *at).collect::<Vec<_>>(), [100, 170]);
    let mut ends = vec![0i64; 2];
    for (partition, offset) in positions {
        ends[partition as usize] = ends[partition as usize].max(offset + 1);
    }
    assert_eq!(token_offsets(&tokens[1].1), ends);
    drop(resumed);
    wait_for(|| sim.running_push_queries() == 0).await;
}

#[tokio::test]
async fn bad_continuation_tokens_are_rejected() {
    let config = SimulatorConfig { push_v2_enabled: true, continuation_tokens_enabled: true, ..Default::default() };
    let (sim, handle) = start(config).await;
    view(&sim, 0, "U", "P", 1);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cases = [
        ("not a token!".to_string(), "not base64"),
        (b64("{}"), "not a JSON offset range"),
        (b64(r#"{"s":null,"e":{"o":[0,0]},"v":1}"#), "unsupported version 1"),
        (b64(r#"{"s":null,"e":{"o":[0]},"v":0}"#), "has 1 partitions, the source has 2"),
        (b64(r#"{"s":null,"e":{"o":[5,0]},"v":0}"#), "is ahead of the source"),
    ];
    for (token, reason) in cases {
        let response = post(
            &h1(),
            &handle,
            "/query-stream",
            None,
            json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;",
                "requestProperties": {"request.ksql.query.push.continuation.token": token}}),
        )
        .await;
        assert_eq!(response.status(), 400);
        let body: Json = serde_json::from_str(&body_text(response).await).unwrap();
        assert_eq!(body["error_code"], 40000);
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("Invalid continuation token"), "{message}");
        assert!(message.contains(reason), "{message}");
    }
    assert_eq!(sim.running_push_queries(), 0);
}

/// Reads a chunked HTTP/1.1 response from `stream` until `chunks` body chunks arrived.
async fn read_chunks(stream: &mut tokio::net::TcpStream, chunks: usize) -> Vec<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let parsed = loop {
        let read = timeout(WAIT, stream.read(&mut buf)).await.expect("response within the wait").unwrap();
        assert!(read > 0, "connection closed early");
        raw.extend_from_slice(&buf[..read]);
        let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let mut rest = &raw[head_end + 4..];
        let mut found = Vec::new();
        while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
            if rest.len() < line_end + 2 + size + 2 {
                break;
            }
            found.push(rest[line_end + 2..line_end + 2 + size].to_vec());
            rest = &rest[line_end + 2 + size + 2..];
        }
        if found.len() >= chunks {
            break found;
        }
    };
    parsed
}

#[tokio::test]
async fn push_query_rows_are_written_one_per_http1_chunk_as_ksqldb_does() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for i in 0..50 {
        view(&sim, (i % 2) as u32, &format!("u{i}"), "p", 1_700_000_000_000 + i);
    }
    let mut stream = tokio::net::TcpStream::connect(handle.local_addr()).await.unwrap();
    let body = r#"{"sql":"SELECT * FROM PAGEVIEWS EMIT CHANGES;","properties":{"auto.offset.reset":"earliest"}}"#;
    let request = format!(
        "POST /query-stream HTTP/1.1\r\nHost: x\r\nAccept: {DELIMITED}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The header, then 50 history rows and 10 live ones: each in a chunk of its own.
    let live = {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 50..60 {
                view(&sim, 0, &format!("u{i}"), "p", 1_700_000_000_000 + i);
            }
        })
    };
    let chunks = read_chunks(&mut stream, 61).await;
    live.await.unwrap();
    assert!(String::from_utf8_lossy(&chunks[0]).contains("queryId"));
    for chunk in &chunks[1..61] {
        let text = String::from_utf8(chunk.clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one row per chunk: {text:?}");
        assert!(text.starts_with('[') && text.ends_with("]\n"), "{text:?}");
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn push_query_rows_are_one_per_http2_data_frame() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for i in 0..40 {
        view(&sim, 0, &format!("u{i}"), "p", 1_700_000_000_000 + i);
    }
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = client
        .post(format!("{}/query-stream", handle.url()))
        .header("Accept", DELIMITED)
        .json(&json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;", "properties": {"auto.offset.reset": "earliest"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut body = response.bytes_stream();
    let mut frames = Vec::new();
    while frames.len() < 41 {
        let frame = timeout(WAIT, futures::StreamExt::next(&mut body)).await.unwrap().unwrap().unwrap();
        frames.push(frame);
    }
    for frame in &frames[1..] {
        let text = std::str::from_utf8(frame).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one row per DATA frame: {text:?}");
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn close_query_on_the_query_s_own_http2_connection_answers_200_and_other_endpoints_exist() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    // One HTTP/2 connection carries both the query and the close.
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = client
        .post(format!("{}/query-stream", handle.url()))
        .header("Accept", DELIMITED)
        .json(&json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES;"}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let header = timeout(WAIT, futures::StreamExt::next(&mut body)).await.unwrap().unwrap().unwrap();
    let header: Json = serde_json::from_slice(&header).unwrap();
    let id = header["queryId"].as_str().unwrap().to_string();
    let closed =
        client.post(format!("{}/close-query", handle.url())).json(&json!({"queryId": id})).send().await.unwrap();
    assert_eq!(closed.status(), 200);
    wait_for(|| sim.running_push_queries() == 0).await;

    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = plain.get(format!("{}/", handle.url())).send().await.unwrap();
    assert_eq!(root.status(), 307);
    assert_eq!(root.headers()["location"], "/info");
    let health: Json = plain.get(format!("{}/healthcheck", handle.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["isHealthy"], true);
    let status = plain.get(format!("{}/status", handle.url())).send().await.unwrap();
    assert_eq!(status.status(), 200);
    sim.set_ready(false);
    assert_eq!(plain.get(format!("{}/healthcheck", handle.url())).send().await.unwrap().status(), 503);
    handle.shutdown().await;
}

#[tokio::test]
async fn the_ksql_endpoint_lists_and_describes_sources_in_ksqldb_s_shapes() {
    let (_sim, handle) = start(SimulatorConfig::default()).await;
    let client = reqwest::Client::new();
    let ksql = |text: &str| {
        client
            .post(format!("{}/ksql", handle.url()))
            .header("Accept", "application/vnd.ksql.v1+json")
            .json(&json!({"ksql": text, "streamsProperties": {}}))
            .send()
    };
    let response = ksql("SHOW STREAMS; LIST TABLES;").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/vnd.ksql.v1+json");
    let entities: Json = response.json().await.unwrap();
    assert_eq!(entities[0]["@type"], "streams");
    assert_eq!(entities[0]["statementText"], "SHOW STREAMS;");
    assert_eq!(entities[0]["streams"][0]["name"], "PAGEVIEWS");
    assert_eq!(entities[0]["streams"][0]["type"], "STREAM");
    assert_eq!(entities[1]["@type"], "tables");
    assert_eq!(entities[1]["tables"][0]["name"], "USERS");

    let described: Json = ksql("DESCRIBE users EXTENDED;").await.unwrap().json().await.unwrap();
    let description = &described[0]["sourceDescription"];
    assert_eq!(described[0]["@type"], "sourceDescription");
    assert_eq!(description["name"], "USERS");
    assert_eq!(description["type"], "TABLE");
    assert_eq!(description["extended"], true);
    assert_eq!(description["partitions"], 2);
    assert_eq!(description["fields"][0]["name"], "ID");
    assert_eq!(description["fields"][0]["type"], "KEY", "key columns are marked");
    assert_eq!(description["fields"][2]["schema"]["type"], "INTEGER");
    assert!(description["fields"][1].get("type").is_none());

    for statement in ["SHOW QUERIES;", "SHOW PROPERTIES;", "SHOW VARIABLES;"] {
        let entities: Json = ksql(statement).await.unwrap().json().await.unwrap();
        assert!(entities[0]["@type"].is_string() && entities[0]["warnings"].is_array(), "{statement}: {entities}");
    }

    let missing = ksql("DESCRIBE EXTENDED nope;").await.unwrap();
    assert_eq!(missing.status(), 400);
    let error: Json = missing.json().await.unwrap();
    assert_eq!(
        error,
        json!({"@type": "statement_error", "error_code": 40001,
            "message": "Could not find STREAM/TABLE 'NOPE' in the Metastore",
            "statementText": "DESCRIBE EXTENDED nope;", "entities": []})
    );
    let empty = ksql("").await.unwrap();
    assert_eq!(empty.status(), 400);
    handle.shutdown().await;
}

/// 500 rows of history, then 1,500 live rows at full speed on a task while a third-party client
/// reads: the producer, to await once the client is done.
fn history_then_live_pageviews(sim: &Simulator) -> tokio::task::JoinHandle<()> {
    for i in 0..500 {
        view(sim, (i % 2) as u32, &format!("u{i}"), &format!("p{i}"), i);
    }
    let sim = sim.clone();
    tokio::spawn(async move {
        for i in 500..2000 {
            view(&sim, (i % 2) as u32, &format!("u{i}"), &format!("p{i}"), i);
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
}

/// Runs tests/clients/ksql_python_ng.py against `handle`, reading `rows` rows of PAGEVIEWS.
async fn ksql_python_ng(handle: &SimulatorHandle, rows: usize) -> Json {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ksql_python_ng.py");
    let output = timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(support::venv().join("bin/python"))
            .arg(&script)
            .args([handle.url().trim_end_matches('/'), "PAGEVIEWS", &rows.to_string()])
            .output(),
    )
    .await
    .expect("the client finishes within 60 s")
    .unwrap();
    assert!(output.status.success(), "client failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A third-party client from PyPI (ksql-python-ng, installed by the test command) lists, describes
/// and reads a push query from the simulator while rows keep arriving, one row per chunk. Its
/// `close_query` opens a new connection, so it meets what ksqlDB 0.29 does there: the query is
/// closed and the answer is 500, on which this client raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksql_python_ng_reads_the_simulator_as_it_reads_ksqldb() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    let producer = history_then_live_pageviews(&sim);
    let result = ksql_python_ng(&handle, 2000).await;
    producer.await.unwrap();
    assert!(result["streams"].as_array().unwrap().contains(&json!("PAGEVIEWS")), "{result}");
    assert_eq!(result["fields"][0], "USERID");
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2000);
    let mut pages: Vec<&str> = rows.iter().map(|row| row["PAGEID"].as_str().unwrap()).collect();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len(), 2000, "every row once, parsed with its columns");
    let close = &result["close"];
    assert_eq!(close["status"], "500", "{close}");
    assert!(close["query_id"].as_str().unwrap().starts_with("transient_PAGEVIEWS_"), "{close}");
    wait_for(|| !sim.query_ids().iter().any(|id| close["query_id"] == id.as_str())).await;
    handle.shutdown().await;

    // with the 0.29 behaviour turned off, the same call answers 200 and the client returns True
    let lenient = SimulatorConfig { close_query_wrong_context: false, ..SimulatorConfig::default() };
    let (sim, handle) = start(lenient).await;
    let producer = history_then_live_pageviews(&sim);
    let result = ksql_python_ng(&handle, 10).await;
    producer.await.unwrap();
    assert_eq!(result["rows"].as_array().unwrap().len(), 10);
    assert_eq!(result["close"]["status"], "200", "{}", result["close"]);
    assert_eq!(sim.running_push_queries(), 0);
    handle.shutdown().await;
}

/// The npm ksqldb-client (installed by the test command) lists, describes and streams a push
/// query from the simulator while rows keep arriving: no parse error, every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_npm_ksqldb_client_reads_the_simulator_as_it_reads_ksqldb() {
    let (sim, handle) = start(SimulatorConfig::default()).await;
    for (i, name) in ["Ann", "Bob", "Cid", "Dee"].iter().enumerate() {
        sim.produce(
            "users",
            None,
            i as i64,
            vec![Value::string(name.to_lowercase()), Value::string(*name), Value::Integer(i as i32)],
        )
        .unwrap();
    }
    sim.delete("users", vec![Value::string("bob")], 9).unwrap();
    let producer = history_then_live_pageviews(&sim);
    let venv = support::venv();
    let modules = venv.join("node/node_modules");
    assert!(modules.join("ksqldb-client").is_dir(), "no ksqldb-client in {}: run scripts/test.sh", modules.display());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ksqldb_client.js");
    let output = timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(&script)
            .args([handle.url().trim_end_matches('/'), "PAGEVIEWS", "2000", "USERS"])
            .env("NODE_PATH", &modules)
            .output(),
    )
    .await
    .expect("the client finishes within 60 s")
    .unwrap();
    producer.await.unwrap();
    assert!(output.status.success(), "client failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let result: Json = serde_json::from_slice(&output.stdout).unwrap();
    assert!(result["listed"].to_string().contains("PAGEVIEWS"), "{}", result["listed"]);
    assert!(result["described"].to_string().contains("USERID"), "{}", result["described"]);
    let rows = result["rows"].as_array().unwrap();
    assert!(rows.len() >= 2000, "{} rows", rows.len());
    let mut pages: Vec<String> =
        rows.iter().map(|row| row["PAGEID"].as_str().map(str::to_string).unwrap_or_else(|| row.to_string())).collect();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len(), rows.len(), "every row once, parsed: {:?}", &rows[..3]);
    // the pull query on the table: the live keys with their values, the deleted one gone
    let table = &result["table"];
    assert_eq!(table["metadata"]["columnNames"], json!(["ID", "NAME", "SCORE"]), "{table}");
    let mut users: Vec<(String, i64)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["NAME"].as_str().unwrap().to_string(), row["SCORE"].as_i64().unwrap()))
        .collect();
    users.sort();
    assert_eq!(users, [("Ann".to_string(), 0), ("Cid".to_string(), 2), ("Dee".to_string(), 3)]);
    handle.shutdown().await;
}

#[tokio::test]
async fn error_bodies_are_chunked_on_http1_as_ksqldb_writes_them() {
    let (_sim, handle) = start(SimulatorConfig::default()).await;
    let body = r#"{"sql":"SELECT * FROM NOPE EMIT CHANGES;"}"#;
    let request = format!(
        "POST /query-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: {DELIMITED}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(handle.local_addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap().to_ascii_lowercase();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{head}");
    assert!(body.contains("does not exist"), "{body}");
    handle.shutdown().await;
}

#[tokio::test]
async fn accept_quality_values_choose_the_framing() {
    let (_sim, handle) = start(SimulatorConfig::default()).await;
    let client = reqwest::Client::new();
    let content_type = |accept: &'static str| {
        let request = client
            .post(format!("{}/query-stream", handle.url()))
            .header("Accept", accept)
            .json(&json!({"sql": "SELECT * FROM PAGEVIEWS EMIT CHANGES LIMIT 0;"}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type =
                response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            (status, content_type)
        }
    };
    let (status, chosen) = content_type("application/json;q=0.5, application/vnd.ksql.v1+json;q=0.9").await;
    assert_eq!((status, chosen.as_str()), (200, V1_JSON));
    let (_, chosen) = content_type("application/vnd.ksql.v1+json;q=0.1, application/vnd.ksqlapi.delimited.v1").await;
    assert_eq!(chosen, DELIMITED);
    let (status, _) = content_type("application/json;q=0, text/html").await;
    assert_eq!(status, 406, "q=0 refuses the only supported type");
    handle.shutdown().await;
}
