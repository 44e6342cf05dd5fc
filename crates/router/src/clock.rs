//! Time, passed explicitly. Every router method that needs time takes `now: Duration`
//! since an arbitrary epoch, so the cluster simulator can drive the router with virtual
//! time and tests can expire speculative entries without sleeping. A [`Clock`] is a
//! convenience for producing `now`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Source of `now` values for the router.
pub trait Clock: Send + Sync {
    /// Time since this clock's epoch.
    fn now(&self) -> Duration;
}

/// Wall-clock (monotonic) time since the clock was created.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    epoch: Instant,
}

impl SystemClock {
    /// A clock whose epoch is the moment of the call.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// A clock that only moves when told to (tests, simulation).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A manual clock at `start`.
    pub fn new(start: Duration) -> Self {
        Self {
            nanos: AtomicU64::new(to_nanos(start)),
        }
    }

    /// Move the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(to_nanos(d)))
            });
    }

    /// Set the clock to `t`.
    pub fn set(&self, t: Duration) {
        self.nanos.store(to_nanos(t), Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// Nanoseconds in `d`, saturating at `u64::MAX` (584 years).
#[inline]
pub fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Duration::from_secs(1));
        assert_eq!(c.now(), Duration::from_secs(1));
        c.advance(Duration::from_millis(500));
        assert_eq!(c.now(), Duration::from_millis(1500));
        c.set(Duration::ZERO);
        assert_eq!(c.now(), Duration::ZERO);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.now();
        assert!(c.now() >= a);
    }
}
