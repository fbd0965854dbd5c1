//! The MQTT codec: packet types and their encode/decode for MQTT 3.1 (level 3, "MQIsdp"),
//! 3.1.1 (level 4) and 5.0 (level 5).
//!
//! Owns: every packet type, reason code and v5 property set, and the wire format of each.
//! Pure: bytes in, packets out and back; no I/O, no executor.
//!
//! May use: no other shardmq module (only the `bytes` crate).
//!
//! Decisions:
//! - Zero copy: [`decode`] splits the whole packet off the read buffer and every topic,
//!   string, payload and binary property is a slice of that one `Bytes`. Slices keep
//!   their whole allocation alive, so the broker decodes a small PUBLISH from a copy of
//!   its own ([`decode_copying_small_publish`]) and a queued message never pins a read
//!   buffer. [`PublishView`] encodes a shared message without copying its fields.
//! - A partial packet is `Ok(None)` and leaves the buffer untouched; a packet whose size
//!   (fixed header included) exceeds [`DecodeLimits::packet_bytes_max`] is rejected as soon
//!   as its fixed header is complete, before its body arrives.
//! - Level 3 has the 3.1.1 layout; only CONNECT tells them apart. Before a CONNECT has set
//!   the level (`protocol` is `None`) other packets decode as 3.1.1.
//! - Encoding is canonical: minimal variable byte integers, the shortest v5 ack and
//!   DISCONNECT/AUTH forms, properties only for v5. [`encoded_len`] gives the exact size
//!   without writing, so the broker can check a client's Maximum Packet Size first.
//! - Semantics that need session state (topic alias ranges, receive maximum, filter
//!   syntax, who may send which property) belong to the session and router, not here.
//!
//! Files: `types` (protocol level, QoS, packet id and type), `wire` (integers, strings,
//! the bounded reader), `props` (the v5 property block; `props/sets` the typed set of each
//! packet kind), `reason` (reason codes), `error`, `bytestr`, `client_id` (the id a
//! session keeps), then one file per packet family: `connect`, `publish`, `ack`,
//! `subscribe`, `disconnect` (with AUTH).

mod ack;
mod bytestr;
#[doc(hidden)]
pub mod check;
mod client_id;
mod connect;
mod disconnect;
mod error;
mod props;
mod publish;
mod reason;
mod subscribe;
mod types;
mod wire;

#[cfg(test)]
mod tests;

use bytes::{BufMut, BytesMut};

pub use ack::Ack;
pub use bytestr::ByteStr;
pub use client_id::ClientId;
pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use props::user_properties_bytes;
pub use props::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
pub use publish::{Publish, PublishView};
pub use reason::ReasonCode;
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use types::{PacketId, PacketType, Protocol, QoS};

use wire::{put_varint, read_varint, varint_len, Reader, VarInt, VARINT_MAX};

/// Largest remaining length MQTT can express, in bytes.
pub const REMAINING_BYTES_MAX: u32 = VARINT_MAX;

/// The largest whole packet MQTT can express: fixed header byte, 4-byte remaining length,
/// and the largest remaining length.
pub const PACKET_BYTES_LIMIT: usize = REMAINING_BYTES_MAX as usize + 5;

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted packet, fixed header included, in bytes.
    pub packet_bytes_max: u32,
}

impl Default for DecodeLimits {
    /// The protocol's own ceiling: a 4-byte remaining length plus its 5-byte fixed header.
    fn default() -> Self {
        Self {
            packet_bytes_max: REMAINING_BYTES_MAX + 5,
        }
    }
}

/// A decoded or to-be-encoded MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Connect),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (v5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}

/// A complete fixed header.
struct FixedHeader {
    packet_type: PacketType,
    flags: u8,
    /// Bytes of the fixed header itself (2 ..= 5).
    header_bytes: usize,
    /// Bytes of the whole packet.
    packet_bytes: usize,
}

