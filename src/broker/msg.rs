//! Messages between shards. Every variant is owned, `Send` data: it crosses threads.
//! Large or shared values travel as `Arc` (messages) or `Box` (a moving session).

use std::sync::Arc;

use crate::mqtt::{ByteStr, ClientId, ReasonCode};
use crate::router::ShardId;
use crate::runtime::MeshMessage;
use crate::session::{Message, Session};

use super::kafka::{KafkaAnswer, KafkaRequest};
use super::{AdminAnswer, AdminQuery, ReplayWant};

/// Identifies one connection on one shard: `(shard, connection token)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The shard the connection lives on.
    pub shard: ShardId,
    /// The connection's token, unique on that shard for the process lifetime.
    pub token: u64,
}

/// Where the owner reports that a QoS 1/2 publish is accepted (for PUBACK/PUBREC).
#[derive(Debug, Clone, Copy)]
pub struct AckTo {
    /// The publishing connection.
    pub conn: ConnRef,
    /// The publisher's packet id.
    pub packet_id: u16,
    /// Whether the publisher can be told of a refusal (v5: a PUBACK/PUBREC reason code);
    /// a 3.1.1 publisher cannot, so a refusal closes its connection.
    pub refusable: bool,
    /// QoS 2: once accepted, the packet id awaits the publisher's PUBREL.
    pub exactly_once: bool,
    /// A QoS 2 resend (DUP set, or the id still awaits its verdict on this connection):
    /// the owner answers for the copy it logged first instead of logging it again.
    pub resend: bool,
}

impl MeshMessage for ShardMsg {
    /// Bytes this message keeps alive while it travels: what the mesh's per-link
    /// bound (`mesh_link_bytes_max`) counts.
    fn cost_bytes(&self) -> usize {
        match self {
            ShardMsg::Publish { msg, .. }
            | ShardMsg::Deliver { msg }
            | ShardMsg::DeliverShared { msg, .. }
            | ShardMsg::SharedReturn { msg, .. } => msg.cost_bytes(),
            ShardMsg::RetainedReply { messages, .. }
            | ShardMsg::SharedCatchUpReply {
                found: messages, ..
            } => messages.iter().map(|m| m.cost_bytes()).sum::<usize>() + 64,
            ShardMsg::Kafka { request, .. } => request.cost_bytes(),
            ShardMsg::KafkaReply { answer, .. } => answer.cost_bytes(),
            // Control traffic: small, bounded by its cause. Listed one by one so that a
            // new variant carrying messages cannot slip past the link bound at 64 bytes.
            // (Replay and catch-up answers carry messages and still count 64: each
            // answers one bounded read this shard asked for.)
            ShardMsg::Ping { .. }
            | ShardMsg::Pong { .. }
            | ShardMsg::Drained
            | ShardMsg::Flushed
            | ShardMsg::PublishDone { .. }
            | ShardMsg::Qos2Released { .. }
            | ShardMsg::InterestAdd { .. }
            | ShardMsg::InterestRemove { .. }
            | ShardMsg::Ack { .. }
            | ShardMsg::LogEndQuery { .. }
            | ShardMsg::LogEnd { .. }
            | ShardMsg::RetainedQuery { .. }
            | ShardMsg::Claim { .. }
            | ShardMsg::Takeover { .. }
            | ShardMsg::SessionHandover { .. }
            | ShardMsg::SessionLog { .. }
            | ShardMsg::LogDone { .. }
            | ShardMsg::Replay { .. }
            | ShardMsg::ReplayReply { .. }
            | ShardMsg::CatchUp { .. }
            | ShardMsg::CatchUpReply { .. }
            | ShardMsg::SharedCatchUp { .. }
            | ShardMsg::SharedHolds { .. }
            | ShardMsg::SharedFloor { .. }
            | ShardMsg::SharedGapReturn { .. }
            | ShardMsg::SharedGap { .. }
            | ShardMsg::RetentionFloor { .. }
            | ShardMsg::Watermark { .. }
            | ShardMsg::Recovered
            | ShardMsg::AdminQuery { .. }
            | ShardMsg::AdminReply { .. }
            | ShardMsg::SessionGone { .. } => 64,
        }
    }
}

/// One message from one shard to another; the sender's id travels with the batch.
#[derive(Debug)]
pub enum ShardMsg {
    /// Liveness probe from the metrics shard; the receiver answers with `Pong`.
    Ping {
        /// Probe round, echoed back.
        seq: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The probe round being answered.
        seq: u64,
    },
    /// The sending shard, stopping, closed its connections and sent what they gave back
    /// to shared groups (the first stop barrier: no shard logs its final cursors before
    /// every shard's `Drained`, see `flush_cursors_for_stop`).
    Drained,
    /// The sending shard, stopping, logged its sessions' final cursors (the stop barrier).
    Flushed,

