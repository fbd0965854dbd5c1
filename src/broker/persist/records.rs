//! The session records of the home shard's log: their kinds, bodies and decoding.
//!
//! Every body starts with the client id (`len u16 LE | UTF-8`); then, by kind:
//!
//! | kind | record | rest of the body |
//! |---|---|---|
//! | 2 | `session_open` | `expiry_secs u32 | protocol level u8` |
//! | 3 | `session_detach` | `expiry_secs u32 | has_will u8 | [delay_secs u32 | will as a v5 PUBLISH]` |
//! | 4 | `session_end` | nothing |
//! | 5 | `subscribe` | `filter (len u16 | UTF-8) | qos u8 | flags u8 (1 no-local, 2 retain-as-published) | retain_handling u8 | subscription id u32 (0 = none) | [count u16 | from offset u64 × count]` |
//! | 6 | `unsubscribe` | `filter (len u16 | UTF-8)` |
//! | 7 | `cursor` | `count u16 | (owner shard u16 | offset u64) × count` |
//! | 10 | `will` | `shard u16 | connection token u64 | delay_secs u32 | will as a v5 PUBLISH` |
//! | 11 | `will_done` | `shard u16 | connection token u64` |
//! | 13 | `qos2_delivered` | `count u16 | (owner shard u16 | offset u64 | packet id u16) × count` |
//! | 15 | `qos2_sent` | `count u16 | (owner shard u16 | offset u64 | packet id u16) × count` |
//! | 20 | `session_copy` | `count u16 | (kind u8 | timestamp u64 | len u32 | body) × count` |
//!
//! and kind 8, `publish_for`, is written by an owner shard: `count u16 | client id ×
//! count | a publish body (kind 1)`: a message for exactly those sessions, written when
//! the shard layout changes (see `migrate`); like a `publish`, its PUBLISH carries DUP
//! and the publisher's packet id when that QoS 2 id was received and not released. Its
//! recipients also name, by [`group_recipient`], every shared group one of those
//! sessions takes the message through: the group reads it back too (its backlog's gap,
//! see `shared`), as it reads a plain `publish`. A `subscribe`'s offsets say, per owner
//! shard (by index), from which offset of its log the subscription wants messages; a
//! record without them (written before they existed, or by a layout change, whose new
//! logs start afresh) wants them from 0, bounded by the session's cursor. The record's
//! timestamp is the time of the event: a `session_detach`'s is the moment its expiry
//! starts counting.
//!
//! A `qos2_delivered` entry with a packet id says the client PUBREC'd the QoS 2 message
//! at that offset (durable before the broker sends its PUBREL): it is never sent as a
//! PUBLISH again, and after a restart its PUBREL is resent under that id. An entry with
//! id 0 says its PUBCOMP arrived: nothing is resent. Entries below the session's cursor
//! are done.
//!
//! A `qos2_sent` entry says the QoS 2 message at that offset was sent to the client under
//! that packet id (durable before the PUBLISH was written, see `sent`; logged again at a
//! graceful stop for those not yet PUBREC'd): after the restart its PUBLISH is resent
//! under the same id with DUP set (MQTT 5 §4.4), so a client that already holds the id
//! recognises it. A later entry (either kind) with the same packet id for another offset
//! ends the earlier exchange, as do a `qos2_delivered` entry for the same offset and a
//! cursor past it.
//!
//! A `session_copy` (written by retention, see `SessionShadow`) holds records of kinds
//! 2-7, 13 and 15 of one client, each with its own timestamp, that rebuild the session as
//! it was when the copy was appended; recovery applies them in order, as if they were
//! records of their own at the copy's place. One record, so a crash never leaves half a
//! copy in the log.
//!
//! `will` and `will_done` belong to one connection (its shard and token), not to the
//! session: a connection with a will logs it before its CONNACK, from the shard it is
//! on, and the same shard logs `will_done` when the will is published, cancelled or
//! handed to the session's `session_detach` (a delayed will). Both travel the same
//! mesh link in order, and records of other connections of the same client never
//! interfere, however the client moves between shards. A `will` without its
//! `will_done` at recovery is the will of a connection the crash cut.

use bytes::{Buf, BufMut, BytesMut};