/// Parses the fixed header at the front of `buf`; `Ok(None)` when it is not complete.
fn fixed_header(
    buf: &[u8],
    protocol: Protocol,
    limits: &DecodeLimits,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = match PacketType::from_u8(first >> 4) {
        Some(PacketType::Auth) if !protocol.is_v5() => None,
        t => t,
    }
    .ok_or(DecodeError::InvalidPacketType { header: first })?;
    let flags = first & 0x0F;
    if packet_type != PacketType::Publish && flags != packet_type.fixed_flags() {
        return Err(DecodeError::InvalidHeaderFlags {
            packet: packet_type,
            flags,
        });
    }
    let (remaining, len) = match read_varint(&buf[1..]) {
        VarInt::Value(v, n) => (v as usize, n),
        VarInt::Incomplete => return Ok(None),
        VarInt::Malformed => return Err(DecodeError::MalformedVarInt { offset: 1 }),
    };
    let header_bytes = 1 + len;
    let packet_bytes = header_bytes + remaining;
    if packet_bytes > limits.packet_bytes_max as usize {
        return Err(DecodeError::PacketTooLarge {
            packet_bytes,
            packet_bytes_max: limits.packet_bytes_max,
        });
    }
    Ok(Some(FixedHeader {
        packet_type,
        flags,
        header_bytes,
        packet_bytes,
    }))
}

/// Decodes one packet from the front of `buf`.
///
/// `Ok(None)`: more bytes are needed and `buf` is untouched. `Ok(Some(_))`: the packet's
/// bytes have been split off `buf`. `protocol` is `None` until a CONNECT fixed the level;
/// a CONNECT is always decoded by its own level. On `Err` the connection must be closed:
/// the packet's bytes are consumed, except for [`DecodeError::PacketTooLarge`] and header
/// errors, which leave `buf` untouched.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let protocol = protocol.unwrap_or(Protocol::V311);
    let Some(h) = fixed_header(buf, protocol, limits)? else {
        return Ok(None);
    };
    if buf.len() < h.packet_bytes {
        return Ok(None);
    }
    let bytes = buf.split_to(h.packet_bytes).freeze();
    let mut r = Reader::new(bytes.slice(h.header_bytes..), h.header_bytes, h.packet_type);
    decode_body(&mut r, protocol, h.flags).map(Some)
}

/// [`decode`], except that a PUBLISH shorter than `copy_below_bytes` is first copied out
/// of `buf` into an allocation of its own.
///
/// What a PUBLISH decodes into (topic, payload, properties) are slices that keep their
/// whole allocation alive for as long as the message is queued anywhere: a 10-byte
/// message must not keep a read buffer of many kilobytes alive. Other packets are
/// handled and dropped at once, and a larger PUBLISH is big beside the buffer it shares.
pub fn decode_copying_small_publish(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    limits: &DecodeLimits,
    copy_below_bytes: usize,
) -> Result<Option<Packet>, DecodeError> {
    let header_protocol = protocol.unwrap_or(Protocol::V311);
    let Some(h) = fixed_header(buf, header_protocol, limits)? else {
        return Ok(None);
    };
    if h.packet_type != PacketType::Publish
        || h.packet_bytes >= copy_below_bytes
        || buf.len() < h.packet_bytes
    {
        return decode(buf, protocol, limits);
    }
    let mut own = BytesMut::from(&buf[..h.packet_bytes]);
    bytes::Buf::advance(buf, h.packet_bytes);
    decode(&mut own, protocol, limits)
}

fn decode_body(r: &mut Reader, protocol: Protocol, flags: u8) -> Result<Packet, DecodeError> {
    Ok(match r.packet {
        PacketType::Connect => Packet::Connect(Connect::decode(r)?),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, protocol)?),
        PacketType::Publish => Packet::Publish(Publish::decode(r, protocol, flags)?),
        PacketType::PubAck => Packet::PubAck(Ack::decode(r, protocol)?),
        PacketType::PubRec => Packet::PubRec(Ack::decode(r, protocol)?),
        PacketType::PubRel => Packet::PubRel(Ack::decode(r, protocol)?),
        PacketType::PubComp => Packet::PubComp(Ack::decode(r, protocol)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, protocol)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(r, protocol)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, protocol)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, protocol)?),
        PacketType::PingReq => {
            r.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, protocol)?),
        PacketType::Auth => Packet::Auth(Auth::decode(r)?),
    })
}

