//! Quiet connections parked without tasks.
//!
//! A connection is two tasks, a glommio stream with a registered poll and a read timer:
//! about 2 KB that a device which pings once a minute keeps for nothing. A plain-TCP
//! connection whose reads found nothing for `idle_park_ms`, with nothing to write and no
//! publish awaiting its owner, is parked instead: both tasks end, the glommio stream is
//! dropped (its socket kept open on another descriptor number), and what the packet loop
//! carries ([`Live`]) waits in the connection's [`Conn::parked`]. Its session,
//! [`Conn`] and [`Link`](crate::session::Link) stay as they are: deliveries, acks,
//! closes and reloads reach it unchanged.
//!
//! Two things unpark it and give it its tasks back (on the same socket, with the same
//! state): bytes from the client (or its close), which a watcher thread of this shard
//! sees in an epoll set of the parked sockets, and anything that would wake its writer
//! (output for it, a close by the shard), through a waker put where the writer's was.
//! Both push the connection's token onto a list and ring this shard's bell, a socket the
//! shard reads like any other; glommio 0.9 cannot wait on an epoll descriptor itself.
//! The keep-alive goes on while parked: once a second the shard unparks those past it,
//! whose first read then times out at once as it would have.
//!
//! What wakes most parked connections is their client's PINGREQ, every keep-alive. A
//! socket that holds nothing but PINGREQs is answered by the watcher thread itself (see
//! [`answer_pings`]): it peeks, writes the PINGRESPs and takes the PINGREQs off, and the
//! shard is not woken at all. The watcher and the shard share a [`Board`] with one
//! spot per connection slot, which says whether the connection is parked, when its
//! client was last heard and whether the watcher is at its socket; the shard takes the
//! spot back before it touches a parked socket again.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

use crate::metrics::ShardProbe;
use crate::runtime::ConnectionSlot;

use super::conn::Conn;
use super::serve::{self, Live, Start};
use super::socket::Socket;
use super::Door;

/// How often the parked connections' keep-alives are looked at.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_secs(1);
/// The epoll token that tells the watcher thread to end.
const STOP: u64 = u64::MAX;
/// Events the watcher takes from the kernel per wait.
const EVENTS_PER_WAIT: usize = 256;
/// What the watcher waits for on a parked socket: bytes or a close, edge-triggered (an
/// event per arrival; a socket the watcher answered needs no re-arming).
const WATCHED: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// PINGREQ and PINGRESP (MQTT 3.1.1 and 5.0 alike).
const PINGREQ: [u8; 2] = [0xC0, 0x00];
const PINGRESP: [u8; 2] = [0xD0, 0x00];
/// The most PINGREQs answered at once for a parked connection; a socket that holds more
/// is unparked and read as usual.
const PINGS_AT_ONCE: usize = 4;

/// The means to park and unpark one shard's connections (which are found by token in
/// the door's table of connections).
pub(super) struct Parking {
    /// `None` when `idle_park_ms = 0`, or when the epoll set could not be made.
    watch: Option<Watch>,
}

/// What a parked connection keeps, in its [`Conn`].
pub(super) struct Parked {
    /// The socket, on the descriptor number in `conn.link.fd()`.
    fd: OwnedFd,
    slot: ConnectionSlot,
    live: Box<Live>,
}

/// The epoll set of parked sockets, its watcher thread and the bell it rings.
struct Watch {
    epoll: Arc<OwnedFd>,
    bell: Arc<Bell>,
    board: Arc<Board>,
    /// The shard's end of the bell, until its reading task takes it.
    bell_rx: RefCell<Option<std::os::unix::net::UnixStream>>,
    /// Written to end the watcher thread (registered under [`STOP`]).
    stop: OwnedFd,
}

/// Tokens of connections to unpark, and a socket whose readability tells the shard.
struct Bell {
    tokens: Mutex<Vec<u64>>,
    ring: std::os::unix::net::UnixStream,
}

