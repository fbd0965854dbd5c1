//! The decoder's contract as one executable check, for the fuzz target `mqtt_decode` and
//! the corpus replay test (`tests/fuzz_corpus.rs`). Any violation panics.
//!
//! Input layout: the first byte picks the level the stream is decoded at (low two bits:
//! 0 = before CONNECT, 1 = 3.1, 2 = 3.1.1, 3 = 5.0); the rest is a byte stream from a peer,
//! decoded packet after packet until it needs more bytes or fails.
//!
//! What is checked for every packet that decodes:
//! - exactly its framed bytes are consumed, never more than the stream holds;
//! - it encodes, [`encoded_len`] agrees with what [`encode`] writes, and the encoding decodes
//!   back to an equal packet. The codec promises a packet-level round trip, not the input's
//!   bytes, nor even their length: it accepts long forms (a v5 PUBACK with an explicit
//!   success code, re-encoded shorter) and tolerated short ones (a v5 CONNACK without its
//!   property block, re-encoded with an empty one);
//! - the encoding is a fixed point: encoding the re-decoded packet gives the same bytes;
//! - every strict prefix of the encoding is `Ok(None)` and leaves the buffer untouched;
//! - a limit of exactly its size accepts it, one byte less rejects it from the header.
//!
//! For every error: the buffer never grows, a packet too large leaves it untouched, and the
//! error has a reason code and a message.

mod seeds;

use bytes::BytesMut;

pub use seeds::seeds;

use super::{decode, encode, encoded_len, DecodeError, DecodeLimits, Packet, Protocol};

/// Decodes `data` as described in the module docs and panics on any broken promise.
pub fn decode_check(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let protocol = match selector & 0b11 {
        0 => None,
        1 => Some(Protocol::V31),
        2 => Some(Protocol::V311),
        _ => Some(Protocol::V5),
    };
    let limits = DecodeLimits::default();
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match decode(&mut buf, protocol, &limits) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete packet consumed bytes");
                return;
            }
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed nothing");
                round_trip(&packet, protocol);
            }
            Err(e) => {
                check_error(&e, before, buf.len());
                return;
            }
        }
    }
}

/// The level `packet` is encoded at when it arrived on a stream decoded at `protocol`.
fn encode_level(packet: &Packet, protocol: Option<Protocol>) -> Protocol {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => protocol.unwrap_or(Protocol::V311),
    }
}

fn round_trip(packet: &Packet, protocol: Option<Protocol>) {
    let level = encode_level(packet, protocol);
    let first = encode_bytes(packet, level);
    let mut buf = BytesMut::from(&first[..]);
    let again = match decode(&mut buf, protocol, &DecodeLimits::default()) {
        Ok(Some(p)) => p,
        other => panic!("re-encoded {packet:?} as {first:02x?}, which decodes to {other:?}"),
    };
    assert!(buf.is_empty(), "re-decoding left {} bytes", buf.len());
    assert_eq!(&again, packet, "round trip changed the packet");
    assert_eq!(
        encode_bytes(&again, level),
        first,
        "the encoding is not a fixed point"
    );
    check_prefixes_and_limits(&first, protocol);
}

fn encode_bytes(packet: &Packet, level: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    let n = match encode(packet, level, &mut out) {
        Ok(n) => n,
        Err(e) => panic!("decoded packet {packet:?} does not encode at {level:?}: {e:?}"),
    };
    assert_eq!(
        n,
        out.len(),
        "encode's count differs from the bytes written"
    );
    assert_eq!(encoded_len(packet, level), Ok(n), "encoded_len disagrees");
    out.to_vec()
}

fn check_prefixes_and_limits(bytes: &[u8], protocol: Option<Protocol>) {
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        let got = decode(&mut buf, protocol, &DecodeLimits::default());
        assert!(
            matches!(got, Ok(None)),
            "prefix of {cut} bytes gave {got:?}"
        );
        assert_eq!(buf.len(), cut, "an incomplete packet consumed bytes");
    }
    let size = u32::try_from(bytes.len()).expect("a decoded packet fits the protocol");
    let exact = DecodeLimits {
        packet_bytes_max: size,
    };
    let mut buf = BytesMut::from(bytes);
    assert!(
        matches!(decode(&mut buf, protocol, &exact), Ok(Some(_))),
        "a limit of exactly the packet size rejects it"
    );
    let below = DecodeLimits {
        packet_bytes_max: size - 1,
    };
    let mut buf = BytesMut::from(bytes);
    let got = decode(&mut buf, protocol, &below);
    assert!(
        matches!(got, Err(DecodeError::PacketTooLarge { .. })),
        "a limit one byte below the packet size gave {got:?}"
    );
    assert_eq!(buf.len(), bytes.len(), "an oversized packet consumed bytes");
}

fn check_error(e: &DecodeError, before: usize, after: usize) {
    assert!(after <= before, "decoding grew the buffer");
    if matches!(e, DecodeError::PacketTooLarge { .. }) {
        assert_eq!(after, before, "an oversized packet consumed bytes");
    }
    // Exercise the paths a broker takes with an error: its reason code and its log line.
    let _ = e.reason_code();
    assert!(!e.to_string().is_empty());
}
