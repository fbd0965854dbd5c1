//! A session's outbound side: the queue of messages waiting for the client, the QoS 1/2
//! in-flight window keyed by packet id, and encoding into the connection's buffer.
//!
//! Bounds: the queue holds at most `queue_messages_max` messages and `queue_bytes_max`
//! bytes; when full, QoS 0 goes first (the newest QoS 0 is dropped, then queued QoS 0
//! is evicted to make room for QoS 1/2), and only then is a QoS 1/2 message refused.
//! Every drop is counted by the caller. The window is min(client Receive Maximum,
//! `inflight_count_max`).
//!
//! # QoS 2 toward a logged session: the packet id is durable before the PUBLISH
//! A QoS 2 PUBLISH must be resent under the packet id it went out with (MQTT 5 §4.4),
//! also after `kill -9`: the client may hold that id awaiting PUBREL, and the same
//! message under another id is a second message to it. So with `log_qos2` (a logged
//! session, see [`Outbound::pump_logged`]) a logged QoS 2 delivery takes its packet id and
//! its window slot, and waits in the *sending* state while its `(owner shard, offset,
//! packet id)` goes to the session's home log (`qos2_sent`): the caller takes the entries
//! with [`Outbound::drain_unlogged`] after each pump, logs one record per session per
//! batch, and once it is durable hands each back to [`Outbound::logged_sent`], which
//! writes the PUBLISH. A reconnect gives the entries still sending to the caller again
//! (their first record may be on its way from the shard the session left). QoS 0/1,
//! unlogged messages and sessions that are not logged go out at once, as before.
//!
//! # Recovered exchanges keep their packet ids
//! After a restart an exchange recovered from the log (sent and not PUBREC'd, or
//! PUBREC'd and awaiting PUBCOMP) comes back into the window when a read meets its
//! message: the replay at start reads every exchange sent and not PUBREC'd by its offset,
//! whatever the session's subscriptions now and however far past its queue's worth
//! (`ReplayWant::exact`), so the client gets it again under its id with DUP when it
//! reconnects, even if it unsubscribed meanwhile ([MQTT-3.10.4-3]) or a shared group
//! gave the message to another member ([MQTT-4.8.2-4]); one awaiting PUBCOMP comes back
//! with the replay or a catch-up read. Its packet id is the client's all along: the
//! client may hold it awaiting PUBREL. So such an id is *reserved*
//! ([`Outbound::reserve`]) from the start until its exchange is restored: no other
//! message takes it. Given to another message, the recovered exchange could not come
//! back under it and went out again under a new id, or, once that other exchange had
//! completed, under its own id after the client had freed it with the other one's
//! PUBREL: a second message either way; and a client that still held the id dropped the
//! other message as a resend (a loss). A reservation whose message no read brings back
//! (cut off from the log) lasts as long as the session in this process. They are bounded
//! by the in-flight window at the stop; with none, allocating an id costs one emptiness
//! check more.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::mqtt::{self, Ack, ByteStr, Packet, PacketId, Protocol, PublishView, QoS, ReasonCode};
use crate::router::ShardId;

use super::message::{Delivery, LogPos};
use crate::router::SmallMap;

/// Limits of one session's outbound state.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Most queued messages.
    pub queue_messages_max: usize,
    /// Most queued bytes (payload + topic + overhead).
    pub queue_bytes_max: usize,
    /// Most unacknowledged QoS 1/2 messages, whatever the client allows.
    pub inflight_count_max: usize,
}

/// Where encoded packets go: the connection's output buffer and the client's limits.
pub struct Outlet<'a> {
    /// The connection's pending output.
    pub buf: &'a mut BytesMut,
    /// The connection's protocol version.
    pub protocol: Protocol,
    /// The client's Maximum Packet Size (v5), else the protocol maximum.
    pub packet_bytes_max: usize,
    /// Stop moving messages into `buf` beyond this many pending bytes: the socket is
    /// slower than the publishers, and queued messages stay accounted in the queue.
    pub buf_bytes_max: usize,
    /// The connection's topic aliases towards the client, if it allows them (v5).
    pub aliases: Option<&'a mut TopicAliases>,
}

/// The topic aliases a connection uses towards its v5 client (which allows up to its
/// Topic Alias Maximum): the first PUBLISH of a topic carries the topic and a new alias,
/// later ones the alias and an empty topic. When every alias is taken the one used
/// longest ago is given to the new topic. Per connection: a reconnect starts afresh, as
/// the client's side does (MQTT 5 §3.3.2.3.4).
#[derive(Debug)]
pub struct TopicAliases {
    max: u16,
    /// Topic → (alias, when last used, by `clock`).
    by_topic: HashMap<ByteStr, (u16, u64)>,
    clock: u64,
    /// The lowest alias never given out.
    next: u16,
    /// Aliases given up again (their PUBLISH did not go out).
    free: Vec<u16>,
}

impl TopicAliases {
    /// Aliases 1..=`max`.
    pub fn new(max: u16) -> Self {
        TopicAliases {
            max,
            by_topic: HashMap::with_capacity(usize::from(max)),
            clock: 0,
            next: 1,
            free: Vec::new(),
        }
    }

    /// The alias for `topic`, and whether it is new (the PUBLISH must carry the topic).
    /// A new one is only remembered by [`TopicAliases::sent`], once its PUBLISH went out.
    fn alias_for(&mut self, topic: &ByteStr) -> (u16, bool) {
        self.clock += 1;
        if let Some((alias, used)) = self.by_topic.get_mut(topic) {
            *used = self.clock;
            return (*alias, false);
        }
        if let Some(alias) = self.free.pop() {
            return (alias, true);
        }
        if self.next <= self.max {
            self.next += 1;
            return (self.next - 1, true);
        }
        let oldest = self
            .by_topic
            .iter()
            .min_by_key(|(_, (_, used))| *used)
            .map(|(t, (alias, _))| (t.clone(), *alias));
        let (topic, alias) = oldest.expect("max > 0 aliases are in use");
        self.by_topic.remove(&topic);
        (alias, true)
    }

    /// The PUBLISH that gave `topic` the new `alias` went out.
    fn sent(&mut self, topic: &ByteStr, alias: u16) {
        self.by_topic.insert(topic.clone(), (alias, self.clock));
    }

    /// The PUBLISH that was to give out the new `alias` did not go out.
    fn unused(&mut self, alias: u16) {
        self.free.push(alias);
    }
}

/// What happened to a message offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued (or about to be sent).
    Queued,
    /// Dropped: QoS 0 that did not fit, or was offered to an offline session.
    DroppedQos0,
    /// Dropped: a QoS 1/2 message that did not fit even after evicting QoS 0.
    DroppedFull,
}

