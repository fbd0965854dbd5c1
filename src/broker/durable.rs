//! The owner shard's side of durability: publish records in the WAL, acknowledgements
//! released in offset order once the fsync policy's promise holds, and recovery of the
//! retained messages at start.
//!
//! Record `publish` (kind 1), body:
//! `publisher_len u16 LE | publisher | expires_unix_ms u64 LE (0 = never) | PUBLISH`
//! where PUBLISH is the message encoded as an MQTT 5.0 PUBLISH packet (topic, QoS,
//! RETAIN, properties, payload; its packet id is meaningless). Reusing the wire format
//! keeps one codec, already fuzzed and property-tested, for both.
//!
//! Which publishes are logged: QoS 1 and 2, every retained publish (so the retained
//! index survives restarts; an empty retained payload logs the clear), and QoS 0 when
//! `log_qos0` is set.
//!
//! # QoS 2 exactly once, across restarts
//! A client's QoS 2 publish is logged with the client's packet id in the PUBLISH and
//! its DUP flag set (a flag otherwise meaningless in the log), and the owner keeps
//! `(publisher, packet id) → offset` until the publisher's PUBREL reaches it; that
//! release is logged as record `qos2_released` (kind 14), body
//! `client_id_len u16 LE | client id | packet id u16 LE`. Recovery rebuilds the map
//! from both (and from `publish_for` records, which a layout change marks the same way,
//! see `migrate`). A resend of an id the owner holds (DUP set, or a repeat on the same
//! connection before its verdict) with the same topic and payload (a CRC32 of both is
//! kept with the id) is not logged or delivered again: its PUBREC waits
//! until the first copy is durable and carries that copy's verdict. So a publish that
//! was durable, and perhaps delivered, when `kill -9` struck before its PUBREC is
//! delivered once when the client resends it. The publisher's shard takes the id as
//! awaiting PUBREL only once the owner accepted it (`publish_done`): a refused publish
//! leaves the id free.
//!
//! A copy can overtake the one sent before it: the first copy may still wait for WAL
//! room, or for mesh room on the dropped connection's shard, when the resend arrives on
//! a new connection (on either shard). So the check is made again once room is found,
//! just before the append; and a resend that found no earlier copy is marked, so an
//! earlier copy of it (without DUP: the client's first PUBLISH) arriving after it is
//! answered for it too instead of being logged again. Without that mark a PUBLISH
//! without DUP is always a new message (a clean-start client reusing the id).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};

use crate::broker::{AckTo, Broker, RetainedAdmission, ShardMsg};
use crate::metrics::Limit;
use crate::mqtt::{
    self, ClientId, DecodeLimits, Packet, PacketId, Protocol, Publish, QoS, ReasonCode,
};
use crate::router::ShardId;
use crate::session::{LogPos, Message};
use crate::storage::{Offset, RecordKind, RecordRef, Wal, WalError};

use super::persist::{self, unix_ms};
use super::publish::MayWait;

/// Record kind of a logged publish.
pub const RECORD_PUBLISH: RecordKind = RecordKind(1);
/// Record kind of a released QoS 2 packet id (see the module docs).
pub const RECORD_QOS2_RELEASED: RecordKind = RecordKind(14);

/// A publisher's QoS 2 packet id: `(client id, packet id)`.
type ReceivedId = (ClientId, u16);

/// Where a received QoS 2 id's first copy was logged, and a checksum of its topic and
/// payload: a resend must match it, or it is a new message reusing the id.
pub type ReceivedAt = (u64, u32);

/// The checksum of a message's topic and payload kept with its received id.
fn fingerprint(topic: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(topic);
    h.update(payload);
    h.finalize()
}

/// A logged publish waiting for its durability.
struct Pending {
    offset: Offset,
    ack: Option<AckTo>,
    /// QoS 2 is fanned out only once durable.
    deferred: Option<Arc<Message>>,
}

