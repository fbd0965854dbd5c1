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
//! - A clean-start claim logs `session_end` at the home before the takeover starts.
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

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::mqtt::{ByteStr, Protocol, ReasonCode};
use crate::router::{filter_matches, owner_of, parse_filter};
use crate::session::{Delivery, LogPos, Message, Session, SubOptions, Will, EXPIRY_NEVER};
use crate::shard::{ConnRef, Shard, ShardMsg};
use crate::storage::{Offset, RecordKind, RecordRef, Wal};

use super::{Reply, SessionSlot};
use records::SessionRecord;

/// How often changed replay cursors are logged.
pub const CURSOR_FLUSH_MS: u64 = 200;

/// Bytes read per step while replaying (bounds one read buffer).
const REPLAY_READ_BYTES: usize = 4 << 20;

/// A session as its home's log describes it.
#[derive(Debug)]
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
    /// Subscriptions by full filter, with the time they want messages from.
    pub subscriptions: HashMap<String, (SubOptions, u64)>,
    /// Replay cursor per owner shard.
    pub cursors: HashMap<u16, u64>,
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
        SessionRecord::Subscribe { filter, opts } => {
            s.subscriptions.insert(filter, (opts, record.timestamp_ms));
        }
        SessionRecord::Unsubscribe { filter } => {
            s.subscriptions.remove(&filter);
        }
        SessionRecord::Cursor(cursors) => {
            for (shard, offset) in cursors {
                s.cursors.insert(shard, offset);
            }
        }
        SessionRecord::Open { .. } | SessionRecord::End => unreachable!("handled above"),
    }
    true
}

/// What a home asks an owner to replay for one session.
#[derive(Debug, Clone)]
pub struct ReplayWant {
    /// The session's client id.
    pub client_id: ByteStr,
    /// Replay records at or above this offset.
    pub from: u64,
    /// Plain filters (share prefix removed) with the time each wants messages from.
    pub filters: Vec<(String, u64)>,
    /// At most this many messages (the session's queue bound).
    pub messages_max: usize,
}

