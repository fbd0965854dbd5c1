//! Per-shard counters: written only by their own shard, read by the metrics shard.
//!
//! Each value is an atomic with exactly one writer, so an update is a relaxed load and
//! store (no read-modify-write, no lock, no cache line bouncing between writers); the
//! metrics shard's relaxed loads may see a value a few updates old, which a scrape
//! tolerates.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::storage::{Histogram, WalStats};

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

/// A configured limit whose hits are counted, exported as
/// `shardmq_limit_hits_total{limit="<config key>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A connection refused because the process holds `connections_max`.
    ConnectionsMax,
    /// A connection refused because its shard holds `connections_per_shard_max`.
    ConnectionsPerShardMax,
    /// A connection dropped for not completing CONNECT within `connect_timeout_ms`.
    ConnectTimeoutMs,
    /// A publisher's reader paused: `receive_maximum` publishes await their owner.
    ReceiveMaximum,
    /// A session's deliveries held back: `inflight_count_max` unacknowledged.
    InflightCountMax,
    /// A delivery dropped (or a queued QoS 0 evicted): `session_queue_messages_max`.
    SessionQueueMessagesMax,
    /// A delivery dropped (or a queued QoS 0 evicted): `session_queue_bytes_max`.
    SessionQueueBytesMax,
    /// A session's deliveries held back: `connection_out_bytes_max` pending output; or a
    /// connection's reader paused at twice that (its client does not read its replies).
    ConnectionOutBytesMax,
    /// A filter refused in SUBACK: `subscriptions_per_session_max`.
    SubscriptionsPerSessionMax,
    /// A new retained topic not stored: the owner holds its share of
    /// `retained_messages_max`.
    RetainedMessagesMax,
    /// A retained publish not stored: the owner holds its share of `retained_bytes_max`.
    RetainedBytesMax,
    /// A publisher's reader paused: a mesh link of its shard holds `mesh_link_bytes_max`.
    MeshLinkBytesMax,
    /// A shared delivery left to the log: its group's backlog holds
    /// `shared_backlog_messages_max`.
    SharedBacklogMessagesMax,
    /// A shared delivery left to the log: its group's backlog holds
    /// `shared_backlog_bytes_max`.
    SharedBacklogBytesMax,
    /// A publish refused: its user properties exceed `user_properties_bytes_max`.
    UserPropertiesBytesMax,
    /// A connection closed: a packet took longer than `packet_read_timeout_ms` to arrive.
    PacketReadTimeoutMs,
    /// A CONNECT refused (Server busy): `auth_hash_queue_max` password checks wait.
    AuthHashQueueMax,
    /// A CONNECT refused (CONNACK 0x97, 3.1.1: 3): its shard holds its share of
    /// `sessions_max`.
    SessionsMax,
    /// A received QoS 2 packet id forgotten before its PUBREL: `qos2_ids_per_shard_max`.
    Qos2IdsPerShardMax,
    /// A completed QoS 2 delivery a session forgot it had completed:
    /// `session_qos2_released_max`.
    SessionQos2ReleasedMax,
    /// A keep-alive over `max_keepalive_secs` (or 0) capped (v5, 3.1.1 with `clamp`) or
    /// refused (3.1.1 with `refuse`).
    MaxKeepaliveSecs,
    /// A client's reader paused: its PUBLISHes ran over `client_publish_rate_max`.
    ClientPublishRateMax,
    /// A client's reader paused: its PUBLISH bytes ran over `client_publish_bytes_rate_max`.
    ClientPublishBytesRateMax,
    /// A connection closed at accept: its source address opened more than
    /// `connections_per_source_rate_max` in the last second.
    ConnectionsPerSourceRateMax,
}

impl Limit {
    /// Every limit, in export order (index = `self as usize`).
    pub const ALL: [Limit; LIMITS] = [
        Limit::ConnectionsMax,
        Limit::ConnectionsPerShardMax,
        Limit::ConnectTimeoutMs,
        Limit::ReceiveMaximum,
        Limit::InflightCountMax,
        Limit::SessionQueueMessagesMax,
        Limit::SessionQueueBytesMax,
        Limit::ConnectionOutBytesMax,
        Limit::SubscriptionsPerSessionMax,
        Limit::RetainedMessagesMax,
        Limit::RetainedBytesMax,
        Limit::MeshLinkBytesMax,
        Limit::SharedBacklogMessagesMax,
        Limit::SharedBacklogBytesMax,
        Limit::UserPropertiesBytesMax,
        Limit::PacketReadTimeoutMs,
        Limit::AuthHashQueueMax,
        Limit::SessionsMax,
        Limit::Qos2IdsPerShardMax,
        Limit::SessionQos2ReleasedMax,
        Limit::MaxKeepaliveSecs,
        Limit::ClientPublishRateMax,
        Limit::ClientPublishBytesRateMax,
        Limit::ConnectionsPerSourceRateMax,
    ];

