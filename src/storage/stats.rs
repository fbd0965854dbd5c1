//! The WAL's probe: counters and histograms written only by the owning shard.
//!
//! Single writer: updates are a Relaxed load plus store (no locked read-modify-write);
//! the metrics shard reads them with Relaxed loads and may see a histogram mid-update,
//! which Prometheus tolerates.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (inclusive, microseconds) of the fdatasync latency buckets; one more
/// bucket counts everything above the last bound (+Inf).
pub const FSYNC_LATENCY_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
/// Upper bounds (inclusive, records) of the records-per-group-commit buckets, plus +Inf.
pub const GROUP_RECORDS_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Adds `n` to a single-writer counter.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// A fixed-bucket histogram: per-bucket counts (not cumulative), a sum and a count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Empty, with buckets up to each of `bounds` (inclusive) and one above them.
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts `value`. Only the owning shard may call this.
    pub fn record(&self, value: u64) {
        let idx = self.bounds.partition_point(|b| *b < value);
        bump(&self.buckets[idx], 1);
        bump(&self.sum, value);
        bump(&self.count, 1);
    }

    /// The inclusive upper bound of each bucket but the last (+Inf).
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// The count in each bucket (not cumulative); one more entry than `bounds` (+Inf).
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The sum of all recorded values.
    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// Counters of one shard's WAL.
#[derive(Debug)]
pub struct WalStats {
    /// Records appended.
    pub appends_total: AtomicU64,
    /// Frame bytes appended (headers included).
    pub bytes_total: AtomicU64,
    /// fdatasync calls completed.
    pub fsyncs_total: AtomicU64,
    /// Group commits: rounds of the committer that wrote at least one record.
    pub group_commits_total: AtomicU64,
    /// Segment files currently on disk.
    pub segments_current: AtomicU64,
    /// Torn tails found by recovery (0 or 1 per open).
    pub torn_records_total: AtomicU64,
    /// Segments deleted by retention.
    pub segments_deleted_total: AtomicU64,
    /// Appends refused because the write buffer was full.
    pub backpressure_total: AtomicU64,
    /// Duration of the last recovery, microseconds (see `recovery_seconds`).
    pub recovery_micros: AtomicU64,
    /// fdatasync latency, microseconds, buckets `FSYNC_LATENCY_BOUNDS_US`.
    pub fsync_latency_us: Histogram,
    /// Records per group commit, buckets `GROUP_RECORDS_BOUNDS`.
    pub group_commit_records: Histogram,
}

impl Default for WalStats {
    fn default() -> Self {
        WalStats {
            appends_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            fsyncs_total: AtomicU64::new(0),
            group_commits_total: AtomicU64::new(0),
            segments_current: AtomicU64::new(0),
            torn_records_total: AtomicU64::new(0),
            segments_deleted_total: AtomicU64::new(0),
            backpressure_total: AtomicU64::new(0),
            recovery_micros: AtomicU64::new(0),
            fsync_latency_us: Histogram::new(&FSYNC_LATENCY_BOUNDS_US),
            group_commit_records: Histogram::new(&GROUP_RECORDS_BOUNDS),
        }
    }
}

impl WalStats {
    /// The last recovery's duration in seconds.
    pub fn recovery_seconds(&self) -> f64 {
        self.recovery_micros.load(Relaxed) as f64 / 1e6
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        bump(counter, n);
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::new(&GROUP_RECORDS_BOUNDS);
        for v in [1, 2, 3, 4096, 4097] {
            h.record(v);
        }
        let c = h.bucket_counts();
        assert_eq!(c.len(), GROUP_RECORDS_BOUNDS.len() + 1);
        assert_eq!((c[0], c[1], c[2], c[11], c[12]), (1, 1, 1, 1, 1));
        assert_eq!((h.count(), h.sum()), (5, 1 + 2 + 3 + 4096 + 4097));
    }
}
