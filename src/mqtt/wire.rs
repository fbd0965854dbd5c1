//! Wire primitives: a bounds-checked reader over one packet's `Bytes`, and the writers and
//! size functions for integers, variable byte integers, strings and binary data.

use bytes::{BufMut, Bytes, BytesMut};

use super::{ByteStr, DecodeError, EncodeError, PacketId, PacketType};

/// Largest value a variable byte integer can carry (4 bytes of 7 bits).
pub(crate) const VARINT_MAX: u32 = 268_435_455;
/// Longest string or binary field: a u16 length prefix.
pub(crate) const FIELD_BYTES_MAX: usize = u16::MAX as usize;

/// Reads fields from the body of one packet. Slices share the packet's buffer.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
    /// Offset of `buf[0]` inside the whole packet, for error reports.
    base: usize,
    pub(crate) packet: PacketType,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, base: usize, packet: PacketType) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            packet,
        }
    }

    /// Offset of the next byte inside the whole packet.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
            offset: self.offset(),
        }
    }

    /// Fails unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
                offset: self.offset(),
            })
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take_slice(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take_slice(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let start = self.offset();
        match read_varint(&self.buf[self.pos..]) {
            VarInt::Value(v, n) => {
                self.pos += n;
                Ok(v)
            }
            VarInt::Incomplete => Err(self.truncated()),
            VarInt::Malformed => Err(DecodeError::MalformedVarInt { offset: start }),
        }
    }

    fn take_slice(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.truncated());
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `n` bytes, shared with the packet buffer.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(self.truncated());
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }

    /// A sub-reader over the next `n` bytes (a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        let base = self.offset();
        let buf = self.bytes(n)?;
        Ok(Reader::new(buf, base, self.packet))
    }

    /// Two-byte length prefixed binary data.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// Two-byte length prefixed UTF-8 string without U+0000.
    pub(crate) fn string(&mut self) -> Result<ByteStr, DecodeError> {
        let offset = self.offset();
        let raw = self.binary()?;
        if raw.contains(&0) {
            return Err(DecodeError::NullCharacter {
                packet: self.packet,
                offset,
            });
        }
        ByteStr::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 {
            packet: self.packet,
            offset,
        })
    }

    /// A packet identifier, rejecting 0.
    pub(crate) fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        let id = self.u16()?;
        PacketId::new(id).ok_or(DecodeError::ZeroPacketId {
            packet: self.packet,
        })
    }
}

/// Result of reading a variable byte integer from a prefix of a buffer.
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Value(u32, usize),
    /// The buffer ends before the last byte.
    Incomplete,
    /// The 4th byte still has its continuation bit, or the encoding is not minimal.
    Malformed,
}

pub(crate) fn read_varint(buf: &[u8]) -> VarInt {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return VarInt::Incomplete;
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // A final zero byte after a continuation means padding: MQTT requires the
            // minimum number of bytes [MQTT-1.5.5-1].
            if b == 0 && i > 0 {
                return VarInt::Malformed;
            }
            return VarInt::Value(value, i + 1);
        }
    }
    VarInt::Malformed
}

/// Bytes the minimal encoding of `value` takes (callers keep `value <= VARINT_MAX`).
pub(crate) const fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut value: usize) {
    debug_assert!(value <= VARINT_MAX as usize);
    loop {
        let mut b = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if value == 0 {
            return;
        }
    }
}

/// Wire size of a length-prefixed field of `len` bytes, or an error past 65,535.
pub(crate) fn field_len(packet: PacketType, len: usize) -> Result<usize, EncodeError> {
    if len > FIELD_BYTES_MAX {
        return Err(EncodeError::FieldTooLong { packet, len });
    }
    Ok(2 + len)
}

/// Writes a length-prefixed field whose size was checked by [`field_len`].
pub(crate) fn put_field(out: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= FIELD_BYTES_MAX);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_are_minimal_and_round_trip() {
        for (value, len) in [
            (0usize, 1usize),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (VARINT_MAX as usize, 4),
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
            assert_eq!(varint_len(value), len);
            match read_varint(&out) {
                VarInt::Value(v, n) => assert_eq!((v as usize, n), (value, len)),
                _ => panic!("{value} did not decode"),
            }
        }
    }

    #[test]
    fn varint_of_five_bytes_is_malformed_and_short_is_incomplete() {
        assert!(matches!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            VarInt::Malformed
        ));
        assert!(matches!(read_varint(&[0xFF, 0xFF]), VarInt::Incomplete));
        // Padded encodings of 0 and 1.
        assert!(matches!(read_varint(&[0x80, 0x00]), VarInt::Malformed));
        assert!(matches!(
            read_varint(&[0x81, 0x80, 0x00]),
            VarInt::Malformed
        ));
        assert!(matches!(read_varint(&[]), VarInt::Incomplete));
    }

    #[test]
    fn string_rejects_nul_and_bad_utf8() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]), 2, PacketType::Publish);
        assert_eq!(
            r.string(),
            Err(DecodeError::NullCharacter {
                packet: PacketType::Publish,
                offset: 2
            })
        );
        let mut r = Reader::new(
            Bytes::from_static(&[0, 2, 0xC3, 0x28]),
            0,
            PacketType::Publish,
        );
        assert!(matches!(r.string(), Err(DecodeError::InvalidUtf8 { .. })));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a']), 0, PacketType::Publish);
        assert!(matches!(r.string(), Err(DecodeError::Truncated { .. })));
    }
}
