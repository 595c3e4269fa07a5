//! The lake side of ksql-lake: everything after rows have become Arrow record batches.
//!
//! ```text
//!  RecordBatch ──► RowRouter::route ──► PartitionBuffers::push ──► drain_ready / drain_largest / drain_all
//!  (one feed)      (per-row partition     (per PartitionKey,          │ FlushJob (rows + MemoryBudget
//!                   by event time)          MemoryBudget reserved)      ▼  reservation, file name fixed)
//!                                                              LakeWriter::write(&job)
//!                         encode (spawn_blocking) ─► put data file CREATE-ONLY ─► update _metadata.json
//! ```
//!
//! Layout under the lake root (`<lake>` is a local path, `file://`, `s3://`, `gs://` or `az://`):
//!
//! ```text
//! <lake>/streams/<feed>/year=YYYY/month=MM/day=DD/data_YYYYMMDD_HHMMSS_<unique>.parquet          (daily)
//! <lake>/streams/<feed>/year=YYYY/month=MM/day=DD/hour=HH/data_YYYYMMDD_HHMMSS_<unique>.parquet  (hourly)
//! <lake>/streams/<feed>/_metadata.json
//! <lake>/tables/<feed>/version=vN/snapshot_YYYYMMDD_HHMMSS.parquet                               (kind = table)
//! ```
//!
//! The commit protocol: a data file is visible only once complete (single atomic put, or a
//! multipart upload completed at the very end), and `_metadata.json` is rewritten **after** it,
//! so the manifest is the commit point. Positions (ROWPARTITION/ROWOFFSET) recorded there are
//! what a restart resumes from. See [`writer`] and `docs/METADATA.md`.

pub(crate) mod budget;
pub(crate) mod buffer;
pub(crate) mod commit;
pub(crate) mod dead_letter;
pub(crate) mod layout;
pub mod lease;
pub mod manifests;
pub mod metadata;
pub(crate) mod parquet;
pub(crate) mod partition;
pub(crate) mod reconcile;
pub(crate) mod snapshot;
pub(crate) mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub(crate) mod writer;

use std::collections::BTreeMap;

pub use budget::{MemoryBudget, Reservation};
pub use buffer::{FlushJob, FlushPolicy, FlushReason, PartitionBuffers, Pushed};
pub use commit::{Bucket, CommitLedger, CommitState, Destination, Runs};
pub use dead_letter::{DeadLetterJob, Rejected};
pub use layout::{changelog_feed_name, FeedKind, LayoutError};
pub use metadata::FeedMetadata;
pub use parquet::{encode, Compression, EncodeError, EncodedFile, FileInfo, ParquetOptions};
pub use partition::{
    EventTime, InvalidEventTime, PartitionError, PartitionKey, PartitionSpec, Partitioning, RoutedBatch, RowRouter,
    RowStats,
};
pub use reconcile::{
    rebuild, reconcile, reconcile_with, ReconcileError, ReconcileReport, ADOPTED_REASON, BACKUP_FILE, REBUILT_REASON,
};
pub use snapshot::{CommittedVersion, PendingVersion, SnapshotError, SnapshotWriter};
pub use store::{open_lake, Lake, S3Options, StoreError};
pub use writer::{CommitOutcome, CommittedFile, LakeWriter, WriteError, WriterOptions};

/// Highest offset seen per ksqlDB partition (`ROWPARTITION` → `ROWOFFSET`). A BTreeMap so JSON
/// output and comparisons are deterministic.
pub type Positions = BTreeMap<u32, u64>;

/// Where one row sits in ksqlDB's source topic; known only when the push query selects
/// `ROWPARTITION` and `ROWOFFSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// Raises each partition's offset in `into` to the one in `from` when higher.
pub fn merge_positions(into: &mut Positions, from: &Positions) {
    for (partition, offset) in from {
        let entry = into.entry(*partition).or_insert(*offset);
        if *offset > *entry {
            *entry = *offset;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    /// The pipeline moves buffers and jobs across tasks and shares the writer and budget.
    #[test]
    fn pipeline_types_cross_tasks() {
        assert_send::<PartitionBuffers>();
        assert_send::<FlushJob>();
        assert_send_sync::<LakeWriter>();
        assert_send_sync::<MemoryBudget>();
        assert_send_sync::<Lake>();
        assert_send_sync::<RowRouter>();
    }

    #[test]
    fn merging_positions_keeps_the_highest_offset() {
        let mut into = Positions::from([(0, 5), (1, 9)]);
        merge_positions(&mut into, &Positions::from([(0, 7), (1, 3), (2, 1)]));
        assert_eq!(into, Positions::from([(0, 7), (1, 9), (2, 1)]));
    }
}
