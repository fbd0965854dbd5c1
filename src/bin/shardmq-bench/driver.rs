//! One generator thread: it opens its share of publishers and subscribers, then drives them
//! all from one `ppoll` loop over non-blocking sockets.
//!
//! Per wake-up each publisher encodes every message that is due (rate, window and a batch
//! cap permitting) into its one reused write buffer and the buffer goes out in one `write`;
//! every readable socket is drained into a reused read buffer and decoded with the crate's
//! codec; acks owed go into the same write buffer. Nothing is allocated per message: the
//! PUBLISH template's topic and payload are shared `Bytes`, and the stamp is written into
//! the encoded bytes in place.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use bytes::{Bytes, BytesMut};
use shardmq::mqtt::{
    self, Ack, ByteStr, DecodeLimits, Disconnect, Packet, PacketId, Publish, PublishProperties,
    QoS, ReasonCode,
};

use crate::config::{Params, Stop};
use crate::conn::{self, BenchError, READ_CHUNK_BYTES};
use crate::stats::{now_ns, Stamp, StreamStats, ThreadStats};

/// Messages one publisher may encode per wake-up, so one connection cannot starve others.
const BATCH_COUNT_MAX: usize = 512;
/// Unsent bytes above which a connection stops encoding new messages until the socket drains.
const WBUF_BYTES_MAX: usize = 256 * 1024;
/// Bytes read from one socket per wake-up.
const READ_BYTES_PER_WAKE_MAX: usize = 1024 * 1024;
/// Longest sleep in `ppoll`, so the stop flag is seen promptly.
const POLL_WAIT_NS_MAX: u64 = 50_000_000;
/// Shortest sleep while a rate-limited publisher waits for its next message: pacing in
/// ticks of this size sends small batches instead of waking once per message.
const RATE_TICK_NS: u64 = 1_000_000;
/// Packet ids tracked per publisher (all 16-bit ids).
const PACKET_ID_WORDS: usize = 65_536 / 64;

/// State every thread and the main thread share.
#[derive(Debug)]
pub struct Shared {
    /// Measurement origin, ns since the epoch; set by main between the two barriers.
    pub start_ns: AtomicU64,
    /// Set by main: disconnect and return.
    pub stop: AtomicBool,
    /// Set by a thread whose connections failed to open or broke during the run.
    pub failed: AtomicBool,
    /// Messages sent so far (for the progress line).
    pub published: AtomicU64,
    /// Messages delivered so far (for the progress line).
    pub delivered: AtomicU64,
    /// Publishers that finished sending and have nothing in flight.
    pub publishers_done: AtomicUsize,
    /// Latest send time of any message, ns since the epoch.
    pub last_send_ns: AtomicU64,
    /// Passed once when all connections are open and once after `start_ns` is set.
    pub barrier: Barrier,
}

impl Shared {
    /// Shared state for `threads` generator threads and the main thread.
    pub fn new(threads: usize) -> Self {
        Self {
            start_ns: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            publishers_done: AtomicUsize::new(0),
            last_send_ns: AtomicU64::new(0),
            barrier: Barrier::new(threads + 1),
        }
    }
}

/// The measured window as a thread sees it.
#[derive(Clone, Copy, Debug)]
struct Window {
    warm_end_ns: u64,
    publish_end_ns: u64,
}

struct Publisher {
    index: usize,
    template: Publish,
    seq: u32,
    count_max: u64,
    /// Send time of message 0 when rate-limited; message n is due `n / rate` later.
    rate_origin_ns: u64,
    inflight: u16,
    window: u16,
    ids_used: Vec<u64>,
    next_id: u16,
    sending_done: bool,
    reported_done: bool,
}

enum Role {
    Publisher(Box<Publisher>),
    /// Index into `ThreadStats::streams`.
    Subscriber(usize),
}

struct Conn {
    stream: conn::Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    role: Role,
}

/// Connections of one thread: publisher and subscriber indices.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Publisher indices.
    pub publishers: Vec<usize>,
    /// Subscriber indices.
    pub subscribers: Vec<usize>,
}

