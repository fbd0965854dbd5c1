//! The publish path: from the publisher's shard to the topic's owner, then out to every
//! shard with matching interest, then into local sessions.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::{AckTo, Broker, ShardMsg};
use crate::metrics::{AclAction, Limit};
use crate::mqtt::{ClientId, QoS, ReasonCode};
use crate::router::{owner_of, GroupRoute, ShardId, ShardSet};
use crate::session::{Admit, Delivery, Enqueued, Had, Message, QueueLimit, SubOptions};

use super::{GroupKey, SessionKey, SessionSlot};

/// Whether a fan-out may wait for room in a peer's outbox.
///
/// A connection's reader may (that is how a publisher is slowed down). A mesh receiver
/// must not: two receivers each waiting for the other's outbox to drain would deadlock,
/// so traffic forwarded from the mesh is queued without waiting; it is bounded by the
/// publishers' own backpressure upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MayWait {
    /// The caller is a connection task.
    Yes,
    /// The caller is a mesh receiver.
    No,
}

impl Broker {
    /// Routes a client's publish to the topic's owner: a direct call when this shard owns
    /// the topic, otherwise one mesh message (batched with others of this tick). Waits
    /// while the owner's outbox is full, which stops this connection's reader: that is
    /// the publisher's backpressure.
    pub async fn route_publish(self: &Rc<Self>, msg: Arc<Message>, ack: Option<AckTo>) {
        let owner = owner_of(msg.topic.as_str(), self.mesh.shards());
        if owner == self.id {
            self.accept_publish(msg, ack, MayWait::Yes).await;
        } else {
            self.post_data(owner, ShardMsg::Publish { msg, ack }).await;
        }
    }

    /// On the owner: log (as the fsync policy requires), update the retained message,
    /// fan out, and confirm.
    pub(crate) async fn accept_publish(
        self: &Rc<Self>,
        msg: Arc<Message>,
        ack: Option<AckTo>,
        may_wait: MayWait,
    ) {
        debug_assert_eq!(
            owner_of(msg.topic.as_str(), self.mesh.shards()),
            self.id,
            "publish routed to a shard that does not own its topic"
        );
        self.log_and_fan_out(msg, ack, may_wait).await;
    }

    /// Sends `msg` to this shard's matching sessions (a direct call), to every peer with
    /// matching interest and to one shard per matching shared-subscription group.
    pub(crate) async fn fan_out(self: &Rc<Self>, msg: Arc<Message>, may_wait: MayWait) {
        if msg.retain && self.log.get().is_none() {
            self.store_retained(&msg);
        }
        // The groups leave the route for a spare buffer (the sends below may wait, and
        // other publishes reuse the route meanwhile); both buffers keep their capacity.
        let (shards, mut groups) = {
            let mut route = self.subs.route.borrow_mut();
            self.subs
                .interest
                .borrow()
                .route(msg.topic.as_str(), &mut route);
            let spare = self.subs.groups_scratch.take();
            (route.shards, std::mem::replace(&mut route.groups, spare))
        };
        // The table lists the peers' plain filters that can match a topic owned here;
        // this shard's own are its trie's.
        self.deliver_local(&msg);
        for shard in shards.iter().filter(|&shard| shard != self.id) {
            let deliver = ShardMsg::Deliver {
                msg: Arc::clone(&msg),
            };
            self.forward(shard, deliver, may_wait).await;
        }
        for GroupRoute {
            group,
            filter,
            shards: members,
        } in groups.drain(..)
        {
            let target = self.pick_group_shard(&group, &filter, &members);
            if may_wait == MayWait::Yes && target != self.id {
                self.mesh.room(target.index()).await;
            }
            // No await from here to the send: the count of shared sends on the link is
            // the order the target receives them in (see `shared`, "Crash safety").
            self.send_shared(target, GroupKey { group, filter }, Arc::clone(&msg), 0);
        }
        self.subs.groups_scratch.replace(groups);
    }

