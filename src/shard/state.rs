//! One shard's state and its life: join the mesh, bind the listener, serve, drain, stop.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::ConnectedReceiver;

use crate::auth::{Authenticator, HashQueue};
use crate::broker::{BrokerState, Durability};
use crate::config::Config;
use crate::metrics::{Probes, ShardProbe};
use crate::net::Connections;

use super::mesh::{Batch, Mesh};
use super::msg::{batch_cost_bytes, ShardMsg};
use super::quota::Quota;
use super::reload::Live;

/// How long `/health` waits for every shard to answer a ping over the mesh.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a shard owns. Lives in an `Rc` on its executor; never crosses threads.
pub struct Shard {
    /// This shard's id (index into `cpus`, `probes`, the mesh).
    pub id: usize,
    /// The process configuration.
    pub config: Arc<Config>,
    /// This shard's end of the mesh.
    pub mesh: Rc<Mesh>,
    /// This shard's counters.
    pub probe: Arc<ShardProbe>,
    /// Every shard's counters (read only, for the metrics endpoint).
    pub probes: Probes,
    /// Set once when the shard starts shutting down.
    pub shutdown: Shutdown,
    /// Live client connections on this shard.
    pub connections: Connections,
    /// Sessions, subscriptions, retained messages and routing state of this shard.
    pub broker: BrokerState,
    /// Who may connect and the ACL, as of this shard's last reload (see `reload`).
    pub auth: RefCell<Arc<Authenticator>>,
    /// The TLS acceptor for new connections on `mqtts_listen` (and the metrics
    /// listener with `metrics_tls`), as of the last reload.
    pub tls: RefCell<Option<futures_rustls::TlsAcceptor>>,
    /// The settings in force for the whole process; a reload replaces them.
    pub live: Arc<Live>,
    /// The password-hashing thread's queue (one per process).
    pub hashing: Arc<HashQueue>,
    /// The connection and retained-topic limits this shard enforces.
    pub quota: Quota,
    /// This shard's WAL, set once at start after recovery.
    pub durable: OnceCell<Durability>,
    health_seq: Cell<u64>,
    /// Last ping round each shard answered.
    pongs: RefCell<Vec<u64>>,
}

impl Shard {
    /// The credentials and ACL in force.
    pub fn auth(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth.borrow())
    }

    /// A shard with no connections yet.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        mesh: Rc<Mesh>,
        probes: Probes,
        (live, hashing): (Arc<Live>, Arc<HashQueue>),
        quota: Quota,
    ) -> Rc<Self> {
        let shards = mesh.shards();
        let snapshot = live.current();
        Rc::new(Shard {
            id,
            config,
            probe: Arc::clone(&probes[id]),
            probes,
            mesh,
            shutdown: Shutdown::default(),
            connections: Connections::default(),
            broker: BrokerState::new(),
            auth: RefCell::new(Arc::clone(&snapshot.auth)),
            tls: RefCell::new(snapshot.tls.clone().map(futures_rustls::TlsAcceptor::from)),
            live,
            hashing,
            quota,
            durable: OnceCell::new(),
            health_seq: Cell::new(0),
            pongs: RefCell::new(vec![0; shards]),
        })
    }

    /// Runs one receiving task per peer, dispatching each batch message by message.
    pub fn spawn_receivers(self: &Rc<Self>, inbound: Vec<(usize, ConnectedReceiver<Batch>)>) {
        for (from, rx) in inbound {
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
                    shard.mesh.handled(from, bytes);
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
    pub(crate) async fn handle(self: &Rc<Self>, from: usize, msg: ShardMsg) {
        match msg {
            ShardMsg::Ping { seq } => self.mesh.push(from, ShardMsg::Pong { seq }),
            ShardMsg::Pong { seq } => {
                let mut pongs = self.pongs.borrow_mut();
                pongs[from] = pongs[from].max(seq);
            }
            other => self.handle_broker(from, other).await,
        }
    }

    /// Pings every other shard over the mesh and waits for all answers: a shard whose
    /// executor is stuck or gone, or a jammed mesh, fails the check.
    pub async fn check_health(&self) -> Result<(), String> {
        let seq = self.health_seq.get() + 1;
        self.health_seq.set(seq);
        for peer in (0..self.mesh.shards()).filter(|&p| p != self.id) {
            self.mesh.push(peer, ShardMsg::Ping { seq });
        }
        let started = Instant::now();
        loop {
            let silent: Vec<usize> = (0..self.mesh.shards())
                .filter(|&p| p != self.id && self.pongs.borrow()[p] < seq)
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

/// A one-way latch: false until shutdown starts, then true forever.
#[derive(Default)]
pub struct Shutdown {
    stopping: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Shutdown {
    /// Starts shutdown (idempotent) and wakes every waiter.
    pub fn trigger(&self) {
        if !self.stopping.replace(true) {
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Whether shutdown has started.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Resolves once shutdown has started. For a handful of long-lived waiters (accept
    /// loops, the metrics server), not per connection.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.stopping.get() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
