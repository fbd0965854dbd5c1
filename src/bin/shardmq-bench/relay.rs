//! Relay mode (`--relay ADDR`): the least work that passes a QoS 0 PUBLISH on as it
//! arrives, to put a floor under any broker's CPU per delivery for the same load on the
//! same host.
//!
//! Each of `--threads` threads (pinned by `--cpus`) accepts on its own SO_REUSEPORT
//! socket and waits in `epoll_wait`. Every ready connection is read once (up to 64 KiB),
//! its whole packets handled, and each publish appended as it came to the batch of every
//! subscriber whose filter matches; once all the connections one wait returned are read,
//! each batch goes out in one `write`. A subscriber on another thread gets its batch
//! through that thread's inbox, with an eventfd write only when that thread is asleep:
//! the least a hand-off between two threads can cost.
//!
//! It speaks only what the generator needs: CONNECT (3.1.1 or 5.0) → CONNACK, SUBSCRIBE
//! (any filter, QoS 0 granted) → SUBACK, QoS 0 PUBLISH, PINGREQ → PINGRESP, DISCONNECT;
//! anything else closes the connection. All but PUBLISH go through the broker's codec. Publishes go out unchanged, so publishers and
//! subscribers must speak one protocol version. No sessions, retained messages, QoS 1
//! or 2, authentication or limits beyond a cap on a stalled subscriber's output: it is
//! the cost floor of a broker, not one.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::BytesMut;
use shardmq::mqtt::{
    self, ConnAck, DecodeLimits, Packet, PacketType, Protocol, ReasonCode, SubAck, Subscribe,
};

use crate::config::{filter_matches, Params};
use crate::sys;

/// Bytes read from a connection per readiness.
const READ_BYTES: usize = 64 * 1024;
/// Readiness events taken per wait.
const EVENTS: usize = 256;
/// A subscriber whose unsent output passes this has stopped reading: it is closed.
const OUT_MAX: usize = 64 << 20;
/// Epoll tokens of a thread's listener and its inbox's bell; connections use their ids.
const LISTENER: u64 = u64::MAX;
const BELL: u64 = u64::MAX - 1;
/// A connection id carries its thread's index above this bit.
const THREAD_SHIFT: u32 = 48;

/// One subscription of one connection.
struct Sub {
    filter: String,
    conn: u64,
}

/// Output handed to a thread by the others: records of connection id (8 bytes, LE),
/// length (4 bytes, LE) and the bytes.
struct Inbox {
    queue: Mutex<Vec<u8>>,
    /// Set while the thread waits (or is about to) in `epoll_wait`.
    asleep: AtomicBool,
    /// An eventfd in the thread's epoll set, written to wake it.
    bell: OwnedFd,
}

struct Shared {
    subs: RwLock<Vec<Sub>>,
    /// Bumped on every change of `subs`; each thread rebuilds its routes when it moves.
    generation: AtomicU64,
    inboxes: Vec<Inbox>,
}

/// Serves until killed; returns only on a setup error or a failed wait.
pub fn run(p: &Params, addr: SocketAddr) -> io::Result<()> {
    let threads = p.threads;
    let mut inboxes = Vec::with_capacity(threads);
    for _ in 0..threads {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        inboxes.push(Inbox {
            queue: Mutex::new(Vec::new()),
            asleep: AtomicBool::new(false),
            // SAFETY: `fd` was just created and is owned by nothing else.
            bell: unsafe { OwnedFd::from_raw_fd(fd) },
        });
    }
    let shared = Arc::new(Shared {
        subs: RwLock::new(Vec::new()),
        generation: AtomicU64::new(0),
        inboxes,
    });
    // Every listener is bound before any thread starts, so a bad address fails at once;
    // the first one's port (the kernel's choice for port 0) is every other one's.
    let first = listen(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(listen(addr)?);
    }
    eprintln!("shardmq-bench: relay on {addr}, {threads} thread(s)");
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(t, listener)| {
            let shared = Arc::clone(&shared);
            let cpu = (!p.cpus.is_empty()).then(|| p.cpus[t % p.cpus.len()]);
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    sys::pin_to_cpu(cpu);
                }
                Relay::new(t, shared, listener)?.run()
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("a relay thread panicked"))??;
    }
    Ok(())
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

