//! PUBLISH. The topic and payload are slices of the received packet; decoding and encoding a
//! PUBLISH without user properties or subscription identifiers allocates nothing.
//!
//! Choices: DUP with QoS 0 is rejected at every level (v5 names it a protocol error, 0x82).
//! An empty topic is accepted only in v5 and only with a Topic Alias; wildcards in the topic
//! are left for the router to judge.

use bytes::{BufMut, Bytes, BytesMut};

use super::props::{self, PublishProperties};
use super::wire::{field_len, put_field, Reader};
use super::{ByteStr, DecodeError, EncodeError, PacketId, PacketType, Protocol, QoS};

const DUP: u8 = 0x08;
const RETAIN: u8 = 0x01;

/// A PUBLISH packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a redelivery.
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name (empty only in v5 with a topic alias).
    pub topic: ByteStr,
    /// Packet Identifier; present exactly when `qos` is above 0.
    pub packet_id: Option<PacketId>,
    /// v5 properties; always empty before v5.
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(
        r: &mut Reader,
        protocol: Protocol,
        flags: u8,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQos {
            packet: PacketType::Publish,
        })?;
        let dup = flags & DUP != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQos0);
        }
        let topic = r.string()?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(r.packet_id()?)
        };
        let properties = if protocol.is_v5() {
            PublishProperties::decode(r)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopic);
        }
        Ok(Self {
            dup,
            qos,
            retain: flags & RETAIN != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    /// This PUBLISH as a [`PublishView`] (what encoding works on).
    pub fn view(&self) -> PublishView<'_> {
        PublishView {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: &self.properties,
            message_expiry_interval_secs: self.properties.message_expiry_interval_secs,
            subscription_identifiers: &self.properties.subscription_identifiers,
            topic_alias: None,
            payload: &self.payload,
        }
    }
}

/// A PUBLISH to encode from borrowed parts: a message shared by many deliveries is sent
/// to each with its own packet id, flags, message expiry and subscription identifiers,
/// and without copying its topic, properties or payload.
#[derive(Clone, Copy, Debug)]
pub struct PublishView<'a> {
    /// DUP.
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name.
    pub topic: &'a ByteStr,
    /// Packet Identifier; present exactly when `qos` is above 0.
    pub packet_id: Option<PacketId>,
    /// The properties, except the two below, which replace theirs.
    pub properties: &'a PublishProperties,
    /// Message Expiry Interval to send.
    pub message_expiry_interval_secs: Option<u32>,
    /// Subscription Identifiers to send.
    pub subscription_identifiers: &'a [u32],
    /// Topic Alias to send (with an empty `topic` once the client knows it), replacing
    /// any of `properties`.
    pub topic_alias: Option<u16>,
    /// Application payload.
    pub payload: &'a Bytes,
}

impl PublishView<'_> {
    fn overlay(&self) -> props::PublishOverlay<'_> {
        props::PublishOverlay {
            base: self.properties,
            message_expiry_interval_secs: self.message_expiry_interval_secs,
            subscription_identifiers: self.subscription_identifiers,
            topic_alias: self.topic_alias,
        }
    }

    pub(crate) fn header_flags(&self) -> u8 {
        let mut flags = self.qos.as_u8() << 1;
        if self.dup {
            flags |= DUP;
        }
        if self.retain {
            flags |= RETAIN;
        }
        flags
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let t = PacketType::Publish;
        let mut n = field_len(t, self.topic.len())? + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            if self.packet_id.is_none() {
                return Err(EncodeError::MissingPacketId);
            }
            n += 2;
        }
        if protocol.is_v5() {
            n += props::block_len(&self.overlay(), t)?;
        }
        Ok(n)
    }

    pub(crate) fn write_body(&self, protocol: Protocol, out: &mut BytesMut) {
        put_field(out, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            if let Some(id) = self.packet_id {
                out.put_u16(id.get());
            }
        }
        if protocol.is_v5() {
            props::put_block(&self.overlay(), out);
        }
        out.put_slice(self.payload);
    }
}
