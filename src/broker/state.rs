//! The parts of a shard's broker state, each owned by the [`Broker`](super::Broker) and
//! reached only from inside `broker`. Every part is borrowed briefly, never across an
//! `.await`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::mqtt::ClientId;
use crate::router::{GroupRoute, InterestTable, RetainedIndex, Route, ShardId, SubscriptionTrie};
use crate::runtime::{TokenMint, TokenTable, Tokened};
use crate::session::{Message, Session, SubOptions};

use super::msg::ShardMsg;
use super::{
    persist, shared, ByClient, FloorReports, GroupKey, InterestKey, MemberKey, Reply, SessionKey,
    SessionSlot, Superseded,
};

/// The session registry: this shard's sessions, the claims of client ids in flight, and
/// (as a home shard) who holds each client id.
pub(super) struct Sessions {
    /// Every session on this shard, connected or offline.
    pub(super) slots: RefCell<SessionTable>,
    /// The same, by client id; and, as a home shard, the connection holding each.
    pub(super) by_client: RefCell<ByClient>,
    /// Home shard: client ids whose session this shard's log holds (open, not ended).
    pub(super) persisted: RefCell<HashSet<String>>,
    /// Claims sent from this shard and not yet answered, by (client id, connection
    /// token); a takeover arriving meanwhile is parked here until the claim resolves.
    pub(super) claims: RefCell<HashMap<(ClientId, u64), Option<Superseded>>>,
    /// Sessions a takeover left in place (indexed, offline) for a newer connection on
    /// this same shard, by client id, until that connection's claim resumes them.
    pub(super) parked: RefCell<HashMap<ClientId, SessionKey>>,
    /// The sessions the cursor flush and the watermarks look at (see
    /// [`Session::flush_looks_at`]), so that their passes cost what those sessions cost,
    /// not what every idle device does. Every session the flush has anything to do for
    /// is here: a change that makes it so puts it here ([`Sessions::watch`]); a session
    /// it no longer has anything to do for, or that is gone, is dropped by the flush's
    /// look (`survey_sessions`).
    pub(super) watched: RefCell<HashSet<SessionKey>>,
}

impl Sessions {
    pub(super) fn new() -> Self {
        Sessions {
            slots: RefCell::new(SessionTable::default()),
            by_client: RefCell::new(ByClient::default()),
            persisted: RefCell::new(HashSet::new()),
            claims: RefCell::new(HashMap::new()),
            parked: RefCell::new(HashMap::new()),
            watched: RefCell::new(HashSet::new()),
        }
    }

    /// Puts session `key` on the flush's list if the flush has anything to do for it
    /// now. Called where that can become so: a session indexed here, made logged, given
    /// a shared subscription or a QoS 2 release.
    pub(super) fn watch(&self, key: SessionKey, s: &Session) {
        if s.flush_looks_at() {
            self.watched.borrow_mut().insert(key);
        }
    }

    /// [`Sessions::watch`] for session `key` of this shard's table.
    pub(super) fn watch_key(&self, key: SessionKey) {
        if let Some(slot) = self.slots.borrow().get(&key) {
            self.watch(key, &slot.session);
        }
    }
}

/// A shard's sessions by key. A key is a token of `runtime::tokens`: the index of a
/// slot reused once its session is gone, and a serial never reused, so a key names one
/// session for the life of the process (a stale key finds nothing) while the table is
/// a vector of 16 bytes per slot, not a hash table's slot, control byte and slack (38
/// bytes a session at 15,000 on 2 shards), and a delivery finds its session by index,
/// with no hashing. Keys live in memory only; nothing orders by them.
#[derive(Default)]
pub(super) struct SessionTable {
    mint: TokenMint,
    held: TokenTable<Held>,
}

/// A session in its slot, beside its key (the slot itself has no room for it: it fills
/// its allocator size class).
struct Held {
    key: SessionKey,
    slot: Box<SessionSlot>,
}

impl Tokened for Held {
    fn token(&self) -> u64 {
        self.key
    }
}

