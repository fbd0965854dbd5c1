//! The broker of one shard: a [`Broker`] owns this shard's sessions, subscriptions,
//! retained messages, shared groups and log, and routes publishes between shards over
//! its own mesh messages ([`ShardMsg`]). It knows no socket: a session reaches its
//! connection through a [`Link`], and the doors call its methods (open or take over a
//! session, publish, subscribe, acknowledge) in broker terms.
//!
//! May use: `runtime` (the mesh, timers, shutdown) and the ground floor (`session`,
//! `router`, `storage`, `auth`, `mqtt`, `config`, `metrics`); never a door.
//!
//! What a door calls, all `pub` on [`Broker`]:
//! - connections: `link_opened` / `link_closed` (where a connection's acks go);
//! - sessions: `connect_session` (claim, take over or open), `resume_delivery` once the
//!   CONNACK is out, `detach_session` when the connection ends, `on_drained` when its
//!   output drained;
//! - publish: `route_publish` (its verdict comes back through the link, in order);
//! - subscribe: `subscribe`, `send_retained`, `unsubscribe`, `topic_limits`, and the
//!   session's filters (`subscription_count`, `subscribes_to`, `with_filters`);
//! - acknowledgements from the client: `client_ack`, `client_pubrel`, `awaits_pubrel`,
//!   and `client_id_of` (the publisher of a message);
//! - Kafka partitions and groups (see `kafka`): `kafka_topics`, `kafka_produce`,
//!   `kafka_fetch`, `kafka_offset`, `kafka_group` (a group call on its coordinator),
//!   `kafka_list_groups` and `kafka_producer_id` (MQTT publishes reach mapped Kafka
//!   topics inside the broker: `kafka::bridge`);
//! - the process: `auth` / `replace_auth`, `start` / `stop`, `check_health`, and the
//!   public fields `id`, `config`, `probe`, `mesh` (its backlog, the shard count) and
//!   `shutdown`; `sys::is_sys_topic` says which topics are the broker's own.
//!
//! Ownership (see DESIGN.md):
//! - a topic's **owner** shard (`owner_of(topic)`) assigns offsets, keeps the retained
//!   message, and fans each publish out to its own matching sessions and to the shards
//!   whose interest table entries match;
//! - a client id's **home** shard (`owner_of(client_id)`) keeps the registry entry saying
//!   which connection holds the session; a CONNECT claims the id there;
//! - a **session** lives on the shard of its current or last connection, and moves (as
//!   a boxed value over the mesh) when the client reconnects elsewhere.
//!
//! Every cross-shard step is a [`ShardMsg`] sent through `Broker::post`, which batches per
//! peer per tick; messages to this shard itself go through a loopback queue so every path
//! has the same ordering. The publish hot path skips the loopback when the publisher's
//! shard owns the topic.
//!
//! Overlapping subscriptions: a session whose several subscriptions match a topic
//! receives the message **once**, at the highest granted QoS among them, carrying every
//! matching subscription identifier; it is sent as retained only if every matching
//! subscription has retain-as-published set (v5 §3.3.4 leaves the choice to the server).

mod acks;
mod admin;
mod catchup;
mod durable;
mod holds;
pub mod kafka;
mod msg;
pub mod persist;
mod publish;
mod quota;
mod retention;
mod sessions;
mod shard;
mod shared;
mod start;
mod state;
mod subscribe;
pub mod sys;

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use crate::mqtt::ClientId;
use crate::router::ShardId;
use crate::session::Link;
use crate::session::{Message, Session};

pub use acks::ClientAck;
pub use admin::{AdminAnswer, AdminQuery};
pub use durable::{decode_publish, Recovered, ShardLog, RECORD_PUBLISH};
pub use msg::{AckTo, ConnRef, ShardMsg};
pub use persist::{ArmedWills, RecoveredSession, ReplayWant};
pub use quota::{RetainedAdmission, RetainedReservation};
pub use sessions::{ConnectOutcome, SessionParams};
pub use shard::{Broker, HEALTH_TIMEOUT};
pub use start::{prepare_layout, Recovery};

/// Key of a session in its shard's tables.
pub type SessionKey = u64;

