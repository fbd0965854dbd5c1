//! The packet id of a QoS 2 PUBLISH to a logged session is durable before the PUBLISH.
//!
//! MQTT 5 §4.4: a QoS 2 PUBLISH not yet PUBREC'd is resent under the packet id it went out
//! with. The client may already hold that id awaiting PUBREL; the same message under a new
//! id is a second message to it. So the id must outlive `kill -9`, and it is logged before
//! the PUBLISH is written:
//!
//! 1. A pump of a logged session gives a logged QoS 2 delivery its packet id and window
//!    slot and leaves it *sending* (`Outbound::pump_logged`); `Broker::hold_sends` moves
//!    its `(owner shard, offset, packet id)` into this shard's batch ([`SendLog`]).
//! 2. One task per shard (`Broker::spawn_sent_log`) takes the whole batch, appends one
//!    `qos2_sent` record per session (every id it was given since the last batch) to the
//!    session's home log, through the home's ordered queue like every session record,
//!    and waits for the homes' group commits.
//! 3. Then it writes each PUBLISH (`Outbound::logged_sent`) into the session's
//!    connection, or leaves it for the reconnect's resend if it has none.
//!
//! Batches run one after another, so a session's QoS 2 PUBLISHes leave in the order they
//! took their ids; the next batch gathers while one waits for its commit. A session that
//! reconnects gives its entries still sending to the batch again (their first record may
//! travel from the shard it left, whose answer does not reach it); logging an entry twice
//! is harmless. A record that cannot be logged (poisoned WAL) is reported and the PUBLISH
//! goes out anyway: the client would wait forever otherwise, and only a crash before the
//! home's log recovers can then resend it under a new id.
//!
//! At recovery (`visit_session_record`), an entry stands until a `qos2_delivered` entry
//! for the same message (its PUBREC was logged), a later entry under the same packet id
//! (a new exchange), or a cursor past its offset ends it; a replay or catch-up read that
//! meets one puts the message back in flight under that id, its PUBLISH resent with DUP
//! (`settle_released`).
//!
//! Cost: one record (`2 + client id + 2 + 12 bytes per entry`) per session per batch,
//! and every QoS 2 PUBLISH to a logged session waits for one group commit of its home
//! (plus a mesh round trip when the home is another shard) after it left the queue. QoS
//! 0/1, non-persistent sessions and unlogged messages are untouched.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::broker::Broker;
use crate::mqtt::{ClientId, QoS};
use crate::router::ShardId;
use crate::session::Session;

use super::records::SessionRecord;

/// A QoS 2 delivery of a logged session waiting in the sending state for its `qos2_sent`
/// entry.
#[derive(Debug)]
struct Sending {
    client_id: ClientId,
    pid: u16,
    /// The message's `(owner shard, offset)`.
    at: (ShardId, u64),
}

/// A shard's QoS 2 deliveries waiting for their `qos2_sent` records, and the logging
/// task's waker.
#[derive(Default)]
pub struct SendLog {
    batch: RefCell<Vec<Sending>>,
    /// The previous batch's buffer, reused.
    spare: Cell<Vec<Sending>>,
    /// Per session, the entries of one record, reused.
    entries: Cell<Vec<(ShardId, u64, u16)>>,
    waker: Cell<Option<Waker>>,
}

impl Broker {
    /// After a pump of `session`: its deliveries that entered the sending state join the
    /// batch of the task logging them.
    pub(crate) fn hold_sends(&self, session: &mut Session) {
        if !session.outbound.has_unlogged() {
            return;
        }
        let log = &self.qos2.sending;
        let mut batch = log.batch.borrow_mut();
        for (shard, offset, pid) in session.outbound.drain_unlogged() {
            batch.push(Sending {
                client_id: session.client_id.clone(),
                pid,
                at: (shard, offset),
            });
        }
        drop(batch);
        if let Some(waker) = log.waker.take() {
            waker.wake();
        }
    }

    /// Starts the task that logs the batched `qos2_sent` entries and then sends their
    /// PUBLISHes (see the module docs).
    pub(crate) fn spawn_sent_log(self: &Rc<Self>) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            loop {
                poll_fn(|cx| {
                    if shard.qos2.sending.batch.borrow().is_empty() {
                        shard.qos2.sending.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await;
                let log = &shard.qos2.sending;
                let mut batch = std::mem::replace(&mut *log.batch.borrow_mut(), log.spare.take());
                shard.log_sends(&mut batch).await;
                batch.clear();
                log.spare.set(batch);
            }
        })
        .detach();
    }

    /// Logs one `qos2_sent` record per session of `batch`, waits until they are durable
    /// at the homes, then writes the PUBLISHes.
    async fn log_sends(&self, batch: &mut [Sending]) {
        // Stable: each session's entries keep their send order.
        batch.sort_by(|a, b| a.client_id.as_str().cmp(b.client_id.as_str()));
        let mut waits = Vec::new();
        let mut entries = self.qos2.sending.entries.take();
        for run in batch.chunk_by(|a, b| a.client_id == b.client_id) {
            entries.clear();
            entries.extend(run.iter().map(|s| (s.at.0, s.at.1, s.pid)));
            let record = SessionRecord::Qos2Sent(entries);
            waits.extend(self.log_session(run[0].client_id.as_str(), &record, true));
            let SessionRecord::Qos2Sent(back) = record else {
                unreachable!("built above")
            };
            entries = back;
        }
        self.qos2.sending.entries.set(entries);
        if !self.all_logged(waits).await {
            tracing::error!(
                shard = self.id.index(),
                "a QoS 2 packet id could not be logged: a crash may resend its PUBLISH under a new id"
            );
        }
        self.send_logged(batch);
    }

    /// Writes the PUBLISH of every delivery of `batch` still sending, now that its id is
    /// logged.
    fn send_logged(&self, batch: &[Sending]) {
        let now = Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        let by_client = self.sessions.by_client.borrow();
        let (mut sent, mut bytes) = (0, 0);
        for s in batch {
            let Some(slot) = by_client
                .get(&s.client_id)
                .and_then(|k| sessions.get_mut(&k))
            else {
                continue;
            };
            let outbound = &mut slot.session.outbound;
            match &slot.conn {
                Some(conn) if conn.session().is_some() => {
                    let n = conn.with_outlet(usize::MAX, |outlet| {
                        outbound.logged_sent(s.pid, s.at, Some(outlet), now)
                    });
                    if let Some(n) = n {
                        sent += 1;
                        bytes += n as u64;
                        conn.wake_writer();
                    }
                }
                _ => {
                    outbound.logged_sent(s.pid, s.at, None, now);
                }
            }
        }
        self.probe.messages_delivered_by_qos[QoS::ExactlyOnce as usize].add(sent);
        self.probe.bytes_sent_total.add(bytes);
    }
}
