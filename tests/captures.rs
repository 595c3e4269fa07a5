//! Conformance: every recorded ksqlDB response in the shared captures directory decodes
//! (frames → events → Arrow rows), and the two MALFORMED docs examples are rejected cleanly.
//!
//! The directory is `$KSQL_LAKE_CAPTURES`, or `../shared/ksqldb-captures` next to the crate.
//! A missing directory is a failure, not a skip.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ksql_lake::ksqldb::{Event, FrameDecoder, FrameError, Framing, Header, ServerError, ServerInfo};
use ksql_lake::schema::RowDecoder;

fn captures_dir() -> PathBuf {
    match std::env::var_os("KSQL_LAKE_CAPTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/ksqldb-captures"),
    }
}

/// Rows that the row decoder must reject because the capture contradicts itself: (file name
/// prefix, column named in the error, why).
const KNOWN_REJECTIONS: &[(&str, &str, &str)] = &[
    (
        "dotnet-client-fixture_query-stream-delimited_push_decimal-double",
        "ACCOUNTBALANCE",
        "hand-edited fixture: 9999999999999999.1234 has 20 digits, the column is DECIMAL(16, 4)",
    ),
    (
        "ksql-rqtt-expect_query-v1_pull-queries-with-headers.jsonl line 5",
        "HEADER",
        "the expectation lists HEADER before TEXT in the schema but after it in the values",
    ),
];

/// What one response decoded to.
#[derive(Debug, Default)]
struct Decoded {
    events: Vec<Event>,
    frame_errors: Vec<FrameError>,
}

/// Decodes `body` in chunks of `chunk` bytes (to exercise the incremental path too).
fn decode(framing: Framing, body: &[u8], chunk: usize) -> Decoded {
    let mut decoder = FrameDecoder::new(framing);
    let mut decoded = Decoded::default();
    let drain = |decoder: &mut FrameDecoder, finish: bool, decoded: &mut Decoded| {
        for _ in 0..1_000_000 {
            let result = if finish { decoder.finish() } else { decoder.next_event() };
            match result {
                Ok(Some(event)) => decoded.events.push(event),
                Ok(None) => return,
                Err(error) => {
                    let repeated = decoded.frame_errors.last() == Some(&error);
                    decoded.frame_errors.push(error);
                    if repeated {
                        return;
                    }
                }
            }
        }
        panic!("decoder did not settle");
    };
    for piece in body.chunks(chunk.max(1)) {
        decoder.push(Bytes::copy_from_slice(piece));
        drain(&mut decoder, false, &mut decoded);
    }
    drain(&mut decoder, true, &mut decoded);
    decoded
}

/// Per-file tallies, checked against counts taken independently from the raw text.
#[derive(Debug, Default)]
struct Tally {
    responses: usize,
    headers: usize,
    rows: usize,
    protobuf_rows: usize,
    errors: usize,
}

struct Checker {
    failures: Vec<String>,
    /// Rows that reached Arrow through [`RowDecoder`].
    total_rows: usize,
    /// Rows counted from the raw captures, independently of the decoder.
    expected_rows: usize,
    /// Rows rejected as listed in [`KNOWN_REJECTIONS`], by entry.
    known_rejected: Vec<usize>,
}

impl Checker {
    fn fail(&mut self, file: &str, message: String) {
        self.failures.push(format!("{file}: {message}"));
    }

