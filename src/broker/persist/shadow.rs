//! A home's shadow of its session records: what recovery would rebuild from them now,
//! kept only while retention is on, so that retention can write again what a segment it
//! is about to delete still holds for a live session or connection (see `retention`).
//!
//! Recovery rebuilds a session from every record since its `session_open` (and a live
//! connection's will from its `will` record), however old. Retention deletes whole
//! segments below the sessions' cursors, which say nothing about those records: without
//! a copy, a session connected (or offline) longer than its records' segment survives
//! would lose, in a crash, its subscriptions, cursors, logged QoS 2 releases and the
//! will of its connection.
//!
//! The shadow applies every session and will record the home appends, in append order,
//! with the same rules as recovery (`visit_session_record`, `visit_will_record`), and
//! remembers per session the offset of the oldest record its state rests on, and per
//! armed will its record's offset and body. Before a segment goes, every session resting
//! on a record in it is written again as one `session_copy` record (kind 20: the records
//! that rebuild its state, see `RecoveredSession::records`), and every will logged in it
//! as its `will` record again. Each copy is taken from the shadow with no `.await`
//! before its append, so no record of the same client can land between what the copy
//! says and the copy; a later record applies on top of the copy, as it would on top of
//! the originals. The segment goes only once the copies are durable.
//!
//! QoS 2 entries below the session's cursor are done (recovery ignores them): the shadow
//! drops them at every `cursor` record, so it stays as small as the session's window; a
//! shared group's member keeps them as completed up to `session_qos2_released_max`, as
//! recovery does (`RecoveredSession::released_kept`).

use std::collections::HashMap;

use crate::router::ShardId;
use crate::storage::{Offset, RecordKind, RecordRef};

use super::records::{
    self, SessionRecord, WillConn, WillRecord, RECORD_CURSOR, RECORD_SESSION_END,
    RECORD_SESSION_OPEN,
};
use super::{visit_session_record, RecoveredSession};

/// See the module docs.
#[derive(Default)]
pub(crate) struct SessionShadow {
    sessions: HashMap<String, RecoveredSession>,
    /// Per session: the offset of the oldest record its state rests on.
    since: HashMap<String, u64>,
    /// Armed wills: the offset and body of their `will` record.
    wills: HashMap<(String, WillConn), (u64, Vec<u8>)>,
    /// `session_qos2_released_max`: a shared group's member keeps its releases below
    /// its cursor up to it (see `RecoveredSession::released_kept`).
    released_max: usize,
}

impl SessionShadow {
    /// The shadow of a log whose recovery rebuilt `sessions` (resting on records from
    /// offset 0 on: copied at the first deletion). The wills recovery found are marked
    /// done at start: none is armed.
    pub(crate) fn new(sessions: &HashMap<String, RecoveredSession>, released_max: usize) -> Self {
        SessionShadow {
            sessions: sessions.clone(),
            since: sessions.keys().map(|c| (c.clone(), 0)).collect(),
            wills: HashMap::new(),
            released_max,
        }
    }

    /// The home appended a record at `offset`.
    pub(crate) fn note(&mut self, offset: u64, kind: RecordKind, timestamp_ms: u64, body: &[u8]) {
        if records::is_will_record(kind) {
            match records::decode_will_record(kind, body) {
                Some((client, WillRecord::Armed { conn, .. })) => {
                    self.wills.insert((client, conn), (offset, body.to_vec()));
                }
                Some((client, WillRecord::Done { conn })) => {
                    self.wills.remove(&(client, conn));
                }
                None => {}
            }
            return;
        }
        if !records::is_session_record(kind) {
            return;
        }
        let record = RecordRef {
            offset: Offset(offset),
            kind,
            timestamp_ms,
            body,
        };
        visit_session_record(&mut self.sessions, &record);
        if kind == RECORD_SESSION_OPEN || kind == RECORD_SESSION_END {
            let Some(client) = records::decode(kind, body).map(|(c, _)| c) else {
                return;
            };
            if self.sessions.contains_key(&client) {
                self.since.entry(client).or_insert(offset);
            } else {
                self.since.remove(&client);
            }
        } else if kind == RECORD_CURSOR {
            let Some((client, _)) = records::decode(kind, body) else {
                return;
            };
            if let Some(s) = self.sessions.get_mut(&client) {
                s.released = s.released_kept(self.released_max);
                s.sent = s.sent_above_cursors();
            }
        }
    }