/// Result of a pump: what moved from the queue to the wire.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pumped {
    /// Messages encoded into the outlet, by QoS.
    pub sent_by_qos: [u64; 3],
    /// Messages dropped because their expiry passed while queued.
    pub expired: u64,
    /// Messages dropped because the connection may not read their topic.
    pub denied: u64,
    /// Messages discarded because they exceed the client's Maximum Packet Size, by QoS.
    pub oversized_by_qos: [u64; 3],
    /// Bytes encoded.
    pub bytes: u64,
    /// Stopped with QoS 1/2 queued because the in-flight window is full.
    pub held_by_window: bool,
    /// Stopped with messages queued because the outlet holds `buf_bytes_max`.
    pub held_by_buffer: bool,
}

/// Which queue bound a delivery ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// `queue_messages_max`.
    Messages,
    /// `queue_bytes_max`.
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AwaitState {
    /// QoS 2 with its packet id assigned; the PUBLISH waits until that id is durable in
    /// the session's home log (`qos2_sent`, see the module docs).
    Sending,
    Ack,
    Rec,
    /// PUBREC received; PUBREL waits until that fact is durable (see `on_pubrec`).
    Releasing,
    Comp,
}

#[derive(Debug)]
struct Inflight {
    delivery: Delivery,
    state: AwaitState,
    /// Send order, for resending in the original order.
    seq: u64,
    sent_at: Instant,
    retries: u32,
    /// Its PUBLISH was written at least once (a resend then carries DUP).
    on_wire: bool,
}

/// The deliveries of an [`Outbound`] waiting for its window, and what they cost.
#[derive(Debug, Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    /// Bytes they account for (see `Message::cost_bytes`).
    bytes: usize,
}

/// What an [`Outbound`] without a queue reads.
static NO_QUEUE: Queue = Queue {
    deliveries: VecDeque::new(),
    bytes: 0,
};

/// The outbound state of one session.
#[derive(Debug)]
pub struct Outbound {
    /// At most 65,535 (packet ids), so kept beside the client's Receive Maximum.
    inflight_count_max: u16,
    client_receive_max: u16,
    /// Deliveries waiting for the window, built by the first one: a session that never
    /// had one (an idle device's) carries 8 bytes here instead of an empty queue's 40,
    /// which keeps its slot in the allocator's 160-byte class.
    queue: Option<Box<Queue>>,
    inflight: SmallMap<u16, Inflight>,
    next_pid: u16,
    next_seq: u64,
    /// Per owner shard, one past the highest log offset that ever entered the queue or
    /// the window: a message above it is held by neither (`holds` then looks no further).
    entered_top: super::PerShard,
    /// The books of logged QoS 2 exchanges, built by the first one: most sessions never
    /// have one and do not carry the empty tables.
    qos2: Option<Box<Qos2Books>>,
}

/// What an [`Outbound`] keeps of logged QoS 2 exchanges.
#[derive(Debug, Default)]
struct Qos2Books {
    /// `(owner shard, offset, packet id)` of the QoS 2 deliveries that entered the sending
    /// state since the caller last drained them (reused: no allocation once warm).
    unlogged: Vec<(ShardId, u64, u16)>,
    /// Packet ids of exchanges recovered from the log and not yet back in the window, with
    /// their message's `(owner shard, offset)` and whether the client PUBREC'd it (see
    /// "Recovered exchanges keep their packet ids"): no other message takes them.
    reserved: HashMap<u16, Reserved>,
}

/// A packet id kept for a recovered exchange (see [`Outbound::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reserved {
    at: (ShardId, u64),
    /// PUBREC'd (awaiting PUBCOMP), else sent and not PUBREC'd.
    released: bool,
}

/// A client acknowledged something it was never sent (or in the wrong state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownPacketId(pub u16);

impl Outbound {
    /// Empty state with the given limits.
    pub fn new(limits: OutboundLimits) -> Self {
        Outbound {
            inflight_count_max: u16::try_from(limits.inflight_count_max).unwrap_or(u16::MAX),
            client_receive_max: u16::MAX,
            queue: None,
            inflight: SmallMap::new(),
            next_pid: 1,
            next_seq: 0,
            entered_top: super::PerShard::default(),
            qos2: None,
        }
    }

    /// The QoS 2 books, built now if they were not.
    fn qos2_mut(&mut self) -> &mut Qos2Books {
        self.qos2.get_or_insert_with(Box::default)
    }

    /// Packet ids kept for recovered exchanges.
    fn reserved(&self) -> Option<&HashMap<u16, Reserved>> {
        self.qos2.as_deref().map(|b| &b.reserved)
    }

    /// At start: the exchange of the logged message at `at` (`(owner shard, offset)`) was
    /// open under `pid` when the broker stopped, PUBREC'd (`released`, awaiting PUBCOMP)
    /// or sent and not PUBREC'd. No other message takes `pid` until the exchange is
    /// restored (`restore_released`, `restore_sent`); see "Recovered exchanges keep their
    /// packet ids".
    pub fn reserve(&mut self, pid: u16, at: (ShardId, u64), released: bool) {
        if pid != 0 {
            self.qos2_mut()
                .reserved
                .insert(pid, Reserved { at, released });
        }
    }

    /// Whether `pid` may take the recovered exchange of the message at `at`: free, not
    /// reserved for another one. Ends its reservation if so.
    fn take_reserved(&mut self, pid: u16, at: Option<(ShardId, u64)>) -> bool {
        if pid == 0 || self.inflight.contains_key(&pid) {
            return false;
        }
        match self.reserved().and_then(|r| r.get(&pid)) {
            Some(r) if Some(r.at) != at => false,
            Some(_) => {
                self.qos2_mut().reserved.remove(&pid);
                true
            }
            None => true,
        }
    }

    /// Sets the client's Receive Maximum (from its CONNECT).
    pub fn set_client_receive_max(&mut self, max: u16) {
        self.client_receive_max = max.max(1);
    }

    fn window(&self) -> usize {
        usize::from(self.client_receive_max.min(self.inflight_count_max))
    }

    /// Queued (not yet sent) messages.
    pub fn queued(&self) -> usize {
        self.queue().deliveries.len()
    }

    fn queue(&self) -> &Queue {
        self.queue.as_deref().unwrap_or(&NO_QUEUE)
    }

    fn queue_mut(&mut self) -> &mut Queue {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Every delivery the session holds: queued, then in flight.
    fn held(&self) -> impl Iterator<Item = &Delivery> + '_ {
        self.queue()
            .deliveries
            .iter()
            .chain(self.inflight.values().map(|e| &e.delivery))
    }

    /// Bytes the queue accounts for (see `Message::cost_bytes`).
    pub fn queued_bytes(&self) -> usize {
        self.queue().bytes
    }

    /// Sent, unacknowledged QoS 1/2 messages.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Lowers `lowest[shard]` to the log offset of every delivery still queued or in
    /// flight that holds the replay cursor (see `ReplayCursor`).
    pub fn lowest_unfinished(&self, lowest: &mut [u64]) {
        for d in self.held().filter(|d| d.holds_cursor) {
            let Some(pos) = d.msg.log else { continue };
            if let Some(l) = lowest.get_mut(pos.shard.index()) {
                *l = (*l).min(pos.offset);
            }
        }
    }

