//! Typed column values and their JSON text exactly as ksqlDB 0.29's `ApiJsonMapper` writes it.
//!
//! Rows are rendered once when produced (see [`super::source`]); serving a query then only
//! copies text, which is what lets the simulator stream well over a million rows per second.

use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate};

/// One column value. The variant must match the column's [`crate::schema::KsqlType`]; the
/// simulator does not coerce (a test double renders what it is given).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i32),
    Bigint(i64),
    Double(f64),
    /// `unscaled × 10^-scale`, written in plain notation with the scale kept (`4.50`).
    Decimal {
        unscaled: i128,
        scale: u8,
    },
    /// A DECIMAL too wide for i128 (precision up to 76), as plain text (`-123.4500`); written
    /// verbatim. Build it with [`Value::decimal`], which validates the text.
    DecimalText(String),
    String(String),
    Bytes(Vec<u8>),
    /// Milliseconds since the epoch, UTC.
    Timestamp(i64),
    /// Days since the epoch.
    Date(i32),
    /// Milliseconds since midnight.
    Time(i32),
    Array(Vec<Value>),
    /// Entries in the order given; keys are written as JSON strings.
    Map(Vec<(Value, Value)>),
    /// Fields in the order given, names as given.
    Struct(Vec<(String, Value)>),
}

impl Value {
    /// Shorthand for a STRING value.
    pub fn string(text: impl Into<String>) -> Self {
        Value::String(text.into())
    }

    /// Parses a plain decimal literal (`"-12.340"`) keeping its scale. `None` if malformed.
    pub fn decimal(text: &str) -> Option<Self> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let scale = u8::try_from(frac_part.len()).ok()?;
        let joined = format!("{int_part}{frac_part}");
        if joined.is_empty() {
            return Some(Value::Decimal { unscaled: 0, scale });
        }
        match joined.parse::<i128>() {
            Ok(magnitude) => Some(Value::Decimal { unscaled: if negative { -magnitude } else { magnitude }, scale }),
            Err(_) if joined.len() <= 76 => {
                let int_part = if int_part.is_empty() { "0" } else { int_part };
                let sign = if negative { "-" } else { "" };
                let point = if frac_part.is_empty() { "" } else { "." };
                Some(Value::DecimalText(format!("{sign}{int_part}{point}{frac_part}")))
            }
            Err(_) => None,
        }
    }

    /// The JSON text of this value as a top-level column.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }

    /// Appends the JSON text of this value as a top-level column (or an element of a
    /// top-level ARRAY/MAP, which keep the top-level forms).
    pub fn render(&self, out: &mut String) {
        self.render_in(out, Mode::TopLevel);
    }

    fn render_in(&self, out: &mut String, mode: Mode) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Integer(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Bigint(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Double(d) => write_json_double(out, *d),
            Value::Decimal { unscaled, scale } => match mode {
                Mode::TopLevel => write_plain_decimal(out, *unscaled, *scale),
                Mode::InStruct => write_connect_decimal(out, *unscaled, *scale),
            },
            Value::DecimalText(text) => match mode {
                Mode::TopLevel => out.push_str(text),
                Mode::InStruct => match text.parse::<f64>() {
                    Ok(d) if text.contains('.') => write_json_double(out, d),
                    _ => out.push_str(text),
                },
            },
            Value::String(s) => write_json_string(out, s),
            Value::Bytes(bytes) => {
                out.push('"');
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
                out.push('"');
            }
            Value::Timestamp(ms) => match mode {
                Mode::TopLevel => {
                    out.push('"');
                    write_timestamp(out, *ms);
                    out.push('"');
                }
                Mode::InStruct => {
                    let _ = write!(out, "{ms}");
                }
            },
            Value::Date(days) => match mode {
                Mode::TopLevel => {
                    out.push('"');
                    write_date(out, *days);
                    out.push('"');
                }
                Mode::InStruct => {
                    let _ = write!(out, "{days}");
                }
            },
            Value::Time(ms) => match mode {
                Mode::TopLevel => {
                    out.push('"');
                    write_time(out, *ms);
                    out.push('"');
                }
                Mode::InStruct => {
                    let _ = write!(out, "{ms}");
                }
            },
            Value::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.render_in(out, mode);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                // Kafka Connect's JsonConverter writes maps with non-string keys as arrays of
                // [key, value] pairs; that form only matters inside a struct.
                let string_keys = entries.iter().all(|(k, _)| matches!(k, Value::String(_)));
                if mode == Mode::InStruct && !string_keys {
                    out.push('[');
                    for (index, (key, value)) in entries.iter().enumerate() {
                        if index > 0 {
                            out.push(',');
                        }
                        out.push('[');
                        key.render_in(out, mode);
                        out.push(',');
                        value.render_in(out, mode);
                        out.push(']');
                    }
                    out.push(']');
                    return;
                }
                out.push('{');
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    key.render_key(out, mode);
                    out.push(':');
                    value.render_in(out, mode);
                }
                out.push('}');
            }
            Value::Struct(fields) => {
                out.push('{');
                for (index, (name, value)) in fields.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write_json_string(out, name);
                    out.push(':');
                    value.render_in(out, Mode::InStruct);
                }
                out.push('}');
            }
        }
    }

    /// A map key: always a JSON string (Jackson writes the key's `toString`).
    fn render_key(&self, out: &mut String, mode: Mode) {
        match self {
            Value::String(s) => write_json_string(out, s),
            other => {
                let mut text = String::new();
                other.render_in(&mut text, mode);
                let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
                write_json_string(out, unquoted.unwrap_or(&text));
            }
        }
    }
}

