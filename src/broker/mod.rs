//! The broker of one shard: a [`Broker`] owns this shard's sessions, subscriptions,
//! retained messages, shared groups and log, and routes publishes between shards over
//! its own mesh messages ([`ShardMsg`]). It knows no socket: a session reaches its
//! connection through a [`Link`], and the doors call its methods (open or take over a
//! session, publish, subscribe, acknowledge) in broker terms.
//!
//! May use: `runtime` (the mesh, timers, shutdown) and the ground floor (`session`,
//! `router`, `storage`, `auth`, `mqtt`, `config`, `metrics`); never a door.
//!
//! Ownership (see DESIGN.md):
//! - a topic's **owner** shard (`owner_of(topic)`) assigns offsets, keeps the retained
//!   message, and fans each publish out to the shards whose interest table entries match;
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
mod msg;
pub mod persist;
mod publish;
mod quota;
mod retention;
mod sessions;
mod shard;
mod shared;
mod start;
mod subscribe;
pub mod sys;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::mqtt::ByteStr;
use crate::router::{InterestTable, RetainedIndex, Route, ShardId, SubscriptionTrie};
use crate::session::Link;
use crate::session::{Message, Session, SubOptions};

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

/// This shard's sessions by client id: a hash map for lookups, and the ids in order for
/// the admin API's pages (a page starts where the last ended without a pass over every
/// session). Kept in step on connect, restore and removal only, never per message.
#[derive(Default)]
pub struct ByClient {
    keys: HashMap<ByteStr, SessionKey>,
    order: std::collections::BTreeSet<ByteStr>,
}

impl ByClient {
    /// The session of `client_id`.
    pub fn get<Q>(&self, client_id: &Q) -> Option<&SessionKey>
    where
        ByteStr: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.keys.get(client_id)
    }

    /// Indexes `client_id`'s session; returns the one it replaces.
    pub fn insert(&mut self, client_id: ByteStr, key: SessionKey) -> Option<SessionKey> {
        let replaced = self.keys.insert(client_id.clone(), key);
        if replaced.is_none() {
            self.order.insert(client_id);
        }
        replaced
    }

    /// Forgets `client_id`.
    pub fn remove(&mut self, client_id: &str) -> Option<SessionKey> {
        let removed = self.keys.remove(client_id);
        if removed.is_some() {
            self.order.remove(client_id);
        }
        removed
    }

    /// Client ids after `after` (all with `None`), in order.
    pub fn after<'a>(&'a self, after: Option<&'a str>) -> impl Iterator<Item = &'a ByteStr> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.order.range::<str, _>((from, Unbounded))
    }
}

