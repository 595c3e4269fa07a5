//! Error objects as ksqlDB writes them (`KsqlErrorMessage`, `KsqlStatementErrorMessage`).

use serde::{Deserialize, Serialize};

/// A ksqlDB error body: `{"@type":"generic_error","error_code":40001,"message":"..."}`, either
/// as an HTTP error response or in-band after the 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("ksqlDB error {error_code}: {message}")]
pub struct ServerError {
    /// `generic_error` or `statement_error`.
    #[serde(rename = "@type", default)]
    pub kind: Option<String>,
    pub error_code: i64,
    #[serde(default)]
    pub message: String,
    /// The statement, on `statement_error`.
    #[serde(rename = "statementText", default, skip_serializing_if = "Option::is_none")]
    pub statement_text: Option<String>,
}
