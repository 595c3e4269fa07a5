use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, Float64Type, Int32Type, Int64Type, Time32MillisecondType,
    TimeUnit, TimestampMillisecondType,
};

use super::*;
use crate::schema::types::{parse_schema, KsqlType};

mod errors;
mod roundtrip;

/// A decoded value read back from an Arrow array, for value-by-value comparisons.
#[derive(Debug, Clone)]
pub(super) enum V {
    Null,
    Bool(bool),
    Int(i32),
    Big(i64),
    Double(f64),
    /// The unscaled integer, in decimal digits.
    Dec(String),
    Str(String),
    Bytes(Vec<u8>),
    Ts(i64),
    Date(i32),
    Time(i32),
    List(Vec<V>),
    Map(Vec<(V, V)>),
    Struct(Vec<V>),
}

impl PartialEq for V {
    fn eq(&self, other: &V) -> bool {
        use V::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) | (Date(a), Date(b)) | (Time(a), Time(b)) => a == b,
            (Big(a), Big(b)) | (Ts(a), Ts(b)) => a == b,
            (Double(a), Double(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            (Dec(a), Dec(b)) | (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (List(a), List(b)) | (Struct(a), Struct(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            _ => false,
        }
    }
}

pub(super) fn s(text: &str) -> V {
    V::Str(text.to_string())
}

pub(super) fn dec(unscaled: &str) -> V {
    V::Dec(unscaled.to_string())
}

/// Reads slot `index` of `array` back into a [`V`].
pub(super) fn extract(array: &dyn Array, index: usize) -> V {
    if array.is_null(index) {
        return V::Null;
    }
    match array.data_type() {
        DataType::Boolean => V::Bool(array.as_boolean().value(index)),
        DataType::Int32 => V::Int(array.as_primitive::<Int32Type>().value(index)),
        DataType::Int64 => V::Big(array.as_primitive::<Int64Type>().value(index)),
        DataType::Float64 => V::Double(array.as_primitive::<Float64Type>().value(index)),
        DataType::Decimal128(..) => V::Dec(array.as_primitive::<Decimal128Type>().value(index).to_string()),
        DataType::Decimal256(..) => V::Dec(array.as_primitive::<Decimal256Type>().value(index).to_string()),
        DataType::Utf8 => V::Str(array.as_string::<i32>().value(index).to_string()),
        DataType::Binary => V::Bytes(array.as_binary::<i32>().value(index).to_vec()),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            V::Ts(array.as_primitive::<TimestampMillisecondType>().value(index))
        }
        DataType::Date32 => V::Date(array.as_primitive::<Date32Type>().value(index)),
        DataType::Time32(TimeUnit::Millisecond) => V::Time(array.as_primitive::<Time32MillisecondType>().value(index)),
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(index);
            V::List((0..items.len()).map(|i| extract(items.as_ref(), i)).collect())
        }
        DataType::Map(..) => {
            let entries = array.as_map().value(index);
            let (keys, values) = (entries.column(0), entries.column(1));
            assert_eq!(keys.null_count(), 0, "map keys are never null");
            V::Map((0..entries.len()).map(|i| (extract(keys.as_ref(), i), extract(values.as_ref(), i))).collect())
        }
        DataType::Struct(_) => {
            let fields = array.as_struct();
            V::Struct(fields.columns().iter().map(|child| extract(child.as_ref(), index)).collect())
        }
        other => panic!("unexpected Arrow type {other}"),
    }
}

/// Every row of a batch as [`V`]s.
pub(super) fn rows_of(batch: &RecordBatch) -> Vec<Vec<V>> {
    (0..batch.num_rows())
        .map(|row| batch.columns().iter().map(|column| extract(column.as_ref(), row)).collect())
        .collect()
}

pub(super) fn decoder(schema: &str) -> RowDecoder {
    RowDecoder::new(&parse_schema(schema).unwrap())
}

/// Decodes `rows` under a header schema and reads them back.
pub(super) fn decode(schema: &str, rows: &[&str]) -> Vec<Vec<V>> {
    let mut decoder = decoder(schema);
    for row in rows {
        decoder.append(row.as_bytes()).unwrap_or_else(|error| panic!("{row}: {error}"));
    }
    let batch = decoder.finish();
    assert_eq!(batch.schema(), decoder.schema());
    rows_of(&batch)
}

/// Decodes one single-column row.
pub(super) fn one(ty: &str, value: &str) -> V {
    decode(&format!("`C` {ty}"), &[&format!("[{value}]")]).remove(0).remove(0)
}

const EIGHT: &str = "`ID` BIGINT, `NAME` STRING, `PRICE` DOUBLE, `AMOUNT` DECIMAL(20, 4), \
                     `AT` TIMESTAMP, `OK` BOOLEAN, `N` INTEGER, `NOTE` STRING";

#[test]
fn decodes_the_eight_column_shape() {
    let rows = decode(
        EIGHT,
        &[
            r#"[1611327570881,"Hello world",4.2E-4,9999999999999999.1234,"2021-01-22T14:59:30.881",true,1,"x"]"#,
            r#" [ -5 , "" , 15207.0 , 1.2000 , "1970-01-01T00:00:00.001" , false , -2147483648 , null ] "#,
        ],
    );
    assert_eq!(
        rows[0],
        vec![
            V::Big(1_611_327_570_881),
            s("Hello world"),
            V::Double(4.2e-4),
            dec("99999999999999991234"),
            V::Ts(1_611_327_570_881),
            V::Bool(true),
            V::Int(1),
            s("x"),
        ]
    );
    assert_eq!(
        rows[1],
        vec![V::Big(-5), s(""), V::Double(15207.0), dec("12000"), V::Ts(1), V::Bool(false), V::Int(i32::MIN), V::Null,]
    );
}

#[test]
fn batch_types_match_the_schema_mapping() {
    let mut decoder = decoder(EIGHT);
    decoder.append(br#"[1,"a",1.0,1.0,"2021-01-01T00:00:00.000",true,1,"b"]"#).unwrap();
    let batch = decoder.finish();
    assert_eq!(batch.column(4).data_type(), &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())));
    assert_eq!(batch.column(3).data_type(), &DataType::Decimal128(20, 4));
    assert_eq!(batch.schema(), decoder.schema());
    assert_eq!(batch.schema().field(0).metadata()["ksql.type"], "BIGINT");
}

