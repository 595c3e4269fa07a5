//! The manifest split into a root and segments, as a model: random commits into random hours,
//! with failed, lost and raced root writes and crashes at every put of a commit, each followed
//! by the start-up a real restart does. The oracle is what each step committed.

mod lake_support;

use std::sync::Arc;

use lake_support::{manifest_model, Fault};
use object_store::memory::InMemory;
use proptest::prelude::*;

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        16 => Just(Fault::None),
        1 => Just(Fault::RootFails),
        1 => Just(Fault::RootLandsThenFails),
        1 => Just(Fault::LostRace),
        1 => Just(Fault::RootLandsThenRaceLost),
        1 => Just(Fault::SegmentLandsThenFails),
        1 => (0usize..4).prop_map(Fault::CrashAfter),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_manifest_lists_every_committed_file_once_across_faults_and_crashes(
        steps in proptest::collection::vec((0u8..30, fault()), 1..160),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(manifest_model(Arc::new(InMemory::new()), "lake", &steps));
    }
}

/// Enough commits for three tiers of merges (8, 64 and 512 files), no faults: the tiers hold.
#[tokio::test]
async fn six_hundred_commits_merge_through_three_tiers() {
    let steps: Vec<(u8, Fault)> = (0..600).map(|n| ((n % 24) as u8, Fault::None)).collect();
    manifest_model(Arc::new(InMemory::new()), "lake", &steps).await;
}
