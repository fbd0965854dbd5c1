//! Kafka record batches (magic 2) as producers send them: the header fields the log
//! needs, checked, without touching the records inside (compressed or not, they are
//! stored as sent and served as stored).
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32
//! | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64
//! | producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records
//! ```
//! `batchLength` counts from `partitionLeaderEpoch` to the end; the CRC-32C covers
//! `attributes` to the end, so the broker may set `baseOffset` and
//! `partitionLeaderEpoch` without breaking it.

/// Bytes before the records.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `partitionLeaderEpoch`: what `batchLength` does not count.
const LENGTH_FROM: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const COUNT_AT: usize = 57;
/// Attribute bit of a transactional batch.
const TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit of a control batch (transaction markers).
const CONTROL: i16 = 1 << 5;

/// Why a produced record set is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Truncated, a bad length, or a CRC that does not match (Kafka: CORRUPT_MESSAGE).
    Corrupt,
    /// Not magic 2 (Kafka: UNSUPPORTED_FOR_MESSAGE_FORMAT).
    OldFormat,
    /// A batch claiming no records, or offset deltas that do not match the count
    /// (Kafka: INVALID_RECORD).
    Invalid,
    /// A transactional or control batch: transactions are not served (the door
    /// answers INVALID_RECORD).
    Transactional,
}

/// The header of one batch, read from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// The whole batch, header included.
    pub bytes: usize,
    /// Records in it: `lastOffsetDelta + 1` offsets.
    pub records: u32,
    /// The newest record's timestamp (ms), as the producer set it.
    pub max_timestamp_ms: i64,
    /// The idempotent producer's id, -1 for none.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
    /// The sequence number of the first record, -1 for none.
    pub base_sequence: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the first batch in `bytes` and returns its header; a record set is one or
/// more batches back to back (see [`split`]).
pub fn check(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < HEADER_BYTES {
        return Err(BatchError::Corrupt);
    }
    if bytes[MAGIC_AT] != 2 {
        return Err(BatchError::OldFormat);
    }
    let length = i32_at(bytes, 8);
    let total = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(LENGTH_FROM))
        .filter(|&t| t >= HEADER_BYTES && t <= bytes.len())
        .ok_or(BatchError::Corrupt)?;
    let crc = u32::from_be_bytes(bytes[CRC_AT..CRC_FROM].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[CRC_FROM..total]) != crc {
        return Err(BatchError::Corrupt);
    }
    let attributes = i16_at(bytes, ATTRIBUTES_AT);
    if attributes & (TRANSACTIONAL | CONTROL) != 0 {
        return Err(BatchError::Transactional);
    }
    let count = i32_at(bytes, COUNT_AT);
    let last_delta = i32_at(bytes, LAST_DELTA_AT);
    if count <= 0 || last_delta != count - 1 {
        return Err(BatchError::Invalid);
    }
    Ok(header(bytes, total, count))
}

/// The header of the batch at the start of `bytes`, `total` bytes with `count` records.
fn header(bytes: &[u8], total: usize, count: i32) -> BatchHeader {
    BatchHeader {
        bytes: total,
        records: count as u32,
        max_timestamp_ms: i64_at(bytes, MAX_TIMESTAMP_AT),
        producer_id: i64_at(bytes, PRODUCER_ID_AT),
        producer_epoch: i16_at(bytes, PRODUCER_EPOCH_AT),
        base_sequence: i32_at(bytes, BASE_SEQUENCE_AT),
    }
}

/// The header of a batch the log holds (checked when it was produced; the log's own CRC
/// guards it since): `None` if it is not a whole magic 2 batch.
pub fn check_stored(bytes: &[u8]) -> Option<BatchHeader> {
    if bytes.len() < HEADER_BYTES || bytes[MAGIC_AT] != 2 {
        return None;
    }
    let total = usize::try_from(i32_at(bytes, 8)).ok()? + LENGTH_FROM;
    let count = i32_at(bytes, COUNT_AT);
    if total != bytes.len() || count <= 0 {
        return None;
    }
    Some(header(bytes, total, count))
}

/// Checks every batch of a produced record set: their headers in order. Bytes after the
/// last whole batch are an error, as is an empty set.
pub fn split(set: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    let mut headers = Vec::new();
    let mut at = 0;
    while at < set.len() {
        let header = check(&set[at..])?;
        at += header.bytes;
        headers.push(header);
    }
    if headers.is_empty() {
        return Err(BatchError::Invalid);
    }
    Ok(headers)
}

/// Sets the batch's `baseOffset` (its first record's offset in the partition) and
/// `partitionLeaderEpoch` (always 0: one leader, this broker). Neither is under the CRC.
pub fn stamp(batch: &mut [u8], base_offset: i64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LENGTH_FROM..MAGIC_AT].copy_from_slice(&0i32.to_be_bytes());
}

/// The `baseOffset` a stored batch carries.
pub fn base_offset(batch: &[u8]) -> i64 {
    i64_at(batch, 0)
}

