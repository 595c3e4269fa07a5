//! Continuation tokens of scalable push queries: the position of a
//! query in every partition of its source, so a client that lost its connection can resume
//! exactly after the last rows it saw.
//!
//! The token is base64 of `{"s":null,"e":{"o":[next offset of partition 0, ...]},"v":0}`,
//! the shape ksqlDB's `PushOffsetRange` serializes to. Each offset is the next one the query
//! would deliver from that partition: every row below it was already sent (or failed the
//! WHERE clause). Clients treat it as opaque.

use base64::Engine as _;
use serde_json::{json, Value as Json};

/// Why a token cannot be used to resume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not base64")]
    Base64,
    #[error("not a JSON offset range")]
    Json,
    #[error("unsupported version {0}")]
    Version(i64),
    #[error("no offset vector")]
    NoOffsets,
    #[error("has {got} partitions, the source has {expected}")]
    Partitions { got: usize, expected: usize },
    #[error("is ahead of the source")]
    Ahead,
}

/// Encodes the next offset of every partition.
pub fn encode(positions: &[i64]) -> String {
    let range = json!({"s": null, "e": {"o": positions}, "v": 0});
    base64::engine::general_purpose::STANDARD.encode(range.to_string())
}

/// Decodes a token into the next offset of every partition.
pub fn decode(token: &str) -> Result<Vec<i64>, TokenError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(token.trim()).map_err(|_| TokenError::Base64)?;
    let range: Json = serde_json::from_slice(&bytes).map_err(|_| TokenError::Json)?;
    let version = range.get("v").and_then(Json::as_i64).ok_or(TokenError::Json)?;
    if version != 0 {
        return Err(TokenError::Version(version));
    }
    let offsets = range.get("e").and_then(|end| end.get("o")).and_then(Json::as_array).ok_or(TokenError::NoOffsets)?;
    offsets.iter().map(|offset| offset.as_i64().filter(|o| *o >= 0).ok_or(TokenError::NoOffsets)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_has_ksqldb_shape() {
        let token = encode(&[3, 0, 17]);
        assert_eq!(decode(&token).unwrap(), vec![3, 0, 17]);
        let json = base64::engine::general_purpose::STANDARD.decode(&token).unwrap();
        assert_eq!(std::str::from_utf8(&json).unwrap(), r#"{"s":null,"e":{"o":[3,0,17]},"v":0}"#);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode("***"), Err(TokenError::Base64));
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(decode(&b64("nope")), Err(TokenError::Json));
        assert_eq!(decode(&b64(r#"{"v":1,"e":{"o":[]}}"#)), Err(TokenError::Version(1)));
        assert_eq!(decode(&b64(r#"{"v":0,"e":{"o":[-1]}}"#)), Err(TokenError::NoOffsets));
        assert_eq!(decode(&b64(r#"{"v":0}"#)), Err(TokenError::NoOffsets));
    }
}