#[test]
fn bigint_keeps_the_full_range() {
    assert_eq!(one("BIGINT", "9223372036854775807"), V::Big(i64::MAX));
    assert_eq!(one("BIGINT", "-9223372036854775808"), V::Big(i64::MIN));
    assert_eq!(one("BIGINT", "123456789123456789"), V::Big(123_456_789_123_456_789));
    assert_eq!(one("INTEGER", "2147483647"), V::Int(i32::MAX));
}

#[test]
fn double_accepts_java_forms_and_non_finite_strings() {
    assert_eq!(one("DOUBLE", "1.0"), V::Double(1.0));
    assert_eq!(one("DOUBLE", "15207.0"), V::Double(15207.0));
    assert_eq!(one("DOUBLE", "4.2E-4"), V::Double(0.00042));
    assert_eq!(one("DOUBLE", "-1.5e+300"), V::Double(-1.5e300));
    assert_eq!(one("DOUBLE", "7"), V::Double(7.0));
    assert_eq!(one("DOUBLE", "-0.0"), V::Double(-0.0));
    assert!(matches!(one("DOUBLE", r#""NaN""#), V::Double(x) if x.is_nan()));
    assert_eq!(one("DOUBLE", r#""Infinity""#), V::Double(f64::INFINITY));
    assert_eq!(one("DOUBLE", r#""-Infinity""#), V::Double(f64::NEG_INFINITY));
}

#[test]
fn decimal_is_rescaled_exactly_from_its_text() {
    assert_eq!(one("DECIMAL(20, 4)", "9999999999999999.1234"), dec("99999999999999991234"));
    assert_eq!(one("DECIMAL(4, 2)", "4.50"), dec("450"));
    assert_eq!(one("DECIMAL(4, 2)", "4.5"), dec("450"));
    assert_eq!(one("DECIMAL(4, 2)", "-5"), dec("-500"));
    assert_eq!(one("DECIMAL(4, 2)", "1.5000"), dec("150"));
    assert_eq!(one("DECIMAL(10, 2)", "1.2E+3"), dec("120000"));
    assert_eq!(one("DECIMAL(10, 3)", "1.25e-1"), dec("125"));
    assert_eq!(one("DECIMAL(10, 2)", "0.0"), dec("0"));
    assert_eq!(one("DECIMAL(10, 2)", "-0.00"), dec("0"));
    assert_eq!(one("DECIMAL(3, 3)", "0.999"), dec("999"));
    assert_eq!(one("DECIMAL(38, 0)", &"9".repeat(38)), dec(&"9".repeat(38)));
    let wide = format!("-{}.{}", "1".repeat(40), "2".repeat(20));
    assert_eq!(one("DECIMAL(60, 20)", &wide), dec(&format!("-{}{}", "1".repeat(40), "2".repeat(20))));
    assert_eq!(one("DECIMAL(76, 0)", &"9".repeat(76)), dec(&"9".repeat(76)));
}

#[test]
fn decimal256_batch_keeps_precision_and_scale() {
    let mut decoder = decoder("`D` DECIMAL(60, 5)");
    decoder.append(b"[1.5]").unwrap();
    let batch = decoder.finish();
    assert_eq!(batch.column(0).data_type(), &DataType::Decimal256(60, 5));
    assert_eq!(extract(batch.column(0).as_ref(), 0), dec("150000"));
}

#[test]
fn strings_unescape_every_form() {
    assert_eq!(one("STRING", r#""a\"b\\c\/d\b\f\n\r\t""#), s("a\"b\\c/d\u{8}\u{c}\n\r\t"));
    assert_eq!(one("STRING", r#""\u00e9\u20AC""#), s("é€"));
    assert_eq!(one("STRING", r#""\ud83d\ude00!""#), s("😀!"));
    assert_eq!(one("STRING", "\"raw é 😀\""), s("raw é 😀"));
    assert_eq!(one("STRING", r#""""#), s(""));
}

#[test]
fn bytes_are_standard_base64() {
    assert_eq!(one("BYTES", r#""IQ==""#), V::Bytes(b"!".to_vec()));
    assert_eq!(one("BYTES", r#""AAEC""#), V::Bytes(vec![0, 1, 2]));
    assert_eq!(one("BYTES", r#""""#), V::Bytes(vec![]));
}

#[test]
fn temporal_types_accept_strings_and_integers() {
    assert_eq!(one("TIMESTAMP", r#""1970-01-01T00:00:00.001""#), V::Ts(1));
    assert_eq!(one("TIMESTAMP", r#""1969-12-31T23:59:59.999""#), V::Ts(-1));
    assert_eq!(one("TIMESTAMP", r#""2024-02-29T12:00:00Z""#), V::Ts(1_709_208_000_000));
    assert_eq!(one("TIMESTAMP", r#""2024-02-29T12:00:00.123456789""#), V::Ts(1_709_208_000_123));
    assert_eq!(one("TIMESTAMP", r#""2024-02-29T12:00:00.5""#), V::Ts(1_709_208_000_500));
    assert_eq!(one("TIMESTAMP", "1611327570881"), V::Ts(1_611_327_570_881));
    assert_eq!(one("DATE", r#""1970-01-01""#), V::Date(0));
    assert_eq!(one("DATE", r#""2000-03-01""#), V::Date(11_017));
    assert_eq!(one("DATE", r#""1969-12-31""#), V::Date(-1));
    assert_eq!(one("DATE", "19000"), V::Date(19_000));
    assert_eq!(one("TIME", r#""00:00""#), V::Time(0));
    assert_eq!(one("TIME", r#""13:45""#), V::Time(49_500_000));
    assert_eq!(one("TIME", r#""13:45:07""#), V::Time(49_507_000));
    assert_eq!(one("TIME", r#""23:59:59.999""#), V::Time(86_399_999));
    assert_eq!(one("TIME", "49507000"), V::Time(49_507_000));
}

/// The row of the .NET client's nested-types capture.
#[test]
fn decodes_the_nested_types_capture() {
    let schema = "`ID` INTEGER, `ARR` ARRAY<STRUCT<`TITLE` STRING, `ID` INTEGER>>, \
                  `MAPVALUE` MAP<STRING, MAP<STRING, INTEGER>>, `MAPARR` MAP<INTEGER, ARRAY<STRING>>, \
                  `STR` STRUCT<`TITLE` STRING, `ID` INTEGER>, `RELEASE_YEAR` INTEGER";
    let row = r#"[1,[{"TITLE":"Aliens","ID":1},{"TITLE":"test","ID":2}],{"a":{"a":1,"b":2},"b":{"d":4,"c":3}},{"1":["a","b"],"2":["c","d"]},{"TITLE":"Aliens","ID":1},1986]"#;
    let rows = decode(schema, &[row]);
    let title = |t: &str, id: i32| V::Struct(vec![s(t), V::Int(id)]);
    assert_eq!(
        rows[0],
        vec![
            V::Int(1),
            V::List(vec![title("Aliens", 1), title("test", 2)]),
            V::Map(vec![
                (s("a"), V::Map(vec![(s("a"), V::Int(1)), (s("b"), V::Int(2))])),
                (s("b"), V::Map(vec![(s("d"), V::Int(4)), (s("c"), V::Int(3))])),
            ]),
            V::Map(vec![(V::Int(1), V::List(vec![s("a"), s("b")])), (V::Int(2), V::List(vec![s("c"), s("d")])),]),
            title("Aliens", 1),
            V::Int(1986),
        ]
    );
}

#[test]
fn struct_values_use_the_nested_forms() {
    let schema = "`S` STRUCT<`Amount` DECIMAL(10, 4), `At` TIMESTAMP, `Day` DATE, `Tm` TIME, `B` BYTES>";
    let rows = decode(
        schema,
        &[
            r#"[{"Amount":1.2,"At":1611327570881,"Day":18000,"Tm":1000,"B":"AAEC"}]"#,
            r#"[{"amount":1.5E-3,"AT":"2021-01-22T14:59:30.881"}]"#,
            r#"[{}]"#,
            r#"[null]"#,
        ],
    );
    assert_eq!(
        rows[0][0],
        V::Struct(vec![
            dec("12000"),
            V::Ts(1_611_327_570_881),
            V::Date(18_000),
            V::Time(1000),
            V::Bytes(vec![0, 1, 2])
        ])
    );
    assert_eq!(rows[1][0], V::Struct(vec![dec("15"), V::Ts(1_611_327_570_881), V::Null, V::Null, V::Null]));
    assert_eq!(rows[2][0], V::Struct(vec![V::Null; 5]));
    assert_eq!(rows[3][0], V::Null);
}

#[test]
fn struct_prefers_the_exact_case_field() {
    let rows = decode("`S` STRUCT<`a` INTEGER, `A` INTEGER>", &[r#"[{"A":1,"a":2}]"#]);
    assert_eq!(rows[0][0], V::Struct(vec![V::Int(2), V::Int(1)]));
}

#[test]
fn nulls_at_every_level() {
    let schema = "`A` ARRAY<STRUCT<`X` MAP<STRING, ARRAY<INTEGER>>>>, `M` MAP<STRING, STRUCT<`Y` STRING>>";
    let rows = decode(
        schema,
        &[
            r#"[null, null]"#,
            r#"[[null, {"X":null}, {"X":{"k":null}}, {"X":{"k":[null, 3]}}], {"a":null,"b":{"Y":null}}]"#,
            r#"[[], {}]"#,
        ],
    );
    assert_eq!(rows[0], vec![V::Null, V::Null]);
    let x = |m: V| V::Struct(vec![m]);
    assert_eq!(
        rows[1],
        vec![
            V::List(vec![
                V::Null,
                x(V::Null),
                x(V::Map(vec![(s("k"), V::Null)])),
                x(V::Map(vec![(s("k"), V::List(vec![V::Null, V::Int(3)]))])),
            ]),
            V::Map(vec![(s("a"), V::Null), (s("b"), V::Struct(vec![V::Null]))]),
        ]
    );
    assert_eq!(rows[2], vec![V::List(vec![]), V::Map(vec![])]);
}

#[test]
fn map_keys_convert_to_the_key_type() {
    assert_eq!(
        one("MAP<BIGINT, BOOLEAN>", r#"{"-9223372036854775808":true,"7":false}"#),
        V::Map(vec![(V::Big(i64::MIN), V::Bool(true)), (V::Big(7), V::Bool(false))])
    );
    assert_eq!(one("MAP<DECIMAL(4, 1), STRING>", r#"{"1.5":"x"}"#), V::Map(vec![(dec("15"), s("x"))]));
    assert_eq!(
        one("MAP<DATE, DOUBLE>", r#"{"1970-01-02":"NaN","3":1}"#),
        V::Map(vec![(V::Date(1), V::Double(f64::NAN)), (V::Date(3), V::Double(1.0))])
    );
    assert_eq!(one("MAP<STRING, INTEGER>", r#"{"a\"b\u00e9":1}"#), V::Map(vec![(s("a\"bé"), V::Int(1))]));
}

#[test]
fn empty_struct_and_empty_batch_match_the_schema() {
    let mut decoder = decoder("`E` STRUCT< >, `I` ARRAY<MAP<STRING, DECIMAL(50, 2)>>");
    let empty = decoder.finish();
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.schema(), decoder.schema());
    decoder.append(br#"[{}, [{"a":1.25}]]"#).unwrap();
    decoder.append(br#"[null, [null]]"#).unwrap();
    let batch = decoder.finish();
    assert_eq!(batch.schema(), decoder.schema());
    assert_eq!(
        rows_of(&batch),
        vec![
            vec![V::Struct(vec![]), V::List(vec![V::Map(vec![(s("a"), dec("125"))])])],
            vec![V::Null, V::List(vec![V::Null])],
        ]
    );
}

#[test]
fn finish_resets_and_buffered_bytes_tracks_growth() {
    let mut decoder = decoder(EIGHT);
    let empty = decoder.buffered_bytes();
    assert!(empty < 64, "{empty}");
    let row = br#"[1,"some text",1.0,1.0,"2021-01-01T00:00:00.000",true,1,"more text"]"#;
    for _ in 0..100 {
        decoder.append(row).unwrap();
    }
    assert_eq!(decoder.len(), 100);
    let full = decoder.buffered_bytes();
    assert!(full > 100 * 50, "{full}");
    assert_eq!(decoder.finish().num_rows(), 100);
    assert!(decoder.is_empty());
    assert!(decoder.buffered_bytes() < full / 10);
    decoder.append(row).unwrap();
    assert_eq!(decoder.finish().num_rows(), 1);
}

#[test]
fn decode_rows_builds_one_batch() {
    let columns = parse_schema("`A` INTEGER").unwrap();
    let batch = decode_rows(&columns, &[b"[1]", b"[2]"]).unwrap();
    assert_eq!(rows_of(&batch), vec![vec![V::Int(1)], vec![V::Int(2)]]);
    assert!(decode_rows(&columns, &[b"[1]", b"[x]"]).is_err());
    assert_eq!(KsqlType::Integer, columns[0].ty);
}

mod arbitrary {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the row decoder, and a rejected row leaves the batch
        /// exactly as it was: the good rows around it decode into it unchanged.
        #[test]
        fn arbitrary_rows_never_panic_and_never_touch_the_batch(
            rows in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..20),
            mutated in prop::collection::vec(r#"\[[0-9\-eE.,"a-z{}\[\]: ]{0,80}\]"#, 0..20),
        ) {
            let schema = parse_schema(
                "`ID` BIGINT, `NAME` STRING, `AMOUNT` DECIMAL(10, 2), `TS` TIMESTAMP, `TAGS` ARRAY<STRING>, \
                 `ATTRS` MAP<STRING, INTEGER>, `INFO` STRUCT<`A` DOUBLE, `B` BOOLEAN>, `D` DATE, `BLOB` BYTES",
            )
            .unwrap();
            let mut decoder = RowDecoder::new(&schema);
            let good = br#"[1,"a",1.50,"2024-05-01T00:00:00.000",["x"],{"k":1},{"A":0.5,"B":true},"2024-05-01","AA=="]"#;
            let mut expected = 0;
            for row in rows.iter().map(Vec::as_slice).chain(mutated.iter().map(String::as_bytes)) {
                let before = decoder.len();
                match decoder.append(row) {
                    Ok(()) => expected += 1,
                    Err(_) => prop_assert_eq!(decoder.len(), before),
                }
                decoder.append(good).unwrap();
                expected += 1;
            }
            let batch = decoder.finish();
            prop_assert_eq!(batch.num_rows(), expected);
        }
    }
}
