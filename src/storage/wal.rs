//! The `Wal` handle: appends into the group-commit buffer, waiting for durability,
//! reading back, retention floor, close.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use glommio::io::DmaFile;

use super::frame::{self, Decoded, DMA_ALIGN_BYTES, FRAME_HEADER_BYTES};
use super::hints::{ReadHint, ReadHints, HINT_SPACING_BYTES};
use super::segment::{self, align_down, SegmentMeta};
use super::state::{empty_meta, fresh_segment_buffer, Pending, Shared, Spare, State};
use super::stats::WalStats;
use super::{committer, recovery};
use super::{FsyncPolicy, Offset, RecordKind, RecordRef, RecoveryReport, WalConfig, WalError};

/// Smallest accepted `write_buffer_bytes`.
const WRITE_BUFFER_BYTES_MIN: usize = 4 * DMA_ALIGN_BYTES;
/// Smallest accepted `segment_bytes`.
const SEGMENT_BYTES_MIN: u64 = 16 * DMA_ALIGN_BYTES as u64;

/// A cheap-clone handle to one shard's WAL. `!Send`: it lives on its shard's executor.
#[derive(Clone)]
pub struct Wal {
    shared: Rc<Shared>,
}

impl Wal {
    /// Recovers the WAL in `config.dir`, calling `visit` for every valid record in offset
    /// order, then starts the committer. See the module docs for what recovery accepts.
    pub async fn open(
        config: WalConfig,
        visit: impl FnMut(RecordRef<'_>),
    ) -> Result<(Wal, RecoveryReport), WalError> {
        let body_bytes_max = validate(&config)?;
        let recovered = recovery::recover(&config.dir, body_bytes_max, visit).await?;
        let report = recovered.report;
        let stats = Arc::new(WalStats::default());
        WalStats::set(&stats.recovery_micros, report.duration.as_micros() as u64);
        WalStats::set(&stats.torn_records_total, report.torn_records);
        let mut segments: VecDeque<SegmentMeta> = recovered.segments.into();
        let next = report.next_offset;
        let (active, file) = match segments.back() {
            Some(last) if last.data_bytes < config.segment_bytes => {
                let path = segment::segment_path(&config.dir, last.first);
                let file = segment::open_for_append(&path).await?;
                (resume_buffer(&file, &config, last).await?, Some(file))
            }
            _ => {
                segments.push_back(empty_meta(next));
                (fresh_segment_buffer(&config, next), None)
            }
        };
        let segment_pos = active.file_pos + active.len as u64;
        WalStats::set(&stats.segments_current, segments.len() as u64);
        let state = State {
            next,
            active,
            sealed: None,
            segment_pos,
            segments,
            written: next,
            durable: next,
            sync_target: next,
            poison: None,
            closing: false,
            ack_waiters: VecDeque::new(),
            sync_waiters: VecDeque::new(),
            space_waiters: Vec::new(),
            committer_waker: None,
            spare: Spare::Preparing,
            retention_floor: Offset(0),
            retention_due: false,
        };
        let shared = Rc::new(Shared {
            config,
            body_bytes_max,
            state: RefCell::new(state),
            stats,
            committer: RefCell::new(None),
            fail_next_sync: Cell::new(false),
            read_hints: RefCell::new(ReadHints::default()),
        });
        let dir = glommio::io::Directory::open(&shared.config.dir).await?;
        committer::spawn_spare(&shared);
        let task = glommio::spawn_local(committer::run(shared.clone(), file, dir));
        *shared.committer.borrow_mut() = Some(task);
        Ok((Wal { shared }, report))
    }

    /// Buffers one record whose body is the concatenation of `parts`; returns its offset.
    ///
    /// Fails at once with `Poisoned`, `Closed`, `DiskFull` (a new segment is needed and
    /// none could be prepared), `BufferFull` (see `reserve`) or `RecordTooLarge`.
    pub fn append(
        &self,
        kind: RecordKind,
        timestamp_ms: u64,
        parts: &[&[u8]],
    ) -> Result<Offset, WalError> {
        let body_bytes: usize = parts.iter().map(|p| p.len()).sum();
        if body_bytes > self.shared.body_bytes_max {
            return Err(WalError::RecordTooLarge {
                body_bytes,
                body_bytes_max: self.shared.body_bytes_max,
            });
        }
        let frame_bytes = frame::frame_bytes(body_bytes);
        let mut st = self.shared.state.borrow_mut();
        st.usable()?;
        if let Err(e) = st.make_room(&self.shared.config, frame_bytes) {
            if matches!(e, WalError::BufferFull) {
                WalStats::add(&self.shared.stats.backpressure_total, 1);
            }
            return Err(e);
        }
        let offset = st.next;
        let active = &mut st.active;
        let at = active.len;
        frame::encode_frame(
            &mut active.buf.as_bytes_mut()[at..at + frame_bytes],
            kind,
            offset,
            timestamp_ms,
            parts,
        );
        active.len += frame_bytes;
        active.records += 1;
        active.end = Offset(offset.0 + 1);
        st.segment_pos += frame_bytes as u64;
        st.next = Offset(offset.0 + 1);
        let segment_pos = st.segment_pos;
        let last = st
            .segments
            .back_mut()
            .expect("the active segment is always listed");
        last.end = Offset(offset.0 + 1);
        last.data_bytes = segment_pos;
        last.max_timestamp_ms = last.max_timestamp_ms.max(timestamp_ms);
        if let Some(waker) = st.committer_waker.take() {
            waker.wake();
        }
        drop(st);
        WalStats::add(&self.shared.stats.appends_total, 1);
        WalStats::add(&self.shared.stats.bytes_total, frame_bytes as u64);
        Ok(offset)
    }

    /// Waits until a record with a body of `body_bytes` fits the buffer, so an `append`
    /// right after (no `.await` between) cannot fail with `BufferFull`.
    pub async fn reserve(&self, body_bytes: usize) -> Result<(), WalError> {
        if body_bytes > self.shared.body_bytes_max {
            return Err(WalError::RecordTooLarge {
                body_bytes,
                body_bytes_max: self.shared.body_bytes_max,
            });
        }
        let frame_bytes = frame::frame_bytes(body_bytes);
        poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            if let Err(e) = st.usable() {
                return Poll::Ready(Err(e));
            }
            if st.fits(&self.shared.config, frame_bytes) {
                return Poll::Ready(Ok(()));
            }
            st.space_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Resolves when the record at `offset` is as durable as the fsync policy promises
    /// (see `FsyncPolicy`); `Err(Poisoned)` if a write or fdatasync failed first.
    ///
    /// # Panics
    /// If `offset` was never appended (a caller bug, not a disk condition).
    pub async fn wait_durable(&self, offset: Offset) -> Result<(), WalError> {
        let policy = self.shared.config.fsync_policy;
        let mut registered = false;
        poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            assert!(offset < st.next, "wait_durable on an offset never appended");
            if st.poison.is_some() {
                return Poll::Ready(Err(WalError::Poisoned));
            }
            let acked = match policy {
                FsyncPolicy::Always => st.durable,
                FsyncPolicy::EveryN(_) | FsyncPolicy::IntervalMs(_) => st.written,
                FsyncPolicy::None => return Poll::Ready(Ok(())),
            };
            if offset < acked {
                return Poll::Ready(Ok(()));
            }
            if !registered {
                insert_sorted(&mut st.ack_waiters, offset, cx.waker());
                registered = true;
            }
            Poll::Pending
        })
        .await
    }