/// One line of the interest table: a filter, with its share group if it is shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InterestKey {
    /// The share group, `None` for a plain subscription.
    pub group: Option<Arc<str>>,
    /// The topic filter.
    pub filter: Arc<str>,
}

/// A shared subscription's group and filter, for round-robin cursors and backlogs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The share group.
    pub group: Arc<str>,
    /// The topic filter.
    pub filter: Arc<str>,
}

/// Key of a shared subscription member: the group and the session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberKey {
    /// Group name.
    pub group: Arc<str>,
    /// Member session.
    pub session: SessionKey,
}

/// An owner's record of one shard's floor reports.
#[derive(Clone, Copy, Default)]
pub(crate) struct FloorReports {
    /// How many reports the shard sent (saturating).
    pub(crate) sent: u8,
    /// The lowest of its last two reports (of the only one, after the first).
    pub(crate) lowest_of_last_two: u64,
    /// Its last report.
    pub(crate) last: u64,
}

/// This shard's client ids, in order: the session each has here and, for the ids this
/// shard is home to, the connection holding each (see `claim_at_home`). The admin API's
/// pages start where the last ended without a pass over every session. One ordered map
/// for both: on the home shard of its own connection a client id is indexed once, not in
/// an ordered map of sessions beside a hash table of holders (≈ 70 + 107 B an idle
/// connection at 15,000 ids). Its lookups come at connect, restore, takeover and a QoS 2
/// send's logging, never per QoS 0/1 message.
#[derive(Default)]
pub struct ByClient {
    ids: std::collections::BTreeMap<ClientId, ClientEntry>,
}

/// What a shard knows of one client id.
///
/// Packed to an alignment of 2: 18 bytes instead of 24 beside each 8-byte client id in
/// the map's nodes, whose size class follows from the two (a leaf of 11 entries 320
/// bytes rather than 384). Fields are read and written by value only (no reference to a
/// packed field exists).
#[derive(Clone, Copy)]
#[repr(C, packed(2))]
struct ClientEntry {
    /// Its session on this shard; 0 (no key is) for none.
    session: SessionKey,
    /// Home shard: the connection holding the id, its shard [`NO_HOLDER`] for none.
    /// Apart rather than an `Option<ConnRef>`, which would be 24 bytes aligned to 8. (A
    /// token may be 0: a session restored from the log is held by its shard with no
    /// connection.)
    holder_token: u64,
    holder_shard: ShardId,
}

/// The holder shard of a [`ClientEntry`] held by no connection: above every shard.
const NO_HOLDER: ShardId = ShardId(u16::MAX);
const _: () = assert!(crate::router::SHARDS_MAX < u16::MAX as usize);

// Kept in the map's nodes beside an 8-byte client id.
const _: () = assert!(std::mem::size_of::<ClientEntry>() == 18);

impl Default for ClientEntry {
    fn default() -> Self {
        ClientEntry {
            session: 0,
            holder_token: 0,
            holder_shard: NO_HOLDER,
        }
    }
}

impl ClientEntry {
    fn is_empty(&self) -> bool {
        self.session_is_none() && self.holder().is_none()
    }

    fn holder(&self) -> Option<ConnRef> {
        let (shard, token) = (self.holder_shard, self.holder_token);
        (shard != NO_HOLDER).then_some(ConnRef { shard, token })
    }

    /// Puts `holder` in place and returns the one before.
    fn set_holder(&mut self, holder: Option<ConnRef>) -> Option<ConnRef> {
        let before = self.holder();
        (self.holder_shard, self.holder_token) =
            holder.map_or((NO_HOLDER, 0), |c| (c.shard, c.token));
        before
    }

    /// Whether it names no session here.
    fn session_is_none(&self) -> bool {
        let session = self.session;
        session == 0
    }

    /// Puts `session` in place and returns the one before (0 for none).
    fn set_session(&mut self, session: SessionKey) -> SessionKey {
        let before = self.session;
        self.session = session;
        before
    }
}

