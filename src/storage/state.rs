//! The state one WAL's handles share with its committer task, and the in-memory
//! side of group commit: the active buffer, the sealed one, rolling to a new segment
//! in memory and handing a round of buffers to the committer. Both `wal` (the handle)
//! and `committer` (the task) use it; it uses neither.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use glommio::io::{DmaBuffer, DmaFile};

use super::frame::{self, SEGMENT_HEADER_BYTES};
use super::hints::ReadHints;
use super::segment::{align_down, SegmentMeta};
use super::stats::WalStats;
use super::{Offset, WalConfig, WalError};

/// State shared by the handles and the committer task.
pub(crate) struct Shared {
    pub config: WalConfig,
    pub body_bytes_max: usize,
    pub state: RefCell<State>,
    pub stats: Arc<WalStats>,
    /// The committer task, awaited by `close`.
    pub committer: RefCell<Option<glommio::Task<()>>>,
    /// Test seam: the next fdatasync of the commit path fails with EIO.
    pub fail_next_sync: Cell<bool>,
    /// Where recent reads passed (see `hints`).
    pub read_hints: RefCell<ReadHints>,
}

/// Bytes accumulated for one segment, to be written at `file_pos` (block-aligned).
pub(crate) struct Pending {
    pub buf: DmaBuffer,
    pub file_pos: u64,
    /// Bytes filled from `buf[0]`.
    pub len: usize,
    /// Leading bytes already on disk (the carried partial block).
    pub written_len: usize,
    pub segment: Offset,
    /// New records in this buffer.
    pub records: u64,
    /// One past the last record in it.
    pub end: Offset,
}

/// Whether the next segment's file is ready.
pub(crate) enum Spare {
    Preparing,
    Ready(DmaFile),
    Failed { disk_full: bool },
}

/// Why the WAL stopped acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poison {
    DiskFull,
    Io,
}

pub(crate) struct State {
    pub next: Offset,
    pub active: Pending,
    /// A full buffer of the previous segment waiting for the committer (at most one).
    pub sealed: Option<Pending>,
    /// End of data in the active segment.
    pub segment_pos: u64,
    pub segments: VecDeque<SegmentMeta>,
    /// All records below are DMA-written.
    pub written: Offset,
    /// All records below are fdatasync'ed.
    pub durable: Offset,
    /// `sync_all`/`close` want everything below durable.
    pub sync_target: Offset,
    pub poison: Option<Poison>,
    pub closing: bool,
    pub ack_waiters: VecDeque<(Offset, Waker)>,
    pub sync_waiters: VecDeque<(Offset, Waker)>,
    pub space_waiters: Vec<Waker>,
    pub committer_waker: Option<Waker>,
    pub spare: Spare,
    pub retention_floor: Offset,
    pub retention_due: bool,
}

/// The listing of a segment that starts at `first` and holds no records yet.
pub(crate) fn empty_meta(first: Offset) -> SegmentMeta {
    SegmentMeta {
        first,
        end: first,
        data_bytes: SEGMENT_HEADER_BYTES as u64,
        max_timestamp_ms: 0,
    }
}

/// A buffer for a segment that starts at `first`: its header block, no frames yet.
pub(crate) fn fresh_segment_buffer(config: &WalConfig, first: Offset) -> Pending {
    let mut buf = glommio::allocate_dma_buffer(config.write_buffer_bytes);
    frame::encode_segment_header(&mut buf.as_bytes_mut()[..SEGMENT_HEADER_BYTES], first);
    Pending {
        buf,
        file_pos: 0,
        len: SEGMENT_HEADER_BYTES,
        written_len: 0,
        segment: first,
        records: 0,
        end: first,
    }
}

impl State {
    /// Err if the WAL accepts no appends.
    pub(crate) fn usable(&self) -> Result<(), WalError> {
        match self.poison {
            Some(Poison::DiskFull) => Err(WalError::DiskFull),
            Some(Poison::Io) => Err(WalError::Poisoned),
            None if self.closing => Err(WalError::Closed),
            None => Ok(()),
        }
    }

    fn needs_roll(&self, config: &WalConfig, frame_bytes: usize) -> bool {
        self.segment_pos + frame_bytes as u64 > config.segment_bytes
    }

    pub(crate) fn fits(&self, config: &WalConfig, frame_bytes: usize) -> bool {
        if self.needs_roll(config, frame_bytes) {
            self.sealed.is_none()
        } else {
            self.active.len + frame_bytes <= self.active.buf.len()
        }
    }

    /// Rolls to a new segment in memory if the frame does not fit the active one, and
    /// checks the buffer has room.
    pub(crate) fn make_room(
        &mut self,
        config: &WalConfig,
        frame_bytes: usize,
    ) -> Result<(), WalError> {
        if !self.fits(config, frame_bytes) {
            return Err(WalError::BufferFull);
        }
        if !self.needs_roll(config, frame_bytes) {
            return Ok(());
        }
        if let Spare::Failed { disk_full: true } = self.spare {
            return Err(WalError::DiskFull);
        }
        let first = self.next;
        let old = std::mem::replace(&mut self.active, fresh_segment_buffer(config, first));
        if old.len > old.written_len {
            self.sealed = Some(old);
        }
        self.segment_pos = SEGMENT_HEADER_BYTES as u64;
        self.segments.push_back(empty_meta(first));
        Ok(())
    }

    /// Moves everything not yet handed to the committer into `out`, in file order.
    pub(crate) fn take_round(&mut self, config: &WalConfig, out: &mut Vec<Pending>) {
        if let Some(sealed) = self.sealed.take() {
            out.push(sealed);
        }
        if self.active.len > self.active.written_len {
            let fresh = glommio::allocate_dma_buffer(config.write_buffer_bytes);
            let taken = std::mem::replace(
                &mut self.active,
                Pending {
                    buf: fresh,
                    file_pos: 0,
                    len: 0,
                    written_len: 0,
                    segment: Offset(0),
                    records: 0,
                    end: Offset(0),
                },
            );
            let tail_start = align_down(taken.len as u64) as usize;
            let carried = taken.len - tail_start;
            self.active.buf.as_bytes_mut()[..carried]
                .copy_from_slice(&taken.buf.as_bytes()[tail_start..taken.len]);
            self.active.file_pos = taken.file_pos + tail_start as u64;
            self.active.len = carried;
            self.active.written_len = carried;
            self.active.segment = taken.segment;
            self.active.end = taken.end;
            out.push(taken);
        }
        if !out.is_empty() {
            for waker in self.space_waiters.drain(..) {
                waker.wake();
            }
        }
    }
}