    /// Checks one well-formed response: the same events whatever the chunking, a header
    /// first, and every row accepted by the row decoder built from that header.
    fn response(&mut self, file: &str, framing: Framing, body: &[u8], tally: &mut Tally) {
        let decoded = decode(framing, body, body.len());
        for chunk in [1, 7, 64] {
            let split = decode(framing, body, chunk);
            if split.events != decoded.events || split.frame_errors != decoded.frame_errors {
                self.fail(file, format!("chunks of {chunk} bytes decode differently"));
            }
        }
        for error in &decoded.frame_errors {
            self.fail(file, format!("frame error: {error}"));
        }
        tally.responses += 1;
        let mut rows: Option<RowDecoder> = None;
        for (index, event) in decoded.events.iter().enumerate() {
            match event {
                Event::Header(Header { columns, .. }) => {
                    if index != 0 {
                        self.fail(file, format!("header at event {index}"));
                    }
                    tally.headers += 1;
                    rows = Some(RowDecoder::new(columns));
                }
                Event::Row { values, .. } => {
                    tally.rows += 1;
                    let Some(decoder) = rows.as_mut() else {
                        self.fail(file, "row before the header".to_string());
                        continue;
                    };
                    if let Err(error) = decoder.append(values) {
                        let known = KNOWN_REJECTIONS
                            .iter()
                            .position(|(prefix, column, _)| file.starts_with(prefix) && error.column == *column);
                        match known {
                            Some(entry) => self.known_rejected[entry] += 1,
                            None => self.fail(file, format!("row {index} rejected: {error}")),
                        }
                    }
                }
                Event::ProtobufRow(_) => tally.protobuf_rows += 1,
                Event::Error(_) => tally.errors += 1,
                Event::FinalMessage(_) | Event::ContinuationToken(_) | Event::ConsistencyToken(_) => {}
            }
        }
        if let Some(mut decoder) = rows {
            let batch = decoder.finish();
            self.total_rows += batch.num_rows();
        }
    }
}

/// Row lines of a capture, counted without the decoder: StreamedRow `{"row":` objects, or
/// delimited lines that start with `[`.
fn count_rows_in_text(framing: Framing, body: &str) -> (usize, usize) {
    match framing {
        Framing::StreamedRow => {
            let protobuf = body.matches("\"protobufBytes\"").count();
            (body.matches("{\"row\":").count() - protobuf, protobuf)
        }
        Framing::Delimited => (body.lines().filter(|line| line.starts_with('[')).count(), 0),
        Framing::JsonArray => {
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            let elements = value.as_array().unwrap();
            (elements.iter().filter(|element| element.is_array()).count(), 0)
        }
    }
}

fn framing_for(name: &str) -> Option<Framing> {
    if name.contains("query-stream-delimited") {
        Some(Framing::Delimited)
    } else if name.contains("query-stream-json") {
        Some(Framing::JsonArray)
    } else if name.contains("query-v1") || name.contains("streamedrow") {
        Some(Framing::StreamedRow)
    } else {
        None
    }
}

#[test]
fn every_capture_decodes() {
    let dir = captures_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("captures directory {} unreadable: {error}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "README.md")
        .collect();
    names.sort();
    assert!(names.len() >= 20, "only {} captures in {}", names.len(), dir.display());

    let mut checker = Checker {
        failures: Vec::new(),
        total_rows: 0,
        expected_rows: 0,
        known_rejected: vec![0; KNOWN_REJECTIONS.len()],
    };
    let mut malformed = 0;
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let mut tally = Tally::default();
        if name.contains("MALFORMED") {
            malformed += 1;
            let decoded = decode(Framing::StreamedRow, text.as_bytes(), text.len());
            if decoded.frame_errors.is_empty() {
                checker.fail(name, "malformed example gave no frame error".to_string());
            }
            if decoded.events.iter().any(|event| matches!(event, Event::Header(_))) {
                checker.fail(name, "the broken header line was accepted".to_string());
            }
            continue;
        }
        if name.starts_with("ksql-python-vcr_") {
            check_cassette(&mut checker, name, &text);
            continue;
        }
        if name.ends_with(".jsonl") && name.contains("streamedrow-json-objects") {
            check_standalone_objects(&mut checker, name, &text);
            continue;
        }
        if name.ends_with(".jsonl") {
            let (expected_rows, expected_responses) = check_rqtt(&mut checker, name, &text, &mut tally);
            checker.expected_rows += expected_rows;
            if tally.rows != expected_rows || tally.responses != expected_responses || expected_rows == 0 {
                checker
                    .fail(name, format!("{tally:?}, expected {expected_rows} rows in {expected_responses} responses"));
            }
            continue;
        }
        if let Some(framing) = framing_for(name) {
            checker.response(name, framing, text.as_bytes(), &mut tally);
            let (rows, protobuf_rows) = count_rows_in_text(framing, &text);
            checker.expected_rows += rows;
            if tally.rows != rows || tally.protobuf_rows != protobuf_rows || tally.headers != 1 {
                checker.fail(name, format!("{tally:?}, expected {rows} rows, {protobuf_rows} protobuf rows"));
            }
            continue;
        }
        if name.ends_with(".json") {
            match serde_json::from_str::<ServerError>(&text) {
                Ok(error) if !error.message.is_empty() && error.error_code >= 40000 => {}
                other => checker.fail(name, format!("not a ksqlDB error body: {other:?}")),
            }
            continue;
        }
        checker.fail(name, "no rule for this capture".to_string());
    }
    assert_eq!(malformed, 2, "expected the two MALFORMED docs examples");
    assert!(checker.failures.is_empty(), "{} failures:\n{}", checker.failures.len(), checker.failures.join("\n"));
    assert!(checker.expected_rows > 100, "only {} rows in the captures", checker.expected_rows);
    for (entry, (prefix, _, why)) in KNOWN_REJECTIONS.iter().enumerate() {
        assert!(checker.known_rejected[entry] > 0, "{prefix}: expected a rejection ({why})");
    }
    let rejected: usize = checker.known_rejected.iter().sum();
    assert_eq!(checker.total_rows + rejected, checker.expected_rows, "rows that reached Arrow");
}

