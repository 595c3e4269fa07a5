use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::schema::{Column, ColumnRole, KsqlType};

type Outcome = Result<Event, FrameError>;

/// Decodes `chunks` pushed one by one, draining after each, then finishing. Line framings
/// keep going after an error (a bad line is skipped); the JSON array framing stops after a
/// structural error.
fn decode_chunks(framing: Framing, chunks: &[Bytes]) -> Vec<Outcome> {
    let mut decoder = FrameDecoder::new(framing);
    let mut outcomes = Vec::new();
    for chunk in chunks {
        decoder.push(chunk.clone());
        if drain(&mut decoder, &mut outcomes, false) {
            return outcomes;
        }
    }
    drain(&mut decoder, &mut outcomes, true);
    outcomes
}

/// Returns true when decoding must stop (a final JSON array error).
fn drain(decoder: &mut FrameDecoder, outcomes: &mut Vec<Outcome>, finish: bool) -> bool {
    for _ in 0..100_000 {
        let result = if finish { decoder.finish() } else { decoder.next_event() };
        match result {
            Ok(Some(event)) => outcomes.push(Ok(event)),
            Ok(None) => return false,
            Err(error) => {
                outcomes.push(Err(error));
                if decoder.failure.is_some() {
                    return true;
                }
            }
        }
    }
    panic!("decoder did not settle");
}

fn decode(framing: Framing, body: &str) -> Vec<Outcome> {
    decode_chunks(framing, &[Bytes::copy_from_slice(body.as_bytes())])
}

fn events(framing: Framing, body: &str) -> Vec<Event> {
    decode(framing, body).into_iter().map(|outcome| outcome.unwrap()).collect()
}

fn row(values: &str) -> Event {
    Event::Row { values: Bytes::copy_from_slice(values.as_bytes()), tombstone: false }
}

fn tombstone(values: &str) -> Event {
    Event::Row { values: Bytes::copy_from_slice(values.as_bytes()), tombstone: true }
}

fn header(query_id: Option<&str>, columns: &[(&str, KsqlType)]) -> Event {
    Event::Header(Header {
        query_id: query_id.map(str::to_string),
        columns: columns.iter().map(|(name, ty)| Column::new(*name, ty.clone())).collect(),
    })
}

fn split_every_way(framing: Framing, body: &[u8]) -> Vec<Outcome> {
    let whole = decode_chunks(framing, &[Bytes::copy_from_slice(body)]);
    for split in 1..body.len() {
        let chunks = [Bytes::copy_from_slice(&body[..split]), Bytes::copy_from_slice(&body[split..])];
        assert_eq!(decode_chunks(framing, &chunks), whole, "split at {split}");
    }
    let bytewise: Vec<Bytes> = body.iter().map(|byte| Bytes::copy_from_slice(&[*byte])).collect();
    assert_eq!(decode_chunks(framing, &bytewise), whole, "one byte per chunk");
    whole
}

#[test]
fn content_types_choose_the_framing() {
    let cases = [
        ("application/vnd.ksqlapi.delimited.v1", Some(Framing::Delimited)),
        ("application/vnd.ksqlapi.delimited.v1; charset=utf-8", Some(Framing::Delimited)),
        ("application/vnd.ksql.v1+json", Some(Framing::StreamedRow)),
        ("Application/Vnd.Ksql.V1+Json;charset=UTF-8", Some(Framing::StreamedRow)),
        ("application/json", Some(Framing::JsonArray)),
        (" application/json ; charset=utf-8", Some(Framing::JsonArray)),
        ("text/plain", None),
        ("", None),
    ];
    for (content_type, expected) in cases {
        assert_eq!(Framing::from_content_type(content_type), expected, "{content_type}");
    }
}