    /// The first offset that may hold a record stamped `timestamp_ms` or later: the
    /// start of the oldest segment whose newest record is not older than that (records
    /// in earlier segments are all older). The next offset if there is none.
    pub fn first_offset_since(&self, timestamp_ms: u64) -> Offset {
        let st = self.shared.state.borrow();
        st.segments
            .iter()
            .find(|s| s.max_timestamp_ms >= timestamp_ms || s.end == s.first || s.end >= st.written)
            .map_or(st.next, |s| s.first)
    }

    /// The oldest offset still in the log.
    pub fn first_offset(&self) -> Offset {
        let st = self.shared.state.borrow();
        st.segments.front().map_or(st.next, |s| s.first)
    }

    /// Where the log would start if nobody still needed old records: the end of the
    /// oldest segments that `retention_ms` / `retention_bytes` would delete at `now_ms`.
    /// `None` when they would delete nothing (or no limit is set).
    pub fn retention_candidate(&self, now_ms: u64) -> Option<Offset> {
        let mut st = self.shared.state.borrow_mut();
        let limits = super::retention::RetentionLimits {
            retention_ms: self.shared.config.retention_ms,
            retention_bytes: self.shared.config.retention_bytes,
            floor: Offset(u64::MAX),
        };
        let n = super::retention::deletable_prefix(st.segments.make_contiguous(), limits, now_ms);
        n.checked_sub(1).map(|last| st.segments[last].end)
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> Offset {
        self.shared.state.borrow().next
    }

    /// The largest record body `append` accepts.
    pub fn body_bytes_max(&self) -> usize {
        self.shared.body_bytes_max
    }

    /// Resolves when everything appended so far is written and fdatasync'ed, whatever
    /// the policy (shutdown, tests).
    pub async fn sync_all(&self) -> Result<(), WalError> {
        let target = {
            let mut st = self.shared.state.borrow_mut();
            let target = st.next;
            st.sync_target = st.sync_target.max(target);
            if let Some(waker) = st.committer_waker.take() {
                waker.wake();
            }
            target
        };
        self.wait_synced(target).await
    }

    async fn wait_synced(&self, target: Offset) -> Result<(), WalError> {
        let mut registered = false;
        poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            if st.poison.is_some() {
                return Poll::Ready(Err(WalError::Poisoned));
            }
            if st.durable >= target {
                return Poll::Ready(Ok(()));
            }
            if !registered {
                insert_sorted(&mut st.sync_waiters, Offset(target.0 - 1), cx.waker());
                registered = true;
            }
            Poll::Pending
        })
        .await
    }

    /// Records below `offset` are needed by no one any more: segments entirely below it
    /// may go once past a retention limit. The floor only rises.
    pub fn set_retention_floor(&self, offset: Offset) {
        let mut st = self.shared.state.borrow_mut();
        if offset > st.retention_floor {
            st.retention_floor = offset;
            st.retention_due = true;
            if let Some(waker) = st.committer_waker.take() {
                waker.wake();
            }
        }
    }

    /// Reads written records from `from` on, CRC-checked, calling `visit` for each until
    /// `max_bytes` of bodies were delivered (at least one record if any is available).
    /// Returns the offset to read from next. A damaged frame is `Corrupt`, never served.
    pub async fn read_from(
        &self,
        from: Offset,
        max_bytes: usize,
        mut visit: impl FnMut(RecordRef<'_>),
    ) -> Result<Offset, WalError> {
        let mut next = from;
        let mut budget = max_bytes;
        let mut delivered = false;
        loop {
            let (first, limit, written) = {
                let st = self.shared.state.borrow();
                let idx = st.segments.partition_point(|s| s.first <= next);
                let Some(meta) = idx.checked_sub(1).and_then(|i| st.segments.get(i)) else {
                    return Err(WalError::NotRetained { offset: next });
                };
                (meta.first, meta.end.min(st.written), st.written)
            };
            if next >= written {
                return Ok(next);
            }
            let path = segment::segment_path(&self.shared.config.dir, first);
            let spent = read_segment(
                &path,
                &self.shared.read_hints,
                SegmentRange { first, limit },
                &mut next,
                &mut budget,
                &mut delivered,
                self.shared.body_bytes_max,
                &mut visit,
            )
            .await?;
            if spent || next >= written {
                return Ok(next);
            }
            next = next.max(limit);
        }
    }

    /// The WAL's counters, readable from any thread.
    pub fn stats(&self) -> Arc<WalStats> {
        self.shared.stats.clone()
    }

    /// Writes and fdatasyncs everything, then stops the committer. Other handles get
    /// `Closed` afterwards.
    pub async fn close(self) -> Result<(), WalError> {
        {
            let mut st = self.shared.state.borrow_mut();
            st.closing = true;
            st.sync_target = st.next;
            if let Some(waker) = st.committer_waker.take() {
                waker.wake();
            }
        }
        let task = self.shared.committer.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        let spare = std::mem::replace(
            &mut self.shared.state.borrow_mut().spare,
            Spare::Failed { disk_full: false },
        );
        if let Spare::Ready(file) = spare {
            // Left as spare.tmp; the next open removes it.
            file.close().await?;
        }
        let st = self.shared.state.borrow();
        match st.poison {
            Some(_) => Err(WalError::Poisoned),
            None => Ok(()),
        }
    }

    /// Test seam: makes the next commit-path fdatasync fail.
    #[cfg(test)]
    pub(crate) fn inject_sync_failure(&self) {
        self.shared.fail_next_sync.set(true);
    }
}

