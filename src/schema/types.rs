//! ksqlDB SQL types: parsing the type strings ksqlDB writes on the wire, printing them back in
//! ksqlDB's canonical form, and mapping them onto Arrow.
//!
//! Two places carry type strings:
//! - the delimited `/query-stream` metadata: `columnTypes` holds one bare type per column
//!   (`"STRUCT<`F1` STRING, `F2` INTEGER>"`, `"DECIMAL(4, 2)"`);
//! - the StreamedRow header: `schema` is a whole column list
//!   (`` `ID` STRING KEY, `V` MAP<STRING, INTEGER> ``), see [`parse_schema`].
//!
//! ksqlDB always backtick-quotes names and writes `INTEGER`/`STRING`; the parser also accepts
//! the user-facing spellings (`INT`, `VARCHAR`, unquoted names, `DECIMAL(4,2)`) so that type
//! strings typed by people (in the config or the simulator) work too.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};

/// Arrow field metadata key holding the ksqlDB type string of a column.
pub const KSQL_TYPE_METADATA_KEY: &str = "ksql.type";

/// Largest DECIMAL precision that fits Arrow's Decimal128; wider decimals use Decimal256.
pub const DECIMAL128_MAX_PRECISION: u8 = 38;

/// Largest DECIMAL precision ksql-lake accepts (Arrow's Decimal256 limit).
pub const DECIMAL_MAX_PRECISION: u8 = 76;

/// A ksqlDB SQL type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KsqlType {
    Boolean,
    Integer,
    Bigint,
    Double,
    /// `DECIMAL(precision, scale)`, with `0 <= scale <= precision`.
    Decimal {
        precision: u8,
        scale: u8,
    },
    String,
    Bytes,
    /// Milliseconds since the epoch, UTC.
    Timestamp,
    /// Days since the epoch.
    Date,
    /// Milliseconds since midnight.
    Time,
    Array(Box<KsqlType>),
    Map(Box<KsqlType>, Box<KsqlType>),
    Struct(Vec<StructField>),
}

/// One field of a `STRUCT`. Names keep ksqlDB's case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StructField {
    pub name: String,
    pub ty: KsqlType,
}

/// What a column is in its source, as pull-query headers mark it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum ColumnRole {
    #[default]
    Value,
    /// `KEY`: a primary-key column (pull-query headers only).
    Key,
    /// `HEADERS`: all Kafka headers as `ARRAY<STRUCT<KEY STRING, VALUE BYTES>>`.
    Headers,
    /// `HEADER('k')`: the value of one Kafka header.
    Header(String),
}

/// A column of a query result: name (case kept), type and role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: KsqlType,
    pub role: ColumnRole,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: KsqlType) -> Self {
        Column { name: name.into(), ty, role: ColumnRole::Value }
    }
}

/// A type string that is not a ksqlDB type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ksqlDB type `{input}` at byte {position}: {reason}")]
pub struct TypeParseError {
    pub input: String,
    pub position: usize,
    pub reason: String,
}

/// Parses one bare type, as found in the delimited metadata's `columnTypes`.
pub fn parse_type(input: &str) -> Result<KsqlType, TypeParseError> {
    let mut parser = Parser { input, pos: 0 };
    let ty = parser.parse_type()?;
    parser.skip_ws();
    if parser.pos != input.len() {
        return Err(parser.error("unexpected text after the type"));
    }
    Ok(ty)
}

/// Parses a StreamedRow header `schema`: `` `A` INTEGER, `B` STRING KEY, ... ``.
/// An empty string is an empty schema.
pub fn parse_schema(input: &str) -> Result<Vec<Column>, TypeParseError> {
    let mut parser = Parser { input, pos: 0 };
    let mut columns = Vec::new();
    parser.skip_ws();
    if parser.at_end() {
        return Ok(columns);
    }
    loop {
        let name = parser.parse_name()?;
        let ty = parser.parse_type()?;
        let role = parser.parse_role()?;
        columns.push(Column { name, ty, role });
        parser.skip_ws();
        if parser.at_end() {
            return Ok(columns);
        }
        parser.expect(b',')?;
    }
}

