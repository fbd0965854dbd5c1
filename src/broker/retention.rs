//! Retention floors: which records of a shard's log are still needed, so that the WAL
//! deletes only segments nobody needs (see `storage::retention` for the limits).
//!
//! Needed are the records at or above every session's replay cursor (persistent
//! sessions, and any session catching up from the log) and every retained message's
//! record. Each `RETENTION_TICK_MS` every shard sends every owner the lowest cursor its
//! sessions hold for that owner's log; an owner takes the lowest of the last **two**
//! reports of every shard, so a session moving between shards (counted by neither for a
//! moment) is still covered by the report before or after its move.
//!
//! Retained messages would otherwise pin the oldest segment forever: when retention
//! wants a segment that still holds a retained message's record, the owner writes the
//! message again as a `retained_copy` record (kind 12, rebuilt into the retained index at
//! start, never replayed to sessions) and the segment can go.
//!
//! A copy is logged later than the publish it copies, so recovery cannot take "the last
//! record of a topic" as its retained state: a newer publish or clear of the topic may
//! sit between them. Every retained state therefore has a **version**, the offset of its
//! original publish, and recovery keeps the highest version per topic (`keep_retained`).
//! A `retained_copy` body is `version u64 LE | publish body` (see `durable`); a copy of
//! a copy keeps the original's version (`Broker::retained_versions`). The copy is also
//! appended only if the message is still the topic's retained state right before the
//! append, so the log itself never holds a copy after a newer state of its topic. An
//! expired retained message is a version like any other: at recovery it supersedes the
//! older ones and leaves the topic empty. Kind 9 (`retained`, the unversioned copy of
//! earlier builds) is still read, with its own offset as its version.
//!
//! Session records and wills are kept the same way: a home's records describing a live
//! session (its `session_open`, subscriptions, cursors, logged QoS 2 releases and
//! in-flight ids, delayed will) or a live connection's `will` would otherwise go with
//! their segment while the session or connection lives on, and a crash would lose them.
//! With retention on, the home keeps a shadow of what recovery would rebuild from them
//! (`persist::SessionShadow`) and, before a segment goes, writes every session resting
//! on a record in it again as one `session_copy` record and every will logged in it as
//! its `will` record again (`keep_session_records`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;

use crate::broker::{Broker, FloorReports, ShardMsg};
use crate::router::ShardId;
use crate::runtime::spawn_every;
use crate::session::{LogPos, Message};
use crate::storage::{Offset, RecordKind, RecordRef};

use super::durable::{
    as_publish, decode_publish_body_even_expired, encode_publish_body, publish_body_len, Recovered,
};
use super::persist::records::{RECORD_SESSION_COPY, RECORD_WILL};
use super::persist::{unix_ms, SessionShadow};

/// How often owners tell every shard how far their fan-out has got.
pub const WATERMARK_MS: u64 = 1000;

/// How often floors are reported and applied.
pub const RETENTION_TICK_MS: u64 = 1000;

/// Record kind of a retained message written again by earlier builds (no version; read
/// only).
pub const RECORD_RETAINED: RecordKind = RecordKind(9);

/// Record kind of a retained message written again to free an old segment, with the
/// version of the state it copies.
pub const RECORD_RETAINED_COPY: RecordKind = RecordKind(12);

/// Appends the body of a `retained_copy` record of `msg` at `version` to `out`.
fn encode_retained_copy(msg: &Message, version: u64, out: &mut bytes::BytesMut) {
    out.put_u64_le(version);
    encode_publish_body(msg, &as_publish(msg), out);
}

impl Recovered {
    /// Recovery: makes `msg` (version `version`) `topic`'s retained state unless a newer
    /// version is already there. Equal versions are copies of one state: the later
    /// record is kept, so the index points at the newest copy.
    pub(crate) fn keep_retained(&mut self, version: u64, msg: Message) {
        let topic = msg.topic.as_str();
        if self
            .retained_versions
            .get(topic)
            .is_some_and(|kept| *kept > version)
        {
            return;
        }
        self.retained_versions.insert(topic.to_string(), version);
        self.retained.insert(topic.to_string(), Arc::new(msg));
    }

