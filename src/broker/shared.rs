//! Shared subscriptions (`$share/<group>/<filter>`) on one shard: which member gets a
//! message, and where a QoS 1/2 message waits when no member here has room for it.
//!
//! # Choosing a member
//! A connected member with room in its queue (by count and bytes), round-robin; with no
//! connected member here, another shard of the group (it may have one), else an offline
//! persistent member with room. Only a delivery not yet handed on (`hops == 0`) looks on
//! another shard: one handed on stays with the members of the shard it reached, so it
//! never bounces back to a shard whose last member just left (where it would find
//! nobody); a shard with no member left hands it on (at most `SHARED_HOPS_MAX` times).
//!
//! # A member that leaves
//! Its unacknowledged and queued deliveries go back to the group (`redistribute`), except
//! a QoS 2 PUBLISH already sent to a session that outlives the connection: that one is
//! completed with the same client when it reconnects (MQTT 5 [MQTT-4.8.2-4]). So do
//! those of a session that ends otherwise (`give_back_shared`): taken over by a clean
//! start or a new connection to a non-persistent session (which may come before the old
//! connection's close is read), expired or deleted while offline.
//!
//! # When every member is full
//! The message is kept for the group in a bounded **backlog** on this shard
//! (`shared_backlog_messages_max`, `shared_backlog_bytes_max`), drained into members as
//! their queues make room (`refill_from_backlogs`, called from every pump). Past the
//! backlog, a logged message is left in its owner's log: the backlog opens a gap in its
//! own `ReplayCursor` (the protocol sessions use, see `session::cursor`) and reads the
//! group's records back from the owner once the backlog is half empty. So a stalled
//! group costs bounded memory and loses nothing that was acknowledged. QoS 0 to a full
//! group is dropped and counted.
//!
//! # Crash safety
//! Messages in a backlog, and the gap's offsets, hold down the replay cursor of every
//! persistent member of the group on this shard (`lower_by_groups`, applied when cursors
//! are logged) and the retention floor (`lower_to_backlogs`). After a `kill -9` each such
//! member replays from its cursor, backlog messages included. A graceful stop gives the
//! closing clean members' deliveries back to the group (possibly on another shard) and,
//! once every shard has done so (`ShardMsg::Drained`), logs every persistent session's
//! cursor once more (`flush_cursors_for_stop`), so the next start replays them.
//! A clean member's queued and unacknowledged deliveries hold the persistent members'
//! cursors here as a backlog does (`survey_sessions`).
//!
//! The group's persistent members may all be on other shards. Then only their cursors
//! can bring back what a backlog or clean member here holds, and they must be held down
//! from the moment this shard takes a message, not from its next cursor flush. The
//! **owner** of a message is the anchor of that coverage: it knows when it sends a shared
//! delivery, and every shard's persistent members hear from it in its send order.
//!
//! - The owner tracks every shared delivery of its log it sends (`send_shared`, also to
//!   itself), per group and target shard, with a per-link sequence number, as
//!   *unconfirmed* (`SentShared`). Nobody else sends one: a shard that cannot keep a
//!   logged delivery (no member left, none connected) gives it back to its owner
//!   (`SharedReturn`), which sends it to another shard of the group as a fresh tracked
//!   send (or back, handed on, to the shard that gave it, if that still has members:
//!   its view of the group's shards may have been older than the owner's); a group's
//!   last member leaving gives its backlog's gaps back the same way (`SharedGapReturn`,
//!   then `SharedGap` from the owner, tracked at the gap's offset).
//! - Every shard, with each cursor flush, reports to every owner (`report_holds`,
//!   `ShardMsg::SharedHolds`) how many of its tracked deliveries it has received so far
//!   and the lowest offset of its log each group's backlog and clean members here hold.
//!   The count confirms the owner's sends up to it (the mesh delivers a link's messages
//!   in order, so the n-th tracked send is the n-th received); the holds replace the
//!   shard's previous report.
//! - The owner's **group floor** is `G = min(unconfirmed offsets, reported holds)` (its
//!   own holds come in its report to itself). When a send lowers G, the owner posts the
//!   new G (`ShardMsg::SharedFloor`) to every other shard before it sends that message,
//!   so before any later message on those links; when a report changes G it posts it
//!   then (a rise may be late: that only keeps cursors lower). A persistent member logs
//!   as its cursor for owner O `min(highest floor seen, lowest held, G seen from O)`
//!   (`lower_by_groups` over `backlog_holds`; O's own members take O's G as it is).
//!
//! Why no message can slip under the cursors: say O sends offset m to shard B. Until
//! then every floor or watermark O sent was at most m (m had not been sent). The send
//! puts m in G, so if G was above m, the G message goes out first on every link; a
//! member on shard C that sees a floor above m has seen G <= m by then. G stays <= m
//! while m is unconfirmed, and B confirms it only in a report taken after m was placed:
//! in a backlog or clean member here (the report holds it, G stays <= m), given back to
//! the owner before the report (tracked again, on the same link, so handled first), or
//! to a persistent member, whose own cursor is then at most m until the client
//! acknowledges it (and all of its cursors logged meanwhile were capped by G <= m). A
//! message moving inside B (a clean member leaving, a backlog refilling a member) is
//! held by B all along. So after a `kill -9` some persistent member's logged cursor is at
//! most m whenever m had not reached a client, and the replay brings it.
//! The cost is one `SharedFloor` message per shard when a group's floor falls (a send
//! after a quiet spell), a report per owner per flush while anything is unconfirmed or
//! held, and cursors that lag a flush interval or two behind a shared group's traffic
//! (a crash replays a little more; QoS 2 releases keep it once per session).

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::{Broker, ShardMsg};
use crate::metrics::Limit;
use crate::mqtt::{ByteStr, QoS};
use crate::router::ShardId;
use crate::session::{Admit, CatchUp, Delivery, Enqueued, LogPos, Message, ReplayCursor};
use crate::session::{Had, Session, SubOptions};

