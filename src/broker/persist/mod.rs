//! Persistent sessions across restarts: what the home shard logs about them, and how a
//! restart rebuilds them with every message they had not acknowledged.
//!
//! # Who writes what
//! A session's changes are made on the shard that holds it; they are encoded there and
//! sent to the client id's **home** shard (`owner_of(client_id)`), which appends them to
//! its own log (`records`), so one log holds each client's history in order. Only
//! sessions that were persistent when they connected (`Session::logged`) are logged.
//! - `subscribe` records are durable before the SUBACK (the SUBACK waits for the home's
//!   group commit): a publish acknowledged after the SUBACK is then always replayed.
//! - `session_open`, `session_detach`, `unsubscribe` and `cursor` records are not waited
//!   for: losing one in a crash can only replay messages again or keep a subscription,
//!   never lose an acknowledged message.
//! - `qos2_delivered` records are durable before the PUBREL they allow: when a logged
//!   session's client PUBRECs a QoS 2 message, the exchange is *releasing*
//!   (`Outbound::on_pubrec` holds its PUBREL back) and joins the shard's batch
//!   (`hold_release`): one task logs one record per client for every release that
//!   arrived meanwhile, waits for the homes' group commits, then sends the PUBRELs. A
//!   restart therefore never sends a PUBREC'd message as a PUBLISH again: a replayed or
//!   caught-up record with a logged release is dropped if its PUBCOMP was logged too, and
//!   otherwise waits for PUBCOMP under its old packet id, its PUBREL resent on reconnect
//!   (`settle_released`). PUBCOMPs are logged with the next cursors, not waited for
//!   (losing one only resends a PUBREL, answered with PUBCOMP).
//! - `qos2_sent` records are durable before the PUBLISH they name: a logged session's QoS
//!   2 delivery of a logged message takes its packet id and waits (*sending*) until one
//!   record per session per batch carries it to the home's log (`sent`). After a crash
//!   or a stop it is resent under the same packet id with DUP (MQTT 5 §4.4), not as a
//!   new message (`settle_released`).
//! - A graceful stop logs every session's final cursors after closing the connections
//!   and waits until they are durable at their homes, every shard for every other one
//!   (`flush_cursors_for_stop`, bounded by a tenth of `shutdown_timeout_ms`), so what
//!   the clients acknowledged is not sent again after the restart. With them it logs each
//!   session's QoS 2 messages in flight (`qos2_sent`) once more.
//! - A clean-start claim logs `session_end` at the home before the takeover starts.
//! - A connection with a will logs it (`will`) before its CONNACK, whether its session
//!   is persistent or not, and `will_done` once the will is published, cancelled or
//!   delayed in the session's `session_detach`. At start, a `will` without its
//!   `will_done` is the will of a connection the crash cut: it is published after
//!   recovery as if that connection had just closed (its delay counting from the start,
//!   cancelled if a persistent session's client returns first), and its `will_done` is
//!   durable before it is, so a second crash does not publish it again.
//! - A home appends the session records it is given in the order it is given them
//!   ([`SessionLogQueue`]): a record that finds the WAL buffer full waits in a queue,
//!   and every later one waits behind it. So a clean start's `session_end` can never
//!   land after the new session's `session_open`, which recovery would read as the new
//!   session ending.
//!
//! # Replay
//! Each session keeps a cursor per owner shard (see `ReplayCursor`), logged at most every
//! `CURSOR_FLUSH_MS`. At start every home rebuilds its sessions from its log, indexes
//! their subscriptions, and asks every owner for the publish records at or above the
//! session's cursor that match one of its subscriptions and are not older than that
//! subscription (the `subscribe` record's time against the publish record's time; both
//! are stamped with the same clock). Those are queued in the session in offset order,
//! exactly as if it had been offline. Shards accept connections only after every
//! shard has finished (a barrier over the mesh), so no live message overtakes a replay.
//!
//! # Known limits
//! - A record a session's old shard sends while the session moves to another shard may
//!   reach the home after the new shard's; the home keeps the last, which errs low for
//!   cursors but may keep a subscription the client removed right before moving.
//! - Shared subscriptions are restored, and a member's unacknowledged messages are
//!   replayed to that member (or, after it expires, to nobody).
//!
//! Sessions whose queue overflows, or that move between shards, read the log back the
//! same way while running (`catchup`); retention keeps what cursors still need
//! (`retention`); a changed shard count rewrites the logs first (`migrate`). The whole
//! picture is in docs/durability.md.

