//! `POST /ksql`: the statements tools run before they query (SHOW/LIST STREAMS and TABLES,
//! QUERIES, PROPERTIES, VARIABLES, DESCRIBE [EXTENDED]), answered in ksqlDB's entity shapes
//! (`@type`, `statementText`, `warnings`; one entity per statement, in a JSON array).

use serde_json::{json, Value as Json};

use super::source::{Source, SourceKind};
use super::Simulator;
use crate::schema::{ColumnRole, KsqlType};

/// The outcome of one request: the status and the JSON body.
pub(super) fn run(sim: &Simulator, body: &Json) -> (u16, Json) {
    let Some(text) = body.get("ksql").and_then(Json::as_str).filter(|text| !text.trim().is_empty()) else {
        return (400, generic_error(40000, "\"ksql\" field must be populated"));
    };
    let mut entities = Vec::new();
    for statement in text.split(';').map(str::trim).filter(|statement| !statement.is_empty()) {
        let statement_text = format!("{statement};");
        match entity(sim, statement, &statement_text) {
            Ok(entity) => entities.push(entity),
            Err(message) => {
                let error = json!({
                    "@type": "statement_error",
                    "error_code": 40001,
                    "message": message,
                    "statementText": statement_text,
                    "entities": entities,
                });
                return (400, error);
            }
        }
    }
    (200, Json::Array(entities))
}

fn generic_error(code: u32, message: &str) -> Json {
    json!({"@type": "generic_error", "error_code": code, "message": message})
}

/// The entity of one statement, or a statement error's message.
fn entity(sim: &Simulator, statement: &str, statement_text: &str) -> Result<Json, String> {
    let words: Vec<String> = statement.split_whitespace().map(str::to_ascii_uppercase).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW" | "LIST", "STREAMS", rest @ ..] if rest.is_empty() || rest == ["EXTENDED"] => {
            let streams: Vec<Json> = sources(sim, SourceKind::Stream).iter().map(|source| listed(source)).collect();
            Ok(json!({"@type": "streams", "statementText": statement_text, "streams": streams, "warnings": []}))
        }
        ["SHOW" | "LIST", "TABLES", rest @ ..] if rest.is_empty() || rest == ["EXTENDED"] => {
            let tables: Vec<Json> = sources(sim, SourceKind::Table).iter().map(|source| listed(source)).collect();
            Ok(json!({"@type": "tables", "statementText": statement_text, "tables": tables, "warnings": []}))
        }
        ["SHOW" | "LIST", "QUERIES", rest @ ..] if rest.is_empty() || rest == ["EXTENDED"] => {
            Ok(json!({"@type": "queries", "statementText": statement_text, "queries": [], "warnings": []}))
        }
        ["SHOW" | "LIST", "PROPERTIES"] => {
            let config = &sim.inner.config;
            let properties: Vec<Json> = [
                ("ksql.query.push.v2.enabled", config.push_v2_enabled.to_string()),
                ("ksql.query.push.v2.continuation.tokens.enabled", config.continuation_tokens_enabled.to_string()),
                ("ksql.max.push.queries", config.max_push_queries.to_string()),
                ("ksql.streams.auto.offset.reset", "latest".to_string()),
            ]
            .into_iter()
            .map(|(name, value)| json!({"name": name, "scope": "KSQL", "value": value}))
            .collect();
            Ok(json!({
                "@type": "properties",
                "statementText": statement_text,
                "properties": properties,
                "overwrittenProperties": [],
                "defaultProperties": [],
                "warnings": [],
            }))
        }
        ["SHOW" | "LIST", "VARIABLES"] => {
            Ok(json!({"@type": "variables", "statementText": statement_text, "variables": [], "warnings": []}))
        }
        // `DESCRIBE x`, `DESCRIBE x EXTENDED` (0.29) and `DESCRIBE EXTENDED x` (older servers).
        ["DESCRIBE", rest @ ..] if matches!(rest.len(), 1 | 2) && (rest.len() == 1 || rest.contains(&"EXTENDED")) => {
            let extended = rest.len() == 2;
            // The name as written: quoted names keep their case.
            let written = statement
                .split_whitespace()
                .skip(1)
                .find(|word| !word.eq_ignore_ascii_case("EXTENDED"))
                .unwrap_or_default();
            let name = match written.strip_prefix('`').and_then(|name| name.strip_suffix('`')) {
                Some(quoted) => quoted.to_string(),
                None => written.to_ascii_uppercase(),
            };
            let source =
                sim.source(&name).map_err(|_| format!("Could not find STREAM/TABLE '{name}' in the Metastore"))?;
            Ok(json!({
                "@type": "sourceDescription",
                "statementText": statement_text,
                "sourceDescription": description(&source, extended),
                "warnings": [],
            }))
        }
        _ => Err(format!(
            "line 1:1: the simulator does not run this statement: {}",
            statement.chars().take(80).collect::<String>()
        )),
    }
}