impl SessionTable {
    /// Keeps `slot` under a new key, returned.
    pub(super) fn insert_new(&mut self, slot: Box<SessionSlot>) -> SessionKey {
        // The configuration keeps `sessions_max` within a slot index
        // (`config::SESSIONS_LIMIT`), and the shards' sessions within `sessions_max`.
        let key = self
            .mint
            .mint()
            .expect("a shard holds fewer sessions than its keys can index");
        self.held.insert(Held { key, slot });
        key
    }

    pub(super) fn get(&self, key: &SessionKey) -> Option<&SessionSlot> {
        self.held.get(*key).map(|h| &*h.slot)
    }

    pub(super) fn get_mut(&mut self, key: &SessionKey) -> Option<&mut SessionSlot> {
        self.held.get_mut(*key).map(|h| &mut *h.slot)
    }

    pub(super) fn contains_key(&self, key: &SessionKey) -> bool {
        self.held.get(*key).is_some()
    }

    /// Takes session `key` out; its slot may hold another session after.
    pub(super) fn remove(&mut self, key: &SessionKey) -> Option<Box<SessionSlot>> {
        let held = self.held.remove(*key)?;
        self.mint.release(held.key);
        Some(held.slot)
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Every session with its key (the debug builds' check of the flush's list).
    #[cfg(debug_assertions)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (SessionKey, &SessionSlot)> + '_ {
        self.held.values().map(|h| (h.key, &*h.slot))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &SessionSlot> + '_ {
        self.held.values().map(|h| &*h.slot)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut SessionSlot> + '_ {
        self.held.values_mut().map(|h| &mut *h.slot)
    }
}

/// What the sessions here subscribe to: the trie of plain filters, the trie of shared
/// members, the interest table (the peers' plain filters and every shard's groups: a
/// plain filter's subscribers here are already its trie node's), the member counts of
/// this shard's groups, and the scratch space matching reuses.
pub(super) struct Subscriptions {
    /// Plain filters to the sessions here that subscribe to them.
    pub(super) trie: RefCell<SubscriptionTrie<SessionKey, SubOptions>>,
    pub(super) shared: RefCell<SubscriptionTrie<MemberKey, SubOptions>>,
    pub(super) interest: RefCell<InterestTable>,
    /// Local member count per `(group, filter)`: interest changes at 0 <-> 1 (a plain
    /// filter's count is its trie node's subscriber count).
    pub(super) interest_counts: RefCell<HashMap<InterestKey, usize>>,
    pub(super) route: RefCell<Route>,
    /// Reused per delivery so matching allocates nothing once warm.
    pub(super) match_scratch: Cell<Vec<(SessionKey, SubOptions)>>,
    /// A spare buffer for a publish's group routes while it is fanned out.
    pub(super) groups_scratch: Cell<Vec<GroupRoute>>,
    /// The same for a shared delivery's members.
    pub(super) shared_scratch: Cell<Vec<(SessionKey, SubOptions)>>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            trie: RefCell::new(SubscriptionTrie::new()),
            shared: RefCell::default(),
            interest: RefCell::default(),
            interest_counts: RefCell::default(),
            route: RefCell::default(),
            match_scratch: Cell::default(),
            groups_scratch: Cell::default(),
            shared_scratch: Cell::default(),
        }
    }
}

/// The retained messages of the topics this shard owns.
#[derive(Default)]
pub(super) struct Retained {
    pub(super) index: RefCell<RetainedIndex<Arc<Message>>>,
    /// Retained topics whose message is a `retained_copy`: the version (original publish
    /// offset) it carries. Cleared by every new retained store of the topic.
    pub(super) versions: RefCell<HashMap<String, u64>>,
}

/// Shared subscription groups: round-robin cursors, backlogs, and the bookkeeping that
/// keeps a shared delivery from being lost across shards (see `shared`).
#[derive(Default)]
pub(super) struct SharedGroups {
    /// Round-robin over a group's members on this shard.
    pub(super) cursor: RefCell<HashMap<GroupKey, usize>>,
    /// Owner: round-robin over the shards holding a group's members. Apart from
    /// `cursor`: a shard that is both would otherwise step it twice per message and,
    /// with two members, always pick the same one.
    pub(super) shard_cursor: RefCell<HashMap<GroupKey, usize>>,
    /// Per group: what its members here had no room for.
    pub(super) backlogs: RefCell<HashMap<GroupKey, shared::GroupBacklog>>,
    /// Owner: the shared deliveries of this shard's log not yet confirmed, and what the
    /// shards reported holding of it, per group ("Crash safety").
    pub(super) sent: RefCell<shared::SentShared>,
    /// Per owner shard: the shared deliveries received from it, and what the last
    /// report to it said.
    pub(super) received: RefCell<shared::ReceivedShared>,
    /// Per owner shard: the group floors it posted here (`ShardMsg::SharedFloor`), by
    /// member subscription key; and the keys whose floor changed since the last flush.
    pub(super) floors: RefCell<HashMap<ShardId, HashMap<String, u64>>>,
    pub(super) floors_changed: RefCell<Vec<String>>,
}

