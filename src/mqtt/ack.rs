//! PUBACK, PUBREC, PUBREL and PUBCOMP: one shape, told apart by the packet type.
//!
//! v5 short forms: remaining length 2 means Success without properties, 3 means a reason
//! code without properties. Encoding always picks the shortest form.

use bytes::{BufMut, BytesMut};

use super::props::{self, AckProperties};
use super::wire::Reader;
use super::{DecodeError, EncodeError, PacketId, PacketType, Protocol, ReasonCode};

/// A publish acknowledgement (PUBACK, PUBREC, PUBREL or PUBCOMP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Packet Identifier of the PUBLISH being acknowledged.
    pub packet_id: PacketId,
    /// v5 reason code; always Success before v5.
    pub reason: ReasonCode,
    /// v5 properties; always empty before v5.
    pub properties: AckProperties,
}

impl Ack {
    /// An acknowledgement with a reason code (v5 carries it; 3.1.1 drops it).
    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> Self {
        Self {
            reason,
            ..Self::new(packet_id)
        }
    }

    /// A successful acknowledgement without properties.
    pub fn new(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let mut ack = Self::new(packet_id);
        if protocol.is_v5() && !r.is_empty() {
            ack.reason = read_reason(r)?;
            if !r.is_empty() {
                ack.properties = AckProperties::decode(r)?;
            }
        }
        r.finish()?;
        Ok(ack)
    }

    pub(crate) fn body_len(&self, protocol: Protocol, t: PacketType) -> Result<usize, EncodeError> {
        if !protocol.is_v5() {
            return Ok(2);
        }
        if self.properties.is_empty() {
            Ok(if self.reason == ReasonCode::Success {
                2
            } else {
                3
            })
        } else {
            Ok(3 + props::block_len(&self.properties, t)?)
        }
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if !protocol.is_v5() {
            return;
        }
        if self.properties.is_empty() {
            if self.reason != ReasonCode::Success {
                out.put_u8(self.reason.as_u8());
            }
        } else {
            out.put_u8(self.reason.as_u8());
            props::put_block(&self.properties, out);
        }
    }
}

/// Reads a v5 reason code and checks that the packet type allows it.
pub(crate) fn read_reason(r: &mut Reader) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    ReasonCode::from_u8(code)
        .filter(|rc| rc.is_allowed_in(r.packet))
        .ok_or(DecodeError::InvalidReasonCode {
            packet: r.packet,
            code,
        })
}
