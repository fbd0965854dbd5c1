//! The typed property set of each packet kind: its decoder (which identifiers it allows and
//! how often) and the order in which it encodes them.

use bytes::Bytes;

use super::*;
use crate::mqtt::QoS;

macro_rules! emit {
    ($f:ident, $kind:ident, $id:expr, $opt:expr) => {
        if let Some(v) = $opt {
            $f(Prop::$kind($id, v));
        }
    };
    ($f:ident, flag $id:expr, $opt:expr) => {
        if let Some(v) = $opt {
            $f(Prop::Byte($id, u8::from(v)));
        }
    };
}

/// CONNECT properties (spec 3.1.2.11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval, seconds.
    pub session_expiry_interval_secs: Option<u32>,
    /// Receive Maximum (never 0).
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size the client accepts, bytes (never 0).
    pub maximum_packet_size_bytes: Option<u32>,
    /// Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information.
    pub request_response_information: Option<bool>,
    /// Request Problem Information.
    pub request_problem_information: Option<bool>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnectProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval_secs, r.u32()?, r, id),
            RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero_u16(r, id)?, r, id),
            MAXIMUM_PACKET_SIZE => {
                once(&mut p.maximum_packet_size_bytes, nonzero_u32(r, id)?, r, id)
            }
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?, r, id),
            REQUEST_RESPONSE_INFORMATION => {
                once(&mut p.request_response_information, flag(r, id)?, r, id)
            }
            REQUEST_PROBLEM_INFORMATION => {
                once(&mut p.request_problem_information, flag(r, id)?, r, id)
            }
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?, r, id),
            AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?, r, id),
            _ => Ok(false),
        })?;
        Ok(p)
    }
}

impl Properties for ConnectProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(
            f,
            U32,
            SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval_secs
        );
        emit!(f, U16, RECEIVE_MAXIMUM, self.receive_maximum);
        emit!(f, U32, MAXIMUM_PACKET_SIZE, self.maximum_packet_size_bytes);
        emit!(f, U16, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        emit!(f, flag REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        emit!(f, flag REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        emit!(f, Str, AUTHENTICATION_METHOD, &self.authentication_method);
        emit!(f, Bin, AUTHENTICATION_DATA, &self.authentication_data);
        emit_users(&self.user_properties, f);
    }
}

/// Will properties inside CONNECT (spec 3.1.3.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Will Delay Interval, seconds.
    pub will_delay_interval_secs: Option<u32>,
    /// Payload Format Indicator: `Some(true)` means the payload is UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Message Expiry Interval, seconds.
    pub message_expiry_interval_secs: Option<u32>,
    /// Content Type.
    pub content_type: Option<ByteStr>,
    /// Response Topic.
    pub response_topic: Option<ByteStr>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl WillProperties {
    /// The properties the will's PUBLISH carries (all but the will delay).
    pub fn into_publish_properties(self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval_secs: self.message_expiry_interval_secs,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user_properties,
            ..PublishProperties::default()
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval_secs, r.u32()?, r, id),
            PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(r, id)?, r, id),
            MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval_secs, r.u32()?, r, id),
            CONTENT_TYPE => once(&mut p.content_type, r.string()?, r, id),
            RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?, r, id),
            CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?, r, id),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            _ => Ok(false),
        })?;
        Ok(p)
    }
}

impl Properties for WillProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(f, U32, WILL_DELAY_INTERVAL, self.will_delay_interval_secs);
        emit!(f, flag PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        emit!(
            f,
            U32,
            MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval_secs
        );
        emit!(f, Str, CONTENT_TYPE, &self.content_type);
        emit!(f, Str, RESPONSE_TOPIC, &self.response_topic);
        emit!(f, Bin, CORRELATION_DATA, &self.correlation_data);
        emit_users(&self.user_properties, f);
    }
}