impl Bell {
    /// Queues `token` for unparking; rings when the list was empty (a non-empty list has
    /// rung already and the shard has not taken it yet).
    fn push(&self, token: u64) {
        let first = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.push(token);
            tokens.len() == 1
        };
        if first {
            // Non-blocking; a full socket has rung enough.
            // SAFETY: a one-byte write from a live buffer to a descriptor we own.
            unsafe { libc::write(self.ring.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.tokens.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Spots of the board, allocated together as the shard's connection slots grow: one
/// fewer than 1,024 so that a chunk with its `Arc`'s two counts (16 bytes) is 16 KiB, an
/// allocator size class of its own, rather than 16 bytes over it (a 20 KiB block, a
/// quarter of it unused).
const SPOTS_PER_CHUNK: usize = 1023;
const _: () = assert!(SPOTS_PER_CHUNK * std::mem::size_of::<Spot>() + 16 == 16 << 10);
/// A spot's word: the connection is parked (the watcher may answer its pings).
const PARKED: u64 = 1;
/// The watcher is at the parked socket; the shard waits before taking the spot back.
const BUSY: u64 = 1 << 1;
/// Bytes of PINGRESP the watcher could not write (a nearly full send buffer), which the
/// connection owes its client before anything else: three bits.
const OWED_SHIFT: u32 = 2;
const OWED_MASK: u64 = 0b111 << OWED_SHIFT;
/// The watcher answered a PINGREQ since the park, at `heard`.
const HEARD: u64 = 1 << 5;
/// When the client was last heard, in ticks since the board's start, wrapping: 26 bits
/// of 10 ms, 7.7 days, far beyond the longest keep-alive (1.5 × 65,535 s).
const HEARD_SHIFT: u32 = 6;
const HEARD_BITS: u32 = 26;
const TICK: Duration = Duration::from_millis(10);
/// The parked socket's descriptor, in the high half.
const FD_SHIFT: u32 = 32;

/// What the shard and its watcher thread share of the parked connections: a spot per
/// connection slot (a token's index), 16 bytes each, kept for slots that once held a
/// connection.
///
/// A spot holds the parked connection's token (0 when none) and a word with its socket's
/// descriptor, when its client was last heard, what it owes it and two flags. The
/// watcher marks a parked spot busy, then checks its token against the event's (a stale
/// event from a connection since unparked finds another token or none); the shard
/// clears the token, then waits out a busy mark before taking the word. Both sides'
/// operations are sequentially consistent, so one of them always sees the other's.
struct Board {
    chunks: RwLock<Vec<Arc<[Spot]>>>,
    start: Instant,
    /// The shard's metrics, whose count of parked PINGREQs answered the watcher keeps
    /// (only it answers them).
    probe: Arc<ShardProbe>,
    /// PINGREQ bytes the watcher took, not yet counted in the shard's bytes received
    /// (which the shard counts).
    bytes: AtomicU64,
}

#[derive(Default)]
struct Spot {
    token: AtomicU64,
    word: AtomicU64,
}

/// One spot, with the chunk that holds it.
struct SpotRef {
    chunk: Arc<[Spot]>,
    at: usize,
}

impl std::ops::Deref for SpotRef {
    type Target = Spot;

    fn deref(&self) -> &Spot {
        &self.chunk[self.at]
    }
}

/// What a parked connection's spot said when the shard took it back.
struct Taken {
    /// When the watcher last answered its client, if it did.
    heard: Option<Instant>,
    /// Bytes of PINGRESP still owed to the client.
    owed: usize,
}

impl Board {
    fn new(probe: Arc<ShardProbe>) -> Self {
        Board {
            chunks: RwLock::new(Vec::new()),
            start: Instant::now(),
            probe,
            bytes: AtomicU64::new(0),
        }
    }

    /// The spot of `token`'s connection slot, if its chunk was ever made.
    fn spot(&self, token: u64) -> Option<SpotRef> {
        let index = crate::runtime::token_index(token);
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let chunk = Arc::clone(chunks.get(index / SPOTS_PER_CHUNK)?);
        Some(SpotRef {
            chunk,
            at: index % SPOTS_PER_CHUNK,
        })
    }

    /// The spot of `token`'s connection slot, making the chunks up to it.
    fn spot_or_grow(&self, token: u64) -> SpotRef {
        if let Some(spot) = self.spot(token) {
            return spot;
        }
        let index = crate::runtime::token_index(token);
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        while chunks.len() <= index / SPOTS_PER_CHUNK {
            chunks.push((0..SPOTS_PER_CHUNK).map(|_| Spot::default()).collect());
        }
        SpotRef {
            chunk: Arc::clone(&chunks[index / SPOTS_PER_CHUNK]),
            at: index % SPOTS_PER_CHUNK,
        }
    }

    fn ticks(&self, at: Instant) -> u64 {
        let ticks = at.saturating_duration_since(self.start).as_millis() / TICK.as_millis();
        (ticks as u64) & ((1 << HEARD_BITS) - 1)
    }

    /// The instant `ticks` stands for, seen at `now`.
    fn instant(&self, ticks: u64, now: Instant) -> Instant {
        let age = self.ticks(now).wrapping_sub(ticks) & ((1 << HEARD_BITS) - 1);
        now.checked_sub(TICK * age as u32).unwrap_or(now)
    }

    /// When a spot's `word` says its client was last heard, seen at `now`, if it was.
    fn heard_in(&self, word: u64, now: Instant) -> Option<Instant> {
        (word & HEARD != 0)
            .then(|| self.instant((word >> HEARD_SHIFT) & ((1 << HEARD_BITS) - 1), now))
    }

    /// Marks the connection `token` parked on socket `fd` (before its socket is watched:
    /// the first event may come at once).
    fn park(&self, token: u64, fd: RawFd) {
        let spot = self.spot_or_grow(token);
        spot.word
            .store(((fd as u32 as u64) << FD_SHIFT) | PARKED, Ordering::SeqCst);
        spot.token.store(token, Ordering::SeqCst);
    }

    /// Takes the spot of the parked connection `token` back from the watcher, waiting
    /// while it is at the socket (two short syscalls at most).
    fn take(&self, token: u64, now: Instant) -> Taken {
        let none = Taken {
            heard: None,
            owed: 0,
        };
        let Some(spot) = self.spot(token) else {
            return none;
        };
        if spot
            .token
            .compare_exchange(token, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return none;
        }
        let word = loop {
            let word = spot.word.load(Ordering::SeqCst);
            if word & BUSY != 0 {
                std::hint::spin_loop();
                continue;
            }
            if spot
                .word
                .compare_exchange(word, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break word;
            }
        };
        Taken {
            heard: self.heard_in(word, now),
            owed: ((word & OWED_MASK) >> OWED_SHIFT) as usize,
        }
    }

    /// When the watcher last answered the parked connection `token`'s client, if it did.
    fn heard(&self, token: u64, now: Instant) -> Option<Instant> {
        let spot = self.spot(token)?;
        if spot.token.load(Ordering::SeqCst) != token {
            return None;
        }
        self.heard_in(spot.word.load(Ordering::SeqCst), now)
    }

    /// Bytes of PINGREQ the watcher took since the last call.
    fn take_bytes(&self) -> u64 {
        self.bytes.swap(0, Ordering::Relaxed)
    }
}

thread_local! {
    /// The bell of this shard thread's watcher, rung by the wakers of its parked
    /// connections (see [`unpark_waker`]).
    static BELL: RefCell<Option<Arc<Bell>>> = const { RefCell::new(None) };
}

/// The waker a parked connection's link holds where its writer's would be: it rings
/// this thread's bell with the connection's token. The token is all the waker carries,
/// as its data, so a parked connection holds no allocation for it. A link is an `Rc`
/// and never leaves its shard's thread, and its wakers are woken only by code holding
/// it; one woken on a thread without a bell would do nothing.
fn unpark_waker(token: u64) -> Waker {
    // The token travels as the data pointer, whole.
    const _: () = assert!(usize::BITS == u64::BITS);
    const VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);
    fn clone(data: *const ()) -> RawWaker {
        RawWaker::new(data, &VTABLE)
    }
    fn wake(data: *const ()) {
        let _ = BELL.try_with(|bell| {
            if let Some(bell) = &*bell.borrow() {
                bell.push(data as usize as u64);
            }
        });
    }
    fn drop(_: *const ()) {}
    // SAFETY: the vtable's functions never read through `data`, a plain number, and
    // hold nothing to release.
    unsafe { Waker::from_raw(RawWaker::new(token as usize as *const (), &VTABLE)) }
}

impl Parking {
    /// Parking for a shard with `idle_park_ms = park_after_ms` (0: never park). Starts
    /// the watcher thread on this thread's CPUs; without an epoll set (descriptors
    /// exhausted) connections are simply never parked, which is logged.
    pub(super) fn new(park_after_ms: u64, shard: usize, probe: Arc<ShardProbe>) -> Self {
        let watch = if park_after_ms == 0 {
            None
        } else {
            match Watch::start(shard, probe) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!(target: super::CONNECTION_LOG, shard, error = %e,
                        "cannot watch parked connections: idle connections keep their tasks");
                    None
                }
            }
        };
        Parking { watch }
    }

    /// Starts the shard's tasks that unpark connections: the bell's reader and the
    /// keep-alive sweep.
    pub(super) fn start(door: &Rc<Door>) {
        let Some(watch) = &door.parking.watch else {
            return;
        };
        let Some(rx) = watch.bell_rx.borrow_mut().take() else {
            return;
        };
        // SAFETY: the descriptor is ours alone from here (taken out of the std socket).
        let bell = unsafe { glommio::net::UnixStream::from_raw_fd(rx.into_raw_fd()) };
        let d = Rc::clone(door);
        glommio::spawn_local(answer_bell(d, bell)).detach();
        let d = Rc::clone(door);
        glommio::spawn_local(sweep_keep_alives(d)).detach();
    }

    /// Parks `conn` on `door`'s shard, whose reader found it quiet and whose writer has stopped, if it
    /// still may be: plain TCP, nothing to write, nothing awaited, not closing. Otherwise
    /// hands everything back to go on serving.
    pub(super) fn park(
        door: &Door,
        conn: &Rc<Conn>,
        socket: Socket,
        slot: ConnectionSlot,
        live: Box<Live>,
    ) -> Result<(), (Socket, ConnectionSlot, Box<Live>)> {
        let parking = &door.parking;
        let Some(watch) = &parking.watch else {
            return Err((socket, slot, live));
        };
        if !conn.link.quiet() {
            return Err((socket, slot, live));
        }
        let stream = match socket.into_plain() {
            Ok(stream) => stream,
            Err(socket) => return Err((socket, slot, live)),
        };
        let token = conn.link.token;
        let fd = match watch.add(&stream, token) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(target: super::CONNECTION_LOG, token, error = %e, "cannot park a connection");
                return Err((Socket::plain(stream), slot, live));
            }
        };
        // Frees glommio's stream, its poll source and read timer; the socket stays open
        // on `fd`, which is the link's from here (nothing awaits in between).
        drop(stream);
        conn.link.set_fd(fd.as_raw_fd());
        conn.link.wake_instead_of_writer(unpark_waker(token));
        *conn.parked.borrow_mut() = Some(Parked { fd, slot, live });
        door.probe.connections_parked.add(1);
        door.probe.connection_parks_total.inc();
        tracing::trace!(target: super::CONNECTION_LOG, token, "parked");
        Ok(())
    }
}

