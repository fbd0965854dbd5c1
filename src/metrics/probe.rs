//! Per-shard counters: written only by their own shard, read by the metrics shard.
//!
//! Each value is an atomic with exactly one writer, so an update is a relaxed load and
//! store (no read-modify-write, no lock, no cache line bouncing between writers); the
//! metrics shard's relaxed loads may see a value a few updates old, which a scrape
//! tolerates.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one. Only the owning shard may call this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning shard may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The current value, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, with one writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds `n` (may be negative). Only the owning shard may call this.
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value. Only the owning shard may call this.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value, from any thread.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything one shard counts about itself.
#[derive(Debug, Default)]
pub struct ShardProbe {
    /// Open client connections.
    pub connections_current: Gauge,
    /// Connections accepted since start.
    pub connections_accepted_total: Counter,
    /// Connections closed since start (by either side).
    pub connections_closed_total: Counter,
    /// Batches this shard sent to other shards.
    pub mesh_batches_sent_total: Counter,
    /// Messages inside those batches.
    pub mesh_messages_sent_total: Counter,
    /// Batches this shard received from other shards.
    pub mesh_batches_received_total: Counter,
    /// Messages inside those batches.
    pub mesh_messages_received_total: Counter,
}

/// How a per-shard series is exported.
pub(crate) enum Series {
    Counter(fn(&ShardProbe) -> &Counter),
    Gauge(fn(&ShardProbe) -> &Gauge),
}

/// The exported per-shard series: name (without the `shardmq_` prefix and, for
/// counters, without `_total`, which the encoder adds), help, accessor.
pub(crate) const SHARD_SERIES: &[(&str, &str, Series)] = &[
    (
        "connections_current",
        "Open client connections",
        Series::Gauge(|p| &p.connections_current),
    ),
    (
        "connections_accepted",
        "Client connections accepted",
        Series::Counter(|p| &p.connections_accepted_total),
    ),
    (
        "connections_closed",
        "Client connections closed",
        Series::Counter(|p| &p.connections_closed_total),
    ),
    (
        "mesh_batches_sent",
        "Batches sent to other shards over the mesh",
        Series::Counter(|p| &p.mesh_batches_sent_total),
    ),
    (
        "mesh_messages_sent",
        "Messages sent to other shards over the mesh, inside batches",
        Series::Counter(|p| &p.mesh_messages_sent_total),
    ),
    (
        "mesh_batches_received",
        "Batches received from other shards over the mesh",
        Series::Counter(|p| &p.mesh_batches_received_total),
    ),
    (
        "mesh_messages_received",
        "Messages received from other shards over the mesh",
        Series::Counter(|p| &p.mesh_messages_received_total),
    ),
];
