//! The per-shard write-ahead log: segments of CRC-checked records on O_DIRECT files,
//! group commit, the fsync policy, recovery and retention.
//!
//! # What this module owns
//! One `Wal` per shard, living inside that shard's glommio `LocalExecutor` (`!Send`,
//! `Rc`/`RefCell` inside; no `RefCell` borrow is ever held across an `.await`). It stores
//! opaque records — a kind byte, a caller-supplied timestamp and a body — under offsets
//! that only grow. It knows nothing of MQTT: the broker encodes its own fields into the body.
//!
//! # What it may use
//! No other shardmq module. Inside, imports point one way: `wal` (the handle) uses
//! `committer` (the group-commit task), `recovery` and `state` (what the handle and the
//! task share); `committer` uses `state`; below them `segment`, `retention`, `hints`,
//! `stats`, `policy` and `frame` (the on-disk record format) use none of those.
//!
//! # On-disk format (version 1)
//! `dir/` holds segment files named by the offset of their first record, zero-padded to
//! 20 digits: `00000000000000000042.log`. A segment is:
//!
//! ```text
//! block 0 (4096 B, header): magic "SHMQWAL\0" (8) | version u8 = 1 | 3 reserved zero bytes
//!                           | first offset u64 LE | CRC32 of the previous 20 bytes u32 LE | zeros
//! then frames back to back from byte 4096, not individually aligned:
//!   body length u32 LE | CRC32 u32 LE | kind u8 | offset u64 LE | timestamp_ms u64 LE | body
//! then zeros to the end of the (pre-zeroed) file.
//! ```
//! The frame CRC (crc32fast, IEEE) covers the length field and every byte after the CRC
//! field, so a damaged length is caught too. Offsets are consecutive across frames and
//! segments. All writes are whole 4096-byte blocks at 4096-aligned positions (a multiple
//! of any logical block size); a group commit that ends mid-block pads it with zeros and
//! the next one rewrites that block with more frames. A `spare.tmp` file is the next
//! segment being pre-zeroed; it is never read.
//!
//! # Decisions
//! - **Group commit.** `append` only copies the frame into an aligned in-memory buffer.
//!   One committer task per WAL takes everything accumulated, writes it with one DMA
//!   write and, when the policy says so, one fdatasync; appends made meanwhile form the
//!   next group. Waiters resolve in offset order.
//! - **Backpressure.** The buffer is bounded by `write_buffer_bytes`; a full buffer makes
//!   `append` fail at once with `WalError::BufferFull` (never grows). `Wal::reserve`
//!   waits until a record of a given size fits, so a caller may `reserve().await` and then
//!   `append` with no await in between.
//! - **Segments** roll when the next frame would pass `segment_bytes`. The next segment is
//!   created, filled with zeros and fdatasync'ed ahead of time by a background task
//!   (writing into pre-zeroed blocks avoids the metadata work of growing a file); at roll
//!   the committer fdatasyncs the finished segment, renames the spare and syncs the
//!   directory. So every segment but the last is complete and durable.
//! - **Recovery** scans segments in order and stops at the first zeroed, torn or bad
//!   frame, or at a frame whose offset is not the expected next one (which is what makes
//!   stale bytes in reused space harmless). A stop inside the last segment is a torn tail:
//!   everything non-zero from there to the end of the file is overwritten with zeros and
//!   fdatasync'ed before any append. That holds after a zeroed frame header too: a power
//!   loss may persist later blocks of an unsynced (so unacknowledged) write without the
//!   rewrite of the block where the data now ends, and those stale frames are valid and
//!   carry exactly the offsets the next appends get; left in place, a later recovery would
//!   read them back as records once new appends end where one begins. Finding them means
//!   reading the rest of the last segment (about 0.1 s for 64 MiB here), so it is done
//!   only when the log was last recovered in another boot of the kernel (`dir/boot-id`):
//!   within one boot, writes are never persisted out of order. A bad frame in an earlier segment, a gap between
//!   segments or a damaged segment header is `WalError::Corrupt`: that data had been made
//!   durable, so the WAL refuses to start rather than silently drop it.
//! - **A failed write or fdatasync poisons the WAL** (see `committer`): nothing is retried.
//! - **Buffers.** `append` copies into the active buffer and allocates nothing; the
//!   committer takes the whole buffer each round and allocates the next one from
//!   glommio's DMA pool (one allocation per group commit, not per record), carrying the
//!   partial last block over so it is rewritten with the following frames.
//! - **glommio iopoll probe.** glommio 0.9 decides per device, on the first `DmaFile`
//!   opened in the process, whether to use its polled ring, and an empty first file fools
//!   it (later reads fail with EOPNOTSUPP). `open` therefore opens a one-block probe file
//!   before anything else; any other module opening DMA files should be started after.
//! - **Retention** deletes whole segments, oldest first, only when they are entirely below
//!   the retention floor and past `retention_ms` or beyond `retention_bytes`; never the
//!   active segment. With no floor set nothing is deleted. Limits are evaluated when the
//!   floor rises and at each segment roll.

