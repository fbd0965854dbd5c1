//! Catching a session up from the log: the logged messages its queue had no room for
//! are read back from their owner's log when the queue drains (see
//! `session::ReplayCursor` for the protocol and why no live message is lost or doubled).
//!
//! A read asks for at most `CATCH_UP_MESSAGES_MAX` messages (and no more than the queue
//! has room for), and covers only records already as durable as the fsync policy
//! promises, so a QoS 2 message is never delivered before it could be acknowledged.
//!
//! A read that fails (an I/O error, a damaged frame, a poisoned log) answers where it
//! stopped as the place to resume, never as the log's end: the gap stays open there and
//! the read is asked for again. The owner holds such an answer back for
//! `CATCH_UP_RETRY_MS`, which paces the retries of a log that keeps failing.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::{Broker, ShardMsg};
use crate::mqtt::{ClientId, QoS};
use crate::router::{parse_filter, ShardId};
use crate::session::{CatchUp, Message, ReplayCursor, Session};
use crate::storage::Offset;

use super::persist::{
    replayed_delivery, scan_for_replay, ReplayScan, ReplayWant, CATCH_UP_MESSAGES_MAX,
};
use super::SessionSlot;

/// How long an owner holds back the answer of a failed catch-up read (the retry pace).
pub const CATCH_UP_RETRY_MS: u64 = 1000;

impl Broker {
    /// After a pump: if the session has gaps and its queue room again, asks the owners.
    pub(crate) fn request_catch_ups(&self, slot: &mut SessionSlot) {
        let s = &mut slot.session;
        if slot.conn.is_none() || !s.replay.has_gaps() {
            return;
        }
        // Only once the queue is at most half full, by count and by bytes: asking sooner
        // would read batches from the log that the queue refuses again at once.
        let room = self
            .config
            .session_queue_messages_max
            .saturating_sub(s.outbound.queued());
        if room < self.config.session_queue_messages_max / 2
            || s.outbound.queued_bytes() > self.config.session_queue_bytes_max / 2
        {
            return;
        }
        for CatchUp {
            shard,
            from,
            request,
        } in self.take_catch_ups(&mut s.replay)
        {
            let want = ReplayWant {
                client_id: s.client_id.clone(),
                from,
                filters: self.filters_with_since(s, shard),
                messages_max: room.min(CATCH_UP_MESSAGES_MAX),
                // The started exchanges came back with the replay at start.
                exact: Vec::new(),
            };
            self.post(shard, ShardMsg::CatchUp { want, request });
        }
    }

    /// The catch-up reads `replay` is ready to ask for, numbered by this shard.
    pub(crate) fn take_catch_ups(&self, replay: &mut ReplayCursor) -> Vec<CatchUp> {
        let mut next = self.requests.next_catch_up.get();
        let asks = replay.take_catch_ups(&mut next);
        self.requests.next_catch_up.set(next);
        asks
    }

    /// The session's plain filters, each with the offset of `owner`'s log it began at.
    fn filters_with_since(&self, s: &Session, owner: ShardId) -> Vec<(String, u64)> {
        s.subscriptions
            .iter()
            .filter_map(|(full, sub)| {
                let plain = parse_filter(full, &self.topic_limits()).ok()?.filter;
                Some((plain.to_string(), sub.from(owner)))
            })
            .collect()
    }

    /// Owner: reads what `want` asks for from the durable part of this shard's log.
    pub(crate) fn on_catch_up(self: &Rc<Self>, from: ShardId, want: ReplayWant, request: u64) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            let Some((want, scan)) = shard.read_durable(want).await else {
                return;
            };
            let reply = ShardMsg::CatchUpReply {
                client_id: want.client_id,
                request,
                found: scan.found.into_iter().map(|(_, m)| m).collect(),
                resume: scan.resume[0],
                end: scan.end,
            };
            shard.post(from, reply);
        })
        .detach();
    }

    /// Owner: scans this shard's log for `want`, only as far as it is as durable as the
    /// fsync policy promises. `None` without a log.
    pub(crate) async fn read_durable(&self, want: ReplayWant) -> Option<(ReplayWant, ReplayScan)> {
        let durable = self.log.get()?;
        let appended = durable.wal.next_offset().0;
        let durable_up_to = match appended {
            0 => Some(0),
            n => durable
                .wal
                .wait_durable(Offset(n - 1))
                .await
                .ok()
                .map(|()| n),
        };
        self.probe.catch_up_reads_total.inc();
        let scan = match durable_up_to {
            Some(stop) => {
                let wants = std::slice::from_ref(&want);
                scan_for_replay(&durable.wal, self.id, wants, Some(stop)).await
            }
            // A poisoned log serves nothing more; the gap stays where it was.
            None => ReplayScan::failed_at(want.from, 1),
        };
        if scan.failed {
            tracing::warn!(
                shard = self.id.index(),
                client_id = want.client_id.as_str(),
                from = scan.end,
                "a catch-up read failed; its gap stays open and is read again"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(CATCH_UP_RETRY_MS)).await;
        }
        Some((want, scan))
    }

    /// The session's shard: queues what a catch-up read brought.
    pub(crate) fn on_caught_up(
        &self,
        owner: ShardId,
        client_id: ClientId,
        request: u64,
        found: Vec<Arc<Message>>,
        resume: Option<u64>,
        end: u64,
    ) {
        let Some(key) = self.sessions.by_client.borrow().get(&client_id) else {
            return;
        };
        let mut sessions = self.sessions.slots.borrow_mut();
        let Some(slot) = sessions.get_mut(&key) else {
            return;
        };
        if !slot.session.replay.is_current(owner, request) {
            return;
        }
        let connected = slot.conn.is_some();
        let mut refused = None;
        // Exchanges the read restored into the in-flight window (see below).
        let mut restored = Vec::new();
        for msg in found {
            let offset = msg.log.map_or(0, |p| p.offset);
            // What the session holds or PUBREC'd is dropped (see `Session::had`).
            let Some(delivery) = replayed_delivery(&slot.session, msg)
                .and_then(|d| self.settle_released_into(&mut slot.session, d, &mut restored))
            else {
                continue;
            };
            // QoS 0 deliveries are never deferred to the log: they went (or were
            // dropped) live.
            if delivery.qos == QoS::AtMostOnce {
                continue;
            }
            if slot
                .session
                .outbound
                .enqueue(delivery, connected, &self.outbound_limits())
                != crate::session::Enqueued::Queued
            {
                refused = Some(offset);
                break;
            }
            self.probe.catch_up_messages_total.inc();
        }
        let now = Instant::now();
        // A restored exchange gets its PUBREL (or PUBLISH with DUP) on reconnect; one
        // restored while the client is connected gets it now, or it would hold its
        // in-flight slot for good (a v5 client resends nothing while connected).
        if let Some(conn) = slot.conn.as_ref().filter(|c| c.session().is_some()) {
            if !restored.is_empty() {
                let outbound = &mut slot.session.outbound;
                conn.with_outlet(usize::MAX, |outlet| {
                    for pid in restored {
                        outbound.resend_restored(pid, outlet, now);
                    }
                });
                conn.wake_writer();
            }
        }
        slot.session.replay.caught_up(owner, resume, end, refused);
        self.pump(slot, now);
    }
}
