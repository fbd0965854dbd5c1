//! MQTT 5 properties: identifiers, the property-block reader and writer, and one typed
//! struct per packet kind.
//!
//! Decoding checks, per packet kind, that each identifier is known (else malformed), is
//! allowed on that packet (else malformed, spec 2.2.2.2), appears once unless it is a User
//! Property or a PUBLISH Subscription Identifier (else protocol error), and carries a value in
//! range (else protocol error). User properties keep their order and duplicates. Encoding
//! writes the fields in declaration order, user properties last.

mod sets;

pub(crate) use sets::PublishOverlay;
pub use sets::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{field_len, put_field, put_varint, varint_len, Reader, VARINT_MAX};
use super::{ByteStr, DecodeError, EncodeError, PacketType};

/// User properties: name/value pairs in the order received. Empty allocates nothing.
pub type UserProperties = Vec<(ByteStr, ByteStr)>;

/// The bytes of every name and value in `user` (what `user_properties_bytes_max` bounds).
pub fn user_properties_bytes(user: &UserProperties) -> usize {
    user.iter().map(|(k, v)| k.len() + v.len()).sum()
}

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

fn is_known(id: u8) -> bool {
    matches!(id, 0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x1A | 0x1C | 0x1F | 0x21..=0x2A)
}

/// Reads a property block (length, then properties). `f` reads one property's value and
/// returns false when `id` is not allowed on this packet.
pub(super) fn read_props(
    r: &mut Reader,
    mut f: impl FnMut(u8, &mut Reader) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()? as usize;
    let mut block = r.sub(len)?;
    while !block.is_empty() {
        let id = block.varint()?;
        let packet = block.packet;
        let id = match u8::try_from(id) {
            Ok(id) if is_known(id) => id,
            _ => return Err(DecodeError::UnknownProperty { packet, id }),
        };
        if !f(id, &mut block)? {
            return Err(DecodeError::PropertyNotAllowed { packet, id });
        }
    }
    Ok(())
}

pub(super) fn once<T>(
    slot: &mut Option<T>,
    value: T,
    r: &Reader,
    id: u8,
) -> Result<bool, DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty {
            packet: r.packet,
            id,
        });
    }
    *slot = Some(value);
    Ok(true)
}

pub(super) fn invalid(r: &Reader, id: u8) -> DecodeError {
    DecodeError::InvalidPropertyValue {
        packet: r.packet,
        id,
    }
}

/// A byte property that must be 0 or 1.
pub(super) fn flag(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(invalid(r, id)),
    }
}

pub(super) fn nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(invalid(r, id)),
        v => Ok(v),
    }
}

pub(super) fn nonzero_u32(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Err(invalid(r, id)),
        v => Ok(v),
    }
}

pub(super) fn subscription_id(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.varint()? {
        0 => Err(invalid(r, id)),
        v => Ok(v),
    }
}

pub(super) fn user_property(
    r: &mut Reader,
    user: &mut UserProperties,
) -> Result<bool, DecodeError> {
    let name = r.string()?;
    let value = r.string()?;
    user.push((name, value));
    Ok(true)
}

/// One property to encode.
pub(crate) enum Prop<'a> {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    VarInt(u8, u32),
    Str(u8, &'a ByteStr),
    Bin(u8, &'a Bytes),
    User(&'a ByteStr, &'a ByteStr),
}

/// A typed property set that can list its present properties for encoding.
pub(crate) trait Properties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>));
}

/// Wire size of the property block, its length prefix included; fails on a value that
/// cannot be encoded.
pub(crate) fn block_len(p: &dyn Properties, packet: PacketType) -> Result<usize, EncodeError> {
    let mut err = None;
    p.each(&mut |prop| {
        if err.is_none() {
            err = check(&prop, packet).err();
        }
    });
    match err {
        Some(e) => Err(e),
        None => {
            let n = content_len(p);
            Ok(varint_len(n) + n)
        }
    }
}

/// Rejects values the wire cannot carry.
fn check(prop: &Prop<'_>, packet: PacketType) -> Result<(), EncodeError> {
    match *prop {
        Prop::VarInt(_, value) if value > VARINT_MAX => {
            Err(EncodeError::VarIntTooLarge { packet, value })
        }
        Prop::Str(_, s) => field_len(packet, s.len()).map(drop),
        Prop::Bin(_, b) => field_len(packet, b.len()).map(drop),
        Prop::User(k, v) => {
            field_len(packet, k.len())?;
            field_len(packet, v.len()).map(drop)
        }
        _ => Ok(()),
    }
}

/// Bytes of the properties, without the block's length prefix (values already checked).
fn content_len(p: &dyn Properties) -> usize {
    let mut total = 0usize;
    p.each(&mut |prop| {
        total += 1 + match prop {
            Prop::Byte(..) => 1,
            Prop::U16(..) => 2,
            Prop::U32(..) => 4,
            Prop::VarInt(_, v) => varint_len(v as usize),
            Prop::Str(_, s) => 2 + s.len(),
            Prop::Bin(_, b) => 2 + b.len(),
            Prop::User(k, v) => 4 + k.len() + v.len(),
        }
    });
    total
}

/// Writes the property block; values were checked by [`block_len`].
pub(crate) fn put_block(p: &dyn Properties, out: &mut BytesMut) {
    put_varint(out, content_len(p));
    p.each(&mut |prop| match prop {
        Prop::Byte(id, v) => {
            out.put_u8(id);
            out.put_u8(v);
        }
        Prop::U16(id, v) => {
            out.put_u8(id);
            out.put_u16(v);
        }
        Prop::U32(id, v) => {
            out.put_u8(id);
            out.put_u32(v);
        }
        Prop::VarInt(id, v) => {
            out.put_u8(id);
            put_varint(out, v as usize);
        }
        Prop::Str(id, s) => {
            out.put_u8(id);
            put_field(out, s.as_bytes());
        }
        Prop::Bin(id, b) => {
            out.put_u8(id);
            put_field(out, b);
        }
        Prop::User(k, v) => {
            out.put_u8(USER_PROPERTY);
            put_field(out, k.as_bytes());
            put_field(out, v.as_bytes());
        }
    });
}

pub(super) fn emit_users(user: &UserProperties, f: &mut dyn FnMut(Prop<'_>)) {
    for (k, v) in user {
        f(Prop::User(k, v));
    }
}