    async fn forward(&self, to: ShardId, msg: ShardMsg, may_wait: MayWait) {
        match may_wait {
            MayWait::Yes => self.post_data(to, msg).await,
            MayWait::No => self.post(to, msg),
        }
    }

    fn pick_group_shard(&self, group: &Arc<str>, filter: &Arc<str>, members: &ShardSet) -> ShardId {
        let mut cursors = self.groups.shard_cursor.borrow_mut();
        let key = GroupKey {
            group: group.clone(),
            filter: filter.clone(),
        };
        let cursor = cursors.entry(key).or_insert(0);
        let n = members.len().max(1);
        let pick = members.iter().nth(*cursor % n).unwrap_or(self.id);
        *cursor = cursor.wrapping_add(1);
        pick
    }

    pub(crate) fn store_retained(&self, msg: &Arc<Message>) {
        let mut retained = self.retained.index.borrow_mut();
        let before = retained.len();
        // A new state of the topic: its version is its own offset again.
        self.retained
            .versions
            .borrow_mut()
            .remove(msg.topic.as_str());
        let (added, replaced) = if msg.payload.is_empty() {
            (0, retained.remove(msg.topic.as_str()))
        } else {
            let added = msg.cost_bytes();
            (added, retained.insert(msg.topic.as_str(), Arc::clone(msg)))
        };
        let removed = replaced.map_or(0, |m| m.cost_bytes());
        self.quota.retained_bytes_changed(added, removed);
        let delta = retained.len() as i64 - before as i64;
        self.probe.retained_messages_current.add(delta);
    }