pub mod migrate;
pub mod records;
mod replay;
mod restore;
mod sent;
mod shadow;

pub(crate) use replay::replayed_delivery;
pub use replay::{scan_for_replay, ReplayScan, CATCH_UP_MESSAGES_MAX};
pub use sent::SendLog;
pub use shadow::visit_session_copy;
pub(crate) use shadow::SessionShadow;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::{Broker, ShardMsg};
use crate::mqtt::{ClientId, Protocol, ReasonCode};
use crate::router::{owner_of, ShardId};
use crate::runtime::spawn_every;
use crate::session::{Session, SubOptions, Will};
use crate::storage::{Offset, RecordKind, RecordRef, Wal, WalError};

use super::holds::{self, MemberHolds};
use super::Reply;
use records::{SessionRecord, WillConn, WillRecord};

/// Wills of connections logged without their `will_done`, by client id and connection.
pub type ArmedWills = HashMap<(String, WillConn), Will>;

/// How often changed replay cursors are logged.
pub const CURSOR_FLUSH_MS: u64 = 200;

/// A QoS 2 exchange whose PUBREC arrived and whose PUBREL waits for its
/// `qos2_delivered` record (see `Broker::log_releases`).
#[derive(Debug)]
pub struct Releasing {
    /// The session's client id.
    pub client_id: ClientId,
    /// The exchange's packet id.
    pub pid: u16,
    /// The message's `(owner shard, offset)`.
    pub at: (ShardId, u64),
}

/// A session as its home's log describes it.
#[derive(Debug, Clone)]
pub struct RecoveredSession {
    /// Protocol of its last connection.
    pub protocol: Protocol,
    /// Expiry interval.
    pub expiry_secs: u32,
    /// When its connection ended (ms since the epoch); `None` if it was connected when
    /// the broker stopped.
    pub detached_at_ms: Option<u64>,
    /// A delayed will still to publish.
    pub will: Option<Will>,
    /// Subscriptions by full filter, with where each began (per owner shard, the
    /// offset it wants messages from; see `Session::subscribed_from`).
    pub subscriptions: HashMap<String, (SubOptions, Vec<u64>)>,
    /// Replay cursor per owner shard.
    pub cursors: HashMap<ShardId, u64>,
    /// Logged QoS 2 releases by `(owner shard, offset)`: the packet id awaiting PUBCOMP,
    /// or 0 once completed (see `records`, `qos2_delivered`).
    pub released: HashMap<(ShardId, u64), u16>,
    /// QoS 2 messages sent under a packet id and not PUBREC'd when the broker stopped, by
    /// `(owner shard, offset)` (see `records`, `qos2_sent`, and `sent`): resent under that
    /// id.
    pub sent: HashMap<(ShardId, u64), u16>,
}

impl RecoveredSession {
    /// The logged releases a replay from the session's cursors can still meet.
    pub fn released_above_cursors(&self) -> HashMap<(ShardId, u64), u16> {
        self.above_cursors(&self.released)
    }

    /// The logged releases recovery keeps: those a replay from the session's cursors can
    /// still meet, and for a member of a shared group also the highest below them, as
    /// completed, up to `max` entries in all. A member's own replay never reaches below its
    /// cursor, but its group's deliveries do: another member's replay that does not fit
    /// its queue, what another member leaves behind, a backlog read from a lower gap (see
    /// `prune_released`, which keeps them live for the same reason). Below the cursor
    /// an exchange is over (an open one holds the cursor down).
    pub fn released_kept(&self, max: usize) -> HashMap<(ShardId, u64), u16> {
        let mut kept = self.released_above_cursors();
        if !self.is_shared_member() {
            return kept;
        }
        let mut below: Vec<(ShardId, u64)> = self
            .released
            .keys()
            .filter(|at| !kept.contains_key(at))
            .copied()
            .collect();
        below.sort_unstable_by_key(|&(shard, offset)| std::cmp::Reverse((offset, shard)));
        let room = max.saturating_sub(kept.len());
        kept.extend(below.into_iter().take(room).map(|at| (at, 0)));
        kept
    }