use super::holds::BacklogHolds;
use super::persist::{records, ReplayWant, CATCH_UP_MESSAGES_MAX};
use super::state::SessionTable;
use super::{GroupKey, InterestKey, SessionKey, SessionSlot};

/// Hand a shared delivery on at most this many times when the chosen shard lost its members.
pub(crate) const SHARED_HOPS_MAX: u8 = 2;

/// A group's messages on this shard that no member had room for.
#[derive(Debug)]
pub(crate) struct GroupBacklog {
    /// Oldest first.
    queue: VecDeque<Arc<Message>>,
    /// What `queue` costs (see `Message::cost_bytes`).
    bytes: usize,
    messages_max: usize,
    bytes_max: usize,
    /// Gaps: logged messages the backlog had no room for, read back from their owners.
    replay: ReplayCursor,
    /// What the backlog holds changed since the last cursor flush.
    dirty: bool,
    /// A topic the group's filter matches, to find the group's other shards.
    topic: ByteStr,
    /// `$share/<group>/<filter>`: a member's subscription key.
    member_filter: String,
}

impl GroupBacklog {
    fn new(key: &GroupKey, limits: (usize, usize), topic: ByteStr) -> Self {
        let (messages_max, bytes_max) = limits;
        GroupBacklog {
            member_filter: member_filter(key),
            queue: VecDeque::new(),
            bytes: 0,
            messages_max,
            bytes_max,
            replay: ReplayCursor::default(),
            dirty: false,
            topic,
        }
    }

    /// The bound a message costing `cost` bytes would run into now, if any.
    fn full_by(&self, cost: usize) -> Option<Limit> {
        if self.queue.len() >= self.messages_max {
            Some(Limit::SharedBacklogMessagesMax)
        } else if self.bytes + cost > self.bytes_max {
            Some(Limit::SharedBacklogBytesMax)
        } else {
            None
        }
    }

    fn push(&mut self, msg: Arc<Message>) {
        self.bytes += msg.cost_bytes();
        self.queue.push_back(msg);
        self.dirty = true;
    }

    fn pop(&mut self) -> Option<Arc<Message>> {
        let msg = self.queue.pop_front()?;
        self.bytes -= msg.cost_bytes();
        self.dirty = true;
        Some(msg)
    }

    /// Whether new messages must wait behind this backlog.
    fn is_behind(&self) -> bool {
        !self.queue.is_empty() || self.replay.has_gaps()
    }

    /// For each owner shard (of `shards`), the lowest offset of its log this backlog
    /// still has to deliver: one pass over the queue and the gaps.
    fn lowest_by_owner(&self, shards: usize) -> Vec<Option<u64>> {
        let mut lowest = vec![None; shards];
        let queued = self
            .queue
            .iter()
            .filter_map(|m| m.log.map(|p| (p.shard, p.offset)));
        for (owner, offset) in queued.chain(self.replay.gaps()) {
            if let Some(low) = lowest.get_mut(owner.index()) {
                *low = Some(low.map_or(offset, |l: u64| l.min(offset)));
            }
        }
        lowest
    }
}

/// How a shared delivery reached this shard.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Shards it was handed on by.
    hops: u8,
    /// It came straight from its owner, in the owner's send order.
    first_hand: bool,
    /// The group has a member here (the one leaving included).
    has_members: bool,
}

/// The delivery of `msg` to a member subscribed with `opts`.
fn shared_delivery(group: &Arc<str>, opts: &SubOptions, msg: Arc<Message>) -> Delivery {
    Delivery {
        qos: opts.qos.min(msg.qos),
        retain: msg.retain && opts.retain_as_published,
        subscription_ids: opts.subscription_id.into_iter().collect(),
        share_group: Some(Arc::clone(group)),
        holds_cursor: true,
        msg,
    }
}

impl Broker {
    fn backlog_limits(&self) -> (usize, usize) {
        (
            self.config.shared_backlog_messages_max,
            self.config.shared_backlog_bytes_max,
        )
    }

    /// Delivers to one member of `group` on this shard (see the module doc for which).
    pub(crate) fn deliver_shared(
        &self,
        group: Arc<str>,
        filter: Arc<str>,
        msg: Arc<Message>,
        hops: u8,
    ) {
        self.deliver_shared_except(group, filter, msg, hops, None);
    }

    /// Like `deliver_shared`; `leaving` is never chosen, and a delivery handed on or
    /// redistributed is not in the owner's send order.
    fn deliver_shared_except(
        &self,
        group: Arc<str>,
        filter: Arc<str>,
        msg: Arc<Message>,
        hops: u8,
        leaving: Option<SessionKey>,
    ) {
        let now = Instant::now();
        if msg.is_expired(now) {
            self.probe.messages_expired_total.inc();
            return;
        }
        let mut members = self.subs.shared_scratch.take();
        members.clear();
        // A member going offline stays one: with no other, the group keeps the message
        // for it.
        let mut leaving_stays = false;
        // The group's members are the subscribers of its filter (which the message's
        // topic matched to come here) under its name.
        self.subs.shared.borrow().for_each_at(&filter, |key, opts| {
            if key.group == group {
                if Some(key.session) == leaving {
                    leaving_stays = true;
                } else {
                    members.push((key.session, *opts));
                }
            }
        });
        members.sort_unstable_by_key(|(key, _)| *key);
        let place = Placement {
            hops,
            first_hand: hops == 0 && leaving.is_none(),
            has_members: leaving_stays || !members.is_empty(),
        };
        let key = GroupKey { group, filter };
        self.place_shared(&key, msg, place, &members, now);
        self.subs.shared_scratch.replace(members);
    }