/// Builds the columns of a delimited `/query-stream` metadata line.
pub fn columns_from_metadata(names: &[String], types: &[String]) -> Result<Vec<Column>, TypeParseError> {
    if names.len() != types.len() {
        return Err(TypeParseError {
            input: format!("{} names, {} types", names.len(), types.len()),
            position: 0,
            reason: "columnNames and columnTypes differ in length".to_string(),
        });
    }
    names.iter().zip(types).map(|(name, ty)| Ok(Column::new(name.clone(), parse_type(ty)?))).collect()
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> TypeParseError {
        TypeParseError { input: self.input.to_string(), position: self.pos, reason: reason.to_string() }
    }

    fn bytes(&self) -> &[u8] {
        self.input.as_bytes()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), TypeParseError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", byte as char)))
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A bare word: letters, digits and underscores.
    fn word(&mut self) -> &str {
        self.skip_ws();
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
            self.pos += 1;
        }
        &self.input[start..self.pos]
    }

    /// A column or field name: `` `quoted` `` (a doubled backtick escapes one) or a bare word.
    fn parse_name(&mut self) -> Result<String, TypeParseError> {
        self.skip_ws();
        if self.peek() == Some(b'`') {
            self.pos += 1;
            let mut name = String::new();
            loop {
                let rest = &self.input[self.pos..];
                let Some(tick) = rest.find('`') else {
                    return Err(self.error("unterminated backtick-quoted name"));
                };
                name.push_str(&rest[..tick]);
                self.pos += tick + 1;
                if self.peek() == Some(b'`') {
                    name.push('`');
                    self.pos += 1;
                } else {
                    return Ok(name);
                }
            }
        }
        let word = self.word();
        if word.is_empty() {
            return Err(self.error("expected a name"));
        }
        Ok(word.to_string())
    }

    fn parse_number(&mut self) -> Result<u32, TypeParseError> {
        let word = self.word();
        word.parse().map_err(|_| self.error("expected a number"))
    }

    fn parse_type(&mut self) -> Result<KsqlType, TypeParseError> {
        let start = self.pos;
        let word = self.word().to_ascii_uppercase();
        let ty = match word.as_str() {
            "BOOLEAN" => KsqlType::Boolean,
            "INTEGER" | "INT" => KsqlType::Integer,
            "BIGINT" => KsqlType::Bigint,
            "DOUBLE" => KsqlType::Double,
            "STRING" | "VARCHAR" => KsqlType::String,
            "BYTES" => KsqlType::Bytes,
            "TIMESTAMP" => KsqlType::Timestamp,
            "DATE" => KsqlType::Date,
            "TIME" => KsqlType::Time,
            "DECIMAL" => {
                self.expect(b'(')?;
                let precision = self.parse_number()?;
                self.expect(b',')?;
                let scale = self.parse_number()?;
                self.expect(b')')?;
                if precision == 0 || precision > u32::from(DECIMAL_MAX_PRECISION) {
                    return Err(self.error(&format!("DECIMAL precision must be 1 to {DECIMAL_MAX_PRECISION}")));
                }
                if scale > precision {
                    return Err(self.error("DECIMAL scale must not exceed its precision"));
                }
                KsqlType::Decimal { precision: precision as u8, scale: scale as u8 }
            }
            "ARRAY" => {
                self.expect(b'<')?;
                let item = self.parse_type()?;
                self.expect(b'>')?;
                KsqlType::Array(Box::new(item))
            }
            "MAP" => {
                self.expect(b'<')?;
                let key = self.parse_type()?;
                self.expect(b',')?;
                let value = self.parse_type()?;
                self.expect(b'>')?;
                KsqlType::Map(Box::new(key), Box::new(value))
            }
            "STRUCT" => {
                self.expect(b'<')?;
                let mut fields = Vec::new();
                if !self.eat(b'>') {
                    loop {
                        let name = self.parse_name()?;
                        let ty = self.parse_type()?;
                        fields.push(StructField { name, ty });
                        if self.eat(b'>') {
                            break;
                        }
                        self.expect(b',')?;
                    }
                }
                KsqlType::Struct(fields)
            }
            "" => return Err(self.error("expected a type")),
            _ => {
                self.pos = start;
                self.skip_ws();
                return Err(self.error(&format!("unknown type `{word}`")));
            }
        };
        Ok(ty)
    }

    /// The optional marker after a column's type in a header schema.
    fn parse_role(&mut self) -> Result<ColumnRole, TypeParseError> {
        self.skip_ws();
        let save = self.pos;
        let word = self.word().to_ascii_uppercase();
        match word.as_str() {
            "KEY" => Ok(ColumnRole::Key),
            "HEADERS" => Ok(ColumnRole::Headers),
            "HEADER" => {
                self.expect(b'(')?;
                self.skip_ws();
                if self.peek() != Some(b'\'') {
                    return Err(self.error("expected a quoted header key"));
                }
                self.pos += 1;
                let rest = &self.input[self.pos..];
                let Some(end) = rest.find('\'') else {
                    return Err(self.error("unterminated header key"));
                };
                let key = rest[..end].to_string();
                self.pos += end + 1;
                self.expect(b')')?;
                Ok(ColumnRole::Header(key))
            }
            "" => Ok(ColumnRole::Value),
            _ => {
                self.pos = save;
                Err(self.error(&format!("unexpected `{word}` after a column type")))
            }
        }
    }
}

