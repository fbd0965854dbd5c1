//! The connections a shard admits: open connections in the whole process and on this
//! shard, and how many over-limit connections are being refused politely at a time.
//!
//! The process-wide count is the only state here shared between shards: one atomic,
//! touched by a read-modify-write once at accept and once at close, never on the message
//! path. Every door of a shard admits its connections through the same quota.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::{Limit, ShardProbe};

/// One shard's connection counts against `connections_max` and
/// `connections_per_shard_max`.
pub struct ConnectionQuota {
    /// Open connections in the whole process (every shard holds the same `Arc`).
    process_connections: Arc<AtomicUsize>,
    /// Open connections on this shard, counted from accept.
    shard_connections: Cell<usize>,
    /// Connections being refused right now (each waits briefly for its CONNECT).
    refusing: Cell<usize>,
    config: Arc<Config>,
    probe: Arc<ShardProbe>,
}

/// Most connections one shard refuses politely at a time (reading their CONNECT to answer
/// CONNACK 0x97); beyond it, a connection over the limit is closed at once, so a flood
/// of refused connections costs no more than this many small tasks.
pub const REFUSING_MAX: usize = 64;

impl ConnectionQuota {
    /// A shard's quota over the process-wide connection count `process_connections`.
    pub fn new(
        process_connections: Arc<AtomicUsize>,
        config: Arc<Config>,
        probe: Arc<ShardProbe>,
    ) -> Rc<Self> {
        Rc::new(ConnectionQuota {
            process_connections,
            shard_connections: Cell::new(0),
            refusing: Cell::new(0),
            config,
            probe,
        })
    }

    /// Admits a freshly accepted connection against `connections_per_shard_max` and
    /// `connections_max`, counting it in both until the slot drops.
    pub fn admit(self: &Rc<Self>) -> Result<ConnectionSlot, Refused> {
        let quota = self;
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
                quota: Rc::clone(self),
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
                quota: Rc::clone(self),
            },
        ))
    }
}

/// One admitted connection's place in the counts; released on drop.
pub struct ConnectionSlot {
    quota: Rc<ConnectionQuota>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let quota = &self.quota;
        quota
            .shard_connections
            .set(quota.shard_connections.get() - 1);
        quota.process_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection being refused; released on drop.
pub struct RefusalSlot {
    quota: Rc<ConnectionQuota>,
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        let quota = &self.quota;
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
