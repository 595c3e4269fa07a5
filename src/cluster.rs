//! Splitting feeds between replicas: each feed runs on the replica that scores highest for it
//! (rendezvous hashing on the feed name and the replica's ordinal), so every replica computes
//! the same assignment from the replica count alone, and adding a replica moves only the feeds
//! that now score highest on the new one (about 1/n of them). The per-feed lease in the lake
//! (`lake::lease`) still guards the commit protocol when two processes disagree, e.g. during a
//! rollout that changes the replica count.

/// The ordinal of the replica that runs `feed` among `replicas` (0 when there is one).
pub fn owner_of(feed: &str, replicas: u32) -> u32 {
    (0..replicas.max(1)).max_by_key(|&replica| (score(feed, replica), replica)).unwrap_or(0)
}

/// A stable 64-bit score (FNV-1a over the name and the ordinal, then a final mix): the same
/// on every platform and Rust version, unlike `std`'s hasher.
fn score(feed: &str, replica: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in feed.bytes().chain([0xff]).chain(replica.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: FNV alone leaves the low bits of similar names correlated
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeds(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("feed_{i}")).collect()
    }

    #[test]
    fn one_replica_runs_everything() {
        assert!(feeds(50).iter().all(|feed| owner_of(feed, 1) == 0));
        assert_eq!(owner_of("x", 0), 0);
    }

    #[test]
    fn feeds_spread_evenly_over_replicas() {
        let all = feeds(3000);
        for replicas in [2u32, 3, 5, 8] {
            let mut counts = vec![0usize; replicas as usize];
            for feed in &all {
                counts[owner_of(feed, replicas) as usize] += 1;
            }
            let expected = all.len() / replicas as usize;
            for count in &counts {
                assert!(count.abs_diff(expected) < expected / 5, "{replicas} replicas: {counts:?}");
            }
        }
    }

    #[test]
    fn adding_a_replica_moves_feeds_only_to_it() {
        let all = feeds(2000);
        for replicas in 1u32..8 {
            let mut moved = 0usize;
            for feed in &all {
                let (before, after) = (owner_of(feed, replicas), owner_of(feed, replicas + 1));
                if before != after {
                    assert_eq!(after, replicas, "{feed} moved between old replicas");
                    moved += 1;
                }
            }
            let expected = all.len() / (replicas as usize + 1);
            assert!(moved.abs_diff(expected) < expected / 4 + 10, "{replicas}→{}: {moved} moved", replicas + 1);
        }
    }

    #[test]
    fn the_assignment_is_pinned() {
        // a change here would move feeds between replicas on an upgrade
        let owners: Vec<u32> =
            ["orders", "payments", "users", "clicks", "sessions"].iter().map(|f| owner_of(f, 3)).collect();
        assert_eq!(owners, [0, 0, 0, 1, 1]);
    }
}