    /// Retained messages on this shard matched by `filter` (expired ones are dropped).
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let mut found = Vec::new();
        let mut expired = Vec::new();
        self.retained
            .index
            .borrow()
            .for_each_matching(filter, |topic, msg| {
                if msg.is_expired(now) {
                    expired.push(topic.to_string());
                } else {
                    found.push(Arc::clone(msg));
                }
            });
        if !expired.is_empty() {
            let mut retained = self.retained.index.borrow_mut();
            let mut versions = self.retained.versions.borrow_mut();
            for topic in &expired {
                let removed = retained.remove(topic).map_or(0, |m| m.cost_bytes());
                self.quota.retained_bytes_changed(0, removed);
                versions.remove(topic);
            }
            self.probe
                .retained_messages_current
                .add(-(expired.len() as i64));
        }
        found
    }

    /// On the publisher's shard: the owner (shard `owner`) decided; send the ack when
    /// its turn comes. An accepted QoS 2 id now awaits PUBREL in the session: a refused
    /// one is free for the client's next message.
    pub(crate) fn publish_done(&self, owner: ShardId, ack: AckTo, reason: ReasonCode) {
        if self.relay_acked(&ack) {
            return;
        }
        let Some(conn) = self.link(ack.conn.token) else {
            return;
        };
        if ack.exactly_once && reason == ReasonCode::Success {
            let mut sessions = self.sessions.slots.borrow_mut();
            if let Some(slot) = conn.session().and_then(|k| sessions.get_mut(&k)) {
                slot.session.awaiting_pubrel.insert(ack.packet_id, owner);
            }
        }
        conn.complete_ack(ack.packet_id, reason, |us| {
            self.probe.publish_ack_latency.0.record(us)
        });
    }

    /// Delivers `msg` to every local session with a matching plain subscription.
    pub(crate) fn deliver_local(&self, msg: &Arc<Message>) {
        let mut matches = self.subs.match_scratch.take();
        matches.clear();
        self.subs
            .trie
            .borrow()
            .for_each_match(msg.topic.as_str(), |key, opts| matches.push((*key, *opts)));
        if matches.is_empty() {
            self.subs.match_scratch.replace(matches);
            return;
        }
        let now = Instant::now();
        if msg.is_expired(now) {
            self.probe.messages_expired_total.inc();
            self.subs.match_scratch.replace(matches);
            return;
        }
        matches.sort_unstable_by_key(|(key, _)| *key);
        let mut sessions = self.sessions.slots.borrow_mut();
        for same in matches.chunk_by(|a, b| a.0 == b.0) {
            let key = same[0].0;
            let Some(slot) = sessions.get_mut(&key) else {
                continue;
            };
            if let Some(pos) = msg.log {
                slot.session.replay.note(pos);
            }
            let Some(delivery) = merge_overlapping(msg, same, &slot.session.client_id) else {
                continue;
            };
            self.offer(slot, delivery, now);
        }
        drop(sessions);
        self.subs.match_scratch.replace(matches);
    }

    /// Gives one delivery to a session: queue it, and if connected, move what fits onto
    /// the wire. Counts drops.
    ///
    /// A logged QoS 1/2 delivery that finds the queue full is not dropped: the session
    /// reads it back from the owner's log later (see `catchup`), and meanwhile leaves
    /// that owner's later messages to the log too, so their order holds.
    pub(crate) fn offer(&self, slot: &mut SessionSlot, delivery: Delivery, now: Instant) {
        let qos = delivery.qos;
        let from_log = delivery
            .msg
            .log
            .filter(|_| delivery.holds_cursor && delivery.share_group.is_none())
            .filter(|_| qos != QoS::AtMostOnce);
        // Handed to the session again (a shared pick of a re-read message, a
        // redistribution, a live copy of what a read brought): once PUBREC'd, never a
        // PUBLISH again; still held, never a second copy. A held one still counts as
        // skipped for the session's gap, as it did before it was checked.
        let had = delivery
            .msg
            .log
            .filter(|_| delivery.holds_cursor)
            .map_or(Had::No, |pos| slot.session.had(pos));
        if matches!(had, Had::Released(_)) {
            return;
        }
        if let Some(pos) = from_log {
            if slot.session.replay.admit(pos) == Admit::FromLog {
                self.probe.deliveries_deferred_total.inc();
                return;
            }
        }
        if had == Had::Held {
            return;
        }
        let outbound = &mut slot.session.outbound;
        let limits = self.outbound_limits();
        let full = outbound
            .full_by(delivery.msg.cost_bytes(), &limits)
            .map(queue_limit);
        let queued_before = outbound.queued();
        match outbound.enqueue(delivery, slot.conn.is_some(), &limits) {
            Enqueued::Queued => {
                // Room was made by evicting queued QoS 0 messages.
                let evicted = (queued_before + 1).saturating_sub(outbound.queued()) as u64;
                if let Some(limit) = full.filter(|_| evicted > 0) {
                    self.probe.messages_dropped_by_qos[0].add(evicted);
                    self.probe.hits(limit, evicted);
                }
            }
            Enqueued::DroppedFull if from_log.is_some() => {
                slot.session.replay.overflowed(from_log.expect("checked"));
                self.probe.deliveries_deferred_total.inc();
                if let Some(limit) = full {
                    self.probe.hit(limit);
                }
                return;
            }
            Enqueued::DroppedQos0 | Enqueued::DroppedFull => {
                self.probe.messages_dropped_by_qos[qos as usize].inc();
                if let Some(limit) = full {
                    self.probe.hit(limit);
                }
                return;
            }
        }
        self.pump(slot, now);
    }

    /// Moves queued messages of a connected session into its connection's buffer, refills
    /// its queue from its shared groups' backlogs, and asks for catch-up reads.
    pub(crate) fn pump(&self, slot: &mut SessionSlot, now: Instant) {
        // A connection's session is indexed before its CONNACK is written (the claim may
        // still wait for peers): nothing goes out before the CONNACK, `resume_delivery`
        // pumps once it is.
        if slot.conn.as_ref().is_none_or(|c| c.session().is_none()) {
            return;
        }
        self.pump_queue(slot, now);
        if self.refill_from_backlogs(slot) {
            self.pump_queue(slot, now);
        }
        self.request_catch_ups(slot);
    }

    fn pump_queue(&self, slot: &mut SessionSlot, now: Instant) {
        let Some(conn) = &slot.conn else { return };
        let before = slot.session.outbound.inflight();
        // A logged session's QoS 2 PUBLISH waits for its packet id to be logged.
        let log_qos2 = slot.session.logged && self.log.get().is_some();
        // Authorization: a connection with a partly readable subscription has each
        // delivery checked on its way to the wire (see `auth::acl`).
        let mut acl = conn.acl.borrow_mut();
        let client_id = &slot.session.client_id;
        let outbound = &mut slot.session.outbound;
        let pumped = conn.with_outlet(self.config.connection_out_bytes_max, |outlet| {
            match acl.as_mut().filter(|acl| acl.checks_deliveries()) {
                None => outbound.pump_logged(outlet, now, log_qos2),
                Some(acl) => outbound.pump_admitting(outlet, now, log_qos2, |d| {
                    let topic = d.msg.topic.as_str();
                    let readable = acl.may_receive(topic);
                    if !readable {
                        tracing::debug!(
                            client_id = client_id.as_str(),
                            topic,
                            "acl: delivery refused"
                        );
                    }
                    readable
                }),
            }
        });
        drop(acl);
        self.probe.acl_denied(AclAction::Deliver, pumped.denied);
        self.hold_sends(&mut slot.session);
        if pumped.bytes > 0 {
            for (counter, n) in self
                .probe
                .messages_delivered_by_qos
                .iter()
                .zip(pumped.sent_by_qos)
            {
                counter.add(n);
            }
            self.probe.bytes_sent_total.add(pumped.bytes);
            conn.wake_writer();
        }
        self.probe.messages_expired_total.add(pumped.expired);
        for (counter, n) in self
            .probe
            .messages_dropped_by_qos
            .iter()
            .zip(pumped.oversized_by_qos)
        {
            counter.add(n);
        }
        if pumped.held_by_window && slot.session.outbound.window_is_server_cap() {
            self.probe.hit(Limit::InflightCountMax);
        }
        if pumped.held_by_buffer {
            self.probe.hit(Limit::ConnectionOutBytesMax);
        }
        let after = slot.session.outbound.inflight();
        self.probe
            .inflight_current
            .add(after as i64 - before as i64);
    }

    /// A connection's output drained: move more of its session's queue onto the wire.
    pub fn on_drained(&self, key: SessionKey) {
        let mut sessions = self.sessions.slots.borrow_mut();
        if let Some(slot) = sessions.get_mut(&key) {
            if slot.session.outbound.queued() > 0 {
                self.pump(slot, Instant::now());
            }
        }
    }
}