/// CONNACK properties (spec 3.2.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval, seconds.
    pub session_expiry_interval_secs: Option<u32>,
    /// Receive Maximum (never 0).
    pub receive_maximum: Option<u16>,
    /// Maximum QoS (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// Retain Available.
    pub retain_available: Option<bool>,
    /// Maximum Packet Size the server accepts, bytes (never 0).
    pub maximum_packet_size_bytes: Option<u32>,
    /// Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteStr>,
    /// Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available.
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
    /// Server Keep Alive, seconds.
    pub server_keep_alive_secs: Option<u16>,
    /// Response Information.
    pub response_information: Option<ByteStr>,
    /// Server Reference.
    pub server_reference: Option<ByteStr>,
    /// Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval_secs, r.u32()?, r, id),
            RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero_u16(r, id)?, r, id),
            MAXIMUM_QOS => {
                let qos = if flag(r, id)? {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                once(&mut p.maximum_qos, qos, r, id)
            }
            RETAIN_AVAILABLE => once(&mut p.retain_available, flag(r, id)?, r, id),
            MAXIMUM_PACKET_SIZE => {
                once(&mut p.maximum_packet_size_bytes, nonzero_u32(r, id)?, r, id)
            }
            ASSIGNED_CLIENT_IDENTIFIER => {
                once(&mut p.assigned_client_identifier, r.string()?, r, id)
            }
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?, r, id),
            REASON_STRING => once(&mut p.reason_string, r.string()?, r, id),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.wildcard_subscription_available, flag(r, id)?, r, id)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => once(
                &mut p.subscription_identifiers_available,
                flag(r, id)?,
                r,
                id,
            ),
            SHARED_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.shared_subscription_available, flag(r, id)?, r, id)
            }
            SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive_secs, r.u16()?, r, id),
            RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?, r, id),
            SERVER_REFERENCE => once(&mut p.server_reference, r.string()?, r, id),
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?, r, id),
            AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?, r, id),
            _ => Ok(false),
        })?;
        Ok(p)
    }
}

impl Properties for ConnAckProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(
            f,
            U32,
            SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval_secs
        );
        emit!(f, U16, RECEIVE_MAXIMUM, self.receive_maximum);
        emit!(f, Byte, MAXIMUM_QOS, self.maximum_qos.map(QoS::as_u8));
        emit!(f, flag RETAIN_AVAILABLE, self.retain_available);
        emit!(f, U32, MAXIMUM_PACKET_SIZE, self.maximum_packet_size_bytes);
        emit!(
            f,
            Str,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier
        );
        emit!(f, U16, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        emit!(f, Str, REASON_STRING, &self.reason_string);
        emit!(f, flag WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        emit!(f, flag SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifiers_available);
        emit!(f, flag SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        emit!(f, U16, SERVER_KEEP_ALIVE, self.server_keep_alive_secs);
        emit!(f, Str, RESPONSE_INFORMATION, &self.response_information);
        emit!(f, Str, SERVER_REFERENCE, &self.server_reference);
        emit!(f, Str, AUTHENTICATION_METHOD, &self.authentication_method);
        emit!(f, Bin, AUTHENTICATION_DATA, &self.authentication_data);
        emit_users(&self.user_properties, f);
    }
}

/// PUBLISH properties (spec 3.3.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator: `Some(true)` means the payload is UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Message Expiry Interval, seconds.
    pub message_expiry_interval_secs: Option<u32>,
    /// Topic Alias (never 0: decoding reports [`DecodeError::TopicAliasZero`]).
    pub topic_alias: Option<u16>,
    /// Response Topic.
    pub response_topic: Option<ByteStr>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Subscription Identifiers (server to client; several allowed, none is 0).
    pub subscription_identifiers: Vec<u32>,
    /// Content Type.
    pub content_type: Option<ByteStr>,
}

impl PublishProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, flag(r, id)?, r, id),
            MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval_secs, r.u32()?, r, id),
            TOPIC_ALIAS => match r.u16()? {
                0 => Err(DecodeError::TopicAliasZero),
                alias => once(&mut p.topic_alias, alias, r, id),
            },
            RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?, r, id),
            CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?, r, id),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            SUBSCRIPTION_IDENTIFIER => {
                p.subscription_identifiers.push(subscription_id(r, id)?);
                Ok(true)
            }
            CONTENT_TYPE => once(&mut p.content_type, r.string()?, r, id),
            _ => Ok(false),
        })?;
        Ok(p)
    }
}

