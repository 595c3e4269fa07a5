//! The ksqlDB side: the HTTP query protocol client ([`client`]), the incremental response
//! decoder ([`frame`]) and the typed errors ksqlDB answers with ([`error`]).

pub mod client;
pub mod error;
pub mod frame;

pub use client::{ClientConfig, ClientError, Http2Mode, KsqlClient, QueryRequest, QueryStream, ServerInfo};
pub use error::ServerError;
pub use frame::{Event, FrameDecoder, FrameError, Framing, Header};