/// Gives the parked connection `token` its tasks back; nothing if it is not parked
/// (both its socket and its link may have asked).
fn unpark(door: &Rc<Door>, token: u64) {
    let Some(conn) = door.connections.get(token) else {
        return;
    };
    let Some(parked) = conn.parked.borrow_mut().take() else {
        return;
    };
    door.probe.connections_parked.add(-1);
    tracing::trace!(target: super::CONNECTION_LOG, token, "unparked");
    let Parked { fd, slot, mut live } = parked;
    if let Some(watch) = &door.parking.watch {
        let now = Instant::now();
        let taken = watch.board.take(token, now);
        watch.remove(fd.as_raw_fd());
        if let Some(heard) = taken.heard {
            live.heard_while_parked(heard);
        }
        if taken.owed > 0 {
            // The end of the PINGRESPs the watcher could not write goes out first.
            let owed =
                &PINGRESP.repeat(PINGS_AT_ONCE)[PINGRESP.len() * PINGS_AT_ONCE - taken.owed..];
            let mut out = conn.link.out.borrow_mut();
            let rest = out.split();
            out.extend_from_slice(owed);
            out.unsplit(rest);
        }
    }
    // SAFETY: the descriptor is an open TCP socket this record owned alone.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let start = Start::Resume(live);
    let task = serve::attend(Rc::clone(door), conn, Socket::plain(stream), slot, start);
    glommio::spawn_local(task).detach();
}

