//! The nemesis: a seeded, randomized history checker, Jepsen on one machine.
//!
//! Clients — persistent and clean subscribers and publishers, QoS 1 and 2, MQTT 3.1.1 and
//! 5.0, through rumqttc (v4 and v5) and the raw test client — run against a real broker
//! process and take random actions: disconnect and reconnect with the same client id (with
//! 2 shards a session lands on its old shard or another one), take over a live connection,
//! re-subscribe the same filter, unsubscribe and subscribe again, go offline for a while and
//! re-subscribe on return, stop reading, resend a QoS 2 PUBLISH with the same packet id after
//! a dropped connection, join and leave a shared subscription. Meanwhile the nemesis ends
//! each cycle with a fault: `kill -9`, SIGTERM and an immediate restart on the same ports,
//! a restart with another `shards` count, a full disk (a loop-mounted ext4 file system), or
//! a stalled broker (SIGSTOP/SIGCONT of the whole process: there is no way to stall one
//! shard from outside, and a stopped process stalls every shard's peers at once).
//!
//! Every send, acknowledgement, subscription and delivery is recorded with a tick of one
//! process-wide counter, and the history is checked at the end:
//! - every acknowledged QoS ≥ 1 message reaches every persistent session that was subscribed
//!   without interruption (re-subscribing the same filter is no interruption, MQTT-3.8.4-3;
//!   unsubscribing is) from before it was published until the end, and at least one member
//!   of a shared group whose persistent member was subscribed so;
//! - no session receives a QoS 2 message twice. The raw client receives as MQTT §4.3.3
//!   has it (`Qos2Receiver`): a PUBLISH under a packet id it PUBREC'd and whose PUBREL has
//!   not come is not delivered again, and nothing else is held back: a message that comes
//!   again under a new packet id, or under its old one after its PUBREL, is a second
//!   delivery. Such a PUBLISH without DUP, or of another message than the one the id came
//!   with (which the receiver thus drops), is a violation;
//! - per session, publisher and topic, first deliveries come in publish order (QoS 1 may
//!   repeat a message after a reconnect or crash; a repeat is not a first delivery);
//! - retained state is the last acknowledged write (or a later unacknowledged one);
//! - a persistent session is present after every reconnect and restart;
//! - the broker serves again within `start_timeout_ms` after every restart;
//! - its RSS stays under the bound its configuration implies.
//!
//! Each QoS 2 duplicate is put into exactly one class (`DupClass`), from the history of it
//! and the session's previous QoS 2 delivery of the message: R, the two came from different
//! broker processes; P, one process, after the publisher resent the PUBLISH with its packet
//! id to that process or an earlier one (whose log may then hold it twice); S, one process,
//! to a shared-group member that reconnected between them; O, anything else. A run may
//! tolerate some classes (known open defects): they are printed as KNOWN OPEN and still
//! fail the run above `TOLERATED_PER_MILLE` of the required QoS 2 deliveries. Only the
//! short runs tolerate O: the long run never does.
//!
//! Every random choice derives from the printed seed (thread timing does not). `cargo test`
//! runs short fixed-seed runs, tolerating every QoS 2 duplicate class within the bound; `scripts/nemesis.sh CYCLES SEED` runs
//! the long one (`long_run`, with `SHARDMQ_NEMESIS_CYCLES`, `SHARDMQ_NEMESIS_SEED` and
//! `SHARDMQ_NEMESIS_TOLERATE`, empty by default: strict) in release mode.
//! `SHARDMQ_NEMESIS_WAKE_COALESCE_US` runs the broker with that `wake_coalesce_us`.
//! `SHARDMQ_NEMESIS_DUMP=FILE` writes every duplicate and loss of a run to FILE.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::disk::SmallDisk;
use common::raw::{self, Conn, ConnAck, Connect, Reader, Recv};
use common::*;

/// The broker's `start_timeout_ms` (the harness sets it): every restart must serve within it.
const START_TIMEOUT_MS: u64 = 12_000;
/// How long a restart on the same ports is retried before the run gives up.
const RESTART_RETRY: Duration = Duration::from_secs(90);
/// A persistent session's expiry: longer than any run.
const EXPIRY: u32 = 86_400;
/// The broker's limits, small so that queues fill, gaps open and catch-up reads run.
const SETTINGS: &[(&str, &str)] = &[
    ("FSYNC_POLICY", "always"),
    ("SEGMENT_BYTES", "1048576"),
    ("SESSION_QUEUE_MESSAGES_MAX", "200"),
    ("SESSION_QUEUE_BYTES_MAX", "262144"),
    ("INFLIGHT_COUNT_MAX", "32"),
    ("SHARED_BACKLOG_MESSAGES_MAX", "100"),
    ("SHARED_BACKLOG_BYTES_MAX", "131072"),
    ("IO_MEMORY_BYTES", "4194304"),
    ("WAL_BUFFER_BYTES", "2097152"),
    ("MESH_LINK_BYTES_MAX", "4194304"),
    ("CONNECTION_OUT_BYTES_MAX", "262144"),
];
/// What the broker may hold beyond its configured buffers (code, runtime, allocator slack).
const RSS_BASE_BYTES: u64 = 160 << 20;

const TOPICS: &[&str] = &["nm/t/0", "nm/t/1", "nm/t/2"];
const SHARED_TOPICS: &[&str] = &["nm/s/0", "nm/s/1"];
const RETAINED_TOPICS: &[&str] = &["nm/r/0", "nm/r/1", "nm/r/2"];
const FILTER: &str = "nm/t/#";
const SHARED_FILTER: &str = "$share/g/nm/s/#";

// ---------------------------------------------------------------------------------------
// Randomness and time

/// xorshift64*, seeded through splitmix64 so that neighbouring seeds differ everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut z = seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The history's clock: one counter for every thread, so "A happened before B" in the
/// history means it did in real time.
static TICK: AtomicU64 = AtomicU64::new(1);

fn tick() -> u64 {
    TICK.fetch_add(1, Ordering::SeqCst)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------
// The history

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct MsgId {
    publisher: u16,
    seq: u32,
}

struct Sent {
    topic: String,
    qos: u8,
    retain: bool,
    /// A retained clear (empty payload).
    clear: bool,
    /// The first time it was sent.
    sent_at: u64,
    acked_at: Option<u64>,
    refused: bool,
    /// Sent again with the same packet id after a dropped connection.
    resent: bool,
    /// Each time it was sent again so: (tick, the broker process of the connection, None
    /// when not certain: see `World::ended`).
    resends: Vec<(u64, Option<u64>)>,
}

struct Delivery {
    at: u64,
    /// The broker process (counted from 0) that sent it: the one that answered the
    /// connection's CONNACK, None when that is not certain (see `World::ended`).
    process: Option<u64>,
    /// The raw client's packet id, and whether an earlier exchange of this message with the
    /// session had completed (PUBREL received): for explaining a duplicate.
    wire: Option<(u16, bool)>,
    /// What the raw client saw of a QoS 2 PUBLISH beyond its packet id: whether DUP was set
    /// and what the session held for that packet id when it came (for explaining a
    /// duplicate); empty for other deliveries.
    note: String,
    /// The session: the client id, plus the connection number for a clean session.
    session: String,
    id: MsgId,
    topic: String,
    qos: u8,
}

#[derive(Default)]
struct History {
    publishers: Vec<String>,
    sent: HashMap<MsgId, Sent>,
    deliveries: Vec<Delivery>,
    /// Per persistent session: its filter and since when it has been subscribed without
    /// interruption (None: not subscribed now).
    subscribed: BTreeMap<String, (String, Option<u64>)>,
    /// Sessions that are members of the shared group.
    shared: HashSet<String>,
    violations: Vec<String>,
    /// QoS 2 deliveries of a message whose earlier delivery to the session had completed
    /// (PUBREL received): what a duplicate is made of, beyond doubt.
    qos2_after_pubrel: u64,
    /// What clients and the nemesis did, for explaining a failure: (tick, who, what).
    actions: Vec<(u64, String, String)>,
}

/// Everything the clients and the nemesis share.
struct World {
    seed: u64,
    addr: RwLock<Option<SocketAddr>>,
    /// Broker processes started so far, minus one.
    generation: AtomicU64,
    /// Broker processes that have exited: counted after the process is gone and before the
    /// next one starts, so a connection that reads the same count before its TCP connect
    /// and after its CONNACK talks to broker process `ended`, beyond doubt (see
    /// `World::process_of`). A delivery read late from a dead process's socket thus still
    /// counts as that process's; QoS 2 duplicate classes rest on it.
    ended: AtomicU64,
    /// Publishers finish their message in flight and stop; subscribers stop acting and read.
    draining: AtomicBool,
    stop: AtomicBool,
    hist: Mutex<History>,
}

impl World {
    fn addr(&self) -> Option<SocketAddr> {
        *self.addr.read().unwrap()
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    /// The broker's address once it serves; None when the run stops.
    fn wait_addr(&self) -> Option<SocketAddr> {
        loop {
            if self.stopped() {
                return None;
            }
            if let Some(addr) = self.addr() {
                return Some(addr);
            }
            std::thread::sleep(ms(20));
        }
    }
    /// Sleeps `d`, waking early when the run stops.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stopped() {
            std::thread::sleep(ms(20).min(end.saturating_duration_since(Instant::now())));
        }
    }
    fn publisher(&self, name: &str) -> u16 {
        let mut h = self.hist.lock().unwrap();
        h.publishers.push(name.to_string());
        (h.publishers.len() - 1) as u16
    }
    fn sent(&self, id: MsgId, topic: &str, qos: u8, retain: bool, clear: bool) {
        let sent = Sent {
            topic: topic.to_string(),
            qos,
            retain,
            clear,
            sent_at: tick(),
            acked_at: None,
            refused: false,
            resent: false,
            resends: Vec::new(),
        };
        self.hist.lock().unwrap().sent.insert(id, sent);
    }
    /// The publisher sent it again (same packet id, DUP) after a dropped connection.
    /// The publisher sent it again (same packet id, DUP) on a connection to `process`.
    fn resent(&self, id: MsgId, process: Option<u64>) {
        let at = tick();
        if let Some(s) = self.hist.lock().unwrap().sent.get_mut(&id) {
            s.resent = true;
            s.resends.push((at, process));
        }
    }
    /// `World::ended`, read before a TCP connect.
    fn before_connect(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }
    /// The broker process a connection talks to, given `before_connect()` read before its
    /// TCP connect and called after its CONNACK; None when a process ended in between.
    fn process_of(&self, before: u64) -> Option<u64> {
        (self.ended.load(Ordering::SeqCst) == before).then_some(before)
    }
    fn acked(&self, id: MsgId, ok: bool) {
        let at = tick();
        let mut h = self.hist.lock().unwrap();
        let s = h.sent.get_mut(&id).expect("acked a message never sent");
        if ok {
            s.acked_at.get_or_insert(at);
        } else {
            s.refused = true;
        }
    }
    /// `wire`: the raw client's packet id, and whether an earlier exchange of this message
    /// with the session had completed (PUBREL received).
    fn delivered(
        &self,
        session: &str,
        process: Option<u64>,
        wire: Option<(u16, bool)>,
        topic: &str,
        qos: u8,
        payload: &[u8],
    ) {
        self.delivered_noted(session, process, wire, String::new(), topic, qos, payload)
    }
    /// `delivered`, with `Delivery::note`.
    #[allow(clippy::too_many_arguments)]
    fn delivered_noted(
        &self,
        session: &str,
        process: Option<u64>,
        wire: Option<(u16, bool)>,
        note: String,
        topic: &str,
        qos: u8,
        payload: &[u8],
    ) {
        let Some(id) = parse_payload(payload) else {
            self.violation(format!("{session}: a payload nobody sent: {payload:?}"));
            return;
        };
        self.hist.lock().unwrap().deliveries.push(Delivery {
            at: tick(),
            process,
            wire,
            note,
            session: session.to_string(),
            id,
            topic: topic.to_string(),
            qos,
        });
    }
    /// A persistent session's filter is subscribed: a fresh subscription starts an
    /// uninterrupted interval now; re-subscribing keeps the running one.
    fn subscribed(&self, session: &str, filter: &str, fresh: bool) {
        let at = tick();
        let mut h = self.hist.lock().unwrap();
        let entry = h
            .subscribed
            .entry(session.to_string())
            .or_insert_with(|| (filter.to_string(), None));
        if fresh || entry.1.is_none() {
            entry.1 = Some(at);
        }
    }
    fn unsubscribed(&self, session: &str, filter: &str) {
        self.hist
            .lock()
            .unwrap()
            .subscribed
            .insert(session.to_string(), (filter.to_string(), None));
    }
    fn action(&self, session: &str, what: &str) {
        let at = tick();
        self.hist
            .lock()
            .unwrap()
            .actions
            .push((at, session.to_string(), what.to_string()));
    }
    fn violation(&self, what: String) {
        self.hist.lock().unwrap().violations.push(what);
    }
}