struct Conn {
    stream: TcpStream,
    /// The start of a packet whose rest has not arrived yet.
    carry: Vec<u8>,
    /// Output the socket has not taken yet (written on EPOLLOUT).
    out: Vec<u8>,
    /// The protocol of its CONNECT, `None` before one.
    protocol: Option<Protocol>,
    subscribed: bool,
}

/// Where each topic's publishes go, and the output gathered in the current turn.
#[derive(Default)]
struct Routing {
    /// Subscriber connection ids per topic, for the subscriptions of `generation`.
    routes: HashMap<Box<[u8]>, Vec<u64>>,
    generation: u64,
    /// (connection id, bytes) for this turn; the first `used` are live, the rest keep
    /// their buffers for later turns.
    batches: Vec<(u64, Vec<u8>)>,
    used: usize,
}

impl Routing {
    fn publish(&mut self, shared: &Shared, topic: &[u8], packet: &[u8]) {
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.routes.clear();
            self.generation = generation;
        }
        if !self.routes.contains_key(topic) {
            let dests = match std::str::from_utf8(topic) {
                Ok(t) => shared
                    .subs
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|s| filter_matches(&s.filter, t))
                    .map(|s| s.conn)
                    .collect(),
                Err(_) => Vec::new(),
            };
            self.routes.insert(topic.into(), dests);
        }
        for &dest in &self.routes[topic] {
            let live = &mut self.batches[..self.used];
            if let Some((_, bytes)) = live.iter_mut().find(|(d, _)| *d == dest) {
                bytes.extend_from_slice(packet);
                continue;
            }
            if self.used == self.batches.len() {
                self.batches.push((dest, Vec::new()));
            }
            let (d, bytes) = &mut self.batches[self.used];
            *d = dest;
            bytes.clear();
            bytes.extend_from_slice(packet);
            self.used += 1;
        }
    }
}

/// One relay thread.
struct Relay {
    me: usize,
    shared: Arc<Shared>,
    listener: TcpListener,
    epoll: OwnedFd,
    conns: HashMap<u64, Conn>,
    next: u64,
    read_buf: Vec<u8>,
    routing: Routing,
    /// The inbox's records taken in one swap, kept for its buffer.
    taken: Vec<u8>,
    closing: Vec<u64>,
}

