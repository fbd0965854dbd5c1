//! The channel mesh between shards: typed messages, batched per peer per tick.
//!
//! Generic over the message type: the runtime carries whatever its users exchange
//! ([`MeshMessage`]) and knows nothing of what it means.
//!
//! Producers push messages into a per-peer outbox; one sender task per peer (glommio
//! forbids two tasks sending on one `ConnectedSender`) wakes after the producers of the
//! current tick have run and ships everything queued as one batch. A hop therefore costs
//! one channel send per batch, not per message. Each outbox is bounded
//! (`outbox_messages_max`); [`Mesh::send`] waits for room, which is how backpressure
//! reaches the producer instead of an unbounded buffer. Channels themselves are bounded
//! in batches and sized generously because small glommio mesh channels can hang under
//! contention.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};

use crate::metrics::ShardProbe;

/// What travels over the mesh: owned data that crosses threads, and says what it keeps
/// alive while it travels (what the per-link bound counts).
pub trait MeshMessage: Send + 'static {
    /// Bytes this message keeps alive in transit.
    fn cost_bytes(&self) -> usize;
}

/// One batch of messages from one shard to another.
pub type Batch<M> = Vec<M>;

/// The bytes a batch keeps alive while it travels.
pub fn batch_cost_bytes<M: MeshMessage>(batch: &[M]) -> usize {
    batch.iter().map(M::cost_bytes).sum()
}

/// Builder shared by all shards before they start; cloned into each shard's thread.
pub struct MeshSetup<M: Send> {
    builder: MeshBuilder<Batch<M>, Full>,
    /// `executor_ids[shard]`, written by each shard before joining, so that mesh peer
    /// indices (ordered by glommio executor id) can be mapped to shard ids.
    executor_ids: Arc<Vec<AtomicUsize>>,
    /// Bytes sent and not yet handled, per link `from * shards + to`.
    link_bytes: Arc<Vec<AtomicUsize>>,
    shards: usize,
}

impl<M: Send> Clone for MeshSetup<M> {
    fn clone(&self) -> Self {
        MeshSetup {
            builder: self.builder.clone(),
            executor_ids: Arc::clone(&self.executor_ids),
            link_bytes: Arc::clone(&self.link_bytes),
            shards: self.shards,
        }
    }
}

impl<M: MeshMessage> MeshSetup<M> {
    /// A mesh for `shards` peers with channels of `channel_batches_max` batches.
    pub fn new(shards: usize, channel_batches_max: usize) -> Self {
        MeshSetup {
            builder: MeshBuilder::full(shards, channel_batches_max),
            executor_ids: Arc::new((0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect()),
            link_bytes: Arc::new((0..shards * shards).map(|_| AtomicUsize::new(0)).collect()),
            shards,
        }
    }
}

/// A shard's end of the mesh.
pub struct Mesh<M> {
    me: usize,
    outboxes: Vec<Outbox<M>>,
    outbox_messages_max: usize,
    batch_messages_max: usize,
    probe: Arc<ShardProbe>,
    /// Bytes in transit on every link (shared by all shards; one read-modify-write per
    /// batch on each side).
    link_bytes: Arc<Vec<AtomicUsize>>,
}

struct Outbox<M> {
    /// A ring, so that taking a batch off the front never moves what stays queued.
    queue: RefCell<VecDeque<M>>,
    /// The sender task, parked while the outbox is empty.
    sender_waker: Cell<Option<Waker>>,
    /// Producers parked while the outbox is full.
    producer_wakers: RefCell<Vec<Waker>>,
    /// Places the sender task freed for parked producers. Mesh receivers `push` past the
    /// bound (they must never wait), and without these a relay refilled the outbox
    /// before a woken producer ran: a publisher was seen starved for seconds.
    admitted: Cell<usize>,
    closed: Cell<bool>,
}

impl<M> Default for Outbox<M> {
    fn default() -> Self {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            sender_waker: Cell::new(None),
            producer_wakers: RefCell::new(Vec::new()),
            admitted: Cell::new(0),
            closed: Cell::new(false),
        }
    }
}

/// What a joined shard gets: its mesh handle and one receiving stream per peer.
pub struct Joined<M: Send> {
    /// The sending side.
    pub mesh: Rc<Mesh<M>>,
    /// `(peer shard id, receiver)` for every other shard.
    pub inbound: Vec<(
        usize,
        glommio::channels::shared_channel::ConnectedReceiver<Batch<M>>,
    )>,
}

