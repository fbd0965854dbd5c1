//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.
//!
//! Topic filters are decoded as strings only; their syntax (wildcards, `$share/`) is the
//! router's to judge, so it can answer per filter instead of dropping the connection.

use bytes::{BufMut, BytesMut};

use super::ack::read_reason;
use super::props::{self, AckProperties, SubscribeProperties, UnsubscribeProperties};
use super::wire::{field_len, put_field, Reader};
use super::{ByteStr, DecodeError, EncodeError, PacketId, PacketType, Protocol, QoS, ReasonCode};

/// Retain Handling subscription option (v5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// Options of one subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted to this subscription.
    pub qos: QoS,
    /// v5 No Local: do not send the client its own publications.
    pub no_local: bool,
    /// v5 Retain As Published: keep the RETAIN flag when forwarding.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let options = r.u8()?;
        let reserved = if protocol.is_v5() { 0xC0 } else { 0xFC };
        let invalid = DecodeError::InvalidSubscriptionOptions {
            options,
            offset,
            reserved_bits: options & reserved != 0,
        };
        if options & reserved != 0 {
            return Err(invalid);
        }
        let qos = QoS::from_u8(options & 0x03).ok_or(invalid.clone())?;
        let retain_handling = match (options >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(invalid),
        };
        Ok(Self {
            qos,
            no_local: options & 0x04 != 0,
            retain_as_published: options & 0x08 != 0,
            retain_handling,
        })
    }

    /// The options byte; only the QoS bits before v5.
    fn to_byte(self, protocol: Protocol) -> u8 {
        if !protocol.is_v5() {
            return self.qos.as_u8();
        }
        self.qos.as_u8()
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// A SUBSCRIBE packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// Topic filters with their options, in packet order (never empty when decoded).
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
    /// v5 properties; always empty before v5.
    pub properties: SubscribeProperties,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if protocol.is_v5() {
            SubscribeProperties::decode(r)?
        } else {
            SubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            filters.push((filter, SubscriptionOptions::decode(r, protocol)?));
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters {
                packet: PacketType::Subscribe,
            });
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let t = PacketType::Subscribe;
        if self.filters.is_empty() {
            return Err(EncodeError::Empty { packet: t });
        }
        let mut n = 2;
        if protocol.is_v5() {
            n += props::block_len(&self.properties, t)?;
        }
        for (filter, _) in &self.filters {
            n += field_len(t, filter.len())? + 1;
        }
        Ok(n)
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            props::put_block(&self.properties, out);
        }
        for (filter, options) in &self.filters {
            put_field(out, filter.as_bytes());
            out.put_u8(options.to_byte(protocol));
        }
    }
}

/// A SUBACK packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One code per filter: the granted QoS or a failure. Before v5 every failure travels
    /// as 0x80 and decodes as [`ReasonCode::UnspecifiedError`].
    pub reason_codes: Vec<ReasonCode>,
    /// v5 properties; always empty before v5.
    pub properties: AckProperties,
}

impl SubAck {
    /// A SUBACK with one reason code per filter, in order.
    pub fn new(packet_id: PacketId, reason_codes: Vec<ReasonCode>) -> Self {
        Self {
            packet_id,
            reason_codes,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let mut reason_codes = Vec::with_capacity(r.remaining());
        let properties = if protocol.is_v5() {
            let properties = AckProperties::decode(r)?;
            while !r.is_empty() {
                reason_codes.push(read_reason(r)?);
            }
            properties
        } else {
            while !r.is_empty() {
                let code = r.u8()?;
                let rc = ReasonCode::from_suback_v3_return_code(code).ok_or(
                    DecodeError::InvalidReasonCode {
                        packet: PacketType::SubAck,
                        code,
                    },
                )?;
                reason_codes.push(rc);
            }
            AckProperties::default()
        };
        Ok(Self {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let props = if protocol.is_v5() {
            props::block_len(&self.properties, PacketType::SubAck)?
        } else {
            0
        };
        Ok(2 + props + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            props::put_block(&self.properties, out);
            for rc in &self.reason_codes {
                out.put_u8(rc.as_u8());
            }
        } else {
            for rc in &self.reason_codes {
                out.put_u8(rc.suback_v3_return_code());
            }
        }
    }
}

/// An UNSUBSCRIBE packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// Topic filters, in packet order (never empty when decoded).
    pub filters: Vec<ByteStr>,
    /// v5 properties; always empty before v5.
    pub properties: UnsubscribeProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if protocol.is_v5() {
            UnsubscribeProperties::decode(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters {
                packet: PacketType::Unsubscribe,
            });
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let t = PacketType::Unsubscribe;
        if self.filters.is_empty() {
            return Err(EncodeError::Empty { packet: t });
        }
        let mut n = 2;
        if protocol.is_v5() {
            n += props::block_len(&self.properties, t)?;
        }
        for filter in &self.filters {
            n += field_len(t, filter.len())?;
        }
        Ok(n)
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            props::put_block(&self.properties, out);
        }
        for filter in &self.filters {
            put_field(out, filter.as_bytes());
        }
    }
}

/// An UNSUBACK packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// v5: one code per filter. Before v5 the packet carries none: decoded empty, ignored
    /// when encoding.
    pub reason_codes: Vec<ReasonCode>,
    /// v5 properties; always empty before v5.
    pub properties: AckProperties,
}

impl UnsubAck {
    /// An UNSUBACK with one reason code per filter (dropped for 3.1.1).
    pub fn new(packet_id: PacketId, reason_codes: Vec<ReasonCode>) -> Self {
        Self {
            packet_id,
            reason_codes,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let mut reason_codes = Vec::new();
        let mut properties = AckProperties::default();
        if protocol.is_v5() {
            properties = AckProperties::decode(r)?;
            reason_codes.reserve_exact(r.remaining());
            while !r.is_empty() {
                reason_codes.push(read_reason(r)?);
            }
        }
        r.finish()?;
        Ok(Self {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if !protocol.is_v5() {
            return Ok(2);
        }
        let props = props::block_len(&self.properties, PacketType::UnsubAck)?;
        Ok(2 + props + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if protocol.is_v5() {
            props::put_block(&self.properties, out);
            for rc in &self.reason_codes {
                out.put_u8(rc.as_u8());
            }
        }
    }
}
