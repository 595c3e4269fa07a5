//! The one backoff of the service: exponential, bounded, with jitter. Reconnecting a push query
//! and retrying a lake commit both wait with it.

use std::time::Duration;

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The bound of the first delay.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// Growth of the bound per failed attempt.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: crate::defaults::RECONNECT_BACKOFF_INITIAL,
            max: crate::defaults::RECONNECT_BACKOFF_MAX,
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures less one (0 after the first): between
    /// half and all of `initial × multiplier^failures`, capped at `max`, so clients that failed
    /// together do not retry together.
    pub fn delay(&self, failures: u32) -> Duration {
        let bound = self.initial.as_secs_f64() * self.multiplier.powi(failures.min(30) as i32);
        let bound = bound.min(self.max.as_secs_f64());
        Duration::from_secs_f64(bound * rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_their_bounds() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), multiplier: 2.0 };
        for failures in 0..50 {
            let delay = backoff.delay(failures).as_secs_f64();
            let bound = (0.1 * 2f64.powi(failures.min(30) as i32)).min(2.0);
            assert!(delay <= bound + 1e-9, "after {failures}: {delay}");
            assert!(delay >= bound * 0.5 - 1e-9, "after {failures}: {delay}");
        }
    }
}