fn sources(sim: &Simulator, kind: SourceKind) -> Vec<std::sync::Arc<Source>> {
    let mut found: Vec<_> = sim
        .inner
        .sources
        .read()
        .map(|sources| sources.values().filter(|source| source.kind == kind).cloned().collect())
        .unwrap_or_default();
    found.sort_by(|a: &std::sync::Arc<Source>, b| a.name.cmp(&b.name));
    found
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "STREAM",
        SourceKind::Table => "TABLE",
    }
}

/// A source as `SHOW STREAMS` / `SHOW TABLES` list it.
fn listed(source: &Source) -> Json {
    json!({
        "type": kind_name(source.kind),
        "name": source.name,
        "topic": source.name.to_ascii_lowercase(),
        "keyFormat": "KAFKA",
        "valueFormat": "JSON",
        "isWindowed": false,
    })
}

/// `DESCRIBE`'s `sourceDescription`.
fn description(source: &Source, extended: bool) -> Json {
    let columns = source.columns();
    let fields: Vec<Json> = columns
        .iter()
        .map(|column| {
            let mut field = json!({"name": column.name, "schema": schema(&column.ty)});
            if column.role == ColumnRole::Key {
                field["type"] = "KEY".into();
            }
            field
        })
        .collect();
    let column_list: Vec<String> = columns
        .iter()
        .map(|column| {
            let key = if column.role == ColumnRole::Key {
                if source.kind == SourceKind::Table {
                    " PRIMARY KEY"
                } else {
                    " KEY"
                }
            } else {
                ""
            };
            format!("`{}` {}{key}", column.name, column.ty)
        })
        .collect();
    let kind = kind_name(source.kind);
    json!({
        "name": source.name,
        "windowType": null,
        "readQueries": [],
        "writeQueries": [],
        "fields": fields,
        "type": kind,
        "timestamp": "",
        "statistics": "",
        "errorStats": "",
        "extended": extended,
        "keyFormat": "KAFKA",
        "valueFormat": "JSON",
        "topic": source.name.to_ascii_lowercase(),
        "partitions": if extended { source.partitions } else { 0 },
        "replication": if extended { 1 } else { 0 },
        "statement": format!(
            "CREATE {kind} {} ({}) WITH (KAFKA_TOPIC='{}', KEY_FORMAT='KAFKA', VALUE_FORMAT='JSON');",
            source.name,
            column_list.join(", "),
            source.name.to_ascii_lowercase()
        ),
        "queryOffsetSummaries": [],
        "sourceConstraints": [],
    })
}

/// A type as ksqlDB's `SchemaInfo`: `{type, fields, memberSchema}`.
fn schema(ty: &KsqlType) -> Json {
    let name = match ty {
        KsqlType::Boolean => "BOOLEAN",
        KsqlType::Integer => "INTEGER",
        KsqlType::Bigint => "BIGINT",
        KsqlType::Double => "DOUBLE",
        KsqlType::Decimal { .. } => "DECIMAL",
        KsqlType::String => "STRING",
        KsqlType::Bytes => "BYTES",
        KsqlType::Timestamp => "TIMESTAMP",
        KsqlType::Date => "DATE",
        KsqlType::Time => "TIME",
        KsqlType::Array(_) => "ARRAY",
        KsqlType::Map(..) => "MAP",
        KsqlType::Struct(_) => "STRUCT",
    };
    let fields = match ty {
        KsqlType::Struct(fields) => {
            Json::Array(fields.iter().map(|field| json!({"name": field.name, "schema": schema(&field.ty)})).collect())
        }
        _ => Json::Null,
    };
    let member = match ty {
        KsqlType::Array(member) | KsqlType::Map(_, member) => schema(member),
        _ => Json::Null,
    };
    let mut info = json!({"type": name, "fields": fields, "memberSchema": member});
    if let KsqlType::Decimal { precision, scale } = ty {
        info["parameters"] = json!({"precision": precision, "scale": scale});
    }
    info
}