    /// The config key of the limit, used as the `limit` label.
    pub const fn key(self) -> &'static str {
        match self {
            Limit::ConnectionsMax => "connections_max",
            Limit::ConnectionsPerShardMax => "connections_per_shard_max",
            Limit::ConnectTimeoutMs => "connect_timeout_ms",
            Limit::ReceiveMaximum => "receive_maximum",
            Limit::InflightCountMax => "inflight_count_max",
            Limit::SessionQueueMessagesMax => "session_queue_messages_max",
            Limit::SessionQueueBytesMax => "session_queue_bytes_max",
            Limit::ConnectionOutBytesMax => "connection_out_bytes_max",
            Limit::SubscriptionsPerSessionMax => "subscriptions_per_session_max",
            Limit::RetainedMessagesMax => "retained_messages_max",
            Limit::RetainedBytesMax => "retained_bytes_max",
            Limit::MeshLinkBytesMax => "mesh_link_bytes_max",
            Limit::SharedBacklogMessagesMax => "shared_backlog_messages_max",
            Limit::SharedBacklogBytesMax => "shared_backlog_bytes_max",
            Limit::UserPropertiesBytesMax => "user_properties_bytes_max",
            Limit::PacketReadTimeoutMs => "packet_read_timeout_ms",
            Limit::AuthHashQueueMax => "auth_hash_queue_max",
            Limit::SessionsMax => "sessions_max",
            Limit::Qos2IdsPerShardMax => "qos2_ids_per_shard_max",
            Limit::SessionQos2ReleasedMax => "session_qos2_released_max",
            Limit::MaxKeepaliveSecs => "max_keepalive_secs",
            Limit::ClientPublishRateMax => "client_publish_rate_max",
            Limit::ClientPublishBytesRateMax => "client_publish_bytes_rate_max",
            Limit::ConnectionsPerSourceRateMax => "connections_per_source_rate_max",
        }
    }
}

/// How many limits are counted.
pub const LIMITS: usize = 24;

const _: () = {
    let mut i = 0;
    while i < LIMITS {
        assert!(
            Limit::ALL[i] as usize == i,
            "Limit::ALL is in declaration order"
        );
        i += 1;
    }
};

/// What an authorization refusal refused, exported as
/// `shardmq_acl_denied_total{action="<label>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// A CONNECT with a client id another user owns.
    Connect,
    /// A filter refused in SUBACK.
    Subscribe,
    /// A PUBLISH refused (v5 0x87) or dropped (3.1.1).
    Publish,
    /// A delivery not made: its reader may not read the topic.
    Deliver,
    /// A will dropped at CONNECT: its client may not publish to its topic.
    Will,
}

/// The `result` labels of `shardmq_config_reloads_total`, by index.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "failed"];

impl AclAction {
    /// Every action, in export order (index = `self as usize`).
    pub const ALL: [AclAction; ACL_ACTIONS] = [
        AclAction::Connect,
        AclAction::Subscribe,
        AclAction::Publish,
        AclAction::Deliver,
        AclAction::Will,
    ];

    /// The `action` label.
    pub const fn label(self) -> &'static str {
        match self {
            AclAction::Connect => "connect",
            AclAction::Subscribe => "subscribe",
            AclAction::Publish => "publish",
            AclAction::Deliver => "deliver",
            AclAction::Will => "will",
        }
    }
}

/// How many ACL actions are counted.
pub const ACL_ACTIONS: usize = 5;

const _: () = {
    let mut i = 0;
    while i < ACL_ACTIONS {
        assert!(
            AclAction::ALL[i] as usize == i,
            "AclAction::ALL is in declaration order"
        );
        i += 1;
    }
};

