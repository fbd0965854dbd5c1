//! Restoring a home's persistent sessions at start: offline on the home, with their
//! subscriptions indexed and every message they had not acknowledged replayed.
//!
//! A replayed message that does not fit a session's queue opens a gap (read back from
//! the log later, see `catchup`); a shared one goes to its group instead (see `shared`):
//! another member, the group's backlog or, past that, the backlog's own gap.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use crate::broker::{Broker, ConnRef, ShardMsg};
use crate::mqtt::{ClientId, QoS};
use crate::router::{parse_filter, ShardId};
use crate::session::{subscribed_from, Delivery, Had, LogPos, Session, Will, EXPIRY_NEVER};

use super::super::holds::lower_by_groups;
use super::super::{Reply, SessionSlot};
use super::records::{self, SessionRecord, WillRecord};
use super::replay::replayed_delivery;
use super::{unix_ms, ArmedWills, RecoveredSession, ReplayWant};

impl Broker {
    /// Home shard at start: rebuilds its persistent sessions (offline, on this shard),
    /// indexes their subscriptions and replays what each had not acknowledged. Returns
    /// the wills that fell due while the broker was down, or with the crash (`cut`: the
    /// wills of connections it cut), to publish once every shard serves; what becomes of
    /// each is durable first, so that no will is published twice.
    pub(crate) async fn restore_sessions(
        self: &Rc<Self>,
        mut recovered: HashMap<String, RecoveredSession>,
        cut: ArmedWills,
    ) -> Vec<(ClientId, Will)> {
        let now_ms = unix_ms();
        let mut due_wills = Vec::new();
        let mut restored = Vec::new();
        // A cut connection's will, as if the connection had closed now: a persistent
        // session it was connected to holds it (its delay counting from now); with no
        // session left, it is due.
        let mut cut_done = Vec::new();
        let mut will_from_cut = HashSet::new();
        for ((client, conn), will) in cut {
            match recovered.get_mut(&client) {
                Some(rec) if rec.detached_at_ms.is_none() => {
                    rec.will = Some(will);
                    will_from_cut.insert(client.clone());
                }
                // Detached since: its `session_detach` says what became of the will.
                Some(_) => {}
                None => due_wills.push((records::client_id(&client), will)),
            }
            cut_done.push((client, conn));
        }
        for (client, rec) in recovered {
            let client_id = records::client_id(&client);
            let detached_at = rec.detached_at_ms.unwrap_or(now_ms).min(now_ms);
            let offline_ms = now_ms - detached_at;
            let expired =
                rec.expiry_secs != EXPIRY_NEVER && offline_ms >= u64::from(rec.expiry_secs) * 1000;
            if expired {
                if let Some(will) = rec.will {
                    due_wills.push((client_id.clone(), will));
                }
                self.end_logged_at_home_now(&client_id).await;
                continue;
            }
            let key = self.install_restored(&client_id, &rec);
            restored.push((key, client_id, rec, offline_ms));
        }
        self.replay_all(&restored).await;
        self.log_restored_cursors(&restored).await;
        let mut waits = Vec::new();
        for (key, client_id, rec, offline_ms) in restored {
            if let Some(will) = rec.will {
                let left_ms = u64::from(will.delay_secs.min(rec.expiry_secs)) * 1000;
                let due = left_ms <= offline_ms;
                if let Some(slot) = self.sessions.slots.borrow_mut().get_mut(&key) {
                    slot.session.will = (!due).then(|| Box::new(will.clone()));
                }
                if due || will_from_cut.contains(client_id.as_str()) {
                    // The session's record now says whether a will still waits in it.
                    if let Some((client, record)) = self.detach_record(key, offline_ms) {
                        waits.extend(self.log_session(client.as_str(), &record, true));
                    }
                }
                if due {
                    due_wills.push((client_id.clone(), will));
                } else {
                    self.schedule_will_ms(key, 0, left_ms - offline_ms);
                }
            }
            if rec.expiry_secs != EXPIRY_NEVER {
                let left_ms = u64::from(rec.expiry_secs) * 1000 - offline_ms;
                self.schedule_expiry_ms(key, 0, left_ms);
            }
        }
        for (client, conn) in cut_done {
            waits.extend(self.log_session_record(
                &client,
                records::encode_will(&client, &WillRecord::Done { conn }),
                true,
            ));
        }
        if !self.all_logged(waits).await {
            tracing::error!(
                shard = self.id.index(),
                "what became of a will could not be logged: a crash may publish it again"
            );
        }
        due_wills
    }