/// This shard's log: its WAL, the publishes and acknowledgements waiting on durability,
/// and the QoS 2 ids received and not yet released.
pub struct ShardLog {
    /// The shard's WAL.
    pub wal: Wal,
    pending: RefCell<VecDeque<Pending>>,
    waker: Cell<Option<Waker>>,
    scratch: RefCell<BytesMut>,
    /// Logged publishes whose fan-out has not finished, in offset order, with a done
    /// mark (see [`ShardLog::floor_for`]).
    unsent: RefCell<VecDeque<(u64, bool)>>,
    /// QoS 2 publishes logged here whose publisher has not released the packet id, by
    /// that id: the offset of the copy logged (see the module docs).
    received: RefCell<HashMap<ReceivedId, ReceivedAt>>,
    /// The same ids by offset, oldest first: what goes beyond `received_max`.
    received_order: RefCell<BTreeMap<u64, ReceivedId>>,
    received_max: usize,
    /// Held ids whose logged copy was a resend that found no earlier copy: that copy may
    /// still be on its way (see the module docs). A subset of `received`.
    resent_first: RefCell<HashSet<ReceivedId>>,
}

/// What [`ShardLog::log`] did with a publish.
pub enum Logged {
    /// Appended at this offset.
    At(Offset),
    /// Not appended: another copy of this QoS 2 publish was logged at this offset while
    /// it waited for room.
    CopyAt(Offset),
}

impl ShardLog {
    /// Wraps an opened WAL.
    pub fn new(wal: Wal) -> Self {
        ShardLog {
            wal,
            pending: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            scratch: RefCell::new(BytesMut::with_capacity(4096)),
            unsent: RefCell::new(VecDeque::new()),
            received: RefCell::new(HashMap::new()),
            received_order: RefCell::new(BTreeMap::new()),
            received_max: usize::MAX,
            resent_first: RefCell::new(HashSet::new()),
        }
    }

    /// Wraps an opened WAL with the QoS 2 ids its recovery found unreleased, keeping at
    /// most `received_max` of them.
    pub fn with_received(
        wal: Wal,
        received: HashMap<(ClientId, u16), ReceivedAt>,
        received_max: usize,
    ) -> Self {
        let mut durable = ShardLog::new(wal);
        durable.received_max = received_max;
        let order = received.iter().map(|(id, at)| (at.0, id.clone())).collect();
        durable.received_order.replace(order);
        durable.received.replace(received);
        durable.forget_oldest_received();
        durable
    }

    /// Keeps `(publisher, packet id)` as received at `at`.
    fn note_received(&self, id: ReceivedId, at: ReceivedAt) {
        let mut order = self.received_order.borrow_mut();
        order.insert(at.0, id.clone());
        if let Some(old) = self.received.borrow_mut().insert(id, at) {
            order.remove(&old.0);
        }
    }

    /// Forgets a released id; false if it was not kept.
    fn forget_received(&self, id: &ReceivedId) -> bool {
        let Some(at) = self.received.borrow_mut().remove(id) else {
            return false;
        };
        self.received_order.borrow_mut().remove(&at.0);
        self.resent_first.borrow_mut().remove(id);
        true
    }

    /// Forgets the oldest ids beyond `received_max`; returns how many.
    fn forget_oldest_received(&self) -> u64 {
        let mut order = self.received_order.borrow_mut();
        let mut received = self.received.borrow_mut();
        let mut forgotten = 0;
        while received.len() > self.received_max {
            let Some((_, id)) = order.pop_first() else {
                break;
            };
            received.remove(&id);
            self.resent_first.borrow_mut().remove(&id);
            forgotten += 1;
        }
        forgotten
    }

    /// The floor a message logged at `offset` carries when it is sent now: every other
    /// logged record below it has been sent already, except those whose fan-out is
    /// still under way (a deferred QoS 2, or a fan-out waiting for a full outbox).
    fn floor_for(&self, offset: u64) -> u64 {
        let unsent = self.unsent.borrow();
        let first_other = unsent
            .iter()
            .find(|(o, done)| !done && *o != offset)
            .map_or(u64::MAX, |(o, _)| *o);
        first_other.min(offset + 1)
    }

    /// Every logged record below this has been sent to every interested shard.
    pub(crate) fn sent_watermark(&self) -> u64 {
        let unsent = self.unsent.borrow();
        let first = unsent.iter().find(|(_, done)| !done).map(|(o, _)| *o);
        first.unwrap_or(u64::MAX).min(self.wal.next_offset().0)
    }

    /// The fan-out of the record at `offset` is finished (or will never happen).
    fn sent(&self, offset: u64) {
        let mut unsent = self.unsent.borrow_mut();
        if let Ok(i) = unsent.binary_search_by_key(&offset, |(o, _)| *o) {
            unsent[i].1 = true;
        }
        while unsent.front().is_some_and(|(_, done)| *done) {
            unsent.pop_front();
        }
    }