/// A batch of `count` minimal records (no key, a one-byte value) at `max_ts`, as a
/// producer frames it, its CRC right: for tests and the fuzz seeds.
#[doc(hidden)]
pub fn example(count: i32, max_ts: i64) -> Vec<u8> {
    let mut b = Vec::new();
    encode_fixed(&mut b, count as u32, max_ts, 1, |_, value| value[0] = b'v');
    b
}

/// Appends to `out` an uncompressed batch of `count` records without key or headers,
/// all stamped `timestamp_ms`, each with a `value_len`-byte value that `fill` writes
/// (record index, value), as a producer frames it, its CRC right: what
/// `shardmq-bench --kafka-topic` produces.
#[doc(hidden)]
pub fn encode_fixed(
    out: &mut Vec<u8>,
    count: u32,
    timestamp_ms: i64,
    value_len: usize,
    mut fill: impl FnMut(u32, &mut [u8]),
) {
    let start = out.len();
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // length, set below
    out.extend_from_slice(&0i32.to_be_bytes());
    out.push(2);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, set below
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(count as i32 - 1).to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&(count as i32).to_be_bytes());
    let mut head = Vec::with_capacity(16);
    for i in 0..count {
        // attributes, timestampDelta 0, offsetDelta, key length -1, value length: the
        // varints before the value; the headers count 0 after it.
        head.clear();
        head.extend_from_slice(&[0, 0]);
        put_varint(&mut head, i64::from(i));
        put_varint(&mut head, -1);
        put_varint(&mut head, value_len as i64);
        put_varint(out, (head.len() + value_len + 1) as i64);
        out.extend_from_slice(&head);
        let at = out.len();
        out.resize(at + value_len, 0);
        fill(i, &mut out[at..]);
        out.push(0);
    }
    let length = (out.len() - start - LENGTH_FROM) as i32;
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_FROM..]);
    out[start + CRC_AT..start + CRC_FROM].copy_from_slice(&crc.to_be_bytes());
}

/// A zigzag varint, as record fields are framed.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent decoder (the `kafka-protocol` crate's) reads what
    /// `encode_fixed` frames, long values and many records included.
    #[test]
    fn a_fixed_batch_decodes_with_the_kafka_protocol_crate() {
        let mut out = Vec::new();
        encode_fixed(&mut out, 200, 1_700_000_000_000, 300, |i, value| {
            value.fill(b'a' + (i % 26) as u8)
        });
        assert_eq!(
            check(&out).map(|h| (h.records, h.bytes)),
            Ok((200, out.len()))
        );
        let mut bytes = bytes::Bytes::from(out);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 200);
        for (i, record) in set.records.iter().enumerate() {
            assert_eq!(record.offset, i as i64);
            assert_eq!(record.timestamp, 1_700_000_000_000);
            assert!(record.key.is_none() && record.headers.is_empty());
            let value = record.value.as_deref().unwrap();
            assert_eq!(value, vec![b'a' + (i % 26) as u8; 300].as_slice());
        }
    }

    fn batch(count: i32, max_ts: i64) -> Vec<u8> {
        example(count, max_ts)
    }

    #[test]
    fn a_well_formed_set_of_two_batches_is_read_and_stamped() {
        let set = [batch(3, 1_000), batch(1, 2_000)].concat();
        let headers = split(&set).expect("valid");
        assert_eq!(headers.len(), 2);
        assert_eq!(
            (headers[0].records, headers[0].max_timestamp_ms),
            (3, 1_000)
        );
        assert_eq!(
            (headers[1].records, headers[1].max_timestamp_ms),
            (1, 2_000)
        );
        assert_eq!(headers[0].bytes + headers[1].bytes, set.len());
        let mut first = set[..headers[0].bytes].to_vec();
        stamp(&mut first, 42);
        assert_eq!(base_offset(&first), 42);
        assert_eq!(check(&first), Ok(headers[0]), "the CRC still holds");
    }

    #[test]
    fn damage_anywhere_under_the_crc_is_caught() {
        let good = batch(2, 5);
        for at in CRC_FROM..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert_eq!(check(&bad), Err(BatchError::Corrupt), "byte {at}");
        }
    }

    #[test]
    fn truncation_old_formats_and_bad_counts_are_refused() {
        let good = batch(2, 5);
        assert_eq!(split(&good[..good.len() - 1]), Err(BatchError::Corrupt));
        assert_eq!(
            split(&[good.clone(), vec![0; 3]].concat()),
            Err(BatchError::Corrupt)
        );
        assert_eq!(split(&[]), Err(BatchError::Invalid));
        let mut old = good.clone();
        old[MAGIC_AT] = 1;
        assert_eq!(check(&old), Err(BatchError::OldFormat));
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(check(&huge), Err(BatchError::Corrupt));
        let mut negative = good;
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(check(&negative), Err(BatchError::Corrupt));
    }
}
