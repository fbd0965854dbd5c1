//! Sessions: what the broker remembers about a client between and during connections.
//!
//! A session lives on exactly one shard: the shard of its current (or last) connection.
//! It owns the client's subscriptions (by full filter, `$share/...` included), the
//! outbound queue and QoS 1/2 in-flight window, the inbound QoS 2 packet ids awaiting
//! PUBREL, the will, and the expiry. The whole struct is `Send` so a takeover on another
//! shard can move it there over the mesh. Nothing here does I/O: packets are encoded
//! into an [`Outlet`] over the output buffer of the session's [`Link`], the broker's
//! handle on the connection the session is attached to (the door owns the socket).
//!
//! May use: `mqtt` (the packets, QoS and properties it encodes and keeps), `auth` (the
//! client's ACL a link carries, checked where deliveries reach the wire) and `router`
//! (`ShardId`, the one type of a shard id); no other shardmq module.

mod cursor;
mod link;
mod message;
mod outbound;
mod subscriptions;

use std::collections::HashMap;

use bytes::Bytes;

use crate::mqtt::{ByteStr, ClientId, Protocol, PublishProperties, QoS};
use crate::router::ShardId;

pub use crate::router::SmallMap;
pub use cursor::{Admit, CatchUp, ReplayCursor};
pub use link::Link;
pub use message::{Delivery, LogPos, Message};
pub use outbound::{
    Enqueued, Outbound, OutboundLimits, Outlet, Pumped, QueueLimit, TopicAliases, UnknownPacketId,
};
pub use subscriptions::{Sub, Subscriptions};

/// Session expiry interval meaning "never expires".
pub const EXPIRY_NEVER: u32 = u32::MAX;

/// Options of one subscription, as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Granted maximum QoS.
    pub qos: QoS,
    /// v5: do not deliver the client's own publications.
    pub no_local: bool,
    /// v5: keep the publisher's RETAIN flag on delivery.
    pub retain_as_published: bool,
    /// v5: 0 send retained on subscribe, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
    /// v5 subscription identifier.
    pub subscription_id: Option<u32>,
}

// A device's filter is a leaf of the subscription trie holding these beside its session
// key: 24 bytes, as `router`'s leaf-size test assumes.
const _: () = assert!(std::mem::size_of::<SubOptions>() == 12);

/// A will message, published if the connection ends without a normal DISCONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// v5 will properties to forward.
    pub properties: PublishProperties,
    /// v5 will delay interval.
    pub delay_secs: u32,
}

/// Whether a session already has a logged message (see [`Session::had`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Had {
    /// Not yet: it may be queued.
    No,
    /// Queued or in flight.
    Held,
    /// PUBREC'd by the client, with the packet id still awaiting PUBCOMP (0: completed).
    Released(u16),
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    /// The client identifier.
    pub client_id: ClientId,
    /// Protocol of the last connection.
    pub protocol: Protocol,
    /// Seconds the session outlives its connection; 0 = ends with it.
    pub expiry_secs: u32,
    /// Subscriptions by full filter (including any `$share/<group>/` prefix).
    pub subscriptions: Subscriptions,
    /// The will of the current connection.
    pub will: Option<Box<Will>>,
    /// Outbound queue and in-flight window.
    pub outbound: Outbound,
    /// Inbound QoS 2 packet ids the owner accepted (durable), awaiting PUBREL, with the
    /// owner shard that logged each (told of the PUBREL).
    pub awaiting_pubrel: BuiltOnUse<u16, ShardId>,
    /// Where a replay after a restart would start, per owner shard.
    pub replay: ReplayCursor,
    /// Whether the home shard's log holds this session (it was persistent when it
    /// connected); its changes are then logged too.
    pub logged: bool,
}

/// A number per shard, 0 for a shard it never had one for: grown with zeros to the
/// highest shard asked for (at most the shard count, once). A thin vector: 8 bytes in
/// the session, which carries two of these (a boxed slice's pointer and length are
/// 16), and nothing allocated until the first number; the length sits in the
/// allocation, beside the numbers.
#[derive(Debug, Default, Clone)]
pub(crate) struct PerShard(thin_vec::ThinVec<u64>);

const _: () = assert!(std::mem::size_of::<PerShard>() == 8);

impl PerShard {
    /// The number of shard `index` (0 if none).
    pub(crate) fn get(&self, index: usize) -> u64 {
        self.0.get(index).copied().unwrap_or(0)
    }