    async fn end_logged_at_home_now(self: &Rc<Self>, client_id: &ClientId) {
        let (kind, body) = records::encode(client_id.as_str(), &SessionRecord::End);
        self.on_session_log(self.id, kind.0, body, None).await;
    }

    fn install_restored(&self, client_id: &ClientId, rec: &RecoveredSession) -> u64 {
        let mut session = Session::new(
            client_id.clone(),
            rec.protocol,
            rec.expiry_secs,
            self.outbound_limits(),
        );
        session.logged = true;
        let released = rec.released_kept(self.config.session_qos2_released_max);
        let sent = rec.sent_above_cursors();
        // Their exchanges come back into the window only when a replay or catch-up read
        // meets them: until then no other message takes their ids (see
        // `Outbound::reserve`).
        for (&at, &pid) in &released {
            session.outbound.reserve(pid, at, true);
        }
        for (&at, &pid) in &sent {
            session.outbound.reserve(pid, at, false);
        }
        session.replay.restore_released(released);
        session.replay.restore_sent(sent);
        for (filter, (opts, from)) in &rec.subscriptions {
            session.subscriptions.insert(filter, *opts, from);
        }
        let me = ConnRef {
            shard: self.id,
            token: 0,
        };
        let key = self
            .sessions
            .slots
            .borrow_mut()
            .insert_new(Box::new(SessionSlot::new(session, None, me.token)));
        {
            let mut by_client = self.sessions.by_client.borrow_mut();
            by_client.insert(client_id.clone(), key);
            by_client.hold(client_id.clone(), me);
        }
        self.sessions
            .persisted
            .borrow_mut()
            .insert(client_id.as_str().to_string());
        self.sessions.watch_key(key);
        self.probe.sessions_current.add(1);
        key
    }

    /// Indexes the restored sessions' subscriptions and queues what every owner replays.
    async fn replay_all(self: &Rc<Self>, restored: &[(u64, ClientId, RecoveredSession, u64)]) {
        let mut acks = Vec::new();
        for (key, _, rec, _) in restored {
            for (filter, (opts, _)) in &rec.subscriptions {
                acks.extend(self.index_subscription(*key, filter, *opts));
            }
        }
        for ack in acks {
            self.requests.replies(ack).await;
        }
        if restored.is_empty() {
            return;
        }
        let shards = self.mesh.shards();
        let id = self.requests.open(shards);
        for owner in ShardId::all(shards) {
            let wants = restored
                .iter()
                .map(|(_, client_id, rec, _)| ReplayWant {
                    client_id: client_id.clone(),
                    from: rec.cursors.get(&owner).copied().unwrap_or(0),
                    filters: rec
                        .subscriptions
                        .iter()
                        .filter_map(|(f, (_, from))| {
                            let plain = parse_filter(f, &self.topic_limits()).ok()?.filter;
                            Some((plain.to_string(), subscribed_from(from, owner)))
                        })
                        .collect(),
                    messages_max: self.config.session_queue_messages_max,
                    exact: rec.sent_offsets_on(owner),
                })
                .collect();
            self.post(owner, ShardMsg::Replay { id, wants });
        }
        let now = Instant::now();
        for reply in self.requests.replies(id).await {
            let Reply::Replayed {
                shard,
                end,
                found,
                resume,
            } = reply
            else {
                continue;
            };
            let mut sessions = self.sessions.slots.borrow_mut();
            // Shared deliveries a member has no room for, in offset order.
            let mut for_groups: Vec<(u64, Delivery)> = Vec::new();
            let mut spilled = HashSet::new();
            for (want, msg) in found {
                let key = restored[want as usize].0;
                let Some(slot) = sessions.get_mut(&key) else {
                    continue;
                };
                let Some(delivery) = replayed_delivery(&slot.session, msg)
                    .and_then(|d| self.settle_released(&mut slot.session, d))
                else {
                    continue;
                };
                // A shared delivery has no gap of the member's own to fall back on: what
                // does not fit (or would overtake one that did not) goes to the group,
                // which has room in another member, its backlog, or the log.
                let full = slot
                    .session
                    .outbound
                    .full_by(delivery.msg.cost_bytes(), &self.outbound_limits());
                if delivery.share_group.is_some()
                    && delivery.qos != QoS::AtMostOnce
                    && (spilled.contains(&key) || full.is_some())
                {
                    spilled.insert(key);
                    for_groups.push((key, delivery));
                    continue;
                }
                self.offer(slot, delivery, now);
            }
            for ((key, ..), resume) in restored.iter().zip(resume) {
                let Some(slot) = sessions.get_mut(key) else {
                    continue;
                };
                if let Some(offset) = resume {
                    // More than the queue holds: the rest is read from the log later.
                    slot.session.replay.overflowed(LogPos {
                        shard,
                        offset,
                        floor: offset,
                    });
                }
                slot.session.replay.raise(shard, end);
            }
            drop(sessions);
            for (key, delivery) in for_groups {
                // The member stays one (it is never picked: it is full).
                self.redistribute(vec![delivery], Some(key));
            }
        }
    }

