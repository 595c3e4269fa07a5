//! ksql-lake keeps ksqlDB `EMIT CHANGES` push queries open, decodes every row straight into
//! Arrow record batches, buffers them per hourly or daily partition and writes them as Parquet
//! files to local disk or any object store.
//!
//! ```text
//! ksqlDB /query-stream ──► ksqldb::frame ──► schema::rows ──► lake buffers ──► Parquet ──► object_store
//!                         (events)           (Arrow)          (partitions)                  │
//!   committed position (ROWPARTITION/ROWOFFSET) ◄── commit: data file, then _metadata.json ◄┘
//! ```
//!
//! - [`schema`]: ksqlDB type strings ↔ Arrow types, and rows → RecordBatches.
//! - [`ksqldb`]: the HTTP query protocol: response decoder, client, errors.
//! - `simulator` (feature `simulator`, on by default and needed by the binary): a
//!   ksqlDB-compatible server for tests, benchmarks and `ksql-lake demo`. The core library
//!   builds without it (`--no-default-features`).

pub mod backoff;
pub mod cluster;
pub mod config;
pub mod defaults;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod feeds;
pub mod http;
pub mod ksqldb;
pub mod lake;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod schema;
#[cfg(feature = "simulator")]
pub mod simulator;
