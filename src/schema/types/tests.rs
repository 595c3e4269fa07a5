use super::*;
use proptest::prelude::*;

#[test]
fn parses_every_scalar_spelling() {
    let cases = [
        ("BOOLEAN", KsqlType::Boolean),
        ("INTEGER", KsqlType::Integer),
        ("INT", KsqlType::Integer),
        ("BIGINT", KsqlType::Bigint),
        ("DOUBLE", KsqlType::Double),
        ("STRING", KsqlType::String),
        ("VARCHAR", KsqlType::String),
        ("BYTES", KsqlType::Bytes),
        ("TIMESTAMP", KsqlType::Timestamp),
        ("DATE", KsqlType::Date),
        ("TIME", KsqlType::Time),
        ("DECIMAL(4, 2)", KsqlType::Decimal { precision: 4, scale: 2 }),
        ("DECIMAL(16,4)", KsqlType::Decimal { precision: 16, scale: 4 }),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_type(text).unwrap(), expected, "{text}");
    }
}

#[test]
fn parses_nested_types_as_ksqldb_writes_them() {
    let text = "MAP<STRING, ARRAY<STRUCT<`TITLE` STRING, `ID` INTEGER>>>";
    let ty = parse_type(text).unwrap();
    assert_eq!(ty.to_string(), text);
    assert_eq!(parse_type("STRUCT< >").unwrap(), KsqlType::Struct(vec![]));
    assert_eq!(KsqlType::Struct(vec![]).to_string(), "STRUCT< >");
}

#[test]
fn quoted_names_keep_spaces_case_and_escaped_backticks() {
    let ty = parse_type("STRUCT<`my field` INTEGER, `a``b` STRING, lower DOUBLE>").unwrap();
    let KsqlType::Struct(fields) = &ty else { panic!("not a struct") };
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["my field", "a`b", "lower"]);
    assert_eq!(ty.to_string(), "STRUCT<`my field` INTEGER, `a``b` STRING, `lower` DOUBLE>");
}

#[test]
fn parses_pull_query_header_schema_with_key_markers() {
    let schema = "`ID` STRING KEY, `WINDOWSTART` BIGINT KEY, `WINDOWEND` BIGINT KEY, `ROWTIME` BIGINT, \
                  `HEAD` BYTES HEADER('abc'), `HS` ARRAY<STRUCT<`KEY` STRING, `VALUE` BYTES>> HEADERS";
    let columns = parse_schema(schema).unwrap();
    let summary: Vec<(&str, ColumnRole)> = columns.iter().map(|c| (c.name.as_str(), c.role.clone())).collect();
    assert_eq!(
        summary,
        [
            ("ID", ColumnRole::Key),
            ("WINDOWSTART", ColumnRole::Key),
            ("WINDOWEND", ColumnRole::Key),
            ("ROWTIME", ColumnRole::Value),
            ("HEAD", ColumnRole::Header("abc".into())),
            ("HS", ColumnRole::Headers),
        ]
    );
    assert_eq!(format_schema(&columns), schema);
    assert!(parse_schema("").unwrap().is_empty());
}

#[test]
fn rejects_bad_types_with_position() {
    for bad in [
        "",
        "FLOAT",
        "ARRAY<INTEGER",
        "MAP<STRING>",
        "DECIMAL(2, 3)",
        "DECIMAL(0, 0)",
        "DECIMAL(77, 1)",
        "STRUCT<`A` INTEGER",
        "INTEGER INTEGER",
        "STRUCT<`A INTEGER>",
    ] {
        let error = parse_type(bad).unwrap_err();
        assert!(error.to_string().contains("invalid ksqlDB type"), "{bad}: {error}");
    }
    assert!(parse_schema("`A` INTEGER PRIMARY").is_err());
    assert!(columns_from_metadata(&["A".into()], &[]).is_err());
}

#[test]
fn maps_to_arrow_types() {
    use arrow::datatypes::{DataType as D, TimeUnit};
    assert_eq!(KsqlType::Timestamp.to_arrow(), D::Timestamp(TimeUnit::Millisecond, Some("UTC".into())));
    assert_eq!(KsqlType::Time.to_arrow(), D::Time32(TimeUnit::Millisecond));
    assert_eq!(KsqlType::Date.to_arrow(), D::Date32);
    assert_eq!(KsqlType::Bytes.to_arrow(), D::Binary);
    assert_eq!(parse_type("DECIMAL(10, 2)").unwrap().to_arrow(), D::Decimal128(10, 2));
    assert_eq!(parse_type("DECIMAL(60, 2)").unwrap().to_arrow(), D::Decimal256(60, 2));
    let map = parse_type("MAP<INTEGER, STRING>").unwrap().to_arrow();
    let D::Map(entries, sorted) = map else { panic!("not a map") };
    assert!(!sorted);
    let D::Struct(kv) = entries.data_type() else { panic!("entries not a struct") };
    assert_eq!(kv[0].data_type(), &D::Int32);
    assert!(!kv[0].is_nullable());
    let schema = arrow_schema(&parse_schema("`a b` DECIMAL(4, 2)").unwrap());
    assert_eq!(schema.field(0).name(), "a b");
    assert_eq!(schema.field(0).metadata()[KSQL_TYPE_METADATA_KEY], "DECIMAL(4, 2)");
}

fn name_strategy() -> impl Strategy<Value = String> {
    // Names with spaces, punctuation, case and backticks, as ksqlDB allows when quoted.
    "[A-Za-z_ `,<>()'][A-Za-z0-9_ `,<>()']{0,8}"
}

fn type_strategy() -> impl Strategy<Value = KsqlType> {
    let leaf = prop_oneof![
        Just(KsqlType::Boolean),
        Just(KsqlType::Integer),
        Just(KsqlType::Bigint),
        Just(KsqlType::Double),
        Just(KsqlType::String),
        Just(KsqlType::Bytes),
        Just(KsqlType::Timestamp),
        Just(KsqlType::Date),
        Just(KsqlType::Time),
        (1u8..=76)
            .prop_flat_map(|p| (Just(p), 0..=p))
            .prop_map(|(precision, scale)| KsqlType::Decimal { precision, scale }),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| KsqlType::Array(Box::new(t))),
            (inner.clone(), inner.clone()).prop_map(|(k, v)| KsqlType::Map(Box::new(k), Box::new(v))),
            prop::collection::vec((name_strategy(), inner), 0..4).prop_map(|fields| {
                KsqlType::Struct(fields.into_iter().map(|(name, ty)| StructField { name, ty }).collect())
            }),
        ]
    })
}

proptest! {
    #[test]
    fn printing_then_parsing_gives_the_same_type(ty in type_strategy()) {
        let printed = ty.to_string();
        prop_assert_eq!(parse_type(&printed).unwrap(), ty);
    }

    #[test]
    fn printing_then_parsing_a_schema_gives_the_same_columns(
        columns in prop::collection::vec((name_strategy(), type_strategy(), any::<bool>()), 0..5)
    ) {
        let columns: Vec<Column> = columns.into_iter().map(|(name, ty, key)| Column {
            name, ty, role: if key { ColumnRole::Key } else { ColumnRole::Value },
        }).collect();
        prop_assert_eq!(parse_schema(&format_schema(&columns)).unwrap(), columns);
    }
}

proptest! {
    /// Arbitrary text never panics the type and schema parsers.
    #[test]
    fn arbitrary_text_never_panics_the_parsers(text in "\\PC{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_type(&text);
        let _ = parse_schema(&text);
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = parse_type(&lossy);
        let _ = parse_schema(&lossy);
    }
}