    /// Recovery: takes a `retained_copy` (or legacy `retained`) record; false if the
    /// record is of another kind.
    pub(crate) fn visit_retained_copy(&mut self, record: &RecordRef<'_>) -> bool {
        let (version, body) = if record.kind == RECORD_RETAINED_COPY {
            let Some((version, body)) = record.body.split_first_chunk::<8>() else {
                return true;
            };
            (u64::from_le_bytes(*version), body)
        } else if record.kind == RECORD_RETAINED {
            (record.offset.0, record.body)
        } else {
            return false;
        };
        if let Some(msg) = decode_publish_body_even_expired(record, body, self.shard) {
            self.keep_retained(version, msg);
        }
        true
    }
}

impl Broker {
    /// With retention on, starts the shadow of this home's session records from what
    /// recovery rebuilt (see `keep_session_records`).
    pub(crate) fn shadow_session_records(
        &self,
        sessions: &std::collections::HashMap<String, super::persist::RecoveredSession>,
    ) {
        if self.config.retention_ms == 0 && self.config.retention_bytes == 0 {
            return;
        }
        *self.session_log.shadow.borrow_mut() = Some(SessionShadow::new(
            sessions,
            self.config.session_qos2_released_max,
        ));
    }

    /// Runs the floor reports and retention for this shard, if a limit is configured.
    pub(crate) fn spawn_retention(self: &Rc<Self>) {
        if self.config.retention_ms == 0 && self.config.retention_bytes == 0 {
            // The log keeps every segment; Kafka topics with a retention of their own
            // still drop their old batches from what they serve.
            if self.kafka_has_retention() {
                spawn_every(
                    Duration::from_millis(RETENTION_TICK_MS),
                    self,
                    |shard| async move {
                        shard.kafka_retention(unix_ms());
                    },
                );
            }
            return;
        }
        spawn_every(
            Duration::from_millis(RETENTION_TICK_MS),
            self,
            |shard| async move {
                shard.report_floors();
                shard.apply_floor().await;
            },
        );
    }

    /// Owner: tells every shard, every `WATERMARK_MS`, that every record of this log
    /// below the watermark has been sent to it. Behind the deliveries in each channel,
    /// it lets the cursors of sessions that receive nothing from this log advance, so
    /// an idle persistent session does not hold the log (or a replay) back forever.
    pub(crate) fn spawn_watermarks(self: &Rc<Self>) {
        if self.log.get().is_none() {
            return;
        }
        spawn_every(Duration::from_millis(WATERMARK_MS), self, |shard| {
            if let Some(durable) = shard.log.get() {
                let watermark = durable.sent_watermark();
                for peer in shard.all_shards() {
                    shard.post(peer, ShardMsg::Watermark { watermark });
                }
            }
            std::future::ready(())
        });
    }

    /// Every record of `owner`'s log below `watermark` that any session here wanted has
    /// reached it (the channel is in order).
    pub(crate) fn on_watermark(&self, owner: ShardId, watermark: u64) {
        {
            let mut heard = self.retention.heard_floors.borrow_mut();
            let o = owner.index();
            if heard.len() <= o {
                heard.resize(o + 1, 0);
            }
            heard[o] = heard[o].max(watermark);
        }
        // Every logged session is watched (see `Sessions::watched`).
        let watched = self.sessions.watched.borrow();
        let mut slots = self.sessions.slots.borrow_mut();
        for key in watched.iter() {
            if let Some(slot) = slots.get_mut(key).filter(|slot| slot.session.logged) {
                slot.session.replay.raise_quietly(owner, watermark);
            }
        }
    }

    /// Sends every owner the lowest cursor this shard's sessions hold in its log.
    fn report_floors(&self) {
        let shards = self.mesh.shards();
        let mut mins = vec![u64::MAX; shards];
        for slot in self.sessions.slots.borrow().values() {
            let s = &slot.session;
            if !(s.logged || s.replay.has_gaps()) {
                continue;
            }
            let cursors = s.replay.current(&s.outbound);
            for (owner, min) in mins.iter_mut().enumerate() {
                *min = (*min).min(cursors.get(owner).copied().unwrap_or(0));
            }
        }
        self.lower_to_backlogs(&mut mins);
        for (owner, floor) in self.all_shards().zip(mins) {
            self.post(owner, ShardMsg::RetentionFloor { floor });
        }
    }