    /// The offset of the copy of a publisher's QoS 2 publish (packet id `pid`, sent with
    /// DUP or a repeat on its connection if `resend`) logged already, if the owner holds
    /// its id (see the module docs).
    fn logged_copy(&self, msg: &Message, pid: u16, resend: bool) -> Option<Offset> {
        let id = (msg.publisher.clone(), pid);
        if !resend && !self.resent_first.borrow().contains(&id) {
            return None;
        }
        let received = self.received.borrow();
        let (offset, fp) = received.get(&id)?;
        (*fp == fingerprint(msg.topic.as_bytes(), &msg.payload)).then_some(Offset(*offset))
    }

    /// Appends the publish record of `msg`. Waits for buffer room.
    /// `received_id`: the publisher's QoS 2 packet id, kept until released, and whether
    /// this copy is a resend; a copy of it logged meanwhile is not logged again.
    pub async fn log(
        &self,
        msg: &Message,
        received_id: Option<(u16, bool)>,
    ) -> Result<Logged, WalError> {
        let mut publish = as_publish(msg);
        if let Some(pid) = received_id.and_then(|(pid, _)| PacketId::new(pid)) {
            publish.dup = true;
            publish.packet_id = Some(pid);
        }
        self.wal.reserve(publish_body_len(msg, &publish)?).await?;
        // No await from here to the append: the check holds for it.
        if let Some((pid, resend)) = received_id {
            if let Some(first) = self.logged_copy(msg, pid, resend) {
                return Ok(Logged::CopyAt(first));
            }
        }
        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        encode_publish_body(msg, &publish, &mut scratch);
        let offset = self
            .wal
            .append(RECORD_PUBLISH, unix_ms(), &[&scratch[..]])?;
        // Appended in offset order with no await since: the queue stays sorted.
        self.unsent.borrow_mut().push_back((offset.0, false));
        if let Some((pid, resend)) = received_id {
            let id = (msg.publisher.clone(), pid);
            let fp = fingerprint(msg.topic.as_bytes(), &msg.payload);
            let mut resent_first = self.resent_first.borrow_mut();
            if resend {
                resent_first.insert(id.clone());
            } else {
                resent_first.remove(&id);
            }
            drop(resent_first);
            self.note_received(id, (offset.0, fp));
        }
        Ok(Logged::At(offset))
    }

