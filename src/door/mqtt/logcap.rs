//! A cap on the "connection refused" log lines one shard writes: a flood of refused
//! clients (wrong passwords, a connection limit, Server busy) must not turn into a flood
//! of log writes on the shard's thread, where each line is a write to stderr that the
//! acknowledgements of every other client wait behind. Up to `LINES_PER_SEC` lines a
//! second are written; past that, refusals are only counted, and the first line of the
//! next second says how many were left out. The metrics count every refusal.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lines of one kind a shard writes per second at most.
const LINES_PER_SEC: u32 = 10;

/// The cap of one kind of log line on one shard.
#[derive(Default)]
pub(super) struct LineCap {
    /// Start of the current one-second window.
    window: Cell<Option<Instant>>,
    /// Lines written in it.
    written: Cell<u32>,
    /// Lines left out since the last one written.
    left_out: Cell<u64>,
}

impl LineCap {
    /// Whether a line may be written now; if so, how many were left out before it.
    pub(super) fn admit(&self, now: Instant) -> Option<u64> {
        let fresh = self
            .window
            .get()
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1));
        if fresh {
            self.window.set(Some(now));
            self.written.set(0);
        }
        if self.written.get() >= LINES_PER_SEC {
            self.left_out.set(self.left_out.get() + 1);
            return None;
        }
        self.written.set(self.written.get() + 1);
        Some(self.left_out.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_cap_and_the_next_line_counts_what_was_left_out() {
        let cap = LineCap::default();
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| cap.admit(t0).is_some()).count();
        assert_eq!(admitted, LINES_PER_SEC as usize);
        assert_eq!(cap.admit(t0 + Duration::from_millis(999)), None);
        // The next second: written again, saying how many the last one left out.
        assert_eq!(cap.admit(t0 + Duration::from_secs(1)), Some(1000 - 10 + 1));
        assert_eq!(cap.admit(t0 + Duration::from_secs(1)), Some(0));
    }
}
