//! One memory budget for the Arrow buffers of every feed.
//!
//! Buffers reserve what they hold; the reservation travels with the [`FlushJob`](super::FlushJob)
//! and is released when the job is dropped (after a successful write), so bytes still waiting
//! for an upload keep counting. Reservations never fail: the caller asks
//! [`MemoryBudget::over_budget`] and flushes the largest buffers first, and a reader that must
//! not grow further awaits [`MemoryBudget::wait_for_room`] (which lets HTTP/2 flow control push
//! back on ksqlDB instead of the process growing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    /// The part of `used` that encodes hold while they run ([`MemoryBudget::reserve_working`]).
    working: AtomicU64,
    /// Wakes `wait_for_room` callers whenever bytes are released.
    released: Notify,
}

impl MemoryBudget {
    pub fn new(limit_bytes: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit: limit_bytes,
            used: AtomicU64::new(0),
            working: AtomicU64::new(0),
            released: Notify::new(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently reserved across all feeds.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// True once reservations reach the limit.
    pub fn over_budget(&self) -> bool {
        self.used() >= self.limit
    }

    /// Reserves `bytes` (always granted; see the module doc).
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Reservation { budget: Arc::clone(self), bytes }
    }

    /// Reserves an encode's working memory while it runs. It counts in [`MemoryBudget::used`],
    /// and also in [`MemoryBudget::working`]: memory that frees itself once the encode is done,
    /// which a buffer stage waits for rather than flushing more (smaller) files.
    pub fn reserve_working(self: &Arc<Self>, bytes: u64) -> WorkingReservation {
        self.working.fetch_add(bytes, Ordering::AcqRel);
        WorkingReservation { reservation: self.reserve(bytes) }
    }

    /// Bytes encodes hold at the moment (part of [`MemoryBudget::used`]).
    pub fn working(&self) -> u64 {
        self.working.load(Ordering::Acquire)
    }

    /// Resolves once usage is below the limit.
    pub async fn wait_for_room(&self) {
        loop {
            // Register before checking so a release between the check and the await is not lost.
            let notified = self.released.notified();
            if !self.over_budget() {
                return;
            }
            notified.await;
        }
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let previous = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(previous >= bytes, "released more than reserved");
        self.released.notify_waiters();
    }
}

/// An encode's working memory, held against a [`MemoryBudget`]; released on drop.
#[derive(Debug)]
pub struct WorkingReservation {
    reservation: Reservation,
}

impl Drop for WorkingReservation {
    fn drop(&mut self) {
        // before the bytes leave `used`, so `working` never exceeds `used`
        self.reservation.budget.working.fetch_sub(self.reservation.bytes, Ordering::AcqRel);
    }
}

/// Bytes held against a [`MemoryBudget`]; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `bytes` to this reservation.
    pub fn grow(&mut self, bytes: u64) {
        self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }

    /// Moves another reservation of the same budget into this one.
    pub fn merge(&mut self, mut other: Reservation) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += other.bytes;
        other.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn working_memory_counts_in_used_and_apart_and_leaves_with_its_encode() {
        let budget = MemoryBudget::new(100);
        let rows = budget.reserve(40);
        let working = budget.reserve_working(80);
        assert_eq!((budget.used(), budget.working()), (120, 80));
        assert!(budget.over_budget(), "an encode's working memory counts against the budget");
        assert!(budget.used() - budget.working() <= budget.limit(), "without it the rows fit");
        drop(working);
        assert_eq!((budget.used(), budget.working()), (40, 0));
        drop(rows);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn reservations_count_until_dropped() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.reserve(60);
        assert_eq!(budget.used(), 60);
        assert!(!budget.over_budget());
        first.grow(30);
        let second = budget.reserve(10);
        assert_eq!(budget.used(), 100);
        assert!(budget.over_budget());
        first.merge(second);
        assert_eq!(first.bytes(), 100);
        assert_eq!(budget.used(), 100);
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn wait_for_room_resolves_when_bytes_are_released() {
        let budget = MemoryBudget::new(10);
        let held = budget.reserve(15);
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(budget.used(), 0);
        // Under the limit it returns at once.
        tokio::time::timeout(Duration::from_secs(5), budget.wait_for_room()).await.unwrap();
    }
}
