//! Human-friendly units in the config file: byte sizes (`"128MiB"`) and durations (`"30s"`).

use std::time::Duration;

/// Parses a byte size: a whole number with an optional unit. Binary units (KiB, MiB, GiB, TiB)
/// are powers of 1024, decimal ones (KB, MB, GB, TB) powers of 1000; `B` or no unit is bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("invalid size `{text}`: expected a whole number with an optional unit such as 64MiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "tib" | "ti" => 1 << 40,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "invalid size `{text}`: unknown unit `{other}` (allowed: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("invalid size `{text}`: too large"))
}

/// Parses a duration such as `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("invalid duration `{text}`: {error} (examples: 30s, 5m, 1h)"))
}

/// Formats a byte count the way the config spells it (`134217728` → `128MiB`).
pub fn format_byte_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_byte_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_byte_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert_eq!(parse_byte_size("1_000kb").unwrap(), 1_000_000);
        assert!(parse_byte_size("12XB").unwrap_err().contains("unknown unit `xb`"));
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("-1MiB").is_err());
        assert!(parse_byte_size("99999999999TiB").unwrap_err().contains("too large"));
        assert_eq!(format_byte_size(128 << 20), "128MiB");
        assert_eq!(format_byte_size(1000), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("invalid duration"));
    }
}