    /// The sessions resting on a record below `limit`, and the wills logged below it.
    pub(crate) fn due(&self, limit: u64) -> (Vec<String>, Vec<(String, WillConn)>) {
        let sessions = self
            .since
            .iter()
            .filter(|(_, since)| **since < limit)
            .map(|(client, _)| client.clone())
            .collect();
        let wills = self
            .wills
            .iter()
            .filter(|(_, (offset, _))| *offset < limit)
            .map(|(key, _)| key.clone())
            .collect();
        (sessions, wills)
    }

    /// The body of a `session_copy` of `client`'s session as it is now; `None` if it
    /// ended.
    pub(crate) fn copy_of(&self, client: &str, now_ms: u64) -> Option<Vec<u8>> {
        let s = self.sessions.get(client)?;
        Some(records::encode_copy(&s.records(client, now_ms)))
    }

    /// `client`'s session rests on the copy at `offset` from now on.
    pub(crate) fn copied(&mut self, client: &str, offset: u64) {
        if let Some(since) = self.since.get_mut(client) {
            *since = offset;
        }
    }

    /// The body of an armed will's record; `None` if it is done.
    pub(crate) fn will(&self, key: &(String, WillConn)) -> Option<&[u8]> {
        self.wills.get(key).map(|(_, body)| &body[..])
    }

    /// The will is logged again at `offset`.
    pub(crate) fn will_copied(&mut self, key: &(String, WillConn), offset: u64) {
        if let Some(entry) = self.wills.get_mut(key) {
            entry.0 = offset;
        }
    }
}

impl RecoveredSession {
    /// Records (`(kind, timestamp, body)`) that rebuild this session, `client`'s, as it
    /// is: recovery applying them to any earlier state of it ends in this one.
    pub(crate) fn records(&self, client: &str, now_ms: u64) -> Vec<(RecordKind, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut put = |timestamp_ms: u64, record: SessionRecord| {
            let (kind, body) = records::encode(client, &record);
            out.push((kind, timestamp_ms, body));
        };
        put(
            now_ms,
            SessionRecord::Open {
                expiry_secs: self.expiry_secs,
                protocol: self.protocol,
            },
        );
        if let Some(at) = self.detached_at_ms {
            // Its time is when the expiry started counting.
            put(
                at,
                SessionRecord::Detach {
                    expiry_secs: self.expiry_secs,
                    will: self.will.clone(),
                },
            );
        }
        for (filter, (opts, from)) in &self.subscriptions {
            put(
                now_ms,
                SessionRecord::Subscribe {
                    filter: filter.clone(),
                    opts: *opts,
                    from: from.clone(),
                },
            );
        }
        let mut cursors: Vec<(ShardId, u64)> = self.cursors.iter().map(|(s, o)| (*s, *o)).collect();
        cursors.sort_unstable();
        if !cursors.is_empty() {
            put(now_ms, SessionRecord::Cursor(cursors));
        }
        // Releases first: a `qos2_sent` entry never shares a key or a packet id with one.
        let entries = |ids: HashMap<(ShardId, u64), u16>| {
            let mut v: Vec<(ShardId, u64, u16)> =
                ids.into_iter().map(|((s, o), p)| (s, o, p)).collect();
            v.sort_unstable();
            v
        };
        // The shadow keeps a shared member's releases below its cursor, bounded.
        for chunk in entries(self.released_kept(usize::MAX)).chunks(usize::from(u16::MAX)) {
            put(now_ms, SessionRecord::Qos2Delivered(chunk.to_vec()));
        }
        for chunk in entries(self.sent_above_cursors()).chunks(usize::from(u16::MAX)) {
            put(now_ms, SessionRecord::Qos2Sent(chunk.to_vec()));
        }
        out
    }
}