impl Properties for PublishProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        PublishOverlay {
            base: self,
            message_expiry_interval_secs: self.message_expiry_interval_secs,
            subscription_identifiers: &self.subscription_identifiers,
            topic_alias: None,
        }
        .each(f);
    }
}

/// A message's shared PUBLISH properties with one delivery's message expiry and
/// subscription identifiers laid over them: encodes as the properties with those two
/// replaced would, without copying the rest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PublishOverlay<'a> {
    pub base: &'a PublishProperties,
    pub message_expiry_interval_secs: Option<u32>,
    pub subscription_identifiers: &'a [u32],
    pub topic_alias: Option<u16>,
}

impl Properties for PublishOverlay<'_> {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        let base = self.base;
        emit!(f, flag PAYLOAD_FORMAT_INDICATOR, base.payload_format_indicator);
        emit!(
            f,
            U32,
            MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval_secs
        );
        emit!(f, U16, TOPIC_ALIAS, self.topic_alias.or(base.topic_alias));
        emit!(f, Str, RESPONSE_TOPIC, &base.response_topic);
        emit!(f, Bin, CORRELATION_DATA, &base.correlation_data);
        for &id in self.subscription_identifiers {
            f(Prop::VarInt(SUBSCRIPTION_IDENTIFIER, id));
        }
        emit!(f, Str, CONTENT_TYPE, &base.content_type);
        emit_users(&base.user_properties, f);
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl AckProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            REASON_STRING => once(&mut p.reason_string, r.string()?, r, id),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            _ => Ok(false),
        })?;
        Ok(p)
    }

    /// True when no property is set (allows the short ack forms).
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl Properties for AckProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(f, Str, REASON_STRING, &self.reason_string);
        emit_users(&self.user_properties, f);
    }
}

/// SUBSCRIBE properties (spec 3.8.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Subscription Identifier (1 ..= 268,435,455).
    pub subscription_identifier: Option<u32>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl SubscribeProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            SUBSCRIPTION_IDENTIFIER => once(
                &mut p.subscription_identifier,
                subscription_id(r, id)?,
                r,
                id,
            ),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            _ => Ok(false),
        })?;
        Ok(p)
    }
}

impl Properties for SubscribeProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(
            f,
            VarInt,
            SUBSCRIPTION_IDENTIFIER,
            self.subscription_identifier
        );
        emit_users(&self.user_properties, f);
    }
}

/// UNSUBSCRIBE properties (spec 3.10.2.1): user properties only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User properties.
    pub user_properties: UserProperties,
}

impl UnsubscribeProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            _ => Ok(false),
        })?;
        Ok(p)
    }
}

impl Properties for UnsubscribeProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit_users(&self.user_properties, f);
    }
}

/// DISCONNECT properties (spec 3.14.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Session Expiry Interval, seconds.
    pub session_expiry_interval_secs: Option<u32>,
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// Server Reference.
    pub server_reference: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl DisconnectProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval_secs, r.u32()?, r, id),
            REASON_STRING => once(&mut p.reason_string, r.string()?, r, id),
            SERVER_REFERENCE => once(&mut p.server_reference, r.string()?, r, id),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            _ => Ok(false),
        })?;
        Ok(p)
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Properties for DisconnectProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(
            f,
            U32,
            SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval_secs
        );
        emit!(f, Str, REASON_STRING, &self.reason_string);
        emit!(f, Str, SERVER_REFERENCE, &self.server_reference);
        emit_users(&self.user_properties, f);
    }
}

/// AUTH properties (spec 3.15.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// Reason String.
    pub reason_string: Option<ByteStr>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl AuthProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read_props(r, |id, r| match id {
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?, r, id),
            AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?, r, id),
            REASON_STRING => once(&mut p.reason_string, r.string()?, r, id),
            USER_PROPERTY => user_property(r, &mut p.user_properties),
            _ => Ok(false),
        })?;
        Ok(p)
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Properties for AuthProperties {
    fn each(&self, f: &mut dyn FnMut(Prop<'_>)) {
        emit!(f, Str, AUTHENTICATION_METHOD, &self.authentication_method);
        emit!(f, Bin, AUTHENTICATION_DATA, &self.authentication_data);
        emit!(f, Str, REASON_STRING, &self.reason_string);
        emit_users(&self.user_properties, f);
    }
}