/// Unparks the connections the watcher or their links asked for, whenever the bell rings.
async fn answer_bell(door: Rc<Door>, mut bell: glommio::net::UnixStream) {
    let mut rung = [0u8; 64];
    loop {
        match bell.read(&mut rung).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(target: super::CONNECTION_LOG, shard = door.id.index(), error = %e,
                    "the parked connections' bell failed: parked connections stay parked");
                return;
            }
        }
        let Some(watch) = &door.parking.watch else {
            return;
        };
        count_pings(&door, watch);
        for token in watch.bell.take() {
            unpark(&door, token);
        }
    }
}

/// Counts in the shard's metrics the PINGREQ bytes its watcher took.
fn count_pings(door: &Door, watch: &Watch) {
    let bytes = watch.board.take_bytes();
    if bytes > 0 {
        door.probe.bytes_received_total.add(bytes);
    }
}

/// Unparks, once a second, the parked connections past their keep-alive: their first
/// read times out at once and they end as they would have unparked.
async fn sweep_keep_alives(door: Rc<Door>) {
    let mut parks_seen = door.probe.connection_parks_total.get();
    loop {
        glommio::timer::sleep(KEEP_ALIVE_SWEEP).await;
        let parks = door.probe.connection_parks_total.get();
        if parks.saturating_sub(parks_seen) >= 256 {
            // SAFETY: asks the allocator to return this thread's free pages.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
        parks_seen = parks;
        let Some(watch) = &door.parking.watch else {
            return;
        };
        count_pings(&door, watch);
        let now = Instant::now();
        let due = door.connections.tokens_where(|conn| {
            let mut parked = conn.parked.borrow_mut();
            let Some(p) = parked.as_mut() else {
                return false;
            };
            if !p.live.keep_alive_over(now) {
                return false;
            }
            // Over by the last packet the shard saw: the watcher may have heard the
            // client since (the board is read only then, not for every connection).
            if let Some(heard) = watch.board.heard(conn.link.token, now) {
                p.live.heard_while_parked(heard);
            }
            p.live.keep_alive_over(now)
        });
        for token in due {
            unpark(&door, token);
        }
    }
}

impl Watch {
    fn start(shard: usize, probe: Arc<ShardProbe>) -> io::Result<Self> {
        // SAFETY: plain descriptor-creating syscalls; results checked before use.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created and owned by nobody else.
        let epoll = Arc::new(unsafe { OwnedFd::from_raw_fd(epoll) });
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            stop.as_raw_fd(),
            libc::EPOLLIN as u32,
            STOP,
        )?;
        let (ring, rx) = std::os::unix::net::UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let bell = Arc::new(Bell {
            tokens: Mutex::new(Vec::new()),
            ring,
        });
        let board = Arc::new(Board::new(probe));
        let cpus = this_thread_cpus();
        let (e, b, w) = (Arc::clone(&epoll), Arc::clone(&bell), Arc::clone(&board));
        std::thread::Builder::new()
            .name(format!("shardmq-park-{shard}"))
            .spawn(move || {
                if let Some(cpus) = cpus {
                    // SAFETY: sets this thread's own affinity from a valid mask.
                    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&cpus), &cpus) };
                }
                watch_parked(&e, &b, &w)
            })?;
        // Started on the shard's thread, whose parked connections' wakers ring it.
        BELL.with(|b| *b.borrow_mut() = Some(Arc::clone(&bell)));
        Ok(Watch {
            epoll,
            bell,
            board,
            bell_rx: RefCell::new(Some(rx)),
            stop,
        })
    }

    /// Watches `stream`'s socket for the parked connection `token`: on a descriptor of
    /// its own that outlives the stream.
    fn add(&self, stream: &TcpStream, token: u64) -> io::Result<OwnedFd> {
        // SAFETY: duplicates a descriptor the stream keeps open during the call.
        let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.board.park(token, fd.as_raw_fd());
        if let Err(e) = ctl(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            WATCHED,
            token,
        ) {
            self.board.take(token, Instant::now());
            return Err(e);
        }
        Ok(fd)
    }

    fn remove(&self, fd: RawFd) {
        let _ = ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an eight-byte write to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

fn ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: epoll_ctl with a valid event struct; the kernel copies it.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
fn this_thread_cpus() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    (got == 0).then_some(set)
}