/// A session and where it is connected.
pub struct SessionSlot {
    /// The session state.
    pub session: Session,
    /// The live connection, if any.
    pub conn: Option<Rc<Link>>,
    /// The last connection that held it (for registry bookkeeping).
    pub last_conn: ConnRef,
    /// Bumped on every (re)attach; timers compare it to know they are stale.
    pub epoch: u64,
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

struct Wait {
    remaining: usize,
    replies: Vec<Reply>,
    waker: Option<Waker>,
}

/// All broker state of one shard. Borrowed only briefly, never across `.await`.
pub struct State {
    sessions: RefCell<HashMap<SessionKey, SessionSlot>>,
    by_client: RefCell<ByClient>,
    next_session: Cell<SessionKey>,
    trie: RefCell<SubscriptionTrie<SessionKey, SubOptions>>,
    shared: RefCell<SubscriptionTrie<MemberKey, SubOptions>>,
    interest: RefCell<InterestTable>,
    /// Local subscriber count per `(group, filter)`: interest changes at 0 <-> 1.
    interest_counts: RefCell<HashMap<InterestKey, usize>>,
    retained: RefCell<RetainedIndex<Arc<Message>>>,
    /// Retained topics whose message is a `retained_copy`: the version (original publish
    /// offset) it carries. Cleared by every new retained store of the topic.
    retained_versions: RefCell<HashMap<String, u64>>,
    registry: RefCell<HashMap<ByteStr, ConnRef>>,
    /// Home shard: client ids whose session this shard's log holds (open, not ended).
    persisted: RefCell<HashSet<String>>,
    /// Owner: per reporting shard, how many floor reports it sent and the lowest of its
    /// last two with the last one (see `retention`).
    floor_reports: RefCell<Vec<FloorReports>>,
    /// Numbers catch-up reads.
    next_catch_up: Cell<u64>,
    /// Per owner shard, the highest watermark it sent here: every record of its log
    /// below it had been sent to this shard before. A new subscription holds it until
    /// the owners answered where their logs end (see `Broker::subscribe`).
    heard_floors: RefCell<Vec<u64>>,
    /// Peers that finished their recovery (the start barrier).
    recovered_peers: Cell<usize>,
    recovered_waker: Cell<Option<Waker>>,
    /// Peers that closed their connections while stopping (the first stop barrier).
    drained_peers: Cell<usize>,
    drained_waker: Cell<Option<Waker>>,
    /// Peers that logged their final cursors while stopping (the stop barrier).
    flushed_peers: Cell<usize>,
    flushed_waker: Cell<Option<Waker>>,
    /// QoS 2 exchanges whose PUBREL waits for its `qos2_delivered` record, and whether a
    /// task logging them is scheduled.
    releasing: RefCell<Vec<persist::Releasing>>,
    releasing_scheduled: Cell<bool>,
    /// QoS 2 deliveries whose PUBLISH waits for its `qos2_sent` record (`persist::sent`).
    sending: persist::SendLog,
    /// Claims sent from this shard and not yet answered, by (client id, connection
    /// token); a takeover arriving meanwhile is parked here until the claim resolves.
    claims: RefCell<HashMap<(ByteStr, u64), Option<Superseded>>>,
    /// Sessions a takeover left in place (indexed, offline) for a newer connection on
    /// this same shard, by client id, until that connection's claim resumes them.
    parked: RefCell<HashMap<ByteStr, SessionKey>>,
    waits: RefCell<HashMap<u64, Wait>>,
    next_request: Cell<u64>,
    /// Round-robin over a group's members on this shard.
    group_cursor: RefCell<HashMap<GroupKey, usize>>,
    /// Owner: round-robin over the shards holding a group's members. Apart from
    /// `group_cursor`: a shard that is both would otherwise step it twice per message
    /// and, with two members, always pick the same one.
    group_shard_cursor: RefCell<HashMap<GroupKey, usize>>,
    route: RefCell<Route>,
    /// Reused per delivery so matching allocates nothing once warm.
    match_scratch: Cell<Vec<(SessionKey, SubOptions)>>,
    /// A spare buffer for a publish's group routes while it is fanned out.
    groups_scratch: Cell<Vec<crate::router::GroupRoute>>,
    /// The same for a shared delivery's members.
    shared_scratch: Cell<Vec<(SessionKey, SubOptions)>>,
    /// Per group: what its members here had no room for (see `shared`).
    shared_backlogs: RefCell<HashMap<GroupKey, shared::GroupBacklog>>,
    /// Owner: the shared deliveries of this shard's log not yet confirmed, and what the
    /// shards reported holding of it, per group (see `shared`, "Crash safety").
    shared_sent: RefCell<shared::SentShared>,
    /// Per owner shard: the shared deliveries received from it, and what the last
    /// report to it said (see `shared`).
    shared_received: RefCell<shared::ReceivedShared>,
    /// Per owner shard: the group floors it posted here (`ShardMsg::SharedFloor`), by
    /// member subscription key; and the keys whose floor changed since the last flush.
    group_floors: RefCell<HashMap<ShardId, HashMap<String, u64>>>,
    floors_changed: RefCell<Vec<String>>,
    loopback: RefCell<VecDeque<ShardMsg>>,
    loopback_waker: Cell<Option<Waker>>,
    /// Home: session records waiting for WAL room, in order (see `persist`).
    session_log: persist::SessionLogQueue,
    /// Home, with retention on: what recovery would rebuild from its session records
    /// (see `persist::SessionShadow`).
    session_shadow: RefCell<Option<persist::SessionShadow>>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// Empty state for one shard.
    pub fn new() -> Self {
        State {
            sessions: RefCell::new(HashMap::new()),
            by_client: RefCell::new(ByClient::default()),
            next_session: Cell::new(1),
            trie: RefCell::new(SubscriptionTrie::new()),
            shared: RefCell::new(SubscriptionTrie::new()),
            interest: RefCell::new(InterestTable::new()),
            interest_counts: RefCell::new(HashMap::new()),
            retained: RefCell::new(RetainedIndex::new()),
            retained_versions: RefCell::new(HashMap::new()),
            registry: RefCell::new(HashMap::new()),
            persisted: RefCell::new(HashSet::new()),
            floor_reports: RefCell::new(Vec::new()),
            next_catch_up: Cell::new(0),
            heard_floors: RefCell::new(Vec::new()),
            recovered_peers: Cell::new(0),
            recovered_waker: Cell::new(None),
            drained_peers: Cell::new(0),
            drained_waker: Cell::new(None),
            flushed_peers: Cell::new(0),
            flushed_waker: Cell::new(None),
            releasing: RefCell::new(Vec::new()),
            releasing_scheduled: Cell::new(false),
            sending: persist::SendLog::default(),
            claims: RefCell::new(HashMap::new()),
            parked: RefCell::new(HashMap::new()),
            waits: RefCell::new(HashMap::new()),
            next_request: Cell::new(1),
            group_cursor: RefCell::new(HashMap::new()),
            group_shard_cursor: RefCell::new(HashMap::new()),
            route: RefCell::new(Route::default()),
            match_scratch: Cell::new(Vec::new()),
            shared_scratch: Cell::new(Vec::new()),
            groups_scratch: Cell::new(Vec::new()),
            shared_backlogs: RefCell::new(HashMap::new()),
            shared_sent: RefCell::new(shared::SentShared::default()),
            shared_received: RefCell::new(shared::ReceivedShared::default()),
            group_floors: RefCell::new(HashMap::new()),
            floors_changed: RefCell::new(Vec::new()),
            loopback: RefCell::new(VecDeque::new()),
            loopback_waker: Cell::new(None),
            session_log: persist::SessionLogQueue::default(),
            session_shadow: RefCell::new(None),
        }
    }