/// Writes a name as ksqlDB does: always backtick-quoted, a backtick doubled.
fn write_quoted(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    f.write_str("`")?;
    f.write_str(&name.replace('`', "``"))?;
    f.write_str("`")
}

impl fmt::Display for KsqlType {
    /// ksqlDB's canonical spelling (`SqlType.toString(FormatOptions.none())`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KsqlType::Boolean => f.write_str("BOOLEAN"),
            KsqlType::Integer => f.write_str("INTEGER"),
            KsqlType::Bigint => f.write_str("BIGINT"),
            KsqlType::Double => f.write_str("DOUBLE"),
            KsqlType::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
            KsqlType::String => f.write_str("STRING"),
            KsqlType::Bytes => f.write_str("BYTES"),
            KsqlType::Timestamp => f.write_str("TIMESTAMP"),
            KsqlType::Date => f.write_str("DATE"),
            KsqlType::Time => f.write_str("TIME"),
            KsqlType::Array(item) => write!(f, "ARRAY<{item}>"),
            KsqlType::Map(key, value) => write!(f, "MAP<{key}, {value}>"),
            KsqlType::Struct(fields) if fields.is_empty() => f.write_str("STRUCT< >"),
            KsqlType::Struct(fields) => {
                f.write_str("STRUCT<")?;
                for (index, field) in fields.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write_quoted(f, &field.name)?;
                    write!(f, " {}", field.ty)?;
                }
                f.write_str(">")
            }
        }
    }
}

impl fmt::Display for Column {
    /// A header-schema column: `` `NAME` TYPE[ KEY] ``.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_quoted(f, &self.name)?;
        write!(f, " {}", self.ty)?;
        match &self.role {
            ColumnRole::Value => Ok(()),
            ColumnRole::Key => f.write_str(" KEY"),
            ColumnRole::Headers => f.write_str(" HEADERS"),
            ColumnRole::Header(key) => write!(f, " HEADER('{key}')"),
        }
    }
}

/// Prints a column list as a StreamedRow header `schema`.
pub fn format_schema(columns: &[Column]) -> String {
    columns.iter().map(Column::to_string).collect::<Vec<_>>().join(", ")
}

impl KsqlType {
    /// The Arrow type a value of this ksqlDB type is decoded into.
    pub fn to_arrow(&self) -> DataType {
        match self {
            KsqlType::Boolean => DataType::Boolean,
            KsqlType::Integer => DataType::Int32,
            KsqlType::Bigint => DataType::Int64,
            KsqlType::Double => DataType::Float64,
            KsqlType::Decimal { precision, scale } if *precision <= DECIMAL128_MAX_PRECISION => {
                DataType::Decimal128(*precision, *scale as i8)
            }
            KsqlType::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale as i8),
            KsqlType::String => DataType::Utf8,
            KsqlType::Bytes => DataType::Binary,
            KsqlType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            KsqlType::Date => DataType::Date32,
            KsqlType::Time => DataType::Time32(TimeUnit::Millisecond),
            KsqlType::Array(item) => DataType::List(Arc::new(list_item_field(item))),
            KsqlType::Map(key, value) => DataType::Map(Arc::new(map_entries_field(key, value)), false),
            KsqlType::Struct(fields) => DataType::Struct(struct_fields(fields)),
        }
    }
}

/// The child field of an Arrow list (`item`, nullable).
pub fn list_item_field(item: &KsqlType) -> Field {
    Field::new("item", item.to_arrow(), true)
}

/// The `entries` field of an Arrow map: a non-null struct of a non-null `key` and a nullable
/// `value`.
pub fn map_entries_field(key: &KsqlType, value: &KsqlType) -> Field {
    let entries =
        Fields::from(vec![Field::new("key", key.to_arrow(), false), Field::new("value", value.to_arrow(), true)]);
    Field::new("entries", DataType::Struct(entries), false)
}

/// The Arrow fields of a STRUCT (all nullable, names as in ksqlDB).
pub fn struct_fields(fields: &[StructField]) -> Fields {
    fields.iter().map(|field| Field::new(&field.name, field.ty.to_arrow(), true)).collect()
}

/// The Arrow schema of a query result. Every field is nullable and carries its ksqlDB type
/// string under [`KSQL_TYPE_METADATA_KEY`].
pub fn arrow_schema(columns: &[Column]) -> Schema {
    let fields: Vec<Field> = columns
        .iter()
        .map(|column| {
            Field::new(&column.name, column.ty.to_arrow(), true)
                .with_metadata([(KSQL_TYPE_METADATA_KEY.to_string(), column.ty.to_string())])
        })
        .collect();
    Schema::new(fields)
}

#[cfg(test)]
mod tests;