    fn place_shared(
        &self,
        key: &GroupKey,
        msg: Arc<Message>,
        place: Placement,
        members: &[(SessionKey, SubOptions)],
        now: Instant,
    ) {
        let Placement {
            hops,
            first_hand,
            has_members,
        } = place;
        let behind = {
            let mut backlogs = self.groups.backlogs.borrow_mut();
            match backlogs.get_mut(key) {
                None => false,
                Some(b) => {
                    if let Some(pos) = msg.log.filter(|_| first_hand) {
                        // A catch-up read brings (or brought) it.
                        if b.replay.admit(pos) == Admit::FromLog {
                            self.probe.deliveries_deferred_total.inc();
                            return;
                        }
                    }
                    b.is_behind()
                }
            }
        };
        let cost = msg.cost_bytes();
        let mut sessions = self.sessions.slots.borrow_mut();
        let connected = |k: &SessionKey| sessions.get(k).is_some_and(|s| s.conn.is_some());
        let any_connected = members.iter().any(|(k, _)| connected(k));
        if !behind {
            // Only a delivery not yet handed on looks for a connected member on another
            // shard: one handed on stays with the members here (offline or full), so it
            // never bounces back to a shard its last member has just left.
            let pick = if any_connected {
                self.pick_member(key, members, &sessions, cost, true)
            } else if hops == 0 && self.other_group_shard(key, msg.topic.as_str()).is_some() {
                drop(sessions);
                self.hand_on_shared(key, msg, hops);
                return;
            } else {
                self.pick_member(key, members, &sessions, cost, false)
            };
            if let Some((member, opts)) = pick {
                let slot = sessions.get_mut(&member).expect("picked a present member");
                // Only a first-hand delivery arrives in the owner's send order; any other
                // may lie below the member's logged cursor, which it now holds down.
                match msg.log.filter(|_| first_hand) {
                    Some(pos) => slot.session.replay.note(pos),
                    None => slot.session.replay.touch(),
                }
                self.offer(slot, shared_delivery(&key.group, &opts, msg), now);
                return;
            }
        }
        if msg.qos == QoS::AtMostOnce {
            self.probe.messages_dropped_by_qos[msg.qos as usize].inc();
            return;
        }
        if !has_members {
            // The group's last member here left since the delivery was routed: another
            // shard of the group keeps it, if there is one.
            drop(sessions);
            if hops < SHARED_HOPS_MAX {
                self.hand_on_shared(key, msg, hops);
            } else {
                self.probe.messages_dropped_by_qos[msg.qos as usize].inc();
            }
            return;
        }
        self.keep_for_group(key, msg);
        if behind {
            // A member may have room the backlog has not been offered yet (it joined or
            // came back since): pumping it refills it from the backlog.
            if let Some((member, _)) = self.pick_member(key, members, &sessions, cost, true) {
                let slot = sessions.get_mut(&member).expect("picked a present member");
                self.pump(slot, now);
            }
        }
    }

    /// A member with room for `cost` more bytes, round-robin (only connected ones if
    /// `connected_only`).
    fn pick_member(
        &self,
        key: &GroupKey,
        members: &[(SessionKey, SubOptions)],
        sessions: &SessionTable,
        cost: usize,
        connected_only: bool,
    ) -> Option<(SessionKey, SubOptions)> {
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = {
            let mut cursors = self.groups.cursor.borrow_mut();
            let cursor = match cursors.get_mut(key) {
                Some(c) => c,
                None => cursors.entry(key.clone()).or_insert(0),
            };
            *cursor = cursor.wrapping_add(1);
            *cursor % n
        };
        let limits = self.outbound_limits();
        (0..n).map(|i| members[(start + i) % n]).find(|(k, _)| {
            sessions.get(k).is_some_and(|s| {
                (s.conn.is_some() || !connected_only)
                    && s.session.outbound.full_by(cost, &limits).is_none()
            })
        })
    }

    /// No member has room: keep `msg` in the group's backlog, or past its bound leave it
    /// to the owner's log.
    fn keep_for_group(&self, key: &GroupKey, msg: Arc<Message>) {
        let mut backlogs = self.groups.backlogs.borrow_mut();
        let b = match backlogs.get_mut(key) {
            Some(b) => b,
            None => backlogs.entry(key.clone()).or_insert_with(|| {
                GroupBacklog::new(key, self.backlog_limits(), msg.topic.clone())
            }),
        };
        let Some(limit) = b.full_by(msg.cost_bytes()) else {
            b.push(msg);
            self.probe.shared_backlog_messages_current.add(1);
            return;
        };
        self.probe.hit(limit);
        match msg.log {
            Some(pos) => {
                // A delivery out of the owner's order lowers the gap to its offset: the
                // read then brings some messages twice, never skips one.
                b.replay.overflowed(pos);
                // The gap may have been lowered under a read under way: its answer
                // would move the gap past this one, so it is asked again.
                b.replay.forget_requests();
                b.dirty = true;
                self.probe.deliveries_deferred_total.inc();
            }
            // Not logged (no data directory): nothing to read it back from.
            None => self.probe.messages_dropped_by_qos[msg.qos as usize].inc(),
        }
    }

