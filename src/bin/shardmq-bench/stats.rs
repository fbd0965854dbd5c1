//! What the generator measures: the 16-byte payload stamp, the end-to-end latency histogram
//! and per-publisher sequence tracking for loss, duplicates and reordering.
//!
//! Decisions: each thread keeps its own [`ThreadStats`] (no sharing on the hot path) and the
//! main thread merges them at the end. Sequences are tracked with one bitset per (stream,
//! publisher), so a duplicate is told from a reordering and shared-subscription members can
//! be merged into one stream per publisher afterwards.

use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Bytes of the stamp at the front of every payload.
pub const STAMP_BYTES: usize = 16;
/// Highest latency the histogram records, in µs (60 s); larger values are clamped.
const LATENCY_US_MAX: u64 = 60_000_000;

/// The process-wide clock origin every stamp is measured from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The payload stamp: when, who and which message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, ns since [`epoch`].
    pub sent_ns: u64,
    /// Publisher index.
    pub publisher: u32,
    /// Sequence number within that publisher, from 0.
    pub seq: u32,
}

impl Stamp {
    /// Writes the stamp into the first 16 bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        out[12..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Reads a stamp; `None` when the payload is too short to carry one.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let b = payload.get(..STAMP_BYTES)?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[0..8]);
        Some(Stamp {
            sent_ns: u64::from_le_bytes(t),
            publisher: u32_at(8),
            seq: u32_at(12),
        })
    }
}

/// Sequences seen from one publisher on one stream (a subscriber, or a share group).
#[derive(Clone, Debug, Default)]
pub struct SeqTrack {
    seen: Vec<u64>,
    /// Highest sequence seen plus one.
    next: u32,
    /// Distinct sequences seen.
    pub distinct: u64,
    /// Copies of a sequence already seen.
    pub duplicates: u64,
    /// Messages that arrived after a higher sequence from the same publisher.
    pub out_of_order: u64,
}

impl SeqTrack {
    /// Records one delivery of `seq`.
    pub fn record(&mut self, seq: u32) {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize((word + 1).next_power_of_two(), 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if seq < self.next {
            self.out_of_order += 1;
        } else {
            self.next = seq + 1;
        }
    }

    /// Folds another member's track of the same publisher into this one: sequences both
    /// saw count as duplicates; reorderings stay as each member saw them.
    pub fn merge(&mut self, other: &SeqTrack) {
        if other.seen.len() > self.seen.len() {
            self.seen.resize(other.seen.len(), 0);
        }
        let mut both = 0u64;
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            both += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.distinct = self.distinct + other.distinct - both;
        self.duplicates += other.duplicates + both;
        self.out_of_order += other.out_of_order;
        self.next = self.next.max(other.next);
    }
}

/// One subscriber's view: a track per publisher.
#[derive(Clone, Debug)]
pub struct StreamStats {
    /// Subscriber index.
    pub subscriber: usize,
    /// Tracks indexed by publisher.
    pub tracks: Vec<SeqTrack>,
    /// Messages whose stamp named no known publisher.
    pub foreign: u64,
}

impl StreamStats {
    /// An empty view for `publishers` publishers.
    pub fn new(subscriber: usize, publishers: usize) -> Self {
        Self {
            subscriber,
            tracks: vec![SeqTrack::default(); publishers],
            foreign: 0,
        }
    }
}

/// Counters and latencies of one generator thread.
#[derive(Debug)]
pub struct ThreadStats {
    /// End-to-end latency of measured deliveries, µs.
    pub latency_us: Histogram<u64>,
    /// Messages sent inside the measurement window.
    pub published_measured: u64,
    /// Deliveries of messages sent inside the measurement window.
    pub delivered_measured: u64,
    /// Deliveries that arrived inside the measurement window, whenever they were sent: a
    /// broker's delivery throughput even when its queues hold messages for seconds.
    pub arrived_measured: u64,
    /// Messages sent, per publisher index (all of them, warm-up included).
    pub sent: Vec<(usize, u64)>,
    /// One entry per subscriber this thread drove.
    pub streams: Vec<StreamStats>,
}

impl ThreadStats {
    /// Empty stats.
    pub fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            published_measured: 0,
            delivered_measured: 0,
            arrived_measured: 0,
            sent: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// Records one measured delivery's latency.
    pub fn record_latency_ns(&mut self, latency_ns: u64) {
        let us = (latency_ns / 1_000).clamp(1, LATENCY_US_MAX);
        self.latency_us.saturating_record(us);
        self.delivered_measured += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let s = Stamp {
            sent_ns: 123_456_789_012,
            publisher: 7,
            seq: 99,
        };
        let mut buf = [0u8; 32];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&buf[..15]), None);
    }

    #[test]
    fn track_tells_duplicates_from_reordering() {
        let mut t = SeqTrack::default();
        for seq in [0, 1, 3, 2, 3, 200] {
            t.record(seq);
        }
        assert_eq!((t.distinct, t.duplicates, t.out_of_order), (5, 1, 1));
    }

    #[test]
    fn merged_members_count_overlap_as_duplicates() {
        let (mut a, mut b) = (SeqTrack::default(), SeqTrack::default());
        for seq in [0, 2, 4] {
            a.record(seq);
        }
        for seq in [1, 3, 4, 130] {
            b.record(seq);
        }
        a.merge(&b);
        assert_eq!((a.distinct, a.duplicates), (6, 1));
    }
}