/// Milliseconds since the Unix epoch, the clock of record timestamps.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl Shard {
    fn home_of(&self, client_id: &str) -> usize {
        owner_of(client_id, self.mesh.shards()).0 as usize
    }

    /// Sends a session record to the client's home shard; with `wait`, returns a
    /// request that completes (`Reply::Logged`) once the record is durable.
    pub(crate) fn log_session(
        &self,
        client_id: &str,
        record: &SessionRecord,
        wait: bool,
    ) -> Option<u64> {
        let (kind, body) = records::encode(client_id, record);
        let ack_id = wait.then(|| self.broker.open_request(1));
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
        from: usize,
        kind: u8,
        body: Vec<u8>,
        ack_id: Option<u64>,
    ) {
        let kind = RecordKind(kind);
        if kind == records::RECORD_SESSION_OPEN || kind == records::RECORD_SESSION_END {
            if let Some((client, _)) = records::decode(kind, &body) {
                let mut persisted = self.broker.persisted.borrow_mut();
                if kind == records::RECORD_SESSION_OPEN {
                    persisted.insert(client);
                } else {
                    persisted.remove(&client);
                }
            }
        }
        let Some(durable) = self.durable.get() else {
            if let Some(id) = ack_id {
                self.post(from, ShardMsg::LogDone { id, ok: true });
            }
            return;
        };
        let appended = match durable.wal.reserve(body.len()).await {
            Ok(()) => durable.wal.append(kind, unix_ms(), &[&body[..]]),
            Err(e) => Err(e),
        };
        let offset = match appended {
            Ok(offset) => offset,
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "session record not logged");
                if let Some(id) = ack_id {
                    self.post(from, ShardMsg::LogDone { id, ok: false });
                }
                return;
            }
        };
        let Some(id) = ack_id else { return };
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            let Some(durable) = shard.durable.get() else {
                return;
            };
            let ok = durable.wal.wait_durable(offset).await.is_ok();
            shard.post(from, ShardMsg::LogDone { id, ok });
        })
        .detach();
    }

    /// Home shard, on a clean-start claim: the old session ends here, in the log's order,
    /// before the new connection can log anything of its own.
    pub(crate) fn end_logged_at_home(self: &Rc<Self>, client_id: &ByteStr) {
        if !self
            .broker
            .persisted
            .borrow_mut()
            .remove(client_id.as_str())
        {
            return;
        }
        let (kind, body) = records::encode(client_id.as_str(), &SessionRecord::End);
        // Appended now, before the new connection's own records can arrive; only a full
        // group-commit buffer makes it wait (in order with other waiting appends).
        if let Some(durable) = self.durable.get() {
            match durable.wal.append(kind, unix_ms(), &[&body[..]]) {
                Ok(_) => return,
                Err(crate::storage::WalError::BufferFull) => {}
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "session end not logged");
                    return;
                }
            }
        }
        let shard = Rc::clone(self);
        let from = self.id;
        glommio::spawn_local(async move { shard.on_session_log(from, kind.0, body, None).await })
            .detach();
    }

    /// Logs the replay cursors of every logged session that changed, every
    /// `CURSOR_FLUSH_MS`.
    pub(crate) fn spawn_cursor_flush(self: &Rc<Self>) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            while !shard.shutdown.is_stopping() {
                glommio::timer::sleep(Duration::from_millis(CURSOR_FLUSH_MS)).await;
                shard.flush_cursors();
            }
        })
        .detach();
    }

    fn flush_cursors(&self) {
        let changed: Vec<(ByteStr, Vec<(u16, u64)>)> = {
            let mut sessions = self.broker.sessions.borrow_mut();
            sessions
                .values_mut()
                .filter(|slot| slot.session.logged)
                .filter_map(|slot| {
                    let s = &mut slot.session;
                    let cursors = s.replay.take_changed(&s.outbound)?;
                    (!cursors.is_empty()).then(|| (s.client_id.clone(), cursors))
                })
                .collect()
        };
        for (client, cursors) in changed {
            self.log_session(client.as_str(), &SessionRecord::Cursor(cursors), false);
        }
    }

    /// Logs `subscribe` records for a logged session and waits until they are durable.
    /// Returns false if the home's log could not take them.
    pub(crate) async fn log_subscriptions(
        &self,
        client_id: &str,
        added: &[(String, SubOptions)],
    ) -> bool {
        let mut wait = None;
        for (i, (filter, opts)) in added.iter().enumerate() {
            let record = SessionRecord::Subscribe {
                filter: filter.clone(),
                opts: *opts,
            };
            // One home log, appended in order: the last record's durability covers all.
            wait = self.log_session(client_id, &record, i + 1 == added.len());
        }
        match wait {
            Some(id) => matches!(
                self.broker.replies(id).await.pop(),
                Some(Reply::Logged(true))
            ),
            None => true,
        }
    }

    /// Home shard at start: rebuilds its persistent sessions (offline, on this shard),
    /// indexes their subscriptions and replays what each had not acknowledged. Returns
    /// the wills that fell due while the broker was down, to publish once every shard
    /// serves.
    pub(crate) async fn restore_sessions(
        self: &Rc<Self>,
        recovered: HashMap<String, RecoveredSession>,
    ) -> Vec<(ByteStr, Will)> {
        let now_ms = unix_ms();
        let mut due_wills = Vec::new();
        let mut restored = Vec::new();
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
        for (key, client_id, rec, offline_ms) in restored {
            if let Some(will) = rec.will {
                let left_ms = u64::from(will.delay_secs.min(rec.expiry_secs)) * 1000;
                if left_ms <= offline_ms {
                    due_wills.push((client_id.clone(), will));
                } else {
                    if let Some(slot) = self.broker.sessions.borrow_mut().get_mut(&key) {
                        slot.session.will = Some(will);
                    }
                    self.schedule_will_ms(key, 0, left_ms - offline_ms);
                }
            }
            if rec.expiry_secs != EXPIRY_NEVER {
                let left_ms = u64::from(rec.expiry_secs) * 1000 - offline_ms;
                self.schedule_expiry_ms(key, 0, left_ms);
            }
        }
        due_wills
    }

    async fn end_logged_at_home_now(self: &Rc<Self>, client_id: &ByteStr) {
        let (kind, body) = records::encode(client_id.as_str(), &SessionRecord::End);
        self.on_session_log(self.id, kind.0, body, None).await;
    }

    fn install_restored(&self, client_id: &ByteStr, rec: &RecoveredSession) -> u64 {
        let mut session = Session::new(
            client_id.clone(),
            rec.protocol,
            rec.expiry_secs,
            self.outbound_limits(),
        );
        session.logged = true;
        session.attached_on = Some(self.id);
        for (filter, (opts, since)) in &rec.subscriptions {
            session.subscriptions.insert(filter.clone(), *opts);
            session.subscribed_at_ms.insert(filter.clone(), *since);
        }
        let key = self.broker.new_session_key();
        let me = ConnRef {
            shard: self.id,
            token: 0,
        };
        self.broker
            .by_client
            .borrow_mut()
            .insert(client_id.clone(), key);
        self.broker
            .registry
            .borrow_mut()
            .insert(client_id.clone(), me);
        self.broker
            .persisted
            .borrow_mut()
            .insert(client_id.as_str().to_string());
        self.broker.sessions.borrow_mut().insert(
            key,
            SessionSlot {
                session,
                conn: None,
                last_conn: me,
                epoch: 0,
            },
        );
        self.probe.sessions_current.add(1);
        key
    }

    /// Indexes the restored sessions' subscriptions and queues what every owner replays.
    async fn replay_all(self: &Rc<Self>, restored: &[(u64, ByteStr, RecoveredSession, u64)]) {
        let mut acks = Vec::new();
        for (key, _, rec, _) in restored {
            for (filter, (opts, _)) in &rec.subscriptions {
                acks.extend(self.index_subscription(*key, filter, *opts));
            }
        }
        for ack in acks {
            self.broker.replies(ack).await;
        }
        if restored.is_empty() {
            return;
        }
        let shards = self.mesh.shards();
        let id = self.broker.open_request(shards);
        for owner in 0..shards {
            let wants = restored
                .iter()
                .map(|(_, client_id, rec, _)| ReplayWant {
                    client_id: client_id.clone(),
                    from: rec.cursors.get(&(owner as u16)).copied().unwrap_or(0),
                    filters: rec
                        .subscriptions
                        .iter()
                        .filter_map(|(f, (_, since))| {
                            let plain = parse_filter(f, &self.topic_limits()).ok()?.filter;
                            Some((plain.to_string(), *since))
                        })
                        .collect(),
                    messages_max: self.config.session_queue_messages_max,
                })
                .collect();
            self.post(owner, ShardMsg::Replay { id, wants });
        }
        let now = Instant::now();
        for reply in self.broker.replies(id).await {
            let Reply::Replayed {
                shard,
                end,
                found,
                resume,
            } = reply
            else {
                continue;
            };
            let mut sessions = self.broker.sessions.borrow_mut();
            for (want, msg) in found {
                let key = restored[want as usize].0;
                let Some(slot) = sessions.get_mut(&key) else {
                    continue;
                };
                if let Some(delivery) = replayed_delivery(&slot.session, msg) {
                    self.offer(slot, delivery, now);
                }
            }
            for ((key, ..), resume) in restored.iter().zip(resume) {
                let Some(slot) = sessions.get_mut(key) else {
                    continue;
                };
                if let Some(offset) = resume {
                    // More than the queue holds: the rest is read from the log later.
                    slot.session.replay.overflowed(LogPos {
                        shard: shard as u16,
                        offset,
                        floor: offset,
                    });
                }
                slot.session.replay.raise(shard, end);
            }
        }
    }

    /// Makes the restored sessions' cursors durable before any shard serves: a cursor
    /// recovered past an owner's end (see `scan_for_replay`) must not outlive this start,
    /// or the records that now take those offsets would be skipped after the next crash.
    async fn log_restored_cursors(&self, restored: &[(u64, ByteStr, RecoveredSession, u64)]) {
        let mut waits = Vec::new();
        for (key, client_id, ..) in restored {
            let cursors = {
                let mut sessions = self.broker.sessions.borrow_mut();
                let Some(slot) = sessions.get_mut(key) else {
                    continue;
                };
                let s = &mut slot.session;
                s.replay.touch();
                s.replay.take_changed(&s.outbound).unwrap_or_default()
            };
            let record = SessionRecord::Cursor(cursors);
            waits.extend(self.log_session(client_id.as_str(), &record, true));
        }
        for id in waits {
            if !matches!(
                self.broker.replies(id).await.pop(),
                Some(Reply::Logged(true))
            ) {
                tracing::error!(
                    shard = self.id,
                    "a restored session's cursor could not be logged"
                );
            }
        }
    }

    /// Owner shard: reads its log from the lowest wanted offset and answers with the
    /// messages each session wants.
    pub(crate) async fn on_replay(&self, from: usize, id: u64, wants: Vec<ReplayWant>) {
        let Some(durable) = self.durable.get() else {
            let resume = vec![None; wants.len()];
            let found = Vec::new();
            self.post(
                from,
                ShardMsg::ReplayReply {
                    id,
                    end: 0,
                    found,
                    resume,
                },
            );
            return;
        };
        let scan = scan_for_replay(&durable.wal, self.id as u16, &wants, None).await;
        tracing::info!(
            shard = self.id,
            to = from,
            messages = scan.found.len(),
            "replayed for persistent sessions"
        );
        let (end, found, resume) = (scan.end, scan.found, scan.resume);
        self.post(
            from,
            ShardMsg::ReplayReply {
                id,
                end,
                found,
                resume,
            },
        );
    }
}

