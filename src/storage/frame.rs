//! The pure on-disk codec: record frames and the segment header block.
//!
//! No I/O here, so every corruption case can be tested byte by byte. Decoding never
//! returns a record whose CRC, length or offset does not check out.

use super::{Offset, RecordKind, RecordRef};

/// Bytes of the frame header: body length u32, CRC32 u32, kind u8, offset u64, timestamp u64.
pub(crate) const FRAME_HEADER_BYTES: usize = 4 + 4 + 1 + 8 + 8;
/// Alignment of every DMA write and of the segment header block; a multiple of any
/// logical block size Linux reports (512 or 4096).
pub(crate) const DMA_ALIGN_BYTES: usize = 4096;
/// The segment header occupies the whole first block so frames start block-aligned.
pub(crate) const SEGMENT_HEADER_BYTES: usize = DMA_ALIGN_BYTES;
/// Identifies a shardmq WAL segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SHMQWAL\0";
/// Bumped on any change of the segment or frame layout.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Bytes of the meaningful part of the header block (magic, version, reserved, offset, CRC).
const SEGMENT_HEADER_USED_BYTES: usize = 8 + 1 + 3 + 8 + 4;

const _: () = assert!(DMA_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(SEGMENT_HEADER_BYTES % DMA_ALIGN_BYTES == 0);
const _: () = assert!(SEGMENT_HEADER_USED_BYTES <= SEGMENT_HEADER_BYTES);

/// Total bytes a frame with `body_bytes` of body takes on disk.
pub(crate) const fn frame_bytes(body_bytes: usize) -> usize {
    FRAME_HEADER_BYTES + body_bytes
}

/// Why a scan stopped before the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The next frame header is all zeros: the clean end of the written data.
    Zeroed,
    /// The data ends inside a frame.
    Truncated,
    /// The length field is larger than any record this WAL may hold.
    BadLength,
    /// The CRC does not match the frame content.
    BadCrc,
    /// A valid frame whose offset is not the expected next one (stale or recycled space).
    OffsetMismatch,
}

impl StopReason {
    /// A short description for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Zeroed => "zeroed frame header",
            StopReason::Truncated => "data ends inside a frame",
            StopReason::BadLength => "frame length exceeds the record limit",
            StopReason::BadCrc => "frame CRC mismatch",
            StopReason::OffsetMismatch => "frame offset is not the expected next offset",
        }
    }
}

/// The outcome of decoding at one position.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    /// A valid record and the bytes its frame occupies.
    Record(RecordRef<'a>, usize),
    /// More bytes are needed to decide (at least this many in total from the start).
    NeedBytes(usize),
    /// No valid record here.
    Stop(StopReason),
}

