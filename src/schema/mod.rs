//! ksqlDB types and their Arrow form: type strings ([`types`]) and rows decoded straight from
//! the response bytes into Arrow record batches ([`rows`]).

pub mod rows;
pub mod types;

pub use rows::{RowDecoder, RowError};
pub use types::{
    arrow_schema, columns_from_metadata, format_schema, parse_schema, parse_type, Column, ColumnRole, KsqlType,
    StructField, TypeParseError,
};