    /// Owner: a shard's report of the lowest cursor its sessions hold here.
    pub(crate) fn on_retention_floor(&self, from: ShardId, floor: u64) {
        let mut reports = self.retention.floor_reports.borrow_mut();
        if reports.len() < self.mesh.shards() {
            reports.resize(self.mesh.shards(), FloorReports::default());
        }
        let r = &mut reports[from.index()];
        r.lowest_of_last_two = if r.sent == 0 {
            floor
        } else {
            r.last.min(floor)
        };
        r.last = floor;
        r.sent = r.sent.saturating_add(1);
    }

    /// The floor every shard's last two reports allow; `None` until each sent two.
    fn sessions_floor(&self) -> Option<u64> {
        let reports = self.retention.floor_reports.borrow();
        if reports.len() < self.mesh.shards() || reports.iter().any(|r| r.sent < 2) {
            return None;
        }
        reports.iter().map(|r| r.lowest_of_last_two).min()
    }

    async fn apply_floor(&self) {
        let Some(durable) = self.log.get() else {
            return;
        };
        // Kafka partitions drop what their topics' retention lets go first.
        let kafka_floor = self.kafka_retention(unix_ms());
        let Some(sessions_floor) = self.sessions_floor() else {
            return;
        };
        let Some(candidate) = durable.wal.retention_candidate(unix_ms()) else {
            return;
        };
        let limit = candidate.0.min(sessions_floor);
        let pinned: Vec<Arc<Message>> = {
            let mut found = Vec::new();
            self.retained
                .index
                .borrow()
                .for_each(|_, msg: &Arc<Message>| {
                    if msg.log.is_some_and(|p| p.offset < limit) {
                        found.push(Arc::clone(msg));
                    }
                });
            found
        };
        for msg in pinned {
            let version = self.retained_version(&msg);
            match self.relog_retained(&msg, version).await {
                // Replaced or cleared before the copy was appended: nothing to copy.
                Ok(None) => {}
                Ok(Some(offset)) => {
                    let mut copy = (*msg).clone();
                    copy.log = Some(LogPos {
                        shard: self.id,
                        offset,
                        floor: offset + 1,
                    });
                    let mut retained = self.retained.index.borrow_mut();
                    // Replaced meanwhile by a newer retained message: keep that one.
                    let current = retained.get(msg.topic.as_str()).map(Arc::clone);
                    if current.is_some_and(|c| Arc::ptr_eq(&c, &msg)) {
                        retained.insert(msg.topic.as_str(), Arc::new(copy));
                        self.retained
                            .versions
                            .borrow_mut()
                            .insert(msg.topic.as_str().to_string(), version);
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = self.id.index(), error = %e, "a retained message could not be written again; its segment stays");
                    return;
                }
            }
        }
        if let Err(e) = self.kafka_keep_catalog(limit).await {
            tracing::warn!(shard = self.id.index(), error = ?e, "created Kafka topics could not be written again; their segment stays");
            return;
        }
        if let Err(e) = self.kafka_keep_commits(limit).await {
            tracing::warn!(shard = self.id.index(), error = %e, "Kafka group commits could not be written again; their segment stays");
            return;
        }
        if let Err(e) = self.keep_session_records(limit).await {
            tracing::warn!(shard = self.id.index(), error = %e, "session records could not be written again; their segment stays");
            return;
        }
        let mut floor = sessions_floor
            .min(kafka_floor)
            .min(self.kafka_bridge_floor());
        self.retained
            .index
            .borrow()
            .for_each(|_, msg: &Arc<Message>| {
                if let Some(p) = msg.log {
                    floor = floor.min(p.offset);
                }
            });
        durable.wal.set_retention_floor(Offset(floor));
    }

