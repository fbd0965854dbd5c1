//! DISCONNECT (both levels) and AUTH (v5 only).
//!
//! v5 short forms: remaining length 0 means reason 0x00 without properties, 1 means a
//! reason code without properties. Encoding picks the shortest form.

use bytes::{BufMut, BytesMut};

use super::ack::read_reason;
use super::props::{self, AuthProperties, DisconnectProperties, Properties};
use super::wire::Reader;
use super::{DecodeError, EncodeError, PacketType, Protocol, ReasonCode};

/// A DISCONNECT packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// v5 reason code; Normal disconnection (0x00) before v5.
    pub reason: ReasonCode,
    /// v5 properties; always empty before v5.
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let mut d = Self::default();
        if protocol.is_v5() && !r.is_empty() {
            d.reason = read_reason(r)?;
            if !r.is_empty() {
                d.properties = DisconnectProperties::decode(r)?;
            }
        }
        r.finish()?;
        Ok(d)
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if !protocol.is_v5() {
            return Ok(0);
        }
        short_form_len(
            self.reason,
            self.properties.is_empty(),
            &self.properties,
            PacketType::Disconnect,
        )
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        if protocol.is_v5() {
            put_short_form(
                self.reason,
                self.properties.is_empty(),
                &self.properties,
                out,
            );
        }
    }
}

/// An AUTH packet (v5 only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut a = Self::default();
        if !r.is_empty() {
            a.reason = read_reason(r)?;
            if !r.is_empty() {
                a.properties = AuthProperties::decode(r)?;
            }
        }
        r.finish()?;
        Ok(a)
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        short_form_len(
            self.reason,
            self.properties.is_empty(),
            &self.properties,
            PacketType::Auth,
        )
    }

    pub(crate) fn write_body(&self, out: &mut BytesMut) {
        put_short_form(
            self.reason,
            self.properties.is_empty(),
            &self.properties,
            out,
        );
    }
}

fn short_form_len(
    reason: ReasonCode,
    no_props: bool,
    p: &dyn Properties,
    t: PacketType,
) -> Result<usize, EncodeError> {
    match (reason, no_props) {
        (ReasonCode::Success, true) => Ok(0),
        (_, true) => Ok(1),
        _ => Ok(1 + props::block_len(p, t)?),
    }
}

fn put_short_form(reason: ReasonCode, no_props: bool, p: &dyn Properties, out: &mut BytesMut) {
    match (reason, no_props) {
        (ReasonCode::Success, true) => {}
        (_, true) => out.put_u8(reason.as_u8()),
        _ => {
            out.put_u8(reason.as_u8());
            props::put_block(p, out);
        }
    }
}