/// Where a value sits: ksqlDB writes STRUCT contents through Kafka Connect's JsonConverter and
/// re-reads them with a plain mapper, so temporal values become numbers there and decimals
/// become doubles (read from ksqlDB 0.29's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    TopLevel,
    InStruct,
}

/// Writes a string with JSON escaping (control characters as `\uXXXX` or short escapes).
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (index, ch) in s.char_indices() {
        let escape = match ch {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{08}' => "\\b",
            '\u{0c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..index]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04X}", ch as u32);
        } else {
            out.push_str(escape);
        }
        start = index + ch.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A DOUBLE as Jackson writes it: Java's `Double.toString`, with NaN and the infinities
/// quoted (Jackson's default `QUOTE_NON_NUMERIC_NUMBERS`).
pub fn write_json_double(out: &mut String, d: f64) {
    if d.is_nan() {
        out.push_str("\"NaN\"");
    } else if d.is_infinite() {
        out.push_str(if d > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else {
        write_java_double(out, d);
    }
}

/// Java's `Double.toString` for a finite value: plain notation with at least one fraction
/// digit for 1e-3 <= |d| < 1e7, otherwise `d.dddE±n`; shortest round-trip digits.
pub fn write_java_double(out: &mut String, d: f64) {
    if d == 0.0 {
        out.push_str(if d.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits: "-4.2e-4", "1e10".
    let sci = format!("{d:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    let magnitude = d.abs();
    if (1e-3..1e7).contains(&magnitude) {
        if exponent >= 0 {
            let int_len = exponent as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            for _ in 0..(-exponent - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if digits.len() > 1 { &digits[1..] } else { "0" });
        let _ = write!(out, "E{exponent}");
    }
}

/// `BigDecimal.toPlainString()`: the unscaled digits with a point `scale` digits from the end.
fn write_plain_decimal(out: &mut String, unscaled: i128, scale: u8) {
    if unscaled < 0 {
        out.push('-');
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    } else {
        out.push_str("0.");
        for _ in digits.len()..scale {
            out.push('0');
        }
        out.push_str(&digits);
    }
}

/// A decimal inside a struct: JsonConverter writes the plain number, and the re-read turns a
/// number with a fraction into a double (`5.00` → `5.0`) and one without into an integer.
fn write_connect_decimal(out: &mut String, unscaled: i128, scale: u8) {
    if scale == 0 {
        let _ = write!(out, "{unscaled}");
        return;
    }
    let mut plain = String::new();
    write_plain_decimal(&mut plain, unscaled, scale);
    match plain.parse::<f64>() {
        Ok(d) => write_json_double(out, d),
        Err(_) => out.push_str(&plain),
    }
}

/// `yyyy-MM-ddTHH:mm:ss.SSS` in UTC.
pub fn write_timestamp(out: &mut String, ms: i64) {
    match DateTime::from_timestamp_millis(ms) {
        Some(at) => {
            let _ = write!(out, "{}", at.format("%Y-%m-%dT%H:%M:%S%.3f"));
        }
        None => {
            let _ = write!(out, "{ms}");
        }
    }
}

/// `yyyy-MM-dd` (`LocalDate.toString`).
pub fn write_date(out: &mut String, days: i32) {
    let date = NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(i64::from(days))));
    match date {
        Some(date) => {
            let _ = write!(out, "{}", date.format("%Y-%m-%d"));
        }
        None => {
            let _ = write!(out, "{days}");
        }
    }
}

/// `LocalTime.ofSecondOfDay(ms / 1000).toString()`: `HH:mm`, or `HH:mm:ss` when the seconds
/// are not zero; milliseconds are dropped.
pub fn write_time(out: &mut String, ms: i32) {
    let seconds = (ms / 1000).rem_euclid(86_400);
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if s == 0 {
        let _ = write!(out, "{h:02}:{m:02}");
    } else {
        let _ = write!(out, "{h:02}:{m:02}:{s:02}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: Value) -> String {
        value.to_json()
    }

    #[test]
    fn scalars_render_like_jackson() {
        assert_eq!(json(Value::Null), "null");
        assert_eq!(json(Value::Boolean(true)), "true");
        assert_eq!(json(Value::Boolean(false)), "false");
        assert_eq!(json(Value::Integer(-42)), "-42");
        assert_eq!(json(Value::Bigint(123456789123456789)), "123456789123456789");
        assert_eq!(json(Value::string("a\"b\\c\nd\u{1}é")), r#""a\"b\\c\nd\u0001é""#);
        assert_eq!(json(Value::Bytes(vec![0x21])), r#""IQ==""#);
        assert_eq!(json(Value::Bytes(vec![0, 1, 2])), r#""AAEC""#);
    }

    #[test]
    fn doubles_render_like_java_double_to_string() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (15207.0, "15207.0"),
            (4.2e-4, "4.2E-4"),
            (1.0e10, "1.0E10"),
            (1.2, "1.2"),
            (-0.5, "-0.5"),
            (0.001, "0.001"),
            (9999999.0, "9999999.0"),
            (10000000.0, "1.0E7"),
            (123456789.125, "1.23456789125E8"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e-300, "1.0E-300"),
            (-2.5e-7, "-2.5E-7"),
            (100.25, "100.25"),
        ];
        for (value, expected) in cases {
            assert_eq!(json(Value::Double(*value)), *expected, "{value:e}");
        }
        assert_eq!(json(Value::Double(f64::NAN)), r#""NaN""#);
        assert_eq!(json(Value::Double(f64::INFINITY)), r#""Infinity""#);
        assert_eq!(json(Value::Double(f64::NEG_INFINITY)), r#""-Infinity""#);
    }

    #[test]
    fn decimals_render_plain_with_scale_kept() {
        assert_eq!(json(Value::Decimal { unscaled: 450, scale: 2 }), "4.50");
        assert_eq!(json(Value::Decimal { unscaled: 500, scale: 2 }), "5.00");
        assert_eq!(json(Value::Decimal { unscaled: -5, scale: 2 }), "-0.05");
        assert_eq!(json(Value::Decimal { unscaled: 12, scale: 0 }), "12");
        assert_eq!(json(Value::Decimal { unscaled: 0, scale: 3 }), "0.000");
        assert_eq!(json(Value::decimal("9999999999999999.1234").unwrap()), "9999999999999999.1234");
        assert_eq!(json(Value::decimal("-1.2000").unwrap()), "-1.2000");
        assert_eq!(Value::decimal("1.x"), None);
        let wide = "-1234567890123456789012345678901234567890.0100";
        assert_eq!(Value::decimal(wide), Some(Value::DecimalText(wide.to_string())));
        assert_eq!(json(Value::decimal(wide).unwrap()), wide);
        assert_eq!(json(Value::decimal(".5").unwrap()), "0.5");
    }

    #[test]
    fn temporal_values_render_as_strings() {
        assert_eq!(json(Value::Timestamp(1)), r#""1970-01-01T00:00:00.001""#);
        assert_eq!(json(Value::Timestamp(0)), r#""1970-01-01T00:00:00.000""#);
        assert_eq!(json(Value::Timestamp(1_700_000_000_123)), r#""2023-11-14T22:13:20.123""#);
        assert_eq!(json(Value::Timestamp(-1)), r#""1969-12-31T23:59:59.999""#);
        assert_eq!(json(Value::Date(0)), r#""1970-01-01""#);
        assert_eq!(json(Value::Date(19_000)), r#""2022-01-08""#);
        assert_eq!(json(Value::Time(0)), r#""00:00""#);
        assert_eq!(json(Value::Time(3_600_000 + 60_000 + 999)), r#""01:01""#);
        assert_eq!(json(Value::Time(45_296_789)), r#""12:34:56""#);
    }

    #[test]
    fn containers_render_as_json() {
        let array = Value::Array(vec![Value::Double(1.5), Value::Null, Value::Timestamp(0)]);
        assert_eq!(json(array), r#"[1.5,null,"1970-01-01T00:00:00.000"]"#);
        let map = Value::Map(vec![
            (Value::Integer(1), Value::Array(vec![Value::string("a"), Value::string("b")])),
            (Value::string("k"), Value::Decimal { unscaled: 450, scale: 2 }),
        ]);
        assert_eq!(json(map), r#"{"1":["a","b"],"k":4.50}"#);
        let nested = Value::Struct(vec![
            ("OrderId".to_string(), Value::Integer(0)),
            ("At".to_string(), Value::Timestamp(5)),
            ("Day".to_string(), Value::Date(2)),
            ("Price".to_string(), Value::Decimal { unscaled: 500, scale: 2 }),
            ("Raw".to_string(), Value::Bytes(vec![0x21])),
            ("M".to_string(), Value::Map(vec![(Value::Integer(1), Value::Boolean(true))])),
        ]);
        assert_eq!(json(nested), r#"{"OrderId":0,"At":5,"Day":2,"Price":5.0,"Raw":"IQ==","M":[[1,true]]}"#);
        assert_eq!(json(Value::Struct(vec![])), "{}");
    }
}