    /// Whether one of its subscriptions is a shared one (`$share/...`).
    pub fn is_shared_member(&self) -> bool {
        self.subscriptions.keys().any(|f| f.starts_with("$share/"))
    }

    /// The logged in-flight QoS 2 packet ids a replay from the cursors can still meet.
    pub fn sent_above_cursors(&self) -> HashMap<(ShardId, u64), u16> {
        self.above_cursors(&self.sent)
    }

    /// The offsets of `owner`'s log (ascending) of the exchanges in `sent_above_cursors`.
    pub fn sent_offsets_on(&self, owner: ShardId) -> Vec<u64> {
        let mut offsets: Vec<u64> = self
            .sent_above_cursors()
            .into_keys()
            .filter(|&(shard, _)| shard == owner)
            .map(|(_, offset)| offset)
            .collect();
        offsets.sort_unstable();
        offsets
    }

    fn above_cursors(&self, ids: &HashMap<(ShardId, u64), u16>) -> HashMap<(ShardId, u64), u16> {
        ids.iter()
            .filter(|((shard, offset), _)| *offset >= self.cursors.get(shard).copied().unwrap_or(0))
            .map(|(k, pid)| (*k, *pid))
            .collect()
    }
}

/// Applies one record of the home's log to the sessions it describes. Returns false for
/// a damaged body (counted by the caller, never guessed at).
pub fn visit_session_record(
    sessions: &mut HashMap<String, RecoveredSession>,
    record: &RecordRef<'_>,
) -> bool {
    let Some((client, rec)) = records::decode(record.kind, record.body) else {
        return false;
    };
    if let SessionRecord::Open {
        expiry_secs,
        protocol,
    } = rec
    {
        let s = sessions.entry(client).or_insert_with(|| RecoveredSession {
            protocol,
            expiry_secs,
            detached_at_ms: None,
            will: None,
            subscriptions: HashMap::new(),
            cursors: HashMap::new(),
            released: HashMap::new(),
            sent: HashMap::new(),
        });
        s.protocol = protocol;
        s.expiry_secs = expiry_secs;
        s.detached_at_ms = None;
        s.will = None;
        return true;
    }
    if let SessionRecord::End = rec {
        sessions.remove(&client);
        return true;
    }
    // Every other record describes a session an earlier `session_open` created; one
    // arriving after its `session_end` (from a shard the session just left) is stale.
    let Some(s) = sessions.get_mut(&client) else {
        return true;
    };
    match rec {
        SessionRecord::Detach { expiry_secs, will } => {
            s.expiry_secs = expiry_secs;
            s.detached_at_ms = Some(record.timestamp_ms);
            s.will = will;
        }
        SessionRecord::Subscribe { filter, opts, from } => {
            s.subscriptions.insert(filter, (opts, from));
        }
        SessionRecord::Unsubscribe { filter } => {
            s.subscriptions.remove(&filter);
        }
        SessionRecord::Cursor(cursors) => {
            for (shard, offset) in cursors {
                s.cursors.insert(shard, offset);
                // A session holds its cursor down to every message it has in flight: an
                // in-flight id below a cursor belongs to an exchange that ended without
                // a `qos2_delivered` entry (a refusing PUBREC, a shared delivery handed to
                // another member). Every QoS 2 delivery logs one (`sent`): drop them here
                // so they do not pile up over the log.
                s.sent.retain(|&(sh, off), _| sh != shard || off >= offset);
            }
        }
        SessionRecord::Qos2Delivered(entries) => {
            for (shard, offset, pid) in entries {
                if pid != 0 {
                    // The id is free again only after its earlier exchange completed.
                    for other in s.released.values_mut().filter(|p| **p == pid) {
                        *other = 0;
                    }
                    s.sent.retain(|_, p| *p != pid);
                }
                s.sent.remove(&(shard, offset));
                s.released.insert((shard, offset), pid);
            }
        }
        SessionRecord::Qos2Sent(entries) => {
            for (shard, offset, pid) in entries {
                if s.released.contains_key(&(shard, offset)) {
                    // Its PUBREC was logged first: the exchange is past its PUBLISH.
                    continue;
                }
                // Likewise: an id sent again belongs to a new exchange.
                for other in s.released.values_mut().filter(|p| **p == pid) {
                    *other = 0;
                }
                s.sent.retain(|_, p| *p != pid);
                s.sent.insert((shard, offset), pid);
            }
        }
        SessionRecord::Open { .. } | SessionRecord::End => unreachable!("handled above"),
    }
    true
}

