//! The frame decoder's contract as one executable check, for the fuzz target `wal_frame`
//! and the corpus replay test (`tests/fuzz_corpus.rs`). Any violation panics.
//!
//! Input layout: the first byte picks the mode and the record limit. Its low five bits
//! give `body_bytes_max = 1 << (bits % 21)` (1 B ..= 1 MiB). With its top bit clear the
//! next 8 bytes are the expected first offset (u64 LE) and the rest is a run of frames;
//! with the top bit set the rest is a whole segment file: the header block, then frames
//! from byte 4096, scanned from the offset the header names, as recovery does.
//!
//! Each position is decoded the way recovery's scanner does it — a window that grows to
//! what `NeedBytes` asks for — and also in one go over everything left. Checked:
//! - both ways give the same verdict, and it is the one the format defines: too short,
//!   zeroed header, length over the limit, too short for the body, CRC mismatch, offset
//!   mismatch, else a record (so a CRC failure is always reported as `BadCrc`);
//! - `NeedBytes` always asks for more than it was given and never beyond one whole frame;
//! - a record's frame is exactly its header and body, and re-encoding the record gives
//!   back the same bytes;
//! - at the end of the data, leftover bytes are `Zeroed` only when they are all zero;
//! - a valid segment header re-encodes to the bytes it was read from.

mod seeds;

pub use seeds::seeds;

use super::frame::{
    decode_frame, decode_segment_header, encode_frame, encode_segment_header, frame_bytes,
    stop_at_end, Decoded, SegmentHeader, StopReason, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::{Offset, RecordRef};

/// Bytes of the segment header block that carry data (magic, version, offset, CRC).
const HEADER_FIELDS_BYTES: usize = 24;

/// Decodes `data` as described in the module docs and panics on any broken promise.
pub fn frame_check(data: &[u8]) {
    scan_input(data);
}

/// How a scan of a checked input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Valid records read.
    pub records: u64,
    /// Why it stopped; `None` after a record at the last possible offset.
    pub stop: Option<StopReason>,
}

/// [`frame_check`], returning how the scan ended (`None`: the input is too short to
/// select anything, or its segment header is not valid).
pub(crate) fn scan_input(data: &[u8]) -> Option<Scanned> {
    let (&selector, rest) = data.split_first()?;
    let body_bytes_max = 1usize << ((selector & 0x1F) % 21);
    if selector & 0x80 == 0 {
        let (first, frames) = rest.split_first_chunk::<8>()?;
        return Some(scan(
            frames,
            Offset(u64::from_le_bytes(*first)),
            body_bytes_max,
        ));
    }
    let header = &rest[..rest.len().min(SEGMENT_HEADER_BYTES)];
    let SegmentHeader::Valid(first) = decode_segment_header(header) else {
        return None;
    };
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
    encode_segment_header(&mut block, first);
    assert_eq!(
        block[..HEADER_FIELDS_BYTES],
        header[..HEADER_FIELDS_BYTES],
        "a valid segment header does not re-encode to its bytes"
    );
    let frames = rest.get(SEGMENT_HEADER_BYTES..).unwrap_or_default();
    Some(scan(frames, first, body_bytes_max))
}

/// Walks the frames of `data` from offset `first` until the first non-record.
fn scan(data: &[u8], first: Offset, body_bytes_max: usize) -> Scanned {
    let (mut at, mut expected) = (0usize, first);
    let mut records = 0;
    loop {
        let rest = &data[at..];
        let verdict = decode_frame(rest, expected, body_bytes_max);
        assert_eq!(
            Verdict::of(&verdict),
            oracle(rest, expected, body_bytes_max),
            "decode_frame disagrees with the format at byte {at}"
        );
        assert_eq!(
            Verdict::of(&verdict),
            Verdict::of(&grown(rest, expected, body_bytes_max)),
            "decoding in growing windows disagrees with decoding at once at byte {at}"
        );
        let stop = match verdict {
            Decoded::Record(record, n) => {
                check_record(&record, &rest[..n], body_bytes_max);
                at += n;
                records += 1;
                // A crafted header may name the last offset; nothing can follow it.
                let Some(next) = expected.0.checked_add(1) else {
                    return Scanned {
                        records,
                        stop: None,
                    };
                };
                expected = Offset(next);
                continue;
            }
            Decoded::NeedBytes(need) => {
                assert!(
                    need > rest.len(),
                    "NeedBytes({need}) with {} bytes",
                    rest.len()
                );
                let stop = stop_at_end(rest);
                let all_zero = rest.iter().all(|b| *b == 0);
                assert_eq!(
                    stop == StopReason::Zeroed,
                    all_zero,
                    "tail verdict {stop:?}"
                );
                stop
            }
            Decoded::Stop(reason) => reason,
        };
        return Scanned {
            records,
            stop: Some(stop),
        };
    }
}