    /// Makes the restored sessions' cursors durable before any shard serves: a cursor
    /// recovered past an owner's end (see `scan_for_replay`) must not outlive this start,
    /// or the records that now take those offsets would be skipped after the next crash.
    /// What the groups' backlogs took from the replay holds them down too.
    async fn log_restored_cursors(&self, restored: &[(u64, ClientId, RecoveredSession, u64)]) {
        let holds = self.backlog_holds();
        let mut waits = Vec::new();
        for (key, client_id, ..) in restored {
            let cursors = {
                let mut sessions = self.sessions.slots.borrow_mut();
                let Some(slot) = sessions.get_mut(key) else {
                    continue;
                };
                let s = &mut slot.session;
                s.replay.touch();
                let mut cursors = s.replay.take_changed(&s.outbound).unwrap_or_default();
                lower_by_groups(&holds, s, &mut cursors);
                cursors
            };
            let record = SessionRecord::Cursor(cursors);
            waits.extend(self.log_session(client_id.as_str(), &record, true));
        }
        if !self.all_logged(waits).await {
            tracing::error!(
                shard = self.id.index(),
                "a restored session's cursor could not be logged"
            );
        }
    }

    /// A replayed (or caught-up) delivery the client PUBREC'd (in this process, or with
    /// its release logged before the restart) is never sent as a PUBLISH again: still
    /// awaiting PUBCOMP, it waits for it under its old packet id (if the session does not
    /// hold that exchange already), and its PUBREL is resent on reconnect (MQTT 5 §4.4);
    /// completed, it is dropped. One that was in flight when the broker stopped
    /// (`qos2_sent`) goes back into the in-flight window under its old packet id, its
    /// PUBLISH resent with DUP on reconnect. One the session still holds (queued or in
    /// flight) is dropped too (see `Session::had`). Any other delivery is returned, to be
    /// offered.
    pub(crate) fn settle_released(
        &self,
        session: &mut Session,
        delivery: Delivery,
    ) -> Option<Delivery> {
        self.settle_released_into(session, delivery, &mut Vec::new())
    }

    /// [`Broker::settle_released`], pushing the packet id of an exchange it restored into
    /// the in-flight window onto `restored`: a session already connected has had its
    /// reconnect's resends, so the caller sends that exchange's PUBREL (or PUBLISH with
    /// DUP) itself (see `catchup`).
    pub(crate) fn settle_released_into(
        &self,
        session: &mut Session,
        delivery: Delivery,
        restored: &mut Vec<u16>,
    ) -> Option<Delivery> {
        let Some(pos) = delivery.msg.log else {
            return Some(delivery);
        };
        match session.had(pos) {
            Had::No => match session.replay.take_sent(pos) {
                None => Some(delivery),
                Some(pid) => match session.outbound.restore_sent(delivery, pid) {
                    Ok(()) => {
                        self.probe.inflight_current.add(1);
                        restored.push(pid);
                        None
                    }
                    Err(delivery) => Some(delivery),
                },
            },
            Had::Held | Had::Released(0) => None,
            Had::Released(pid) => {
                if session.outbound.restore_released(delivery, pid) {
                    self.probe.inflight_current.add(1);
                    restored.push(pid);
                }
                None
            }
        }
    }

    /// Waits for the `log_session` requests `waits`; whether every record is durable.
    pub(super) async fn all_logged(&self, waits: Vec<u64>) -> bool {
        let mut all = true;
        for id in waits {
            all &= matches!(
                self.requests.replies(id).await.pop(),
                Some(Reply::Logged(true))
            );
        }
        all
    }
}