    /// After a pump: moves the backlog of each of the session's groups into its queue
    /// while it has room, and asks for the groups' catch-up reads once the backlogs are
    /// half empty. Returns whether anything was queued.
    pub(crate) fn refill_from_backlogs(&self, slot: &mut SessionSlot) -> bool {
        if self.groups.backlogs.borrow().is_empty() || slot.conn.is_none() {
            return false;
        }
        let mut backlogs = self.groups.backlogs.borrow_mut();
        let mut queued = false;
        let s = &mut slot.session;
        let limits = self.outbound_limits();
        // A shard has few groups; a session may have many subscriptions.
        for (key, b) in backlogs.iter_mut().filter(|(_, b)| b.is_behind()) {
            let Some(opts) = s
                .subscriptions
                .get(b.member_filter.as_str())
                .map(|sub| sub.opts)
            else {
                continue;
            };
            while let Some(front) = b.queue.front() {
                if s.outbound.full_by(front.cost_bytes(), &limits).is_some() {
                    break;
                }
                let msg = b.pop().expect("front exists");
                self.probe.shared_backlog_messages_current.add(-1);
                if let Some(pos) = msg.log {
                    // A catch-up read errs low: what this member holds or PUBREC'd came
                    // through the group already and is not handed to it again.
                    if s.had(pos) != Had::No {
                        continue;
                    }
                }
                let qos = msg.qos;
                match s
                    .outbound
                    .enqueue(shared_delivery(&key.group, &opts, msg), true, &limits)
                {
                    Enqueued::Queued => queued = true,
                    Enqueued::DroppedQos0 | Enqueued::DroppedFull => {
                        self.probe.messages_dropped_by_qos[qos as usize].inc()
                    }
                }
            }
            self.request_group_catch_ups(key, b);
        }
        queued
    }

    fn request_group_catch_ups(&self, key: &GroupKey, b: &mut GroupBacklog) {
        if !b.replay.has_gaps() || b.queue.len() > b.messages_max / 2 || b.bytes > b.bytes_max / 2 {
            return;
        }
        let room = b.messages_max - b.queue.len();
        for CatchUp {
            shard,
            from,
            request,
        } in self.take_catch_ups(&mut b.replay)
        {
            let ask = ShardMsg::SharedCatchUp {
                group: Arc::clone(&key.group),
                filter: Arc::clone(&key.filter),
                from,
                messages_max: room.min(CATCH_UP_MESSAGES_MAX),
                request,
            };
            self.post(shard, ask);
        }
    }

