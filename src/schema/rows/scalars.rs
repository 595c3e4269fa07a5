//! Text → scalar conversions for the ksqlDB value forms (as ksqlDB 0.29 writes them).
//!
//! Everything works on the exact text of the JSON token: integers and decimals never go
//! through `f64`, so `BIGINT` keeps all 64 bits and `DECIMAL` keeps every digit.

use arrow::datatypes::i256;
use chrono::{Datelike, NaiveDate};

use super::Fail;

/// Milliseconds in a day.
pub(super) const MS_PER_DAY: i64 = 86_400_000;

/// Parses a JSON integer token's text as an i64 over the full range, `i64::MIN` included.
pub(crate) fn parse_i64(text: &[u8]) -> Result<i64, Fail> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(Fail::new("expected an integer"));
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(Fail::new("expected an integer"));
        }
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(digit - b'0')))
            .ok_or_else(|| Fail::new("integer out of the BIGINT range"))?;
    }
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return Err(Fail::new("integer out of the BIGINT range"));
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| Fail::new("integer out of the BIGINT range"))
    }
}

pub(super) fn parse_i32(text: &[u8]) -> Result<i32, Fail> {
    let value = parse_i64(text).map_err(|_| Fail::new("integer out of the INTEGER range"))?;
    i32::try_from(value).map_err(|_| Fail::new("integer out of the INTEGER range"))
}

/// Parses a JSON number's text (any form) as a double.
pub(super) fn parse_f64(text: &[u8]) -> Result<f64, Fail> {
    std::str::from_utf8(text).ok().and_then(|text| text.parse::<f64>().ok()).ok_or_else(|| Fail::new("invalid number"))
}

/// The non-finite doubles Jackson writes as strings.
pub(super) fn parse_special_f64(text: &[u8]) -> Result<f64, Fail> {
    match text {
        b"NaN" => Ok(f64::NAN),
        b"Infinity" => Ok(f64::INFINITY),
        b"-Infinity" => Ok(f64::NEG_INFINITY),
        _ => Err(Fail::new("expected a number or \"NaN\", \"Infinity\", \"-Infinity\"")),
    }
}

/// A decimal number's text split into its parts.
struct DecimalText<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exponent: i64,
}

fn split_decimal(text: &[u8]) -> Result<DecimalText<'_>, Fail> {
    let invalid = || Fail::new("invalid decimal number");
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => (&rest[..at], parse_exponent(&rest[at + 1..]).ok_or_else(invalid)?),
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &mantissa[mantissa.len()..]),
    };
    let all_digits = |part: &[u8]| part.iter().all(u8::is_ascii_digit);
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(invalid());
    }
    Ok(DecimalText { negative, int, frac, exponent })
}

/// An exponent, clamped far outside any useful range so that arithmetic cannot overflow.
fn parse_exponent(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        value = (value * 10 + i64::from(digit - b'0')).min(1_000_000_000);
    }
    Some(if negative { -value } else { value })
}

/// Converts a decimal number's text (plain or exponent form) into the unscaled integer at
/// `scale`, digit by digit; `push` receives each digit of the unscaled magnitude, most
/// significant first. Fails when non-zero digits would be lost or the result needs more
/// than `precision` digits. Returns whether the number is negative.
fn rescale(text: &[u8], precision: u8, scale: u8, mut push: impl FnMut(u8)) -> Result<bool, Fail> {
    let parts = split_decimal(text)?;
    let digit_at = |i: usize| {
        if i < parts.int.len() {
            parts.int[i] - b'0'
        } else {
            parts.frac[i - parts.int.len()] - b'0'
        }
    };
    let total = parts.int.len() + parts.frac.len();
    // unscaled = digits × 10^shift
    let shift = parts.exponent - parts.frac.len() as i64 + i64::from(scale);
    let (kept, zeros) = if shift >= 0 {
        (total, shift as u64)
    } else {
        let dropped = usize::try_from(-shift).unwrap_or(usize::MAX).min(total);
        if (total - dropped..total).any(|i| digit_at(i) != 0) {
            return Err(Fail::new(format!("more fraction digits than the scale {scale}")));
        }
        (total - dropped, 0)
    };
    let Some(first) = (0..kept).find(|&i| digit_at(i) != 0) else {
        return Ok(false);
    };
    let significant = (kept - first) as u64 + zeros;
    if significant > u64::from(precision) {
        return Err(Fail::new(format!("value needs {significant} digits, more than the precision {precision}")));
    }
    (first..kept).for_each(|i| push(digit_at(i)));
    (0..zeros).for_each(|_| push(0));
    Ok(parts.negative)
}

/// The unscaled value of a `DECIMAL(precision <= 38, scale)`.
pub(super) fn parse_decimal128(text: &[u8], precision: u8, scale: u8) -> Result<i128, Fail> {
    let mut value: i128 = 0;
    // At most 38 digits: 10^38 - 1 < i128::MAX, so this cannot overflow.
    let negative = rescale(text, precision, scale, |digit| value = value * 10 + i128::from(digit))?;
    Ok(if negative { -value } else { value })
}

