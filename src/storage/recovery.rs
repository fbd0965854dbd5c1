//! Opening a WAL: scan every segment, hand valid records to the caller, cut a torn tail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::frame::{self, Decoded, SegmentHeader, StopReason};
use super::segment::{self, align_down, align_up, Scanner, SegmentMeta};
use super::{Offset, RecordRef, WalError};

/// What recovery found when opening a WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid records visited.
    pub records: u64,
    /// Segments kept.
    pub segments: u32,
    /// Torn tails cut off (0 or 1: only the last segment may have one).
    pub torn_records: u64,
    /// Non-zero bytes cut off with the torn tail.
    pub torn_bytes: u64,
    /// Why the scan of the last segment stopped, if not at a clean end (a zeroed frame
    /// header with non-zero bytes after it is `Zeroed` here).
    pub torn_reason: Option<StopReason>,
    /// How long the scan took.
    pub duration: Duration,
    /// The offset the next append gets.
    pub next_offset: Offset,
}

/// What recovery leaves for the writer.
pub(crate) struct Recovered {
    /// Segments kept, in offset order; the last one is where appends continue, if any.
    pub segments: Vec<SegmentMeta>,
    pub report: RecoveryReport,
}

/// The result of scanning one segment's frames.
struct SegmentScan {
    meta: SegmentMeta,
    stop: StopReason,
    stop_pos: u64,
}

/// Scans `dir`, calling `visit` for every valid record in offset order.
pub(crate) async fn recover(
    dir: &Path,
    body_bytes_max: usize,
    mut visit: impl FnMut(RecordRef<'_>),
) -> Result<Recovered, WalError> {
    let started = Instant::now();
    prepare_dir(dir).await?;
    let boot = current_boot();
    let same_boot = boot.is_some() && boot == last_boot(dir);
    let files = segment::list_segments(dir)?;
    let mut kept: Vec<SegmentMeta> = Vec::with_capacity(files.len());
    let mut expected: Option<Offset> = None;
    let (mut records, mut torn_bytes, mut torn_reason) = (0u64, 0u64, None);
    for (i, (name_offset, path)) in files.iter().enumerate() {
        let last = i + 1 == files.len();
        let mut scanner = Scanner::open(path).await?;
        let first = match scanner.header().await? {
            SegmentHeader::Valid(first) => first,
            SegmentHeader::Zeroed if last => {
                // Created at a roll but never written: nothing in it was ever acknowledged.
                drop(scanner);
                std::fs::remove_file(path)?;
                expected = expected.or(Some(*name_offset));
                break;
            }
            SegmentHeader::Zeroed => return Err(corrupt(path, 0, "segment header is zeroed")),
            SegmentHeader::Invalid(why) => return Err(corrupt(path, 0, why)),
        };
        check_continues(path, first, *name_offset, expected)?;
        let scan = scan_frames(&mut scanner, first, body_bytes_max, &mut visit).await?;
        records += scan.meta.end.0 - first.0;
        expected = Some(scan.meta.end);
        // How far a slow or stuck recovery got, and how fast the disk answers.
        tracing::debug!(
            segment = %path.display(),
            records = scan.meta.end.0 - first.0,
            stop = scan.stop.as_str(),
            since_start_ms = started.elapsed().as_millis() as u64,
            "WAL segment scanned"
        );
        if scan.stop != StopReason::Zeroed && !last {
            return Err(corrupt(path, scan.stop_pos, scan.stop.as_str()));
        }
        // Also after a zeroed header, unless the log was last opened in this boot: a
        // power loss can persist later blocks of an unsynced write without the rewrite
        // of the block where the scan stopped, and their frames are valid and carry the
        // very offsets the next appends get.
        if last && !(scan.stop == StopReason::Zeroed && same_boot) {
            let cut = cut_torn_tail(path, &mut scanner, scan.stop_pos).await?;
            if cut > 0 || scan.stop != StopReason::Zeroed {
                (torn_bytes, torn_reason) = (cut, Some(scan.stop));
            }
        }
        kept.push(scan.meta);
    }
    if let Some(boot) = boot.filter(|_| !same_boot) {
        // Not synced: if it is lost, the next start just reads the tail again.
        std::fs::write(dir.join(BOOT_FILE_NAME), boot)?;
    }
    let report = RecoveryReport {
        records,
        segments: kept.len() as u32,
        torn_records: u64::from(torn_reason.is_some()),
        torn_bytes,
        torn_reason,
        duration: started.elapsed(),
        next_offset: expected.unwrap_or_default(),
    };
    Ok(Recovered {
        segments: kept,
        report,
    })
}

/// Makes `dir` ready to scan: creates it if missing, removes a spare segment that was
/// still being prepared, and opens the iopoll probe before any segment (see the module
/// docs of `storage`).
async fn prepare_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::create_dir_all(dir)?;
    let spare = dir.join(segment::SPARE_FILE_NAME);
    if spare.exists() {
        std::fs::remove_file(&spare)?;
    }
    segment::prime_iopoll_probe(dir).await?;
    Ok(())
}