    /// Owner: reads a group's records from the durable part of this shard's log.
    pub(crate) fn on_shared_catch_up(
        self: &Rc<Self>,
        to: ShardId,
        key: GroupKey,
        from: u64,
        messages_max: usize,
        request: u64,
    ) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            let want = ReplayWant {
                // A plain `publish` by the filter; a `publish_for` (a layout change's
                // copy) where it names the group, as one of its members wanted it.
                client_id: records::group_recipient(&format!(
                    "$share/{}/{}",
                    key.group, key.filter
                ))
                .into(),
                from,
                filters: vec![(key.filter.to_string(), 0)],
                messages_max,
                exact: Vec::new(),
            };
            let Some((_, scan)) = shard.read_durable(want).await else {
                return;
            };
            let GroupKey { group, filter } = key;
            let reply = ShardMsg::SharedCatchUpReply {
                group,
                filter,
                request,
                found: scan.found.into_iter().map(|(_, m)| m).collect(),
                resume: scan.resume[0],
                end: scan.end,
            };
            shard.post(to, reply);
        })
        .detach();
    }

    /// The group's shard: keeps what a catch-up read brought and offers it to members.
    pub(crate) fn on_shared_caught_up(
        &self,
        owner: ShardId,
        key: GroupKey,
        request: u64,
        found: Vec<Arc<Message>>,
        resume: Option<u64>,
        end: u64,
    ) {
        {
            let mut backlogs = self.groups.backlogs.borrow_mut();
            let Some(b) = backlogs.get_mut(&key) else {
                return;
            };
            if !b.replay.is_current(owner, request) {
                return;
            }
            let held: HashSet<u64> = b
                .queue
                .iter()
                .filter_map(|m| m.log.filter(|p| p.shard == owner).map(|p| p.offset))
                .collect();
            let mut refused = None;
            for msg in found {
                let offset = msg.log.map_or(0, |p| p.offset);
                // QoS 0 is never left to the log: it went (or was dropped) live.
                if held.contains(&offset) || msg.qos == QoS::AtMostOnce {
                    continue;
                }
                if b.full_by(msg.cost_bytes()).is_some() {
                    refused = Some(offset);
                    break;
                }
                b.push(msg);
                self.probe.shared_backlog_messages_current.add(1);
                self.probe.catch_up_messages_total.inc();
            }
            b.replay.caught_up(owner, resume, end, refused);
            b.dirty = true;
        }
        self.pump_group_members(&key);
    }

    /// Another shard's last member of the group left with messages still in `owner`'s
    /// log: read them here.
    pub(crate) fn on_shared_gap(&self, key: GroupKey, topic: ByteStr, owner: ShardId, from: u64) {
        let mut backlogs = self.groups.backlogs.borrow_mut();
        let b = backlogs
            .entry(key.clone())
            .or_insert_with(|| GroupBacklog::new(&key, self.backlog_limits(), topic));
        b.replay.overflowed(LogPos {
            shard: owner,
            offset: from,
            floor: from,
        });
        b.replay.forget_requests();
        b.dirty = true;
        drop(backlogs);
        self.pump_group_members(&key);
    }

    /// Pumps every connected member of the group here (each pump refills it from the
    /// backlog and asks for the group's catch-up reads).
    fn pump_group_members(&self, key: &GroupKey) {
        let Some(member_filter) = self
            .groups
            .backlogs
            .borrow()
            .get(key)
            .map(|b| b.member_filter.clone())
        else {
            return;
        };
        let now = Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        for slot in sessions.values_mut().filter(|s| s.conn.is_some()) {
            if slot
                .session
                .subscriptions
                .contains_key(member_filter.as_str())
            {
                self.pump(slot, now);
            }
        }
    }

    /// A session is leaving this shard (moving or ending): where it is the group's last
    /// member here, the backlog's offsets become gaps of its own cursor, so a session
    /// that moves reads them from the logs on its new shard.
    pub(crate) fn leave_groups(&self, slot: &mut SessionSlot) {
        let backlogs = self.groups.backlogs.borrow();
        if backlogs.is_empty() {
            return;
        }
        let counts = self.subs.interest_counts.borrow();
        let s = &mut slot.session;
        for (key, b) in backlogs.iter() {
            if !s.subscriptions.contains_key(b.member_filter.as_str()) {
                continue;
            }
            let interest = InterestKey {
                group: Some(Arc::clone(&key.group)),
                filter: Arc::clone(&key.filter),
            };
            if counts.get(&interest).copied().unwrap_or(0) > 1 {
                continue;
            }
            for (owner, offset) in self.all_shards().zip(b.lowest_by_owner(self.mesh.shards())) {
                if let Some(offset) = offset {
                    s.replay.overflowed(LogPos {
                        shard: owner,
                        offset,
                        floor: offset,
                    });
                }
            }
        }
    }

    /// The group's last member on this shard left: its backlog goes to another shard of
    /// the group, or, with none left anywhere, is dropped (and counted).
    pub(crate) fn release_group(&self, key: GroupKey) {
        self.groups.cursor.borrow_mut().remove(&key);
        let Some(mut b) = self.groups.backlogs.borrow_mut().remove(&key) else {
            return;
        };
        // The gaps and messages go back to their owners, which give them to another
        // shard of the group (see "Crash safety" in the module doc).
        for (owner, from) in b.replay.gaps().collect::<Vec<_>>() {
            if owner == self.id {
                self.give_gap(self.id, key.clone(), b.topic.clone(), from);
            } else {
                let GroupKey { group, filter } = key.clone();
                let back = ShardMsg::SharedGapReturn {
                    group,
                    filter,
                    topic: b.topic.clone(),
                    from,
                };
                self.post(owner, back);
            }
        }
        while let Some(msg) = b.pop() {
            self.probe.shared_backlog_messages_current.add(-1);
            self.hand_on_shared(&key, msg, 0);
        }
    }

    /// Another shard holding members of the group, if any (`topic` is one its filter
    /// matches).
    fn other_group_shard(&self, key: &GroupKey, topic: &str) -> Option<ShardId> {
        self.group_shard_besides(key, topic, self.id, false)
    }

    /// A shard other than `besides` holding members of the group, if any; else, if
    /// `or_besides`, `besides` itself while it holds members of the group.
    fn group_shard_besides(
        &self,
        key: &GroupKey,
        topic: &str,
        besides: ShardId,
        or_besides: bool,
    ) -> Option<ShardId> {
        let mut route = self.subs.route.borrow_mut();
        self.subs.interest.borrow().route(topic, &mut route);
        let shards = route
            .groups
            .iter()
            .filter(|g| *g.group == *key.group && *g.filter == *key.filter)
            .flat_map(|g| g.shards.iter());
        let mut holds_besides = false;
        for shard in shards {
            if shard != besides {
                return Some(shard);
            }
            holds_besides = true;
        }
        (or_besides && holds_besides).then_some(besides)
    }

    /// Gives a delivery this shard cannot keep to another shard of the group. A logged
    /// one goes back to its owner, which sends it on as a fresh shared delivery it
    /// tracks (see "Crash safety" in the module doc).
    fn hand_on_shared(&self, key: &GroupKey, msg: Arc<Message>, hops: u8) {
        if let Some(pos) = msg.log {
            let owner = pos.shard;
            if owner == self.id {
                self.resend_shared(self.id, key.clone(), msg, hops);
            } else {
                let back = ShardMsg::SharedReturn {
                    group: Arc::clone(&key.group),
                    filter: Arc::clone(&key.filter),
                    msg,
                    hops,
                };
                self.post(owner, back);
            }
            return;
        }
        match self.other_group_shard(key, msg.topic.as_str()) {
            Some(next) => self.post(
                next,
                ShardMsg::DeliverShared {
                    group: Arc::clone(&key.group),
                    filter: Arc::clone(&key.filter),
                    msg,
                    hops: hops + 1,
                },
            ),
            None => self.probe.messages_dropped_by_qos[msg.qos as usize].inc(),
        }
    }

    /// Gives the unacknowledged shared deliveries of a member that left to other members.
    pub(crate) fn redistribute(&self, deliveries: Vec<Delivery>, leaving: Option<SessionKey>) {
        for d in deliveries {
            let Some(group) = d.share_group.clone() else {
                continue;
            };
            let filter = self.find_group_filter(&group, d.msg.topic.as_str());
            match filter {
                Some(filter) => self.deliver_shared_except(group, filter, d.msg, 0, leaving),
                None => self.probe.messages_dropped_by_qos[d.qos as usize].inc(),
            }
        }
    }

    /// A session that ends gives what it holds for its groups to other members: its
    /// unacknowledged and queued deliveries, except a QoS 2 PUBLISH a persistent session
    /// already sent, which goes to no other client ([MQTT-4.8.2-5]; `Broker::let_go`
    /// releases it). `key` is the session's key on this shard, if it had one.
    pub(crate) fn give_back_shared(&self, session: &mut Session, key: Option<SessionKey>) {
        let shared = session.outbound.take_shared(session.is_persistent());
        if !shared.is_empty() {
            self.redistribute(shared, key);
        }
    }

    fn find_group_filter(&self, group: &Arc<str>, topic: &str) -> Option<Arc<str>> {
        let mut route = self.subs.route.borrow_mut();
        self.subs.interest.borrow().route(topic, &mut route);
        route
            .groups
            .iter()
            .find(|g| *g.group == **group)
            .map(|g| Arc::clone(&g.filter))
    }

    /// What every backlog here still has to deliver, what the clean members here hold for
    /// their groups (see `survey_sessions`), and the group floors of every owner (this
    /// one's as they are now, the others' as they posted them, see "Crash safety").
    pub(crate) fn backlog_holds(&self) -> BacklogHolds {
        self.backlog_holds_with(&self.survey_sessions().clean_holds)
    }

    /// [`backlog_holds`](Self::backlog_holds) with the clean members' holds `clean`
    /// already gathered.
    pub(crate) fn backlog_holds_with(&self, clean: &BacklogHolds) -> BacklogHolds {
        let mut holds = self.local_holds(clean);
        let shards = self.mesh.shards();
        let at = |owner: ShardId, floor: u64| {
            let mut lowest = vec![None; shards.max(owner.index() + 1)];
            lowest[owner.index()] = Some(floor);
            lowest
        };
        for (key, g) in self.groups.sent.borrow().groups.iter() {
            let floor = g.floor();
            if floor != u64::MAX {
                holds.push((member_filter(key), at(self.id, floor)));
            }
        }
        for (&owner, floors) in self.groups.floors.borrow().iter() {
            if owner != self.id {
                holds.extend(
                    floors
                        .iter()
                        .map(|(f, &floor)| (f.clone(), at(owner, floor))),
                );
            }
        }
        holds
    }

    /// What the backlogs of this shard hold for their groups, and its clean members
    /// (`clean`, see `survey_sessions`).
    fn local_holds(&self, clean: &BacklogHolds) -> BacklogHolds {
        let shards = self.mesh.shards();
        let mut holds: BacklogHolds = self
            .groups
            .backlogs
            .borrow()
            .values()
            .map(|b| (b.member_filter.clone(), b.lowest_by_owner(shards)))
            .collect();
        holds.extend(clean.iter().cloned());
        holds
    }

    /// Owner: sends a shared delivery of `msg` to `target` (this shard too), tracking it
    /// when it is of this shard's log. The caller awaits nothing between choosing to send
    /// and this call, so the tracked sends on a link are counted in the order the target
    /// receives them.
    pub(crate) fn send_shared(&self, target: ShardId, key: GroupKey, msg: Arc<Message>, hops: u8) {
        if let Some(pos) = msg.log.filter(|p| p.shard == self.id) {
            self.track_shared(target, &key, pos.offset);
        }
        let GroupKey { group, filter } = key;
        let deliver = ShardMsg::DeliverShared {
            group,
            filter,
            msg,
            hops,
        };
        self.post(target, deliver);
    }

    /// Owner: a shared delivery of `offset` (or a gap from it) goes to `target`. It is
    /// unconfirmed until `target` reports having received it; if it lowers the group's
    /// floor, every other shard learns so before any later message of this one.
    fn track_shared(&self, target: ShardId, key: &GroupKey, offset: u64) {
        let shards = self.mesh.shards();
        let fell = {
            let mut sent = self.groups.sent.borrow_mut();
            let sent = &mut *sent;
            if sent.sent.len() < shards {
                sent.sent.resize(shards, 0);
            }
            sent.sent[target.index()] += 1;
            let seq = sent.sent[target.index()];
            let g = match sent.groups.get_mut(key) {
                Some(g) => g,
                None => sent
                    .groups
                    .entry(key.clone())
                    .or_insert_with(|| GroupSent::new(shards)),
            };
            g.unconfirmed[target.index()].push_back((seq, offset));
            let fell = offset < g.posted;
            if fell {
                g.posted = offset;
            }
            fell
        };
        if fell {
            self.post_floors(vec![(member_filter(key), offset)]);
        }
    }

    /// Owner: posts changed group floors to every other shard (and marks the members
    /// here, whose cursors take this shard's floors as they are at each flush).
    fn post_floors(&self, floors: Vec<(String, u64)>) {
        self.groups
            .floors_changed
            .borrow_mut()
            .extend(floors.iter().map(|(f, _)| f.clone()));
        for peer in self.all_shards().filter(|&p| p != self.id) {
            let floors = floors.clone();
            self.post(peer, ShardMsg::SharedFloor { floors });
        }
    }

    /// Counts a shared delivery of `owner`'s log that `owner` itself sent here (the only
    /// ones it tracks): the next report to it confirms them.
    pub(crate) fn count_shared_received(&self, from: ShardId, owner: Option<ShardId>) {
        if owner != Some(from) {
            return;
        }
        let mut r = self.groups.received.borrow_mut();
        let from = from.index();
        if r.received.len() <= from {
            r.received.resize(from + 1, 0);
        }
        r.received[from] += 1;
    }

    /// Tells every owner, with each cursor flush, how many of its shared deliveries this
    /// shard has received and what of its log the backlogs and clean members here hold
    /// (`local`): only the group's persistent members can bring those back after a
    /// crash, and the owner's floor holds their cursors down (see "Crash safety").
    fn report_holds(&self, local: &BacklogHolds) {
        let shards = self.mesh.shards();
        let mut r = self.groups.received.borrow_mut();
        let r = &mut *r;
        if r.received.len() < shards {
            r.received.resize(shards, 0);
        }
        if r.reported.len() < shards {
            r.reported.resize(shards, (0, false));
        }
        for owner in ShardId::all(shards) {
            let mut holds: Vec<(String, u64)> = Vec::new();
            for (filter, lowest) in local {
                let Some(Some(low)) = lowest.get(owner.index()) else {
                    continue;
                };
                match holds.iter_mut().find(|(f, _)| f == filter) {
                    Some(held) => held.1 = held.1.min(*low),
                    None => holds.push((filter.clone(), *low)),
                }
            }
            let received = r.received[owner.index()];
            let (last_received, last_held) = r.reported[owner.index()];
            if received == last_received && holds.is_empty() && !last_held {
                continue;
            }
            r.reported[owner.index()] = (received, !holds.is_empty());
            self.post(owner, ShardMsg::SharedHolds { received, holds });
        }
    }

    /// Owner: a shard's report (see `report_holds`) confirms the shared deliveries it
    /// received and replaces what it held; the group floors that changed go out.
    pub(crate) fn on_shared_holds(&self, from: ShardId, received: u64, holds: Vec<(String, u64)>) {
        let shards = self.mesh.shards();
        let mut changed = Vec::new();
        {
            let mut sent = self.groups.sent.borrow_mut();
            for (filter, _) in &holds {
                if let Some(key) = group_key(filter) {
                    sent.groups
                        .entry(key)
                        .or_insert_with(|| GroupSent::new(shards));
                }
            }
            sent.groups.retain(|key, g| {
                if let Some(unconfirmed) = g.unconfirmed.get_mut(from.index()) {
                    while unconfirmed.front().is_some_and(|&(seq, _)| seq <= received) {
                        unconfirmed.pop_front();
                    }
                }
                if g.reported.len() <= from.index() {
                    g.reported.resize(from.index() + 1, None);
                }
                g.reported[from.index()] = holds
                    .iter()
                    .filter(|(f, _)| is_member_filter(f, key))
                    .map(|&(_, low)| low)
                    .min();
                let floor = g.floor();
                if floor != g.posted {
                    g.posted = floor;
                    changed.push((member_filter(key), floor));
                }
                // Nothing left to hold for the group: forget it (its floor went out).
                floor != u64::MAX
            });
        }
        if !changed.is_empty() {
            self.post_floors(changed);
        }
    }

    /// An owner's group floors (see `post_floors`), applied at the next cursor flush.
    pub(crate) fn on_shared_floor(&self, owner: ShardId, floors: Vec<(String, u64)>) {
        let mut all = self.groups.floors.borrow_mut();
        let seen = all.entry(owner).or_default();
        let mut changed = self.groups.floors_changed.borrow_mut();
        for (filter, floor) in floors {
            if floor == u64::MAX {
                seen.remove(&filter);
            } else {
                seen.insert(filter.clone(), floor);
            }
            changed.push(filter);
        }
    }

    /// Owner: a shard gave back a logged delivery it could not keep (`hand_on_shared`):
    /// it goes to another shard of the group than that one, as a fresh tracked send.
    pub(crate) fn on_shared_return(
        &self,
        from: ShardId,
        key: GroupKey,
        msg: Arc<Message>,
        hops: u8,
    ) {
        self.resend_shared(from, key, msg, hops);
    }

    /// Another shard of the group than `from`, else `from` itself while it still holds
    /// members of the group. `from` hands a delivery on when it sees no connected member
    /// of its own and another shard of the group, and that view may be older than this
    /// one: the other shard's last member may have left meanwhile (a graceful stop
    /// closes every connection at once). The members `from` still has (a persistent one
    /// offline is still a member, MQTT 5 §4.8.2) then keep it: it comes back handed on,
    /// so `from` does not look further (see `place_shared`).
    fn resend_shared(&self, from: ShardId, key: GroupKey, msg: Arc<Message>, hops: u8) {
        match self.group_shard_besides(&key, msg.topic.as_str(), from, true) {
            Some(next) => self.send_shared(next, key, msg, hops + 1),
            None => self.probe.messages_dropped_by_qos[msg.qos as usize].inc(),
        }
    }

    /// Owner: a shard's last member of the group left with the group's messages from
    /// `offset` on still in this shard's log (`release_group`).
    pub(crate) fn on_shared_gap_return(
        &self,
        from: ShardId,
        key: GroupKey,
        topic: ByteStr,
        offset: u64,
    ) {
        self.give_gap(from, key, topic, offset);
    }

    /// Owner: another shard of the group than `from` reads the group's messages from
    /// `offset` on (tracked like a shared delivery of `offset`).
    fn give_gap(&self, from: ShardId, key: GroupKey, topic: ByteStr, offset: u64) {
        match self.group_shard_besides(&key, topic.as_str(), from, false) {
            Some(to) => {
                self.track_shared(to, &key, offset);
                let GroupKey { group, filter } = key;
                let gap = ShardMsg::SharedGap {
                    group,
                    filter,
                    topic,
                    owner: self.id,
                    from: offset,
                };
                self.post(to, gap);
            }
            None => tracing::warn!(
                group = &*key.group,
                owner = self.id.index(),
                from = offset,
                "a shared group's last member left with messages still in the log"
            ),
        }
    }

    /// One look at the sessions the cursor flush has anything to do for (which runs
    /// every `CURSOR_FLUSH_MS`; the watched ones, see `Sessions::watched`, which this
    /// look also prunes): the clean members' holds, and whether the flush has any
    /// session to visit at all.
    ///
    /// A clean member's queued and unacknowledged shared deliveries are in no log of its
    /// own: after a crash only a persistent member's cursor can bring them back, so they
    /// hold down those of the group's persistent members here as a backlog does. Per
    /// clean session holding any, each of its shared subscription keys with the lowest
    /// offset per owner.
    pub(crate) fn survey_sessions(&self) -> SessionSurvey {
        let shards = self.mesh.shards();
        let mut holds = Vec::new();
        let (mut any_logged, mut any_released) = (false, false);
        let slots = self.sessions.slots.borrow();
        #[cfg(debug_assertions)]
        self.check_watched(&slots);
        self.sessions.watched.borrow_mut().retain(|key| {
            let Some(slot) = slots.get(key) else {
                return false;
            };
            let s = &slot.session;
            if !s.flush_looks_at() {
                return false;
            }
            any_logged |= s.logged;
            any_released |= s.replay.released_len() > 0;
            if s.logged || s.outbound.queued() + s.outbound.inflight() == 0 {
                return true;
            }
            let mut lowest = vec![u64::MAX; shards];
            s.outbound.lowest_shared(&mut lowest);
            if lowest.iter().all(|&l| l == u64::MAX) {
                return true;
            }
            let lowest: Vec<Option<u64>> = lowest
                .into_iter()
                .map(|l| (l != u64::MAX).then_some(l))
                .collect();
            for filter in s.subscriptions.keys().filter(|f| f.starts_with("$share/")) {
                holds.push((filter.to_string(), lowest.clone()));
            }
            true
        });
        SessionSurvey {
            clean_holds: holds,
            any_logged,
            any_released,
        }
    }

    /// Retention: the logs must keep what any backlog has yet to deliver (`mins` per
    /// owner shard).
    pub(crate) fn lower_to_backlogs(&self, mins: &mut [u64]) {
        for (_, lowest) in self.backlog_holds() {
            for (min, low) in mins.iter_mut().zip(lowest) {
                if let Some(low) = low {
                    *min = (*min).min(low);
                }
            }
        }
    }

    /// Marks the cursors of every member of a backlog that changed since the last
    /// flush, of a group a clean member here holds deliveries for, or of a group whose
    /// floor changed, so they are logged again with those holds; and reports this
    /// shard's holds to the owners (see `report_holds`).
    pub(crate) fn touch_backlog_members(&self, clean: &BacklogHolds) {
        let local = self.local_holds(clean);
        self.report_holds(&local);
        let mut changed: Vec<String> = self
            .groups
            .backlogs
            .borrow_mut()
            .values_mut()
            .filter_map(|b| std::mem::take(&mut b.dirty).then(|| b.member_filter.clone()))
            .collect();
        changed.extend(clean.iter().map(|(f, _)| f.clone()));
        changed.append(&mut self.groups.floors_changed.borrow_mut());
        if changed.is_empty() {
            return;
        }
        // Only members have these filters, and every member is watched.
        let watched = self.sessions.watched.borrow();
        let mut slots = self.sessions.slots.borrow_mut();
        for key in watched.iter() {
            let Some(slot) = slots.get_mut(key) else {
                continue;
            };
            let s = &mut slot.session;
            if changed
                .iter()
                .any(|f| s.subscriptions.contains_key(f.as_str()))
            {
                s.replay.touch();
            }
        }
    }

    /// Debug builds: every session the flush has anything to do for is on its list (see
    /// `Sessions::watched`); a change that forgot to put one there fails here, in the
    /// tests, rather than as a cursor never logged.
    #[cfg(debug_assertions)]
    fn check_watched(&self, slots: &SessionTable) {
        let watched = self.sessions.watched.borrow();
        for (key, slot) in slots.iter() {
            assert!(
                !slot.session.flush_looks_at() || watched.contains(&key),
                "session {key} of {:?} has something for the cursor flush but is not watched",
                slot.session.client_id.as_str()
            );
        }
    }
}

