//! [`Broker`]: one shard's broker, the one value that owns this shard's broker state and
//! log, and its health check over the mesh.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::ConnectedReceiver;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::{Probes, ShardProbe};
use crate::router::ShardId;
use crate::runtime::{batch_cost_bytes, Batch, Mesh, Shutdown, TokenTable, Tokened};
use crate::session::Link;

use super::msg::ShardMsg;
use super::quota::RetainedQuota;
use super::state::{
    Barriers, Loopback, Qos2Log, Requests, Retained, RetentionState, SessionLog, Sessions,
    SharedGroups, Subscriptions,
};
use super::ShardLog;

/// How long `/health` waits for every shard to answer a ping over the mesh.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// One shard's broker: sessions, subscriptions, retained messages, shared groups and the
/// log of this shard, and its end of the mesh. Lives in an `Rc` on its executor; never
/// crosses threads. The doors reach it through its methods; its state is its own.
pub struct Broker {
    /// This shard's id (its index into `cpus`, `probes`, the mesh).
    pub id: ShardId,
    /// The process configuration.
    pub config: Arc<Config>,
    /// This shard's end of the mesh.
    pub mesh: Rc<Mesh<ShardMsg>>,
    /// This shard's counters.
    pub probe: Arc<ShardProbe>,
    /// Every shard's counters (read only, for the metrics endpoint and `$SYS`).
    pub probes: Probes,
    /// Set once when the shard starts shutting down.
    pub shutdown: Shutdown,
    /// The session registry.
    pub(super) sessions: Sessions,
    /// What the sessions here subscribe to, and the interest table.
    pub(super) subs: Subscriptions,
    /// The retained messages of the topics this shard owns.
    pub(super) retained: Retained,
    /// Shared subscription groups.
    pub(super) groups: SharedGroups,
    /// Requests to other shards awaiting their answers.
    pub(super) requests: Requests,
    /// The start and stop barriers.
    pub(super) barriers: Barriers,
    /// Messages this shard posts to itself.
    pub(super) loopback: Loopback,
    /// Floor reports and watermarks (see `retention`).
    pub(super) retention: RetentionState,
    /// QoS 2 deliveries waiting for their records.
    pub(super) qos2: Qos2Log,
    /// Home: the session records of this shard's log.
    pub(super) session_log: SessionLog,
    /// Who may connect and the ACL, as of this shard's last reload.
    auth: RefCell<Arc<Authenticator>>,
    /// The retained-topic limits this shard enforces as an owner.
    pub(super) quota: RetainedQuota,
    /// This shard's log (WAL, what waits on durability, QoS 2 receive state), set once
    /// at start after recovery.
    pub(super) log: OnceCell<ShardLog>,
    /// The Kafka partitions this shard owns.
    pub(super) kafka: super::kafka::KafkaLog,
    /// The links of the connections on this shard, by token: where the acks of their
    /// publishes go.
    links: RefCell<TokenTable<Rc<Link>>>,
    health_seq: Cell<u64>,
    /// Last ping round each shard answered.
    pongs: RefCell<Vec<u64>>,
}

impl AsRef<Shutdown> for Broker {
    fn as_ref(&self) -> &Shutdown {
        &self.shutdown
    }
}