/// Applies a `will` or `will_done` record. Returns false for a damaged body.
pub fn visit_will_record(wills: &mut ArmedWills, record: &RecordRef<'_>) -> bool {
    match records::decode_will_record(record.kind, record.body) {
        Some((client, WillRecord::Armed { conn, will })) => {
            wills.insert((client, conn), *will);
        }
        Some((client, WillRecord::Done { conn })) => {
            wills.remove(&(client, conn));
        }
        None => return false,
    }
    true
}

/// What a home asks an owner to replay for one session.
#[derive(Debug, Clone)]
pub struct ReplayWant {
    /// The session's client id.
    pub client_id: ClientId,
    /// Replay records at or above this offset.
    pub from: u64,
    /// Plain filters (share prefix removed), each with the offset of this log from which
    /// it wants messages.
    pub filters: Vec<(String, u64)>,
    /// At most this many messages (the session's queue bound).
    pub messages_max: usize,
    /// Offsets of this log (ascending) whose messages the session takes whatever its
    /// filters and `messages_max`: those of the QoS 2 exchanges it had started when the
    /// broker stopped, which are completed with it under their packet ids (see
    /// "Recovered exchanges keep their packet ids" in `session::outbound`).
    pub exact: Vec<u64>,
}

/// A session record on its way into the home's log.
pub(crate) struct SessionAppend {
    /// Record kind.
    pub kind: RecordKind,
    /// Record body.
    pub body: Vec<u8>,
    /// Who to answer once it is durable: `(shard, request id)`.
    pub reply: Option<(ShardId, u64)>,
}

/// A home's session records waiting for room in its WAL buffer, in arrival order.
#[derive(Default)]
pub(crate) struct SessionLogQueue {
    waiting: RefCell<VecDeque<SessionAppend>>,
}

impl SessionLogQueue {
    /// Appends `record` now if nothing waits and the buffer has room: `Some` with the
    /// outcome. Otherwise queues it behind what waits (`None`); see [`Self::drain`].
    pub(crate) fn append_or_queue(
        &self,
        wal: &Wal,
        record: SessionAppend,
    ) -> Option<(SessionAppend, Result<Offset, WalError>)> {
        if self.waiting.borrow().is_empty() {
            match wal.append(record.kind, unix_ms(), &[&record.body[..]]) {
                Err(WalError::BufferFull) => {}
                result => return Some((record, result)),
            }
        }
        self.waiting.borrow_mut().push_back(record);
        None
    }

    /// Appends the queued records in order as the buffer makes room, handing each
    /// outcome to `done`; returns when none is left. Several drains may run at once:
    /// each takes the front only when it fits, so the order holds.
    pub(crate) async fn drain(
        &self,
        wal: &Wal,
        mut done: impl FnMut(SessionAppend, Result<Offset, WalError>),
    ) {
        loop {
            let Some(len) = self.waiting.borrow().front().map(|r| r.body.len()) else {
                return;
            };
            let room = wal.reserve(len).await;
            let Some(record) = self.waiting.borrow_mut().pop_front() else {
                return;
            };
            let result = match room {
                Ok(()) => wal.append(record.kind, unix_ms(), &[&record.body[..]]),
                Err(e) => Err(e),
            };
            if matches!(result, Err(WalError::BufferFull)) {
                // Another drain took the room meanwhile: wait again, still first.
                self.waiting.borrow_mut().push_front(record);
                continue;
            }
            done(record, result);
        }
    }
}