/// Everything one shard counts about itself.
#[derive(Debug, Default)]
pub struct ShardProbe {
    /// Open client connections.
    pub connections_current: Gauge,
    /// Connections parked without tasks now (`idle_park_ms`).
    pub connections_parked: Gauge,
    /// Times a quiet connection was parked.
    pub connection_parks_total: Counter,
    /// Times a parked connection's PINGREQs were answered without unparking it. Written
    /// by the shard's watcher thread of parked connections, its one writer.
    pub parked_pings_total: Counter,
    /// Connections accepted since start.
    pub connections_accepted_total: Counter,
    /// Connections closed since start (by either side).
    pub connections_closed_total: Counter,
    /// Times this shard slept between turns at light load (`wake_coalesce_us`).
    pub naps_total: Counter,
    /// Batches this shard sent to other shards.
    pub mesh_batches_sent_total: Counter,
    /// Messages inside those batches.
    pub mesh_messages_sent_total: Counter,
    /// Batches this shard received from other shards.
    pub mesh_batches_received_total: Counter,
    /// Messages inside those batches.
    pub mesh_messages_received_total: Counter,

    /// PUBLISH packets received from clients, by QoS (index = QoS).
    pub messages_received_by_qos: [Counter; 3],
    /// PUBLISH packets sent to subscribers, by QoS of the delivery.
    pub messages_delivered_by_qos: [Counter; 3],
    /// Deliveries not made, by QoS: session queue full, QoS 0 to an offline or slow
    /// session, over the client's maximum packet size, no shared member left.
    pub messages_dropped_by_qos: [Counter; 3],
    /// Logged QoS 1/2 deliveries that found the session queue full and were left to be
    /// read back from the log (not dropped).
    pub deliveries_deferred_total: Counter,
    /// Messages shared subscription groups on this shard keep because every member's
    /// queue is full.
    pub shared_backlog_messages_current: Gauge,
    /// Catch-up reads served from this shard's log.
    pub catch_up_reads_total: Counter,
    /// Messages queued from catch-up reads.
    pub catch_up_messages_total: Counter,
    /// Messages whose v5 expiry passed before delivery.
    pub messages_expired_total: Counter,
    /// QoS 1/2 deliveries resent to 3.1.1 clients that had not acknowledged them.
    pub messages_redelivered_total: Counter,
    /// Bytes read from client sockets.
    pub bytes_received_total: Counter,
    /// Bytes of PUBLISH packets written toward clients.
    pub bytes_sent_total: Counter,
    /// Sessions on this shard, connected or not.
    pub sessions_current: Gauge,
    /// Sessions taken over by a newer connection with the same client id.
    pub sessions_taken_over_total: Counter,
    /// Sessions ended by their expiry interval.
    pub sessions_expired_total: Counter,
    /// Subscriptions held by sessions on this shard.
    pub subscriptions_current: Gauge,
    /// Retained messages owned by this shard.
    pub retained_messages_current: Gauge,
    /// QoS 1/2 messages sent and not yet acknowledged by subscribers.
    pub inflight_current: Gauge,
    /// Will messages published.
    pub wills_published_total: Counter,
    /// CONNECTs refused (bad credentials, invalid client id, ...).
    pub connections_refused_total: Counter,
    /// Connections closed for not completing CONNECT in time.
    pub connect_timeouts_total: Counter,
    /// Connections closed for keep-alive expiry.
    pub keep_alive_timeouts_total: Counter,
    /// Connections closed for malformed packets or protocol errors.
    pub protocol_errors_total: Counter,
    /// Times each configured limit was hit, by [`Limit`].
    pub limit_hits: [Counter; LIMITS],
    /// Authorization refusals, by [`AclAction`].
    pub acl_denied: [Counter; ACL_ACTIONS],
    /// Configuration reloads (SIGHUP), applied and refused: counted by the main thread
    /// on shard 0's probe only, exported without a shard label.
    pub config_reloads: [Counter; 2],
    /// The shard's WAL counters, once it is open.
    pub wal: OnceLock<Arc<WalStats>>,
    /// From a QoS 1/2 PUBLISH read to its PUBACK/PUBREC queued for the client.
    pub publish_ack_latency: AckLatency,
}

/// Upper bounds (inclusive, microseconds) of the publish-to-ack latency buckets, plus +Inf.
pub const ACK_LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Publish-to-ack latency in microseconds, buckets [`ACK_LATENCY_BOUNDS_US`].
#[derive(Debug)]
pub struct AckLatency(pub Histogram);