impl Broker {
    /// The credentials and ACL in force.
    pub fn auth(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth.borrow())
    }

    /// Puts `auth` in force; returns the credentials it replaces.
    pub fn replace_auth(&self, auth: Arc<Authenticator>) -> Arc<Authenticator> {
        std::mem::replace(&mut *self.auth.borrow_mut(), auth)
    }

    /// A broker with no sessions yet, on shard `id`'s end of the mesh.
    pub fn new(
        id: ShardId,
        config: Arc<Config>,
        mesh: Rc<Mesh<ShardMsg>>,
        probes: Probes,
        auth: Arc<Authenticator>,
    ) -> Rc<Self> {
        let shards = mesh.shards();
        let kafka = super::kafka::KafkaLog::new(&config, id, shards);
        Rc::new(Broker {
            id,
            config,
            probe: Arc::clone(&probes[id.index()]),
            probes,
            mesh,
            shutdown: Shutdown::default(),
            sessions: Sessions::new(),
            subs: Subscriptions::default(),
            retained: Retained::default(),
            groups: SharedGroups::default(),
            requests: Requests::new(),
            barriers: Barriers::default(),
            loopback: Loopback::default(),
            retention: RetentionState::default(),
            qos2: Qos2Log::default(),
            session_log: SessionLog::default(),
            auth: RefCell::new(auth),
            quota: RetainedQuota::default(),
            log: OnceCell::new(),
            kafka,
            links: RefCell::new(TokenTable::default()),
            health_seq: Cell::new(0),
            pongs: RefCell::new(vec![0; shards]),
        })
    }

    /// A connection opened on this shard (its token minted by its door, whose slot
    /// index this table shares): the acks of its publishes go to `link`.
    pub fn link_opened(&self, link: &Rc<Link>) {
        self.links.borrow_mut().insert(Rc::clone(link));
    }

    /// The connection of `token` closed.
    pub fn link_closed(&self, token: u64) {
        self.links.borrow_mut().remove(token);
    }

    /// The link of the live connection `token`.
    pub(super) fn link(&self, token: u64) -> Option<Rc<Link>> {
        self.links.borrow().get(token).cloned()
    }

    /// Whether this shard's WAL is open (always, once serving).
    pub fn is_durable(&self) -> bool {
        self.log.get().is_some()
    }

    /// Runs one receiving task per peer, dispatching each batch message by message.
    ///
    /// The runtime's mesh knows its peers by index; this is where the broker names the
    /// sender with its [`ShardId`] (and `Broker::post` where it gives an index back).
    pub fn spawn_receivers(
        self: &Rc<Self>,
        inbound: Vec<(usize, ConnectedReceiver<Batch<ShardMsg>>)>,
    ) {
        for (peer, rx) in inbound {
            let from = ShardId::from_index(peer);
            let shard = Rc::clone(self);
            glommio::spawn_local(async move {
                while let Some(batch) = rx.recv().await {
                    shard.probe.mesh_batches_received_total.inc();
                    shard
                        .probe
                        .mesh_messages_received_total
                        .add(batch.len() as u64);
                    let bytes = batch_cost_bytes(&batch);
                    for msg in batch {
                        shard.handle(from, msg).await;
                    }
                    shard.mesh.handled(peer, bytes);
                    // While batches keep arriving every await above is ready at once and
                    // this task never hands the CPU back: the shard would stop reaping
                    // socket readiness (and serving its other connections) for as long as
                    // a flood lasted, which was seen at 7 s.
                    glommio::yield_if_needed().await;
                }
            })
            .detach();
        }
    }

    /// Handles one message from shard `from` (possibly this shard, via the loopback).
    pub(crate) async fn handle(self: &Rc<Self>, from: ShardId, msg: ShardMsg) {
        match msg {
            ShardMsg::Ping { seq } => self.mesh.push(from.index(), ShardMsg::Pong { seq }),
            ShardMsg::Pong { seq } => {
                let mut pongs = self.pongs.borrow_mut();
                pongs[from.index()] = pongs[from.index()].max(seq);
            }
            other => self.handle_broker(from, other).await,
        }
    }

    /// Pings every other shard over the mesh and waits for all answers: a shard whose
    /// executor is stuck or gone, or a jammed mesh, fails the check.
    pub async fn check_health(&self) -> Result<(), String> {
        let seq = self.health_seq.get() + 1;
        self.health_seq.set(seq);
        for peer in self.all_shards().filter(|&p| p != self.id) {
            self.mesh.push(peer.index(), ShardMsg::Ping { seq });
        }
        let started = Instant::now();
        loop {
            let silent: Vec<ShardId> = self
                .all_shards()
                .filter(|&p| p != self.id && self.pongs.borrow()[p.index()] < seq)
                .collect();
            if silent.is_empty() {
                return Ok(());
            }
            if self.shutdown.is_stopping() {
                return Err("shutting down".into());
            }
            if started.elapsed() >= HEALTH_TIMEOUT {
                return Err(format!(
                    "shards {silent:?} did not answer within {} ms",
                    HEALTH_TIMEOUT.as_millis()
                ));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Tokened for Link {
    fn token(&self) -> u64 {
        self.token
    }
}