/// What the decoder may answer, without the borrowed record.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Record { frame_bytes: usize },
    NeedBytes(usize),
    Stop(StopReason),
}

impl Verdict {
    fn of(decoded: &Decoded<'_>) -> Self {
        match decoded {
            Decoded::Record(_, n) => Verdict::Record { frame_bytes: *n },
            Decoded::NeedBytes(n) => Verdict::NeedBytes(*n),
            Decoded::Stop(s) => Verdict::Stop(*s),
        }
    }
}

/// The verdict the on-disk format defines for `src`, worked out field by field.
fn oracle(src: &[u8], expected: Offset, body_bytes_max: usize) -> Verdict {
    let Some(header) = src.get(..FRAME_HEADER_BYTES) else {
        return Verdict::NeedBytes(FRAME_HEADER_BYTES);
    };
    if header.iter().all(|b| *b == 0) {
        return Verdict::Stop(StopReason::Zeroed);
    }
    let field = |at: usize, n: usize| -> u64 {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&header[at..at + n]);
        u64::from_le_bytes(v)
    };
    let body_bytes = field(0, 4) as usize;
    if body_bytes > body_bytes_max {
        return Verdict::Stop(StopReason::BadLength);
    }
    let total = FRAME_HEADER_BYTES + body_bytes;
    let Some(frame) = src.get(..total) else {
        return Verdict::NeedBytes(total);
    };
    let covered: Vec<u8> = frame[..4].iter().chain(&frame[8..]).copied().collect();
    if u64::from(crc32fast::hash(&covered)) != field(4, 4) {
        return Verdict::Stop(StopReason::BadCrc);
    }
    if field(9, 8) != expected.0 {
        return Verdict::Stop(StopReason::OffsetMismatch);
    }
    Verdict::Record { frame_bytes: total }
}

/// Decodes like recovery's scanner: start with nothing, grow the window to what
/// `NeedBytes` asks for until it is answered or the data runs out.
fn grown(src: &[u8], expected: Offset, body_bytes_max: usize) -> Decoded<'_> {
    let mut window = 0usize;
    loop {
        match decode_frame(&src[..window], expected, body_bytes_max) {
            Decoded::NeedBytes(need) => {
                assert!(need > window, "NeedBytes({need}) with {window} bytes");
                assert!(
                    need <= frame_bytes(body_bytes_max),
                    "NeedBytes({need}) beyond the largest frame"
                );
                if need > src.len() {
                    return Decoded::NeedBytes(need);
                }
                window = need;
            }
            done => return done,
        }
    }
}

fn check_record(record: &RecordRef<'_>, frame: &[u8], body_bytes_max: usize) {
    assert!(record.body.len() <= body_bytes_max, "body over the limit");
    assert_eq!(frame.len(), frame_bytes(record.body.len()), "frame size");
    assert_eq!(
        record.body,
        &frame[FRAME_HEADER_BYTES..],
        "body is not the frame's tail"
    );
    let mut again = vec![0u8; frame.len()];
    encode_frame(
        &mut again,
        record.kind,
        record.offset,
        record.timestamp_ms,
        &[record.body],
    );
    assert_eq!(again, frame, "re-encoding the record changed its bytes");
}