/// The watcher thread: waits on the epoll set, answers the PINGREQs of parked
/// connections and queues every other one whose socket has news, until told to stop.
fn watch_parked(epoll: &OwnedFd, bell: &Bell, board: &Board) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    loop {
        // SAFETY: the buffer holds EVENTS_PER_WAIT events and lives across the call.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as i32,
                -1,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %io::Error::last_os_error(), "waiting on parked connections failed");
            return;
        }
        for event in &events[..n as usize] {
            let token = event.u64;
            if token == STOP {
                return;
            }
            if answer_pings(board, token) == Answer::Unpark {
                bell.push(token);
            }
        }
    }
}

/// What the watcher makes of a parked socket's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Nothing for the shard: PINGREQs answered, or a stale event.
    Stay,
    /// The shard unparks it: bytes other than whole PINGREQs, a close, an error, or
    /// PINGRESPs it could not write whole.
    Unpark,
}

/// Answers the parked connection `token`'s PINGREQs where it lies, on the watcher
/// thread, if they are all its socket holds.
///
/// The PINGRESPs go out first and only what they answer is then taken off the socket,
/// so a refused write leaves everything as it was. A write that took part of them (the
/// socket's send buffer full, which an idle connection's hardly is) takes the PINGREQs
/// off, leaves the rest as owed in the connection's spot and unparks it.
fn answer_pings(board: &Board, token: u64) -> Answer {
    let Some(spot) = board.spot(token) else {
        return Answer::Unpark;
    };
    // Marked busy only while parked, owing nothing: a spot taken back (or never
    // parked) is the shard's, and owed bytes must go out before any answer.
    let mut word = spot.word.load(Ordering::SeqCst);
    loop {
        if word & PARKED == 0 || word & BUSY != 0 {
            return Answer::Stay;
        }
        if word & OWED_MASK != 0 {
            return Answer::Unpark;
        }
        match spot
            .word
            .compare_exchange(word, word | BUSY, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => break,
            Err(now) => word = now,
        }
    }
    let (answer, word) = if spot.token.load(Ordering::SeqCst) == token {
        answer_socket(board, word)
    } else {
        // The connection was unparked since the event; the spot may be another's.
        (Answer::Stay, word)
    };
    // The one place the busy mark goes: the shard may take the spot from here.
    spot.word.store(word & !BUSY, Ordering::SeqCst);
    answer
}