fn payload(id: MsgId, pad: usize) -> Vec<u8> {
    let mut p = format!("{}:{}|", id.publisher, id.seq).into_bytes();
    p.resize(p.len() + pad, b'x');
    p
}

fn parse_payload(p: &[u8]) -> Option<MsgId> {
    let text = std::str::from_utf8(p).ok()?;
    let (head, _) = text.split_once('|')?;
    let (publisher, seq) = head.split_once(':')?;
    Some(MsgId {
        publisher: publisher.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

// ---------------------------------------------------------------------------------------
// The raw client, made crash-tolerant

/// Panics of the raw client inside client threads are dropped connections, not failures:
/// keep them off the output.
fn quiet_client_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if !name.starts_with("nm-") {
                default(info);
            }
        }));
    });
}

/// Connects; None when the broker is down, stalled, or refused the connection.
fn raw_connect(addr: SocketAddr, connect: &Connect) -> Option<(Conn, ConnAck)> {
    catch_unwind(AssertUnwindSafe(|| Conn::connect_raw(addr, connect)))
        .ok()
        .filter(|(_, ack)| ack.code == 0)
}

fn connect_packet(v5: bool, id: &str, clean: bool, persistent: bool) -> Connect {
    if v5 {
        Connect::v5(id)
            .clean(clean)
            .session_expiry(if persistent { EXPIRY } else { 0 })
    } else {
        Connect::v4(id).clean(clean)
    }
}

struct RawPublish {
    topic: String,
    qos: u8,
    pid: u16,
    payload: Vec<u8>,
}

fn decode_publish(p: &raw::Packet, v5: bool) -> RawPublish {
    let mut r = Reader::new(&p.body);
    let qos = (p.flags >> 1) & 3;
    let topic = r.str();
    let pid = if qos > 0 { r.u16() } else { 0 };
    if v5 {
        let len = r.var() as usize;
        r.pos += len;
    }
    RawPublish {
        topic,
        qos,
        pid,
        payload: r.rest(),
    }
}

/// A packet id and the reason code of an ack (0 when absent).
fn decode_ack(p: &raw::Packet) -> (u16, u8) {
    let mut r = Reader::new(&p.body);
    let pid = r.u16();
    (pid, if r.remaining() > 0 { r.u8() } else { 0 })
}

// ---------------------------------------------------------------------------------------
// Subscribers (raw client)

#[derive(Clone)]
struct SubSpec {
    name: String,
    v5: bool,
    filter: &'static str,
    qos: u8,
    persistent: bool,
    stream: u64,
}

/// A QoS 2 receiver's session state, as MQTT 5 §4.3.3 (and 3.1.1 §4.3.3) has it: the
/// receiver keeps each packet id it PUBREC'd until that id's PUBREL comes, and a PUBLISH
/// with such an id is acknowledged again and not delivered again; once the PUBREL came,
/// a PUBLISH with the id is a new application message. Nothing else makes a PUBLISH a
/// resend: a message that comes again under a new packet id, or under its old one after
/// its PUBREL, is delivered again (a duplicate).
#[derive(Default)]
struct Qos2Receiver {
    /// Packet ids PUBREC'd whose PUBREL has not come, with the message each came with.
    awaiting_rel: HashMap<u16, MsgId>,
    /// Messages whose PUBREL came.
    completed: HashSet<MsgId>,
    /// Per packet id, the message whose PUBREL freed it last (for explaining a duplicate).
    freed_by: HashMap<u16, MsgId>,
}

/// What a QoS 2 receiver makes of a PUBLISH (`Qos2Receiver::publish`).
#[derive(Debug, PartialEq, Eq)]
enum Qos2Publish {
    /// A new application message: delivered. `after_pubrel`: an earlier exchange of the
    /// same message had completed; `note` says whether DUP was set and what the session
    /// held for the packet id (for explaining a duplicate).
    New { after_pubrel: bool, note: String },
    /// The id awaits PUBREL and the message is the one it came with, DUP set: the
    /// protocol's resend, not delivered again.
    Resend,
    /// The same, without DUP: not delivered again either (the receiver goes by the packet
    /// id alone), but the sender must set DUP on a resend (MQTT-3.3.1-1).
    ResendWithoutDup,
    /// The id awaits PUBREL for this other message: the receiver takes the PUBLISH for a
    /// resend of that one and delivers nothing; the sender gave an id in use to a new
    /// message (MQTT-2.2.1-4), which the receiver loses.
    IdHeld(MsgId),
}

impl Qos2Receiver {
    /// A QoS 2 PUBLISH of `id` under `pid`, `dup` its DUP flag.
    fn publish(&mut self, pid: u16, id: MsgId, dup: bool) -> Qos2Publish {
        if let Some(&held) = self.awaiting_rel.get(&pid) {
            return match (held == id, dup) {
                (true, true) => Qos2Publish::Resend,
                (true, false) => Qos2Publish::ResendWithoutDup,
                (false, _) => Qos2Publish::IdHeld(held),
            };
        }
        self.awaiting_rel.insert(pid, id);
        let note = match self.freed_by.get(&pid) {
            Some(f) => format!(
                ", DUP {dup}, the packet id free since the PUBREL of {}:{}",
                f.publisher, f.seq
            ),
            None => format!(", DUP {dup}, the packet id free"),
        };
        Qos2Publish::New {
            after_pubrel: self.completed.contains(&id),
            note,
        }
    }

    /// A PUBREL for `pid`: its exchange completes and the id is free again.
    fn pubrel(&mut self, pid: u16) {
        if let Some(id) = self.awaiting_rel.remove(&pid) {
            self.completed.insert(id);
            self.freed_by.insert(pid, id);
        }
    }

    /// The session state is gone (a clean start, or a session not present): what comes
    /// next belongs to a new session.
    fn forget(&mut self) {
        self.awaiting_rel.clear();
        self.completed.clear();
        self.freed_by.clear();
    }
}

/// A subscriber's session state, kept across connections of a persistent session.
struct RawSubscriber {
    world: Arc<World>,
    spec: SubSpec,
    rng: Rng,
    conn: Option<Conn>,
    /// The session's QoS 2 receiver state (kept across connections of a persistent session).
    qos2: Qos2Receiver,
    subscribed: bool,
    connections: u64,
    /// The broker process of `conn` (`World::process_of`).
    process: Option<u64>,
}

impl RawSubscriber {
    fn session(&self) -> String {
        if self.spec.persistent {
            self.spec.name.clone()
        } else {
            format!("{}#{}", self.spec.name, self.connections)
        }
    }

    /// Which broker process sent what is read now, and when (for a violation's line).
    fn sender_now(&self) -> String {
        format!(
            " (from broker {} at tick {})",
            self.process.map_or("?".to_string(), |p| p.to_string()),
            tick()
        )
    }