impl ByClient {
    /// The session of `client_id`.
    pub fn get<Q>(&self, client_id: &Q) -> Option<SessionKey>
    where
        ClientId: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.ids
            .get(client_id)
            .map(|e| e.session)
            .filter(|&key| key != 0)
    }

    /// Indexes `client_id`'s session; returns the one it replaces.
    pub fn insert(&mut self, client_id: ClientId, key: SessionKey) -> Option<SessionKey> {
        debug_assert_ne!(key, 0, "a session key is never 0");
        let old = self.ids.entry(client_id).or_default().set_session(key);
        (old != 0).then_some(old)
    }

    /// Forgets `client_id`'s session.
    pub fn remove(&mut self, client_id: &str) -> Option<SessionKey> {
        let entry = self.ids.get_mut(client_id)?;
        let old = entry.set_session(0);
        if entry.is_empty() {
            self.ids.remove(client_id);
        }
        (old != 0).then_some(old)
    }

    /// Client ids with a session here after `after` (all with `None`), in order.
    pub fn after<'a>(&'a self, after: Option<&'a str>) -> impl Iterator<Item = &'a ClientId> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.ids
            .range::<str, _>((from, Unbounded))
            .filter(|(_, e)| !e.session_is_none())
            .map(|(client_id, _)| client_id)
    }

    /// Home shard: records `conn` as the holder of `client_id`; returns the one before.
    pub fn hold(&mut self, client_id: ClientId, conn: ConnRef) -> Option<ConnRef> {
        let entry = self.ids.entry(client_id).or_default();
        entry.set_holder(Some(conn))
    }

    /// Home shard: forgets the holder of `client_id` if it is still `conn`.
    pub fn let_go(&mut self, client_id: &str, conn: ConnRef) {
        let Some(entry) = self.ids.get_mut(client_id) else {
            return;
        };
        if entry.holder() == Some(conn) {
            entry.set_holder(None);
            if entry.is_empty() {
                self.ids.remove(client_id);
            }
        }
    }
}

/// A session and where it is connected.
pub struct SessionSlot {
    /// The session state.
    pub session: Session,
    /// The live connection, if any.
    pub conn: Option<Rc<Link>>,
    /// The token of the last connection that held it (for registry bookkeeping; 0 for
    /// none since a restart). Its shard is the slot's: a session is held on the shard of
    /// its connection.
    last_token: u64,
    /// Bumped on every (re)attach and takeover; timers compare it to know they are
    /// stale. A timer lives at most one expiry interval: 2^32 reattaches in it cannot
    /// happen.
    pub epoch: u32,
}

// Every session keeps one, connected or not: within the allocator's 160-byte size class
// (the next is 192).
const _: () = assert!(std::mem::size_of::<SessionSlot>() <= 160);

impl SessionSlot {
    /// A slot for `session`, attached to `conn` (if any), last held by the connection
    /// with token `last_token` on this shard.
    pub fn new(session: Session, conn: Option<Rc<Link>>, last_token: u64) -> Self {
        SessionSlot {
            session,
            conn,
            last_token,
            epoch: 0,
        }
    }

    /// The last connection that held the session, the slot being on shard `here`.
    pub fn last_conn(&self, here: ShardId) -> ConnRef {
        ConnRef {
            shard: here,
            token: self.last_token,
        }
    }

    /// Attaches `conn`, a connection of this shard: timers of the time before are stale.
    pub fn attach(&mut self, conn: Rc<Link>) {
        self.last_token = conn.token;
        self.conn = Some(conn);
        self.bump_epoch();
    }

    /// Makes the timers of the time before stale.
    pub fn bump_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }
}

/// A newer connection that took over a client id while this shard's claim for it was
/// still in flight.
#[derive(Debug, Clone, Copy)]
pub struct Superseded {
    /// The newer connection.
    pub to: ConnRef,
    /// Whether it discards the session.
    pub clean_start: bool,
    /// Its request id.
    pub id: u64,
}

/// Replies a request can gather.
#[derive(Debug)]
pub enum Reply {
    /// A Kafka partition owner's answer.
    Kafka(kafka::KafkaAnswer),
    /// A plain completion.
    Ack,
    /// Retained messages.
    Retained(Vec<Arc<Message>>),
    /// A session handed over (or none).
    Handover(Option<Box<Session>>),
    /// A session record is durable (`true`) or could not be logged.
    Logged(bool),
    /// An owner's log end, for a new subscription (see `subscribe`).
    LogEnd {
        /// The owner shard.
        shard: ShardId,
        /// The offset its next record gets.
        end: u64,
    },
    /// What an owner replayed for restored sessions.
    Replayed {
        /// The owner shard.
        shard: ShardId,
        /// The owner's log end when it read it.
        end: u64,
        /// `(index of the session in the request, message)`.
        found: Vec<(u32, Arc<Message>)>,
        /// Per session: where the replay stopped short (more than its queue holds).
        resume: Vec<Option<u64>>,
    },
    /// A shard's answer to an admin query.
    Admin(AdminAnswer),
}