/// What a replay scan of one log found.
pub struct ReplayScan {
    /// `(index into wants, message)` in offset order.
    pub found: Vec<(u32, Arc<Message>)>,
    /// Every record below this was scanned.
    pub end: u64,
    /// Per want: the first matching record that did not fit its `messages_max`.
    pub resume: Vec<Option<u64>>,
}

/// Reads `wal` (the log of shard `shard`) from the lowest wanted offset up to `stop`
/// (or its end) and returns the messages each want asks for.
pub async fn scan_for_replay(
    wal: &Wal,
    shard: u16,
    wants: &[ReplayWant],
    stop: Option<u64>,
) -> ReplayScan {
    // A cursor may lie past the log's end: the session acknowledged QoS 1 messages that
    // reached it before they were durable, and the crash cut them off. Those offsets
    // are given to new records now, so the replay (and the cursor after it) restarts at
    // the end.
    let end = stop.unwrap_or(u64::MAX).min(wal.next_offset().0);
    // Whole segments older than every subscription of a want hold nothing for it.
    let starts: Vec<u64> = wants
        .iter()
        .map(|w| match w.filters.iter().map(|(_, since)| *since).min() {
            Some(since) => w.from.max(wal.first_offset_since(since).0),
            None => w.from,
        })
        .collect();
    let lowest = starts
        .iter()
        .copied()
        .min()
        .unwrap_or(0)
        .max(wal.first_offset().0);
    let mut next = Offset(lowest.min(end));
    let mut found: Vec<(u32, Arc<Message>)> = Vec::new();
    let mut counts = vec![0usize; wants.len()];
    let mut resume: Vec<Option<u64>> = vec![None; wants.len()];
    while next.0 < end && resume.iter().any(Option::is_none) {
        let read = wal.read_from(next, REPLAY_READ_BYTES, |record| {
            if record.offset.0 >= end {
                return;
            }
            let Some((recipients, msg)) = super::durable::decode_any_publish(&record, shard) else {
                return;
            };
            let msg = Arc::new(msg);
            for (i, want) in wants.iter().enumerate() {
                if resume[i].is_some()
                    || record.offset.0 < starts[i]
                    || !wanted(want, &recipients, &record, &msg)
                {
                    continue;
                }
                if counts[i] >= want.messages_max {
                    resume[i] = Some(record.offset.0);
                    continue;
                }
                counts[i] += 1;
                found.push((i as u32, Arc::clone(&msg)));
            }
        });
        match read.await {
            Ok(after) if after > next => next = after.min(Offset(end)),
            Ok(_) => break,
            Err(e) => {
                tracing::error!(shard, error = %e, "replay could not read the log");
                break;
            }
        }
    }
    ReplayScan {
        found,
        end: next.0,
        resume,
    }
}