    fn handle(&mut self, p: raw::Packet) {
        match p.kind {
            raw::PUBLISH => {
                let publish = decode_publish(&p, self.spec.v5);
                let mut after_pubrel = false;
                let mut note = String::new();
                if publish.qos == 2 {
                    if let Some(id) = parse_payload(&publish.payload) {
                        let dup = p.flags & 0x08 != 0;
                        match self.qos2.publish(publish.pid, id, dup) {
                            Qos2Publish::Resend => return,
                            Qos2Publish::ResendWithoutDup => {
                                self.world.violation(format!(
                                    "{}: {}:{} resent under packet id {} awaiting its PUBREL \
                                     without DUP (MQTT-3.3.1-1){}",
                                    self.session(),
                                    id.publisher,
                                    id.seq,
                                    publish.pid,
                                    self.sender_now()
                                ));
                                return;
                            }
                            Qos2Publish::IdHeld(held) => {
                                self.world.violation(format!(
                                    "{}: {}:{} came under packet id {} while {}:{} held it \
                                     awaiting PUBREL (MQTT-2.2.1-4): a receiver drops it{}",
                                    self.session(),
                                    id.publisher,
                                    id.seq,
                                    publish.pid,
                                    held.publisher,
                                    held.seq,
                                    self.sender_now()
                                ));
                                return;
                            }
                            Qos2Publish::New {
                                after_pubrel: after,
                                note: n,
                            } => {
                                if after {
                                    self.world.hist.lock().unwrap().qos2_after_pubrel += 1;
                                }
                                after_pubrel = after;
                                note = n;
                            }
                        }
                    }
                }
                self.world.delivered_noted(
                    &self.session(),
                    self.process,
                    Some((publish.pid, after_pubrel)),
                    note,
                    &publish.topic,
                    publish.qos,
                    &publish.payload,
                );
            }
            raw::PUBREL => {
                self.qos2.pubrel(decode_ack(&p).0);
            }
            _ => {}
        }
    }

