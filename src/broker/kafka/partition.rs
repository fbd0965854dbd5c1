//! One Kafka partition on its owner shard: which of the shard's log records hold its
//! batches, under which partition offsets.
//!
//! The records themselves stay in the WAL; the partition keeps one small entry per
//! batch (its first offset, its record count, where in the WAL it is, its newest
//! timestamp, its size), oldest first. A fetch finds its batch by binary search and
//! reads the WAL from there, jumping from batch to batch over whatever else the log
//! holds between them; a lookup by time is the same search on the timestamps.

use std::collections::{HashMap, VecDeque};
use std::task::Waker;

use bytes::Bytes;

/// Batches per idempotent producer remembered to answer a resend (Kafka keeps five:
/// a producer has at most five requests in flight).
const RECENT_BATCHES: usize = 5;
/// Idempotent producers a partition remembers; past it the least recently seen go.
pub const PRODUCERS_MAX: usize = 4096;
/// Wakers a partition keeps for fetches waiting on it before it wakes them all.
pub const WAITERS_MAX: usize = 256;

/// What an idempotent producer's batch is, against what the partition saw from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next batch: append it.
    Next,
    /// A resend of a batch already appended at this offset: answer with it.
    Duplicate(i64),
    /// A gap or a batch from the past not remembered: OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder,
    /// An older epoch than the producer's: INVALID_PRODUCER_EPOCH (a fenced producer).
    StaleEpoch,
}

/// An idempotent producer's last batches in one partition.
#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    /// `(first sequence, last sequence, first offset)`, oldest first.
    recent: VecDeque<(i32, i32, i64)>,
    /// When it was last seen (ms), for eviction.
    seen_ms: u64,
}