#[test]
fn delimited_header_rows_and_tokens() {
    let body = concat!(
        r#"{"queryId":"transient_X_1","columnNames":["ID","NAME"],"columnTypes":["INTEGER","STRING"]}"#,
        "\n[1,\"a\"]\n",
        "[2,\"b]\\\"\"]\n",
        "{\"continuationToken\":\"eyJzIjpudWxsfQ==\"}\n",
        "{\"consistencyToken\":\"e30=\"}\n",
    );
    assert_eq!(
        events(Framing::Delimited, body),
        vec![
            header(Some("transient_X_1"), &[("ID", KsqlType::Integer), ("NAME", KsqlType::String)]),
            row(r#"[1,"a"]"#),
            row(r#"[2,"b]\""]"#),
            Event::ContinuationToken("eyJzIjpudWxsfQ==".into()),
            Event::ConsistencyToken("e30=".into()),
        ]
    );
}

#[test]
fn delimited_null_query_id_crlf_and_missing_final_newline() {
    let body = "{\"queryId\":null,\"columnNames\":[\"C\"],\"columnTypes\":[\"BIGINT\"]}\r\n[0]\r\n\r\n[1]";
    let outcomes = split_every_way(Framing::Delimited, body.as_bytes());
    let decoded: Vec<Event> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(decoded, vec![header(None, &[("C", KsqlType::Bigint)]), row("[0]"), row("[1]")]);
}

#[test]
fn delimited_error_object_in_band() {
    let body = concat!(
        r#"{"queryId":"q","columnNames":["A"],"columnTypes":["STRING"]}"#,
        "\n[\"x\"]\n",
        r#"{"@type":"generic_error","error_code":50000,"message":"java.lang.RuntimeException: Boom"}"#,
        "\n"
    );
    let decoded = events(Framing::Delimited, body);
    assert_eq!(
        decoded[2],
        Event::Error(ServerError {
            kind: Some("generic_error".into()),
            error_code: 50000,
            message: "java.lang.RuntimeException: Boom".into(),
            statement_text: None,
        })
    );
}

#[test]
fn delimited_bad_line_is_reported_with_its_offset_and_skipped() {
    let body = "{\"queryId\":\"q\",\"columnNames\":[\"A\"],\"columnTypes\":[\"BIGINT\"]}\n[1]\n{oops\n[2\n[3]\n";
    let outcomes = split_every_way(Framing::Delimited, body.as_bytes());
    assert_eq!(outcomes.len(), 5);
    let error = outcomes[2].clone().unwrap_err();
    assert_eq!(error.offset, body.find("{oops").unwrap() as u64);
    assert_eq!(error.snippet, "{oops");
    let error = outcomes[3].clone().unwrap_err();
    assert_eq!(error.offset, body.find("[2\n").unwrap() as u64);
    assert_eq!(outcomes[4], Ok(row("[3]")));
}

#[test]
fn delimited_rows_are_sliced_without_copying() {
    let body = Bytes::from_static(b"[1,2]\n[3,4]\n[5,");
    let mut decoder = FrameDecoder::new(Framing::Delimited);
    decoder.push(body.clone());
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    for _ in 0..2 {
        let Some(Event::Row { values, .. }) = decoder.next_event().unwrap() else {
            panic!("expected a row");
        };
        assert!(range.contains(&(values.as_ptr() as usize)));
    }
    assert_eq!(decoder.next_event().unwrap(), None);
    decoder.push(Bytes::from_static(b"6]\n"));
    assert_eq!(decoder.next_event().unwrap(), Some(row("[5,6]")));
    assert_eq!(decoder.finish().unwrap(), None);
}

#[test]
fn streamed_row_push_query_with_limit() {
    let body = concat!(
        "[{\"header\":{\"queryId\":\"transient_PV_1\",\"schema\":\"`USERID` STRING, `VIEWTIME` BIGINT\"}},\n",
        "{\"row\":{\"columns\":[\"USER_1\",1]}},\n",
        "{\"row\":{\"columns\":[null],\"tombstone\":true}},\n",
        "{\"finalMessage\":\"Limit Reached\"}]"
    );
    assert_eq!(
        split_every_way(Framing::StreamedRow, body.as_bytes()),
        vec![
            Ok(header(Some("transient_PV_1"), &[("USERID", KsqlType::String), ("VIEWTIME", KsqlType::Bigint)])),
            Ok(row(r#"["USER_1",1]"#)),
            Ok(tombstone("[null]")),
            Ok(Event::FinalMessage("Limit Reached".into())),
        ]
    );
}

#[test]
fn streamed_row_old_writer_heartbeats_and_unclosed_error() {
    let body = concat!(
        "[{\"header\":{\"queryId\":\"q\",\"schema\":\"`K` STRING KEY, `V` INTEGER\"}},\n",
        "\n\n",
        "{\"row\":{\"columns\":[\"k\",1]}},\n",
        "\n",
        "\n{\"errorMessage\":{\"@type\":\"generic_error\",\"error_code\":50000,\"message\":\"boom\"}},\n",
    );
    let decoded: Vec<Event> =
        split_every_way(Framing::StreamedRow, body.as_bytes()).into_iter().map(Result::unwrap).collect();
    assert_eq!(decoded.len(), 3);
    let Event::Header(header) = &decoded[0] else { panic!("expected a header") };
    assert_eq!(header.columns[0].role, ColumnRole::Key);
    assert_eq!(decoded[1], row(r#"["k",1]"#));
    assert!(matches!(&decoded[2], Event::Error(error) if error.error_code == 50000));
}

#[test]
fn streamed_row_endings_spq_dangling_comma_and_old_final_newline() {
    let spq = "[{\"header\":{\"queryId\":\"SCALABLE_PUSH_QUERY_1\",\"schema\":\"`A` BIGINT\"}},\n{\"row\":{\"columns\":[1]}},\n{\"continuationToken\":{\"continuationToken\":\"dG9r\"}},\n]";
    assert_eq!(events(Framing::StreamedRow, spq)[1..], [row("[1]"), Event::ContinuationToken("dG9r".into())]);
    let old = "[{\"header\":{\"queryId\":\"q\",\"schema\":\"`A` BIGINT\"}},\n{\"row\":{\"columns\":[1]}},\n{\"finalMessage\":\"Query Completed\"}]\n";
    assert_eq!(events(Framing::StreamedRow, old)[2], Event::FinalMessage("Query Completed".into()));
    let pull = "[{\"header\":{\"queryId\":\"query_1\",\"schema\":\"`A` BIGINT KEY\"}}]";
    assert_eq!(events(Framing::StreamedRow, pull).len(), 1);
    let old_pull_error = "[{\"header\":{\"queryId\":\"q\",\"schema\":\"`A` BIGINT\"}}\n,\n{\"errorMessage\":{\"error_code\":50000,\"message\":\"x\"}}]\n";
    assert!(matches!(events(Framing::StreamedRow, old_pull_error)[1], Event::Error(_)));
}

#[test]
fn streamed_row_source_host_protobuf_and_consistency() {
    let body = concat!(
        "{\"row\":{\"columns\":[\"v0\",1.2,4]},\"sourceHost\":\"host:80\"}\n",
        "{\"row\":{\"protobufBytes\":\"CggxOGY0\"}}\n",
        "{\"consistencyToken\":{\"consistencyToken\":\"e30=\"}}\n",
        "{ \"row\" : { \"tombstone\" : false , \"columns\" : [ 1 , [ \"}\" ] ] } }\n",
    );
    assert_eq!(
        events(Framing::StreamedRow, body),
        vec![
            row(r#"["v0",1.2,4]"#),
            Event::ProtobufRow("CggxOGY0".into()),
            Event::ConsistencyToken("e30=".into()),
            row(r#"[ 1 , [ "}" ] ]"#),
        ]
    );
}

#[test]
fn streamed_row_rejects_broken_objects_but_keeps_framing() {
    let body = concat!(
        "{\"header\":{\"queryId\":\"_confluent_id_19\",schema\":\"`ROWTIME` BIGINT\"}}\n",
        "{\"row\":{\"columns\":[1}}\n",
        "{\"row\":{}}\n",
        "{\"unknown\":1}\n",
        "{\"row\":{\"columns\":[1]}} trailing\n",
        "HTTP/1.1 200 OK\r\n",
        "{\"row\":{\"columns\":[2]}}\n",
    );
    let outcomes = split_every_way(Framing::StreamedRow, body.as_bytes());
    assert_eq!(outcomes.len(), 7);
    for outcome in &outcomes[..6] {
        assert!(outcome.is_err(), "{outcome:?}");
    }
    assert_eq!(outcomes[6], Ok(row("[2]")));
    assert_eq!(outcomes[5].clone().unwrap_err().offset, body.find("HTTP").unwrap() as u64);
}

#[test]
fn streamed_row_truncated_last_line_is_an_error_at_finish() {
    let body = "[{\"header\":{\"queryId\":\"q\",\"schema\":\"`A` BIGINT\"}},\n{\"row\":{\"colu";
    let outcomes = decode(Framing::StreamedRow, body);
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[1].clone().unwrap_err().offset, body.find("{\"row").unwrap() as u64);
}

#[test]
fn json_array_compact_and_pretty() {
    let compact = r#"[{"queryId":"q","columnNames":["A"],"columnTypes":["STRING"]},["x"],["y,]"],{"@type":"generic_error","error_code":50000,"message":"m"}]"#;
    let decoded = split_every_way(Framing::JsonArray, compact.as_bytes());
    assert_eq!(decoded.len(), 4);
    assert_eq!(decoded[0], Ok(header(Some("q"), &[("A", KsqlType::String)])));
    assert_eq!(decoded[2], Ok(row(r#"["y,]"]"#)));
    assert!(matches!(decoded[3], Ok(Event::Error(_))));

    let pretty = "[\n\t{\n\t\t\"queryId\":null,\n\t\t\"columnNames\":[\"A\",\"B\"],\n\t\t\"columnTypes\":[\"STRING\",\"BIGINT\"]\n\t},\n\t[\"a\", 1],\n\t[\"b\",\n 2]\n]\n";
    let decoded = split_every_way(Framing::JsonArray, pretty.as_bytes());
    assert_eq!(decoded[1], Ok(row(r#"["a", 1]"#)));
    assert_eq!(decoded[2], Ok(row("[\"b\",\n 2]")));
    assert_eq!(decoded.len(), 3);
}

#[test]
fn json_array_structural_errors_are_final() {
    let cases =
        [("{\"queryId\":\"q\"}", 0), ("[{\"a\":1} {\"b\":2}]", 9), ("[[1],x]", 5), ("[[1]] [2]", 6), ("[[1,}]", 1)];
    for (body, offset) in cases {
        let outcomes = split_every_way(Framing::JsonArray, body.as_bytes());
        let error = outcomes.last().unwrap().clone().unwrap_err();
        assert_eq!(error.offset, offset, "{body}: {error}");
    }
}

#[test]
fn json_array_end_of_body() {
    assert_eq!(decode(Framing::JsonArray, ""), vec![]);
    assert_eq!(decode(Framing::JsonArray, "[[1],[2],"), vec![Ok(row("[1]")), Ok(row("[2]"))]);
    let cut = decode(Framing::JsonArray, "[[1],[2");
    assert_eq!(cut[0], Ok(row("[1]")));
    assert_eq!(cut[1].clone().unwrap_err().offset, 5);
}

#[test]
fn error_snippets_are_cut() {
    let long = format!("{{\"x\":\"{}\"}}\n", "é".repeat(1000));
    let outcomes = decode(Framing::Delimited, &long);
    let error = outcomes[0].clone().unwrap_err();
    assert!(error.snippet.len() <= 512 && error.snippet.len() > 500);
}

// --- property: any split of a valid response gives the same events ---

#[derive(Debug, Clone)]
enum Ending {
    /// StreamedRow: `{"finalMessage":...}]`; delimited: last line ends with `\n`; JSON: `]`.
    Complete,
    /// StreamedRow: `,\n]` (SPQ); delimited: no final newline; JSON: `,]`.
    Dangling,
    /// The stream was cut after a complete message.
    Cut,
}

#[derive(Debug, Clone)]
struct Response {
    rows: Vec<(String, bool)>,
    crlf: bool,
    heartbeats: Vec<bool>,
    pretty: bool,
    ending: Ending,
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e6f64..1e6).prop_map(serde_json::Value::from),
        "[a-z\\[\\]{},:\"\\\\\n\t\u{e9}\u{1F600} ]{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[A-Z]{1,3}", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

fn response() -> impl Strategy<Value = Response> {
    let row = (prop::collection::vec(json_value(), 0..4), any::<bool>(), any::<bool>()).prop_map(
        |(values, pretty, tombstone)| {
            let array = serde_json::Value::Array(values);
            let text = if pretty {
                serde_json::to_string_pretty(&array).unwrap()
            } else {
                serde_json::to_string(&array).unwrap()
            };
            (text, tombstone)
        },
    );
    (
        prop::collection::vec(row, 0..6),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 8),
        any::<bool>(),
        prop_oneof![Just(Ending::Complete), Just(Ending::Dangling), Just(Ending::Cut)],
    )
        .prop_map(|(rows, crlf, heartbeats, pretty, ending)| Response { rows, crlf, heartbeats, pretty, ending })
}

const METADATA: &str = r#"{"queryId":"transient_T_1","columnNames":["A"],"columnTypes":["STRING"]}"#;

/// Line framings can't carry pretty-printed rows: Jackson never writes raw newlines there.
fn compact(text: &str) -> String {
    serde_json::to_string(&serde_json::from_str::<serde_json::Value>(text).unwrap()).unwrap()
}

/// The body of `response` in `framing`, and the events it must decode to.
fn render(framing: Framing, response: &Response) -> (String, Vec<Event>) {
    let newline = if response.crlf { "\r\n" } else { "\n" };
    let heartbeat = |index: usize| response.heartbeats[index % response.heartbeats.len()];
    let mut body = String::new();
    let mut expected = vec![header(Some("transient_T_1"), &[("A", KsqlType::String)])];
    match framing {
        Framing::Delimited => {
            body.push_str(METADATA);
            for (index, (values, _)) in response.rows.iter().enumerate() {
                body.push_str(newline);
                if heartbeat(index) {
                    body.push_str(newline);
                }
                let values = compact(values);
                body.push_str(&values);
                expected.push(row(&values));
            }
            if !matches!(response.ending, Ending::Dangling) {
                body.push_str(newline);
            }
        }
        Framing::StreamedRow => {
            body.push_str("[{\"header\":{\"queryId\":\"transient_T_1\",\"schema\":\"`A` STRING\"}},");
            body.push_str(newline);
            for (index, (values, tombstone)) in response.rows.iter().enumerate() {
                if heartbeat(index) {
                    body.push_str(newline);
                }
                let values = compact(values);
                let flag = if *tombstone { ",\"tombstone\":true" } else { "" };
                body.push_str(&format!("{{\"row\":{{\"columns\":{values}{flag}}}}},{newline}"));
                expected.push(Event::Row { values: Bytes::from(values.into_bytes()), tombstone: *tombstone });
            }
            match response.ending {
                Ending::Complete => {
                    body.push_str("{\"finalMessage\":\"Limit Reached\"}]");
                    expected.push(Event::FinalMessage("Limit Reached".into()));
                }
                Ending::Dangling => body.push(']'),
                Ending::Cut => {}
            }
        }
        Framing::JsonArray => {
            let separator = if response.pretty { ",\n\t" } else { "," };
            body.push('[');
            body.push_str(METADATA);
            for (values, _) in &response.rows {
                body.push_str(separator);
                body.push_str(values);
                expected.push(row(values));
            }
            match response.ending {
                Ending::Complete => body.push_str("]\n"),
                Ending::Dangling => body.push_str(",]"),
                Ending::Cut => {}
            }
        }
    }
    (body, expected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_split_gives_the_same_events(
        response in response(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        for framing in [Framing::Delimited, Framing::StreamedRow, Framing::JsonArray] {
            let (body, expected) = render(framing, &response);
            let body = body.as_bytes();
            let whole = split_every_way(framing, body);
            let decoded: Vec<Event> = whole.into_iter().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&decoded, &expected, "{:?}: {}", framing, String::from_utf8_lossy(body));

            let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut chunks = Vec::new();
            let mut start = 0;
            for point in points.into_iter().chain([body.len()]) {
                chunks.push(Bytes::copy_from_slice(&body[start..point]));
                start = point;
            }
            let multi: Vec<Event> =
                decode_chunks(framing, &chunks).into_iter().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&multi, &expected);
        }
    }
}

/// Decodes `body` in `chunk`-byte pieces with a message limit of `limit` bytes.
fn decode_limited(framing: Framing, body: &[u8], chunk: usize, limit: usize) -> Vec<Outcome> {
    let mut decoder = FrameDecoder::new(framing);
    decoder.set_max_message_bytes(limit);
    let mut outcomes = Vec::new();
    for piece in body.chunks(chunk) {
        decoder.push(Bytes::copy_from_slice(piece));
        drain(&mut decoder, &mut outcomes, false);
    }
    drain(&mut decoder, &mut outcomes, true);
    outcomes
}

#[test]
fn a_line_over_the_limit_is_reported_with_its_first_bytes_and_length_and_decoding_goes_on() {
    let long = format!("[1,\"{}\"]", "x".repeat(10_000));
    let body = format!(
        "{{\"queryId\":\"q\",\"columnNames\":[\"A\"],\"columnTypes\":[\"STRING\"]}}\n[0,\"a\"]\n{long}\n[2,\"c\"]\n"
    );
    // Any chunking, including one byte at a time, gives the same outcome, and memory holds at
    // most the limit of the long line.
    for chunk in [1, 7, 100, 4096, body.len()] {
        let outcomes = decode_limited(Framing::Delimited, body.as_bytes(), chunk, 1024);
        assert_eq!(outcomes.len(), 4, "chunk {chunk}: {outcomes:?}");
        assert_eq!(outcomes[1], Ok(row("[0,\"a\"]")));
        let error = outcomes[2].as_ref().unwrap_err();
        assert!(error.too_long && error.reason.contains("longer than 1024"), "{error:?}");
        assert_eq!(error.length, long.len() as u64);
        assert_eq!(&error.raw[..], &long.as_bytes()[..1024]);
        assert_eq!(outcomes[3], Ok(row("[2,\"c\"]")));
    }
}

#[test]
fn a_too_long_last_line_without_newline_is_reported_at_finish() {
    let body =
        format!("{{\"queryId\":\"q\",\"columnNames\":[\"A\"],\"columnTypes\":[\"STRING\"]}}\n[\"{}", "y".repeat(5000));
    let outcomes = decode_limited(Framing::Delimited, body.as_bytes(), 333, 2048);
    let error = outcomes.last().unwrap().as_ref().unwrap_err();
    assert!(error.too_long);
    assert_eq!(error.length, 5002);
    assert_eq!(error.raw.len(), 2048);
}

#[test]
fn malformed_lines_between_good_ones_are_errors_each_and_the_rest_decodes() {
    let body =
        "{\"queryId\":\"q\",\"columnNames\":[\"A\"],\"columnTypes\":[\"BIGINT\"]}\n[1]\n[96,\"broken row\n{\"a\":1}\n\
                {\"errorMessage\":\"x\"}\n[2]\n";
    let outcomes = decode(Framing::Delimited, body);
    let rows: Vec<&Event> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).collect();
    assert!(rows.contains(&&row("[1]")) && rows.contains(&&row("[2]")), "{outcomes:?}");
    let errors: Vec<&FrameError> = outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).collect();
    assert!(errors.iter().any(|error| &error.raw[..] == b"[96,\"broken row"), "{errors:?}");
    assert!(errors.iter().any(|error| &error.raw[..] == b"{\"a\":1}"), "{errors:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes in arbitrary chunks never panic any framing, every call settles, and no
    /// message is held beyond the limit (memory does not grow with the input).
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_within_the_message_limit(
        body in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(1usize..300, 1..20),
        framing in prop_oneof![Just(Framing::Delimited), Just(Framing::StreamedRow), Just(Framing::JsonArray)],
        limit in 16usize..512,
    ) {
        let mut decoder = FrameDecoder::new(framing);
        decoder.set_max_message_bytes(limit);
        let mut outcomes = Vec::new();
        let mut rest = &body[..];
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let take = (*cut.next().unwrap()).min(rest.len());
            decoder.push(Bytes::copy_from_slice(&rest[..take]));
            rest = &rest[take..];
            drain(&mut decoder, &mut outcomes, false);
            prop_assert!(decoder.carry.len() <= limit, "carry {} over limit {limit}", decoder.carry.len());
        }
        drain(&mut decoder, &mut outcomes, true);
        for outcome in &outcomes {
            if let Err(error) = outcome {
                prop_assert!(error.raw.len() <= limit.max(body.len()));
            }
        }
    }
}
