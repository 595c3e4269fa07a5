//! The ksqlDB side: the HTTP query protocol client ([`client`]), the incremental response
//! decoder ([`frame`]) and the typed errors ksqlDB answers with ([`error`]).

pub mod error;
pub mod frame;

pub use error::ServerError;
pub use frame::{Event, FrameDecoder, FrameError, Framing, Header};