    /// A publish for the topic's owner shard.
    Publish {
        /// The message (offset not yet assigned).
        msg: Arc<Message>,
        /// Where to confirm QoS 1/2.
        ack: Option<AckTo>,
    },
    /// The owner accepted (or refused) a QoS 1/2 publish.
    PublishDone {
        /// Who to answer.
        ack: AckTo,
        /// Success, or the v5 reason for a refusal.
        reason: ReasonCode,
    },
    /// Deliver to this shard's matching plain subscriptions.
    Deliver {
        /// The message.
        msg: Arc<Message>,
    },
    /// Deliver to one member of a shared subscription group on this shard.
    DeliverShared {
        /// The delivery, already shaped for a group (`share_group` set).
        group: Arc<str>,
        /// The group's filter.
        filter: Arc<str>,
        /// The message.
        msg: Arc<Message>,
        /// Shards tried so far (to hand it on if this shard has no member left).
        hops: u8,
    },
    /// A shard's first subscriber to `(group, filter)` arrived.
    InterestAdd {
        /// Filter (without the `$share/<group>/` prefix).
        filter: Arc<str>,
        /// Shared subscription group, if any.
        group: Option<Arc<str>>,
        /// Answer with `Ack { id }` once applied, if set.
        ack_id: Option<u64>,
    },
    /// A shard's last subscriber to `(group, filter)` left.
    InterestRemove {
        /// Filter.
        filter: Arc<str>,
        /// Group.
        group: Option<Arc<str>>,
    },
    /// Generic completion of a request that asked for one (`ack_id`).
    Ack {
        /// The request id.
        id: u64,
    },

    /// A new subscription on the sending shard asks this owner where its log ends. Sent
    /// after the subscription's `InterestAdd` on the same link, so every record appended
    /// at or past the answer is matched against the updated interest table.
    LogEndQuery {
        /// Request id to answer with.
        id: u64,
    },
    /// Answer to `LogEndQuery`: the offset the owner's next record gets.
    LogEnd {
        /// The request id.
        id: u64,
        /// The owner's log end (0 without a log).
        end: u64,
    },

    /// Retained messages matching `filter`, wanted by a session on the sending shard.
    RetainedQuery {
        /// Filter (plain, not shared).
        filter: Arc<str>,
        /// Request id to answer with.
        id: u64,
    },
    /// Answer to `RetainedQuery`.
    RetainedReply {
        /// The request id.
        id: u64,
        /// Matching retained messages.
        messages: Vec<Arc<Message>>,
    },