/// RQTT expectations: each test's `expected_query_response` lists responses, each a list of
/// StreamedRow objects; the body is rebuilt as the server writes it. Returns the expected row
/// and response counts.
fn check_rqtt(checker: &mut Checker, name: &str, text: &str, tally: &mut Tally) -> (usize, usize) {
    let mut expected_rows = 0;
    let mut expected_responses = 0;
    for (line_number, line) in text.lines().enumerate() {
        let test: serde_json::Value = serde_json::from_str(line).unwrap();
        let responses = test["expected_query_response"].as_array().unwrap();
        for response in responses {
            let objects = response.as_array().unwrap();
            expected_rows += objects.iter().filter(|object| object.get("row").is_some()).count();
            expected_responses += 1;
            let joined: Vec<String> = objects.iter().map(|object| serde_json::to_string(object).unwrap()).collect();
            let body = format!("[{}]", joined.join(",\n"));
            let label = format!("{name} line {}", line_number + 1);
            checker.response(&label, Framing::StreamedRow, body.as_bytes(), tally);
        }
    }
    (expected_rows, expected_responses)
}

/// StreamedRowTest's objects: one per line, each decoded alone to exactly one event of the
/// kind its key names.
fn check_standalone_objects(checker: &mut Checker, name: &str, text: &str) {
    let mut lines = 0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        lines += 1;
        let object: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = object.as_object().unwrap().keys().next().unwrap().clone();
        let decoded = decode(Framing::StreamedRow, line.as_bytes(), 5);
        let kind_matches = match (key.as_str(), decoded.events.as_slice()) {
            ("header", [Event::Header(header)]) => !header.columns.is_empty(),
            ("row", [Event::Row { values, tombstone }]) => {
                values.starts_with(b"[") && *tombstone == (object["row"]["tombstone"] == true)
            }
            ("errorMessage", [Event::Error(error)]) => error.error_code == 1234,
            ("finalMessage", [Event::FinalMessage(message)]) => !message.is_empty(),
            ("consistencyToken", [Event::ConsistencyToken(token)]) => !token.is_empty(),
            _ => false,
        };
        if !kind_matches || !decoded.frame_errors.is_empty() {
            checker.fail(name, format!("{line} decoded to {decoded:?}"));
        }
    }
    if lines < 9 {
        checker.fail(name, format!("only {lines} objects"));
    }
}

/// VCR cassettes: the recorded `response.body` is an error (status ≥ 400) or the /info body.
fn check_cassette(checker: &mut Checker, name: &str, text: &str) {
    let cassette: serde_json::Value = serde_json::from_str(text).unwrap();
    let status = cassette["response"]["status"]["code"].as_u64().unwrap();
    let body = cassette["response"]["body"].as_str().unwrap();
    if status >= 400 {
        match serde_json::from_str::<ServerError>(body) {
            Ok(error) if error.error_code as u64 / 100 == status => {}
            other => checker.fail(name, format!("status {status}: {other:?}")),
        }
    } else {
        match ServerInfo::from_body(body.as_bytes()) {
            Ok(info)
                if !info.version.is_empty() && !info.kafka_cluster_id.is_empty() && !info.service_id.is_empty() => {}
            Ok(_) => checker.fail(name, "empty /info fields".to_string()),
            Err(error) => checker.fail(name, format!("not an /info body: {error}")),
        }
    }
}
