//! Segment files: names, listing, a chunked frame scanner and pre-zeroing.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::frame::{self, Decoded, SegmentHeader, DMA_ALIGN_BYTES, SEGMENT_HEADER_BYTES};
use super::{Offset, WalError};

/// The file being pre-zeroed to become the next segment.
pub(crate) const SPARE_FILE_NAME: &str = "spare.tmp";
/// A one-block file that exists only while priming glommio's iopoll probe.
const PROBE_FILE_NAME: &str = "iopoll-probe.tmp";
/// Bytes read per scanner refill and written per zeroing call.
const IO_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(IO_CHUNK_BYTES % DMA_ALIGN_BYTES == 0);

/// What the WAL keeps in memory about one segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    /// Offset of its first record (and its file name).
    pub first: Offset,
    /// One past its last record (`first` when empty).
    pub end: Offset,
    /// File position one past its last frame.
    pub data_bytes: u64,
    /// Largest record timestamp in it (0 when empty).
    pub max_timestamp_ms: u64,
}

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(DMA_ALIGN_BYTES as u64 - 1)
}

pub(crate) fn align_up(v: u64) -> u64 {
    align_down(v + DMA_ALIGN_BYTES as u64 - 1)
}

/// `dir/<first offset, 20 digits>.log`.
pub(crate) fn segment_path(dir: &Path, first: Offset) -> PathBuf {
    dir.join(format!("{:020}.log", first.0))
}

/// The first offset encoded in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// Every segment file in `dir`, in offset order. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(Offset, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort_by_key(|(first, _)| *first);
    Ok(found)
}

/// Reads a segment front to back in chunks and decodes frames from it.
pub(crate) struct Scanner {
    file: DmaFile,
    file_bytes: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    cursor: usize,
}

impl Scanner {
    pub(crate) async fn open(path: &Path) -> Result<Self, WalError> {
        let file = DmaFile::open(path).await?;
        let file_bytes = file.file_size().await?;
        Ok(Scanner {
            file,
            file_bytes,
            buf: Vec::new(),
            buf_pos: 0,
            cursor: 0,
        })
    }

    /// File position of the next unread byte.
    pub(crate) fn position(&self) -> u64 {
        self.buf_pos + self.cursor as u64
    }

    /// The bytes buffered from the position on.
    pub(crate) fn available(&self) -> &[u8] {
        &self.buf[self.cursor..]
    }

    /// Goes to file position `pos` (the start of a frame), dropping what is buffered.
    pub(crate) fn seek(&mut self, pos: u64) {
        self.buf.clear();
        self.buf_pos = pos;
        self.cursor = 0;
    }

    pub(crate) fn advance(&mut self, n: usize) {
        assert!(self.cursor + n <= self.buf.len());
        self.cursor += n;
    }

    /// Buffers at least `need` bytes from the position on; false if the file ends first
    /// (what exists is still buffered).
    pub(crate) async fn fill(&mut self, need: usize) -> Result<bool, WalError> {
        if self.buf.len() - self.cursor >= need {
            return Ok(true);
        }
        self.buf.drain(..self.cursor);
        self.buf_pos += self.cursor as u64;
        self.cursor = 0;
        while self.buf.len() < need {
            let pos = self.buf_pos + self.buf.len() as u64;
            if pos >= self.file_bytes {
                return Ok(false);
            }
            let want = (self.file_bytes - pos).min(IO_CHUNK_BYTES.max(need) as u64) as usize;
            let read = self.file.read_at(pos, want).await?;
            if read.is_empty() {
                return Ok(false);
            }
            self.buf.extend_from_slice(&read);
        }
        Ok(true)
    }

    /// Reads and checks the header block; leaves the position at the first frame.
    pub(crate) async fn header(&mut self) -> Result<SegmentHeader, WalError> {
        self.fill(SEGMENT_HEADER_BYTES).await?;
        let n = self.available().len().min(SEGMENT_HEADER_BYTES);
        let header = frame::decode_segment_header(&self.available()[..n]);
        self.advance(n);
        Ok(header)
    }

    /// Reads the header block and checks it names segment `first`.
    pub(crate) async fn advance_header(&mut self, first: Offset) -> Result<(), &'static str> {
        match self.header().await {
            Ok(SegmentHeader::Valid(o)) if o == first => Ok(()),
            Ok(SegmentHeader::Valid(_)) => Err("header offset differs from the file name"),
            Ok(SegmentHeader::Zeroed) => Err("segment header is zeroed"),
            Ok(SegmentHeader::Invalid(why)) => Err(why),
            Err(_) => Err("segment header could not be read"),
        }
    }

    /// Decodes the frame at the position (call `fill` on `NeedBytes`).
    pub(crate) fn decode(&self, expected: Offset, body_bytes_max: usize) -> Decoded<'_> {
        frame::decode_frame(self.available(), expected, body_bytes_max)
    }

    /// Position one past the last non-zero byte from the current position to the end
    /// of the file (the current position if all zero). Consumes the scanner's data.
    pub(crate) async fn last_nonzero_end(&mut self) -> Result<u64, WalError> {
        let mut end = self.position();
        loop {
            let avail = self.available();
            if let Some(i) = last_nonzero(avail) {
                end = self.position() + i as u64 + 1;
            }
            let n = avail.len();
            self.advance(n);
            if !self.fill(1).await? {
                return Ok(end);
            }
        }
    }
}