#[doc(hidden)]
pub mod check;
mod committer;
mod frame;
mod hints;
mod policy;
mod recovery;
mod retention;
mod segment;
mod state;
mod stats;
mod wal;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use frame::StopReason;
pub use policy::{FsyncPolicy, FsyncPolicyParseError, BATCH_ALIAS_RECORDS, PERIODIC_ALIAS_MS};
pub use recovery::RecoveryReport;
pub use stats::{Histogram, WalStats, FSYNC_LATENCY_BOUNDS_US, GROUP_RECORDS_BOUNDS};
pub use wal::Wal;

/// The position of a record in one shard's log. Offsets only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

/// What a record is, for the broker; the WAL stores it untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKind(pub u8);

/// A record as read back from the log; the body borrows the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Its offset.
    pub offset: Offset,
    /// Its kind byte.
    pub kind: RecordKind,
    /// The timestamp given at append, milliseconds since the Unix epoch by convention.
    pub timestamp_ms: u64,
    /// The opaque body.
    pub body: &'a [u8],
}

/// Settings of one WAL.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The directory holding this shard's segments (created if missing).
    pub dir: PathBuf,
    /// A segment rolls before it would pass this size; a multiple of 4096, at least 64 KiB.
    pub segment_bytes: u64,
    /// When to fdatasync, and so what `wait_durable` promises.
    pub fsync_policy: FsyncPolicy,
    /// The in-memory group-commit buffer; a multiple of 4096, at least 16 KiB. Bounds the
    /// largest record too (see `Wal::body_bytes_max`).
    pub write_buffer_bytes: usize,
    /// Delete segments whose newest record is older than this (and below the floor).
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while the log is larger than this (and below the floor).
    pub retention_bytes: Option<u64>,
}

impl WalConfig {
    /// A configuration with the given directory and defaults sized for these machines:
    /// 64 MiB segments, 1 MiB buffer, `always`, no retention limits.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            fsync_policy: FsyncPolicy::Always,
            write_buffer_bytes: 1 << 20,
            retention_ms: None,
            retention_bytes: None,
        }
    }
}

/// Failures of WAL operations.
#[derive(Debug)]
pub enum WalError {
    /// An I/O error outside the commit path (opening, reading, recovery).
    Io(io::Error),
    /// A write or fdatasync failed earlier; the WAL accepts and acknowledges nothing more.
    Poisoned,
    /// The disk is full: no new segment could be prepared, or a write failed with ENOSPC.
    DiskFull,
    /// The group-commit buffer is full; retry after `Wal::reserve`.
    BufferFull,
    /// The WAL was closed.
    Closed,
    /// Durable data on disk is damaged; the WAL will not start over it.
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte position of the problem in that file.
        file_offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The record body is larger than the WAL can hold.
    RecordTooLarge {
        /// The body length given.
        body_bytes: usize,
        /// The limit.
        body_bytes_max: usize,
    },
    /// `read_from` asked for an offset older than the oldest retained segment.
    NotRetained {
        /// The offset asked for.
        offset: Offset,
    },
    /// The configuration is unusable.
    InvalidConfig(String),
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io(e) => write!(f, "WAL I/O error: {e}"),
            WalError::Poisoned => {
                f.write_str("WAL poisoned by an earlier write or fdatasync failure")
            }
            WalError::DiskFull => f.write_str("WAL disk full"),
            WalError::BufferFull => f.write_str("WAL write buffer full"),
            WalError::Closed => f.write_str("WAL closed"),
            WalError::Corrupt {
                segment,
                file_offset,
                reason,
            } => write!(
                f,
                "WAL corrupt: {} at byte {file_offset}: {reason}",
                segment.display()
            ),
            WalError::RecordTooLarge {
                body_bytes,
                body_bytes_max,
            } => write!(
                f,
                "WAL record body of {body_bytes} bytes exceeds the limit of {body_bytes_max}"
            ),
            WalError::NotRetained { offset } => {
                write!(f, "WAL offset {} is no longer retained", offset.0)
            }
            WalError::InvalidConfig(why) => write!(f, "invalid WAL configuration: {why}"),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WalError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            WalError::DiskFull
        } else {
            WalError::Io(e)
        }
    }
}

impl From<glommio::GlommioError<()>> for WalError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return WalError::DiskFull;
        }
        match e {
            glommio::GlommioError::IoError(io) => WalError::Io(io),
            other => WalError::Io(io::Error::other(other.to_string())),
        }
    }
}
#[cfg(test)]
mod tests;