/// The sequence after `seq` (they wrap from `i32::MAX` to 0).
fn after(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// The last sequence of a batch of `records` from `first`.
fn last_of(first: i32, records: u32) -> i32 {
    ((i64::from(first) + i64::from(records) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

/// Where one batch of the partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    /// Its first record's partition offset.
    pub base: i64,
    /// How many records (offsets) it holds.
    pub records: u32,
    /// Its record's offset in the shard's WAL.
    pub wal: u64,
    /// Its newest record's timestamp as the producer set it (ms).
    pub max_timestamp_ms: i64,
    /// When the broker logged it (ms): what retention by time goes by.
    pub logged_ms: u64,
    /// Its size in bytes.
    pub bytes: u32,
}

impl BatchEntry {
    /// The offset after its last record.
    pub fn end(&self) -> i64 {
        self.base + i64::from(self.records)
    }
}

/// The partition's batches and offsets on its owner.
#[derive(Debug, Default)]
pub struct Partition {
    entries: VecDeque<BatchEntry>,
    /// The first offset still kept (Kafka's log start offset).
    log_start: i64,
    /// The offset the next record gets (Kafka's log end offset).
    next: i64,
    /// Offsets below this are as durable as the fsync policy promises: what consumers
    /// may read (Kafka's high watermark).
    durable: i64,
    /// Bytes of the batches kept.
    bytes: u64,
    /// Fetches waiting for the high watermark to move.
    waiters: Vec<Waker>,
    /// Idempotent producers' sequences, by producer id.
    producers: HashMap<i64, ProducerState>,
    /// The newest batches as stored (`(base, end, batch)`, in offset order): a fetch
    /// at the tail reads them from memory, not from the log (see `KafkaLog::tail`).
    cached: VecDeque<(i64, i64, Bytes)>,
}

impl Partition {
    /// The first offset still kept.
    pub fn log_start(&self) -> i64 {
        self.log_start
    }

    /// The offset the next record gets.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Where consumers may read up to.
    pub fn high_watermark(&self) -> i64 {
        self.durable
    }

    /// Bytes kept.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records a batch appended at the end (its `base` must be [`Partition::next`]).
    pub fn push(&mut self, entry: BatchEntry) {
        debug_assert_eq!(
            entry.base, self.next,
            "batches are appended in offset order"
        );
        self.next = entry.end();
        self.bytes += u64::from(entry.bytes);
        self.entries.push_back(entry);
    }

    /// Records a batch read back at start: recovery meets them in log order, and all
    /// of them are durable.
    pub fn recover(&mut self, entry: BatchEntry) {
        if self.entries.is_empty() && self.next == 0 {
            self.log_start = entry.base;
        }
        if entry.base < self.next {
            // A batch the log holds twice cannot happen (offsets are assigned once);
            // keep the first.
            return;
        }
        self.next = entry.end();
        self.durable = self.next;
        self.bytes += u64::from(entry.bytes);
        self.entries.push_back(entry);
    }

    /// Checks an idempotent producer's batch (`first` sequence, `records` of them)
    /// against what this partition saw from it.
    pub fn check_sequence(&self, producer: i64, epoch: i16, first: i32, records: u32) -> Sequence {
        let Some(state) = self.producers.get(&producer) else {
            // Unknown (new, or its state went with retention): any start is taken.
            return Sequence::Next;
        };
        if epoch < state.epoch {
            return Sequence::StaleEpoch;
        }
        if epoch > state.epoch {
            return if first == 0 {
                Sequence::Next
            } else {
                Sequence::OutOfOrder
            };
        }
        let last = last_of(first, records);
        if let Some(&(_, _, offset)) = state
            .recent
            .iter()
            .find(|&&(f, l, _)| f == first && l == last)
        {
            return Sequence::Duplicate(offset);
        }
        match state.recent.back() {
            Some(&(_, prev_last, _)) if first == after(prev_last) => Sequence::Next,
            None => Sequence::Next,
            _ => Sequence::OutOfOrder,
        }
    }

    /// Records an idempotent producer's batch appended at `offset`.
    pub fn record_sequence(
        &mut self,
        producer: i64,
        epoch: i16,
        first: i32,
        records: u32,
        offset: i64,
        now_ms: u64,
    ) {
        if !self.producers.contains_key(&producer) && self.producers.len() >= PRODUCERS_MAX {
            // The least recently seen tenth goes (rarely: one scan per 400 new ones).
            let mut seen: Vec<u64> = self.producers.values().map(|p| p.seen_ms).collect();
            seen.sort_unstable();
            let cut = seen[PRODUCERS_MAX / 10];
            self.producers.retain(|_, p| p.seen_ms > cut);
        }
        let state = self.producers.entry(producer).or_default();
        if epoch != state.epoch {
            state.epoch = epoch;
            state.recent.clear();
        }
        if state.recent.len() == RECENT_BATCHES {
            state.recent.pop_front();
        }
        state
            .recent
            .push_back((first, last_of(first, records), offset));
        state.seen_ms = state.seen_ms.max(now_ms);
    }

    /// Offsets below `end` are durable now: wakes the fetches waiting for them.
    pub fn durable_to(&mut self, end: i64) {
        if end > self.durable {
            self.durable = end.min(self.next);
            self.wake_waiters();
        }
    }

    /// Wakes every fetch waiting on it (it grew, or it is going away).
    pub fn wake_waiters(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    /// Wakes `waker` when the high watermark moves. A fetch that gave up leaves its waker
    /// behind; past [`WAITERS_MAX`] of them every waiter is woken (a waiter still
    /// there looks again and registers anew), so an idle partition polled by long
    /// fetches holds a bounded list.
    pub fn wait(&mut self, waker: &Waker) {
        if self.waiters.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        if self.waiters.len() >= WAITERS_MAX {
            for waiter in self.waiters.drain(..) {
                waiter.wake();
            }
        }
        self.waiters.push(waker.clone());
    }

    /// The index of the batch holding `offset`, if it is kept and written.
    pub fn find(&self, offset: i64) -> Option<usize> {
        if offset < self.log_start || offset >= self.next {
            return None;
        }
        let after = self.entries.partition_point(|e| e.base <= offset);
        after.checked_sub(1)
    }

    /// The batch at `index`.
    pub fn entry(&self, index: usize) -> Option<&BatchEntry> {
        self.entries.get(index)
    }

    /// The index of the first batch whose WAL record is at or after `wal`.
    pub fn first_at_or_after_wal(&self, wal: u64) -> usize {
        self.entries.partition_point(|e| e.wal < wal)
    }

    /// The first offset of the first batch holding a record stamped `timestamp_ms` or
    /// later, with that batch's newest timestamp (Kafka's lookup by time works on batch
    /// timestamps the same way); `None` when every batch is older.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Option<(i64, i64)> {
        // Producer timestamps need not rise with offsets: the first batch that
        // qualifies, in offset order.
        self.entries
            .iter()
            .find(|e| e.max_timestamp_ms >= timestamp_ms)
            .map(|e| (e.base, e.max_timestamp_ms))
    }

    /// The offset and timestamp of the batch with the newest timestamp.
    pub fn newest_timestamp(&self) -> Option<(i64, i64)> {
        self.entries
            .iter()
            .max_by_key(|e| (e.max_timestamp_ms, std::cmp::Reverse(e.base)))
            .map(|e| (e.base, e.max_timestamp_ms))
    }

    /// Drops the oldest batches logged before `before_ms` (`None`: none for age) and as
    /// many more as keep at most `bytes_max` bytes (`None`: no bound); never one not yet
    /// durable, and never the last: the log keeps the partition's end offset in it, so
    /// offsets never restart after a restart. Returns how many went.
    pub fn trim(&mut self, before_ms: Option<u64>, bytes_max: Option<u64>) -> usize {
        let mut dropped = 0;
        while let Some(first) = self.entries.front() {
            let old = before_ms.is_some_and(|t| first.logged_ms < t);
            let over = bytes_max.is_some_and(|max| self.bytes > max);
            if !(old || over) || first.end() > self.durable || self.entries.len() == 1 {
                break;
            }
            self.bytes -= u64::from(first.bytes);
            self.log_start = first.end();
            self.entries.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Keeps the stored bytes of the batch `[base, end)` just appended, for fetches.
    pub fn cache(&mut self, base: i64, end: i64, stored: Bytes) {
        self.cached.push_back((base, end, stored));
    }

    /// Bytes of the batches cached.
    pub fn cached_bytes(&self) -> usize {
        self.cached.iter().map(|(_, _, b)| b.len()).sum()
    }

    /// Lets the oldest cached batch go (the shard's cache is full); its size.
    pub fn uncache_oldest(&mut self) -> usize {
        self.cached.pop_front().map_or(0, |(_, _, b)| b.len())
    }

    /// The cached batch holding `offset`, and the offset after it.
    pub fn cached(&self, offset: i64) -> Option<(&Bytes, i64)> {
        let i = self.cached.partition_point(|(_, end, _)| *end <= offset);
        self.cached
            .get(i)
            .filter(|(base, _, _)| *base <= offset)
            .map(|(_, end, bytes)| (bytes, *end))
    }

    /// The WAL offset of the oldest batch kept: what the shard's log must keep.
    pub fn oldest_wal(&self) -> Option<u64> {
        self.entries.front().map(|e| e.wal)
    }

    /// Batches kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: i64, records: u32, wal: u64, ts: i64) -> BatchEntry {
        BatchEntry {
            base,
            records,
            wal,
            max_timestamp_ms: ts,
            logged_ms: ts as u64,
            bytes: 100,
        }
    }

    fn three() -> Partition {
        let mut p = Partition::default();
        p.push(entry(0, 3, 10, 1_000));
        p.push(entry(3, 1, 15, 900));
        p.push(entry(4, 5, 40, 3_000));
        p
    }

    #[test]
    fn offsets_find_their_batch() {
        let mut p = three();
        assert_eq!(p.next(), 9);
        assert_eq!(p.high_watermark(), 0, "nothing durable yet");
        p.durable_to(9);
        assert_eq!(
            (0..9).map(|o| p.find(o).unwrap()).collect::<Vec<_>>(),
            [0, 0, 0, 1, 2, 2, 2, 2, 2]
        );
        assert_eq!(p.find(9), None);
        assert_eq!(p.find(-1), None);
        assert_eq!(p.first_at_or_after_wal(11), 1);
        assert_eq!(p.first_at_or_after_wal(41), 3);
    }

    #[test]
    fn lookup_by_time_takes_the_first_batch_in_offset_order() {
        let p = three();
        assert_eq!(p.offset_for_time(0), Some((0, 1_000)));
        assert_eq!(p.offset_for_time(950), Some((0, 1_000)));
        assert_eq!(p.offset_for_time(1_001), Some((4, 3_000)));
        assert_eq!(p.offset_for_time(3_001), None);
        assert_eq!(p.newest_timestamp(), Some((4, 3_000)));
    }

    #[test]
    fn trimming_moves_the_log_start_and_spares_what_is_not_durable() {
        let mut p = three();
        p.durable_to(4);
        assert_eq!(p.trim(Some(10_000), None), 2, "the third is not durable");
        assert_eq!((p.log_start(), p.oldest_wal()), (4, Some(40)));
        assert_eq!(p.find(3), None, "below the log start");
        p.durable_to(9);
        assert_eq!(p.trim(None, Some(0)), 0, "the last batch stays");
        assert_eq!((p.log_start(), p.next(), p.len()), (4, 9, 1));
        assert_eq!(p.bytes(), 100);
    }

    #[test]
    fn idempotent_sequences_take_the_next_answer_resends_and_refuse_gaps() {
        let mut p = Partition::default();
        assert_eq!(
            p.check_sequence(7, 0, 0, 3),
            Sequence::Next,
            "a new producer"
        );
        p.record_sequence(7, 0, 0, 3, 100, 1);
        assert_eq!(p.check_sequence(7, 0, 3, 2), Sequence::Next);
        p.record_sequence(7, 0, 3, 2, 103, 2);
        assert_eq!(p.check_sequence(7, 0, 0, 3), Sequence::Duplicate(100));
        assert_eq!(p.check_sequence(7, 0, 3, 2), Sequence::Duplicate(103));
        assert_eq!(
            p.check_sequence(7, 0, 6, 1),
            Sequence::OutOfOrder,
            "sequence 5 is missing"
        );
        assert_eq!(
            p.check_sequence(7, 0, 1, 2),
            Sequence::OutOfOrder,
            "overlaps"
        );
        // A new epoch starts at 0; the old one is fenced.
        assert_eq!(p.check_sequence(7, 1, 4, 1), Sequence::OutOfOrder);
        assert_eq!(p.check_sequence(7, 1, 0, 1), Sequence::Next);
        p.record_sequence(7, 1, 0, 1, 105, 3);
        assert_eq!(p.check_sequence(7, 0, 5, 1), Sequence::StaleEpoch);
        // Sequences wrap.
        p.record_sequence(9, 0, i32::MAX - 1, 2, 200, 4);
        assert_eq!(p.check_sequence(9, 0, 0, 1), Sequence::Next);
        // Only the last five batches are remembered.
        for i in 0..6 {
            p.record_sequence(11, 0, i, 1, 300 + i64::from(i), 5);
        }
        assert_eq!(p.check_sequence(11, 0, 0, 1), Sequence::OutOfOrder);
        assert_eq!(p.check_sequence(11, 0, 1, 1), Sequence::Duplicate(301));
    }

    #[test]
    fn producers_past_the_bound_lose_the_least_recently_seen() {
        let mut p = Partition::default();
        for id in 0..PRODUCERS_MAX as i64 {
            p.record_sequence(id, 0, 0, 1, id, id as u64);
        }
        p.record_sequence(-5, 0, 0, 1, 0, u64::MAX);
        assert!(p.producers.len() < PRODUCERS_MAX);
        assert!(p.producers.contains_key(&-5));
        assert!(!p.producers.contains_key(&0), "the oldest went");
        assert!(
            p.producers.contains_key(&(PRODUCERS_MAX as i64 - 1)),
            "the newest stayed"
        );
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_cached_batch_is_found_by_any_offset_it_holds() {
        let mut p = Partition::default();
        for (base, end) in [(0, 3), (3, 4), (4, 10)] {
            p.cache(base, end, Bytes::from(vec![base as u8; 5]));
        }
        let found = |p: &Partition, offset| p.cached(offset).map(|(b, end)| (b[0], end));
        assert_eq!(found(&p, 0), Some((0, 3)));
        assert_eq!(found(&p, 2), Some((0, 3)), "the whole batch holding it");
        assert_eq!(found(&p, 3), Some((3, 4)));
        assert_eq!(found(&p, 9), Some((4, 10)));
        assert_eq!(found(&p, 10), None, "past the newest");
        assert_eq!(p.cached_bytes(), 15);
        assert_eq!(p.uncache_oldest(), 5);
        assert_eq!(found(&p, 1), None, "let go: read from the log");
        assert_eq!(found(&p, 3), Some((3, 4)));
    }

    #[test]
    fn waiters_left_behind_stay_bounded() {
        let mut p = Partition::default();
        let counts: Vec<std::sync::Arc<Count>> = (0..=WAITERS_MAX)
            .map(|_| std::sync::Arc::new(Count(Default::default())))
            .collect();
        for count in &counts {
            p.wait(&Waker::from(std::sync::Arc::clone(count)));
        }
        assert_eq!(p.waiters.len(), 1, "the full list was woken and let go");
        let woken: usize = counts
            .iter()
            .map(|c| c.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert_eq!(woken, WAITERS_MAX);
        p.push(entry(0, 1, 1, 1));
        p.durable_to(1);
        assert_eq!(
            counts[WAITERS_MAX]
                .0
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(p.waiters.is_empty());
    }

    #[test]
    fn recovery_rebuilds_from_the_first_batch_kept() {
        let mut p = Partition::default();
        p.recover(entry(7, 2, 100, 5));
        p.recover(entry(9, 1, 120, 6));
        assert_eq!((p.log_start(), p.next(), p.high_watermark()), (7, 10, 10));
        assert_eq!(p.find(8), Some(0));
        assert_eq!(p.len(), 2);
    }
}