/// Milliseconds since the Unix epoch, the clock of record timestamps.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl Broker {
    fn home_of(&self, client_id: &str) -> ShardId {
        owner_of(client_id, self.mesh.shards())
    }

    /// Sends a session record to the client's home shard; with `wait`, returns a
    /// request that completes (`Reply::Logged`) once the record is durable.
    pub(crate) fn log_session(
        &self,
        client_id: &str,
        record: &SessionRecord,
        wait: bool,
    ) -> Option<u64> {
        self.log_session_record(client_id, records::encode(client_id, record), wait)
    }

    /// Sends an encoded record to `client_id`'s home (see [`Broker::log_session`]).
    pub(crate) fn log_session_record(
        &self,
        client_id: &str,
        record: (RecordKind, Vec<u8>),
        wait: bool,
    ) -> Option<u64> {
        let (kind, body) = record;
        let ack_id = wait.then(|| self.requests.open(1));
        self.post(
            self.home_of(client_id),
            ShardMsg::SessionLog {
                kind: kind.0,
                body,
                ack_id,
            },
        );
        ack_id
    }

    /// Home shard: appends a session record; answers `LogDone` once durable if asked.
    pub(crate) async fn on_session_log(
        self: &Rc<Self>,
        from: ShardId,
        kind: u8,
        body: Vec<u8>,
        ack_id: Option<u64>,
    ) {
        let kind = RecordKind(kind);
        if kind == records::RECORD_SESSION_OPEN || kind == records::RECORD_SESSION_END {
            if let Some((client, _)) = records::decode(kind, &body) {
                let mut persisted = self.sessions.persisted.borrow_mut();
                if kind == records::RECORD_SESSION_OPEN {
                    persisted.insert(client);
                } else {
                    persisted.remove(&client);
                }
            }
        }
        let record = SessionAppend {
            kind,
            body,
            reply: ack_id.map(|id| (from, id)),
        };
        // Waits while the buffer is full (as a mesh receiver did before), in order.
        if self.append_session_record(record) {
            self.drain_session_log().await;
        }
    }

    /// Appends a session record in arrival order (see [`SessionLogQueue`]). Returns
    /// true if it was queued behind a full buffer: a drain must run.
    fn append_session_record(self: &Rc<Self>, record: SessionAppend) -> bool {
        let Some(durable) = self.log.get() else {
            if let Some((from, id)) = record.reply {
                self.post(from, ShardMsg::LogDone { id, ok: true });
            }
            return false;
        };
        match self.session_log.queue.append_or_queue(&durable.wal, record) {
            Some((record, result)) => {
                self.session_logged(record, result);
                false
            }
            None => true,
        }
    }

    async fn drain_session_log(self: &Rc<Self>) {
        let Some(durable) = self.log.get() else {
            return;
        };
        let log = &self.session_log.queue;
        log.drain(&durable.wal, |record, result| {
            self.session_logged(record, result)
        })
        .await;
    }

    /// A session record was appended (or failed): answer `LogDone` once durable if asked.
    fn session_logged(self: &Rc<Self>, record: SessionAppend, result: Result<Offset, WalError>) {
        let offset = match result {
            Ok(offset) => {
                if let Some(shadow) = self.session_log.shadow.borrow_mut().as_mut() {
                    shadow.note(offset.0, record.kind, unix_ms(), &record.body);
                }
                offset
            }
            Err(e) => {
                tracing::error!(shard = self.id.index(), error = %e, "session record not logged");
                if let Some((from, id)) = record.reply {
                    self.post(from, ShardMsg::LogDone { id, ok: false });
                }
                return;
            }
        };
        let Some((from, id)) = record.reply else {
            return;
        };
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            let Some(durable) = shard.log.get() else {
                return;
            };
            let ok = durable.wal.wait_durable(offset).await.is_ok();
            shard.post(from, ShardMsg::LogDone { id, ok });
        })
        .detach();
    }

    /// Logs `record` about a connection's will at its client's home; with `wait`, returns
    /// whether it became durable.
    pub(crate) async fn log_will(&self, client_id: &str, record: &WillRecord, wait: bool) -> bool {
        let ack_id =
            self.log_session_record(client_id, records::encode_will(client_id, record), wait);
        match ack_id {
            Some(id) => matches!(
                self.requests.replies(id).await.pop(),
                Some(Reply::Logged(true))
            ),
            None => true,
        }
    }

    /// The will of connection `conn` of `client_id` is out of its hands: not to be
    /// published again after a crash.
    pub(crate) fn log_will_done(&self, client_id: &str, conn: WillConn) {
        let record = records::encode_will(client_id, &WillRecord::Done { conn });
        self.log_session_record(client_id, record, false);
    }

    /// Home shard, on a clean-start claim: the old session ends here, in the log's order,
    /// before the new connection can log anything of its own.
    pub(crate) fn end_logged_at_home(self: &Rc<Self>, client_id: &ClientId) {
        if !self
            .sessions
            .persisted
            .borrow_mut()
            .remove(client_id.as_str())
        {
            return;
        }
        let (kind, body) = records::encode(client_id.as_str(), &SessionRecord::End);
        // Appended now, before the new connection's own records can arrive; a full
        // group-commit buffer queues it, and every later session record behind it.
        let record = SessionAppend {
            kind,
            body,
            reply: None,
        };
        if self.append_session_record(record) {
            let shard = Rc::clone(self);
            glommio::spawn_local(async move { shard.drain_session_log().await }).detach();
        }
    }

    /// Logs the replay cursors of every logged session that changed, every
    /// `CURSOR_FLUSH_MS`.
    pub(crate) fn spawn_cursor_flush(self: &Rc<Self>) {
        spawn_every(Duration::from_millis(CURSOR_FLUSH_MS), self, |shard| {
            shard.flush_cursors(false);
            std::future::ready(())
        });
    }

    /// Logs the changed cursors (and QoS 2 completions) of every logged session; with
    /// `stopping`, also the packet ids of their QoS 2 messages in flight (`qos2_sent`),
    /// and returns the requests that complete once all of it is durable.
    fn flush_cursors(&self, stopping: bool) -> Vec<u64> {
        let survey = self.survey_sessions();
        self.touch_backlog_members(&survey.clean_holds);
        // A shard of clean sessions without QoS 2 releases (idle devices) has nothing to
        // log: the survey was its one look at them.
        if !survey.any_logged && !survey.any_released {
            return Vec::new();
        }
        let holds = self.backlog_holds_with(&survey.clean_holds);
        type Changed = (
            ClientId,
            Vec<(ShardId, u64)>,
            Vec<(ShardId, u64)>,
            Vec<(ShardId, u64, u16)>,
        );
        let changed: Vec<Changed> = {
            let mut sessions = self.sessions.slots.borrow_mut();
            // The watched sessions are all this pass has anything to do for: the logged
            // ones, those with releases, and every one holding a shared delivery.
            let watched = self.sessions.watched.borrow();
            let members = if survey.any_released {
                holds::member_holds(
                    watched
                        .iter()
                        .filter_map(|key| sessions.get(key))
                        .map(|s| &s.session),
                )
            } else {
                MemberHolds::new()
            };
            watched
                .iter()
                .filter_map(|key| {
                    let s = &mut sessions.get_mut(key)?.session;
                    if !s.logged {
                        // Its releases too go once nothing can read them again.
                        if s.replay.released_len() > 0 {
                            let mut cursors = current_cursors(s);
                            holds::lower_by_groups(&holds, s, &mut cursors);
                            prune_released(&members, s, cursors);
                        }
                        return None;
                    }
                    let sent = if stopping {
                        s.outbound.inflight_qos2()
                    } else {
                        Vec::new()
                    };
                    let mut cursors = s.replay.take_changed(&s.outbound).unwrap_or_default();
                    holds::lower_by_groups(&holds, s, &mut cursors);
                    if s.replay.released_len() > 0 && !cursors.is_empty() {
                        prune_released(&members, s, cursors.clone());
                    }
                    let completed = s.replay.take_completed();
                    (!cursors.is_empty() || !completed.is_empty() || !sent.is_empty())
                        .then(|| (s.client_id.clone(), cursors, completed, sent))
                })
                .collect()
        };
        let mut waits = Vec::new();
        for (client, cursors, completed, sent) in changed {
            if !sent.is_empty() {
                let record = SessionRecord::Qos2Sent(sent);
                waits.extend(self.log_session(client.as_str(), &record, stopping));
            }
            if !completed.is_empty() {
                let entries = completed.into_iter().map(|(s, o)| (s, o, 0)).collect();
                let record = SessionRecord::Qos2Delivered(entries);
                self.log_session(client.as_str(), &record, false);
            }
            if !cursors.is_empty() {
                let record = SessionRecord::Cursor(cursors);
                waits.extend(self.log_session(client.as_str(), &record, stopping));
            }
        }
        waits
    }

    /// Graceful stop, once the connections are closed: the final cursors are logged and
    /// durable at their homes (within `limit`), so a restart does not send completed
    /// deliveries again. Every shard then waits for every other one (`ShardMsg::Flushed`)
    /// before it stops serving its log.
    /// The drain can also lower cursors below what was logged: a closing clean member's
    /// unacknowledged shared deliveries go back to the group (an offline persistent
    /// member's queue or the group's backlog) while the persistent members' logged
    /// cursors may already be past them, so every logged session's cursor is written
    /// again, changed or not. Those deliveries may also go to another shard (the
    /// group's members there, or its backlog there with the gaps of this one's), so no
    /// shard logs its final cursors before every shard closed its connections and sent
    /// them off (`ShardMsg::Drained`, within `limit`): the mesh keeps each link's order,
    /// so what a peer sent before its `Drained` has been placed here by then, and the
    /// barrier's rounds cover the owner's sends on of what it got back (see
    /// `drain_barrier`).
    pub(crate) async fn flush_cursors_for_stop(&self, limit: Duration) {
        if glommio::timer::timeout(limit, async {
            self.drain_barrier().await;
            Ok(())
        })
        .await
        .is_err()
        {
            tracing::warn!(
                shard = self.id.index(),
                "other shards did not close their connections in time: a restart may miss \
                 some shared deliveries they gave back"
            );
        }
        for slot in self.sessions.slots.borrow_mut().values_mut() {
            if slot.session.logged {
                slot.session.replay.touch();
            }
        }
        let waits = self.flush_cursors(true);
        let flushed = async {
            for id in waits {
                self.requests.replies(id).await;
            }
            for peer in self.all_shards().filter(|&p| p != self.id) {
                self.post(peer, ShardMsg::Flushed);
            }
            self.stop_barrier().await;
        };
        if glommio::timer::timeout(limit, async {
            flushed.await;
            Ok(())
        })
        .await
        .is_err()
        {
            tracing::warn!(
                shard = self.id.index(),
                "final cursors not confirmed in time: a restart may send some messages again"
            );
        }
    }

    /// Logs that the client PUBREC'd these QoS 2 messages (`(session, packet id, owner
    /// shard, offset)`, batched per client) and, once that is durable at the homes,
    /// sends their PUBRELs.
    pub(crate) async fn log_releases(&self, batch: Vec<Releasing>) {
        let mut per_client: HashMap<&ClientId, Vec<(ShardId, u64, u16)>> = HashMap::new();
        for r in &batch {
            per_client
                .entry(&r.client_id)
                .or_default()
                .push((r.at.0, r.at.1, r.pid));
        }
        let mut waits = Vec::with_capacity(per_client.len());
        for (client, entries) in per_client {
            let record = SessionRecord::Qos2Delivered(entries);
            waits.extend(self.log_session(client.as_str(), &record, true));
        }
        let mut ok = true;
        for id in waits {
            ok &= matches!(
                self.requests.replies(id).await.pop(),
                Some(Reply::Logged(true))
            );
        }
        if !ok {
            // The exchange goes on (the client would wait forever otherwise); only a crash
            // before the home's log recovers can then send its PUBLISH again.
            tracing::error!(
                shard = self.id.index(),
                "a QoS 2 release could not be logged"
            );
        }
        let now = std::time::Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        for r in batch {
            let Some(key) = self.sessions.by_client.borrow().get(&r.client_id) else {
                continue;
            };
            let Some(slot) = sessions.get_mut(&key) else {
                continue;
            };
            let outbound = &mut slot.session.outbound;
            match &slot.conn {
                Some(conn) if conn.session().is_some() => {
                    if conn.with_outlet(usize::MAX, |outlet| {
                        outbound.release(r.pid, r.at, Some(outlet), now)
                    }) {
                        conn.wake_writer();
                    }
                }
                _ => {
                    outbound.release(r.pid, r.at, None, now);
                }
            }
        }
    }

    /// Logs `subscribe` records for a logged session and waits until they are durable.
    /// Returns false if the home's log could not take them.
    pub(crate) async fn log_subscriptions(
        &self,
        client_id: &str,
        added: &[(String, SubOptions, Vec<u64>)],
    ) -> bool {
        let mut wait = None;
        for (i, (filter, opts, from)) in added.iter().enumerate() {
            let record = SessionRecord::Subscribe {
                filter: filter.clone(),
                opts: *opts,
                from: from.clone(),
            };
            // One home log, appended in order: the last record's durability covers all.
            wait = self.log_session(client_id, &record, i + 1 == added.len());
        }
        match wait {
            Some(id) => matches!(
                self.requests.replies(id).await.pop(),
                Some(Reply::Logged(true))
            ),
            None => true,
        }
    }
}