    fn push(&self, pending: Pending) {
        insert_in_order(&mut self.pending.borrow_mut(), pending);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The offset of the copy of a QoS 2 publish logged already, if the owner holds its id.
fn first_copy(durable: &ShardLog, msg: &Message, ack: Option<&AckTo>) -> Option<Offset> {
    let ack = ack.filter(|a| a.exactly_once && msg.qos == QoS::ExactlyOnce)?;
    durable.logged_copy(msg, ack.packet_id, ack.resend)
}

/// `(publisher, packet id)` of a publish record logged with its QoS 2 packet id, and
/// the fingerprint of its topic and payload.
fn received_id(mut body: &[u8]) -> Option<((ClientId, u16), u32)> {
    if body.len() < 2 {
        return None;
    }
    let publisher_len = usize::from(body.get_u16_le());
    if body.len() < publisher_len + 8 + 1 {
        return None;
    }
    let publisher = &body[..publisher_len];
    body.advance(publisher_len + 8);
    // Fixed header: PUBLISH, DUP, QoS 2; then the remaining length and the topic.
    if body.get_u8() & 0xFE != 0x3C {
        return None;
    }
    for _ in 0..4 {
        if !body.has_remaining() {
            return None;
        }
        if body.get_u8() & 0x80 == 0 {
            break;
        }
    }
    if body.remaining() < 2 {
        return None;
    }
    let topic_len = usize::from(body.get_u16());
    if body.remaining() < topic_len + 2 {
        return None;
    }
    let topic = &body[..topic_len];
    body.advance(topic_len);
    let pid = body.get_u16();
    // Properties (the log holds v5 packets): their length, then the payload.
    let mut props_len = 0usize;
    for shift in 0..4 {
        if !body.has_remaining() {
            return None;
        }
        let b = body.get_u8();
        props_len |= usize::from(b & 0x7F) << (7 * shift);
        if b & 0x80 == 0 {
            break;
        }
    }
    if body.remaining() < props_len {
        return None;
    }
    body.advance(props_len);
    let fp = fingerprint(topic, body);
    let publisher = ClientId::from(std::str::from_utf8(publisher).ok()?);
    Some(((publisher, pid), fp))
}

/// The body of a `qos2_released` record.
fn encode_released(client_id: &str, packet_id: u16) -> BytesMut {
    let mut body = BytesMut::with_capacity(4 + client_id.len());
    body.put_u16_le(client_id.len() as u16);
    body.put_slice(client_id.as_bytes());
    body.put_u16_le(packet_id);
    body
}

fn decode_released(mut body: &[u8]) -> Option<(ClientId, u16)> {
    if body.len() < 2 {
        return None;
    }
    let n = usize::from(body.get_u16_le());
    if body.len() != n + 2 {
        return None;
    }
    let client = ClientId::from(std::str::from_utf8(&body[..n]).ok()?);
    body.advance(n);
    Some((client, body.get_u16_le()))
}

/// Queues `pending` in offset order. A QoS 1 publish is queued only after its fan-out,
/// which may wait for a full peer outbox, while publishes logged after it (QoS 2, or
/// forwarded from the mesh, which never wait) are queued at once: appending would
/// leave a lower offset at the back, and the durability task, which waits on the back
/// and pops from the front, would pop nothing and never yield again.
fn insert_in_order(queue: &mut VecDeque<Pending>, pending: Pending) {
    // After equal offsets: a QoS 2 resend is answered after its first copy.
    let at = queue.partition_point(|p| p.offset <= pending.offset);
    queue.insert(at, pending);
}

/// The length of `msg`'s publish record body.
pub(crate) fn publish_body_len(msg: &Message, publish: &Publish) -> Result<usize, WalError> {
    let packet_bytes = publish.encoded_len(Protocol::V5).map_err(|e| {
        WalError::InvalidConfig(format!("publish cannot be encoded for the log: {e:?}"))
    })?;
    Ok(2 + msg.publisher.len() + 8 + packet_bytes)
}

/// Appends `msg`'s publish record body (see the module docs) to `out`.
pub(crate) fn encode_publish_body(msg: &Message, publish: &Publish, out: &mut BytesMut) {
    let now = Instant::now();
    let expires_unix_ms = msg.expires_at.map_or(0, |at| {
        unix_ms() + at.saturating_duration_since(now).as_millis() as u64
    });
    out.put_u16_le(msg.publisher.len() as u16);
    out.put_slice(msg.publisher.as_bytes());
    out.put_u64_le(expires_unix_ms);
    let _ = publish.encode(Protocol::V5, out);
}

pub(crate) fn as_publish(msg: &Message) -> Publish {
    Publish {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        packet_id: (msg.qos != QoS::AtMostOnce).then(|| PacketId::new(1).expect("non-zero")),
        properties: msg.properties.clone(),
        payload: msg.payload.clone(),
    }
}

/// Decodes a publish record of shard `shard`'s log back into a message; `None` if it is
/// not one or has expired.
pub fn decode_publish(record: &RecordRef<'_>, shard: ShardId) -> Option<Message> {
    if record.kind != RECORD_PUBLISH {
        return None;
    }
    decode_publish_body(record, record.body, shard)
}

/// Decodes the publish part of a record body (after any prefix the kind adds); `None`
/// if it has expired.
pub(crate) fn decode_publish_body(
    record: &RecordRef<'_>,
    body: &[u8],
    shard: ShardId,
) -> Option<Message> {
    decode_publish_body_even_expired(record, body, shard)
        .filter(|msg| !msg.is_expired(Instant::now()))
}

/// Like `decode_publish_body`, but an expired message is returned too, expiring now:
/// recovery needs it as the last writer of a retained topic.
pub(crate) fn decode_publish_body_even_expired(
    record: &RecordRef<'_>,
    mut body: &[u8],
    shard: ShardId,
) -> Option<Message> {
    if body.len() < 2 {
        return None;
    }
    let publisher_len = usize::from(body.get_u16_le());
    if body.len() < publisher_len + 8 {
        return None;
    }
    let publisher = ClientId::from(std::str::from_utf8(&body[..publisher_len]).ok()?);
    body.advance(publisher_len);
    let expires_unix_ms = body.get_u64_le();
    let mut packet = BytesMut::from(body);
    let limits = DecodeLimits::default();
    let Ok(Some(Packet::Publish(p))) = mqtt::decode(&mut packet, Some(Protocol::V5), &limits)
    else {
        return None;
    };
    let expires_at = match expires_unix_ms {
        0 => None,
        at => {
            let now = unix_ms();
            Some(Instant::now() + Duration::from_millis(at.saturating_sub(now)))
        }
    };
    Some(Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties,
        publisher,
        expires_at,
        log: Some(LogPos {
            shard,
            offset: record.offset.0,
            floor: record.offset.0 + 1,
        }),
    })
}

/// Decodes a `publish` or `publish_for` record: the named recipients (for the latter)
/// and the message.
pub(crate) fn decode_any_publish(
    record: &RecordRef<'_>,
    shard: ShardId,
) -> Option<(Option<Vec<String>>, Message)> {
    decode_any_publish_even_expired(record, shard)
        .filter(|(_, msg)| !msg.is_expired(Instant::now()))
}

/// Like `decode_any_publish`, but an expired message is returned too, expiring now.
pub(crate) fn decode_any_publish_even_expired(
    record: &RecordRef<'_>,
    shard: ShardId,
) -> Option<(Option<Vec<String>>, Message)> {
    if record.kind == RECORD_PUBLISH {
        return Some((
            None,
            decode_publish_body_even_expired(record, record.body, shard)?,
        ));
    }
    if record.kind != persist::records::RECORD_PUBLISH_FOR {
        return None;
    }
    let (recipients, body) = persist::records::decode_recipients(record.body)?;
    Some((
        Some(recipients),
        decode_publish_body_even_expired(record, body, shard)?,
    ))
}

/// What recovery hands to the shard: retained messages and, on a home shard, the
/// persistent sessions its log describes.
#[derive(Default)]
pub struct Recovered {
    /// This shard's id (the owner of the publish records).
    pub shard: ShardId,
    /// Last retained publish per topic (an empty payload means cleared, an expired one
    /// that it expired): the one with the highest version, see `keep_retained`.
    pub retained: HashMap<String, Arc<Message>>,
    /// The version of each entry of `retained` (the offset of its original publish).
    pub retained_versions: HashMap<String, u64>,
    /// Publish records seen.
    pub publishes: u64,
    /// Persistent sessions by client id.
    pub sessions: HashMap<String, persist::RecoveredSession>,
    /// Wills of connections the crash cut (logged without their `will_done`).
    pub wills: persist::ArmedWills,
    /// Session records whose body did not decode (a CRC-valid frame with a bad body:
    /// written by a broken build; reported, never guessed at).
    pub damaged: u64,
    /// QoS 2 packet ids logged here and not released (see the module docs).
    pub received: HashMap<(ClientId, u16), ReceivedAt>,
    /// Kafka batches and topic catalog changes, in log order (see `kafka`).
    pub kafka: Vec<super::kafka::RecoveredKafka>,
    /// Kafka consumer groups' commits, in log order.
    pub kafka_commits: super::kafka::RecoveredCommits,
    /// The MQTT to Kafka bridge's last cursor logged.
    pub kafka_bridge_mark: Option<u64>,
    /// The Kafka to MQTT relay's last cursor logged per partition.
    pub kafka_relay_marks: HashMap<(String, u32), i64>,
}

impl Recovered {
    /// Visits one record during WAL recovery.
    pub fn visit(&mut self, record: RecordRef<'_>) {
        if record.kind == super::kafka::RECORD_KAFKA_BATCH {
            match super::kafka::decode_record(&record) {
                Some(batch) => self.kafka.push(super::kafka::RecoveredKafka::Batch(batch)),
                None => self.damaged += 1,
            }
            return;
        }
        if record.kind == super::kafka::RECORD_KAFKA_TOPIC {
            match super::kafka::decode_topic_change(&record) {
                Some(change) => self
                    .kafka
                    .push(super::kafka::RecoveredKafka::Topic(change, record.offset.0)),
                None => self.damaged += 1,
            }
            return;
        }
        if record.kind == super::kafka::RECORD_KAFKA_RELAY {
            match super::kafka::decode_relay_mark(&record) {
                Some((topic, partition, next)) => {
                    self.kafka_relay_marks.insert((topic, partition), next);
                }
                None => self.damaged += 1,
            }
            return;
        }
        if record.kind == super::kafka::RECORD_KAFKA_BRIDGE {
            match record.body.try_into().map(u64::from_le_bytes) {
                Ok(mark) => self.kafka_bridge_mark = Some(mark),
                Err(_) => self.damaged += 1,
            }
            return;
        }
        if record.kind == super::kafka::RECORD_KAFKA_OFFSETS {
            match super::kafka::decode_commits(&record) {
                Some((group, entries)) => {
                    self.kafka_commits.push((group, entries, record.offset.0))
                }
                None => self.damaged += 1,
            }
            return;
        }
        if self.visit_retained_copy(&record) {
            return;
        }
        if record.kind == persist::records::RECORD_SESSION_COPY {
            if !persist::visit_session_copy(&mut self.sessions, &record) {
                self.damaged += 1;
            }
            return;
        }
        if persist::records::is_session_record(record.kind) {
            if !persist::visit_session_record(&mut self.sessions, &record) {
                self.damaged += 1;
            }
            return;
        }
        if persist::records::is_will_record(record.kind) {
            if !persist::visit_will_record(&mut self.wills, &record) {
                self.damaged += 1;
            }
            return;
        }
        if record.kind == RECORD_QOS2_RELEASED {
            match decode_released(record.body) {
                Some(id) => drop(self.received.remove(&id)),
                None => self.damaged += 1,
            }
            return;
        }
        // Before the expiry check: an expired message is still not to be taken twice. A
        // `publish_for` carries the id when a layout change moved it (see `migrate`).
        let publish_body = match record.kind {
            RECORD_PUBLISH => Some(record.body),
            persist::records::RECORD_PUBLISH_FOR => {
                persist::records::decode_recipients(record.body).map(|(_, body)| body)
            }
            _ => None,
        };
        if let Some((id, fp)) = publish_body.and_then(received_id) {
            self.received.insert(id, (record.offset.0, fp));
        }
        let Some((recipients, msg)) = decode_any_publish_even_expired(&record, self.shard) else {
            return;
        };
        self.publishes += 1;
        // A `publish_for` is a copy for named sessions, never the retained message.
        if msg.retain && recipients.is_none() {
            self.keep_retained(record.offset.0, msg);
        }
    }
}

impl Broker {
    /// Logs `msg` if it must be, then fans it out and schedules its acknowledgement:
    /// QoS 1 reaches subscribers at once (a crash only duplicates, which QoS 1 allows),
    /// QoS 2 only once durable (or a crash plus the publisher's resend would deliver it
    /// twice). The ack goes back once the record is as durable as the policy promises.
    pub(crate) async fn log_and_fan_out(
        self: &Rc<Self>,
        mut msg: Arc<Message>,
        ack: Option<AckTo>,
        may_wait: MayWait,
    ) {
        if let Some(durable) = self.log.get() {
            if let Some(first) = first_copy(durable, &msg, ack.as_ref()) {
                // Logged (and fanned out, or about to be) already: answer once it is durable.
                durable.push(Pending {
                    offset: first,
                    ack,
                    deferred: None,
                });
                return;
            }
        }
        // Held until the retained store below: the share counts this topic meanwhile.
        let _retained_slot = if msg.retain {
            match self.admit_retained(&mut msg, ack.as_ref()) {
                RetainedAdmission::Admitted(slot) => slot,
                RetainedAdmission::Refused => {
                    self.confirm(ack, ReasonCode::QuotaExceeded);
                    return;
                }
            }
        } else {
            None
        };
        let must_log = msg.qos != QoS::AtMostOnce || msg.retain || self.config.log_qos0;
        let received_id = ack
            .as_ref()
            .filter(|a| a.exactly_once && msg.qos == QoS::ExactlyOnce)
            .map(|a| (a.packet_id, a.resend));
        let Some(durable) = self.log.get().filter(|_| must_log) else {
            self.fan_out(msg, may_wait).await;
            self.confirm(ack, ReasonCode::Success);
            return;
        };
        let offset = match durable.log(&msg, received_id).await {
            Ok(Logged::At(offset)) => offset,
            Ok(Logged::CopyAt(first)) => {
                // Logged (and fanned out, or about to be) while this copy waited for room.
                durable.push(Pending {
                    offset: first,
                    ack,
                    deferred: None,
                });
                return;
            }
            Err(e) => {
                tracing::error!(shard = self.id.index(), error = %e, "WAL append failed; publish refused");
                self.confirm(ack, wal_reason(&e));
                return;
            }
        };
        if received_id.is_some() {
            let forgotten = durable.forget_oldest_received();
            if forgotten > 0 {
                self.probe.hits(Limit::Qos2IdsPerShardMax, forgotten);
            }
        }
        let defer = msg.qos == QoS::ExactlyOnce;
        // Stamped once, before the retained index takes a reference (a later
        // `make_mut` would copy the message): the floor of a message sent now is known
        // now; a deferred one gets its floor when it is sent.
        Arc::make_mut(&mut msg).log = Some(LogPos {
            shard: self.id,
            offset: offset.0,
            floor: if defer {
                0
            } else {
                durable.floor_for(offset.0)
            },
        });
        if msg.retain {
            self.store_retained(&msg);
        }
        let topic = msg.topic.clone();
        let deferred = if defer {
            Some(msg)
        } else {
            self.fan_out_logged(durable, msg, may_wait).await;
            None
        };
        durable.push(Pending {
            offset,
            ack,
            deferred,
        });
        self.kafka_bridge_logged(topic.as_str());
    }

