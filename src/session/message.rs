//! The application message as the broker routes it, and one delivery of it to a session.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::mqtt::{self, ByteStr, ClientId, PublishProperties, QoS};
use crate::router::ShardId;

/// An application message after its owner shard accepted it. Immutable and shared by
/// `Arc` with every shard and session that delivers it: the payload is never copied
/// between the socket it came from and the sockets it leaves by.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name (never an alias).
    pub topic: ByteStr,
    /// Payload bytes, shared.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// The publisher's RETAIN flag.
    pub retain: bool,
    /// v5 properties forwarded unchanged (topic alias and subscription identifiers are
    /// per-connection and never stored here).
    pub properties: PublishProperties,
    /// The publishing client's id, for no-local subscriptions.
    pub publisher: ClientId,
    /// When the v5 message expiry interval runs out; `None` = never.
    pub expires_at: Option<Instant>,
    /// Where the owner logged it; `None` for a message that was not logged.
    pub log: Option<LogPos>,
}

/// A logged message's place in its owner shard's log, and what its arrival tells a
/// receiving shard about the owner's earlier records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    /// The owner shard whose log holds the record.
    pub shard: ShardId,
    /// The record's offset in that log.
    pub offset: u64,
    /// Every record of the owner below this offset (other than this one) had been sent
    /// to every interested shard before this message was: a receiver that has it has
    /// had all of them. Persistent sessions turn this into their replay cursor.
    pub floor: u64,
}

impl Message {
    /// Whether the message must no longer be delivered.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval to forward: what is left of the original, in whole seconds,
    /// rounded up so a message never arrives with 0 before it has expired.
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.min(u64::from(u32::MAX)) as u32
        })
    }

    /// Bytes this message accounts for in a session queue, a shared backlog and a mesh
    /// link: payload, topic and properties (each user property also costs its two
    /// string handles), plus a fixed overhead. Without the properties, a message with
    /// 1 MiB of user properties would pass for a few bytes against every byte bound.
    pub fn cost_bytes(&self) -> usize {
        const USER_PROPERTY_BYTES: usize = 2 * std::mem::size_of::<ByteStr>();
        let p = &self.properties;
        let user = mqtt::user_properties_bytes(&p.user_properties)
            + p.user_properties.len() * USER_PROPERTY_BYTES;
        let strings = p.response_topic.as_ref().map_or(0, ByteStr::len)
            + p.content_type.as_ref().map_or(0, ByteStr::len)
            + p.correlation_data.as_ref().map_or(0, Bytes::len);
        self.payload.len() + self.topic.len() + user + strings + 64
    }
}

/// One message on its way to one session, with that session's view of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS for this subscriber: min(publish QoS, granted QoS).
    pub qos: QoS,
    /// RETAIN flag as sent to this subscriber.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (v5).
    pub subscription_ids: Vec<u32>,
    /// The shared-subscription group this was chosen for, if any.
    pub share_group: Option<Arc<str>>,
    /// Whether this delivery holds back the session's replay cursor while it is queued or
    /// in flight (live and replayed deliveries; not retained-on-subscribe copies, which
    /// are not replayed after a restart).
    pub holds_cursor: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: PublishProperties) -> Message {
        Message {
            topic: ByteStr::from_static("t"),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties,
            publisher: ClientId::from("c"),
            expires_at: None,
            log: None,
        }
    }

    #[test]
    fn cost_counts_properties() {
        let plain = message(PublishProperties::default()).cost_bytes();
        let value = ByteStr::from("v".repeat(1000));
        let heavy = message(PublishProperties {
            user_properties: vec![(ByteStr::from_static("k"), value); 100],
            correlation_data: Some(Bytes::from_static(&[0; 500])),
            ..PublishProperties::default()
        })
        .cost_bytes();
        assert!(heavy >= plain + 100 * 1001 + 500, "{heavy} vs {plain}");
    }
}