    /// The number of shard `index`, the table grown to it.
    pub(crate) fn get_mut(&mut self, index: usize) -> &mut u64 {
        if self.0.len() <= index {
            self.0.reserve_exact(index + 1 - self.0.len());
            self.0.resize(index + 1, 0);
        }
        &mut self.0[index]
    }

    /// The numbers by shard.
    pub(crate) fn as_slice(&self) -> &[u64] {
        &self.0
    }
}

/// A table that most sessions and connections never fill, built by its first insert:
/// 8 bytes in each of them until then instead of an empty table's 48.
// Boxed on purpose: the box is what makes the empty table small.
#[allow(clippy::box_collection)]
#[derive(Debug)]
pub struct BuiltOnUse<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for BuiltOnUse<K, V> {
    fn default() -> Self {
        BuiltOnUse(None)
    }
}

impl<K: std::hash::Hash + Eq, V> BuiltOnUse<K, V> {
    /// Inserts `value` under `key`, building the table if need be.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.get_or_insert_with(Box::default).insert(key, value)
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.as_deref()?.get(key)
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.0.as_deref_mut()?.remove(key)
    }

    /// Whether `key` is in the table.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Every entry, leaving the table unbuilt again.
    pub fn take_all(&mut self) -> impl Iterator<Item = (K, V)> {
        self.0.take().into_iter().flat_map(|m| m.into_iter())
    }
}

/// The offset of `owner`'s log from which a subscription that began at `from` (per
/// owner shard, as a session's start table and its log records keep it: see
/// [`Sub::from`]) wants messages; 0 for an owner it has no position for.
pub fn subscribed_from(from: &[u64], owner: ShardId) -> u64 {
    from.get(owner.index()).copied().unwrap_or(0)
}

impl Session {
    /// A fresh session.
    pub fn new(
        client_id: ClientId,
        protocol: Protocol,
        expiry_secs: u32,
        limits: OutboundLimits,
    ) -> Self {
        Session {
            client_id,
            protocol,
            expiry_secs,
            subscriptions: Subscriptions::new(),
            will: None,
            outbound: Outbound::new(limits),
            awaiting_pubrel: BuiltOnUse::default(),
            replay: ReplayCursor::default(),
            logged: false,
        }
    }

    /// Whether the session outlives its connection.
    pub fn is_persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Whether the broker's cursor flush has anything to look at here: the cursors of a
    /// logged session, QoS 2 releases to prune, or (a shared group's member, or a
    /// session still holding a shared delivery) holds that bound its group's cursors and
    /// releases. Most idle devices have none of these.
    pub fn flush_looks_at(&self) -> bool {
        self.logged
            || self.replay.released_len() > 0
            || self.subscriptions.keys().any(|f| f.starts_with("$share/"))
            || self.outbound.shared_held().next().is_some()
    }

    /// The once-per-session check, asked by every path that hands a logged message to
    /// the session (live fan-out, a shared member's pick, a redistribution, a backlog
    /// refill, a catch-up read, a replay): whether the session PUBREC'd it (it is never
    /// sent as a PUBLISH again) or holds it, queued or in flight, by log position.
    /// Reading the log errs low and a shared group can hand one message to two members,
    /// whose copies both come back to the group: a second copy queued beside the first
    /// would reach the client under a new packet id once it completed the first.
    pub fn had(&self, pos: LogPos) -> Had {
        match self.replay.released(pos) {
            Some(pid) => Had::Released(pid),
            None if self.outbound.holds(pos) => Had::Held,
            None => Had::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_shard_table_grows_with_zeros_to_the_shard_asked_for() {
        let mut table = PerShard::default();
        assert_eq!(table.get(3), 0);
        assert!(table.as_slice().is_empty(), "a read allocates nothing");
        *table.get_mut(1) = 7;
        assert_eq!(table.as_slice(), [0, 7]);
        *table.get_mut(1) += 1;
        *table.get_mut(3) = 2;
        assert_eq!(table.as_slice(), [0, 8, 0, 2]);
        assert_eq!((table.get(1), table.get(2), table.get(9)), (8, 0, 0));
        // Grown to exactly the shards asked for: the table lives as long as its session.
        assert_eq!(table.0.capacity(), 4);
        let copy = table.clone();
        assert_eq!(copy.as_slice(), table.as_slice());
    }
}
