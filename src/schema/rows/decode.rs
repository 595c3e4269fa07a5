//! One JSON value → one builder slot, by the builder's ksqlDB type.
//!
//! Each function appends exactly one slot on success. On failure it may leave partial
//! values behind; [`super::RowDecoder`] undoes the whole row by truncating the builders.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::builders::{close_offset, Builder, Values};
use super::json::Cursor;
use super::scalars::{
    parse_date, parse_decimal128, parse_decimal256, parse_f64, parse_i32, parse_i64, parse_special_f64, parse_time,
    parse_timestamp, time_from_millis,
};
use super::{Fail, Segment};

/// A JSON integer token's text; fractions and exponents are refused.
fn integer<'a>(cur: &mut Cursor<'a>) -> Result<&'a [u8], Fail> {
    let number = cur.number()?;
    if number.is_integer {
        Ok(number.text)
    } else {
        Err(Fail::new("expected an integer, found a fractional number"))
    }
}

fn base64_into(text: &[u8], data: &mut Vec<u8>) -> Result<(), Fail> {
    STANDARD.decode_vec(text, data).map_err(|error| Fail::new(format!("invalid base64: {error}")))
}

/// Decodes the next JSON value into one slot of `builder`.
pub(super) fn decode_value(builder: &mut Builder, cur: &mut Cursor<'_>) -> Result<(), Fail> {
    let first = cur.peek_value()?;
    if first == b'n' {
        cur.literal(b"null")?;
        builder.push_null();
        return Ok(());
    }
    let is_string = first == b'"';
    let start = builder.len();
    match &mut builder.values {
        Values::Boolean(values) => values.push(cur.boolean()?),
        Values::Integer(values) => values.push(parse_i32(integer(cur)?)?),
        Values::Bigint(values) => values.push(parse_i64(integer(cur)?)?),
        Values::Double(values) => {
            values.push(if is_string { parse_special_f64(cur.string()?)? } else { parse_f64(cur.number()?.text)? })
        }
        Values::Decimal128 { values, precision, scale } => {
            values.push(parse_decimal128(cur.number()?.text, *precision, *scale)?)
        }
        Values::Decimal256 { values, precision, scale } => {
            values.push(parse_decimal256(cur.number()?.text, *precision, *scale)?)
        }
        Values::String(bytes) => {
            bytes.data.extend_from_slice(cur.string()?);
            bytes.close_slot()?;
        }
        Values::Bytes(bytes) => {
            base64_into(cur.string()?, &mut bytes.data)?;
            bytes.close_slot()?;
        }
        Values::Timestamp(values) => {
            values.push(if is_string { parse_timestamp(cur.string()?)? } else { parse_i64(integer(cur)?)? })
        }
        Values::Date(values) => values.push(if is_string {
            parse_date(cur.string()?)?
        } else {
            parse_i32(integer(cur)?).map_err(|_| Fail::new("DATE out of range"))?
        }),
        Values::Time(values) => values.push(if is_string {
            parse_time(cur.string()?)?
        } else {
            time_from_millis(parse_i64(integer(cur)?)?)?
        }),
        Values::List { offsets, item, .. } => {
            expect_open(cur, b'[', "an array")?;
            if !cur.eat(b']') {
                let mut index = 0;
                loop {
                    decode_value(item, cur).map_err(|fail| fail.at(Segment::Index(index)))?;
                    index += 1;
                    if cur.eat(b']') {
                        break;
                    }
                    cur.expect(b',')?;
                }
            }
            close_offset(offsets, item.len())?;
        }
        Values::Map { offsets, keys, values, .. } => {
            expect_open(cur, b'{', "an object")?;
            if !cur.eat(b'}') {
                loop {
                    let (key_start, key_end, escaped) = cur.string_span()?;
                    let raw_key = cur.slice(key_start, key_end);
                    let at_key = |fail: Fail| fail.at(Segment::Key(lossy(raw_key)));
                    let key = cur.text(key_start, key_end, escaped)?;
                    decode_key(keys, key).map_err(at_key)?;
                    cur.expect(b':')?;
                    decode_value(values, cur).map_err(at_key)?;
                    if cur.eat(b'}') {
                        break;
                    }
                    cur.expect(b',')?;
                }
            }
            close_offset(offsets, keys.len())?;
        }
        Values::Struct { fields, names, .. } => {
            expect_open(cur, b'{', "an object")?;
            if !cur.eat(b'}') {
                loop {
                    let name = cur.string()?;
                    let index = find_field(names, name)
                        .ok_or_else(|| Fail::new(format!("unknown struct field `{}`", lossy(name))))?;
                    let at_field = |fail: Fail| fail.at(Segment::Field(names[index].clone()));
                    cur.expect(b':')?;
                    let field = &mut fields[index];
                    if field.len() > start {
                        return Err(at_field(Fail::new("duplicate struct field")));
                    }
                    decode_value(field, cur).map_err(at_field)?;
                    if cur.eat(b'}') {
                        break;
                    }
                    cur.expect(b',')?;
                }
            }
            // Fields absent from the object are null.
            for field in fields.iter_mut() {
                if field.len() == start {
                    field.push_null();
                }
            }
        }
    }
    builder.validity.push(true);
    Ok(())
}

fn expect_open(cur: &mut Cursor<'_>, byte: u8, what: &str) -> Result<(), Fail> {
    if cur.eat(byte) {
        Ok(())
    } else {
        Err(Fail::new(format!("expected {what}, found {}", cur.describe_next())))
    }
}

/// A struct field by name: exact case first, then ASCII case-insensitive.
fn find_field(names: &[String], name: &[u8]) -> Option<usize> {
    names
        .iter()
        .position(|candidate| candidate.as_bytes() == name)
        .or_else(|| names.iter().position(|candidate| candidate.as_bytes().eq_ignore_ascii_case(name)))
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Converts a map key (always a JSON string) to the key type. Keys of string-shaped types
/// are the value text itself; other keys hold the JSON text of the value (`"1"`, `"true"`).
fn decode_key(keys: &mut Builder, text: &[u8]) -> Result<(), Fail> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let looks_integer = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
    match &mut keys.values {
        Values::String(bytes) => {
            bytes.data.extend_from_slice(text);
            bytes.close_slot()?;
        }
        Values::Bytes(bytes) => {
            base64_into(text, &mut bytes.data)?;
            bytes.close_slot()?;
        }
        Values::Timestamp(values) if looks_integer => values.push(parse_i64(text)?),
        Values::Timestamp(values) => values.push(parse_timestamp(text)?),
        Values::Date(values) if looks_integer => values.push(parse_i32(text)?),
        Values::Date(values) => values.push(parse_date(text)?),
        Values::Time(values) if looks_integer => values.push(time_from_millis(parse_i64(text)?)?),
        Values::Time(values) => values.push(parse_time(text)?),
        Values::Double(values) if matches!(text, b"NaN" | b"Infinity" | b"-Infinity") => {
            values.push(parse_special_f64(text)?)
        }
        _ => {
            if text == b"null" {
                return Err(Fail::new("map key is null"));
            }
            let mut sub = Cursor::new(text, Vec::new());
            decode_value(keys, &mut sub)?;
            if !sub.at_end() {
                return Err(Fail::new("invalid map key: trailing text"));
            }
            return Ok(());
        }
    }
    keys.validity.push(true);
    Ok(())
}