    /// Reads for `limit`, or until a packet of `kind` with packet id `pid` comes.
    fn pump(&mut self, limit: Duration, until: Option<(u8, u16)>) -> Option<raw::Packet> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let conn = self.conn.as_mut()?;
            match conn.recv(left.min(ms(100))) {
                Recv::Packet(p) => {
                    if let Some((kind, pid)) = until {
                        if p.kind == kind && decode_ack(&p).0 == pid {
                            return Some(p);
                        }
                    }
                    self.handle(p);
                }
                Recv::Closed => {
                    self.conn = None;
                    return None;
                }
                Recv::Timeout => {}
            }
            if left.is_zero() || self.world.stopped() {
                if until.is_some() {
                    // No answer: treat the connection as lost.
                    self.conn = None;
                }
                return None;
            }
        }
    }

    fn connect(&mut self) -> bool {
        let Some(addr) = self.world.wait_addr() else {
            return false;
        };
        // A persistent session never starts clean (the data dir starts empty): a 3.1.1
        // clean session would end at its disconnect.
        let first = self.connections == 0;
        let clean = !self.spec.persistent;
        let connect = connect_packet(self.spec.v5, &self.spec.name, clean, self.spec.persistent);
        let before = self.world.before_connect();
        let Some((conn, ack)) = raw_connect(addr, &connect) else {
            std::thread::sleep(ms(50));
            return false;
        };
        self.process = self.world.process_of(before);
        self.connections += 1;
        self.world.action(
            &self.session(),
            &format!("connected, session present {}", ack.session_present),
        );
        if clean {
            self.qos2.forget();
            self.subscribed = false;
        } else if !first && !ack.session_present {
            self.world.violation(format!(
                "{}: persistent session not present on reconnect",
                self.spec.name
            ));
            self.qos2.forget();
            self.subscribed = false;
            self.world.unsubscribed(&self.spec.name, self.spec.filter);
        }
        self.conn = Some(conn);
        true
    }

    /// Sends SUBSCRIBE and waits for its SUBACK; true if granted.
    fn subscribe(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let pid = conn.pid();
        let mut body = pid.to_be_bytes().to_vec();
        if self.spec.v5 {
            body.push(0);
        }
        raw::put_str(&mut body, self.spec.filter);
        body.push(self.spec.qos);
        if !conn.try_send(&raw::frame(raw::SUBSCRIBE, 2, &body)) {
            self.conn = None;
            return false;
        }
        let Some(p) = self.pump(raw::WAIT, Some((raw::SUBACK, pid))) else {
            return false;
        };
        let code = *p.body.last().unwrap_or(&0x80);
        code < 0x80
    }

    fn unsubscribe(&mut self) {
        if self.spec.persistent {
            self.world.unsubscribed(&self.spec.name, self.spec.filter);
        }
        self.subscribed = false;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let pid = conn.pid();
        let mut body = pid.to_be_bytes().to_vec();
        if self.spec.v5 {
            body.push(0);
        }
        raw::put_str(&mut body, self.spec.filter);
        if !conn.try_send(&raw::frame(raw::UNSUBSCRIBE, 2, &body)) {
            self.conn = None;
            return;
        }
        self.pump(raw::WAIT, Some((raw::UNSUBACK, pid)));
    }

    fn drop_conn(&mut self, graceful: bool) {
        if let Some(conn) = self.conn.take() {
            if graceful {
                conn.disconnect(0);
            } else {
                conn.kill();
            }
        }
    }

    fn act(&mut self) {
        let roll = self.rng.below(100);
        let what = match roll {
            0..=9 => "disconnect, reconnect",
            10..=19 => "drop the connection, reconnect",
            20..=29 if self.spec.persistent => "take over from a new connection",
            30..=44 => "re-subscribe",
            45..=54 => "unsubscribe, subscribe",
            55..=61 if self.spec.persistent => "disconnect, offline, reconnect, re-subscribe",
            62..=69 if self.spec.persistent => {
                "drop the connection, offline, reconnect, re-subscribe"
            }
            70..=84 => "stop reading",
            _ => "",
        };
        if !what.is_empty() {
            self.world.action(&self.session(), what);
        }
        match roll {
            // Disconnect (cleanly or not) and reconnect at once.
            0..=19 => self.drop_conn(roll < 10),
            // Another connection takes the session over while this one is open.
            20..=29 if self.spec.persistent => {
                let old = self.conn.take();
                self.connect();
                if let Some(old) = old {
                    old.kill();
                }
            }
            // Re-subscribe the same filter, as client libraries do.
            30..=44 if self.subscribe() && self.spec.persistent => {
                self.world
                    .subscribed(&self.spec.name, self.spec.filter, false);
            }
            // Unsubscribe and subscribe again: an interruption.
            45..=54 => self.unsubscribe(),
            // Offline for a while (more than the session queue holds), then re-subscribe on
            // return, as client libraries do on every reconnect.
            55..=69 if self.spec.persistent => {
                self.drop_conn(roll < 62);
                self.world.sleep(ms(self.rng.between(300, 2500)));
                if self.connect() && self.subscribed && self.subscribe() {
                    self.world
                        .subscribed(&self.spec.name, self.spec.filter, false);
                }
            }
            // Stop reading for a while.
            70..=84 => self.world.sleep(ms(self.rng.between(300, 3000))),
            _ => {}
        }
    }

    fn run(mut self) {
        let mut next_action = Instant::now() + ms(self.rng.between(200, 1500));
        while !self.world.stopped() {
            if self.conn.is_none() && !self.connect() {
                continue;
            }
            if !self.subscribed {
                if !self.subscribe() {
                    continue;
                }
                self.subscribed = true;
                if self.spec.persistent {
                    self.world
                        .subscribed(&self.spec.name, self.spec.filter, true);
                    if self.spec.filter == SHARED_FILTER {
                        let mut h = self.world.hist.lock().unwrap();
                        h.shared.insert(self.spec.name.clone());
                    }
                }
            }
            if !self.spec.persistent && self.spec.filter == SHARED_FILTER {
                let mut h = self.world.hist.lock().unwrap();
                h.shared.insert(self.session());
            }
            self.pump(ms(100), None);
            if !self.world.draining() && Instant::now() > next_action {
                self.act();
                next_action = Instant::now() + ms(self.rng.between(300, 2000));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Publishers (raw client): persistent sessions that resend with the same packet id

struct PubSpec {
    name: String,
    v5: bool,
    qos: u8,
    topics: &'static [&'static str],
    retain: bool,
    stream: u64,
}

#[derive(PartialEq)]
enum Phase {
    /// PUBLISH sent (or to send); waiting for PUBACK / PUBREC.
    Publish { sent: bool },
    /// PUBREC came; waiting for PUBCOMP.
    Release,
}

fn raw_publisher(world: Arc<World>, spec: PubSpec) {
    let me = world.publisher(&spec.name);
    let mut rng = Rng::new(world.seed, spec.stream);
    let mut conn: Option<Conn> = None;
    // The broker process of `conn` (`World::process_of`).
    let mut process = None;
    let mut seq = 0u32;
    let mut pid = 0u16;
    let mut current: Option<(MsgId, String, Vec<u8>, Phase)> = None;
    let mut drain_deadline = None;
    while !world.stopped() {
        if world.draining() {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + ms(30_000));
            if current.is_none() || Instant::now() > deadline {
                break;
            }
        }
        if conn.is_none() {
            let Some(addr) = world.wait_addr() else { break };
            let connect = connect_packet(spec.v5, &spec.name, false, true);
            let before = world.before_connect();
            match raw_connect(addr, &connect) {
                Some((c, _)) => {
                    process = world.process_of(before);
                    conn = Some(c);
                }
                None => {
                    std::thread::sleep(ms(50));
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        c.auto_pubrel = false;
        if current.is_none() {
            seq += 1;
            pid = pid % u16::MAX + 1;
            let id = MsgId { publisher: me, seq };
            let topic = rng.pick(spec.topics).to_string();
            let clear = spec.retain && rng.chance(15);
            let body = if clear {
                Vec::new()
            } else {
                payload(id, rng.below(600) as usize)
            };
            world.sent(id, &topic, spec.qos, spec.retain, clear);
            current = Some((id, topic, body, Phase::Publish { sent: false }));
        }
        let (id, topic, body, phase) = current.as_mut().unwrap();
        let bytes = match phase {
            Phase::Publish { sent } => {
                if *sent {
                    world.resent(*id, process);
                }
                let p = raw::Publish::new(topic, body, spec.qos)
                    .pid(pid)
                    .dup(*sent)
                    .retain(spec.retain);
                *sent = true;
                p.encode(spec.v5)
            }
            Phase::Release => raw::frame(raw::PUBREL, 2, &pid.to_be_bytes()),
        };
        if !c.try_send(&bytes) {
            conn = None;
            continue;
        }
        // Drop the connection before the answer now and then: the resend with the same
        // packet id follows on the next connection.
        if !world.draining() && rng.chance(3) {
            conn.take().unwrap().kill();
            continue;
        }
        let want = match phase {
            Phase::Publish { .. } if spec.qos == 1 => raw::PUBACK,
            Phase::Publish { .. } => raw::PUBREC,
            Phase::Release => raw::PUBCOMP,
        };
        let deadline = Instant::now() + raw::WAIT;
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || world.stopped() {
                break None;
            }
            match c.recv(left.min(ms(200))) {
                Recv::Packet(p) if p.kind == want && decode_ack(&p).0 == pid => break Some(p),
                Recv::Packet(_) | Recv::Timeout => {}
                Recv::Closed => break None,
            }
        };
        let Some(answer) = answer else {
            conn = None;
            continue;
        };
        let code = decode_ack(&answer).1;
        match want {
            raw::PUBACK => {
                world.acked(*id, code < 0x80);
                current = None;
            }
            raw::PUBREC if code < 0x80 => {
                world.acked(*id, true);
                *phase = Phase::Release;
            }
            raw::PUBREC => {
                world.acked(*id, false);
                current = None;
            }
            _ => current = None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Publishers and a subscriber through rumqttc (v4 and v5), one message in flight at a time

/// A rumqttc publisher with clean sessions: a QoS 1 message whose connection dropped before
/// PUBACK is published again on a new connection (a duplicate is allowed); a QoS 2 message
/// never is (a second PUBLISH would be a second message) and stays unacknowledged.
fn rumqttc_publisher(world: Arc<World>, spec: PubSpec) {
    let me = world.publisher(&spec.name);
    let mut rng = Rng::new(world.seed, spec.stream);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut seq = 0u32;
        let mut current: Option<(MsgId, String, Vec<u8>)> = None;
        let mut v4: Option<(rumqttc::AsyncClient, rumqttc::EventLoop)> = None;
        let mut v5: Option<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop)> = None;
        while !(world.stopped() || world.draining() && current.is_none()) {
            let Some(addr) = world.addr() else {
                tokio::time::sleep(ms(20)).await;
                continue;
            };
            if current.is_none() {
                seq += 1;
                let id = MsgId { publisher: me, seq };
                let topic = rng.pick(spec.topics).to_string();
                let body = payload(id, rng.below(600) as usize);
                world.sent(id, &topic, spec.qos, false, false);
                current = Some((id, topic, body));
            }
            let (id, topic, body) = current.clone().unwrap();
            let acked = if spec.v5 {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::mqttbytes::QoS;
                use rumqttc::v5::Event;
                let (client, el) = v5.get_or_insert_with(|| {
                    let mut o = rumqttc::v5::MqttOptions::new(&spec.name, "127.0.0.1", addr.port());
                    o.set_keep_alive(Duration::from_secs(30));
                    rumqttc::v5::AsyncClient::new(o, 10)
                });
                let qos = if spec.qos == 2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let _ = client.publish(topic, qos, false, body).await;
                let mut acked = None;
                let mut lost = false;
                loop {
                    match tokio::time::timeout(raw::WAIT, el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                            use rumqttc::v5::mqttbytes::v5::PubAckReason::*;
                            acked = Some(matches!(a.reason, Success | NoMatchingSubscribers));
                            break;
                        }
                        Ok(Ok(Event::Incoming(Packet::PubRec(r)))) => {
                            use rumqttc::v5::mqttbytes::v5::PubRecReason::*;
                            let ok = matches!(r.reason, Success | NoMatchingSubscribers);
                            world.acked(id, ok);
                            current = None;
                            if !ok {
                                break;
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::PubComp(_)))) => break,
                        Ok(Ok(_)) => {}
                        _ => {
                            lost = true;
                            break;
                        }
                    }
                }
                if lost {
                    v5 = None;
                }
                acked
            } else {
                use rumqttc::{Event, Packet, QoS};
                let (client, el) = v4.get_or_insert_with(|| {
                    let mut o = rumqttc::MqttOptions::new(&spec.name, "127.0.0.1", addr.port());
                    o.set_keep_alive(Duration::from_secs(30));
                    rumqttc::AsyncClient::new(o, 10)
                });
                let qos = if spec.qos == 2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let _ = client.publish(topic, qos, false, body).await;
                let acked = loop {
                    match tokio::time::timeout(raw::WAIT, el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break Some(true),
                        Ok(Ok(_)) => {}
                        _ => break None,
                    }
                };
                if acked.is_none() {
                    v4 = None;
                }
                acked
            };
            match acked {
                Some(ok) => {
                    world.acked(id, ok);
                    current = None;
                }
                // QoS 2: no resend as a new message.
                None if spec.qos == 2 => current = None,
                None => tokio::time::sleep(ms(20)).await,
            }
        }
    });
}

/// A persistent 3.1.1 rumqttc subscriber at QoS 1; it reconnects (dropping its client) and
/// re-subscribes the same filter at random.
fn rumqttc_subscriber(world: Arc<World>, name: String, stream: u64) {
    use rumqttc::{Event, Packet, QoS};
    let mut rng = Rng::new(world.seed, stream);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut connections = 0u64;
        let mut subscribed = false;
        let mut next_action = Instant::now() + ms(rng.between(200, 1500));
        while !world.stopped() {
            let Some(addr) = world.addr() else {
                tokio::time::sleep(ms(20)).await;
                continue;
            };
            let mut o = rumqttc::MqttOptions::new(&name, "127.0.0.1", addr.port());
            o.set_keep_alive(Duration::from_secs(30));
            o.set_clean_session(false);
            let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
            loop {
                if world.stopped() {
                    break;
                }
                if !world.draining() && Instant::now() > next_action && subscribed {
                    next_action = Instant::now() + ms(rng.between(300, 2000));
                    if rng.chance(50) {
                        world.action(&name, "drop the client, reconnect");
                        break;
                    }
                    world.action(&name, "re-subscribe");
                    let _ = client.try_subscribe(FILTER, QoS::AtLeastOnce);
                }
                match tokio::time::timeout(ms(100), el.poll()).await {
                    Err(_) => {}
                    Ok(Err(_)) => {
                        tokio::time::sleep(ms(50)).await;
                        break;
                    }
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        if connections > 0 && !ack.session_present {
                            world.violation(format!(
                                "{name}: persistent session not present on reconnect"
                            ));
                            subscribed = false;
                            world.unsubscribed(&name, FILTER);
                        }
                        connections += 1;
                        if !subscribed {
                            let _ = client.try_subscribe(FILTER, QoS::AtLeastOnce);
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                        let ok = ack
                            .return_codes
                            .iter()
                            .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                        if ok {
                            world.subscribed(&name, FILTER, !subscribed);
                            subscribed = true;
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        world.delivered(&name, None, None, &p.topic, p.qos as u8, &p.payload);
                    }
                    Ok(Ok(_)) => {}
                }
            }
            // PUBLISHes already read (and acknowledged) but not yet handed out.
            for event in el.state.events.drain(..) {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    world.delivered(&name, None, None, &p.topic, p.qos as u8, &p.payload);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// The nemesis

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// kill -9 and a restart on new ports.
    Kill9,
    /// SIGTERM and an immediate restart on the same ports.
    TermSamePorts,
    /// kill -9 or SIGTERM, then a restart with the other `shards` count (1 ↔ 2).
    ShardCount,
    /// A full disk for a while, then kill -9 and a restart with room again.
    DiskFull,
    /// SIGSTOP for a while, then SIGCONT.
    Stall,
}

struct Plan {
    seed: u64,
    cycles: u64,
    faults: &'static [Fault],
    /// The data dir on a small loop-mounted file system (needed by `DiskFull`).
    disk: bool,
    /// Faults drawn at random; else taken in turn (the short runs cover each one).
    random_faults: bool,
    /// Load before each fault, in ms.
    load_ms: (u64, u64),
    /// QoS 2 duplicate classes that do not fail the run (known open defects), each still
    /// bounded by `TOLERATED_PER_MILLE`; `DupClass::Other` is never among them.
    tolerate: Vec<DupClass>,
    /// The broker's `wake_coalesce_us` (0: off, its default): the same checks while the
    /// shards nap between turns.
    wake_coalesce_us: u64,
}

struct Restart {
    fault: Fault,
    waited: Duration,
    attempts: u32,
}

struct Nemesis {
    world: Arc<World>,
    rng: Rng,
    data: std::path::PathBuf,
    shards: usize,
    broker: Option<Broker>,
    restarts: Vec<Restart>,
    rss_max: u64,
    rss_bound: u64,
    wake_coalesce_us: u64,
}

/// Two free ports (held together while chosen, so they differ).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("a free port");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// What the broker may hold in memory by its configuration, for `clients` sessions.
fn rss_bound(shards: u64, clients: u64) -> u64 {
    let setting = |key: &str| -> u64 {
        SETTINGS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap()
    };
    RSS_BASE_BYTES
        + shards
            * (setting("IO_MEMORY_BYTES")
                + setting("WAL_BUFFER_BYTES")
                + shards * setting("MESH_LINK_BYTES_MAX")
                + setting("SHARED_BACKLOG_BYTES_MAX"))
        + clients * (setting("SESSION_QUEUE_BYTES_MAX") + setting("CONNECTION_OUT_BYTES_MAX"))
}

const CLIENTS: u64 = 14;

impl Nemesis {
    /// Starts the broker, on `ports` if given (retrying while they are refused, up to
    /// `RESTART_RETRY`), and records how long it took to serve.
    fn start(&mut self, fault: Option<Fault>, ports: Option<(u16, u16)>) {
        let (mqtt, metrics) = ports.unwrap_or_else(free_ports);
        let mut env: Vec<(String, String)> = SETTINGS
            .iter()
            .map(|(k, v)| (format!("SHARDMQ_{k}"), v.to_string()))
            .collect();
        env.push(("SHARDMQ_MQTT_LISTEN".into(), format!("127.0.0.1:{mqtt}")));
        env.push((
            "SHARDMQ_METRICS_LISTEN".into(),
            format!("127.0.0.1:{metrics}"),
        ));
        env.push((
            "SHARDMQ_START_TIMEOUT_MS".into(),
            START_TIMEOUT_MS.to_string(),
        ));
        env.push((
            "SHARDMQ_WAKE_COALESCE_US".into(),
            self.wake_coalesce_us.to_string(),
        ));
        let options = BrokerOptions {
            shards: self.shards,
            env,
            args: Vec::new(),
            data_dir: Some(self.data.clone()),
        };
        let t0 = Instant::now();
        let mut attempts = 0;
        let mut first_error = None;
        let broker = loop {
            attempts += 1;
            match Broker::try_start(options.clone()) {
                Ok(b) => break b,
                Err((status, log)) => {
                    let line = log
                        .lines()
                        .rev()
                        .find(|l| l.contains("ERROR") || l.contains("error"))
                        .unwrap_or("")
                        .to_string();
                    first_error.get_or_insert(line);
                    assert!(
                        log.contains("already in use") && t0.elapsed() < RESTART_RETRY,
                        "the broker did not start for {RESTART_RETRY:?} ({status:?}):\n{log}"
                    );
                    std::thread::sleep(ms(1000));
                }
            }
        };
        let waited = t0.elapsed();
        if let Some(fault) = fault {
            if waited > ms(START_TIMEOUT_MS) {
                self.world.violation(format!(
                    "restart after {fault:?} served only after {waited:?} ({attempts} attempts; \
                     first refusal: {})",
                    first_error.unwrap_or_default()
                ));
            }
            self.restarts.push(Restart {
                fault,
                waited,
                attempts,
            });
        }
        self.rss_bound = rss_bound(self.shards as u64, CLIENTS);
        if let Some(fault) = fault {
            let generation = self.world.generation.fetch_add(1, Ordering::SeqCst) + 1;
            self.world.action(
                "broker",
                &format!(
                    "broker {generation} serves after {fault:?}, {} shards",
                    self.shards
                ),
            );
        }
        *self.world.addr.write().unwrap() = Some(broker.mqtt);
        self.broker = Some(broker);
    }

    /// Ends the broker: SIGKILL or SIGTERM; returns its ports.
    fn stop(&mut self, kill: bool) -> (u16, u16) {
        *self.world.addr.write().unwrap() = None;
        let mut b = self.broker.take().expect("a running broker");
        let ports = (b.mqtt.port(), b.metrics.port());
        if kill {
            b.child.kill().expect("SIGKILL");
            b.child.wait().expect("reaped");
        } else {
            b.signal(libc::SIGTERM);
            let status = b.wait_exit(Duration::from_secs(30));
            assert!(status.is_some(), "SIGTERM: the broker did not exit in 30 s");
        }
        // Gone, and the next one not started yet.
        self.world.ended.fetch_add(1, Ordering::SeqCst);
        ports
    }

    fn sample_rss(&mut self) {
        if let Some(b) = &self.broker {
            let rss = b.rss_bytes();
            self.rss_max = self.rss_max.max(rss);
            if rss > self.rss_bound {
                self.world.violation(format!(
                    "broker RSS {} MiB over the configured bound {} MiB",
                    rss >> 20,
                    self.rss_bound >> 20
                ));
            }
        }
    }

    /// Lets the clients run for `d`, sampling the broker's memory.
    fn load(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.sample_rss();
            std::thread::sleep(ms(100));
        }
    }

    fn fault(&mut self, fault: Fault, disk: Option<&SmallDisk>) {
        match fault {
            Fault::Kill9 => {
                self.stop(true);
                self.start(Some(fault), None);
            }
            Fault::TermSamePorts => {
                let ports = self.stop(false);
                self.start(Some(fault), Some(ports));
            }
            Fault::ShardCount => {
                let kill = self.rng.chance(50);
                self.stop(kill);
                self.shards = 3 - self.shards;
                self.start(Some(fault), None);
            }
            Fault::DiskFull => {
                let disk = disk.expect("DiskFull needs the data dir on a small disk");
                let filler = disk.mount.join("filler");
                fill(&filler, disk);
                // Until the broker refuses a publish (it needs a new segment: the current
                // one and the spare prepared ahead fill up first), at most 20 s.
                let world = Arc::clone(&self.world);
                let refused = || {
                    let h = world.hist.lock().unwrap();
                    h.sent.values().filter(|s| s.refused).count()
                };
                let before = refused();
                let addr = self.world.addr().unwrap();
                let filled = std::thread::spawn(move || fill_the_log(addr));
                let end = Instant::now() + ms(20_000);
                while refused() == before && Instant::now() < end {
                    self.load(ms(100));
                }
                let refused_big = filled.join().unwrap_or(false);
                let full_ms = self.rng.between(200, 1000);
                self.load(ms(full_ms));
                eprintln!(
                    "disk full: {} KiB free, big publishes refused: {refused_big}, {} checked \
                     publishes refused",
                    disk.free_bytes() >> 10,
                    refused() - before
                );
                self.stop(true);
                unfill(&filler);
                self.start(Some(fault), None);
            }
            Fault::Stall => {
                self.world.action("broker", "SIGSTOP");
                let b = self.broker.as_ref().unwrap();
                b.signal(libc::SIGSTOP);
                std::thread::sleep(ms(self.rng.between(200, 1500)));
                b.signal(libc::SIGCONT);
            }
        }
    }
}

/// Takes all but at most 128 KiB of the file system with real allocations (not sparse
/// files), in filler files `filler.N` next to `path`.
fn fill(path: &std::path::Path, disk: &SmallDisk) {
    use std::os::fd::AsRawFd;
    let mut n = 0;
    let mut step = 64u64 << 20;
    while disk.free_bytes() > 128 << 10 && step >= 16 << 10 {
        let f = std::fs::File::create(path.with_extension(n.to_string())).expect("a filler");
        n += 1;
        let want = step
            .min(disk.free_bytes().saturating_sub(64 << 10))
            .max(16 << 10);
        // SAFETY: a valid open descriptor.
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, want as libc::off_t) };
        if rc != 0 {
            step /= 2;
        }
    }
}

/// Publishes 60 KiB QoS 1 messages to a topic nobody reads (and the history does not
/// record) until the broker refuses one (the log's current segment and its spare are full),
/// or for at most 20 s; true if one was refused.
fn fill_the_log(addr: SocketAddr) -> bool {
    let Some((mut c, _)) = raw_connect(addr, &connect_packet(true, "nm-filler", true, false))
    else {
        return false;
    };
    let body = vec![b'f'; 60 << 10];
    let end = Instant::now() + ms(20_000);
    while Instant::now() < end {
        let pid = c.pid();
        if !c.try_send(&raw::Publish::new("nm-fill", &body, 1).pid(pid).encode(true)) {
            return false;
        }
        loop {
            match c.recv(ms(5000)) {
                Recv::Packet(p) if p.kind == raw::PUBACK => {
                    if decode_ack(&p).1 >= 0x80 {
                        return true;
                    }
                    break;
                }
                Recv::Packet(_) => {}
                Recv::Closed | Recv::Timeout => return false,
            }
        }
    }
    false
}

/// Removes the filler files `fill` made.
fn unfill(path: &std::path::Path) {
    let dir = path.parent().unwrap();
    let stem = path.file_name().unwrap().to_str().unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_str().unwrap_or("").starts_with(stem) {
            std::fs::remove_file(entry.path()).expect("remove a filler");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checking the history

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    acknowledged: u64,
    /// Refused by the broker (an error reason code), never acknowledged.
    refused: u64,
    /// Deliveries the promise requires: (session or group, acknowledged message) pairs.
    required: u64,
    delivered: u64,
    lost: u64,
    /// Deliveries beyond the first of a message to a session, at this QoS as delivered.
    duplicates: u64,
}

/// The class of a QoS 2 duplicate, judged from the history of the two deliveries (the
/// duplicate and the session's previous QoS 2 delivery of the same message). Each duplicate
/// is in exactly one class, tried in this order; a class is claimed only when the history
/// shows its cause, so that a tolerated class cannot hide a duplicate of another kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DupClass {
    /// Across a broker restart: the two deliveries came from different broker processes.
    Restart,
    /// Within one process, after the publisher resent the PUBLISH with its packet id,
    /// before the second delivery, to that process or an earlier one: a resend taken for
    /// a new message is logged twice, and every later process replays both records (to a
    /// session that was offline meanwhile, back to back on one connection).
    Resend,
    /// Within one process, to a shared-group member that reconnected (a CONNACK recorded
    /// for the session) between the two deliveries.
    SharedReconnect,
    /// Anything else: within one process, no resend, no shared-member reconnect.
    Other,
}

impl DupClass {
    const ALL: [DupClass; 4] = [
        DupClass::Restart,
        DupClass::SharedReconnect,
        DupClass::Resend,
        DupClass::Other,
    ];
    fn letter(self) -> char {
        match self {
            DupClass::Restart => 'R',
            DupClass::SharedReconnect => 'S',
            DupClass::Resend => 'P',
            DupClass::Other => 'O',
        }
    }
    fn parse(letter: &str) -> DupClass {
        match letter.trim() {
            "R" => DupClass::Restart,
            "S" => DupClass::SharedReconnect,
            "P" => DupClass::Resend,
            other => {
                panic!("unknown QoS 2 duplicate class {other:?}: R, S or P (O is never tolerated)")
            }
        }
    }
}

/// A tolerated class may make up at most this share of the required QoS 2 deliveries
/// (per mille); beyond it the run fails: a known defect may not grow unnoticed.
const TOLERATED_PER_MILLE: u64 = 50;

struct Verdict {
    qos: [Counts; 3],
    lost: Vec<String>,
    /// Lost messages per session (or group).
    lost_ids: BTreeMap<String, Vec<MsgId>>,
    qos2_duplicates: Vec<(DupClass, String)>,
    order: Vec<String>,
    retained: Vec<String>,
    violations: Vec<String>,
}

fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = filter.strip_prefix("$share/g/").unwrap_or(filter);
    match filter.strip_suffix('#') {
        Some(prefix) => topic.starts_with(prefix),
        None => topic == filter,
    }
}