    pub(crate) fn new_session_key(&self) -> SessionKey {
        let key = self.next_session.get();
        self.next_session.set(key + 1);
        key
    }

    /// Opens a request expecting `replies` answers.
    pub(crate) fn open_request(&self, replies: usize) -> u64 {
        let id = self.next_request.get();
        self.next_request.set(id + 1);
        self.waits.borrow_mut().insert(
            id,
            Wait {
                remaining: replies,
                replies: Vec::with_capacity(replies),
                waker: None,
            },
        );
        id
    }

    /// Records one answer to request `id`.
    pub(crate) fn reply(&self, id: u64, reply: Reply) {
        let mut waits = self.waits.borrow_mut();
        let Some(wait) = waits.get_mut(&id) else {
            return;
        };
        wait.replies.push(reply);
        wait.remaining = wait.remaining.saturating_sub(1);
        if wait.remaining == 0 {
            if let Some(w) = wait.waker.take() {
                w.wake();
            }
        }
    }

    /// Waits for every answer to request `id`.
    pub(crate) async fn replies(&self, id: u64) -> Vec<Reply> {
        poll_fn(|cx| {
            let mut waits = self.waits.borrow_mut();
            let wait = waits.get_mut(&id).expect("request was opened");
            if wait.remaining == 0 {
                let wait = waits.remove(&id).expect("present");
                return Poll::Ready(wait.replies);
            }
            wait.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Broker {
    /// Sends `msg` to shard `to`: over the mesh, or through the loopback for this shard.
    pub(crate) fn post(&self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.state.loopback.borrow_mut().push_back(msg);
            if let Some(w) = self.state.loopback_waker.take() {
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
                let next = poll_fn(|cx| match shard.state.loopback.borrow_mut().pop_front() {
                    Some(msg) => Poll::Ready(msg),
                    None => {
                        shard.state.loopback_waker.set(Some(cx.waker().clone()));
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
        all_arrived(
            &self.state.recovered_peers,
            &self.state.recovered_waker,
            peers,
        )
        .await
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
            all_arrived(
                &self.state.drained_peers,
                &self.state.drained_waker,
                round * peers,
            )
            .await
        }
    }

    /// Waits until every other shard sent `Flushed` (see `flush_cursors_for_stop`).
    pub(crate) async fn stop_barrier(&self) {
        let peers = self.mesh.shards() - 1;
        all_arrived(&self.state.flushed_peers, &self.state.flushed_waker, peers).await
    }

    /// A PUBREC of a logged session's QoS 2 message: its PUBREL goes out once the
    /// release is durable at the session's home. Releases arriving meanwhile form one
    /// batch (one record per client, one wait).
    pub(crate) fn hold_release(self: &Rc<Self>, releasing: persist::Releasing) {
        self.state.releasing.borrow_mut().push(releasing);
        if self.state.releasing_scheduled.replace(true) {
            return;
        }
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            shard.state.releasing_scheduled.set(false);
            let batch = std::mem::take(&mut *shard.state.releasing.borrow_mut());
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
                self.state
                    .interest
                    .borrow_mut()
                    .add(&filter, group.as_deref(), from);
                if let Some(id) = ack_id {
                    self.post(from, ShardMsg::Ack { id });
                }
            }
            ShardMsg::InterestRemove { filter, group } => {
                self.state
                    .interest
                    .borrow_mut()
                    .remove(&filter, group.as_deref(), from);
            }
            ShardMsg::Ack { id } => self.state.reply(id, Reply::Ack),
            ShardMsg::LogEndQuery { id } => {
                let end = self.log_end();
                self.post(from, ShardMsg::LogEnd { id, end });
            }
            ShardMsg::LogEnd { id, end } => {
                self.state.reply(id, Reply::LogEnd { shard: from, end })
            }
            ShardMsg::RetainedQuery { filter, id } => {
                let messages = self.retained_matching(&filter);
                self.post(from, ShardMsg::RetainedReply { id, messages });
            }
            ShardMsg::RetainedReply { id, messages } => {
                self.state.reply(id, Reply::Retained(messages));
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
                self.state.reply(id, Reply::Handover(session));
            }
            ShardMsg::SessionLog { kind, body, ack_id } => {
                self.on_session_log(from, kind, body, ack_id).await
            }
            ShardMsg::LogDone { id, ok } => self.state.reply(id, Reply::Logged(ok)),
            ShardMsg::Replay { id, wants } => self.on_replay(from, id, wants).await,
            ShardMsg::ReplayReply {
                id,
                end,
                found,
                resume,
            } => self.state.reply(
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
            ShardMsg::Drained => arrived(&self.state.drained_peers, &self.state.drained_waker),
            ShardMsg::Flushed => arrived(&self.state.flushed_peers, &self.state.flushed_waker),
            ShardMsg::Recovered => {
                arrived(&self.state.recovered_peers, &self.state.recovered_waker)
            }
            ShardMsg::AdminQuery { id, query } => self.on_admin_query(from, id, query).await,
            ShardMsg::AdminReply { id, answer } => self.state.reply(id, Reply::Admin(answer)),
            ShardMsg::SessionGone { client_id, conn } => {
                let mut registry = self.state.registry.borrow_mut();
                if registry.get(&client_id) == Some(&conn) {
                    registry.remove(&client_id);
                }
            }
        }
    }
}

/// Rounds of the first stop barrier (see `drain_barrier`): a shared delivery given back
/// goes to its owner and from there to a shard of the group, at most `SHARED_HOPS_MAX`
/// times.
const DRAIN_ROUNDS: usize = 2 * shared::SHARED_HOPS_MAX as usize;

/// A peer reached a barrier (`count` of them so far, `waker` the waiting task).
fn arrived(count: &Cell<usize>, waker: &Cell<Option<Waker>>) {
    count.set(count.get() + 1);
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// Resolves once `peers` peers reached the barrier (see `arrived`).
async fn all_arrived(count: &Cell<usize>, waker: &Cell<Option<Waker>>, peers: usize) {
    poll_fn(|cx| {
        if count.get() >= peers {
            return Poll::Ready(());
        }
        waker.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}