impl Broker {
    /// Sends `msg` to shard `to`: over the mesh, or through the loopback for this shard.
    pub(crate) fn post(&self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.loopback.queue.borrow_mut().push_back(msg);
            if let Some(w) = self.loopback.waker.take() {
                w.wake();
            }
        } else {
            self.mesh.push(to.index(), msg);
        }
    }

    /// Like [`Broker::post`], waiting while the peer's outbox is full (data traffic).
    pub(crate) async fn post_data(&self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.post(to, msg);
        } else {
            self.mesh.send(to.index(), msg).await;
        }
    }

    /// Runs the loopback: messages a shard posts to itself, handled in order.
    pub(crate) fn spawn_loopback(self: &Rc<Self>) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            loop {
                let next = poll_fn(|cx| match shard.loopback.queue.borrow_mut().pop_front() {
                    Some(msg) => Poll::Ready(msg),
                    None => {
                        shard.loopback.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                })
                .await;
                shard.handle(shard.id, next).await;
            }
        })
        .detach();
    }

    /// The start barrier: tells every peer this shard has recovered, then waits until
    /// every peer has said the same.
    pub(crate) async fn recovered_barrier(&self) {
        let peers = self.mesh.shards() - 1;
        // Ahead of `Recovered` in each channel: sessions follow this log from its end,
        // and a subscription made as soon as a shard serves holds it until its exact
        // start is answered (see `Broker::subscribe`), not 0.
        if let Some(durable) = self.log.get() {
            let watermark = durable.sent_watermark();
            self.on_watermark(self.id, watermark);
            for peer in self.all_shards().filter(|&p| p != self.id) {
                self.post(peer, ShardMsg::Watermark { watermark });
            }
        }
        for peer in self.all_shards().filter(|&p| p != self.id) {
            self.post(peer, ShardMsg::Recovered);
        }
        self.barriers.recovered.reached(peers).await
    }

    /// Tells every other shard this one closed its connections, then waits until every
    /// other shard did (see `flush_cursors_for_stop`), in `DRAIN_ROUNDS` rounds: what a
    /// closing member gave back may travel further than one link (to the message's
    /// owner, from there to another shard of the group, and, handed on, once more each),
    /// and each round covers one more of those links. A shard posts its next round's
    /// `Drained` only once every peer's current one arrived, so no shard is two rounds
    /// ahead of another: the count reaching `round * peers` means every peer has
    /// finished that round, and what it posted before it has been handled here.
    pub(crate) async fn drain_barrier(&self) {
        let peers = self.mesh.shards() - 1;
        for round in 1..=DRAIN_ROUNDS {
            for peer in self.all_shards().filter(|&p| p != self.id) {
                self.post(peer, ShardMsg::Drained);
            }
            self.barriers.drained.reached(round * peers).await
        }
    }

    /// Waits until every other shard sent `Flushed` (see `flush_cursors_for_stop`).
    pub(crate) async fn stop_barrier(&self) {
        let peers = self.mesh.shards() - 1;
        self.barriers.flushed.reached(peers).await
    }

    /// A PUBREC of a logged session's QoS 2 message: its PUBREL goes out once the
    /// release is durable at the session's home. Releases arriving meanwhile form one
    /// batch (one record per client, one wait).
    pub(crate) fn hold_release(self: &Rc<Self>, releasing: persist::Releasing) {
        self.qos2.releasing.borrow_mut().push(releasing);
        if self.qos2.releasing_scheduled.replace(true) {
            return;
        }
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            shard.qos2.releasing_scheduled.set(false);
            let batch = std::mem::take(&mut *shard.qos2.releasing.borrow_mut());
            shard.log_releases(batch).await;
        })
        .detach();
    }

    /// Every shard id, this one included.
    pub(crate) fn all_shards(&self) -> impl ExactSizeIterator<Item = ShardId> + Clone {
        ShardId::all(self.mesh.shards())
    }

    /// Broker messages from the mesh or the loopback.
    pub(crate) async fn handle_broker(self: &Rc<Self>, from: ShardId, msg: ShardMsg) {
        match msg {
            ShardMsg::Ping { .. } | ShardMsg::Pong { .. } => {}
            ShardMsg::Publish { msg, ack } => {
                self.accept_publish(msg, ack, publish::MayWait::No).await
            }
            ShardMsg::PublishDone { ack, reason } => self.publish_done(from, ack, reason),
            ShardMsg::Qos2Released {
                client_id,
                packet_id,
            } => self.qos2_released(client_id, packet_id),
            ShardMsg::Deliver { msg } => self.deliver_local(&msg),
            ShardMsg::DeliverShared {
                group,
                filter,
                msg,
                hops,
            } => {
                self.count_shared_received(from, msg.log.map(|p| p.shard));
                self.deliver_shared(group, filter, msg, hops)
            }
            ShardMsg::InterestAdd {
                filter,
                group,
                ack_id,
            } => {
                self.subs
                    .interest
                    .borrow_mut()
                    .add(&filter, group.as_deref(), from);
                if let Some(id) = ack_id {
                    self.post(from, ShardMsg::Ack { id });
                }
            }
            ShardMsg::InterestRemove { filter, group } => {
                self.subs
                    .interest
                    .borrow_mut()
                    .remove(&filter, group.as_deref(), from);
            }
            ShardMsg::Ack { id } => self.requests.reply(id, Reply::Ack),
            ShardMsg::LogEndQuery { id } => {
                let end = self.log_end();
                self.post(from, ShardMsg::LogEnd { id, end });
            }
            ShardMsg::LogEnd { id, end } => {
                self.requests.reply(id, Reply::LogEnd { shard: from, end })
            }
            ShardMsg::RetainedQuery { filter, id } => {
                let messages = self.retained_matching(&filter);
                self.post(from, ShardMsg::RetainedReply { id, messages });
            }
            ShardMsg::RetainedReply { id, messages } => {
                self.requests.reply(id, Reply::Retained(messages));
            }
            ShardMsg::Claim {
                client_id,
                conn,
                clean_start,
                id,
            } => self.claim_at_home(client_id, conn, clean_start, id),
            ShardMsg::Takeover {
                client_id,
                old,
                to,
                clean_start,
                id,
            } => self.take_over(client_id, old, to, clean_start, id),
            ShardMsg::SessionHandover { id, session } => {
                self.requests.reply(id, Reply::Handover(session));
            }
            ShardMsg::SessionLog { kind, body, ack_id } => {
                self.on_session_log(from, kind, body, ack_id).await
            }
            ShardMsg::LogDone { id, ok } => self.requests.reply(id, Reply::Logged(ok)),
            ShardMsg::Replay { id, wants } => self.on_replay(from, id, wants).await,
            ShardMsg::ReplayReply {
                id,
                end,
                found,
                resume,
            } => self.requests.reply(
                id,
                Reply::Replayed {
                    shard: from,
                    end,
                    found,
                    resume,
                },
            ),
            ShardMsg::RetentionFloor { floor } => self.on_retention_floor(from, floor),
            ShardMsg::Watermark { watermark } => self.on_watermark(from, watermark),
            ShardMsg::CatchUp { want, request } => self.on_catch_up(from, want, request),
            ShardMsg::CatchUpReply {
                client_id,
                request,
                found,
                resume,
                end,
            } => self.on_caught_up(from, client_id, request, found, resume, end),
            ShardMsg::SharedCatchUp {
                group,
                filter,
                from: offset,
                messages_max,
                request,
            } => self.on_shared_catch_up(
                from,
                GroupKey { group, filter },
                offset,
                messages_max,
                request,
            ),
            ShardMsg::SharedCatchUpReply {
                group,
                filter,
                request,
                found,
                resume,
                end,
            } => self.on_shared_caught_up(
                from,
                GroupKey { group, filter },
                request,
                found,
                resume,
                end,
            ),
            ShardMsg::SharedHolds { received, holds } => {
                self.on_shared_holds(from, received, holds)
            }
            ShardMsg::SharedFloor { floors } => self.on_shared_floor(from, floors),
            ShardMsg::SharedReturn {
                group,
                filter,
                msg,
                hops,
            } => self.on_shared_return(from, GroupKey { group, filter }, msg, hops),
            ShardMsg::SharedGapReturn {
                group,
                filter,
                topic,
                from: offset,
            } => self.on_shared_gap_return(from, GroupKey { group, filter }, topic, offset),
            ShardMsg::SharedGap {
                group,
                filter,
                topic,
                owner,
                from: offset,
            } => {
                self.count_shared_received(from, Some(owner));
                self.on_shared_gap(GroupKey { group, filter }, topic, owner, offset)
            }
            ShardMsg::Drained => self.barriers.drained.arrived(),
            ShardMsg::Flushed => self.barriers.flushed.arrived(),
            ShardMsg::Recovered => self.barriers.recovered.arrived(),
            ShardMsg::AdminQuery { id, query } => self.on_admin_query(from, id, query).await,
            ShardMsg::AdminReply { id, answer } => self.requests.reply(id, Reply::Admin(answer)),
            ShardMsg::Kafka { id, request } => self.on_kafka_request(from, id, request),
            ShardMsg::KafkaReply { id, answer } => self.requests.reply(id, Reply::Kafka(answer)),
            ShardMsg::SessionGone { client_id, conn } => {
                self.sessions
                    .by_client
                    .borrow_mut()
                    .let_go(&client_id, conn);
            }
        }
    }
}