use crate::mqtt::{self, ClientId, DecodeLimits, Packet, PacketId, Protocol, Publish, QoS};
use crate::router::ShardId;
use crate::session::{SubOptions, Will};
use crate::storage::RecordKind;

/// A persistent session began or resumed with these settings.
pub const RECORD_SESSION_OPEN: RecordKind = RecordKind(2);
/// A persistent session's connection ended; its expiry runs from the record's time.
pub const RECORD_SESSION_DETACH: RecordKind = RecordKind(3);
/// A session ended for good.
pub const RECORD_SESSION_END: RecordKind = RecordKind(4);
/// A subscription of a persistent session.
pub const RECORD_SUBSCRIBE: RecordKind = RecordKind(5);
/// A subscription removed.
pub const RECORD_UNSUBSCRIBE: RecordKind = RecordKind(6);
/// A session's replay cursors.
pub const RECORD_CURSOR: RecordKind = RecordKind(7);
/// A message for named sessions only.
pub const RECORD_PUBLISH_FOR: RecordKind = RecordKind(8);

/// QoS 2 deliveries of a session PUBREC'd (its PUBREL may go out) or PUBCOMP'd.
pub const RECORD_QOS2_DELIVERED: RecordKind = RecordKind(13);
/// QoS 2 deliveries of a session sent under a packet id and not yet PUBREC'd.
pub const RECORD_QOS2_SENT: RecordKind = RecordKind(15);

/// Records rebuilding one session, written again by retention before their segment goes.
pub const RECORD_SESSION_COPY: RecordKind = RecordKind(20);

/// A connection's will, logged before its CONNACK.
pub const RECORD_WILL: RecordKind = RecordKind(10);
/// That connection's will is out of its hands (published, cancelled or delayed in its
/// session's `session_detach`).
pub const RECORD_WILL_DONE: RecordKind = RecordKind(11);

/// The connection a `will` record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WillConn {
    /// The shard the connection is on.
    pub shard: ShardId,
    /// Its token there.
    pub token: u64,
}

/// A decoded `will` or `will_done` record (the client id aside).
#[derive(Debug)]
pub enum WillRecord {
    /// `will`.
    Armed {
        /// Whose will.
        conn: WillConn,
        /// The will, with its delay.
        will: Box<Will>,
    },
    /// `will_done`.
    Done {
        /// Whose will.
        conn: WillConn,
    },
}

/// Whether `kind` is `will` or `will_done`.
pub fn is_will_record(kind: RecordKind) -> bool {
    kind == RECORD_WILL || kind == RECORD_WILL_DONE
}

/// Encodes a `will` or `will_done` body for `client_id`.
pub fn encode_will(client_id: &str, record: &WillRecord) -> (RecordKind, Vec<u8>) {
    let mut b = BytesMut::with_capacity(32 + client_id.len());
    put_str(&mut b, client_id);
    let (WillRecord::Armed { conn, .. } | WillRecord::Done { conn }) = record;
    put_shard(&mut b, conn.shard);
    b.put_u64_le(conn.token);
    match record {
        WillRecord::Armed { will, .. } => {
            b.put_u32_le(will.delay_secs);
            let _ = will_publish(will).encode(Protocol::V5, &mut b);
            (RECORD_WILL, b.to_vec())
        }
        WillRecord::Done { .. } => (RECORD_WILL_DONE, b.to_vec()),
    }
}

/// Decodes a `will` or `will_done` body: the client id and the record; `None` if damaged.
pub fn decode_will_record(kind: RecordKind, mut body: &[u8]) -> Option<(String, WillRecord)> {
    let client = get_str(&mut body)?;
    let conn = WillConn {
        shard: get_shard(&mut body)?,
        token: get_u64(&mut body)?,
    };
    let record = match kind {
        RECORD_WILL => {
            let delay_secs = get_u32(&mut body)?;
            WillRecord::Armed {
                conn,
                will: Box::new(decode_will(body, delay_secs)?),
            }
        }
        RECORD_WILL_DONE if body.is_empty() => WillRecord::Done { conn },
        _ => return None,
    };
    Some((client, record))
}