/// The watcher's part of [`answer_pings`] at the socket of a spot it marked busy, whose
/// `word` it holds: what to do with the connection, and the word to leave.
fn answer_socket(board: &Board, word: u64) -> (Answer, u64) {
    let fd = (word >> FD_SHIFT) as u32 as RawFd;
    let mut peeked = [0u8; PINGREQ.len() * PINGS_AT_ONCE + 1];
    // SAFETY: reads into a live buffer of the length given, from a socket that stays
    // open while its spot is marked busy.
    let n = unsafe {
        libc::recv(
            fd,
            peeked.as_mut_ptr().cast(),
            peeked.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let n = match usize::try_from(n) {
        Ok(n) => n,
        // Nothing there (the bytes of an earlier event were answered already).
        Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {
            return (Answer::Stay, word);
        }
        Err(_) => return (Answer::Unpark, word),
    };
    // A close, too much, or a partial PINGREQ: the reader's to handle.
    if n == 0
        || n == peeked.len()
        || n % PINGREQ.len() != 0
        || !peeked[..n].chunks(PINGREQ.len()).all(|c| c == PINGREQ)
    {
        return (Answer::Unpark, word);
    }
    let answers = [PINGRESP; PINGS_AT_ONCE];
    let answers = &answers.as_flattened()[..n];
    // SAFETY: writes from a live buffer of the length given.
    let sent = unsafe {
        libc::send(
            fd,
            answers.as_ptr().cast(),
            answers.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    let sent = match usize::try_from(sent) {
        Ok(sent) if sent > 0 => sent,
        _ => return (Answer::Unpark, word),
    };
    // Only this thread reads a parked socket: the `n` bytes peeked are there to take.
    // SAFETY: as the peek.
    let taken = unsafe { libc::recv(fd, peeked.as_mut_ptr().cast(), n, libc::MSG_DONTWAIT) };
    debug_assert_eq!(usize::try_from(taken).ok(), Some(n));
    board.bytes.fetch_add(n as u64, Ordering::Relaxed);
    // The watcher is the one writer of this count.
    board.probe.parked_pings_total.inc();
    let heard = board.ticks(Instant::now());
    let owed = (n - sent) as u64;
    let kept = word & !(OWED_MASK | ((1 << HEARD_BITS) - 1) << HEARD_SHIFT);
    let word = kept | HEARD | (heard << HEARD_SHIFT) | (owed << OWED_SHIFT);
    let answer = if owed > 0 {
        Answer::Unpark
    } else {
        Answer::Stay
    };
    (answer, word)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    fn board() -> Board {
        Board::new(Arc::new(ShardProbe::default()))
    }

    /// A token for connection slot `index`, the `serial`th to hold it.
    fn token(serial: u64, index: u64) -> u64 {
        (serial << 24) | index
    }

    #[test]
    fn the_watcher_answers_pingreqs_and_the_shard_takes_the_spot_back() {
        let board = board();
        let (mut client, parked) = UnixStream::pair().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let t = token(1, 1500);
        board.park(t, parked.as_raw_fd());
        // An event with nothing to read: nothing to do.
        assert_eq!(answer_pings(&board, t), Answer::Stay);

        client.write_all(&[0xC0, 0, 0xC0, 0]).unwrap();
        assert_eq!(answer_pings(&board, t), Answer::Stay);
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, [0xD0, 0, 0xD0, 0]);
        assert_eq!(board.probe.parked_pings_total.get(), 1);
        assert_eq!(board.take_bytes(), 4);
        let heard = board.heard(t, Instant::now()).expect("heard while parked");
        assert!(heard.elapsed() < Duration::from_secs(1));

        // A PUBLISH is the shard's: left on the socket, and the connection unparked.
        client.write_all(&[0x30, 0x03, 0, 1, b't']).unwrap();
        assert_eq!(answer_pings(&board, t), Answer::Unpark);
        let taken = board.take(t, Instant::now());
        assert!(taken.heard.is_some());
        assert_eq!(taken.owed, 0);
        let mut left = [0u8; 5];
        (&parked).read_exact(&mut left).unwrap();
        assert_eq!(left, [0x30, 0x03, 0, 1, b't']);

        // Taken back, the spot is the shard's: a late event for it does nothing, and
        // neither does one for the connection that held the slot before.
        client.write_all(&[0xC0, 0]).unwrap();
        assert_eq!(answer_pings(&board, t), Answer::Stay);
        let t2 = token(2, 1500);
        board.park(t2, parked.as_raw_fd());
        assert_eq!(answer_pings(&board, t), Answer::Stay);
        assert!(board.heard(t, Instant::now()).is_none());
        assert!(
            board.heard(t2, Instant::now()).is_none(),
            "not heard since its park"
        );
        // The PINGREQ still waits, for the connection parked there now.
        assert_eq!(answer_pings(&board, t2), Answer::Stay);
        client.read_exact(&mut got[..2]).unwrap();
        assert_eq!(got[..2], [0xD0, 0]);
        assert_eq!(board.probe.parked_pings_total.get(), 2);
    }

    #[test]
    fn half_a_pingreq_or_a_close_unparks() {
        let board = board();
        let (mut client, parked) = UnixStream::pair().unwrap();
        let t = token(7, 3);
        board.park(t, parked.as_raw_fd());
        client.write_all(&[0xC0]).unwrap();
        assert_eq!(answer_pings(&board, t), Answer::Unpark);
        drop(client);
        assert_eq!(answer_pings(&board, t), Answer::Unpark);
        assert_eq!(board.probe.parked_pings_total.get(), 0);
        let taken = board.take(t, Instant::now());
        assert!(taken.heard.is_none());
    }

    #[test]
    fn a_heard_tick_reads_back_as_the_instant_it_stands_for() {
        let board = board();
        let now = Instant::now() + Duration::from_secs(3600);
        let then = now - Duration::from_millis(2500);
        let back = board.instant(board.ticks(then), now);
        // Within a tick either way (both ends are counted in whole ticks).
        assert!(then.saturating_duration_since(back) < TICK);
        assert!(back.saturating_duration_since(then) < TICK);
    }
}
