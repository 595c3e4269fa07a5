//! Any text as a ksqlDB type or schema: the parsers never panic, and what parses prints back to
//! something that parses to the same.
#![no_main]

use ksql_lake::schema::{format_schema, parse_schema, parse_type};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ty) = parse_type(&text) {
        assert_eq!(parse_type(&ty.to_string()).ok(), Some(ty));
    }
    if let Ok(columns) = parse_schema(&text) {
        assert_eq!(parse_schema(&format_schema(&columns)).ok(), Some(columns));
    }
});