/// The unscaled value of a `DECIMAL(precision > 38, scale)`.
pub(super) fn parse_decimal256(text: &[u8], precision: u8, scale: u8) -> Result<i256, Fail> {
    let ten = i256::from_i128(10);
    let mut value = i256::ZERO;
    // At most 76 digits: 10^76 - 1 < i256::MAX, so wrapping never wraps.
    let negative = rescale(text, precision, scale, |digit| {
        value = value.wrapping_mul(ten).wrapping_add(i256::from_i128(i128::from(digit)));
    })?;
    Ok(if negative { value.wrapping_neg() } else { value })
}

/// Reads exactly `count` ASCII digits at `*pos`.
fn digits(text: &[u8], pos: &mut usize, count: usize) -> Option<u32> {
    let field = text.get(*pos..*pos + count)?;
    let mut value = 0u32;
    for &digit in field {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(digit - b'0');
    }
    *pos += count;
    Some(value)
}

fn expect_byte(text: &[u8], pos: &mut usize, byte: u8) -> Option<()> {
    (text.get(*pos) == Some(&byte)).then(|| *pos += 1)
}

/// `yyyy-MM-dd` (4 or more year digits, optional sign) → days since the epoch.
fn date_prefix(text: &[u8], pos: &mut usize) -> Option<i64> {
    let negative = match text.first() {
        Some(b'-') => {
            *pos += 1;
            true
        }
        Some(b'+') => {
            *pos += 1;
            false
        }
        _ => false,
    };
    let year_len = text[*pos..].iter().take_while(|b| b.is_ascii_digit()).count();
    if !(4..=6).contains(&year_len) {
        return None;
    }
    let year = digits(text, pos, year_len)? as i32;
    let year = if negative { -year } else { year };
    expect_byte(text, pos, b'-')?;
    let month = digits(text, pos, 2)?;
    expect_byte(text, pos, b'-')?;
    let day = digits(text, pos, 2)?;
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    Some(i64::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE)
}

/// `NaiveDate::from_ymd(1970, 1, 1).num_days_from_ce()`.
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// `HH:mm`, `HH:mm:ss` or `HH:mm:ss.f` with 1 to 9 fraction digits → ms of day (fraction
/// digits past milliseconds are truncated).
fn time_prefix(text: &[u8], pos: &mut usize, seconds_required: bool) -> Option<i64> {
    let hour = digits(text, pos, 2)?;
    expect_byte(text, pos, b':')?;
    let minute = digits(text, pos, 2)?;
    let mut second = 0;
    let mut millis = 0;
    if text.get(*pos) == Some(&b':') {
        *pos += 1;
        second = digits(text, pos, 2)?;
        if text.get(*pos) == Some(&b'.') {
            *pos += 1;
            let len = text[*pos..].iter().take_while(|b| b.is_ascii_digit()).count();
            if !(1..=9).contains(&len) {
                return None;
            }
            for i in 0..3 {
                millis *= 10;
                if i < len {
                    millis += u32::from(text[*pos + i] - b'0');
                }
            }
            *pos += len;
        }
    } else if seconds_required {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(i64::from(((hour * 60 + minute) * 60 + second) * 1000 + millis))
}

/// `yyyy-MM-ddTHH:mm:ss[.f]` with an optional `Z`, in UTC → ms since the epoch.
pub(super) fn parse_timestamp(text: &[u8]) -> Result<i64, Fail> {
    let invalid = || Fail::new("invalid TIMESTAMP, expected yyyy-MM-ddTHH:mm:ss.SSS");
    let mut pos = 0;
    let days = date_prefix(text, &mut pos).ok_or_else(invalid)?;
    expect_byte(text, &mut pos, b'T').ok_or_else(invalid)?;
    let millis = time_prefix(text, &mut pos, true).ok_or_else(invalid)?;
    if text.get(pos) == Some(&b'Z') {
        pos += 1;
    }
    if pos != text.len() {
        return Err(invalid());
    }
    Ok(days * MS_PER_DAY + millis)
}

/// `yyyy-MM-dd` → days since the epoch.
pub(super) fn parse_date(text: &[u8]) -> Result<i32, Fail> {
    let invalid = || Fail::new("invalid DATE, expected yyyy-MM-dd");
    let mut pos = 0;
    let days = date_prefix(text, &mut pos).ok_or_else(invalid)?;
    if pos != text.len() {
        return Err(invalid());
    }
    i32::try_from(days).map_err(|_| invalid())
}

/// `HH:mm`, `HH:mm:ss` or `HH:mm:ss.SSS` → ms of day.
pub(super) fn parse_time(text: &[u8]) -> Result<i32, Fail> {
    let invalid = || Fail::new("invalid TIME, expected HH:mm[:ss[.SSS]]");
    let mut pos = 0;
    let millis = time_prefix(text, &mut pos, false).ok_or_else(invalid)?;
    if pos != text.len() {
        return Err(invalid());
    }
    Ok(millis as i32)
}

/// A TIME given as an integer: ms of day, checked to lie within the day.
pub(super) fn time_from_millis(millis: i64) -> Result<i32, Fail> {
    if (0..MS_PER_DAY).contains(&millis) {
        Ok(millis as i32)
    } else {
        Err(Fail::new("TIME out of range, expected 0 to 86399999 ms"))
    }
}