    /// Lowers `lowest[shard]` to the log offset of every delivery still queued or in
    /// flight that was chosen for a shared group.
    pub fn lowest_shared(&self, lowest: &mut [u64]) {
        for pos in self
            .held()
            .filter(|d| d.share_group.is_some())
            .filter_map(|d| d.msg.log)
        {
            if let Some(l) = lowest.get_mut(pos.shard.index()) {
                *l = (*l).min(pos.offset);
            }
        }
    }

    /// Whether a delivery of the logged message at `pos` is queued or in flight. A
    /// message above every offset of its owner that ever entered is not looked for: the
    /// live path, in the owner's order, costs one comparison; only a message handed
    /// again (a re-read, a redistribution) scans the queue and the window.
    pub fn holds(&self, pos: LogPos) -> bool {
        let top = self.entered_top.get(pos.shard.index());
        pos.offset < top
            && self
                .held()
                .filter_map(|d| d.msg.log)
                .any(|p| p.shard == pos.shard && p.offset == pos.offset)
    }

    /// A delivery entered the queue or the window (see `holds`).
    fn entered(&mut self, delivery: &Delivery) {
        let Some(pos) = delivery.msg.log else { return };
        let owner = pos.shard.index();
        let top = self.entered_top.get_mut(owner);
        *top = (*top).max(pos.offset + 1);
    }