/// The records of one segment to read: `[first, limit)`.
struct SegmentRange {
    first: Offset,
    limit: Offset,
}

/// Delivers one segment's records from `*next` up to `range.limit`, advancing `*next`;
/// true when the budget is spent.
#[allow(clippy::too_many_arguments)]
async fn read_segment(
    path: &Path,
    hints: &RefCell<ReadHints>,
    range: SegmentRange,
    next: &mut Offset,
    budget: &mut usize,
    delivered: &mut bool,
    body_bytes_max: usize,
    visit: &mut impl FnMut(RecordRef<'_>),
) -> Result<bool, WalError> {
    let corrupt = |pos: u64, reason: &str| WalError::Corrupt {
        segment: path.to_path_buf(),
        file_offset: pos,
        reason: reason.to_owned(),
    };
    let mut scanner = segment::Scanner::open(path).await?;
    let mut expected = range.first;
    let best = hints.borrow().best(range.first, *next, range.limit);
    match best {
        Some(h) => {
            scanner.seek(h.file_pos);
            expected = h.offset;
        }
        None => scanner
            .advance_header(range.first)
            .await
            .map_err(|why| corrupt(0, why))?,
    }
    let segment = range.first;
    let mut marks = Vec::new();
    let spent = scan_records(
        &mut scanner,
        range,
        &mut expected,
        next,
        budget,
        delivered,
        body_bytes_max,
        visit,
        &corrupt,
        &mut marks,
    )
    .await;
    if spent.is_ok() {
        marks.push(ReadHint {
            segment,
            offset: expected,
            file_pos: scanner.position(),
        });
    }
    hints.borrow_mut().note(marks);
    spent
}

#[allow(clippy::too_many_arguments)]
async fn scan_records(
    scanner: &mut segment::Scanner,
    range: SegmentRange,
    expected: &mut Offset,
    next: &mut Offset,
    budget: &mut usize,
    delivered: &mut bool,
    body_bytes_max: usize,
    visit: &mut impl FnMut(RecordRef<'_>),
    corrupt: &impl Fn(u64, &str) -> WalError,
    marks: &mut Vec<ReadHint>,
) -> Result<bool, WalError> {
    let mut marked_at: Option<u64> = None;
    while *expected < range.limit {
        let pos = scanner.position();
        let need = match scanner.decode(*expected, body_bytes_max) {
            Decoded::Record(record, n) => {
                // Where this read starts, and every HINT_SPACING_BYTES after.
                if record.offset >= *next
                    && marked_at.is_none_or(|at| pos - at >= HINT_SPACING_BYTES)
                {
                    marks.push(ReadHint {
                        segment: range.first,
                        offset: record.offset,
                        file_pos: pos,
                    });
                    marked_at = Some(pos);
                }
                if record.offset >= *next {
                    // Stop before a record that overflows the budget, unless nothing was
                    // delivered yet: a reader must always make progress.
                    if *delivered && record.body.len() > *budget {
                        return Ok(true);
                    }
                    *budget = budget.saturating_sub(record.body.len());
                    *delivered = true;
                    visit(record);
                    *next = Offset(record.offset.0 + 1);
                }
                scanner.advance(n);
                *expected = Offset(expected.0 + 1);
                continue;
            }
            Decoded::Stop(reason) => return Err(corrupt(scanner.position(), reason.as_str())),
            Decoded::NeedBytes(need) => need,
        };
        if !scanner.fill(need).await? {
            return Err(corrupt(
                scanner.position(),
                "segment ends before the written offset",
            ));
        }
    }
    Ok(false)
}

fn validate(config: &WalConfig) -> Result<usize, WalError> {
    let bad = |why: String| Err(WalError::InvalidConfig(why));
    if config.write_buffer_bytes < WRITE_BUFFER_BYTES_MIN
        || config.write_buffer_bytes % DMA_ALIGN_BYTES != 0
    {
        return bad(format!(
            "write_buffer_bytes = {} must be a multiple of {DMA_ALIGN_BYTES} and at least {WRITE_BUFFER_BYTES_MIN}",
            config.write_buffer_bytes
        ));
    }
    if config.segment_bytes < SEGMENT_BYTES_MIN
        || config.segment_bytes % DMA_ALIGN_BYTES as u64 != 0
    {
        return bad(format!(
            "segment_bytes = {} must be a multiple of {DMA_ALIGN_BYTES} and at least {SEGMENT_BYTES_MIN}",
            config.segment_bytes
        ));
    }
    if let FsyncPolicy::EveryN(0) | FsyncPolicy::IntervalMs(0) = config.fsync_policy {
        return bad("fsync_policy every_n / interval_ms need a value of at least 1".into());
    }
    // Room for the carried partial block (or the segment header) plus one frame.
    let room = config.write_buffer_bytes.min(config.segment_bytes as usize) - 2 * DMA_ALIGN_BYTES;
    Ok((room - FRAME_HEADER_BYTES).min(u32::MAX as usize))
}

/// A buffer continuing the recovered last segment: its partial last block is carried.
async fn resume_buffer(
    file: &DmaFile,
    config: &WalConfig,
    last: &SegmentMeta,
) -> Result<Pending, WalError> {
    let file_pos = align_down(last.data_bytes);
    let carried = (last.data_bytes - file_pos) as usize;
    let mut buf = glommio::allocate_dma_buffer(config.write_buffer_bytes);
    if carried > 0 {
        let bytes = file.read_at(file_pos, carried).await?;
        if bytes.len() != carried {
            return Err(WalError::Io(std::io::Error::other(
                "short read of the last block",
            )));
        }
        buf.as_bytes_mut()[..carried].copy_from_slice(&bytes);
    }
    Ok(Pending {
        buf,
        file_pos,
        len: carried,
        written_len: carried,
        segment: last.first,
        records: 0,
        end: last.end,
    })
}

/// Inserts a waiter keeping the queue in offset order (appends usually go to the back).
fn insert_sorted(queue: &mut VecDeque<(Offset, Waker)>, offset: Offset, waker: &Waker) {
    let at = queue.partition_point(|(o, _)| *o <= offset);
    queue.insert(at, (offset, waker.clone()));
}