/// Whether a replayed record is for `want`: a `publish_for` names it; a plain publish
/// matches one of its filters and is not older than that subscription.
fn wanted(
    want: &ReplayWant,
    recipients: &Option<Vec<String>>,
    record: &RecordRef<'_>,
    msg: &Message,
) -> bool {
    match recipients {
        Some(names) => names.iter().any(|n| n == want.client_id.as_str()),
        None => want.filters.iter().any(|(filter, since)| {
            record.timestamp_ms >= *since && filter_matches(filter, msg.topic.as_str())
        }),
    }
}

/// The delivery of a replayed message to a restored session, by its subscriptions
/// (the same overlap rule as live delivery).
pub(crate) fn replayed_delivery(session: &Session, msg: Arc<Message>) -> Option<Delivery> {
    let own = session.client_id == msg.publisher;
    let mut qos = None;
    let mut ids = Vec::new();
    let mut all_rap = true;
    let mut group = None;
    for (full, opts) in &session.subscriptions {
        let Some((plain, share)) = split_share(full) else {
            continue;
        };
        if !filter_matches(plain, msg.topic.as_str()) || (own && opts.no_local) {
            continue;
        }
        qos = Some(qos.map_or(opts.qos, |q: crate::mqtt::QoS| q.max(opts.qos)));
        all_rap &= opts.retain_as_published;
        ids.extend(opts.subscription_id);
        if let Some(g) = share {
            group = Some(Arc::<str>::from(g));
        }
    }
    Some(Delivery {
        qos: qos?.min(msg.qos),
        retain: msg.retain && all_rap,
        subscription_ids: ids,
        share_group: group,
        holds_cursor: true,
        msg,
    })
}

/// `(plain filter, share group)` of a full filter.
fn split_share(full: &str) -> Option<(&str, Option<&str>)> {
    match full.strip_prefix("$share/") {
        Some(rest) => {
            let (group, filter) = rest.split_once('/')?;
            Some((filter, Some(group)))
        }
        None => Some((full, None)),
    }
}

/// Why a SUBACK refuses filters whose `subscribe` record could not be made durable.
pub const SUBSCRIBE_NOT_LOGGED: ReasonCode = ReasonCode::UnspecifiedError;