    /// The shared deliveries queued or in flight: their group and log position.
    pub fn shared_held(&self) -> impl Iterator<Item = (&std::sync::Arc<str>, LogPos)> + '_ {
        self.held()
            .filter_map(|d| Some((d.share_group.as_ref()?, d.msg.log?)))
    }

    /// Offers a delivery, within the queue bounds of `limits`. `connected` = a live
    /// connection will pump it.
    pub fn enqueue(
        &mut self,
        delivery: Delivery,
        connected: bool,
        limits: &OutboundLimits,
    ) -> Enqueued {
        if delivery.qos == QoS::AtMostOnce && !connected {
            return Enqueued::DroppedQos0;
        }
        let cost = delivery.msg.cost_bytes();
        while self.full_by(cost, limits).is_some() {
            if delivery.qos == QoS::AtMostOnce {
                return Enqueued::DroppedQos0;
            }
            if !self.evict_one_qos0() {
                return Enqueued::DroppedFull;
            }
        }
        self.entered(&delivery);
        let queue = self.queue_mut();
        queue.bytes += cost;
        queue.deliveries.push_back(delivery);
        Enqueued::Queued
    }

    /// The bound of `limits` a message costing `cost` bytes would run into now, if any.
    pub fn full_by(&self, cost: usize, limits: &OutboundLimits) -> Option<QueueLimit> {
        let queue = self.queue();
        if queue.deliveries.len() >= limits.queue_messages_max {
            Some(QueueLimit::Messages)
        } else if queue.bytes + cost > limits.queue_bytes_max {
            Some(QueueLimit::Bytes)
        } else {
            None
        }
    }

    /// Whether the in-flight window is the server's `inflight_count_max` (not a smaller
    /// client Receive Maximum).
    pub fn window_is_server_cap(&self) -> bool {
        self.inflight_count_max <= self.client_receive_max
    }

    fn evict_one_qos0(&mut self) -> bool {
        let Some(queue) = self.queue.as_deref_mut() else {
            return false;
        };
        match queue
            .deliveries
            .iter()
            .position(|d| d.qos == QoS::AtMostOnce)
        {
            Some(i) => {
                let d = queue.deliveries.remove(i).expect("index from position");
                queue.bytes -= d.msg.cost_bytes();
                true
            }
            None => false,
        }
    }

    /// Moves queued messages into the outlet while the window and the buffer allow.
    pub fn pump(&mut self, out: &mut Outlet<'_>, now: Instant) -> Pumped {
        self.pump_logged(out, now, false)
    }

    /// [`Outbound::pump`]; with `log_qos2` (a logged session), a logged QoS 2 delivery
    /// is not written yet: it takes its packet id and waits in the sending state until
    /// its `qos2_sent` entry is durable (see the module docs, [`Outbound::drain_unlogged`]).
    pub fn pump_logged(&mut self, out: &mut Outlet<'_>, now: Instant, log_qos2: bool) -> Pumped {
        self.pump_admitting(out, now, log_qos2, |_| true)
    }

    /// [`Outbound::pump_logged`], dropping each queued delivery that `admit` refuses
    /// (counted in [`Pumped::denied`]): the connection's reader may not read its topic.
    /// Every delivery reaches the wire through here first, whichever path queued it
    /// (live, retained, shared, replayed or read back from the log), so this one check
    /// covers them all, for the reader actually connected. A refused delivery is done
    /// with for this session, as an expired one is.
    pub fn pump_admitting(
        &mut self,
        out: &mut Outlet<'_>,
        now: Instant,
        log_qos2: bool,
        mut admit: impl FnMut(&Delivery) -> bool,
    ) -> Pumped {
        let mut pumped = Pumped::default();
        while out.buf.len() < out.buf_bytes_max {
            let Some(front) = self.queue().deliveries.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= self.window() {
                pumped.held_by_window = true;
                break;
            }
            let queue = self.queue_mut();
            let delivery = queue.deliveries.pop_front().expect("front exists");
            queue.bytes -= delivery.msg.cost_bytes();
            if delivery.msg.is_expired(now) {
                pumped.expired += 1;
                continue;
            }
            if !admit(&delivery) {
                pumped.denied += 1;
                continue;
            }
            let pid = if delivery.qos == QoS::AtMostOnce {
                None
            } else {
                Some(self.allocate_pid())
            };
            if let Some((pid, pos)) = pid
                .filter(|_| log_qos2 && delivery.qos == QoS::ExactlyOnce)
                .zip(delivery.msg.log)
            {
                if !fits(&delivery, pid, out, now) {
                    pumped.oversized_by_qos[QoS::ExactlyOnce as usize] += 1;
                    continue;
                }
                self.qos2_mut()
                    .unlogged
                    .push((pos.shard, pos.offset, pid.get()));
                self.insert_inflight(pid.get(), delivery, AwaitState::Sending, now, false);
                continue;
            }
            match encode_publish(&delivery, pid, false, out, now) {
                Some(n) => {
                    pumped.sent_by_qos[delivery.qos as usize] += 1;
                    pumped.bytes += n as u64;
                }
                None => {
                    pumped.oversized_by_qos[delivery.qos as usize] += 1;
                    continue;
                }
            }
            if let Some(pid) = pid {
                let state = if delivery.qos == QoS::AtLeastOnce {
                    AwaitState::Ack
                } else {
                    AwaitState::Rec
                };
                self.insert_inflight(pid.get(), delivery, state, now, true);
            }
        }
        pumped.held_by_buffer =
            out.buf.len() >= out.buf_bytes_max && !self.queue().deliveries.is_empty();
        pumped
    }

    fn insert_inflight(
        &mut self,
        pid: u16,
        delivery: Delivery,
        state: AwaitState,
        now: Instant,
        on_wire: bool,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Inflight {
            delivery,
            state,
            seq,
            sent_at: now,
            retries: 0,
            on_wire,
        };
        self.inflight.insert(pid, entry);
    }

    /// Whether QoS 2 deliveries entered the sending state since the last
    /// [`Outbound::drain_unlogged`].
    pub fn has_unlogged(&self) -> bool {
        self.qos2.as_ref().is_some_and(|b| !b.unlogged.is_empty())
    }

    /// The `(owner shard, offset, packet id)` of the QoS 2 deliveries waiting in the
    /// sending state for their `qos2_sent` entry, in send order, each given out once (a
    /// reconnect gives the ones still sending again).
    pub fn drain_unlogged(&mut self) -> impl Iterator<Item = (ShardId, u64, u16)> + '_ {
        self.qos2.iter_mut().flat_map(|b| b.unlogged.drain(..))
    }

    /// The `qos2_sent` entry of exchange `pid` for the message at `at` (`(owner shard,
    /// offset)`) is durable: its PUBLISH goes out, into `out` if the session is
    /// connected, else on reconnect. Returns the bytes written, `None` if nothing was
    /// (not connected, or the exchange is no longer sending: sent after a reconnect,
    /// taken by its shared group, ended by a clean start).
    pub fn logged_sent(
        &mut self,
        pid: u16,
        at: (ShardId, u64),
        out: Option<&mut Outlet<'_>>,
        now: Instant,
    ) -> Option<usize> {
        let entry = self.inflight.get_mut(&pid)?;
        if entry.state != AwaitState::Sending
            || entry.delivery.msg.log.map(|p| (p.shard, p.offset)) != Some(at)
        {
            return None;
        }
        entry.state = AwaitState::Rec;
        entry.sent_at = now;
        let out = out?;
        let packet_id = PacketId::new(pid).expect("inflight ids are non-zero");
        // Its size was checked when it took the id.
        let n = encode_publish(&entry.delivery, Some(packet_id), false, out, now)?;
        entry.on_wire = true;
        Some(n)
    }

    fn allocate_pid(&mut self) -> PacketId {
        assert!(
            self.inflight.len() + self.reserved().map_or(0, HashMap::len) < usize::from(u16::MAX),
            "packet ids exhausted"
        );
        loop {
            let pid = self.next_pid;
            self.next_pid = if pid == u16::MAX { 1 } else { pid + 1 };
            if !self.inflight.contains_key(&pid)
                && self.reserved().is_none_or(|r| !r.contains_key(&pid))
            {
                return PacketId::new(pid).expect("never zero");
            }
        }
    }

    /// PUBACK from the client: the QoS 1 message is done.
    pub fn on_puback(&mut self, pid: u16) -> Result<Delivery, UnknownPacketId> {
        self.complete(pid, AwaitState::Ack)
    }

    /// PUBREC from the client: answer PUBREL and wait for PUBCOMP. A PUBREC with a
    /// failure reason (v5, >= 0x80) ends the exchange instead.
    ///
    /// With `hold` (a logged session), a logged message's PUBREL is held back instead:
    /// the exchange becomes *releasing* and its log position is returned, to be logged
    /// (`qos2_delivered`) before `release` sends the PUBREL. Once the client has PUBREC'd
    /// a message it must never be sent that PUBLISH again, also not after a restart.
    pub fn on_pubrec(
        &mut self,
        pid: u16,
        reason: ReasonCode,
        hold: bool,
        out: &mut Outlet<'_>,
        now: Instant,
    ) -> Result<Option<LogPos>, UnknownPacketId> {
        match self.inflight.get_mut(&pid) {
            Some(entry) if entry.state == AwaitState::Releasing => Ok(None),
            Some(entry) if entry.state == AwaitState::Rec || entry.state == AwaitState::Comp => {
                if (reason as u8) >= 0x80 {
                    self.inflight.remove(&pid);
                    return Ok(None);
                }
                entry.sent_at = now;
                let held = entry.delivery.msg.log.filter(|_| hold);
                if held.is_some() && entry.state == AwaitState::Rec {
                    entry.state = AwaitState::Releasing;
                    return Ok(held);
                }
                entry.state = AwaitState::Comp;
                encode_pubrel(pid, out);
                Ok(None)
            }
            _ => Err(UnknownPacketId(pid)),
        }
    }

    /// The release of the exchange `pid` for the message at `offset` of `shard` is
    /// durable: send its PUBREL (into `out` if the session is connected, else on
    /// reconnect). False if that exchange is no longer releasing.
    pub fn release(
        &mut self,
        pid: u16,
        at: (ShardId, u64),
        out: Option<&mut Outlet<'_>>,
        now: Instant,
    ) -> bool {
        match self.inflight.get_mut(&pid) {
            Some(entry)
                if entry.state == AwaitState::Releasing
                    && entry.delivery.msg.log.map(|p| (p.shard, p.offset)) == Some(at) =>
            {
                entry.state = AwaitState::Comp;
                entry.sent_at = now;
                if let Some(out) = out {
                    encode_pubrel(pid, out);
                }
                true
            }
            _ => false,
        }
    }

    /// After a restart: the exchange `pid` of `delivery` had its release logged but no
    /// PUBCOMP; it waits for PUBCOMP again and its PUBREL (never its PUBLISH) is resent
    /// on reconnect. False (nothing changed) if `pid` is taken (in flight, or reserved for
    /// another recovered exchange).
    pub fn restore_released(&mut self, delivery: Delivery, pid: u16) -> bool {
        let at = delivery.msg.log.map(|p| (p.shard, p.offset));
        if !self.take_reserved(pid, at) {
            return false;
        }
        self.restore_inflight(delivery, pid, AwaitState::Comp);
        true
    }

    fn restore_inflight(&mut self, delivery: Delivery, pid: u16, state: AwaitState) {
        self.entered(&delivery);
        self.insert_inflight(pid, delivery, state, Instant::now(), true);
    }

    /// After a restart: the QoS 2 `delivery` was in flight under `pid` when the broker
    /// stopped (`qos2_sent`); it waits for PUBREC under that id again, and its PUBLISH is
    /// resent with DUP on reconnect, so a client that already holds the id recognises
    /// it. Hands the delivery back (nothing changed) if `pid` is taken (in flight, or
    /// reserved for another recovered exchange).
    pub fn restore_sent(&mut self, delivery: Delivery, pid: u16) -> Result<(), Delivery> {
        let at = delivery.msg.log.map(|p| (p.shard, p.offset));
        if delivery.qos != QoS::ExactlyOnce || !self.take_reserved(pid, at) {
            return Err(delivery);
        }
        self.restore_inflight(delivery, pid, AwaitState::Rec);
        Ok(())
    }

    /// A connected session's exchange restored from the log (`restore_released`,
    /// `restore_sent`) by a catch-up read: the reconnect that resends such exchanges is
    /// over, so its PUBREL, or its PUBLISH with DUP, goes out now. Otherwise it would hold
    /// an in-flight slot that no client ever completes.
    pub fn resend_restored(&mut self, pid: u16, out: &mut Outlet<'_>, now: Instant) {
        self.resend_one(pid, out, now, true);
    }

    /// The logged QoS 2 messages sent (or sending) and not yet released, as `(owner
    /// shard, offset, packet id)`: logged again at a graceful stop (`qos2_sent`) so a
    /// restart resends them under the same ids.
    pub fn inflight_qos2(&self) -> Vec<(ShardId, u64, u16)> {
        self.inflight
            .iter()
            .filter(|(_, e)| {
                e.delivery.qos == QoS::ExactlyOnce
                    && matches!(
                        e.state,
                        AwaitState::Sending | AwaitState::Rec | AwaitState::Releasing
                    )
            })
            .filter_map(|(pid, e)| e.delivery.msg.log.map(|p| (p.shard, p.offset, *pid)))
            .collect()
    }

    /// The log position of the QoS 2 message in flight under `pid` past its PUBREC
    /// (awaiting PUBCOMP, or its release), if logged.
    pub fn qos2_log_pos(&self, pid: u16) -> Option<LogPos> {
        self.inflight
            .get(&pid)
            .filter(|e| matches!(e.state, AwaitState::Comp | AwaitState::Releasing))
            .and_then(|e| e.delivery.msg.log)
    }

    /// PUBCOMP from the client: the QoS 2 message is done.
    pub fn on_pubcomp(&mut self, pid: u16) -> Result<Delivery, UnknownPacketId> {
        self.complete(pid, AwaitState::Comp)
    }

    fn complete(&mut self, pid: u16, expected: AwaitState) -> Result<Delivery, UnknownPacketId> {
        match self.inflight.get(&pid) {
            Some(entry) if entry.state == expected => {
                Ok(self.inflight.remove(&pid).expect("present").delivery)
            }
            _ => Err(UnknownPacketId(pid)),
        }
    }

    /// On reconnect: resend every unacknowledged message in its original order, PUBLISH
    /// with DUP set or PUBREL, as MQTT requires. A QoS 2 delivery still sending is not
    /// written: it is given out again by [`Outbound::drain_unlogged`], since its first
    /// `qos2_sent` entry may be on its way from the shard the session left, whose answer
    /// does not come here.
    pub fn resend_all(&mut self, out: &mut Outlet<'_>, now: Instant) {
        let mut order: Vec<(u64, u16)> =
            self.inflight.iter().map(|(pid, e)| (e.seq, *pid)).collect();
        order.sort_unstable();
        for (_, pid) in order {
            match self.inflight.get(&pid) {
                Some(e) if e.state == AwaitState::Sending => {
                    if let Some(pos) = e.delivery.msg.log {
                        self.qos2_mut().unlogged.push((pos.shard, pos.offset, pid));
                    }
                }
                _ => self.resend_one(pid, out, now, true),
            }
        }
    }

    /// 3.1.1 redelivery while connected: resend what has waited longer than its backoff
    /// (`backoff * 2^retries`), up to `retries_max` times; returns how many were resent.
    pub fn resend_due(
        &mut self,
        out: &mut Outlet<'_>,
        now: Instant,
        backoff: Duration,
        retries_max: u32,
    ) -> u64 {
        let mut due: Vec<(u64, u16)> = self
            .inflight
            .iter()
            .filter(|(_, e)| {
                !matches!(e.state, AwaitState::Releasing | AwaitState::Sending)
                    && e.retries < retries_max
                    && now.saturating_duration_since(e.sent_at)
                        >= backoff * 2u32.saturating_pow(e.retries)
            })
            .map(|(pid, e)| (e.seq, *pid))
            .collect();
        due.sort_unstable();
        for &(_, pid) in &due {
            self.resend_one(pid, out, now, false);
            if let Some(e) = self.inflight.get_mut(&pid) {
                e.retries += 1;
            }
        }
        due.len() as u64
    }

    /// Resends `pid`. A releasing exchange sends nothing, except on a reconnect
    /// (`reconnect`): its `qos2_delivered` record is on its way to the home's log (it
    /// travelled there before the session moved), so it gets its PUBREL now.
    fn resend_one(&mut self, pid: u16, out: &mut Outlet<'_>, now: Instant, reconnect: bool) {
        let Some(entry) = self.inflight.get_mut(&pid) else {
            return;
        };
        if entry.state == AwaitState::Releasing {
            if !reconnect {
                return;
            }
            entry.state = AwaitState::Comp;
        }
        entry.sent_at = now;
        if entry.state == AwaitState::Comp {
            encode_pubrel(pid, out);
        } else {
            let packet_id = PacketId::new(pid).expect("inflight ids are non-zero");
            // An oversized message was never sent; it cannot be now either. One whose
            // `qos2_sent` entry became durable while the session was offline goes out
            // for the first time, without DUP.
            let dup = entry.on_wire;
            entry.on_wire = true;
            let _ = encode_publish(&entry.delivery, Some(packet_id), dup, out, now);
        }
    }

    /// Removes and returns every unacknowledged or queued delivery that was chosen for a
    /// shared subscription group (to hand to another member), oldest first. With
    /// `keep_qos2`, QoS 2 PUBLISHes already sent stay: the session outlives its
    /// connection, and their delivery is completed to this client when it reconnects
    /// (MQTT 5.0 [MQTT-4.8.2-4]).
    pub fn take_shared(&mut self, keep_qos2: bool) -> Vec<Delivery> {
        let mut inflight: Vec<(u64, u16)> = self
            .inflight
            .iter()
            .filter(|(_, e)| {
                e.delivery.share_group.is_some()
                    && !matches!(e.state, AwaitState::Comp | AwaitState::Releasing)
                    && !(keep_qos2 && e.state == AwaitState::Rec)
            })
            .map(|(pid, e)| (e.seq, *pid))
            .collect();
        inflight.sort_unstable();
        let mut taken: Vec<Delivery> = inflight
            .into_iter()
            .filter_map(|(_, pid)| self.inflight.remove(&pid).map(|e| e.delivery))
            .collect();
        if let Some(queue) = self.queue.as_deref_mut() {
            let mut kept = VecDeque::with_capacity(queue.deliveries.len());
            for d in queue.deliveries.drain(..) {
                if d.share_group.is_some() {
                    queue.bytes -= d.msg.cost_bytes();
                    taken.push(d);
                } else {
                    kept.push_back(d);
                }
            }
            queue.deliveries = kept;
        }
        taken
    }

    /// Drops everything (clean start).
    pub fn clear(&mut self) {
        self.queue = None;
        self.inflight.clear();
        self.qos2 = None;
    }
}