/// Runs one generator thread to completion.
pub fn run(
    p: Arc<Params>,
    shared: Arc<Shared>,
    work: Assignment,
    cpu: Option<usize>,
) -> Result<ThreadStats, BenchError> {
    if let Some(cpu) = cpu {
        crate::sys::pin_to_cpu(cpu);
    }
    let mut stats = ThreadStats::new();
    let opened = open_all(&p, &work, &mut stats);
    if opened.is_err() {
        shared.failed.store(true, Ordering::SeqCst);
    }
    shared.barrier.wait();
    shared.barrier.wait();
    let mut conns = opened?;
    let start_ns = shared.start_ns.load(Ordering::SeqCst);
    let warm_end_ns = start_ns + p.warmup_secs * 1_000_000_000;
    let window = Window {
        warm_end_ns,
        publish_end_ns: match p.stop {
            Stop::DurationSecs(d) => warm_end_ns + d * 1_000_000_000,
            Stop::Count(_) => u64::MAX,
        },
    };
    for c in &mut conns {
        if let Role::Publisher(pb) = &mut c.role {
            pb.rate_origin_ns = start_ns;
        }
    }
    let result = drive(&p, &shared, window, &mut conns, &mut stats);
    if result.is_err() {
        // Main stops waiting for this thread's publishers and reports the error.
        shared.failed.store(true, Ordering::SeqCst);
    }
    for c in &mut conns {
        if let Role::Publisher(pb) = &c.role {
            stats.sent.push((pb.index, u64::from(pb.seq)));
        }
        disconnect(&p, c);
    }
    result.map(|()| stats)
}

/// Keep-alive long enough that no PINGREQ is needed during the run.
pub fn keep_alive_secs(p: &Params) -> u16 {
    let run_secs = match p.stop {
        Stop::DurationSecs(d) => d,
        Stop::Count(_) => 600,
    } + p.warmup_secs
        + p.hold_secs;
    (run_secs + 60).min(u64::from(u16::MAX)) as u16
}

fn open_all(
    p: &Params,
    work: &Assignment,
    stats: &mut ThreadStats,
) -> Result<Vec<Conn>, BenchError> {
    let keep_alive = keep_alive_secs(p);
    let payload = Bytes::from(vec![0xA5u8; p.payload_bytes]);
    let pid = std::process::id();
    let mut conns = Vec::new();
    for &j in &work.subscribers {
        let mut s = conn::connect(p, &format!("bench-{pid}-s{j}"), keep_alive)?;
        conn::subscribe(&mut s, p.protocol, &p.filter_of(j), p.qos_level)?;
        stats.streams.push(StreamStats::new(j, p.publishers));
        conns.push(finish_open(s, Role::Subscriber(stats.streams.len() - 1))?);
    }
    for &i in &work.publishers {
        let s = conn::connect(p, &format!("bench-{pid}-p{i}"), keep_alive)?;
        let receive_max = s.connack.properties.receive_maximum.unwrap_or(u16::MAX);
        let template = Publish {
            dup: false,
            qos: p.qos_level,
            retain: false,
            topic: ByteStr::from(p.topic_of(i)),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.clone(),
        };
        let publisher = Publisher {
            index: i,
            template,
            seq: 0,
            count_max: match p.stop {
                Stop::Count(n) => n.min(u64::from(u32::MAX)),
                Stop::DurationSecs(_) => u64::from(u32::MAX),
            },
            rate_origin_ns: 0,
            inflight: 0,
            window: p.inflight.min(receive_max).max(1),
            ids_used: vec![0; PACKET_ID_WORDS],
            next_id: 1,
            sending_done: false,
            reported_done: false,
        };
        conns.push(finish_open(s, Role::Publisher(Box::new(publisher)))?);
    }
    Ok(conns)
}

fn finish_open(s: conn::Session, role: Role) -> Result<Conn, BenchError> {
    s.stream.set_nonblocking(true)?;
    Ok(Conn {
        stream: s.stream,
        rbuf: s.rbuf,
        wbuf: BytesMut::with_capacity(WBUF_BYTES_MAX),
        role,
    })
}