/// Recovery: applies a `session_copy` record. Returns false for a damaged body.
pub fn visit_session_copy(
    sessions: &mut HashMap<String, RecoveredSession>,
    record: &RecordRef<'_>,
) -> bool {
    let Some(copied) = records::decode_copy(record.body) else {
        return false;
    };
    for (kind, timestamp_ms, body) in copied {
        if !records::is_session_record(kind) {
            return false;
        }
        let inner = RecordRef {
            offset: record.offset,
            kind,
            timestamp_ms,
            body,
        };
        if !visit_session_record(sessions, &inner) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Protocol, QoS};
    use crate::session::SubOptions;

    fn opts(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: true,
            retain_handling: 1,
            subscription_id: Some(7),
        }
    }

    /// The state recovery rebuilds for "c", as comparable parts.
    fn state(sessions: &HashMap<String, RecoveredSession>) -> Option<String> {
        let s = sessions.get("c")?;
        let mut subs: Vec<_> = s.subscriptions.iter().collect();
        subs.sort_by_key(|(f, _)| f.as_str());
        let mut cursors: Vec<_> = s.cursors.iter().collect();
        cursors.sort();
        let mut released: Vec<_> = s.released_above_cursors().into_iter().collect();
        released.sort();
        let mut sent: Vec<_> = s.sent_above_cursors().into_iter().collect();
        sent.sort();
        Some(format!(
            "{:?} {} {:?} {:?} {subs:?} {cursors:?} {released:?} {sent:?}",
            s.protocol,
            s.expiry_secs,
            s.detached_at_ms,
            s.will.as_ref().map(|w| w.delay_secs),
        ))
    }

    /// A `session_copy` of the shadow rebuilds the session recovery rebuilds from every
    /// original record: alone (its segment gone) and on top of them (still there).
    #[test]
    fn a_session_copy_rebuilds_what_the_records_it_replaces_did() {
        let records = [
            SessionRecord::Open {
                expiry_secs: 60,
                protocol: Protocol::V5,
            },
            SessionRecord::Subscribe {
                filter: "a/#".into(),
                opts: opts(QoS::ExactlyOnce),
                from: vec![3, 4],
            },
            SessionRecord::Subscribe {
                filter: "b".into(),
                opts: opts(QoS::AtLeastOnce),
                from: vec![],
            },
            SessionRecord::Unsubscribe { filter: "b".into() },
            SessionRecord::Qos2Delivered(vec![
                (ShardId(0), 2, 9),
                (ShardId(0), 6, 3),
                (ShardId(1), 8, 0),
            ]),
            SessionRecord::Qos2Sent(vec![(ShardId(1), 9, 5), (ShardId(0), 11, 3)]),
            SessionRecord::Cursor(vec![(ShardId(0), 5), (ShardId(1), 7)]),
            SessionRecord::Detach {
                expiry_secs: 120,
                will: None,
            },
        ];
        let mut shadow = SessionShadow::default();
        let mut original = HashMap::new();
        for (i, record) in records.into_iter().enumerate() {
            let (kind, body) = records::encode("c", &record);
            let at = 1000 + i as u64;
            shadow.note(i as u64, kind, at, &body);
            let record = RecordRef {
                offset: Offset(i as u64),
                kind,
                timestamp_ms: at,
                body: &body,
            };
            assert!(visit_session_record(&mut original, &record));
        }
        let want = state(&original).expect("recovered");
        assert_eq!(shadow.due(1), (vec!["c".to_string()], vec![]));
        let body = shadow.copy_of("c", 5000).expect("live");
        let copy = RecordRef {
            offset: Offset(100),
            kind: records::RECORD_SESSION_COPY,
            timestamp_ms: 5000,
            body: &body,
        };
        let mut alone = HashMap::new();
        assert!(visit_session_copy(&mut alone, &copy));
        assert_eq!(state(&alone).as_deref(), Some(want.as_str()), "alone");
        let mut on_top = original.clone();
        assert!(visit_session_copy(&mut on_top, &copy));
        assert_eq!(state(&on_top).as_deref(), Some(want.as_str()), "on top");
        shadow.copied("c", 100);
        assert!(shadow.due(100).0.is_empty(), "rests on the copy");
        assert!(!visit_session_copy(
            &mut alone,
            &RecordRef {
                body: &body[..3],
                ..copy
            }
        ));
    }
}