/// A decoded session record (the client id aside).
#[derive(Debug)]
pub enum SessionRecord {
    /// `session_open`.
    Open {
        /// Expiry interval.
        expiry_secs: u32,
        /// Protocol of the connection.
        protocol: Protocol,
    },
    /// `session_detach`.
    Detach {
        /// Expiry interval from now on.
        expiry_secs: u32,
        /// A delayed will still to publish.
        will: Option<Will>,
    },
    /// `session_end`.
    End,
    /// `subscribe`.
    Subscribe {
        /// The full filter (with any `$share/<group>/`).
        filter: String,
        /// Granted options.
        opts: SubOptions,
        /// Per owner shard, the offset of its log from which it wants messages.
        from: Vec<u64>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// The full filter.
        filter: String,
    },
    /// `cursor`.
    Cursor(Vec<(ShardId, u64)>),
    /// `qos2_delivered`: `(owner shard, offset, packet id awaiting PUBCOMP or 0)`.
    Qos2Delivered(Vec<(ShardId, u64, u16)>),
    /// `qos2_sent`: `(owner shard, offset, packet id)` sent, awaiting PUBREC.
    Qos2Sent(Vec<(ShardId, u64, u16)>),
}

/// Whether `kind` is one of the session records.
pub fn is_session_record(kind: RecordKind) -> bool {
    (RECORD_SESSION_OPEN.0..=RECORD_CURSOR.0).contains(&kind.0)
        || kind == RECORD_QOS2_DELIVERED
        || kind == RECORD_QOS2_SENT
}

/// Encodes a session record body for `client_id`.
pub fn encode(client_id: &str, record: &SessionRecord) -> (RecordKind, Vec<u8>) {
    let mut b = BytesMut::with_capacity(32 + client_id.len());
    put_str(&mut b, client_id);
    let kind = match record {
        SessionRecord::Open {
            expiry_secs,
            protocol,
        } => {
            b.put_u32_le(*expiry_secs);
            b.put_u8(protocol.level());
            RECORD_SESSION_OPEN
        }
        SessionRecord::Detach { expiry_secs, will } => {
            b.put_u32_le(*expiry_secs);
            match will {
                None => b.put_u8(0),
                Some(w) => {
                    b.put_u8(1);
                    b.put_u32_le(w.delay_secs);
                    let _ = will_publish(w).encode(Protocol::V5, &mut b);
                }
            }
            RECORD_SESSION_DETACH
        }
        SessionRecord::End => RECORD_SESSION_END,
        SessionRecord::Subscribe { filter, opts, from } => {
            put_str(&mut b, filter);
            b.put_u8(opts.qos as u8);
            b.put_u8(u8::from(opts.no_local) | (u8::from(opts.retain_as_published) << 1));
            b.put_u8(opts.retain_handling);
            b.put_u32_le(opts.subscription_id.unwrap_or(0));
            b.put_u16_le(from.len() as u16);
            for offset in from {
                b.put_u64_le(*offset);
            }
            RECORD_SUBSCRIBE
        }
        SessionRecord::Unsubscribe { filter } => {
            put_str(&mut b, filter);
            RECORD_UNSUBSCRIBE
        }
        SessionRecord::Cursor(cursors) => {
            b.put_u16_le(cursors.len() as u16);
            for (shard, offset) in cursors {
                put_shard(&mut b, *shard);
                b.put_u64_le(*offset);
            }
            RECORD_CURSOR
        }
        SessionRecord::Qos2Delivered(entries) => {
            put_qos2_entries(&mut b, entries);
            RECORD_QOS2_DELIVERED
        }
        SessionRecord::Qos2Sent(entries) => {
            put_qos2_entries(&mut b, entries);
            RECORD_QOS2_SENT
        }
    };
    (kind, b.to_vec())
}

/// Encodes a `session_copy` body of `records` (`(kind, timestamp, body)`, in order).
pub fn encode_copy(records: &[(RecordKind, u64, Vec<u8>)]) -> Vec<u8> {
    let len: usize = records.iter().map(|(_, _, b)| 13 + b.len()).sum();
    let mut b = BytesMut::with_capacity(2 + len);
    b.put_u16_le(records.len() as u16);
    for (kind, timestamp_ms, body) in records {
        b.put_u8(kind.0);
        b.put_u64_le(*timestamp_ms);
        b.put_u32_le(body.len() as u32);
        b.put_slice(body);
    }
    b.to_vec()
}