fn required_missing(h: &History) -> u64 {
    check(h, &BTreeMap::new()).qos.iter().map(|c| c.lost).sum()
}

/// Per session and message.
#[derive(Default)]
struct Seen {
    deliveries: u64,
    qos2: u64,
    /// The latest QoS 2 delivery's broker process and tick.
    last_qos2: (Option<u64>, u64),
    /// Its packet id, for the raw client.
    last_pid: Option<u16>,
}

/// Classifies the QoS 2 duplicate `d` of `sent`, whose previous QoS 2 delivery to the
/// session came from broker process `before.0` at tick `before.1`. A delivery whose
/// process is not certain is in no class but O.
fn classify(h: &History, d: &Delivery, sent: &Sent, before: (Option<u64>, u64)) -> DupClass {
    let (Some(process), Some(earlier)) = (d.process, before.0) else {
        return DupClass::Other;
    };
    let at = before.1;
    if earlier != process {
        return DupClass::Restart;
    }
    // Both from one process from here on.
    if sent
        .resends
        .iter()
        .any(|&(r_at, r_process)| r_process.is_some_and(|r| r <= process) && r_at < d.at)
    {
        return DupClass::Resend;
    }
    let reconnected = h.shared.contains(&d.session)
        && h.actions.iter().any(|(a_at, who, what)| {
            *a_at > at && *a_at < d.at && *who == d.session && what.starts_with("connected")
        });
    if reconnected {
        return DupClass::SharedReconnect;
    }
    DupClass::Other
}