/// Remaining length of `packet` encoded for `protocol`, checked against the protocol limits.
fn body_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    let t = packet.packet_type();
    let n = match packet {
        Packet::Connect(p) => p.body_len()?,
        Packet::ConnAck(p) => p.body_len(protocol)?,
        Packet::Publish(p) => p.view().body_len(protocol)?,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            p.body_len(protocol, t)?
        }
        Packet::Subscribe(p) => p.body_len(protocol)?,
        Packet::SubAck(p) => p.body_len(protocol)?,
        Packet::Unsubscribe(p) => p.body_len(protocol)?,
        Packet::UnsubAck(p) => p.body_len(protocol)?,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(p) => p.body_len(protocol)?,
        Packet::Auth(_) if !protocol.is_v5() => {
            return Err(EncodeError::NotInProtocol {
                packet: t,
                protocol,
            })
        }
        Packet::Auth(p) => p.body_len()?,
    };
    check_remaining(t, n)
}

fn check_remaining(packet: PacketType, remaining_bytes: usize) -> Result<usize, EncodeError> {
    if remaining_bytes > VARINT_MAX as usize {
        return Err(EncodeError::PacketTooLarge {
            packet,
            remaining_bytes,
        });
    }
    Ok(remaining_bytes)
}

fn write_body(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    match packet {
        Packet::Connect(p) => p.write_body(out),
        Packet::ConnAck(p) => p.write_body(protocol, out),
        Packet::Publish(p) => p.view().write_body(protocol, out),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            p.write_body(protocol, out)
        }
        Packet::Subscribe(p) => p.write_body(protocol, out),
        Packet::SubAck(p) => p.write_body(protocol, out),
        Packet::Unsubscribe(p) => p.write_body(protocol, out),
        Packet::UnsubAck(p) => p.write_body(protocol, out),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(p) => p.write_body(protocol, out),
        Packet::Auth(p) => p.write_body(out),
    }
}

/// Whole packet size for a remaining length of `body` bytes.
const fn framed_len(body: usize) -> usize {
    1 + varint_len(body) + body
}

/// Writes the fixed header and the body written by `write`, which must be `body` bytes.
fn put_frame(
    first_byte: u8,
    body: usize,
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut),
) -> usize {
    let total = framed_len(body);
    out.reserve(total);
    let start = out.len();
    out.put_u8(first_byte);
    put_varint(out, body);
    write(out);
    // The size functions and the writers must agree, or the peer would misframe the stream.
    assert_eq!(out.len() - start, total, "encoded size mismatch");
    total
}

/// Exact number of bytes [`encode`] would write for `packet`, fixed header included, or the
/// error it would return. Compare it with a client's Maximum Packet Size before encoding.
/// For a PUBLISH held outside a [`Packet`], use [`Publish::encoded_len`].
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    Ok(framed_len(body_len(packet, protocol)?))
}

/// Appends the encoding of `packet` for `protocol` to `out` and returns the bytes written.
/// A CONNECT is encoded by its own `protocol` field; fields a level cannot carry (v5
/// properties before v5, UNSUBACK reason codes before v5) are left out. Nothing is written
/// on error. Allocates only to grow `out`, once, by the exact size.
pub fn encode(
    packet: &Packet,
    protocol: Protocol,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let body = body_len(packet, protocol)?;
    let flags = match packet {
        Packet::Publish(p) => p.view().header_flags(),
        _ => packet.packet_type().fixed_flags(),
    };
    let first = ((packet.packet_type() as u8) << 4) | flags;
    Ok(put_frame(first, body, out, |out| {
        write_body(packet, protocol, out)
    }))
}

impl Publish {
    /// Exact encoded size of this PUBLISH, fixed header included: what [`Publish::encode`]
    /// and [`encode`] would write. Lets the broker check a subscriber's Maximum Packet Size
    /// without wrapping the message in a [`Packet`].
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        self.view().encoded_len(protocol)
    }

    /// Appends this PUBLISH to `out`, exactly as [`encode`] would; returns the bytes written.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) -> Result<usize, EncodeError> {
        self.view().encode(protocol, out)
    }
}

impl PublishView<'_> {
    /// Exact encoded size, fixed header included (see [`Publish::encoded_len`]).
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let body = check_remaining(PacketType::Publish, self.body_len(protocol)?)?;
        Ok(framed_len(body))
    }

    /// Appends this PUBLISH to `out`, exactly as [`encode`] would for the [`Publish`] it
    /// stands for; returns the bytes written.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) -> Result<usize, EncodeError> {
        let body = check_remaining(PacketType::Publish, self.body_len(protocol)?)?;
        let first = ((PacketType::Publish as u8) << 4) | self.header_flags();
        Ok(put_frame(first, body, out, |out| {
            self.write_body(protocol, out)
        }))
    }
}