/// What [`Broker::survey_sessions`] found.
pub(crate) struct SessionSurvey {
    /// The clean members' holds.
    pub(crate) clean_holds: BacklogHolds,
    /// A session here is logged: its cursors may have changed.
    pub(crate) any_logged: bool,
    /// A session here keeps QoS 2 releases that may be pruned.
    pub(crate) any_released: bool,
}

/// Owner: the shared deliveries of this shard's log sent and not yet confirmed, and what
/// the shards last reported holding of it, per group (see "Crash safety").
#[derive(Debug, Default)]
pub(crate) struct SentShared {
    /// Per target shard: the tracked shared deliveries sent on the link so far.
    sent: Vec<u64>,
    groups: HashMap<GroupKey, GroupSent>,
}

/// One group's part of [`SentShared`].
#[derive(Debug)]
struct GroupSent {
    /// Per target shard: `(link sequence number, offset)` sent and not yet confirmed.
    unconfirmed: Vec<VecDeque<(u64, u64)>>,
    /// Per shard: the lowest offset of this log its last report held for the group.
    reported: Vec<Option<u64>>,
    /// The floor last posted to the other shards (`u64::MAX`: none); equal to
    /// [`GroupSent::floor`] whenever no call is under way.
    posted: u64,
}

impl GroupSent {
    fn new(shards: usize) -> Self {
        GroupSent {
            unconfirmed: vec![VecDeque::new(); shards],
            reported: vec![None; shards],
            posted: u64::MAX,
        }
    }