fn check(h: &History, retained: &BTreeMap<String, Option<MsgId>>) -> Verdict {
    let mut v = Verdict {
        qos: [Counts::default(); 3],
        lost: Vec::new(),
        lost_ids: BTreeMap::new(),
        qos2_duplicates: Vec::new(),
        order: Vec::new(),
        retained: Vec::new(),
        violations: h.violations.clone(),
    };
    for s in h.sent.values() {
        if s.acked_at.is_some() && !s.retain {
            v.qos[s.qos as usize].acknowledged += 1;
        }
        if s.refused && !s.retain {
            v.qos[s.qos as usize].refused += 1;
        }
    }
    // Per session: message -> (deliveries, deliveries at QoS 2); first deliveries in order.
    let mut got: HashMap<&str, HashMap<MsgId, Seen>> = HashMap::new();
    let mut last_first: HashMap<(&str, u16, &str), (u32, u64)> = HashMap::new();
    let mut group_got: HashSet<MsgId> = HashSet::new();
    for d in &h.deliveries {
        let Some(sent) = h.sent.get(&d.id) else {
            v.violations
                .push(format!("{}: got {:?}, never sent", d.session, d.id));
            continue;
        };
        if sent.topic != d.topic {
            v.violations.push(format!(
                "{}: {:?} came on {} but was sent to {}",
                d.session, d.id, d.topic, sent.topic
            ));
        }
        let shared = h.shared.contains(&d.session);
        if shared {
            group_got.insert(d.id);
        }
        let entry = got.entry(&d.session).or_default().entry(d.id).or_default();
        entry.deliveries += 1;
        if d.qos == 2 {
            entry.qos2 += 1;
            if entry.qos2 > 1 {
                let class = classify(h, d, sent, entry.last_qos2);
                let (before_process, before_at) = entry.last_qos2;
                let broker = |p: Option<u64>| p.map_or("?".to_string(), |p| p.to_string());
                let before_pid = entry
                    .last_pid
                    .map_or(String::new(), |pid| format!(" (packet id {pid})"));
                v.qos2_duplicates.push((
                    class,
                    format!(
                        "{}: [{}] {}:{} on {}, before from broker {} at tick {before_at}\
                         {before_pid}, again from broker {} at tick {}{}{}",
                        d.session,
                        class.letter(),
                        h.publishers[d.id.publisher as usize],
                        d.id.seq,
                        d.topic,
                        broker(before_process),
                        broker(d.process),
                        d.at,
                        if sent.resent {
                            " (the publisher resent it with its packet id)"
                        } else {
                            ""
                        },
                        match d.wire {
                            Some((pid, true)) => format!(
                                " (packet id {pid}, after the PUBREL of an earlier exchange)"
                            ),
                            Some((pid, false)) => format!(" (packet id {pid}{})", d.note),
                            None => String::new(),
                        }
                    ),
                ));
            }
            entry.last_qos2 = (d.process, d.at);
            entry.last_pid = d.wire.map(|(pid, _)| pid);
        }
        if entry.deliveries > 1 {
            v.qos[sent.qos as usize].duplicates += 1;
        } else if !shared {
            let key = (d.session.as_str(), d.id.publisher, d.topic.as_str());
            match last_first.get(&key) {
                Some(&(last, at)) if d.id.seq < last => v.order.push(format!(
                    "{}: first delivery of {}:{} on {} at tick {} after {} at tick {at}",
                    d.session, h.publishers[d.id.publisher as usize], d.id.seq, d.topic, d.at, last
                )),
                _ => {
                    last_first.insert(key, (d.id.seq, d.at));
                }
            }
        }
    }
    // Loss: each persistent subscriber, then the shared group as a whole.
    let empty = HashMap::new();
    let mut group_since: Option<u64> = None;
    for (session, (filter, since)) in &h.subscribed {
        let Some(since) = *since else { continue };
        if filter.starts_with("$share/") {
            group_since = Some(group_since.map_or(since, |g: u64| g.min(since)));
            continue;
        }
        let mine = got.get(session.as_str()).unwrap_or(&empty);
        require(h, &mut v, session, filter, since, |id| {
            mine.contains_key(id)
        });
    }
    if let Some(since) = group_since {
        let group = "shared group g";
        require(h, &mut v, group, SHARED_FILTER, since, |id| {
            group_got.contains(id)
        });
    }
    // Retained: the last acknowledged write per topic, or a later unacknowledged one.
    if !retained.is_empty() {
        for topic in RETAINED_TOPICS {
            let mut writes: Vec<(&MsgId, &Sent)> = h
                .sent
                .iter()
                .filter(|(_, s)| s.retain && s.topic == *topic)
                .collect();
            writes.sort_by_key(|(id, _)| **id);
            let last_acked = writes.iter().rposition(|(_, s)| s.acked_at.is_some());
            let mut allowed: Vec<Option<MsgId>> = Vec::new();
            match last_acked {
                Some(i) => allowed.push((!writes[i].1.clear).then_some(*writes[i].0)),
                None => allowed.push(None),
            }
            let after = last_acked.map_or(0, |i| i + 1);
            for (id, s) in &writes[after..] {
                if !s.refused {
                    allowed.push((!s.clear).then_some(**id));
                }
            }
            let seen = retained.get(*topic).copied().flatten();
            if !allowed.contains(&seen) {
                v.retained.push(format!(
                    "{topic}: retained {seen:?}, allowed {allowed:?} (last writes: {:?})",
                    writes
                        .iter()
                        .rev()
                        .take(4)
                        .map(|(id, s)| (id.seq, s.acked_at.is_some(), s.clear))
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    v
}

/// Counts the acknowledged messages `who` (subscribed to `filter` without interruption
/// since tick `since`) must have received, and which of them `got` says it did not.
fn require(
    h: &History,
    v: &mut Verdict,
    who: &str,
    filter: &str,
    since: u64,
    got: impl Fn(&MsgId) -> bool,
) {
    for (id, s) in &h.sent {
        if s.acked_at.is_none() || s.sent_at < since || !topic_matches(filter, &s.topic) {
            continue;
        }
        let c = &mut v.qos[s.qos as usize];
        c.required += 1;
        if got(id) {
            c.delivered += 1;
        } else {
            c.lost += 1;
            v.lost_ids.entry(who.to_string()).or_default().push(*id);
            v.lost.push(format!(
                "{who}: {}:{} QoS {} on {}, sent at tick {}, acknowledged at tick {}{}",
                h.publishers[id.publisher as usize],
                id.seq,
                s.qos,
                s.topic,
                s.sent_at,
                s.acked_at.unwrap_or(0),
                if s.resent {
                    " (the publisher resent it with its packet id)"
                } else {
                    ""
                }
            ));
        }
    }
}

/// The numbers following `word ` in a report line, in order.
fn numbers_after<'a>(line: &'a str, word: &str) -> Vec<&'a str> {
    line.split(&format!("{word} "))
        .skip(1)
        .map(|t| t.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
        .collect()
}

/// What the session and the broker did between the two ticks a failure line names (the
/// two deliveries of a QoS 2 duplicate, or of two messages out of order).
fn explain_between(h: &History, line: &str) {
    let session = line.split(':').next().unwrap();
    let mut ticks: Vec<u64> = numbers_after(line, "tick")
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    ticks.sort_unstable();
    let [first, again] = ticks[..] else { return };
    eprintln!("  {session}, between the two deliveries:");
    for (at, who, what) in &h.actions {
        if *at >= first && *at <= again && (who == session || who == "broker") {
            eprintln!("    tick {at}: {who}: {what}");
        }
    }
}

/// For each session that lost messages: the span of their sends and what the session and
/// the broker did from just before it to its end.
fn explain_losses(h: &History, v: &Verdict) {
    for (session, ids) in &v.lost_ids {
        let sent = |id: &MsgId| &h.sent[id];
        let first = ids.iter().map(|id| sent(id).sent_at).min().unwrap();
        let last = ids
            .iter()
            .map(|id| sent(id).acked_at.unwrap_or(0))
            .max()
            .unwrap();
        // For the shared group: what its members did.
        let group = session.starts_with("shared group");
        let involved =
            |who: &str| who == session || who == "broker" || (group && h.shared.contains(who));
        let before = h
            .actions
            .iter()
            .filter(|(at, who, _)| *at < first && involved(who))
            .map(|(at, _, _)| *at)
            .max()
            .unwrap_or(0);
        eprintln!("  {session}: lost messages sent between ticks {first} and {last}; around them:");
        let mut after = 0;
        for (at, who, what) in &h.actions {
            if *at < before || !involved(who) {
                continue;
            }
            if *at > last {
                // The first few things after, e.g. the reconnect that came too late.
                after += 1;
                if after > 3 {
                    break;
                }
            }
            eprintln!("    tick {at}: {who}: {what}");
        }
    }
}

/// The retained messages a new subscriber gets, per retained topic.
fn read_retained(addr: SocketAddr) -> BTreeMap<String, Option<MsgId>> {
    let mut out: BTreeMap<String, Option<MsgId>> = RETAINED_TOPICS
        .iter()
        .map(|t| (t.to_string(), None))
        .collect();
    let mut c = Conn::client(addr, true, "nm-retained-check");
    c.sub("nm/r/#", 1);
    for p in c.drain_publishes(Duration::from_secs(3)) {
        assert!(p.retain, "only retained messages on nm/r/#: {p:?}");
        out.insert(p.topic.clone(), parse_payload(&p.payload));
    }
    out
}

// ---------------------------------------------------------------------------------------
// A run

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("nm-{name}"))
        .spawn(f)
        .expect("spawn a client thread")
}

fn run(plan: Plan) {
    quiet_client_panics();
    let seed = plan.seed;
    eprintln!(
        "nemesis: SHARDMQ_NEMESIS_SEED={seed} cycles {} faults {:?} disk {} tolerate {:?} \
         wake_coalesce_us {}",
        plan.cycles, plan.faults, plan.disk, plan.tolerate, plan.wake_coalesce_us
    );
    let world = Arc::new(World {
        seed,
        addr: RwLock::new(None),
        generation: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        draining: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        hist: Mutex::new(History::default()),
    });
    let disk = plan.disk.then(|| SmallDisk::new(256));
    let temp = temp_dir();
    let data = match &disk {
        Some(d) => d.mount.join("data"),
        None => temp.path().join("data"),
    };
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = Rng::new(seed, 0);
    let mut n = Nemesis {
        world: Arc::clone(&world),
        rng: Rng::new(seed, 1),
        data,
        shards: 1 + rng.below(2) as usize,
        broker: None,
        restarts: Vec::new(),
        rss_max: 0,
        rss_bound: 0,
        wake_coalesce_us: plan.wake_coalesce_us,
    };
    n.start(None, None);

    let mut subscribers = Vec::new();
    let subs = [
        ("sub-v5-q2", true, FILTER, 2, true),
        ("sub-v4-q2", false, FILTER, 2, true),
        ("sub-v5-q1", true, FILTER, 1, true),
        ("sub-clean-v5", true, FILTER, 2, false),
        ("shared-v5-p", true, SHARED_FILTER, 2, true),
        ("shared-v4-p", false, SHARED_FILTER, 1, true),
        ("shared-clean-v5", true, SHARED_FILTER, 2, false),
        ("shared-clean-v4", false, SHARED_FILTER, 1, false),
    ];
    for (i, (name, v5, filter, qos, persistent)) in subs.into_iter().enumerate() {
        let spec = SubSpec {
            name: name.to_string(),
            v5,
            filter,
            qos,
            persistent,
            stream: 100 + i as u64,
        };
        let world = Arc::clone(&world);
        subscribers.push(spawn(name, move || {
            RawSubscriber {
                rng: Rng::new(world.seed, spec.stream),
                world,
                spec,
                conn: None,
                qos2: Qos2Receiver::default(),
                subscribed: false,
                connections: 0,
                process: None,
            }
            .run()
        }));
    }
    {
        let world = Arc::clone(&world);
        subscribers.push(spawn("sub-rumqttc-v4", move || {
            rumqttc_subscriber(world, "sub-rumqttc-v4".into(), 120)
        }));
    }
    // Wait until every persistent subscriber has subscribed once before publishing.
    assert!(
        eventually(Duration::from_secs(30), || {
            let h = world.hist.lock().unwrap();
            h.subscribed.values().filter(|(_, s)| s.is_some()).count() >= 6
        }),
        "the subscribers subscribed"
    );

    let mut publishers = Vec::new();
    #[allow(clippy::type_complexity)]
    let pubs: [(&str, bool, bool, u8, &'static [&'static str], bool); 6] = [
        ("pub-raw-v5-q2", true, true, 2, TOPICS, false),
        ("pub-raw-v4-q1", true, false, 1, TOPICS, false),
        ("pub-raw-v5-q1-shared", true, true, 1, SHARED_TOPICS, false),
        ("pub-raw-v5-retained", true, true, 1, RETAINED_TOPICS, true),
        ("pub-rumqttc-v4-q1", false, false, 1, TOPICS, false),
        ("pub-rumqttc-v5-q2", false, true, 2, SHARED_TOPICS, false),
    ];
    for (i, (name, raw_client, v5, qos, topics, retain)) in pubs.into_iter().enumerate() {
        let spec = PubSpec {
            name: name.to_string(),
            v5,
            qos,
            topics,
            retain,
            stream: 200 + i as u64,
        };
        let world = Arc::clone(&world);
        publishers.push(spawn(name, move || {
            if raw_client {
                raw_publisher(world, spec)
            } else {
                rumqttc_publisher(world, spec)
            }
        }));
    }
    {
        let world = Arc::clone(&world);
        publishers.push(spawn("pub-rumqttc-v5-q2-t", move || {
            rumqttc_publisher(
                world,
                PubSpec {
                    name: "pub-rumqttc-v5-q2-t".into(),
                    v5: true,
                    qos: 2,
                    topics: TOPICS,
                    retain: false,
                    stream: 210,
                },
            )
        }));
    }

    let started = Instant::now();
    let mut faults: BTreeMap<Fault, u64> = BTreeMap::new();
    for cycle in 0..plan.cycles {
        let load = n.rng.between(plan.load_ms.0, plan.load_ms.1);
        n.load(ms(load));
        let fault = if plan.random_faults {
            *n.rng.pick(plan.faults)
        } else {
            plan.faults[cycle as usize % plan.faults.len()]
        };
        *faults.entry(fault).or_default() += 1;
        n.fault(fault, disk.as_ref());
        let waited = n
            .restarts
            .last()
            .filter(|_| fault != Fault::Stall)
            .map(|r| format!(", served again after {} ms", r.waited.as_millis()))
            .unwrap_or_default();
        eprintln!(
            "cycle {cycle}: {load} ms of load, then {fault:?} (shards now {}){waited}",
            n.shards
        );
    }
    n.load(ms(500));

    // Drain: publishers finish what they have in flight, subscribers read everything.
    world.draining.store(true, Ordering::SeqCst);
    for p in publishers {
        p.join().expect("a publisher thread");
    }
    // Until nothing is missing, or nothing more came for 15 s (at most 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = u64::MAX;
    let mut progress = Instant::now();
    while Instant::now() < deadline && progress.elapsed() < Duration::from_secs(15) {
        n.sample_rss();
        let now_missing = required_missing(&world.hist.lock().unwrap());
        if now_missing < missing {
            progress = Instant::now();
        }
        missing = now_missing;
        if missing == 0 {
            break;
        }
        std::thread::sleep(ms(500));
    }
    // A moment more for duplicates still on their way.
    std::thread::sleep(ms(500));
    let addr = world.addr().expect("the broker serves");
    world.stop.store(true, Ordering::SeqCst);
    for s in subscribers {
        s.join().expect("a subscriber thread");
    }
    let retained = read_retained(addr);
    let h = world.hist.lock().unwrap();
    let v = check(&h, &retained);

    eprintln!(
        "nemesis: seed {seed}, {} cycles in {:.1} s, faults {faults:?}, {} sessions, \
         {} deliveries, {} still missing at the end of the drain",
        plan.cycles,
        started.elapsed().as_secs_f64(),
        h.subscribed.len(),
        h.deliveries.len(),
        missing
    );
    for r in &n.restarts {
        if r.attempts > 1 || r.waited > ms(START_TIMEOUT_MS) {
            eprintln!(
                "restart after {:?}: {} attempts, served after {} ms",
                r.fault,
                r.attempts,
                r.waited.as_millis()
            );
        }
    }
    let slowest = n
        .restarts
        .iter()
        .map(|r| r.waited)
        .max()
        .unwrap_or_default();
    eprintln!(
        "restarts {}, slowest served after {} ms (start_timeout_ms {START_TIMEOUT_MS}); \
         RSS max {} MiB, bound {} MiB",
        n.restarts.len(),
        slowest.as_millis(),
        n.rss_max >> 20,
        n.rss_bound >> 20
    );
    eprintln!(
        "| QoS | acknowledged | refused | required deliveries | delivered | lost | duplicates |"
    );
    eprintln!("|---|---|---|---|---|---|---|");
    for q in 1..=2 {
        let c = v.qos[q];
        eprintln!(
            "| {q} | {} | {} | {} | {} | {} | {} |",
            c.acknowledged, c.refused, c.required, c.delivered, c.lost, c.duplicates
        );
    }
    if h.qos2_after_pubrel > 0 {
        eprintln!(
            "QoS 2 deliveries of a message whose earlier delivery had its PUBREL: {}",
            h.qos2_after_pubrel
        );
    }
    let show = |what: &str, list: &[String]| {
        if !list.is_empty() {
            let mut by_session: BTreeMap<&str, usize> = BTreeMap::new();
            for l in list {
                *by_session.entry(l.split(':').next().unwrap()).or_default() += 1;
            }
            eprintln!("{what}: {} {by_session:?}", list.len());
            for l in list.iter().take(10) {
                eprintln!("  {l}");
            }
        }
    };
    show("LOST", &v.lost);
    explain_losses(&h, &v);
    // Per class; the untolerated ones and those within one broker process first.
    let mut dups = v.qos2_duplicates.clone();
    dups.sort_by_key(|(class, _)| (plan.tolerate.contains(class), std::cmp::Reverse(*class)));
    let count = |class: DupClass| dups.iter().filter(|(c, _)| *c == class).count() as u64;
    let lines: Vec<String> = dups.iter().map(|(_, l)| l.clone()).collect();
    show("QOS 2 DUPLICATES", &lines);
    // Every duplicate and loss to a file, for looking into a failed run.
    if let Ok(path) = std::env::var("SHARDMQ_NEMESIS_DUMP") {
        let all: Vec<&str> = lines.iter().chain(&v.lost).map(String::as_str).collect();
        std::fs::write(&path, all.join("\n") + "\n").expect("write the nemesis dump");
        eprintln!("every duplicate and loss written to {path}");
    }
    if !dups.is_empty() {
        eprintln!(
            "QoS 2 duplicates per class: {}",
            DupClass::ALL
                .iter()
                .map(|c| format!("{}={}", c.letter(), count(*c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (_, d) in dups.iter().filter(|(c, _)| *c != DupClass::Restart).take(2) {
        explain_between(&h, d);
    }
    for (_, d) in dups.iter().filter(|(c, _)| *c == DupClass::Restart).take(2) {
        explain_between(&h, d);
    }
    // Tolerated classes: known open defects, shown loudly and still bounded.
    let bound = v.qos[2].required * TOLERATED_PER_MILLE / 1000;
    let mut untolerated = 0;
    let mut over_bound = Vec::new();
    for class in DupClass::ALL {
        let n = count(class);
        if !plan.tolerate.contains(&class) {
            untolerated += n;
        } else if n > bound {
            over_bound.push(format!("{}={n}", class.letter()));
        }
    }
    if !plan.tolerate.is_empty() {
        eprintln!(
            "KNOWN OPEN (issue: QoS 2 exactly once): {} (tolerated, each at most {bound} = \
             {TOLERATED_PER_MILLE}‰ of {} required QoS 2 deliveries){}",
            plan.tolerate
                .iter()
                .map(|c| format!("{}={}", c.letter(), count(*c)))
                .collect::<Vec<_>>()
                .join(", "),
            v.qos[2].required,
            if over_bound.is_empty() {
                String::new()
            } else {
                format!("; OVER THE BOUND: {}", over_bound.join(", "))
            }
        );
    }
    show("ORDER", &v.order);
    for o in v.order.iter().take(2) {
        explain_between(&h, o);
    }
    show("RETAINED", &v.retained);
    show("VIOLATIONS", &v.violations);
    let failed = !(v.lost.is_empty()
        && untolerated == 0
        && over_bound.is_empty()
        && v.order.is_empty()
        && v.retained.is_empty()
        && v.violations.is_empty());
    eprintln!(
        "nemesis: {} (seed {seed})",
        if failed { "FAILED" } else { "ok" }
    );
    assert!(v.qos[1].acknowledged >= 50, "the QoS 1 load ran");
    assert!(v.qos[2].acknowledged >= 20, "the QoS 2 load ran");
    assert!(
        !failed,
        "seed {seed}: {} lost, {untolerated} untolerated QoS 2 duplicates (of {}), tolerated \
         classes over the bound: {over_bound:?}, {} order, {} retained, {} other violations",
        v.lost.len(),
        v.qos2_duplicates.len(),
        v.order.len(),
        v.retained.len(),
        v.violations.len()
    );
}

/// One run at a time: each runs a broker and a dozen clients on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A short run for `cargo test`: a fixed seed, the faults in turn, 0.6–1.5 s of load each.
fn short_run(seed: u64, faults: &'static [Fault], cycles: u64, disk: bool) {
    let _one = serial();
    run(Plan {
        seed,
        cycles,
        faults,
        disk,
        random_faults: false,
        load_ms: (600, 1500),
        // Known open defects (issue: QoS 2 exactly once), tolerated here within the bound
        // so that the short runs keep guarding every loss, order, retained, restart,
        // session and memory check; the long run tolerates none by default, and never O.
        tolerate: vec![
            DupClass::Restart,
            DupClass::SharedReconnect,
            DupClass::Resend,
            DupClass::Other,
        ],
        wake_coalesce_us: 0,
    });
}

#[test]
fn short_run_kill_9_stalls_and_shard_count_changes() {
    short_run(
        1,
        &[Fault::Kill9, Fault::Stall, Fault::ShardCount],
        3,
        false,
    );
}

#[test]
fn short_run_sigterm_and_restart_on_the_same_ports() {
    short_run(2, &[Fault::TermSamePorts], 2, false);
}

/// Needs root and e2fsprogs for the loop mount, as tests/disk_full.rs.
#[test]
fn short_run_full_disk() {
    short_run(3, &[Fault::DiskFull, Fault::Kill9], 2, true);
}

/// The long run: `scripts/nemesis.sh CYCLES SEED` (release build).
#[test]
#[ignore = "long: scripts/nemesis.sh runs it"]
fn long_run() {
    let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("SHARDMQ_NEMESIS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000
    });
    let disk = env("SHARDMQ_NEMESIS_DISK").unwrap_or(0) == 1;
    let faults: &'static [Fault] = if disk {
        &[
            Fault::Kill9,
            Fault::TermSamePorts,
            Fault::ShardCount,
            Fault::Stall,
            Fault::DiskFull,
        ]
    } else {
        &[
            Fault::Kill9,
            Fault::TermSamePorts,
            Fault::ShardCount,
            Fault::Stall,
        ]
    };
    run(Plan {
        seed,
        cycles: env("SHARDMQ_NEMESIS_CYCLES").unwrap_or(200),
        faults,
        disk,
        random_faults: true,
        load_ms: (500, 2500),
        tolerate: std::env::var("SHARDMQ_NEMESIS_TOLERATE")
            .unwrap_or_default()
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(DupClass::parse)
            .collect(),
        wake_coalesce_us: env("SHARDMQ_NEMESIS_WAKE_COALESCE_US").unwrap_or(0),
    });
}

/// An acknowledged QoS 2 message on `nm/s/0`, resent with its packet id at `resends`
/// (tick, broker process), for the unit tests.
fn acked_qos2(resends: Vec<(u64, Option<u64>)>) -> Sent {
    Sent {
        topic: "nm/s/0".to_string(),
        qos: 2,
        retain: false,
        clear: false,
        sent_at: 1,
        acked_at: Some(2),
        refused: false,
        resent: !resends.is_empty(),
        resends,
    }
}

/// Each class is claimed only when the history shows its cause: a tolerated class cannot
/// hide a duplicate of another kind.
#[test]
fn dup_classes_claim_only_what_the_history_shows() {
    let id = MsgId {
        publisher: 0,
        seq: 1,
    };
    let sent = acked_qos2;
    let again = |process: Option<u64>, at: u64| Delivery {
        at,
        process,
        session: "m".to_string(),
        id,
        topic: "nm/s/0".to_string(),
        qos: 2,
        wire: None,
        note: String::new(),
    };
    let mut h = History::default();
    let plain = sent(Vec::new());
    // Different processes: R; the same process with nothing between: O.
    assert_eq!(
        classify(&h, &again(Some(1), 20), &plain, (Some(0), 10)),
        DupClass::Restart
    );
    assert_eq!(
        classify(&h, &again(Some(1), 20), &plain, (Some(1), 10)),
        DupClass::Other
    );
    // A process not certain: never R (nor S or P).
    assert_eq!(
        classify(&h, &again(None, 20), &plain, (Some(0), 10)),
        DupClass::Other
    );
    assert_eq!(
        classify(&h, &again(Some(1), 20), &plain, (None, 10)),
        DupClass::Other
    );
    // A resend to this process before the second delivery: P; also to an earlier
    // process, whose log then holds the message twice for this one to replay (seen: both
    // records replayed back to back under consecutive packet ids). To a later process,
    // after the second delivery, or of unknown process: not P.
    for s in [sent(vec![(15, Some(1))]), sent(vec![(5, Some(0))])] {
        assert_eq!(
            classify(&h, &again(Some(1), 20), &s, (Some(1), 10)),
            DupClass::Resend
        );
    }
    for s in [
        sent(vec![(15, Some(2))]),
        sent(vec![(25, Some(1))]),
        sent(vec![(15, None)]),
    ] {
        assert_eq!(
            classify(&h, &again(Some(1), 20), &s, (Some(1), 10)),
            DupClass::Other
        );
    }
    // A reconnect between the two deliveries: S only for a shared-group member, and only
    // when the reconnect lies between them.
    h.actions.push((
        15,
        "m".to_string(),
        "connected, session present true".to_string(),
    ));
    assert_eq!(
        classify(&h, &again(Some(1), 20), &plain, (Some(1), 10)),
        DupClass::Other
    );
    h.shared.insert("m".to_string());
    assert_eq!(
        classify(&h, &again(Some(1), 20), &plain, (Some(1), 10)),
        DupClass::SharedReconnect
    );
    assert_eq!(
        classify(&h, &again(Some(1), 14), &plain, (Some(1), 10)),
        DupClass::Other
    );
    assert_eq!(
        classify(&h, &again(Some(1), 30), &plain, (Some(1), 16)),
        DupClass::Other
    );
    // The long run never tolerates O.
    assert!(std::panic::catch_unwind(|| DupClass::parse("O")).is_err());
}

/// The receiver holds back exactly what MQTT §4.3.3 does — a PUBLISH under a packet id
/// PUBREC'd and not yet released — and nothing else: a message again under a new packet
/// id, or under its own after its PUBREL, is delivered again (and the checker counts a
/// duplicate of it).
#[test]
fn the_qos2_receiver_holds_back_only_a_publish_under_an_id_awaiting_pubrel() {
    let m = |seq| MsgId { publisher: 0, seq };
    let new = |r: &Qos2Publish| matches!(r, Qos2Publish::New { .. });
    let mut r = Qos2Receiver::default();
    assert!(new(&r.publish(7, m(1), false)));
    // The resend under the id awaiting PUBREL: not delivered, with DUP or (a violation)
    // without.
    assert_eq!(r.publish(7, m(1), true), Qos2Publish::Resend);
    assert_eq!(r.publish(7, m(1), false), Qos2Publish::ResendWithoutDup);
    // Another message under the held id: the receiver drops it (a violation).
    assert_eq!(r.publish(7, m(2), false), Qos2Publish::IdHeld(m(1)));
    assert_eq!(r.publish(7, m(2), true), Qos2Publish::IdHeld(m(1)));
    // The same message under a new id, DUP or not, while the first exchange is open: a
    // second delivery.
    assert!(new(&r.publish(8, m(1), true)));
    // After the PUBREL the id is free: the same message under it again, even with DUP,
    // is a new application message, and says its exchange had completed.
    r.pubrel(7);
    assert_eq!(
        r.publish(7, m(1), true),
        Qos2Publish::New {
            after_pubrel: true,
            note: ", DUP true, the packet id free since the PUBREL of 0:1".to_string()
        }
    );
    // A forgotten session state holds nothing back, and a new session has completed
    // nothing yet.
    r.forget();
    assert_eq!(
        r.publish(7, m(1), true),
        Qos2Publish::New {
            after_pubrel: false,
            note: ", DUP true, the packet id free".to_string()
        }
    );

    // The checker counts each delivered one: two deliveries of one message are a
    // duplicate, whatever the packet ids.
    let mut h = History {
        publishers: vec!["p".to_string()],
        ..History::default()
    };
    h.sent.insert(m(1), acked_qos2(Vec::new()));
    let mut r = Qos2Receiver::default();
    for (at, pid, dup) in [(10, 7, false), (11, 7, true), (12, 9, true)] {
        if let Qos2Publish::New { after_pubrel, note } = r.publish(pid, m(1), dup) {
            h.deliveries.push(Delivery {
                at,
                process: Some(0),
                wire: Some((pid, after_pubrel)),
                note,
                session: "m".to_string(),
                id: m(1),
                topic: "nm/s/0".to_string(),
                qos: 2,
            });
        }
    }
    let v = check(&h, &BTreeMap::new());
    assert_eq!(v.qos[2].duplicates, 1, "the same message under a new id");
    assert_eq!(v.qos2_duplicates.len(), 1);
}
