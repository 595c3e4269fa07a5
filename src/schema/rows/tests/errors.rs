//! Rejected rows: the error names the right place and the decoder is left untouched.

use super::*;

/// Appends `row` to a one-column decoder of `ty` and returns the error.
fn reject(ty: &str, value: &str) -> RowError {
    let mut decoder = decoder(&format!("`C` {ty}"));
    let row = format!("[{value}]");
    let error = decoder.append(row.as_bytes()).expect_err(&row);
    assert_eq!(decoder.len(), 0);
    assert_eq!(decoder.finish().num_rows(), 0);
    error
}

#[test]
fn scalar_values_out_of_shape_are_rejected() {
    let cases = [
        ("INTEGER", "2147483648", "INTEGER range"),
        ("INTEGER", "-2147483649", "INTEGER range"),
        ("INTEGER", "1.0", "expected an integer"),
        ("INTEGER", "\"1\"", "expected a number, found a string"),
        ("BIGINT", "9223372036854775808", "BIGINT range"),
        ("BIGINT", "-9223372036854775809", "BIGINT range"),
        ("BIGINT", "1e3", "expected an integer"),
        ("BOOLEAN", "1", "expected a boolean"),
        ("BOOLEAN", "tru", "invalid JSON literal"),
        ("DOUBLE", "\"nan\"", "expected a number or"),
        ("DOUBLE", "01", "leading zero"),
        ("DOUBLE", "1.", "no digits after"),
        ("DOUBLE", "-", "expected a number"),
        ("DECIMAL(4, 2)", "1.234", "more fraction digits than the scale 2"),
        ("DECIMAL(4, 2)", "123.4", "more than the precision 4"),
        ("DECIMAL(10, 2)", "1.25e-1", "more fraction digits"),
        ("DECIMAL(10, 2)", "1e100", "more than the precision 10"),
        ("DECIMAL(10, 2)", "\"1.5\"", "expected a number"),
        ("DECIMAL(60, 0)", &"9".repeat(61), "more than the precision 60"),
        ("DECIMAL(16, 4)", "9999999999999999.1234", "more than the precision 16"),
        ("STRING", "1", "expected a string, found a number"),
        ("STRING", "\"\\ud800\"", "unpaired surrogate"),
        ("STRING", "\"\\ud800\\u0041\"", "unpaired surrogate"),
        ("STRING", "\"\\x\"", "invalid escape"),
        ("STRING", "\"\\u12G4\"", "invalid \\u escape"),
        ("STRING", "\"abc", "unterminated string"),
        ("BYTES", "\"IQ=\"", "invalid base64"),
        ("BYTES", "\"!!!!\"", "invalid base64"),
        ("TIMESTAMP", "\"2021-02-29T00:00:00.000\"", "invalid TIMESTAMP"),
        ("TIMESTAMP", "\"2021-01-01 00:00:00.000\"", "invalid TIMESTAMP"),
        ("TIMESTAMP", "\"2021-01-01T24:00:00\"", "invalid TIMESTAMP"),
        ("TIMESTAMP", "1.5", "expected an integer"),
        ("DATE", "\"2021-13-01\"", "invalid DATE"),
        ("DATE", "\"2021-1-01\"", "invalid DATE"),
        ("DATE", "9999999999", "DATE out of range"),
        ("TIME", "\"25:00\"", "invalid TIME"),
        ("TIME", "\"12:00:00.\"", "invalid TIME"),
        ("TIME", "86400000", "TIME out of range"),
        ("TIME", "-1", "TIME out of range"),
        ("ARRAY<INTEGER>", "{}", "expected an array, found an object"),
        ("ARRAY<INTEGER>", "[1 2]", "expected `,`"),
        ("MAP<STRING, INTEGER>", "[]", "expected an object, found an array"),
        ("MAP<STRING, INTEGER>", "{1:2}", "expected a string, found a number"),
        ("STRUCT<`A` INTEGER>", "{\"B\":1}", "unknown struct field `B`"),
        ("STRUCT<`A` INTEGER>", "{\"A\":1,\"a\":2}", "duplicate struct field"),
    ];
    for (ty, value, reason) in cases {
        let error = reject(ty, value);
        assert!(error.reason.contains(reason), "{ty} {value}: {error}");
        assert!(error.column == "C" || error.column.starts_with("C."), "{ty} {value}: {error}");
    }
}