    /// The group's floor: the lowest offset of this log it may still need that no
    /// persistent member holds (`u64::MAX`: none).
    fn floor(&self) -> u64 {
        let unconfirmed = self.unconfirmed.iter().flatten().map(|&(_, offset)| offset);
        let reported = self.reported.iter().flatten().copied();
        unconfirmed.chain(reported).min().unwrap_or(u64::MAX)
    }
}

/// Per owner shard: the shared deliveries received from it, and what the last report to
/// it said (the count, and whether it held anything).
#[derive(Debug, Default)]
pub(crate) struct ReceivedShared {
    received: Vec<u64>,
    reported: Vec<(u64, bool)>,
}

/// `$share/<group>/<filter>`: a member's subscription key.
fn member_filter(key: &GroupKey) -> String {
    format!("$share/{}/{}", key.group, key.filter)
}

/// Whether `member_filter` is the subscription key of the group `key`.
fn is_member_filter(member_filter: &str, key: &GroupKey) -> bool {
    member_filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.strip_prefix(&*key.group))
        .and_then(|rest| rest.strip_prefix('/'))
        == Some(&*key.filter)
}

/// The group a member's subscription key names.
fn group_key(member_filter: &str) -> Option<GroupKey> {
    let (group, filter) = member_filter.strip_prefix("$share/")?.split_once('/')?;
    Some(GroupKey {
        group: Arc::from(group),
        filter: Arc::from(filter),
    })
}
