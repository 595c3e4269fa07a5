//! Property: random values of random types, rendered as ksqlDB writes them (top-level forms
//! outside structs, integer/double forms inside structs, varied number spellings and string
//! escapes), decode back to the same values.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::DateTime;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::schema::types::{Column, StructField};

fn leaf_type() -> impl Strategy<Value = KsqlType> {
    prop_oneof![
        Just(KsqlType::Boolean),
        Just(KsqlType::Integer),
        Just(KsqlType::Bigint),
        Just(KsqlType::Double),
        (1u8..=76)
            .prop_flat_map(|p| (Just(p), 0..=p))
            .prop_map(|(precision, scale)| KsqlType::Decimal { precision, scale }),
        Just(KsqlType::String),
        Just(KsqlType::Bytes),
        Just(KsqlType::Timestamp),
        Just(KsqlType::Date),
        Just(KsqlType::Time),
    ]
}

fn key_type() -> impl Strategy<Value = KsqlType> {
    prop_oneof![
        Just(KsqlType::String),
        Just(KsqlType::Integer),
        Just(KsqlType::Bigint),
        Just(KsqlType::Boolean),
        Just(KsqlType::Date),
    ]
}

fn any_type() -> impl Strategy<Value = KsqlType> {
    leaf_type().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|item| KsqlType::Array(Box::new(item))),
            (key_type(), inner.clone()).prop_map(|(key, value)| KsqlType::Map(Box::new(key), Box::new(value))),
            prop::collection::vec(inner, 0..4).prop_map(|types| KsqlType::Struct(
                types.into_iter().enumerate().map(|(i, ty)| StructField { name: format!("F{i}"), ty }).collect()
            )),
        ]
    })
}

fn digits(precision: u8) -> impl Strategy<Value = V> {
    (prop::collection::vec(0u8..10, 1..=precision as usize), any::<bool>()).prop_map(|(digits, negative)| {
        let text: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        let text = text.trim_start_matches('0');
        match (text.is_empty(), negative) {
            (true, _) => dec("0"),
            (false, true) => dec(&format!("-{text}")),
            (false, false) => dec(text),
        }
    })
}

fn non_null(ty: &KsqlType) -> BoxedStrategy<V> {
    match ty {
        KsqlType::Boolean => any::<bool>().prop_map(V::Bool).boxed(),
        KsqlType::Integer => any::<i32>().prop_map(V::Int).boxed(),
        KsqlType::Bigint => any::<i64>().prop_map(V::Big).boxed(),
        KsqlType::Double => any::<f64>().prop_map(V::Double).boxed(),
        KsqlType::Decimal { precision, .. } => digits(*precision).boxed(),
        KsqlType::String => any::<String>().prop_map(V::Str).boxed(),
        KsqlType::Bytes => prop::collection::vec(any::<u8>(), 0..12).prop_map(V::Bytes).boxed(),
        KsqlType::Timestamp => (-62_135_596_800_000i64..253_402_300_800_000).prop_map(V::Ts).boxed(),
        KsqlType::Date => (-719_162i32..2_932_897).prop_map(V::Date).boxed(),
        KsqlType::Time => (0i32..86_400_000).prop_map(V::Time).boxed(),
        KsqlType::Array(item) => prop::collection::vec(value(item), 0..4).prop_map(V::List).boxed(),
        KsqlType::Map(key, item) => prop::collection::vec((non_null(key), value(item)), 0..4).prop_map(V::Map).boxed(),
        KsqlType::Struct(fields) => {
            fields.iter().map(|field| value(&field.ty)).collect::<Vec<_>>().prop_map(V::Struct).boxed()
        }
    }
}

fn value(ty: &KsqlType) -> BoxedStrategy<V> {
    prop_oneof![1 => Just(V::Null), 5 => non_null(ty)].boxed()
}

fn rows() -> impl Strategy<Value = (Vec<Column>, Vec<Vec<V>>, u64)> {
    prop::collection::vec(any_type(), 1..4).prop_flat_map(|types| {
        let row: Vec<_> = types.iter().map(value).collect();
        let columns =
            types.iter().enumerate().map(|(i, ty)| Column::new(format!("C{i}"), ty.clone())).collect::<Vec<_>>();
        (Just(columns), prop::collection::vec(row, 1..4), any::<u64>())
    })
}

/// Writes values as ksqlDB would, with spelling choices drawn from `rng`.
struct Renderer {
    rng: StdRng,
    out: String,
}

impl Renderer {
    fn ws(&mut self) {
        if self.rng.random_ratio(1, 8) {
            self.out.push(' ');
        }
    }