/// Decodes a `session_copy` body into its records (`(kind, timestamp, body)`, in
/// order); `None` if damaged.
pub fn decode_copy(mut body: &[u8]) -> Option<Vec<(RecordKind, u64, &[u8])>> {
    let count = get_u16(&mut body)?;
    let mut records = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let kind = RecordKind(get_u8(&mut body)?);
        let timestamp_ms = get_u64(&mut body)?;
        let len = get_u32(&mut body)? as usize;
        if body.len() < len {
            return None;
        }
        let (record, rest) = body.split_at(len);
        records.push((kind, timestamp_ms, record));
        body = rest;
    }
    body.is_empty().then_some(records)
}

/// Decodes a session record body: the client id and the record; `None` if damaged.
pub fn decode(kind: RecordKind, mut body: &[u8]) -> Option<(String, SessionRecord)> {
    let client = get_str(&mut body)?;
    let record = match kind {
        RECORD_SESSION_OPEN => SessionRecord::Open {
            expiry_secs: get_u32(&mut body)?,
            protocol: Protocol::from_level(get_u8(&mut body)?)?,
        },
        RECORD_SESSION_DETACH => {
            let expiry_secs = get_u32(&mut body)?;
            let will = match get_u8(&mut body)? {
                0 => None,
                _ => {
                    let delay_secs = get_u32(&mut body)?;
                    Some(decode_will(body, delay_secs)?)
                }
            };
            SessionRecord::Detach { expiry_secs, will }
        }
        RECORD_SESSION_END => SessionRecord::End,
        RECORD_SUBSCRIBE => {
            let filter = get_str(&mut body)?;
            let qos = QoS::from_u8(get_u8(&mut body)?)?;
            let flags = get_u8(&mut body)?;
            let retain_handling = get_u8(&mut body)?;
            let id = get_u32(&mut body)?;
            // Absent in records written before subscriptions began at log positions.
            let mut from = Vec::new();
            if !body.is_empty() {
                let n = get_u16(&mut body)?;
                for _ in 0..n {
                    from.push(get_u64(&mut body)?);
                }
            }
            SessionRecord::Subscribe {
                filter,
                opts: SubOptions {
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    retain_handling,
                    subscription_id: (id != 0).then_some(id),
                },
                from,
            }
        }
        RECORD_UNSUBSCRIBE => SessionRecord::Unsubscribe {
            filter: get_str(&mut body)?,
        },
        RECORD_CURSOR => {
            let n = get_u16(&mut body)?;
            let mut cursors = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                cursors.push((get_shard(&mut body)?, get_u64(&mut body)?));
            }
            SessionRecord::Cursor(cursors)
        }
        RECORD_QOS2_DELIVERED => SessionRecord::Qos2Delivered(get_qos2_entries(&mut body)?),
        RECORD_QOS2_SENT => SessionRecord::Qos2Sent(get_qos2_entries(&mut body)?),
        _ => return None,
    };
    Some((client, record))
}

/// The body of a `qos2_delivered` or `qos2_sent` record after the client id.
fn put_qos2_entries(b: &mut BytesMut, entries: &[(ShardId, u64, u16)]) {
    b.put_u16_le(entries.len() as u16);
    for (shard, offset, pid) in entries {
        put_shard(b, *shard);
        b.put_u64_le(*offset);
        b.put_u16_le(*pid);
    }
}

fn get_qos2_entries(body: &mut &[u8]) -> Option<Vec<(ShardId, u64, u16)>> {
    let n = get_u16(body)?;
    let mut entries = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        entries.push((get_shard(body)?, get_u64(body)?, get_u16(body)?));
    }
    Some(entries)
}

/// The recipient naming a shared group in a `publish_for` (`member_filter` is a member's
/// subscription, `$share/<group>/<filter>`): U+0000 and the filter. No client id holds
/// U+0000 (MQTT forbids it in every string), so no session takes it for its own.
pub fn group_recipient(member_filter: &str) -> String {
    format!("\0{member_filter}")
}