impl Relay {
    fn new(me: usize, shared: Arc<Shared>, listener: TcpListener) -> io::Result<Relay> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let relay = Relay {
            me,
            shared,
            listener,
            // SAFETY: `fd` was just created and is owned by nothing else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            conns: HashMap::new(),
            next: 0,
            read_buf: vec![0; READ_BYTES],
            routing: Routing::default(),
            taken: Vec::new(),
            closing: Vec::new(),
        };
        relay.control(
            libc::EPOLL_CTL_ADD,
            relay.listener.as_raw_fd(),
            LISTENER,
            false,
        )?;
        let bell = relay.shared.inboxes[me].bell.as_raw_fd();
        relay.control(libc::EPOLL_CTL_ADD, bell, BELL, false)?;
        Ok(relay)
    }

    fn control(&self, op: libc::c_int, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN as u32;
        if writable {
            flags |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events: flags,
            u64: token,
        };
        // SAFETY: `ev` lives through the call; the descriptors are open.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let timeout = {
                let inbox = &self.shared.inboxes[self.me];
                inbox.asleep.store(true, Ordering::SeqCst);
                // Pairs with the fence in `flush`: either this thread sees the records
                // queued for it, or their sender sees it asleep and rings.
                fence(Ordering::SeqCst);
                let empty = inbox
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if empty {
                    -1
                } else {
                    0
                }
            };
            // SAFETY: `events` has room for EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    timeout,
                )
            };
            self.shared.inboxes[self.me]
                .asleep
                .store(false, Ordering::Relaxed);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (token, flags) = (ev.u64, ev.events);
                match token {
                    LISTENER => self.accept(),
                    BELL => self.clear_bell(),
                    id => self.serve(id, flags),
                }
            }
            self.take_inbox();
            self.flush();
            while let Some(id) = self.closing.pop() {
                self.close(id);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    let id = ((self.me as u64) << THREAD_SHIFT) | self.next;
                    self.next += 1;
                    if self
                        .control(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), id, false)
                        .is_err()
                    {
                        continue;
                    }
                    let conn = Conn {
                        stream,
                        carry: Vec::new(),
                        out: Vec::new(),
                        protocol: None,
                        subscribed: false,
                    };
                    self.conns.insert(id, conn);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("shardmq-bench: relay accept: {e}");
                    return;
                }
            }
        }
    }

    fn clear_bell(&self) {
        let mut count = [0u8; 8];
        let bell = self.shared.inboxes[self.me].bell.as_raw_fd();
        // SAFETY: an 8-byte read into a live buffer from our own eventfd.
        unsafe { libc::read(bell, count.as_mut_ptr().cast(), count.len()) };
    }

    fn serve(&mut self, id: u64, flags: u32) {
        if flags & libc::EPOLLOUT as u32 != 0 {
            self.write_out(id);
        }
        if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            self.read(id);
        }
    }

    fn read(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let n = match (&conn.stream).read(&mut self.read_buf) {
            Ok(0) => return self.closing.push(id),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return self.closing.push(id),
        };
        let result = if conn.carry.is_empty() {
            let data = &self.read_buf[..n];
            let r = packets(data, id, conn, &self.shared, &mut self.routing);
            if let Ok(used) = r {
                conn.carry.extend_from_slice(&data[used..]);
            }
            r.map(drop)
        } else {
            let mut data = std::mem::take(&mut conn.carry);
            data.extend_from_slice(&self.read_buf[..n]);
            let r = packets(&data, id, conn, &self.shared, &mut self.routing);
            if let Ok(used) = r {
                data.drain(..used);
                conn.carry = data;
            }
            r.map(drop)
        };
        if let Err(ToClose) = result {
            self.closing.push(id);
        } else if !conn.out.is_empty() && self.watch_writable(id, true).is_err() {
            self.closing.push(id);
        }
    }

    fn watch_writable(&self, id: u64, on: bool) -> io::Result<()> {
        let fd = self.conns[&id].stream.as_raw_fd();
        self.control(libc::EPOLL_CTL_MOD, fd, id, on)
    }

    fn write_out(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match (&conn.stream).write(&conn.out) {
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return self.closing.push(id),
        }
        if conn.out.is_empty() && self.watch_writable(id, false).is_err() {
            self.closing.push(id);
        }
    }

    /// Delivers what other threads queued for this one's connections.
    fn take_inbox(&mut self) {
        {
            let mut queue = self.shared.inboxes[self.me]
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if queue.is_empty() {
                return;
            }
            std::mem::swap(&mut *queue, &mut self.taken);
        }
        let taken = std::mem::take(&mut self.taken);
        let mut at = 0;
        while at + 12 <= taken.len() {
            let id = u64::from_le_bytes(taken[at..at + 8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(taken[at + 8..at + 12].try_into().expect("4 bytes"));
            let bytes = &taken[at + 12..at + 12 + len as usize];
            self.deliver(id, bytes);
            at += 12 + len as usize;
        }
        self.taken = taken;
        self.taken.clear();
    }

    /// Sends this turn's batches: this thread's subscribers at once, the others' through
    /// their threads' inboxes, each such thread rung once if asleep.
    fn flush(&mut self) {
        let mut batches = std::mem::take(&mut self.routing.batches);
        let used = std::mem::replace(&mut self.routing.used, 0);
        let mut handed = 0u64;
        for (dest, bytes) in &batches[..used] {
            let thread = (dest >> THREAD_SHIFT) as usize;
            if thread == self.me {
                self.deliver(*dest, bytes);
                continue;
            }
            let mut queue = self.shared.inboxes[thread]
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            queue.extend_from_slice(&dest.to_le_bytes());
            queue.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            queue.extend_from_slice(bytes);
            handed |= 1 << thread.min(63);
        }
        if handed != 0 {
            fence(Ordering::SeqCst);
            for (t, inbox) in self.shared.inboxes.iter().enumerate() {
                if handed & (1 << t.min(63)) != 0 && inbox.asleep.load(Ordering::SeqCst) {
                    let one = 1u64.to_ne_bytes();
                    // SAFETY: an 8-byte write from a live buffer to an open eventfd.
                    unsafe { libc::write(inbox.bell.as_raw_fd(), one.as_ptr().cast(), 8) };
                }
            }
        }
        for (_, bytes) in &mut batches[..used] {
            bytes.clear();
        }
        self.routing.batches = batches;
    }

    fn deliver(&mut self, id: u64, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match send(conn, bytes) {
            Ok(false) => {}
            Ok(true) => {
                if self.watch_writable(id, true).is_err() {
                    self.closing.push(id);
                }
            }
            Err(ToClose) => self.closing.push(id),
        }
    }

    fn close(&mut self, id: u64) {
        // Closing the descriptor takes it out of the epoll set.
        if let Some(conn) = self.conns.remove(&id) {
            if conn.subscribed {
                let mut subs = self.shared.subs.write().unwrap_or_else(|e| e.into_inner());
                subs.retain(|s| s.conn != id);
                self.shared.generation.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// The connection is to be closed (a protocol error, an unsupported packet, a dead or
/// stalled socket).
struct ToClose;

/// Writes `bytes` now or queues them behind output already waiting; `Ok(true)` when
/// output now waits for the socket to take it and was not waiting before.
fn send(conn: &mut Conn, bytes: &[u8]) -> Result<bool, ToClose> {
    if !conn.out.is_empty() {
        if conn.out.len() + bytes.len() > OUT_MAX {
            return Err(ToClose);
        }
        conn.out.extend_from_slice(bytes);
        return Ok(false);
    }
    let n = match (&conn.stream).write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(_) => return Err(ToClose),
    };
    if n == bytes.len() {
        return Ok(false);
    }
    conn.out.extend_from_slice(&bytes[n..]);
    Ok(true)
}

/// Handles the whole packets at the start of `data`; returns how many bytes they took.
///
/// A PUBLISH, the message path, is read no further than its topic and goes out as it
/// came; every other packet goes through the broker's codec.
fn packets(
    data: &[u8],
    id: u64,
    conn: &mut Conn,
    shared: &Shared,
    routing: &mut Routing,
) -> Result<usize, ToClose> {
    let mut at = 0;
    while let Some((header, len)) = frame(&data[at..])? {
        let packet = &data[at..at + len];
        at += len;
        if packet[0] >> 4 == PacketType::Publish as u8 && conn.protocol.is_some() {
            if packet[0] & 0x06 != 0 {
                return Err(ToClose);
            }
            let body = &packet[header..];
            let topic_len = body.get(..2).ok_or(ToClose)?;
            let topic_len = u16::from_be_bytes([topic_len[0], topic_len[1]]) as usize;
            let topic = body.get(2..2 + topic_len).ok_or(ToClose)?;
            routing.publish(shared, topic, packet);
            continue;
        }
        let mut own = BytesMut::from(packet);
        let decoded = mqtt::decode(&mut own, conn.protocol, &DecodeLimits::default());
        match (decoded, conn.protocol) {
            (Ok(Some(Packet::Connect(c))), None) => {
                conn.protocol = Some(c.protocol);
                reply(
                    conn,
                    &Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)),
                )?;
            }
            (Ok(Some(Packet::Subscribe(sub))), Some(_)) => subscribe(conn, id, shared, sub)?,
            (Ok(Some(Packet::PingReq)), Some(_)) => reply(conn, &Packet::PingResp)?,
            _ => return Err(ToClose),
        }
    }
    Ok(at)
}

/// The header length and total length of the packet `data` starts with, or `None` when
/// it has not all arrived.
fn frame(data: &[u8]) -> Result<Option<(usize, usize)>, ToClose> {
    let mut len = 0usize;
    for i in 1..5 {
        let Some(&b) = data.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7F) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let total = i + 1 + len;
            return Ok((data.len() >= total).then_some((i + 1, total)));
        }
    }
    Err(ToClose)
}

/// Encodes and sends a reply. Replies are a few bytes on a connection that had room;
/// output left queued is written on the next EPOLLOUT, which `read` asks for.
fn reply(conn: &mut Conn, packet: &Packet) -> Result<(), ToClose> {
    let protocol = conn.protocol.ok_or(ToClose)?;
    let mut out = BytesMut::new();
    mqtt::encode(packet, protocol, &mut out).map_err(|_| ToClose)?;
    send(conn, &out).map(drop)
}

fn subscribe(conn: &mut Conn, id: u64, shared: &Shared, sub: Subscribe) -> Result<(), ToClose> {
    let granted = vec![ReasonCode::Success; sub.filters.len()];
    {
        let mut subs = shared.subs.write().unwrap_or_else(|e| e.into_inner());
        subs.extend(sub.filters.iter().map(|(filter, _)| Sub {
            filter: filter.as_str().to_owned(),
            conn: id,
        }));
        shared.generation.fetch_add(1, Ordering::Release);
    }
    conn.subscribed = true;
    reply(conn, &Packet::SubAck(SubAck::new(sub.packet_id, granted)))
}