/// Requests this shard sent to others (or to itself) and the answers they gather.
pub(super) struct Requests {
    waits: RefCell<HashMap<u64, Wait>>,
    next_id: Cell<u64>,
    /// Numbers catch-up reads.
    pub(super) next_catch_up: Cell<u64>,
}

struct Wait {
    remaining: usize,
    replies: Vec<Reply>,
    waker: Option<Waker>,
}

impl Requests {
    pub(super) fn new() -> Self {
        Requests {
            waits: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            next_catch_up: Cell::new(0),
        }
    }

    /// Opens a request expecting `replies` answers.
    pub(super) fn open(&self, replies: usize) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
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
    pub(super) fn reply(&self, id: u64, reply: Reply) {
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
    pub(super) async fn replies(&self, id: u64) -> Vec<Reply> {
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

/// How many peers reached each barrier of a shard's life: recovered (start), drained
/// (first stop barrier), flushed (stop barrier).
#[derive(Default)]
pub(super) struct Barriers {
    pub(super) recovered: Barrier,
    pub(super) drained: Barrier,
    pub(super) flushed: Barrier,
}

/// Peers that reached one barrier, and the task waiting for them.
#[derive(Default)]
pub(super) struct Barrier {
    count: Cell<usize>,
    waker: Cell<Option<Waker>>,
}

impl Barrier {
    /// One more peer reached the barrier.
    pub(super) fn arrived(&self) {
        self.count.set(self.count.get() + 1);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves once `peers` peers reached it.
    pub(super) async fn reached(&self, peers: usize) {
        poll_fn(|cx| {
            if self.count.get() >= peers {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

/// Messages this shard posts to itself, handled in order by the loopback task.
#[derive(Default)]
pub(super) struct Loopback {
    pub(super) queue: RefCell<VecDeque<ShardMsg>>,
    pub(super) waker: Cell<Option<Waker>>,
}

/// Retention as an owner and as a subscriber's shard: the floor reports received, and
/// the watermarks heard from each owner.
#[derive(Default)]
pub(super) struct RetentionState {
    /// Owner: per reporting shard, how many floor reports it sent and the lowest of its
    /// last two with the last one (see `retention`).
    pub(super) floor_reports: RefCell<Vec<FloorReports>>,
    /// Per owner shard, the highest watermark it sent here: every record of its log
    /// below it had been sent to this shard before. A new subscription holds it until
    /// the owners answered where their logs end (see `Broker::subscribe`).
    pub(super) heard_floors: RefCell<Vec<u64>>,
}

/// QoS 2 deliveries waiting for their records: PUBRELs for `qos2_delivered`, PUBLISHes
/// for `qos2_sent` (see `persist::sent`).
#[derive(Default)]
pub(super) struct Qos2Log {
    /// QoS 2 exchanges whose PUBREL waits for its `qos2_delivered` record, and whether a
    /// task logging them is scheduled.
    pub(super) releasing: RefCell<Vec<persist::Releasing>>,
    pub(super) releasing_scheduled: Cell<bool>,
    /// QoS 2 deliveries whose PUBLISH waits for its `qos2_sent` record.
    pub(super) sending: persist::SendLog,
}

/// Home: the session records of this shard's log.
#[derive(Default)]
pub(super) struct SessionLog {
    /// Session records waiting for WAL room, in order (see `persist`).
    pub(super) queue: persist::SessionLogQueue,
    /// With retention on: what recovery would rebuild from its session records (see
    /// `persist::SessionShadow`).
    pub(super) shadow: RefCell<Option<persist::SessionShadow>>,
}