    /// A client connected on the sending shard and claims its client id (sent to the
    /// id's home shard).
    Claim {
        /// Client id.
        client_id: ClientId,
        /// The new connection.
        conn: ConnRef,
        /// Discard any existing session.
        clean_start: bool,
        /// Request id on the claiming shard, for the `SessionHandover`.
        id: u64,
    },
    /// From the home shard: the session of `client_id` now belongs to `to`; close any
    /// connection and send the session there.
    Takeover {
        /// Client id.
        client_id: ClientId,
        /// The connection that held the id before.
        old: ConnRef,
        /// The new connection.
        to: ConnRef,
        /// Discard the session instead of moving it.
        clean_start: bool,
        /// Request id on the claiming shard.
        id: u64,
    },
    /// The answer to a claim: the previous session (if kept), now owned by the receiver.
    SessionHandover {
        /// Request id on the claiming shard.
        id: u64,
        /// The session, if one existed and was not discarded.
        session: Option<Box<Session>>,
    },
    /// A session record for the client's home shard to log.
    SessionLog {
        /// Record kind (see `broker::persist::records`).
        kind: u8,
        /// Record body.
        body: Vec<u8>,
        /// Answer with `LogDone { id }` once durable, if set.
        ack_id: Option<u64>,
    },
    /// The home's answer to a `SessionLog` that asked for one.
    LogDone {
        /// The request id.
        id: u64,
        /// Whether the record is durable.
        ok: bool,
    },
    /// At start: a home asks an owner for what its restored sessions missed.
    Replay {
        /// Request id to answer with.
        id: u64,
        /// One entry per restored session.
        wants: Vec<ReplayWant>,
    },
    /// Answer to `Replay`.
    ReplayReply {
        /// The request id.
        id: u64,
        /// The owner's log end when it read it.
        end: u64,
        /// `(index into wants, message)` in offset order.
        found: Vec<(u32, Arc<Message>)>,
        /// Per want: where the replay stopped short (its queue bound).
        resume: Vec<Option<u64>>,
    },
    /// A session's shard asks an owner to read logged messages its queue had no room
    /// for (see `session::ReplayCursor`).
    CatchUp {
        /// What to read.
        want: ReplayWant,
        /// Echoed in the answer.
        request: u64,
    },
    /// Answer to `CatchUp`.
    CatchUpReply {
        /// The session's client id.
        client_id: ClientId,
        /// The request answered.
        request: u64,
        /// The messages, in offset order.
        found: Vec<Arc<Message>>,
        /// The first matching record not returned (the batch was full).
        resume: Option<u64>,
        /// Every record below this was read.
        end: u64,
    },
    /// A shard asks an owner to read logged messages for a shared subscription group
    /// whose backlog there had no room for them (see `broker::shared`).
    SharedCatchUp {
        /// The group.
        group: Arc<str>,
        /// The group's plain filter.
        filter: Arc<str>,
        /// Read records at or above this offset.
        from: u64,
        /// At most this many messages.
        messages_max: usize,
        /// Echoed in the answer.
        request: u64,
    },
    /// Answer to `SharedCatchUp`.
    SharedCatchUpReply {
        /// The group.
        group: Arc<str>,
        /// The group's plain filter.
        filter: Arc<str>,
        /// The request answered.
        request: u64,
        /// The messages, in offset order.
        found: Vec<Arc<Message>>,
        /// The first matching record not returned (the batch was full).
        resume: Option<u64>,
        /// Every record below this was read.
        end: u64,
    },
    /// To an owner, with each cursor flush of the sending shard (see `broker::shared`,
    /// "Crash safety"): how many shared deliveries of the owner's log (`DeliverShared`
    /// and `SharedGap` sent by their owner) the sender has received so far, and what its
    /// group backlogs and clean members hold of the owner's log now, replacing its
    /// previous report.
    SharedHolds {
        /// Shared deliveries received from the owner so far (confirms the owner's sends).
        received: u64,
        /// `(member subscription key, lowest offset of the owner's log held)`.
        holds: Vec<(String, u64)>,
    },
    /// From an owner: the lowest offset of its log a group may still need that no
    /// persistent member holds, per member subscription key (`u64::MAX`: none). The
    /// receiver's persistent members of the group log no cursor for the owner past it.
    /// Sent before any later message of the owner's on the link when it falls.
    SharedFloor {
        /// `(member subscription key, floor)`.
        floors: Vec<(String, u64)>,
    },
    /// A logged shared delivery the sender cannot keep (no member of the group left
    /// there, or none connected): back to the message's owner, which sends it to another
    /// shard of the group as a fresh shared delivery.
    SharedReturn {
        /// The group.
        group: Arc<str>,
        /// The group's filter.
        filter: Arc<str>,
        /// The message (logged by the receiver).
        msg: Arc<Message>,
        /// Shards it was handed on by so far.
        hops: u8,
    },
    /// The last member of a group on the sender left while the group there still had
    /// messages to read from the receiver's log, from `from` on: the receiver (their
    /// owner) gives the read to another shard of the group (`SharedGap`).
    SharedGapReturn {
        /// The group.
        group: Arc<str>,
        /// The group's filter.
        filter: Arc<str>,
        /// A topic the filter matches.
        topic: ByteStr,
        /// The lowest offset not delivered.
        from: u64,
    },
    /// From `owner` (see `SharedGapReturn`): the last member of a group on another shard
    /// left while the group there still had messages to read from `owner`'s log: the
    /// receiver (another shard of the group) reads them instead.
    SharedGap {
        /// The group.
        group: Arc<str>,
        /// The group's plain filter.
        filter: Arc<str>,
        /// A topic the filter matches (to find the group's shards later).
        topic: ByteStr,
        /// The owner shard whose log holds them.
        owner: ShardId,
        /// The lowest offset not delivered.
        from: u64,
    },
    /// The lowest replay cursor the sending shard's sessions hold in the receiver's log.
    RetentionFloor {
        /// Offset (`u64::MAX`: none).
        floor: u64,
    },
    /// Every record of the sender's log below `watermark` has been sent to the receiver.
    Watermark {
        /// Offset.
        watermark: u64,
    },
    /// The sending shard finished its recovery (the start barrier).
    Recovered,
    /// The publisher released a QoS 2 packet id (PUBREL): to the topic's owner, which
    /// logged the publish with that id (see `broker::durable`).
    Qos2Released {
        /// The publisher's client id.
        client_id: ClientId,
        /// The released packet id.
        packet_id: u16,
    },
    /// From the metrics shard: one page of an admin listing, or an admin action.
    AdminQuery {
        /// Request id to answer with.
        id: u64,
        /// What is asked.
        query: AdminQuery,
    },
    /// Answer to `AdminQuery`.
    AdminReply {
        /// The request id.
        id: u64,
        /// The page, or whether the action found its target.
        answer: AdminAnswer,
    },
    /// A session ended on the sending shard (to the home shard's registry).
    SessionGone {
        /// Client id.
        client_id: ClientId,
        /// The connection it belonged to last.
        conn: ConnRef,
    },
    /// A request of the Kafka door for partitions this shard owns.
    Kafka {
        /// Request id, echoed in the reply.
        id: u64,
        /// What is asked.
        request: KafkaRequest,
    },
    /// Answer to `Kafka`.
    KafkaReply {
        /// The request being answered.
        id: u64,
        /// The answer.
        answer: KafkaAnswer,
    },
}