/// The index of the last non-zero byte of `bytes`. Recovery runs it over the rest of a
/// segment (64 MiB by default) at every start, so whole blocks are compared with a
/// zero block (`memcmp`) and only the last non-zero block is searched byte by byte.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    static ZEROS: [u8; DMA_ALIGN_BYTES] = [0; DMA_ALIGN_BYTES];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(DMA_ALIGN_BYTES);
        if bytes[start..end] != ZEROS[..end - start] {
            return bytes[start..end]
                .iter()
                .rposition(|b| *b != 0)
                .map(|i| start + i);
        }
        end = start;
    }
    None
}

/// Makes glommio's per-device iopoll probe see real data.
///
/// glommio 0.9 decides once per block device, on the first `DmaFile` opened, whether to
/// use the polled ring, by reading the first block of that file. When that file is empty
/// (a fresh spare segment) the read succeeds trivially, the poll ring is wrongly enabled,
/// and every later read on a device without poll queues fails with EOPNOTSUPP. Opening a
/// one-block file first gives the probe a real read to fail or pass. The answer is cached
/// for the process, so later calls cost one small file.
pub(crate) async fn prime_iopoll_probe(dir: &Path) -> Result<(), WalError> {
    let path = dir.join(PROBE_FILE_NAME);
    std::fs::write(&path, [0xA5u8; DMA_ALIGN_BYTES])?;
    let opened = DmaFile::open(&path).await;
    std::fs::remove_file(&path)?;
    opened?.close().await?;
    Ok(())
}

/// Opens an existing segment for appending.
pub(crate) async fn open_for_append(path: &Path) -> Result<DmaFile, WalError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await?)
}

/// Writes zeros over `[from, to)`, both block-aligned.
pub(crate) async fn zero_range(file: &DmaFile, from: u64, to: u64) -> Result<(), WalError> {
    assert!(from % DMA_ALIGN_BYTES as u64 == 0 && to % DMA_ALIGN_BYTES as u64 == 0);
    let mut zeros: Option<Rc<glommio::io::DmaBuffer>> = None;
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(IO_CHUNK_BYTES as u64) as usize;
        let buf = match &zeros {
            Some(z) if z.len() == n => z.clone(),
            _ => {
                let mut b = file.alloc_dma_buffer(n);
                b.as_bytes_mut().fill(0);
                let b = Rc::new(b);
                zeros = Some(b.clone());
                b
            }
        };
        let written = file.write_rc_at(buf, pos).await?;
        if written != n {
            return Err(WalError::Io(std::io::Error::other(
                "short write while zeroing",
            )));
        }
        pos += n as u64;
    }
    Ok(())
}

/// Creates `dir/spare.tmp`, fills it with `segment_bytes` of zeros and makes that durable,
/// so the segment it becomes takes writes without growing the file.
pub(crate) async fn prepare_spare(dir: &Path, segment_bytes: u64) -> Result<DmaFile, WalError> {
    let path = dir.join(SPARE_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await?;
    // Ask for the extents up front (contiguous, and ENOSPC now rather than mid-segment);
    // the zero writes then turn them into written blocks so later writes change no metadata.
    file.pre_allocate(segment_bytes, false).await?;
    zero_range(&file, 0, segment_bytes).await?;
    file.fdatasync().await?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_twenty_digits_and_parse_back() {
        let p = segment_path(Path::new("/d"), Offset(42));
        assert_eq!(p, Path::new("/d/00000000000000000042.log"));
        assert_eq!(
            parse_segment_name("00000000000000000042.log"),
            Some(Offset(42))
        );
        assert_eq!(
            parse_segment_name(&format!("{:020}.log", u64::MAX)),
            Some(Offset(u64::MAX))
        );
        for bad in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.tmp",
            SPARE_FILE_NAME,
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn last_nonzero_finds_the_last_set_byte_at_any_alignment() {
        let mut buf = vec![0u8; 3 * DMA_ALIGN_BYTES];
        for start in [0, 1, 7, 4000] {
            let bytes = &mut buf[start..start + 2 * DMA_ALIGN_BYTES + 5];
            assert_eq!(last_nonzero(bytes), None);
            for at in 0..bytes.len() {
                bytes[at] = 7;
                assert_eq!(last_nonzero(bytes), Some(at), "start {start} at {at}");
                if at > 3 {
                    bytes[at - 3] = 0;
                }
            }
            bytes.fill(0);
        }
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!((align_down(4095), align_up(4095)), (0, 4096));
        assert_eq!((align_down(4096), align_up(4096)), (4096, 4096));
        assert_eq!(align_up(0), 0);
    }
}