/// Writes one frame into `dst`, which must be exactly `frame_bytes(body)` long.
pub(crate) fn encode_frame(
    dst: &mut [u8],
    kind: RecordKind,
    offset: Offset,
    timestamp_ms: u64,
    parts: &[&[u8]],
) {
    let body_bytes = dst.len() - FRAME_HEADER_BYTES;
    let body_len = u32::try_from(body_bytes).expect("caller bounds the body length");
    dst[0..4].copy_from_slice(&body_len.to_le_bytes());
    dst[8] = kind.0;
    dst[9..17].copy_from_slice(&offset.0.to_le_bytes());
    dst[17..25].copy_from_slice(&timestamp_ms.to_le_bytes());
    let mut at = FRAME_HEADER_BYTES;
    for part in parts {
        dst[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    assert_eq!(at, dst.len(), "parts must fill the frame exactly");
    let crc = frame_crc(&dst[0..4], &dst[8..]);
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32 over the length field and everything after the CRC field.
fn frame_crc(len_field: &[u8], rest: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_field);
    hasher.update(rest);
    hasher.finalize()
}

/// Decodes the frame at the start of `src`, expecting record `expected`.
///
/// `src` may end anywhere; `NeedBytes` asks for more when more may exist. At the true
/// end of the data the caller turns `NeedBytes` into `Truncated` (or `Zeroed` if the
/// remaining bytes are all zero).
pub(crate) fn decode_frame(src: &[u8], expected: Offset, body_bytes_max: usize) -> Decoded<'_> {
    if src.len() < FRAME_HEADER_BYTES {
        return Decoded::NeedBytes(FRAME_HEADER_BYTES);
    }
    let header = &src[..FRAME_HEADER_BYTES];
    if header.iter().all(|b| *b == 0) {
        return Decoded::Stop(StopReason::Zeroed);
    }
    let body_bytes = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if body_bytes > body_bytes_max {
        return Decoded::Stop(StopReason::BadLength);
    }
    let total = frame_bytes(body_bytes);
    if src.len() < total {
        return Decoded::NeedBytes(total);
    }
    let stored_crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if frame_crc(&src[0..4], &src[8..total]) != stored_crc {
        return Decoded::Stop(StopReason::BadCrc);
    }
    let offset = Offset(u64::from_le_bytes(
        header[9..17].try_into().expect("8 bytes"),
    ));
    if offset != expected {
        return Decoded::Stop(StopReason::OffsetMismatch);
    }
    let record = RecordRef {
        offset,
        kind: RecordKind(header[8]),
        timestamp_ms: u64::from_le_bytes(header[17..25].try_into().expect("8 bytes")),
        body: &src[FRAME_HEADER_BYTES..total],
    };
    Decoded::Record(record, total)
}

/// Decides what a `NeedBytes` at the true end of the data means.
pub(crate) fn stop_at_end(tail: &[u8]) -> StopReason {
    if tail.iter().all(|b| *b == 0) {
        StopReason::Zeroed
    } else {
        StopReason::Truncated
    }
}

/// Fills `dst` (one header block) with the segment header for `first_offset`.
pub(crate) fn encode_segment_header(dst: &mut [u8], first_offset: Offset) {
    assert_eq!(dst.len(), SEGMENT_HEADER_BYTES);
    dst.fill(0);
    dst[0..8].copy_from_slice(&SEGMENT_MAGIC);
    dst[8] = FORMAT_VERSION;
    dst[12..20].copy_from_slice(&first_offset.0.to_le_bytes());
    let crc = crc32fast::hash(&dst[0..20]);
    dst[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// What the header block of a segment says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    /// A valid header.
    Valid(Offset),
    /// All zeros: the segment was created but never written.
    Zeroed,
    /// Anything else; the string says what is wrong.
    Invalid(&'static str),
}

/// Parses the header block (or as much of it as the file holds).
pub(crate) fn decode_segment_header(src: &[u8]) -> SegmentHeader {
    if src.iter().all(|b| *b == 0) {
        return SegmentHeader::Zeroed;
    }
    if src.len() < SEGMENT_HEADER_USED_BYTES {
        return SegmentHeader::Invalid("segment header is truncated");
    }
    if src[0..8] != SEGMENT_MAGIC {
        return SegmentHeader::Invalid("bad segment magic");
    }
    let crc = u32::from_le_bytes(src[20..24].try_into().expect("4 bytes"));
    if crc32fast::hash(&src[0..20]) != crc {
        return SegmentHeader::Invalid("segment header CRC mismatch");
    }
    if src[8] != FORMAT_VERSION {
        return SegmentHeader::Invalid("unsupported segment format version");
    }
    // Version 1 writes zeros there; anything else was not written by this format.
    if src[9..12] != [0, 0, 0] {
        return SegmentHeader::Invalid("segment header reserved bytes are not zero");
    }
    SegmentHeader::Valid(Offset(u64::from_le_bytes(
        src[12..20].try_into().expect("8 bytes"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn frame(offset: u64, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; frame_bytes(body.len())];
        let (a, b) = body.split_at(body.len() / 2);
        encode_frame(&mut v, RecordKind(7), Offset(offset), 1234, &[a, b]);
        v
    }

    /// Decodes like recovery does: returns the offsets read and why it stopped.
    fn scan(data: &[u8], first: u64) -> (Vec<u64>, StopReason) {
        let (mut at, mut expected, mut seen) = (0, first, Vec::new());
        loop {
            match decode_frame(&data[at..], Offset(expected), MAX) {
                Decoded::Record(r, n) => {
                    seen.push(r.offset.0);
                    assert_eq!(r.kind, RecordKind(7));
                    assert_eq!(r.timestamp_ms, 1234);
                    at += n;
                    expected += 1;
                }
                Decoded::NeedBytes(_) => return (seen, stop_at_end(&data[at..])),
                Decoded::Stop(s) => return (seen, s),
            }
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let f = frame(42, b"hello world");
        match decode_frame(&f, Offset(42), MAX) {
            Decoded::Record(r, n) => {
                assert_eq!(n, f.len());
                assert_eq!(r.body, b"hello world");
                assert_eq!(r.offset, Offset(42));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cut_at_every_byte_never_yields_the_cut_record() {
        let mut data = frame(0, b"first");
        data.extend(frame(1, &[0xAB; 100]));
        let first_len = frame_bytes(5);
        for cut in 0..data.len() {
            let (seen, stop) = scan(&data[..cut], 0);
            let want: Vec<u64> = if cut >= first_len { vec![0] } else { vec![] };
            assert_eq!(seen, want, "cut at {cut}");
            if cut != 0 && cut != first_len {
                assert_eq!(stop, StopReason::Truncated, "cut at {cut}");
            }
        }
    }

    #[test]
    fn one_flipped_byte_stops_at_that_frame() {
        let mut data = frame(0, b"first");
        data.extend(frame(1, b"second record"));
        let first_len = frame_bytes(5);
        for i in 0..data.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = data.clone();
                bad[i] ^= bit;
                let (seen, stop) = scan(&bad, 0);
                let want: Vec<u64> = if i >= first_len { vec![0] } else { vec![] };
                assert_eq!(seen, want, "flip at {i}");
                assert_ne!(stop, StopReason::Zeroed, "flip at {i}");
            }
        }
    }

    #[test]
    fn zero_padding_is_a_clean_end() {
        let mut data = frame(5, b"abc");
        data.extend([0u8; 4096]);
        assert_eq!(scan(&data, 5), (vec![5], StopReason::Zeroed));
        assert_eq!(scan(&data[..frame_bytes(3) + 3], 5).1, StopReason::Zeroed);
    }

    #[test]
    fn garbage_after_records_is_never_served() {
        let mut data = frame(0, b"ok");
        data.extend((0..1000u32).map(|i| (i * 31 + 7) as u8));
        let (seen, stop) = scan(&data, 0);
        assert_eq!(seen, vec![0]);
        assert_ne!(stop, StopReason::Zeroed);
    }

    #[test]
    fn stale_frame_with_other_offset_is_rejected() {
        let data = frame(9, b"old");
        assert_eq!(scan(&data, 10), (vec![], StopReason::OffsetMismatch));
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_the_body() {
        let mut data = frame(0, b"x");
        data[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&data, Offset(0), MAX),
            Decoded::Stop(StopReason::BadLength)
        ));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
        assert_eq!(decode_segment_header(&block), SegmentHeader::Zeroed);
        encode_segment_header(&mut block, Offset(77));
        assert_eq!(
            decode_segment_header(&block),
            SegmentHeader::Valid(Offset(77))
        );
        for i in 0..SEGMENT_HEADER_USED_BYTES {
            let mut bad = block.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode_segment_header(&bad), SegmentHeader::Invalid(_)),
                "flip at {i}"
            );
        }
        assert!(matches!(
            decode_segment_header(&block[..10]),
            SegmentHeader::Invalid(_)
        ));
    }

    #[test]
    fn segment_header_with_reserved_bytes_set_is_invalid_even_with_a_good_crc() {
        for at in 9..12 {
            let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
            encode_segment_header(&mut block, Offset(42));
            block[at] = 2;
            let crc = crc32fast::hash(&block[0..20]);
            block[20..24].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                decode_segment_header(&block),
                SegmentHeader::Invalid("segment header reserved bytes are not zero"),
                "reserved byte {at}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bodies_round_trip(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600), off in 0u64..u64::MAX) {
            let f = frame(off, &body);
            match decode_frame(&f, Offset(off), MAX) {
                Decoded::Record(r, n) => { proptest::prop_assert_eq!(r.body, &body[..]); proptest::prop_assert_eq!(n, f.len()); }
                other => proptest::prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