    /// Fans out a logged message already stamped with its floor, then marks it sent.
    async fn fan_out_logged(
        self: &Rc<Self>,
        durable: &ShardLog,
        msg: Arc<Message>,
        may_wait: MayWait,
    ) {
        let offset = msg.log.map(|p| p.offset);
        self.fan_out(msg, may_wait).await;
        if let Some(offset) = offset {
            durable.sent(offset);
        }
    }

    /// On the publisher's shard, at PUBREL: tells the owner that logged `packet_id`, or
    /// every shard when the session does not know which (after a restart).
    pub(crate) fn release_qos2(
        self: &Rc<Self>,
        client_id: ClientId,
        packet_id: u16,
        owner: Option<ShardId>,
    ) {
        let owners = match owner {
            Some(o) => o.index()..o.index() + 1,
            None => 0..self.mesh.shards(),
        };
        for to in owners.map(ShardId::from_index) {
            if to == self.id {
                // At once, not through the loopback: a new publish with this id may follow.
                self.qos2_released(client_id.clone(), packet_id);
            } else {
                let client_id = client_id.clone();
                self.post(
                    to,
                    ShardMsg::Qos2Released {
                        client_id,
                        packet_id,
                    },
                );
            }
        }
    }

    /// A session ends or is discarded: its QoS 2 ids awaiting PUBREL are released, as
    /// the client starts afresh.
    pub(crate) fn release_all_qos2(self: &Rc<Self>, session: &mut crate::session::Session) {
        for (pid, owner) in session.awaiting_pubrel.take_all() {
            self.release_qos2(session.client_id.clone(), pid, Some(owner));
        }
    }

