//! Decode and encode errors. Each decode error names the packet and, where it helps a log
//! reader, the byte offset inside the packet (0 = the fixed header's first byte), and maps
//! to the one MQTT reason code the broker answers with.

use std::fmt;

use super::{PacketType, Protocol, ReasonCode};

/// Why bytes from the peer are not a valid packet. After any error except
/// [`DecodeError::PacketTooLarge`] the offending packet has been consumed from the buffer;
/// either way the connection must be closed (after a CONNACK/DISCONNECT where v5 allows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A variable byte integer has a continuation bit on its 4th byte, or is not in its
    /// minimal form.
    MalformedVarInt {
        /// Offset of the integer's first byte.
        offset: usize,
    },
    /// The packet, fixed header included, is larger than the limit.
    PacketTooLarge {
        /// Whole packet size announced by the fixed header, in bytes.
        packet_bytes: usize,
        /// The limit in force.
        packet_bytes_max: u32,
    },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.
    InvalidPacketType {
        /// The fixed header's first byte.
        header: u8,
    },
    /// The low nibble of the fixed header holds flags this packet type forbids.
    InvalidHeaderFlags {
        /// The packet type.
        packet: PacketType,
        /// The flags found.
        flags: u8,
    },
    /// A field runs past the end of the packet (or of its property block).
    Truncated {
        /// The packet type.
        packet: PacketType,
        /// Offset where the missing field starts.
        offset: usize,
    },
    /// Bytes are left over after the last field of a packet with a fixed layout.
    TrailingBytes {
        /// The packet type.
        packet: PacketType,
        /// Offset of the first extra byte.
        offset: usize,
    },
    /// A string is not valid UTF-8.
    InvalidUtf8 {
        /// The packet type.
        packet: PacketType,
        /// Offset of the string's length prefix.
        offset: usize,
    },
    /// A string contains U+0000, which MQTT forbids.
    NullCharacter {
        /// The packet type.
        packet: PacketType,
        /// Offset of the string's length prefix.
        offset: usize,
    },
    /// CONNECT protocol name is neither "MQTT" nor "MQIsdp", or does not match the level.
    InvalidProtocolName,
    /// CONNECT protocol level is not 3, 4 or 5. A server answers 3.1.1 CONNACK return code 1
    /// (v5: 0x84) and closes.
    UnsupportedProtocolLevel {
        /// The level found.
        level: u8,
    },
    /// CONNECT flags: reserved bit set, will QoS 3, will QoS/retain without the will flag,
    /// or (before v5) a password without a user name.
    InvalidConnectFlags {
        /// The flags byte.
        flags: u8,
    },
    /// CONNACK acknowledge flags with a bit other than Session Present set.
    InvalidConnAckFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A QoS of 3 in a PUBLISH header.
    InvalidQos {
        /// The packet type.
        packet: PacketType,
    },
    /// PUBLISH with DUP set and QoS 0. MQTT 5 calls this a protocol error; it is reported
    /// as such (0x82) for every level.
    DupWithQos0,
    /// A packet identifier of 0 where one is required.
    ZeroPacketId {
        /// The packet type.
        packet: PacketType,
    },
    /// PUBLISH with an empty topic and no topic alias (or any empty topic before v5).
    EmptyTopic,
    /// Topic alias property of 0 (answer 0x94).
    TopicAliasZero,
    /// SUBSCRIBE or UNSUBSCRIBE without a single topic filter.
    NoTopicFilters {
        /// The packet type.
        packet: PacketType,
    },
    /// A subscription options byte with reserved bits set, QoS 3 or retain handling 3.
    InvalidSubscriptionOptions {
        /// The options byte.
        options: u8,
        /// Offset of the options byte.
        offset: usize,
        /// True when reserved bits are set (malformed); otherwise QoS or retain handling
        /// is 3 (protocol error).
        reserved_bits: bool,
    },
    /// A property identifier MQTT 5 does not define.
    UnknownProperty {
        /// The packet type.
        packet: PacketType,
        /// The identifier.
        id: u32,
    },
    /// A property defined by MQTT 5 but not allowed on this packet.
    PropertyNotAllowed {
        /// The packet type.
        packet: PacketType,
        /// The identifier.
        id: u8,
    },
    /// A property that may appear once appears twice.
    DuplicateProperty {
        /// The packet type.
        packet: PacketType,
        /// The identifier.
        id: u8,
    },
    /// A property value outside its range (e.g. Receive Maximum 0, payload format 2).
    InvalidPropertyValue {
        /// The packet type.
        packet: PacketType,
        /// The identifier.
        id: u8,
    },
    /// A reason code this packet type may not carry, or an unknown v3 return code.
    InvalidReasonCode {
        /// The packet type.
        packet: PacketType,
        /// The byte found.
        code: u8,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code a server sends (in CONNACK or DISCONNECT) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            // A CONNECT naming another protocol asks for a version this server does not
            // speak, whatever its level byte says.
            UnsupportedProtocolLevel { .. } | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            // A zero packet id parses; it breaks a rule [MQTT-2.2.1-3], like an empty
            // SUBSCRIBE [MQTT-3.8.3-2], so it is a protocol error rather than malformed.
            ZeroPacketId { .. }
            | DupWithQos0
            | EmptyTopic
            | NoTopicFilters { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. } => ReasonCode::ProtocolError,
            // Reserved bits are malformed; QoS 3 and retain handling 3 are protocol errors.
            InvalidSubscriptionOptions {
                reserved_bits: false,
                ..
            } => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid MQTT packet ({:?}): {self:?}",
            self.reason_code()
        )
    }
}

impl std::error::Error for DecodeError {}

/// A packet value that cannot be put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    FieldTooLong {
        /// The packet type.
        packet: PacketType,
        /// The field's length in bytes.
        len: usize,
    },
    /// The remaining length exceeds 268,435,455 bytes.
    PacketTooLarge {
        /// The packet type.
        packet: PacketType,
        /// The remaining length it would have.
        remaining_bytes: usize,
    },
    /// A variable byte integer property (subscription identifier) above 268,435,455.
    VarIntTooLarge {
        /// The packet type.
        packet: PacketType,
        /// The value.
        value: u32,
    },
    /// The packet type does not exist at this protocol level (AUTH before v5).
    NotInProtocol {
        /// The packet type.
        packet: PacketType,
        /// The protocol level asked for.
        protocol: Protocol,
    },
    /// A 3.1/3.1.1 CONNECT with a password but no user name.
    PasswordWithoutUsername,
    /// A QoS 1/2 PUBLISH without a packet identifier.
    MissingPacketId,
    /// SUBSCRIBE, UNSUBSCRIBE or SUBACK with no entries.
    Empty {
        /// The packet type.
        packet: PacketType,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode MQTT packet: {self:?}")
    }
}

impl std::error::Error for EncodeError {}