    /// Writes again, and waits until durable, every live session's records and every
    /// armed will that lie below `limit` (see the module docs).
    async fn keep_session_records(&self, limit: u64) -> Result<(), crate::storage::WalError> {
        let (sessions, wills) = match self.session_log.shadow.borrow().as_ref() {
            Some(shadow) => shadow.due(limit),
            None => return Ok(()),
        };
        let durable = self.log.get().expect("checked by the caller");
        let mut last = None;
        for client in sessions {
            let copy = |shadow: &SessionShadow| shadow.copy_of(&client, unix_ms());
            let offset = self
                .append_from_shadow(RECORD_SESSION_COPY, copy, |shadow, offset| {
                    shadow.copied(&client, offset)
                })
                .await?;
            last = last.max(offset);
        }
        for key in wills {
            let will = |shadow: &SessionShadow| shadow.will(&key).map(<[u8]>::to_vec);
            let offset = self
                .append_from_shadow(RECORD_WILL, will, |shadow, offset| {
                    shadow.will_copied(&key, offset)
                })
                .await?;
            last = last.max(offset);
        }
        if let Some(offset) = last {
            // The copies must be durable before the segment holding the originals goes.
            durable.wal.wait_durable(Offset(offset)).await?;
        }
        Ok(())
    }

    /// Appends a record of `kind` whose body `body` takes from the shadow with no
    /// `.await` before the append (`None`: nothing to write any more), then tells the
    /// shadow its offset (`done`).
    async fn append_from_shadow(
        &self,
        kind: RecordKind,
        body: impl Fn(&SessionShadow) -> Option<Vec<u8>>,
        done: impl Fn(&mut SessionShadow, u64),
    ) -> Result<Option<u64>, crate::storage::WalError> {
        let durable = self.log.get().expect("checked by the caller");
        let body_of = || self.session_log.shadow.borrow().as_ref().and_then(&body);
        loop {
            let Some(len) = body_of().map(|b| b.len()) else {
                return Ok(None);
            };
            durable.wal.reserve(len).await?;
            let Some(bytes) = body_of() else {
                return Ok(None);
            };
            match durable.wal.append(kind, unix_ms(), &[&bytes[..]]) {
                Ok(offset) => {
                    if let Some(shadow) = self.session_log.shadow.borrow_mut().as_mut() {
                        done(shadow, offset.0);
                    }
                    return Ok(Some(offset.0));
                }
                // Taken by another append meanwhile (or grown): wait for room again.
                Err(crate::storage::WalError::BufferFull) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The version of a retained message in the index: the offset of its original
    /// publish (a copy's is remembered in `retained_versions`).
    fn retained_version(&self, msg: &Message) -> u64 {
        let copied = self.retained.versions.borrow();
        match copied.get(msg.topic.as_str()) {
            Some(version) => *version,
            None => msg.log.map_or(0, |p| p.offset),
        }
    }

    /// Logs a `retained_copy` of `msg` and waits until it is durable; `None` (nothing
    /// logged) if `msg` is no longer its topic's retained message when the copy would be
    /// appended.
    async fn relog_retained(
        &self,
        msg: &Arc<Message>,
        version: u64,
    ) -> Result<Option<u64>, crate::storage::WalError> {
        let durable = self.log.get().expect("checked by the caller");
        let publish = as_publish(msg);
        let body_len = 8 + publish_body_len(msg, &publish)?;
        durable.wal.reserve(body_len).await?;
        // No await from here to the append: no newer state of the topic can be logged
        // between this check and the copy.
        let current = self
            .retained
            .index
            .borrow()
            .get(msg.topic.as_str())
            .cloned();
        if !current.is_some_and(|c| Arc::ptr_eq(&c, msg)) {
            return Ok(None);
        }
        let mut body = bytes::BytesMut::with_capacity(body_len);
        encode_retained_copy(msg, version, &mut body);
        let offset = durable
            .wal
            .append(RECORD_RETAINED_COPY, unix_ms(), &[&body[..]])?;
        // The copy must be durable before the segment holding the original may go.
        durable.wal.wait_durable(offset).await?;
        Ok(Some(offset.0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::broker::durable::RECORD_PUBLISH;
    use crate::mqtt::{ByteStr, ClientId, PublishProperties, QoS};

    fn msg(payload: &str) -> Message {
        Message {
            topic: ByteStr::from_static("r/t"),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
            publisher: ClientId::from("p"),
            expires_at: None,
            log: None,
        }
    }

    /// A record as the broker writes it.
    enum Rec {
        Publish(Message),
        Copy(Message, u64),
        /// What earlier builds wrote for a copy.
        LegacyCopy(Message),
    }

    /// Recovers `records` (at offsets from `first` on); the retained state of "r/t".
    fn recover(first: u64, records: Vec<Rec>) -> Option<Arc<Message>> {
        let mut recovered = Recovered::default();
        for (i, rec) in records.into_iter().enumerate() {
            let mut body = bytes::BytesMut::new();
            let kind = match rec {
                Rec::Publish(m) => {
                    encode_publish_body(&m, &as_publish(&m), &mut body);
                    RECORD_PUBLISH
                }
                Rec::Copy(m, version) => {
                    encode_retained_copy(&m, version, &mut body);
                    RECORD_RETAINED_COPY
                }
                Rec::LegacyCopy(m) => {
                    encode_publish_body(&m, &as_publish(&m), &mut body);
                    RECORD_RETAINED
                }
            };
            recovered.visit(RecordRef {
                offset: Offset(first + i as u64),
                kind,
                timestamp_ms: 0,
                body: &body,
            });
        }
        recovered.retained.get("r/t").cloned()
    }

    fn payload(m: Option<Arc<Message>>) -> Option<String> {
        m.map(|m| String::from_utf8(m.payload.to_vec()).expect("utf-8"))
    }

    #[test]
    fn a_copy_logged_after_a_newer_publish_or_clear_does_not_win() {
        use Rec::*;
        let newer = recover(
            0,
            vec![Publish(msg("A")), Publish(msg("B")), Copy(msg("A"), 0)],
        );
        assert_eq!(payload(newer), Some("B".into()));
        let cleared = recover(
            0,
            vec![Publish(msg("A")), Publish(msg("")), Copy(msg("A"), 0)],
        );
        assert_eq!(payload(cleared), Some(String::new()), "cleared");
        // The original's segment is gone; a copy of a copy keeps the original version.
        let copies = recover(
            5,
            vec![Copy(msg("A"), 0), Publish(msg("B")), Copy(msg("A"), 0)],
        );
        assert_eq!(payload(copies), Some("B".into()));
        let copied = recover(
            5,
            vec![Copy(msg("A"), 0), Publish(msg("B")), Copy(msg("B"), 6)],
        );
        let copied = copied.expect("kept");
        assert_eq!(
            (&copied.payload[..], copied.log.map(|p| p.offset)),
            (&b"B"[..], Some(7))
        );
        // Earlier builds' copies carry no version: their own offset is used.
        let legacy = recover(0, vec![Publish(msg("A")), LegacyCopy(msg("B"))]);
        assert_eq!(payload(legacy), Some("B".into()));
    }

    #[test]
    fn an_expired_retained_publish_supersedes_the_older_message() {
        let mut expired = msg("E");
        expired.expires_at = Some(Instant::now());
        let kept = recover(0, vec![Rec::Publish(msg("A")), Rec::Publish(expired)]);
        let kept = kept.expect("the expired message is the topic's state");
        assert_eq!(&kept.payload[..], b"E");
        assert!(kept.is_expired(Instant::now()), "not restored as retained");
        // Also when only a copy of the older one is left.
        let mut expired = msg("E");
        expired.expires_at = Some(Instant::now());
        let kept = recover(5, vec![Rec::Copy(msg("A"), 0), Rec::Publish(expired)]);
        assert!(kept.expect("kept").is_expired(Instant::now()));
    }

    /// Every record kind constant in the source is distinct: two branches adding a kind
    /// at once must not give one byte two meanings in the log.
    #[test]
    fn record_kinds_are_distinct() {
        fn walk(dir: &std::path::Path, kinds: &mut Vec<(u8, String)>) {
            for entry in std::fs::read_dir(dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, kinds);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let consts = text.lines().filter(|l| l.trim_start().contains("const "));
                for line in consts {
                    let Some((name, rest)) = line.split_once(": RecordKind = RecordKind(") else {
                        continue;
                    };
                    let n: u8 = rest.trim_end_matches(");").parse().expect("a kind byte");
                    kinds.push((n, format!("{}: {}", path.display(), name.trim())));
                }
            }
        }
        let mut kinds = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut kinds,
        );
        kinds.sort();
        assert!(kinds.len() >= 10, "found {kinds:?}");
        for pair in kinds.windows(2) {
            assert_ne!(pair[0].0, pair[1].0, "{} and {}", pair[0].1, pair[1].1);
        }
    }
}