fn drive(
    p: &Params,
    shared: &Shared,
    w: Window,
    conns: &mut [Conn],
    stats: &mut ThreadStats,
) -> Result<(), BenchError> {
    let mut pollfds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: 0,
            revents: 0,
        })
        .collect();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = now_ns();
        let mut wait_ns = POLL_WAIT_NS_MAX;
        let (mut sent, mut last_sent) = (0u64, 0u64);
        for c in conns.iter_mut() {
            if let Role::Publisher(pb) = &mut c.role {
                let n = fill(p, pb, &mut c.wbuf, now, w, stats)?;
                sent += n;
                if n > 0 {
                    last_sent = now;
                }
                wait_ns = wait_ns.min(next_wait_ns(p, pb, &c.wbuf, now));
                if pb.sending_done && pb.inflight == 0 && !pb.reported_done {
                    pb.reported_done = true;
                    shared.publishers_done.fetch_add(1, Ordering::SeqCst);
                }
            }
            flush(c)?;
        }
        if sent > 0 {
            shared.published.fetch_add(sent, Ordering::Relaxed);
            shared.last_send_ns.fetch_max(last_sent, Ordering::Relaxed);
        }
        for (pfd, c) in pollfds.iter_mut().zip(conns.iter()) {
            let writing = !c.wbuf.is_empty() || c.stream.wants_write();
            pfd.events = libc::POLLIN | if writing { libc::POLLOUT } else { 0 };
            pfd.revents = 0;
        }
        crate::sys::ppoll(&mut pollfds, wait_ns)?;
        let mut delivered = 0u64;
        for (pfd, c) in pollfds.iter().zip(conns.iter_mut()) {
            if pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                delivered += receive(p, c, &mut chunk, w, stats)?;
            }
            if pfd.revents & libc::POLLOUT != 0 {
                flush(c)?;
            }
        }
        if delivered > 0 {
            shared.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Encodes every message of `pb` that is due now; returns how many.
fn fill(
    p: &Params,
    pb: &mut Publisher,
    wbuf: &mut BytesMut,
    now: u64,
    w: Window,
    stats: &mut ThreadStats,
) -> Result<u64, BenchError> {
    if now >= w.publish_end_ns || u64::from(pb.seq) >= pb.count_max {
        pb.sending_done = true;
    }
    let mut n = 0u64;
    while !pb.sending_done
        && (n as usize) < BATCH_COUNT_MAX
        && wbuf.len() < WBUF_BYTES_MAX
        && (pb.template.qos == QoS::AtMostOnce || pb.inflight < pb.window)
        && due_ns(p, pb) <= now
        && u64::from(pb.seq) < pb.count_max
    {
        pb.template.packet_id = match pb.template.qos {
            QoS::AtMostOnce => None,
            _ => Some(take_id(pb)),
        };
        pb.template.encode(p.protocol, wbuf)?;
        let at = wbuf.len() - p.payload_bytes;
        let stamp = Stamp {
            sent_ns: now,
            publisher: pb.index as u32,
            seq: pb.seq,
        };
        stamp.write(&mut wbuf[at..]);
        pb.seq += 1;
        n += 1;
        if now >= w.warm_end_ns {
            stats.published_measured += 1;
        }
    }
    Ok(n)
}

/// When the next message of `pb` is due, ns since the epoch.
fn due_ns(p: &Params, pb: &Publisher) -> u64 {
    match p.rate {
        0 => 0,
        rate => pb.rate_origin_ns + u64::from(pb.seq) * 1_000_000_000 / rate,
    }
}

/// How long the loop may sleep before `pb` can send again.
fn next_wait_ns(p: &Params, pb: &Publisher, wbuf: &BytesMut, now: u64) -> u64 {
    let blocked = pb.sending_done
        || wbuf.len() >= WBUF_BYTES_MAX
        || (pb.template.qos != QoS::AtMostOnce && pb.inflight >= pb.window);
    if blocked {
        POLL_WAIT_NS_MAX
    } else {
        match due_ns(p, pb).saturating_sub(now) {
            0 => 0,
            wait => wait.max(RATE_TICK_NS),
        }
    }
}

fn take_id(pb: &mut Publisher) -> PacketId {
    loop {
        let id = pb.next_id;
        pb.next_id = pb.next_id.checked_add(1).unwrap_or(1);
        let (word, bit) = (usize::from(id / 64), 1u64 << (id % 64));
        if pb.ids_used[word] & bit == 0 {
            pb.ids_used[word] |= bit;
            pb.inflight += 1;
            return PacketId::new(id).expect("ids start at 1 and skip 0");
        }
    }
}

fn release_id(pb: &mut Publisher, id: PacketId) {
    let id = id.get();
    let (word, bit) = (usize::from(id / 64), 1u64 << (id % 64));
    if pb.ids_used[word] & bit != 0 {
        pb.ids_used[word] &= !bit;
        pb.inflight -= 1;
    }
}

/// Writes as much of `c.wbuf` as the socket takes.
fn flush(c: &mut Conn) -> Result<(), BenchError> {
    while !c.wbuf.is_empty() {
        match c.stream.write(&c.wbuf) {
            Ok(0) => return Err(BenchError::Refused("connection closed".into())),
            Ok(n) => {
                let _ = c.wbuf.split_to(n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if c.wbuf.is_empty() {
        c.wbuf.clear();
    }
    // TLS: records rustls holds beyond what the socket took.
    match c.stream.flush() {
        Err(e) if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted => {
            Err(e.into())
        }
        _ => Ok(()),
    }
}

/// Drains the socket, handles every whole packet; returns deliveries counted.
fn receive(
    p: &Params,
    c: &mut Conn,
    chunk: &mut [u8],
    w: Window,
    stats: &mut ThreadStats,
) -> Result<u64, BenchError> {
    let mut read_total = 0usize;
    while read_total < READ_BYTES_PER_WAKE_MAX {
        match c.stream.read(chunk) {
            Ok(0) => return Err(BenchError::Refused("broker closed the connection".into())),
            Ok(n) => {
                c.rbuf.extend_from_slice(&chunk[..n]);
                read_total += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let now = now_ns();
    let mut delivered = 0;
    let limits = DecodeLimits::default();
    while let Some(packet) = mqtt::decode(&mut c.rbuf, Some(p.protocol), &limits)? {
        delivered += handle(p, c, packet, now, w, stats)?;
    }
    flush(c)?;
    Ok(delivered)
}

fn handle(
    p: &Params,
    c: &mut Conn,
    packet: Packet,
    now: u64,
    w: Window,
    stats: &mut ThreadStats,
) -> Result<u64, BenchError> {
    match (&mut c.role, packet) {
        (Role::Subscriber(s), Packet::Publish(m)) => {
            record_delivery(&m.payload, now, w, *s, stats);
            let owed = match (m.qos, m.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(Ack::new(id))),
                (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(Ack::new(id))),
                _ => None,
            };
            if let Some(ack) = owed {
                mqtt::encode(&ack, p.protocol, &mut c.wbuf)?;
            }
            Ok(1)
        }
        (Role::Subscriber(_), Packet::PubRel(a)) => {
            mqtt::encode(
                &Packet::PubComp(Ack::new(a.packet_id)),
                p.protocol,
                &mut c.wbuf,
            )?;
            Ok(0)
        }
        (Role::Publisher(pb), Packet::PubAck(a) | Packet::PubComp(a)) => {
            release_id(pb, a.packet_id);
            Ok(0)
        }
        (Role::Publisher(_), Packet::PubRec(a)) => {
            if a.reason.is_error() {
                return Err(BenchError::Refused(format!("PUBREC {:?}", a.reason)));
            }
            mqtt::encode(
                &Packet::PubRel(Ack::new(a.packet_id)),
                p.protocol,
                &mut c.wbuf,
            )?;
            Ok(0)
        }
        (_, Packet::Disconnect(d)) => {
            Err(BenchError::Refused(format!("DISCONNECT {:?}", d.reason)))
        }
        _ => Ok(0),
    }
}

/// Records one delivery: sequence tracking always, latency when it was sent in the window.
fn record_delivery(payload: &[u8], now: u64, w: Window, stream: usize, stats: &mut ThreadStats) {
    let Some(stamp) = Stamp::read(payload) else {
        stats.streams[stream].foreign += 1;
        return;
    };
    match stats.streams[stream]
        .tracks
        .get_mut(stamp.publisher as usize)
    {
        Some(track) => track.record(stamp.seq),
        None => stats.streams[stream].foreign += 1,
    }
    if stamp.sent_ns >= w.warm_end_ns && stamp.sent_ns < w.publish_end_ns {
        stats.record_latency_ns(now.saturating_sub(stamp.sent_ns));
    }
    if now >= w.warm_end_ns && now < w.publish_end_ns {
        stats.arrived_measured += 1;
    }
}

/// Sends DISCONNECT (best effort) and closes.
fn disconnect(p: &Params, c: &mut Conn) {
    let _ = c.stream.set_nonblocking(false);
    let _ = flush(c);
    let mut out = BytesMut::new();
    if mqtt::encode(
        &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        p.protocol,
        &mut out,
    )
    .is_ok()
    {
        let _ = c.stream.write_all(&out);
    }
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
}