#[test]
fn nested_failures_name_their_path() {
    let schema = "`ID` INTEGER, `ARR` ARRAY<STRUCT<`TITLE` STRING, `TAGS` MAP<INTEGER, ARRAY<DATE>>>>";
    let cases = [
        (r#"[1,[{"TITLE":5}]]"#, "ARR[0].TITLE"),
        (r#"[1,[null,null,null,{"TAGS":{"7":["2020-01-01","x"]}}]]"#, "ARR[3].TAGS{7}[1]"),
        (r#"[1,[{"TAGS":{"x":[]}}]]"#, "ARR[0].TAGS{x}"),
        (r#"[1,[{"title":"a","TAGS":{"1":null,"2":[1,2,3,"bad"]}}]]"#, "ARR[0].TAGS{2}[3]"),
    ];
    let mut decoder = decoder(schema);
    for (row, path) in cases {
        let error = decoder.append(row.as_bytes()).expect_err(row);
        assert_eq!(error.column, path, "{error}");
        assert_eq!(error.raw, row);
    }
    assert!(decoder.is_empty());
}

#[test]
fn map_keys_must_convert_and_never_be_null() {
    assert_eq!(reject("MAP<INTEGER, STRING>", r#"{"x":"a"}"#).column, "C{x}");
    assert!(reject("MAP<INTEGER, STRING>", r#"{"null":"a"}"#).reason.contains("null"));
    assert!(reject("MAP<INTEGER, STRING>", r#"{"1 2":"a"}"#).reason.contains("trailing"));
    assert!(reject("MAP<BOOLEAN, STRING>", r#"{"yes":"a"}"#).reason.contains("boolean"));
}

#[test]
fn row_framing_errors_name_the_row() {
    let mut decoder = decoder("`A` INTEGER, `B` STRING");
    let cases = [
        (r#"[1]"#, "row has 1 values, expected 2"),
        (r#"[]"#, "row has 0 values, expected 2"),
        (r#"[1,"a",2]"#, "row has more than 2 values"),
        (r#"[1,"a"] x"#, "trailing text"),
        (r#"[1,"a""#, "expected `]`"),
        (r#"{"A":1}"#, "expected a JSON array"),
        ("", "expected a JSON array, found the end of the row"),
        (r#"[1 "a"]"#, "expected `,`"),
    ];
    for (row, reason) in cases {
        let error = decoder.append(row.as_bytes()).expect_err(row);
        assert_eq!(error.column, "<row>", "{row}: {error}");
        assert!(error.reason.contains(reason), "{row}: {error}");
    }
    let error = decoder.append(b"[1,\"\xff\"]").unwrap_err();
    assert!(error.reason.contains("UTF-8"), "{error}");
    assert_eq!(error.raw, "[1,\"\u{fffd}\"]");
    assert!(decoder.is_empty());
}

#[test]
fn raw_text_is_cut_to_4_kib() {
    let mut decoder = decoder("`A` INTEGER");
    let row = format!("[\"{}\"]", "é".repeat(5000));
    let error = decoder.append(row.as_bytes()).unwrap_err();
    assert!(error.raw.len() <= 4096 && error.raw.len() > 4000, "{}", error.raw.len());
    assert!(row.starts_with(&error.raw));
}

/// good, bad, good: the batch holds exactly the two good rows, whatever column failed and
/// however deep.
#[test]
fn failed_rows_are_rolled_back() {
    let schema = "`I` BIGINT, `S` STRING, `B` BYTES, `D` DECIMAL(40, 2), \
                  `L` ARRAY<MAP<STRING, STRUCT<`X` STRING, `Y` ARRAY<INTEGER>>>>, `T` TIMESTAMP";
    let good1 = r#"[1,"one","AAE=",1.50,[{"k":{"X":"x1","Y":[1,2]}}],"2021-01-01T00:00:00.000"]"#;
    let good2 = r#"[2,"two",null,-2,[null,{}],null]"#;
    let bad = [
        r#"[3,"three","AAEC",3.00,[{"k":{"X":"partial","Y":[1,2,"no"]}}],"2021-01-01T00:00:00.000"]"#,
        r#"[3,"three","AAEC",3.00,[{"k":{"X":"x","Y":[1]}},{"a":{"X":"y"},"b":7}],null]"#,
        r#"[3,"three","AAEC",3.00,[{"k":{"X":"x","Y":[1]}}],"not a time"]"#,
        r#"[3,"three","AAEC",3.00,[{"k":{"X":"x","Y":[1]}}],null,"extra"]"#,
        r#"[3,"three","AAEC",3.001,[],null]"#,
        r#"[3,"three","AA",3,[],null]"#,
    ];
    for bad in bad {
        let mut decoder = decoder(schema);
        decoder.append(good1.as_bytes()).unwrap();
        let before = decoder.buffered_bytes();
        decoder.append(bad.as_bytes()).expect_err(bad);
        assert_eq!(decoder.len(), 1);
        assert!(decoder.buffered_bytes() >= before);
        decoder.append(good2.as_bytes()).unwrap();
        let batch = decoder.finish();
        assert_eq!(batch.schema(), decoder.schema());
        let expected = decode(schema, &[good1, good2]);
        assert_eq!(rows_of(&batch), expected, "after {bad}");
        assert_eq!(
            expected[0][4],
            V::List(vec![V::Map(vec![(s("k"), V::Struct(vec![s("x1"), V::List(vec![V::Int(1), V::Int(2)])]))])])
        );
        assert_eq!(expected[1][3], dec("-200"));
        assert_eq!(expected[1][4], V::List(vec![V::Null, V::Map(vec![])]));
        // Child arrays hold no leftovers from the failed row.
        let list = batch.column(4).as_list::<i32>();
        assert_eq!(list.values().len(), 3);
        let strings = batch.column(1).as_string::<i32>();
        assert_eq!(strings.value_data(), b"onetwo");
    }
}