    fn string(&mut self, text: &str) {
        let escape_all = self.rng.random_bool(0.5);
        self.out.push('"');
        for ch in text.chars() {
            match ch {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c if (c as u32) < 0x20 || (escape_all && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn decimal(&mut self, unscaled: &str, scale: u8, in_struct: bool) {
        let (sign, digits) = match unscaled.strip_prefix('-') {
            Some(digits) => ("-", digits),
            None => ("", unscaled),
        };
        let scale = scale as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        let form = if in_struct { self.rng.random_range(0..3) } else { 0 };
        match form {
            // BigDecimal plain: scale kept.
            0 if scale == 0 => self.out.push_str(&format!("{sign}{int}")),
            0 => self.out.push_str(&format!("{sign}{int}.{frac}")),
            // A double's text: trailing zeros gone.
            1 => {
                let frac = frac.trim_end_matches('0');
                let frac = if frac.is_empty() { "0" } else { frac };
                self.out.push_str(&format!("{sign}{int}.{frac}"));
            }
            // Scientific: d.dddE±x.
            _ => {
                let all = format!("{int}{frac}");
                let all = all.trim_start_matches('0');
                if all.is_empty() {
                    self.out.push_str("0.0E0");
                } else {
                    let exponent = all.len() as i64 - 1 - scale as i64;
                    let (head, tail) = all.split_at(1);
                    let tail = if tail.is_empty() { "0" } else { tail };
                    self.out.push_str(&format!("{sign}{head}.{tail}E{exponent:+}"));
                }
            }
        }
    }

    fn value(&mut self, ty: &KsqlType, value: &V, in_struct: bool) {
        self.ws();
        match (ty, value) {
            (_, V::Null) => self.out.push_str("null"),
            (_, V::Bool(b)) => self.out.push_str(&b.to_string()),
            (_, V::Int(n)) => self.out.push_str(&n.to_string()),
            (_, V::Big(n)) => self.out.push_str(&n.to_string()),
            (_, V::Double(x)) if x.is_nan() => self.out.push_str("\"NaN\""),
            (_, V::Double(x)) if x.is_infinite() => {
                self.out.push_str(if *x > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" })
            }
            (_, V::Double(x)) => {
                let text = if self.rng.random_bool(0.5) { format!("{x:?}") } else { format!("{x:E}") };
                self.out.push_str(&text);
            }
            (KsqlType::Decimal { scale, .. }, V::Dec(unscaled)) => self.decimal(unscaled, *scale, in_struct),
            (_, V::Str(text)) => self.string(text),
            (_, V::Bytes(bytes)) => self.string(&STANDARD.encode(bytes)),
            (_, V::Ts(ms)) if in_struct => self.out.push_str(&ms.to_string()),
            (_, V::Ts(ms)) => {
                let at = DateTime::from_timestamp_millis(*ms).unwrap().naive_utc();
                self.string(&at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
            }
            (_, V::Date(days)) if in_struct => self.out.push_str(&days.to_string()),
            (_, V::Date(days)) => self.string(&date_text(*days)),
            (_, V::Time(ms)) if in_struct => self.out.push_str(&ms.to_string()),
            (_, V::Time(ms)) => {
                let (h, m, sec, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
                let text = match (sec, milli) {
                    (0, 0) => format!("{h:02}:{m:02}"),
                    (_, 0) => format!("{h:02}:{m:02}:{sec:02}"),
                    _ => format!("{h:02}:{m:02}:{sec:02}.{milli:03}"),
                };
                self.string(&text)
            }
            (KsqlType::Array(item), V::List(items)) => {
                self.out.push('[');
                for (i, element) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(item, element, in_struct);
                }
                self.ws();
                self.out.push(']');
            }
            (KsqlType::Map(key_ty, item), V::Map(entries)) => {
                self.out.push('{');
                for (i, (key, element)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let key_text = match key {
                        V::Str(text) => text.clone(),
                        V::Date(days) if !in_struct => date_text(*days),
                        other => {
                            let mut inner = Renderer { rng: StdRng::seed_from_u64(0), out: String::new() };
                            inner.value(key_ty, other, true);
                            inner.out.trim().to_string()
                        }
                    };
                    self.ws();
                    self.string(&key_text);
                    self.out.push(':');
                    self.value(item, element, in_struct);
                }
                self.out.push('}');
            }
            (KsqlType::Struct(fields), V::Struct(values)) => {
                let mut order: Vec<usize> = (0..fields.len()).collect();
                if self.rng.random_bool(0.3) {
                    order.reverse();
                }
                self.out.push('{');
                let mut first = true;
                for i in order {
                    if values[i] == V::Null && self.rng.random_bool(0.5) {
                        continue;
                    }
                    if !first {
                        self.out.push(',');
                    }
                    first = false;
                    let name =
                        if self.rng.random_bool(0.2) { fields[i].name.to_lowercase() } else { fields[i].name.clone() };
                    self.string(&name);
                    self.out.push(':');
                    self.value(&fields[i].ty, &values[i], true);
                }
                self.out.push('}');
            }
            (ty, value) => panic!("generated {value:?} for {ty}"),
        }
        self.ws();
    }
}

fn date_text(days: i32) -> String {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    (epoch + chrono::Duration::days(i64::from(days))).format("%Y-%m-%d").to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rendered_rows_decode_to_the_original_values((columns, rows, seed) in rows()) {
        let mut renderer = Renderer { rng: StdRng::seed_from_u64(seed), out: String::new() };
        let mut decoder = RowDecoder::new(&columns);
        for row in &rows {
            renderer.out.clear();
            renderer.out.push('[');
            for (i, (column, value)) in columns.iter().zip(row).enumerate() {
                if i > 0 {
                    renderer.out.push(',');
                }
                renderer.value(&column.ty, value, false);
            }
            renderer.out.push(']');
            decoder.append(renderer.out.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let batch = decoder.finish();
        prop_assert_eq!(batch.schema(), decoder.schema());
        prop_assert_eq!(rows_of(&batch), rows);
    }
}