impl Default for AckLatency {
    fn default() -> Self {
        AckLatency(Histogram::new(&ACK_LATENCY_BOUNDS_US))
    }
}

impl ShardProbe {
    /// Counts one hit of `limit`. Only the owning shard may call this.
    #[inline]
    pub fn hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].inc();
    }

    /// Counts `n` authorization refusals of `action`. Only the owning shard may call this.
    #[inline]
    pub fn acl_denied(&self, action: AclAction, n: u64) {
        if n > 0 {
            self.acl_denied[action as usize].add(n);
        }
    }

    /// Counts `n` hits of `limit`. Only the owning shard may call this.
    #[inline]
    pub fn hits(&self, limit: Limit, n: u64) {
        if n > 0 {
            self.limit_hits[limit as usize].add(n);
        }
    }
}

/// How a per-shard series is exported.
pub(crate) enum Series {
    Counter(fn(&ShardProbe) -> &Counter),
    Gauge(fn(&ShardProbe) -> &Gauge),
    /// A counter with a `qos` label, one value per QoS level.
    CounterByQos(fn(&ShardProbe) -> &[Counter; 3]),
    /// A counter with a `limit` label (the config key), one value per [`Limit`].
    CounterByLimit(fn(&ShardProbe) -> &[Counter; LIMITS]),
    /// A counter with an `action` label, one value per [`AclAction`].
    CounterByAclAction(fn(&ShardProbe) -> &[Counter; ACL_ACTIONS]),
    /// A process-wide counter kept on shard 0's probe, with a `result` label (`ok`,
    /// `failed`) and no `shard` label.
    ReloadsByResult(fn(&ShardProbe) -> &[Counter; 2]),
    /// A WAL counter.
    WalCounter(fn(&WalStats) -> &AtomicU64),
    /// A WAL gauge.
    WalGauge(fn(&WalStats) -> f64),
    /// A WAL histogram, with a scale from its native unit to the exported one.
    WalHistogram(fn(&WalStats) -> &Histogram, f64),
    /// A shard histogram, with a scale from its native unit to the exported one.
    Histogram(fn(&ShardProbe) -> &Histogram, f64),
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
        "connections_parked",
        "Quiet client connections parked without tasks",
        Series::Gauge(|p| &p.connections_parked),
    ),
    (
        "connection_parks",
        "Times a quiet client connection was parked",
        Series::Counter(|p| &p.connection_parks_total),
    ),
    (
        "parked_pings",
        "Times a parked client connection's PINGREQs were answered without unparking it",
        Series::Counter(|p| &p.parked_pings_total),
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
        "naps",
        "Times the shard slept between turns at light load instead of parking (wake_coalesce_us)",
        Series::Counter(|p| &p.naps_total),
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
    (
        "messages_received",
        "PUBLISH packets received from clients, by QoS",
        Series::CounterByQos(|p| &p.messages_received_by_qos),
    ),
    (
        "messages_delivered",
        "PUBLISH packets sent to subscribers, by QoS",
        Series::CounterByQos(|p| &p.messages_delivered_by_qos),
    ),
    (
        "messages_dropped",
        "Deliveries dropped (queue full, QoS 0 to a slow or offline session, oversized), by QoS",
        Series::CounterByQos(|p| &p.messages_dropped_by_qos),
    ),
    (
        "deliveries_deferred",
        "QoS 1/2 deliveries that found the session queue full and wait in the log",
        Series::Counter(|p| &p.deliveries_deferred_total),
    ),
    (
        "shared_backlog_messages_current",
        "Shared-subscription messages kept for groups whose members' queues are full",
        Series::Gauge(|p| &p.shared_backlog_messages_current),
    ),
    (
        "catch_up_reads",
        "Catch-up reads of this shard's log for sessions behind",
        Series::Counter(|p| &p.catch_up_reads_total),
    ),
    (
        "catch_up_messages",
        "Messages queued from catch-up reads",
        Series::Counter(|p| &p.catch_up_messages_total),
    ),
    (
        "messages_expired",
        "Messages whose expiry interval passed before delivery",
        Series::Counter(|p| &p.messages_expired_total),
    ),
    (
        "messages_redelivered",
        "QoS 1/2 deliveries resent to 3.1.1 clients while connected",
        Series::Counter(|p| &p.messages_redelivered_total),
    ),
    (
        "bytes_received",
        "Bytes read from client sockets",
        Series::Counter(|p| &p.bytes_received_total),
    ),
    (
        "bytes_sent",
        "Bytes of PUBLISH packets written toward clients",
        Series::Counter(|p| &p.bytes_sent_total),
    ),
    (
        "sessions_current",
        "Sessions on this shard, connected or not",
        Series::Gauge(|p| &p.sessions_current),
    ),
    (
        "sessions_taken_over",
        "Sessions taken over by a newer connection with the same client id",
        Series::Counter(|p| &p.sessions_taken_over_total),
    ),
    (
        "sessions_expired",
        "Sessions ended by their expiry interval",
        Series::Counter(|p| &p.sessions_expired_total),
    ),
    (
        "subscriptions_current",
        "Subscriptions held by sessions on this shard",
        Series::Gauge(|p| &p.subscriptions_current),
    ),
    (
        "retained_messages_current",
        "Retained messages owned by this shard",
        Series::Gauge(|p| &p.retained_messages_current),
    ),
    (
        "inflight_current",
        "QoS 1/2 deliveries sent and not yet acknowledged",
        Series::Gauge(|p| &p.inflight_current),
    ),
    (
        "limit_hits",
        "Times a configured limit was hit, by the limit's config key",
        Series::CounterByLimit(|p| &p.limit_hits),
    ),
    (
        "acl_denied",
        "Actions the ACL refused: connect (client id), subscribe, publish, deliver, will",
        Series::CounterByAclAction(|p| &p.acl_denied),
    ),
    (
        "config_reloads",
        "Configuration reloads (SIGHUP, `shardmq reload`): ok, or failed and the old settings kept",
        Series::ReloadsByResult(|p| &p.config_reloads),
    ),
    (
        "wills_published",
        "Will messages published",
        Series::Counter(|p| &p.wills_published_total),
    ),
    (
        "connections_refused",
        "CONNECTs refused",
        Series::Counter(|p| &p.connections_refused_total),
    ),
    (
        "connect_timeouts",
        "Connections closed for not completing CONNECT in time",
        Series::Counter(|p| &p.connect_timeouts_total),
    ),
    (
        "keep_alive_timeouts",
        "Connections closed for keep-alive expiry",
        Series::Counter(|p| &p.keep_alive_timeouts_total),
    ),
    (
        "wal_appends",
        "Records appended to the WAL",
        Series::WalCounter(|w| &w.appends_total),
    ),
    (
        "wal_bytes",
        "Bytes appended to the WAL",
        Series::WalCounter(|w| &w.bytes_total),
    ),
    (
        "wal_fsyncs",
        "fdatasync calls on WAL segments",
        Series::WalCounter(|w| &w.fsyncs_total),
    ),
    (
        "wal_group_commits",
        "WAL group commits (one write each)",
        Series::WalCounter(|w| &w.group_commits_total),
    ),
    (
        "wal_torn_records",
        "Torn records cut from the WAL tail at recovery",
        Series::WalCounter(|w| &w.torn_records_total),
    ),
    (
        "wal_segments",
        "WAL segment files",
        Series::WalGauge(|w| w.segments_current.load(Ordering::Relaxed) as f64),
    ),
    (
        "wal_recovery_seconds",
        "Time the last WAL recovery took",
        Series::WalGauge(|w| w.recovery_micros.load(Ordering::Relaxed) as f64 / 1e6),
    ),
    (
        "wal_fsync_seconds",
        "fdatasync latency",
        Series::WalHistogram(|w| &w.fsync_latency_us, 1e-6),
    ),
    (
        "publish_ack_seconds",
        "From a QoS 1/2 PUBLISH read to its PUBACK/PUBREC queued (the owner accepted it, \
         logged as the fsync policy requires)",
        Series::Histogram(|p| &p.publish_ack_latency.0, 1e-6),
    ),
    (
        "wal_group_commit_records",
        "Records per WAL group commit",
        Series::WalHistogram(|w| &w.group_commit_records, 1.0),
    ),
    (
        "protocol_errors",
        "Connections closed for malformed packets or protocol errors",
        Series::Counter(|p| &p.protocol_errors_total),
    ),
];