/// Prefix of a `publish_for` body: the recipients.
pub fn encode_recipients(recipients: &[&str], out: &mut BytesMut) {
    out.put_u16_le(recipients.len() as u16);
    for r in recipients {
        put_str(out, r);
    }
}

/// Splits a `publish_for` body into its recipients and the publish body.
pub fn decode_recipients(mut body: &[u8]) -> Option<(Vec<String>, &[u8])> {
    let n = get_u16(&mut body)?;
    let mut recipients = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        recipients.push(get_str(&mut body)?);
    }
    Some((recipients, body))
}

fn will_publish(w: &Will) -> Publish {
    Publish {
        dup: false,
        qos: w.qos,
        retain: w.retain,
        topic: w.topic.clone(),
        packet_id: (w.qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("non-zero")),
        properties: w.properties.clone(),
        payload: w.payload.clone(),
    }
}

fn decode_will(body: &[u8], delay_secs: u32) -> Option<Will> {
    let mut packet = BytesMut::from(body);
    let Ok(Some(Packet::Publish(p))) =
        mqtt::decode(&mut packet, Some(Protocol::V5), &DecodeLimits::default())
    else {
        return None;
    };
    Some(Will {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties,
        delay_secs,
    })
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16_le(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn get_u8(b: &mut &[u8]) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}

fn get_u16(b: &mut &[u8]) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16_le())
}

/// A shard id in a record: its `u16`, little-endian.
fn put_shard(b: &mut BytesMut, shard: ShardId) {
    b.put_u16_le(shard.to_wal());
}

fn get_shard(b: &mut &[u8]) -> Option<ShardId> {
    get_u16(b).map(ShardId::from_wal)
}

fn get_u32(b: &mut &[u8]) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32_le())
}

fn get_u64(b: &mut &[u8]) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64_le())
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    let n = usize::from(get_u16(b)?);
    if b.len() < n {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?.to_string();
    b.advance(n);
    Some(s)
}

