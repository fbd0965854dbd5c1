//! Limits enforced while serving, that no single connection or session can see alone:
//! open connections (process-wide and per shard) and the owner shard's share of retained
//! topics and of their bytes.
//!
//! The process-wide connection count is the only state here shared between shards: one
//! atomic, touched by a read-modify-write once at accept and once at close, never on the
//! message path. Everything else is the shard's own `Cell`s.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::Limit;
use crate::mqtt::QoS;
use crate::session::Message;

use super::msg::AckTo;
use super::state::Shard;

/// One shard's view of the limits it enforces.
pub struct Quota {
    /// Open connections in the whole process (every shard holds the same `Arc`).
    process_connections: Arc<AtomicUsize>,
    /// Open connections on this shard, counted from accept.
    shard_connections: Cell<usize>,
    /// Connections being refused right now (each waits briefly for its CONNECT).
    refusing: Cell<usize>,
    /// New retained topics admitted and not yet stored (their WAL append is pending).
    retained_reserved: Cell<usize>,
    /// Bytes (`Message::cost_bytes`) of the retained messages this owner stores.
    retained_bytes: Cell<usize>,
    /// Bytes by which admitted, not yet stored retained messages grow `retained_bytes`.
    retained_bytes_reserved: Cell<usize>,
}

/// Most connections one shard refuses politely at a time (reading their CONNECT to answer
/// CONNACK 0x97); beyond it, a connection over the limit is closed at once, so a flood
/// of refused connections costs no more than this many small tasks.
pub const REFUSING_MAX: usize = 64;

impl Quota {
    /// A shard's quota over the process-wide connection count `process_connections`.
    pub fn new(process_connections: Arc<AtomicUsize>) -> Self {
        Quota {
            process_connections,
            shard_connections: Cell::new(0),
            refusing: Cell::new(0),
            retained_reserved: Cell::new(0),
            retained_bytes: Cell::new(0),
            retained_bytes_reserved: Cell::new(0),
        }
    }

    /// The retained store took `added` bytes and let go of `removed`.
    pub(crate) fn retained_bytes_changed(&self, added: usize, removed: usize) {
        let bytes = self.retained_bytes.get() + added;
        self.retained_bytes.set(bytes - removed);
    }

    /// Bytes of the retained messages this owner stores.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retained_bytes.get()
    }
}

/// One admitted connection's place in the counts; released on drop.
pub struct ConnectionSlot {
    shard: Rc<Shard>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let quota = &self.shard.quota;
        quota
            .shard_connections
            .set(quota.shard_connections.get() - 1);
        quota.process_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection being refused; released on drop.
pub struct RefusalSlot {
    shard: Rc<Shard>,
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        let quota = &self.shard.quota;
        quota.refusing.set(quota.refusing.get() - 1);
    }
}

/// Why a connection was not admitted, and whether it may be told so.
pub enum Refused {
    /// Over `limit`: read its CONNECT and answer CONNACK 0x97 while holding the slot.
    Answer(Limit, RefusalSlot),
    /// Over `limit` with too many refusals already in progress: close it now.
    Close(Limit),
}

/// A retained publish's standing against the owner's shares of `retained_messages_max`
/// and `retained_bytes_max`.
pub enum RetainedAdmission<'a> {
    /// Store it (a clear, or within both shares). A new topic, or a message larger than
    /// the one it replaces, holds a reservation until the guard drops, after the store.
    Admitted(Option<RetainedReservation<'a>>),
    /// Over the share and the publisher can be told (v5, QoS 1/2): refuse the publish
    /// with 0x97 Quota exceeded; it is neither stored nor delivered.
    Refused,
}

/// A new retained topic and the bytes it adds, counted against the shares until its
/// store is done.
pub struct RetainedReservation<'a> {
    quota: &'a Quota,
    topics: usize,
    bytes: usize,
}

