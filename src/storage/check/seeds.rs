//! The seed corpus of the `wal_frame` fuzz target: runs of valid frames, whole segments,
//! and the damage recovery must recognise (a torn tail, a flipped byte, a stale frame, a
//! bad length, a damaged segment header). `tests/fuzz_corpus.rs` writes them to
//! `fuzz/corpus/wal_frame/`.

use super::super::frame::{
    encode_frame, encode_segment_header, frame_bytes, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::super::{Offset, RecordKind};

/// The selector bits for a 1 MiB record limit (`1 << 20`).
const LIMIT_1_MIB: u8 = 20;
/// The selector bits for a 256-byte record limit.
const LIMIT_256_B: u8 = 8;
/// The selector's segment-mode bit.
const SEGMENT_MODE: u8 = 0x80;

/// Named seed inputs in the layout [`super::frame_check`] reads.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let run = frames(0, &[b"", b"hello", &[0xAB; 300], b"last"]);
    let first_bytes = frame_bytes(0);
    let flip = |at: usize| {
        let mut b = run.clone();
        b[at] ^= 0x10;
        b
    };
    let mut zero_tail = run.clone();
    zero_tail.extend([0u8; 100]);
    let mut bad_length = frames(0, &[b"x"]);
    bad_length[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let runs: Vec<(&str, u8, u64, Vec<u8>)> = vec![
        ("frames", LIMIT_1_MIB, 0, run.clone()),
        ("frames-zero-tail", LIMIT_1_MIB, 0, zero_tail),
        (
            "frames-torn-tail",
            LIMIT_1_MIB,
            0,
            run[..run.len() - 3].to_vec(),
        ),
        (
            "frames-torn-header",
            LIMIT_1_MIB,
            0,
            run[..first_bytes + 10].to_vec(),
        ),
        (
            "frames-bad-crc-body",
            LIMIT_1_MIB,
            0,
            flip(first_bytes + FRAME_HEADER_BYTES + 2),
        ),
        ("frames-bad-crc-length", LIMIT_1_MIB, 0, flip(first_bytes)),
        ("frames-stale-offset", LIMIT_1_MIB, 1, run.clone()),
        ("frames-bad-length", LIMIT_1_MIB, 0, bad_length),
        (
            "frames-at-limit",
            LIMIT_256_B,
            9,
            frames(9, &[&[7; 256], &[8; 257]]),
        ),
        (
            "frames-last-offset",
            LIMIT_1_MIB,
            u64::MAX,
            frames(u64::MAX, &[b"end", b"after"]),
        ),
    ];
    let mut out: Vec<(String, Vec<u8>)> = runs
        .into_iter()
        .map(|(name, limit, first, data)| {
            let mut input = vec![limit];
            input.extend_from_slice(&first.to_le_bytes());
            input.extend_from_slice(&data);
            (name.to_owned(), input)
        })
        .collect();
    let good = segment(42, &[b"one", b"two", &[0x5A; 1000]]);
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0x01;
    let mut bad_version = good.clone();
    bad_version[8] = 2;
    let mut torn = good.clone();
    torn.truncate(SEGMENT_HEADER_BYTES + frame_bytes(3) + 5);
    for (name, data) in [
        ("segment", good),
        ("segment-bad-magic", bad_magic),
        ("segment-bad-version", bad_version),
        ("segment-torn", torn),
        ("segment-zeroed", vec![0u8; SEGMENT_HEADER_BYTES + 64]),
        (
            "segment-last-offset",
            segment(u64::MAX, &[b"end", b"after"]),
        ),
    ] {
        let mut input = vec![SEGMENT_MODE | LIMIT_1_MIB];
        input.extend_from_slice(&data);
        out.push((name.to_owned(), input));
    }
    out
}

/// Frames with consecutive offsets from `first` (wrapping, so a run may pass the end).
fn frames(first: u64, bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let at = out.len();
        out.resize(at + frame_bytes(body.len()), 0);
        let offset = Offset(first.wrapping_add(i as u64));
        let (a, b) = body.split_at(body.len() / 2);
        encode_frame(
            &mut out[at..],
            RecordKind(i as u8 + 1),
            offset,
            1_700_000_000_000,
            &[a, b],
        );
    }
    out
}

/// A segment file as the WAL writes it: header block, frames, a zeroed tail.
fn segment(first: u64, bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![0u8; SEGMENT_HEADER_BYTES];
    encode_segment_header(&mut out, Offset(first));
    out.extend(frames(first, bodies));
    out.extend([0u8; 64]);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{scan_input, Scanned};
    use super::*;
    use crate::storage::StopReason::*;

    /// Each seed ends the way its name says, so the corpus starts the fuzzer at every
    /// verdict of the decoder.
    #[test]
    fn seeds_reach_the_verdicts_they_name() {
        let stop = |records, stop| Some(Scanned { records, stop });
        let expected = [
            ("frames", stop(4, Some(Zeroed))),
            ("frames-zero-tail", stop(4, Some(Zeroed))),
            ("frames-torn-tail", stop(3, Some(Truncated))),
            ("frames-torn-header", stop(1, Some(Truncated))),
            ("frames-bad-crc-body", stop(1, Some(BadCrc))),
            ("frames-bad-crc-length", stop(1, Some(BadCrc))),
            ("frames-stale-offset", stop(0, Some(OffsetMismatch))),
            ("frames-bad-length", stop(0, Some(BadLength))),
            ("frames-at-limit", stop(1, Some(BadLength))),
            ("frames-last-offset", stop(1, None)),
            ("segment", stop(3, Some(Zeroed))),
            ("segment-bad-magic", None),
            ("segment-bad-version", None),
            ("segment-torn", stop(1, Some(Truncated))),
            ("segment-zeroed", None),
            ("segment-last-offset", stop(1, None)),
        ];
        let all = seeds();
        assert_eq!(all.len(), expected.len());
        for ((name, data), (want_name, want)) in all.iter().zip(expected) {
            assert_eq!(name, want_name);
            assert_eq!(scan_input(data), want, "{name}");
        }
    }
}
