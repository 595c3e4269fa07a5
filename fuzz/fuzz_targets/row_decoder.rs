//! Any bytes as a row of a schema with every kind of type: the decoder never panics, and a
//! rejected row leaves the batch as it was.
#![no_main]

use ksql_lake::schema::{parse_schema, RowDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let schema = parse_schema(
        "`ID` BIGINT, `NAME` STRING, `AMOUNT` DECIMAL(10, 2), `TS` TIMESTAMP, `TAGS` ARRAY<STRING>, \
         `ATTRS` MAP<STRING, INTEGER>, `INFO` STRUCT<`A` DOUBLE, `B` BOOLEAN>, `D` DATE, `BLOB` BYTES",
    )
    .expect("a valid schema");
    let mut decoder = RowDecoder::new(&schema);
    let before = decoder.len();
    if decoder.append(data).is_err() {
        assert_eq!(decoder.len(), before);
    }
    let _ = decoder.finish();
});