fn queue_limit(limit: QueueLimit) -> Limit {
    match limit {
        QueueLimit::Messages => Limit::SessionQueueMessagesMax,
        QueueLimit::Bytes => Limit::SessionQueueBytesMax,
    }
}

/// One delivery for a session whose subscriptions `same` all match the topic (overlap
/// rule: highest QoS, every subscription id, RETAIN kept only if every matching
/// subscription is retain-as-published; skipped if every one is no-local and the session
/// published it).
fn merge_overlapping(
    msg: &Arc<Message>,
    same: &[(SessionKey, SubOptions)],
    client_id: &ClientId,
) -> Option<Delivery> {
    let own = *client_id == msg.publisher;
    let mut qos = None::<QoS>;
    let mut all_rap = true;
    let mut ids = Vec::new();
    for (_, opts) in same {
        if own && opts.no_local {
            continue;
        }
        qos = Some(qos.map_or(opts.qos, |q| q.max(opts.qos)));
        all_rap &= opts.retain_as_published;
        if let Some(id) = opts.subscription_id {
            ids.push(id);
        }
    }
    Some(Delivery {
        msg: Arc::clone(msg),
        qos: qos?.min(msg.qos),
        retain: msg.retain && all_rap,
        subscription_ids: ids,
        share_group: None,
        holds_cursor: true,
    })
}