/// A segment whose header names `first` must be named by that offset too, and start
/// where the previous one ended (`expected`, none for the first segment).
fn check_continues(
    path: &Path,
    first: Offset,
    name_offset: Offset,
    expected: Option<Offset>,
) -> Result<(), WalError> {
    if first != name_offset {
        return Err(corrupt(path, 0, "header offset differs from the file name"));
    }
    if let Some(want) = expected.filter(|want| *want != first) {
        return Err(corrupt(
            path,
            0,
            &format!("gap: expected first offset {}", want.0),
        ));
    }
    Ok(())
}

/// The file in a WAL directory naming the boot in which the WAL was last recovered.
pub(crate) const BOOT_FILE_NAME: &str = "boot-id";

/// This boot of the kernel, if Linux says.
fn current_boot() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned())
}

/// The boot in which the WAL in `dir` was last recovered, if noted.
///
/// Only a power loss or a kernel crash persists writes out of order (the O_DIRECT
/// writes of a killed process are in the device either way), and both start a new boot.
/// So when the log was last recovered in this boot, and that recovery zeroed whatever
/// was stale, the bytes past the end of its data are zeros, and a zeroed frame header
/// is a clean end: the rest of the segment need not be read (64 MiB by default).
fn last_boot(dir: &Path) -> Option<String> {
    let id = std::fs::read_to_string(dir.join(BOOT_FILE_NAME)).ok()?;
    Some(id.trim().to_owned())
}

fn corrupt(path: &Path, file_offset: u64, reason: &str) -> WalError {
    WalError::Corrupt {
        segment: PathBuf::from(path),
        file_offset,
        reason: reason.to_owned(),
    }
}

/// Decodes frames from the scanner's position until the first non-record.
async fn scan_frames(
    scanner: &mut Scanner,
    first: Offset,
    body_bytes_max: usize,
    visit: &mut impl FnMut(RecordRef<'_>),
) -> Result<SegmentScan, WalError> {
    let mut meta = SegmentMeta {
        first,
        end: first,
        data_bytes: scanner.position(),
        max_timestamp_ms: 0,
    };
    let stop = loop {
        let need = match scanner.decode(meta.end, body_bytes_max) {
            // Offsets are assigned from 0 and never reach the end of the space: a frame
            // claiming the last offset is damage (it would also leave no next offset).
            Decoded::Record(record, _) if record.offset.0 == u64::MAX => {
                break StopReason::OffsetMismatch
            }
            Decoded::Record(record, n) => {
                meta.max_timestamp_ms = meta.max_timestamp_ms.max(record.timestamp_ms);
                visit(record);
                scanner.advance(n);
                meta.end = Offset(meta.end.0 + 1);
                meta.data_bytes = scanner.position();
                glommio::yield_if_needed().await;
                continue;
            }
            Decoded::Stop(reason) => break reason,
            Decoded::NeedBytes(need) => need,
        };
        if !scanner.fill(need).await? {
            break frame::stop_at_end(scanner.available());
        }
    };
    Ok(SegmentScan {
        meta,
        stop,
        stop_pos: scanner.position(),
    })
}

/// Overwrites everything non-zero from `torn_pos` to the end of the segment with zeros,
/// keeping the valid prefix of its block, and makes that durable. Returns how many bytes
/// were cut (0, writing nothing, when the rest of the segment is already all zeros).
///
/// Zeroing (rather than leaving the bytes) matters: later appends could otherwise end
/// right where an old frame with the then-expected offset begins, and a later recovery
/// would read that frame and everything after it as records. The whole rest of the file
/// is read for it, because unsynced writes can have reached any block up to the end.
async fn cut_torn_tail(path: &Path, scanner: &mut Scanner, torn_pos: u64) -> Result<u64, WalError> {
    let nonzero_end = scanner.last_nonzero_end().await?;
    if nonzero_end <= torn_pos {
        return Ok(0);
    }
    let file = segment::open_for_append(path).await?;
    let block_start = align_down(torn_pos);
    let prefix = file
        .read_at(block_start, (torn_pos - block_start) as usize)
        .await?;
    let mut block = file.alloc_dma_buffer(frame::DMA_ALIGN_BYTES);
    block.as_bytes_mut().fill(0);
    block.as_bytes_mut()[..prefix.len()].copy_from_slice(&prefix);
    let written = file.write_at(block, block_start).await?;
    if written != frame::DMA_ALIGN_BYTES {
        return Err(WalError::Io(std::io::Error::other(
            "short write while cutting a torn tail",
        )));
    }
    let zero_from = block_start + frame::DMA_ALIGN_BYTES as u64;
    let zero_to = align_up(nonzero_end);
    if zero_to > zero_from {
        segment::zero_range(&file, zero_from, zero_to).await?;
    }
    file.fdatasync().await?;
    file.close().await?;
    Ok(nonzero_end.saturating_sub(torn_pos))
}