impl<M: MeshMessage> Mesh<M> {
    /// Joins the mesh as shard `me`; waits until every shard has joined. Spawns the
    /// per-peer sender tasks on the current executor.
    pub async fn join(
        setup: MeshSetup<M>,
        me: usize,
        batch_messages_max: usize,
        probe: Arc<ShardProbe>,
    ) -> std::io::Result<Joined<M>> {
        setup.executor_ids[me].store(glommio::executor().id(), Ordering::Release);
        let (senders, mut receivers): (Senders<Batch<M>>, Receivers<Batch<M>>) = setup
            .builder
            .join()
            .await
            .map_err(|e| std::io::Error::other(format!("joining the shard mesh: {e}")))?;
        // Every shard stored its executor id before registering, and join() returns only
        // after all registered, so the table is complete here.
        let mut by_executor: Vec<(usize, usize)> = (0..setup.shards)
            .map(|shard| (setup.executor_ids[shard].load(Ordering::Acquire), shard))
            .collect();
        by_executor.sort_unstable();
        let peer_to_shard: Vec<usize> = by_executor.iter().map(|&(_, shard)| shard).collect();
        assert_eq!(
            peer_to_shard[senders.peer_id()],
            me,
            "mesh peer id maps back to this shard"
        );

        let mesh = Rc::new(Mesh {
            me,
            outboxes: (0..setup.shards).map(|_| Outbox::default()).collect(),
            outbox_messages_max: batch_messages_max * 8,
            batch_messages_max,
            probe,
            link_bytes: Arc::clone(&setup.link_bytes),
        });
        let senders = Rc::new(senders);
        for (peer_index, &shard) in peer_to_shard.iter().enumerate() {
            if shard != me {
                glommio::spawn_local(Rc::clone(&mesh).sender_task(
                    Rc::clone(&senders),
                    peer_index,
                    shard,
                ))
                .detach();
            }
        }
        let inbound = receivers
            .streams()
            .into_iter()
            .map(|(peer_index, rx)| (peer_to_shard[peer_index], rx))
            .collect();
        Ok(Joined { mesh, inbound })
    }

    /// This shard's id.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Number of shards in the mesh (including this one).
    pub fn shards(&self) -> usize {
        self.outboxes.len()
    }

    /// Queues `msg` for `peer` without waiting. For control traffic whose volume is
    /// bounded by its cause (interest changes, pings); data goes through [`Mesh::send`].
    pub fn push(&self, peer: usize, msg: M) {
        assert_ne!(
            peer, self.me,
            "a shard does not message itself over the mesh"
        );
        let outbox = &self.outboxes[peer];
        if outbox.closed.get() {
            return;
        }
        outbox.queue.borrow_mut().push_back(msg);
        if let Some(waker) = outbox.sender_waker.take() {
            waker.wake();
        }
    }

    /// Queues `msg` for `peer`, waiting while that peer's outbox is full.
    pub async fn send(&self, peer: usize, msg: M) {
        self.room(peer).await;
        self.push(peer, msg);
    }

    /// Waits while `peer`'s outbox is full; the caller then pushes one message without
    /// awaiting anything in between (so what it counts is what the peer receives next).
    pub async fn room(&self, peer: usize) {
        let outbox = &self.outboxes[peer];
        let mut parked = false;
        poll_fn(|cx| {
            if outbox.closed.get() || outbox.queue.borrow().len() < self.outbox_messages_max {
                return Poll::Ready(());
            }
            if parked && outbox.admitted.get() > 0 {
                outbox.admitted.set(outbox.admitted.get() - 1);
                return Poll::Ready(());
            }
            parked = true;
            outbox.producer_wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }

    /// Stops all outboxes: queued messages are still sent, new ones are dropped.
    pub fn close(&self) {
        for outbox in &self.outboxes {
            outbox.closed.set(true);
            if let Some(waker) = outbox.sender_waker.take() {
                waker.wake();
            }
        }
    }

    fn link(&self, from: usize, to: usize) -> &AtomicUsize {
        &self.link_bytes[from * self.outboxes.len() + to]
    }

    /// A batch from `from` has been handled here: its bytes are no longer in transit.
    pub fn handled(&self, from: usize, batch_bytes: usize) {
        self.link(from, self.me)
            .fetch_sub(batch_bytes, Ordering::Relaxed);
    }

    /// Whether any link from or to this shard carries `bytes_max` or more: a peer (or
    /// this shard) is behind, and the connections here should stop adding to it.
    pub fn backlogged(&self, bytes_max: usize) -> bool {
        (0..self.outboxes.len()).filter(|&p| p != self.me).any(|p| {
            self.link(self.me, p).load(Ordering::Relaxed) >= bytes_max
                || self.link(p, self.me).load(Ordering::Relaxed) >= bytes_max
        })
    }

    async fn sender_task(
        self: Rc<Self>,
        senders: Rc<Senders<Batch<M>>>,
        peer_index: usize,
        peer: usize,
    ) {
        let outbox = &self.outboxes[peer];
        loop {
            let batch = poll_fn(|cx| {
                let mut queue = outbox.queue.borrow_mut();
                if queue.is_empty() {
                    if outbox.closed.get() {
                        return Poll::Ready(None);
                    }
                    outbox.sender_waker.set(Some(cx.waker().clone()));
                    return Poll::Pending;
                }
                // One allocation of the batch's exact size; the ring keeps its capacity.
                let take = queue.len().min(self.batch_messages_max);
                Poll::Ready(Some(queue.drain(..take).collect::<Batch<M>>()))
            })
            .await;
            let Some(batch) = batch else { break };
            // As many places as the batch freed, for the producers parked now only.
            let parked = std::mem::take(&mut *outbox.producer_wakers.borrow_mut());
            outbox
                .admitted
                .set(if parked.is_empty() { 0 } else { batch.len() });
            for waker in parked {
                waker.wake();
            }
            let count = batch.len() as u64;
            self.link(self.me, peer)
                .fetch_add(batch_cost_bytes(&batch), Ordering::Relaxed);
            if senders.send_to(peer_index, batch).await.is_err() {
                // The peer has shut down; nothing more can reach it.
                outbox.closed.set(true);
                outbox.queue.borrow_mut().clear();
                break;
            }
            self.probe.mesh_batches_sent_total.inc();
            self.probe.mesh_messages_sent_total.add(count);
        }
    }
}