    /// On the owner: the publisher released `packet_id`; a later publish with it is a
    /// new message, also after a restart (the release is logged).
    pub(crate) fn qos2_released(self: &Rc<Self>, client_id: ClientId, packet_id: u16) {
        let Some(durable) = self.log.get() else {
            return;
        };
        let id = (client_id, packet_id);
        if !durable.forget_received(&id) {
            return;
        }
        let body = encode_released(id.0.as_str(), packet_id);
        let now = unix_ms();
        match durable.wal.append(RECORD_QOS2_RELEASED, now, &[&body[..]]) {
            Err(WalError::BufferFull) => {
                // Rare; logged late rather than never (a stale id could take a resend).
                let shard = Rc::clone(self);
                glommio::spawn_local(async move {
                    let Some(durable) = shard.log.get() else {
                        return;
                    };
                    let appended = match durable.wal.reserve(body.len()).await {
                        Ok(()) => durable.wal.append(RECORD_QOS2_RELEASED, now, &[&body[..]]),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = appended {
                        tracing::warn!(shard = shard.id.index(), error = %e, "QoS 2 release not logged");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(shard = self.id.index(), error = %e, "QoS 2 release not logged")
            }
            Ok(_) => {}
        }
    }

    fn confirm(&self, ack: Option<AckTo>, reason: ReasonCode) {
        if let Some(ack) = ack {
            self.post(ack.conn.shard, ShardMsg::PublishDone { ack, reason });
        }
    }

    /// Releases acknowledgements (and deferred QoS 2 fan-outs) as group commits become
    /// durable: one wait covers everything appended before it started.
    pub(crate) fn spawn_durability(self: &Rc<Self>) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            let Some(durable) = shard.log.get() else { return };
            loop {
                let target = poll_fn(|cx| match durable.pending.borrow().back() {
                    Some(p) => Poll::Ready(p.offset),
                    None => {
                        durable.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                })
                .await;
                let result = durable.wal.wait_durable(target).await;
                loop {
                    let next = {
                        let mut pending = durable.pending.borrow_mut();
                        match pending.front() {
                            Some(p) if p.offset <= target => pending.pop_front(),
                            _ => None,
                        }
                    };
                    let Some(p) = next else { break };
                    match &result {
                        Ok(()) => {
                            if let Some(mut msg) = p.deferred {
                                let floor = durable.floor_for(p.offset.0);
                                if let Some(log) = Arc::make_mut(&mut msg).log.as_mut() {
                                    log.floor = floor;
                                }
                                shard.fan_out_logged(durable, msg, MayWait::Yes).await;
                            }
                            shard.confirm(p.ack, ReasonCode::Success);
                        }
                        Err(e) => {
                            durable.sent(p.offset.0);
                            shard.confirm(p.ack, wal_reason(e));
                        }
                    }
                }
                if let Err(e) = result {
                    tracing::error!(shard = shard.id.index(), error = %e, "WAL failed; no further publish is acknowledged");
                }
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}

/// The v5 reason for a publish the WAL could not take: a full disk is a quota, anything
/// else (a poisoned WAL after a failed fdatasync) an unspecified error.
fn wal_reason(e: &WalError) -> ReasonCode {
    match e {
        WalError::DiskFull => ReasonCode::QuotaExceeded,
        _ => ReasonCode::UnspecifiedError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(offset: u64) -> Pending {
        Pending {
            offset: Offset(offset),
            ack: None,
            deferred: None,
        }
    }

    #[test]
    fn acks_queued_late_keep_offset_order_so_the_back_covers_the_front() {
        let mut queue = VecDeque::new();
        // A QoS 2 at 10 and a mesh publish at 12 are queued while the QoS 1 at 5 and 7
        // still wait for outbox room.
        for offset in [10, 12, 5, 7, 11] {
            insert_in_order(&mut queue, pending(offset));
            let back = queue.back().expect("queued").offset;
            let front = queue.front().expect("queued").offset;
            assert!(
                front <= back,
                "waiting on {back:?} pops nothing below {front:?}"
            );
        }
        let order: Vec<u64> = queue.iter().map(|p| p.offset.0).collect();
        assert_eq!(order, vec![5, 7, 10, 11, 12]);
    }
}

#[cfg(test)]
mod received_tests {
    use bytes::Bytes;

    use super::*;
    use crate::mqtt::{ByteStr, PublishProperties};

    fn message(publisher: &'static str, qos: QoS) -> Message {
        Message {
            topic: ByteStr::from_static("a/b"),
            payload: Bytes::from_static(b"payload"),
            qos,
            retain: false,
            properties: PublishProperties::default(),
            publisher: ClientId::from(publisher),
            expires_at: None,
            log: None,
        }
    }

    fn body(msg: &Message, received: Option<u16>) -> BytesMut {
        let mut publish = as_publish(msg);
        if let Some(pid) = received.and_then(PacketId::new) {
            publish.dup = true;
            publish.packet_id = Some(pid);
        }
        let mut out = BytesMut::new();
        encode_publish_body(msg, &publish, &mut out);
        out
    }

    #[test]
    fn a_qos2_record_names_its_publisher_and_packet_id_and_others_do_not() {
        let msg = message("client-1", QoS::ExactlyOnce);
        let (id, fp) = received_id(&body(&msg, Some(513))).expect("marked");
        assert_eq!((id.0.as_str(), id.1), ("client-1", 513));
        assert_eq!(fp, fingerprint(b"a/b", b"payload"), "topic and payload");
        assert!(received_id(&body(&msg, None)).is_none(), "no id kept");
        let qos1 = message("client-1", QoS::AtLeastOnce);
        assert!(received_id(&body(&qos1, None)).is_none());
        let full = body(&msg, Some(7));
        for cut in 0..full.len() {
            let _ = received_id(&full[..cut]);
        }
    }

    #[test]
    fn a_release_record_round_trips() {
        let body = encode_released("c-é", 65535);
        let (client, pid) = decode_released(&body).expect("decodes");
        assert_eq!((client.as_str(), pid), ("c-é", 65535));
        assert!(decode_released(&body[..body.len() - 1]).is_none());
    }
}