/// A client id as the broker keeps it.
pub fn client_id(s: &str) -> ClientId {
    ClientId::from(s)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::mqtt::{ByteStr, PublishProperties};

    fn round_trip(record: SessionRecord) -> SessionRecord {
        let (kind, body) = encode("client-é", &record);
        let (client, back) = decode(kind, &body).expect("decodes");
        assert_eq!(client, "client-é");
        // A `subscribe` without its offsets is one written before they existed.
        let older_form = match &record {
            SessionRecord::Subscribe { from, .. } => Some(body.len() - 2 - 8 * from.len()),
            _ => None,
        };
        for cut in (0..body.len()).filter(|c| Some(*c) != older_form) {
            assert!(
                decode(kind, &body[..cut]).is_none(),
                "cut at {cut} of {kind:?}"
            );
        }
        back
    }

    #[test]
    fn every_session_record_round_trips_and_a_cut_body_is_refused() {
        let opts = SubOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: 2,
            subscription_id: Some(77),
        };
        match round_trip(SessionRecord::Subscribe {
            filter: "$share/g/a/+".into(),
            opts,
            from: vec![7, 0, u64::MAX],
        }) {
            SessionRecord::Subscribe {
                filter,
                opts: o,
                from,
            } => {
                assert_eq!(filter, "$share/g/a/+");
                assert_eq!(o, opts);
                assert_eq!(from, vec![7, 0, u64::MAX]);
            }
            other => panic!("{other:?}"),
        }
        // Written before subscriptions began at log positions: from every log's start.
        let (kind, body) = encode(
            "c",
            &SessionRecord::Subscribe {
                filter: "a".into(),
                opts,
                from: Vec::new(),
            },
        );
        let old_body = &body[..body.len() - 2];
        match decode(kind, old_body) {
            Some((_, SessionRecord::Subscribe { from, .. })) => assert!(from.is_empty()),
            other => panic!("{other:?}"),
        }
        match round_trip(SessionRecord::Qos2Delivered(vec![
            (ShardId(0), 5, 7),
            (ShardId(3), u64::MAX, 0),
        ])) {
            SessionRecord::Qos2Delivered(e) => {
                assert_eq!(e, vec![(ShardId(0), 5, 7), (ShardId(3), u64::MAX, 0)])
            }
            other => panic!("{other:?}"),
        }
        match round_trip(SessionRecord::Qos2Sent(vec![(ShardId(1), 6, 65535)])) {
            SessionRecord::Qos2Sent(e) => assert_eq!(e, vec![(ShardId(1), 6, 65535)]),
            other => panic!("{other:?}"),
        }
        match round_trip(SessionRecord::Cursor(vec![
            (ShardId(0), 5),
            (ShardId(3), u64::MAX),
        ])) {
            SessionRecord::Cursor(c) => {
                assert_eq!(c, vec![(ShardId(0), 5), (ShardId(3), u64::MAX)])
            }
            other => panic!("{other:?}"),
        }
        match round_trip(SessionRecord::Open {
            expiry_secs: 60,
            protocol: Protocol::V311,
        }) {
            SessionRecord::Open {
                expiry_secs,
                protocol,
            } => assert_eq!((expiry_secs, protocol), (60, Protocol::V311)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(round_trip(SessionRecord::End), SessionRecord::End));
    }

    #[test]
    fn a_delayed_will_survives_the_record() {
        let will = Will {
            topic: ByteStr::from_static("wills/x"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
            delay_secs: 30,
        };
        let (kind, body) = encode(
            "c",
            &SessionRecord::Detach {
                expiry_secs: 100,
                will: Some(will),
            },
        );
        match decode(kind, &body) {
            Some((_, SessionRecord::Detach { expiry_secs, will })) => {
                let w = will.expect("will kept");
                assert_eq!(expiry_secs, 100);
                assert_eq!(
                    (
                        w.topic.as_str(),
                        &w.payload[..],
                        w.qos,
                        w.retain,
                        w.delay_secs
                    ),
                    ("wills/x", &b"gone"[..], QoS::AtLeastOnce, true, 30)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn will_records_round_trip_and_a_cut_body_is_refused() {
        let conn = WillConn {
            shard: ShardId(3),
            token: u64::MAX - 1,
        };
        let will = Will {
            topic: ByteStr::from_static("wills/y"),
            payload: Bytes::from_static(b"cut off"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: PublishProperties::default(),
            delay_secs: 7,
        };
        let armed = WillRecord::Armed {
            conn,
            will: Box::new(will),
        };
        for record in [armed, WillRecord::Done { conn }] {
            let (kind, body) = encode_will("client-w", &record);
            assert!(is_will_record(kind) && !is_session_record(kind));
            for cut in 0..body.len() {
                assert!(
                    decode_will_record(kind, &body[..cut]).is_none(),
                    "cut at {cut}"
                );
            }
            match (record, decode_will_record(kind, &body)) {
                (
                    WillRecord::Armed { will, .. },
                    Some((c, WillRecord::Armed { conn: k, will: w })),
                ) => {
                    assert_eq!((c.as_str(), k), ("client-w", conn));
                    assert_eq!(
                        (w.topic, w.payload, w.qos, w.delay_secs),
                        (will.topic, will.payload, will.qos, 7)
                    );
                }
                (WillRecord::Done { .. }, Some((c, WillRecord::Done { conn: k }))) => {
                    assert_eq!((c.as_str(), k), ("client-w", conn));
                }
                (_, other) => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn recipients_prefix_round_trips() {
        let mut b = BytesMut::new();
        encode_recipients(&["a", "bb"], &mut b);
        b.put_slice(b"rest");
        let (r, rest) = decode_recipients(&b).expect("decodes");
        assert_eq!(r, vec!["a".to_string(), "bb".to_string()]);
        assert_eq!(rest, b"rest");
    }

    fn visit(
        sessions: &mut std::collections::HashMap<String, super::super::RecoveredSession>,
        record: SessionRecord,
    ) {
        let (kind, body) = encode("c", &record);
        let record = crate::storage::RecordRef {
            offset: crate::storage::Offset(0),
            kind,
            timestamp_ms: 1,
            body: &body,
        };
        assert!(super::super::visit_session_record(sessions, &record));
    }

    /// The sessions after client "c" opened its session.
    fn opened() -> std::collections::HashMap<String, super::super::RecoveredSession> {
        let mut sessions = std::collections::HashMap::new();
        let open = SessionRecord::Open {
            expiry_secs: 60,
            protocol: crate::mqtt::Protocol::V5,
        };
        visit(&mut sessions, open);
        sessions
    }

    #[test]
    fn logged_releases_survive_recovery_until_completed_or_below_the_cursor() {
        let mut sessions = opened();
        visit(
            &mut sessions,
            SessionRecord::Qos2Delivered(vec![
                (ShardId(0), 5, 1),
                (ShardId(0), 9, 2),
                (ShardId(1), 3, 3),
            ]),
        );
        // 9 completed; id 1 used again: its earlier exchange (5) completed too.
        visit(
            &mut sessions,
            SessionRecord::Qos2Delivered(vec![(ShardId(0), 9, 0), (ShardId(0), 12, 1)]),
        );
        visit(
            &mut sessions,
            SessionRecord::Cursor(vec![(ShardId(0), 6), (ShardId(1), 4)]),
        );
        let released = sessions["c"].released_above_cursors();
        assert_eq!(
            released,
            std::collections::HashMap::from([((ShardId(0), 9), 0), ((ShardId(0), 12), 1)]),
            "below the cursor nothing is replayed; 9 is done, 12 awaits PUBCOMP under 1"
        );
        visit(&mut sessions, SessionRecord::End);
        assert!(sessions.is_empty());
    }

    #[test]
    fn logged_inflight_ids_survive_recovery_until_pubrec_reuse_or_the_cursor() {
        let mut sessions = opened();
        visit(
            &mut sessions,
            SessionRecord::Qos2Delivered(vec![(ShardId(0), 2, 9)]),
        );
        visit(
            &mut sessions,
            SessionRecord::Qos2Sent(vec![
                (ShardId(0), 2, 9),
                (ShardId(0), 5, 1),
                (ShardId(0), 7, 2),
                (ShardId(0), 8, 3),
                (ShardId(1), 1, 4),
            ]),
        );
        // 7 was PUBREC'd; id 3 went to another message (8's exchange ended); 1/1 is below
        // the cursor.
        visit(
            &mut sessions,
            SessionRecord::Qos2Delivered(vec![(ShardId(0), 7, 2)]),
        );
        visit(
            &mut sessions,
            SessionRecord::Qos2Sent(vec![(ShardId(0), 11, 3)]),
        );
        visit(
            &mut sessions,
            SessionRecord::Cursor(vec![(ShardId(0), 2), (ShardId(1), 2)]),
        );
        let s = &sessions["c"];
        assert_eq!(
            s.sent_above_cursors(),
            std::collections::HashMap::from([((ShardId(0), 5), 1), ((ShardId(0), 11), 3)]),
        );
        assert_eq!(
            s.released_above_cursors(),
            std::collections::HashMap::from([((ShardId(0), 2), 9), ((ShardId(0), 7), 2)]),
            "a logged PUBREC wins over the in-flight id of the same message"
        );
    }

    #[test]
    fn in_flight_ids_logged_before_each_publish_do_not_pile_up() {
        let mut sessions = opened();
        // Every QoS 2 delivery logs its id before the PUBLISH, then its PUBREC and
        // PUBCOMP; ids wrap. What stays is the exchanges still open.
        for offset in 0..1_000u64 {
            let pid = (offset % 7 + 1) as u16;
            visit(
                &mut sessions,
                SessionRecord::Qos2Sent(vec![(ShardId(0), offset, pid)]),
            );
            if offset % 100 != 99 {
                visit(
                    &mut sessions,
                    SessionRecord::Qos2Delivered(vec![(ShardId(0), offset, pid)]),
                );
                visit(
                    &mut sessions,
                    SessionRecord::Qos2Delivered(vec![(ShardId(0), offset, 0)]),
                );
            }
        }
        // 99, 199, ... were never PUBREC'd (a refusing PUBREC): superseded by their id's
        // next use, or by the cursor.
        assert!(sessions["c"].sent.len() <= 7, "bounded by the ids in use");
        visit(
            &mut sessions,
            SessionRecord::Cursor(vec![(ShardId(0), 950)]),
        );
        assert_eq!(
            sessions["c"].sent,
            std::collections::HashMap::from([((ShardId(0), 999), (999 % 7 + 1) as u16)]),
            "below the cursor the session holds nothing in flight"
        );
    }
}