/// Forgets the session's QoS 2 releases below `cursors` (its cursors with the backlog
/// holds) lowered to what its groups' members hold: no read reaches below that.
///
/// A member of a shared group keeps them all (up to `session_qos2_released_max`): a
/// group's read on another shard starts where that shard's backlog gap is, which this
/// shard learns only with that shard's next holds report, and a late delivery there
/// can lower it below this session's cursor meanwhile.
fn prune_released(members: &MemberHolds, s: &mut Session, mut cursors: Vec<(ShardId, u64)>) {
    if s.subscriptions.keys().any(|f| f.starts_with("$share/")) {
        return;
    }
    holds::lower_by_members(members, s, &mut cursors);
    s.replay.prune_released(&cursors);
}

/// A session's replay cursors now, as `(owner shard, offset)`.
fn current_cursors(s: &Session) -> Vec<(ShardId, u64)> {
    let current = s.replay.current(&s.outbound).into_iter().enumerate();
    current
        .map(|(shard, c)| (ShardId::from_index(shard), c))
        .collect()
}

/// Why a SUBACK refuses filters whose `subscribe` record could not be made durable.
pub const SUBSCRIBE_NOT_LOGGED: ReasonCode = ReasonCode::UnspecifiedError;

#[cfg(test)]
mod tests {
    use glommio::LocalExecutorBuilder;

