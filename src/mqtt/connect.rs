//! CONNECT and CONNACK.
//!
//! The CONNECT carries its own protocol level: it is decoded and encoded by that level,
//! whatever level the caller passes. Level 3 ("MQIsdp", MQTT 3.1) has the 3.1.1 layout.

use bytes::{BufMut, Bytes, BytesMut};

use super::props::{self, ConnAckProperties, ConnectProperties, WillProperties};
use super::wire::{field_len, put_field, Reader};
use super::{ByteStr, DecodeError, EncodeError, PacketType, Protocol, QoS, ReasonCode};

const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// A CONNECT packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level the client speaks; decides the layout of this packet.
    pub protocol: Protocol,
    /// Clean Start (v5) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive, seconds (0 disables it).
    pub keep_alive_secs: u16,
    /// Client Identifier (may be empty).
    pub client_id: ByteStr,
    /// The Will, when the Will Flag is set.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<ByteStr>,
    /// Password (binary data). Before v5 it requires a user name.
    pub password: Option<Bytes>,
    /// v5 properties; always empty for 3.1/3.1.1.
    pub properties: ConnectProperties,
}

/// The Will Message of a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: ByteStr,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// v5 will properties; always empty for 3.1/3.1.1.
    pub properties: WillProperties,
}

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let protocol = decode_protocol(r)?;
        let flags = r.u8()?;
        check_flags(flags, protocol)?;
        let keep_alive_secs = r.u16()?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(r)?
        } else {
            ConnectProperties::default()
        };
        let client_id = r.string()?;
        let will = if flags & WILL != 0 {
            Some(Will::decode(r, protocol, flags)?)
        } else {
            None
        };
        let username = (flags & USERNAME != 0).then(|| r.string()).transpose()?;
        let password = (flags & PASSWORD != 0).then(|| r.binary()).transpose()?;
        r.finish()?;
        Ok(Self {
            protocol,
            clean_start: flags & CLEAN_START != 0,
            keep_alive_secs,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL | (will.qos.as_u8() << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        flags
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let t = PacketType::Connect;
        let v5 = self.protocol.is_v5();
        if !v5 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::PasswordWithoutUsername);
        }
        let mut n = field_len(t, self.protocol.name().len())? + 1 + 1 + 2;
        if v5 {
            n += props::block_len(&self.properties, t)?;
        }
        n += field_len(t, self.client_id.len())?;
        if let Some(will) = &self.will {
            if v5 {
                n += props::block_len(&will.properties, t)?;
            }
            n += field_len(t, will.topic.len())? + field_len(t, will.payload.len())?;
        }
        if let Some(u) = &self.username {
            n += field_len(t, u.len())?;
        }
        if let Some(p) = &self.password {
            n += field_len(t, p.len())?;
        }
        Ok(n)
    }

    pub(crate) fn write_body(&self, out: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_field(out, self.protocol.name().as_bytes());
        out.put_u8(self.protocol.level());
        out.put_u8(self.flags());
        out.put_u16(self.keep_alive_secs);
        if v5 {
            props::put_block(&self.properties, out);
        }
        put_field(out, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                props::put_block(&will.properties, out);
            }
            put_field(out, will.topic.as_bytes());
            put_field(out, &will.payload);
        }
        if let Some(u) = &self.username {
            put_field(out, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_field(out, p);
        }
    }
}

impl Will {
    fn decode(r: &mut Reader, protocol: Protocol, flags: u8) -> Result<Self, DecodeError> {
        let properties = if protocol.is_v5() {
            WillProperties::decode(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        // check_flags has already rejected will QoS 3.
        let qos = QoS::from_u8((flags >> WILL_QOS_SHIFT) & 0x03)
            .ok_or(DecodeError::InvalidConnectFlags { flags })?;
        Ok(Self {
            topic,
            payload,
            qos,
            retain: flags & WILL_RETAIN != 0,
            properties,
        })
    }
}

/// Reads the protocol name and level and checks that they agree.
fn decode_protocol(r: &mut Reader) -> Result<Protocol, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    if name != Protocol::V311.name().as_bytes() && name != Protocol::V31.name().as_bytes() {
        return Err(DecodeError::InvalidProtocolName);
    }
    let protocol =
        Protocol::from_level(level).ok_or(DecodeError::UnsupportedProtocolLevel { level })?;
    if name != protocol.name().as_bytes() {
        return Err(DecodeError::InvalidProtocolName);
    }
    Ok(protocol)
}

fn check_flags(flags: u8, protocol: Protocol) -> Result<(), DecodeError> {
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0x03;
    let bad = flags & RESERVED != 0
        || will_qos == 3
        || (flags & WILL == 0 && (will_qos != 0 || flags & WILL_RETAIN != 0))
        || (!protocol.is_v5() && flags & PASSWORD != 0 && flags & USERNAME == 0);
    if bad {
        return Err(DecodeError::InvalidConnectFlags { flags });
    }
    Ok(())
}

/// A CONNACK packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// v5 reason code. Before v5 it travels as the return code of
    /// [`ReasonCode::connack_v3_return_code`].
    pub reason: ReasonCode,
    /// v5 properties; always empty before v5.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A CONNACK without properties; 3.1.1 encodes `reason` as its return code.
    pub fn new(session_present: bool, reason: ReasonCode) -> Self {
        Self {
            session_present,
            reason,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & !0x01 != 0 {
            return Err(DecodeError::InvalidConnAckFlags { flags });
        }
        let code = r.u8()?;
        let invalid = DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        };
        let (reason, properties) = if protocol.is_v5() {
            let reason = ReasonCode::from_u8(code)
                .filter(|rc| rc.is_allowed_in(PacketType::ConnAck))
                .ok_or(invalid)?;
            // Tolerate a missing property block: some 5.0 servers omit it when empty.
            let properties = if r.is_empty() {
                ConnAckProperties::default()
            } else {
                ConnAckProperties::decode(r)?
            };
            (reason, properties)
        } else {
            let reason = ReasonCode::from_connack_v3_return_code(code).ok_or(invalid)?;
            (reason, ConnAckProperties::default())
        };
        r.finish()?;
        Ok(Self {
            session_present: flags & 0x01 != 0,
            reason,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        if protocol.is_v5() {
            Ok(2 + props::block_len(&self.properties, PacketType::ConnAck)?)
        } else {
            Ok(2)
        }
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        out.put_u8(u8::from(self.session_present));
        if protocol.is_v5() {
            out.put_u8(self.reason.as_u8());
            props::put_block(&self.properties, out);
        } else {
            out.put_u8(self.reason.connack_v3_return_code());
        }
    }
}