/// Whether the PUBLISH of `delivery` fits the client's Maximum Packet Size.
fn fits(delivery: &Delivery, pid: PacketId, out: &Outlet<'_>, now: Instant) -> bool {
    publish_view(delivery, Some(pid), false, now)
        .encoded_len(out.protocol)
        .is_ok_and(|n| n <= out.packet_bytes_max)
}

/// Encodes one PUBLISH for `delivery` into the outlet; `None` if it exceeds the client's
/// Maximum Packet Size (then it is discarded, as MQTT 5 requires).
fn encode_publish(
    delivery: &Delivery,
    pid: Option<PacketId>,
    dup: bool,
    out: &mut Outlet<'_>,
    now: Instant,
) -> Option<usize> {
    let mut publish = publish_view(delivery, pid, dup, now);
    let topic = &delivery.msg.topic;
    let alias = out.aliases.as_deref_mut().map(|a| a.alias_for(topic));
    if let Some((alias, new)) = alias {
        publish.topic_alias = Some(alias);
        if !new {
            publish.topic = &NO_TOPIC;
        }
    }
    let mark = out.buf.len();
    match publish.encode(out.protocol, out.buf) {
        Ok(n) if n <= out.packet_bytes_max => {
            if let (Some((alias, true)), Some(aliases)) = (alias, out.aliases.as_deref_mut()) {
                aliases.sent(topic, alias);
            }
            Some(n)
        }
        _ => {
            out.buf.truncate(mark);
            if let (Some((alias, true)), Some(aliases)) = (alias, out.aliases.as_deref_mut()) {
                aliases.unused(alias);
            }
            None
        }
    }
}