impl Drop for RetainedReservation<'_> {
    fn drop(&mut self) {
        let quota = self.quota;
        quota
            .retained_reserved
            .set(quota.retained_reserved.get() - self.topics);
        quota
            .retained_bytes_reserved
            .set(quota.retained_bytes_reserved.get() - self.bytes);
    }
}

impl Shard {
    /// Admits a freshly accepted connection against `connections_per_shard_max` and
    /// `connections_max`, counting it in both until the slot drops.
    pub fn admit_connection(self: &Rc<Self>) -> Result<ConnectionSlot, Refused> {
        let quota = &self.quota;
        let over = if quota.shard_connections.get() >= self.config.connections_per_shard_max {
            Some(Limit::ConnectionsPerShardMax)
        } else if quota.process_connections.fetch_add(1, Ordering::Relaxed)
            >= self.config.connections_max
        {
            quota.process_connections.fetch_sub(1, Ordering::Relaxed);
            Some(Limit::ConnectionsMax)
        } else {
            None
        };
        let Some(limit) = over else {
            quota
                .shard_connections
                .set(quota.shard_connections.get() + 1);
            return Ok(ConnectionSlot {
                shard: Rc::clone(self),
            });
        };
        self.probe.hit(limit);
        self.probe.connections_refused_total.inc();
        if quota.refusing.get() >= REFUSING_MAX {
            return Err(Refused::Close(limit));
        }
        quota.refusing.set(quota.refusing.get() + 1);
        Err(Refused::Answer(
            limit,
            RefusalSlot {
                shard: Rc::clone(self),
            },
        ))
    }

    /// On the owner, before a retained publish is logged: a new topic beyond this
    /// shard's share of `retained_messages_max`, or a message that would take the bytes
    /// stored past its share of `retained_bytes_max` (a new topic, or one replacing a
    /// smaller message), is not stored; the topic keeps what it had. A v5 QoS 1/2
    /// publisher is refused (PUBACK/PUBREC 0x97). A QoS 0 or 3.1.1 publisher cannot be
    /// told, so its message loses the RETAIN flag and is delivered (and logged) as a plain
    /// publish: neither now nor after a restart does it count as retained.
    pub(crate) fn admit_retained(
        &self,
        msg: &mut Arc<Message>,
        ack: Option<&AckTo>,
    ) -> RetainedAdmission<'_> {
        if msg.payload.is_empty() {
            return RetainedAdmission::Admitted(None);
        }
        let quota = &self.quota;
        let (stored, known_bytes) = {
            let retained = self.broker.retained.borrow();
            let known = retained.get(msg.topic.as_str()).map(|m| m.cost_bytes());
            (retained.len(), known)
        };
        let topics = usize::from(known_bytes.is_none());
        let bytes = msg.cost_bytes().saturating_sub(known_bytes.unwrap_or(0));
        let topics_after = stored + quota.retained_reserved.get() + topics;
        let bytes_after = quota.retained_bytes.get() + quota.retained_bytes_reserved.get() + bytes;
        let over = if topics > 0 && topics_after > self.config.retained_messages_per_shard_max() {
            Some(Limit::RetainedMessagesMax)
        } else if bytes > 0 && bytes_after > self.config.retained_bytes_per_shard_max() {
            Some(Limit::RetainedBytesMax)
        } else {
            None
        };
        let Some(limit) = over else {
            if topics == 0 && bytes == 0 {
                return RetainedAdmission::Admitted(None);
            }
            quota
                .retained_reserved
                .set(quota.retained_reserved.get() + topics);
            quota
                .retained_bytes_reserved
                .set(quota.retained_bytes_reserved.get() + bytes);
            return RetainedAdmission::Admitted(Some(RetainedReservation {
                quota,
                topics,
                bytes,
            }));
        };
        self.probe.hit(limit);
        if msg.qos != QoS::AtMostOnce && ack.is_some_and(|a| a.refusable) {
            return RetainedAdmission::Refused;
        }
        Arc::make_mut(msg).retain = false;
        RetainedAdmission::Admitted(None)
    }
}