    use super::*;
    use crate::storage::{FsyncPolicy, WalConfig};

    fn record(client: &str, rec: &SessionRecord) -> SessionAppend {
        let (kind, body) = records::encode(client, rec);
        SessionAppend {
            kind,
            body,
            reply: None,
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(f)
    }

    fn open() -> SessionRecord {
        SessionRecord::Open {
            expiry_secs: 60,
            protocol: Protocol::V5,
        }
    }

    #[test]
    fn a_session_end_that_found_the_buffer_full_stays_before_the_next_open() {
        // A real disk: O_DIRECT is off on tmpfs.
        let dir = tempfile::Builder::new()
            .prefix("shardmq-session-log-")
            .tempdir_in(std::env::var_os("SHARDMQ_TEST_DIR").unwrap_or("/var/tmp".into()))
            .expect("temp dir");
        let config = WalConfig {
            dir: dir.path().to_path_buf(),
            segment_bytes: 1 << 20,
            fsync_policy: FsyncPolicy::Always,
            write_buffer_bytes: 16 * 1024,
            retention_ms: None,
            retention_bytes: None,
        };
        let order = run(async {
            let (wal, _) = Wal::open(config.clone(), |_| {}).await.expect("open");
            let queue = SessionLogQueue::default();
            let appended = queue.append_or_queue(&wal, record("c", &open()));
            assert!(
                matches!(appended, Some((_, Ok(_)))),
                "the old session opens"
            );
            // Fill the group-commit buffer (no await: the committer cannot drain it).
            let filler = record("filler", &SessionRecord::Cursor(vec![(ShardId(0), 1)]));
            let mut last = None;
            while let Ok(offset) = wal.append(filler.kind, unix_ms(), &[&filler.body[..]]) {
                last = Some(offset);
            }
            // A clean start ends the old session: no room, so it waits.
            assert!(queue
                .append_or_queue(&wal, record("c", &SessionRecord::End))
                .is_none());
            // The buffer drains before the waiting End was appended; the new session's
            // Open arrives now and must not pass it.
            wal.wait_durable(last.expect("filled"))
                .await
                .expect("durable");
            assert!(queue.append_or_queue(&wal, record("c", &open())).is_none());
            let mut order = Vec::new();
            queue
                .drain(&wal, |r, result| {
                    result.expect("appended");
                    order.push(r.kind);
                })
                .await;
            wal.close().await.expect("close");
            order
        });
        assert_eq!(
            order,
            vec![records::RECORD_SESSION_END, records::RECORD_SESSION_OPEN]
        );
        let sessions = run(async move {
            let mut sessions = HashMap::new();
            let (wal, _) = Wal::open(config, |r| {
                if records::is_session_record(r.kind) {
                    assert!(visit_session_record(&mut sessions, &r));
                }
            })
            .await
            .expect("reopen");
            wal.close().await.expect("close");
            sessions
        });
        assert!(
            sessions.contains_key("c"),
            "the new session survives recovery"
        );
    }
}
