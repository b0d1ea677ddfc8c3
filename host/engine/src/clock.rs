//! Time as a filter sees it (WASI clocks, `request.time`, ticks). The gateway uses the
//! system clock; the test bed uses a manual one and moves it forward itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub enum Clock {
    System { start: Instant },
    Manual(Arc<ManualClock>),
}

/// A clock that moves only when told to: realtime and monotonic advance together.
#[derive(Debug)]
pub struct ManualClock {
    realtime_ns: AtomicU64,
    monotonic_ns: AtomicU64,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let ns = by.as_nanos() as u64;
        self.realtime_ns.fetch_add(ns, Ordering::SeqCst);
        self.monotonic_ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    pub fn system() -> Self {
        Clock::System {
            start: Instant::now(),
        }
    }

    /// A manual clock starting at `unix` (time since the epoch), monotonic at 0.
    pub fn manual(unix: Duration) -> (Self, Arc<ManualClock>) {
        let m = Arc::new(ManualClock {
            realtime_ns: AtomicU64::new(unix.as_nanos() as u64),
            monotonic_ns: AtomicU64::new(0),
        });
        (Clock::Manual(m.clone()), m)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn realtime_ns(&self) -> u64 {
        match self {
            Clock::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            Clock::Manual(m) => m.realtime_ns.load(Ordering::SeqCst),
        }
    }

    /// Nanoseconds on a clock that never goes backwards.
    pub fn monotonic_ns(&self) -> u64 {
        match self {
            Clock::System { start } => start.elapsed().as_nanos() as u64,
            Clock::Manual(m) => m.monotonic_ns.load(Ordering::SeqCst),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}