/// The topic of a PUBLISH that names it by an alias the client knows.
static NO_TOPIC: ByteStr = ByteStr::from_static("");

fn publish_view<'a>(
    delivery: &'a Delivery,
    pid: Option<PacketId>,
    dup: bool,
    now: Instant,
) -> PublishView<'a> {
    let msg = &delivery.msg;
    // The message's properties are shared by every delivery, encoded straight from it.
    PublishView {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: &msg.topic,
        packet_id: pid,
        properties: &msg.properties,
        message_expiry_interval_secs: msg.remaining_expiry_secs(now),
        subscription_identifiers: &delivery.subscription_ids,
        topic_alias: None,
        payload: &msg.payload,
    }
}

fn encode_pubrel(pid: u16, out: &mut Outlet<'_>) {
    let packet_id = PacketId::new(pid).expect("inflight ids are non-zero");
    let _ = mqtt::encode(&Packet::PubRel(Ack::new(packet_id)), out.protocol, out.buf);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::mqtt::{ByteStr, ClientId, DecodeLimits, PublishProperties};
    use crate::session::Message;

    fn limits(queue: usize, inflight: usize) -> OutboundLimits {
        OutboundLimits {
            queue_messages_max: queue,
            queue_bytes_max: 1 << 20,
            inflight_count_max: inflight,
        }
    }

    fn delivery(topic: &'static str, qos: QoS) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: ByteStr::from_static(topic),
                payload: Bytes::from_static(b"payload"),
                qos,
                retain: false,
                properties: PublishProperties::default(),
                publisher: ClientId::from("pub"),
                expires_at: None,
                log: None,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            share_group: None,
            holds_cursor: true,
        }
    }

    fn outlet(buf: &mut BytesMut) -> Outlet<'_> {
        Outlet {
            buf,
            protocol: Protocol::V5,
            packet_bytes_max: 1 << 20,
            buf_bytes_max: 1 << 20,
            aliases: None,
        }
    }

    #[test]
    fn topic_aliases_name_a_topic_once_and_reuse_the_least_recent() {
        let mut aliases = TopicAliases::new(2);
        let mut buf = BytesMut::new();
        let mut send = |topic: &'static str, max_bytes: usize, buf: &mut BytesMut| {
            let mut out = Outlet {
                packet_bytes_max: max_bytes,
                aliases: Some(&mut aliases),
                ..outlet(buf)
            };
            encode_publish(
                &delivery(topic, QoS::AtMostOnce),
                None,
                false,
                &mut out,
                Instant::now(),
            )
        };
        for topic in ["a", "b", "a", "c", "b", "b"] {
            assert!(send(topic, 1 << 20, &mut buf).is_some());
        }
        // Too big for the client: not sent, and its new alias is not taken.
        assert!(send("a-very-long-topic-name", 20, &mut buf).is_none());
        assert!(send("d", 1 << 20, &mut buf).is_some());
        let sent: Vec<(String, Option<u16>)> = decoded(&mut buf)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
                other => panic!("{other:?}"),
            })
            .collect();
        let expected = [
            ("a", 1),
            ("b", 2),
            ("", 1),
            // Both taken, "b" used longest ago: its alias goes to "c".
            ("c", 2),
            // "b" again takes the alias of "a", now the least recent.
            ("b", 1),
            ("", 1),
            // The oversized topic took none; "c" is the least recent.
            ("d", 2),
        ];
        let expected: Vec<(String, Option<u16>)> = expected
            .iter()
            .map(|(t, a)| (t.to_string(), Some(*a)))
            .collect();
        assert_eq!(sent, expected);
    }

    fn decoded(buf: &mut BytesMut) -> Vec<Packet> {
        let limits = DecodeLimits {
            packet_bytes_max: 1 << 20,
        };
        let mut packets = Vec::new();
        while let Some(p) = mqtt::decode(buf, Some(Protocol::V5), &limits).unwrap() {
            packets.push(p);
        }
        packets
    }

    #[test]
    fn window_limits_inflight_and_acks_open_it() {
        let lim = limits(100, 2);
        let mut out = Outbound::new(lim);
        for _ in 0..5 {
            assert_eq!(
                out.enqueue(delivery("t", QoS::AtLeastOnce), true, &lim),
                Enqueued::Queued
            );
        }
        let mut buf = BytesMut::new();
        let now = Instant::now();
        out.pump(&mut outlet(&mut buf), now);
        let sent = decoded(&mut buf);
        assert_eq!(sent.len(), 2, "window of 2");
        assert_eq!(out.inflight(), 2);
        let Packet::Publish(first) = &sent[0] else {
            panic!("{:?}", sent[0])
        };
        let pid = first.packet_id.unwrap().get();
        out.on_puback(pid).unwrap();
        assert_eq!(
            out.on_puback(pid).unwrap_err(),
            UnknownPacketId(pid),
            "acked twice"
        );
        out.pump(&mut outlet(&mut buf), now);
        assert_eq!(decoded(&mut buf).len(), 1);
        assert_eq!(out.queued(), 2);
    }

    #[test]
    fn refused_deliveries_are_dropped_without_a_packet_id() {
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        for topic in ["ok", "secret", "ok", "secret"] {
            out.enqueue(delivery(topic, QoS::AtLeastOnce), true, &lim);
        }
        let mut buf = BytesMut::new();
        let pumped = out.pump_admitting(&mut outlet(&mut buf), Instant::now(), false, |d| {
            d.msg.topic.as_str() != "secret"
        });
        assert_eq!((pumped.denied, pumped.sent_by_qos[1]), (2, 2));
        let sent = decoded(&mut buf);
        assert_eq!(sent.len(), 2);
        assert!(sent
            .iter()
            .all(|p| matches!(p, Packet::Publish(p) if p.topic.as_str() == "ok")));
        assert_eq!((out.queued(), out.inflight()), (0, 2));
    }

    #[test]
    fn qos0_is_dropped_first_when_full() {
        let lim = limits(2, 10);
        let mut out = Outbound::new(lim);
        assert_eq!(
            out.enqueue(delivery("a", QoS::AtMostOnce), true, &lim),
            Enqueued::Queued
        );
        assert_eq!(
            out.enqueue(delivery("b", QoS::AtLeastOnce), true, &lim),
            Enqueued::Queued
        );
        assert_eq!(
            out.enqueue(delivery("c", QoS::AtMostOnce), true, &lim),
            Enqueued::DroppedQos0
        );
        assert_eq!(
            out.enqueue(delivery("d", QoS::AtLeastOnce), true, &lim),
            Enqueued::Queued,
            "evicts a"
        );
        assert_eq!(
            out.enqueue(delivery("e", QoS::AtLeastOnce), true, &lim),
            Enqueued::DroppedFull
        );
        assert_eq!(
            out.enqueue(delivery("f", QoS::AtMostOnce), false, &lim),
            Enqueued::DroppedQos0
        );
        let mut buf = BytesMut::new();
        out.pump(&mut outlet(&mut buf), Instant::now());
        let topics: Vec<String> = decoded(&mut buf)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p.topic.as_str().to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(topics, ["b", "d"]);
    }

    #[test]
    fn resend_all_sets_dup_and_keeps_order_and_pubrel() {
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        out.enqueue(delivery("one", QoS::AtLeastOnce), true, &lim);
        out.enqueue(delivery("two", QoS::ExactlyOnce), true, &lim);
        out.enqueue(delivery("three", QoS::AtLeastOnce), true, &lim);
        let mut buf = BytesMut::new();
        let now = Instant::now();
        out.pump(&mut outlet(&mut buf), now);
        let sent = decoded(&mut buf);
        let Packet::Publish(two) = &sent[1] else {
            panic!()
        };
        let two_pid = two.packet_id.unwrap().get();
        out.on_pubrec(
            two_pid,
            ReasonCode::Success,
            false,
            &mut outlet(&mut buf),
            now,
        )
        .unwrap();
        assert!(matches!(decoded(&mut buf)[..], [Packet::PubRel(_)]));

        out.resend_all(&mut outlet(&mut buf), now);
        let again = decoded(&mut buf);
        assert_eq!(again.len(), 3);
        let Packet::Publish(p) = &again[0] else {
            panic!()
        };
        assert!(p.dup && p.topic.as_str() == "one");
        assert!(
            matches!(again[1], Packet::PubRel(_)),
            "QoS 2 past PUBREC resends PUBREL"
        );
        let Packet::Publish(p) = &again[2] else {
            panic!()
        };
        assert!(p.dup && p.topic.as_str() == "three");
        out.on_pubcomp(two_pid).unwrap();
        assert_eq!(out.inflight(), 2);
    }

    #[test]
    fn expired_messages_are_not_sent() {
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        let mut d = delivery("t", QoS::AtLeastOnce);
        let now = Instant::now();
        Arc::get_mut(&mut d.msg).unwrap().expires_at = Some(now);
        out.enqueue(d, true, &lim);
        let mut buf = BytesMut::new();
        let pumped = out.pump(&mut outlet(&mut buf), now);
        assert_eq!(pumped.expired, 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_for_the_client_is_discarded() {
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        out.enqueue(delivery("t", QoS::AtLeastOnce), true, &lim);
        let mut buf = BytesMut::new();
        let mut small = outlet(&mut buf);
        small.packet_bytes_max = 8;
        let pumped = out.pump(&mut small, Instant::now());
        assert_eq!(pumped.oversized_by_qos[1], 1);
        assert_eq!(out.inflight(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn slow_socket_keeps_messages_queued() {
        let lim = limits(100, 100);
        let mut out = Outbound::new(lim);
        for _ in 0..10 {
            out.enqueue(delivery("t", QoS::AtLeastOnce), true, &lim);
        }
        let mut buf = BytesMut::new();
        let mut tight = outlet(&mut buf);
        tight.buf_bytes_max = 1;
        out.pump(&mut tight, Instant::now());
        assert_eq!(out.inflight(), 1, "stops once the buffer holds anything");
        assert_eq!(out.queued(), 9);
    }

    #[test]
    fn a_held_release_sends_pubrel_only_once_released_and_never_the_publish_again() {
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        let mut d = delivery("two", QoS::ExactlyOnce);
        let pos = LogPos {
            shard: ShardId(1),
            offset: 42,
            floor: 43,
        };
        Arc::get_mut(&mut d.msg).unwrap().log = Some(pos);
        out.enqueue(d, true, &lim);
        let mut buf = BytesMut::new();
        let now = Instant::now();
        out.pump(&mut outlet(&mut buf), now);
        let Packet::Publish(p) = &decoded(&mut buf)[0] else {
            panic!()
        };
        let pid = p.packet_id.unwrap().get();
        let held = out
            .on_pubrec(pid, ReasonCode::Success, true, &mut outlet(&mut buf), now)
            .unwrap();
        assert_eq!(held, Some(pos));
        assert!(buf.is_empty(), "no PUBREL before the release is logged");
        let later = now + Duration::from_secs(60);
        assert_eq!(
            out.resend_due(&mut outlet(&mut buf), later, Duration::from_secs(1), 5),
            0
        );
        assert!(
            buf.is_empty(),
            "a 3.1.1 resend sends no PUBLISH while releasing"
        );
        assert!(!out.release(pid, (ShardId(1), 41), Some(&mut outlet(&mut buf)), now));
        assert!(out.release(pid, (ShardId(1), 42), Some(&mut outlet(&mut buf)), now));
        assert!(matches!(decoded(&mut buf)[..], [Packet::PubRel(_)]));
        out.on_pubcomp(pid).unwrap();
        assert_eq!(out.inflight(), 0);

        // After a restart: the exchange waits for PUBCOMP, a reconnect resends PUBREL.
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        let mut d = delivery("two", QoS::ExactlyOnce);
        Arc::get_mut(&mut d.msg).unwrap().log = Some(pos);
        assert!(out.restore_released(d, 7));
        out.resend_all(&mut outlet(&mut buf), now);
        let again = decoded(&mut buf);
        assert!(matches!(&again[..], [Packet::PubRel(a)] if a.packet_id.get() == 7));
        let mut lowest = vec![u64::MAX; 2];
        out.lowest_unfinished(&mut lowest);
        assert_eq!(lowest[1], 42, "it holds the cursor");
        out.on_pubcomp(7).unwrap();
    }

    #[test]
    fn a_recovered_exchange_keeps_its_id_until_it_is_restored() {
        let logged = |offset: u64| {
            let mut d = delivery("two", QoS::ExactlyOnce);
            Arc::get_mut(&mut d.msg).unwrap().log = Some(LogPos {
                shard: ShardId(0),
                offset,
                floor: offset,
            });
            d
        };
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        out.reserve(2, (ShardId(0), 10), false);
        out.reserve(3, (ShardId(0), 11), true);
        // Fresh messages skip both reserved ids.
        for _ in 0..3 {
            out.enqueue(delivery("one", QoS::AtLeastOnce), true, &lim);
        }
        let mut buf = BytesMut::new();
        let now = Instant::now();
        out.pump(&mut outlet(&mut buf), now);
        let ids: Vec<u16> = decoded(&mut buf)
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.packet_id.unwrap().get(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![1, 4, 5]);
        // Only the exchange it was kept for takes a reserved id.
        let Err(other) = out.restore_sent(logged(12), 2) else {
            panic!("id 2 is kept for the message at offset 10")
        };
        assert!(!out.restore_released(other, 3));
        assert!(out.restore_sent(logged(10), 2).is_ok());
        assert!(out.restore_released(logged(11), 3));
        out.on_puback(1).unwrap();
        out.on_puback(4).unwrap();
        out.on_puback(5).unwrap();
        // Whatever the cursor, a reserved id stays the recovered exchange's.
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        out.reserve(1, (ShardId(0), 10), false);
        out.reserve(2, (ShardId(0), 11), true);
        out.enqueue(delivery("one", QoS::AtLeastOnce), true, &lim);
        out.enqueue(delivery("one", QoS::AtLeastOnce), true, &lim);
        out.pump(&mut outlet(&mut buf), now);
        let ids: Vec<u16> = decoded(&mut buf)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => p.packet_id.map(|id| id.get()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![3, 4]);
    }

    #[test]
    fn holds_finds_a_message_queued_or_in_flight_until_it_completes() {
        let lim = limits(100, 1);
        let mut out = Outbound::new(lim);
        let at = |shard, offset| LogPos {
            shard,
            offset,
            floor: offset,
        };
        let logged = |pos| {
            let mut d = delivery("t", QoS::ExactlyOnce);
            Arc::get_mut(&mut d.msg).unwrap().log = Some(pos);
            d
        };
        assert!(!out.holds(at(ShardId(0), 5)), "nothing entered");
        out.enqueue(logged(at(ShardId(0), 5)), true, &lim);
        out.enqueue(logged(at(ShardId(0), 7)), true, &lim);
        assert!(
            out.holds(at(ShardId(0), 5)) && out.holds(at(ShardId(0), 7)),
            "queued"
        );
        assert!(
            !out.holds(at(ShardId(0), 6)) && !out.holds(at(ShardId(0), 8)),
            "never entered"
        );
        assert!(!out.holds(at(ShardId(1), 5)), "another owner's offset");
        let mut buf = BytesMut::new();
        let now = Instant::now();
        out.pump(&mut outlet(&mut buf), now);
        assert!(out.holds(at(ShardId(0), 5)), "in flight");
        let pid = out.inflight.keys().copied().next().unwrap();
        out.on_pubrec(pid, ReasonCode::Success, false, &mut outlet(&mut buf), now)
            .unwrap();
        out.on_pubcomp(pid).unwrap();
        assert!(!out.holds(at(ShardId(0), 5)), "completed: no longer held");
        assert!(out.holds(at(ShardId(0), 7)), "still queued");
    }

    #[test]
    fn a_logged_qos2_publish_waits_for_its_id_to_be_logged() {
        let lim = limits(100, 10);
        let mut out = Outbound::new(lim);
        let logged = |topic, offset| {
            let mut d = delivery(topic, QoS::ExactlyOnce);
            Arc::get_mut(&mut d.msg).unwrap().log = Some(LogPos {
                shard: ShardId(1),
                offset,
                floor: offset,
            });
            d
        };
        out.enqueue(logged("a", 10), true, &lim);
        out.enqueue(delivery("q1", QoS::AtLeastOnce), true, &lim);
        out.enqueue(logged("b", 11), true, &lim);
        let mut buf = BytesMut::new();
        let now = Instant::now();
        out.pump_logged(&mut outlet(&mut buf), now, true);
        let sent = decoded(&mut buf);
        assert!(
            matches!(&sent[..], [Packet::Publish(p)] if p.topic.as_str() == "q1"),
            "only QoS 1 goes out before the ids are logged: {sent:?}"
        );
        assert_eq!(out.inflight(), 3, "the QoS 2 ones hold their window slots");
        let ids: Vec<(ShardId, u64, u16)> = out.drain_unlogged().collect();
        assert_eq!(ids.len(), 2);
        assert_eq!((ids[0].1, ids[1].1), (10, 11), "in send order");
        assert!(!out.has_unlogged(), "given out once");
        // Not on the wire yet: a 3.1.1 resend sends nothing, a reconnect gives them out
        // again instead of writing them.
        let later = now + Duration::from_secs(60);
        out.resend_due(&mut outlet(&mut buf), later, Duration::from_secs(1), 5);
        out.resend_all(&mut outlet(&mut buf), now);
        assert!(
            decoded(&mut buf)
                .iter()
                .all(|p| matches!(p, Packet::Publish(p) if p.topic.as_str() == "q1")),
            "only the QoS 1 message is resent"
        );
        assert_eq!(out.drain_unlogged().collect::<Vec<_>>(), ids);
        // Logged: the PUBLISH goes out under its id, without DUP, once.
        let (_, offset, pid) = ids[0];
        assert!(out
            .logged_sent(
                pid,
                (ShardId(1), offset + 1),
                Some(&mut outlet(&mut buf)),
                now
            )
            .is_none());
        assert!(out
            .logged_sent(pid, (ShardId(1), offset), Some(&mut outlet(&mut buf)), now)
            .is_some());
        assert!(out
            .logged_sent(pid, (ShardId(1), offset), Some(&mut outlet(&mut buf)), now)
            .is_none());
        let sent = decoded(&mut buf);
        assert!(
            matches!(&sent[..], [Packet::Publish(p)]
                if p.packet_id.map(|id| id.get()) == Some(pid) && !p.dup),
            "{sent:?}"
        );
        // Logged while offline: the reconnect sends it the first time, without DUP.
        let (_, offset, pid) = ids[1];
        assert!(out
            .logged_sent(pid, (ShardId(1), offset), None, now)
            .is_none());
        out.resend_all(&mut outlet(&mut buf), now);
        let again = decoded(&mut buf);
        assert!(
            again.iter().any(|p| matches!(p, Packet::Publish(p)
                if p.packet_id.map(|id| id.get()) == Some(pid) && !p.dup)),
            "{again:?}"
        );
        assert!(
            again.iter().any(|p| matches!(p, Packet::Publish(p)
                if p.packet_id.map(|id| id.get()) == Some(ids[0].2) && p.dup)),
            "the one sent before comes again with DUP: {again:?}"
        );
        let mut inflight = out.inflight_qos2();
        inflight.sort_unstable();
        assert_eq!(inflight, ids);
    }
}