/// Rounds of the first stop barrier (see `drain_barrier`): a shared delivery given back
/// goes to its owner and from there to a shard of the group, at most `SHARED_HOPS_MAX`
/// times.
const DRAIN_ROUNDS: usize = 2 * shared::SHARED_HOPS_MAX as usize;

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(shard: u16, token: u64) -> ConnRef {
        ConnRef {
            shard: ShardId(shard),
            token,
        }
    }

    #[test]
    fn a_client_id_keeps_its_session_and_its_holder_apart() {
        let mut ids = ByClient::default();
        let a = ClientId::from("a");
        let b = ClientId::from("b");
        // Home of "a" with its session elsewhere; "b" held and with a session here.
        assert_eq!(ids.hold(a.clone(), conn(1, 7)), None);
        assert_eq!(ids.hold(b.clone(), conn(0, 8)), None);
        assert_eq!(ids.insert(b.clone(), 3), None);
        assert_eq!(ids.get("a"), None);
        assert_eq!(ids.get("b"), Some(3));
        // Listing sessions skips the ids only held from here.
        assert_eq!(ids.after(None).collect::<Vec<_>>(), vec![&b]);
        // A newer holder replaces the old; a stale goodbye does not remove it.
        assert_eq!(ids.hold(a.clone(), conn(0, 9)), Some(conn(1, 7)));
        ids.let_go("a", conn(1, 7));
        assert_eq!(ids.hold(a.clone(), conn(0, 9)), Some(conn(0, 9)));
        ids.let_go("a", conn(0, 9));
        assert_eq!(ids.hold(a, conn(0, 10)), None);
        // The session goes, the holder stays, and the other way round.
        assert_eq!(ids.remove("b"), Some(3));
        assert_eq!(ids.get("b"), None);
        assert_eq!(ids.hold(b.clone(), conn(0, 11)), Some(conn(0, 8)));
        assert_eq!(ids.insert(b.clone(), 4), None);
        ids.let_go("b", conn(0, 11));
        assert_eq!(ids.get("b"), Some(4));
        assert_eq!(ids.remove("b"), Some(4));
        assert_eq!(ids.remove("b"), None);
        assert_eq!(ids.after(None).count(), 0);
        // A session restored from the log is held by its shard with token 0.
        let c = ClientId::from("c");
        assert_eq!(ids.hold(c.clone(), conn(2, 0)), None);
        assert_eq!(ids.hold(c.clone(), conn(2, 0)), Some(conn(2, 0)));
        ids.let_go("c", conn(2, 0));
        assert_eq!(ids.hold(c, conn(1, 5)), None, "let go: nobody holds it");
    }
}
