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
//! socket that holds nothing but PINGREQs, of a connection with nothing to write, is
//! answered where it lies (see [`answer_pings`]): two small syscalls instead of two
//! tasks, a stream and a park again `idle_park_ms` later.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

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
/// What the watcher waits for on a parked socket: bytes or a close, once.
const WATCHED: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
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
    pub(super) fn new(park_after_ms: u64, shard: usize) -> Self {
        let watch = if park_after_ms == 0 {
            None
        } else {
            match Watch::start(shard) {
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
        watch.remove(fd.as_raw_fd());
    }
    // SAFETY: the descriptor is an open TCP socket this record owned alone.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    live.new_stream();
    let start = Start::Resume(live);
    let task = serve::attend(Rc::clone(door), conn, Socket::plain(stream), slot, start);
    glommio::spawn_local(task).detach();
}

/// Answers the parked connection `token` where it lies if all its socket holds is
/// PINGREQs and its link has nothing for it (its waker still waits: nothing woke it).
/// Returns whether it stays parked; otherwise the caller unparks it, and the reader finds
/// on the socket whatever was not answered here.
///
/// The PINGRESPs go out first and only what they answer is then taken off the socket,
/// so a refused write leaves everything as it was. A write that took part of them (the
/// socket's send buffer full, which an idle connection's hardly is) takes the PINGREQs
/// off, leaves the rest of the answer in the link's output and unparks.
fn answer_pings(door: &Door, watch: &Watch, token: u64) -> bool {
    let Some(conn) = door.connections.get(token) else {
        return false;
    };
    let mut parked = conn.parked.borrow_mut();
    let Some(p) = parked.as_mut() else {
        return false;
    };
    if !conn.link.quiet() || !conn.link.writer_waits() {
        return false;
    }
    let fd = p.fd.as_raw_fd();
    let mut peeked = [0u8; PINGREQ.len() * PINGS_AT_ONCE + 1];
    // SAFETY: reads into a live buffer of the length given, from a socket this record owns.
    let n = unsafe {
        libc::recv(
            fd,
            peeked.as_mut_ptr().cast(),
            peeked.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // Nothing (the watcher's event was a close or an error), too much, or a partial
    // PINGREQ: the reader's to handle.
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    if n == 0 || n == peeked.len() || n % PINGREQ.len() != 0 {
        return false;
    }
    if !peeked[..n].chunks(PINGREQ.len()).all(|c| c == PINGREQ) {
        return false;
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
    let Ok(sent) = usize::try_from(sent) else {
        return false;
    };
    if sent == 0 {
        return false;
    }
    // Only this shard reads a parked socket: the `n` bytes peeked are there to take.
    // SAFETY: as the peek.
    let taken = unsafe { libc::recv(fd, peeked.as_mut_ptr().cast(), n, libc::MSG_DONTWAIT) };
    debug_assert_eq!(usize::try_from(taken).ok(), Some(n));
    door.probe.bytes_received_total.add(n as u64);
    p.live.heard_while_parked(Instant::now());
    if sent < n {
        conn.link
            .out
            .borrow_mut()
            .extend_from_slice(&answers[sent..]);
        return false;
    }
    // The watcher's event disarmed the socket (one-shot): arm it again. Bytes that
    // arrived since are seen at once.
    if let Err(e) = watch.rearm(fd, token) {
        tracing::debug!(target: super::CONNECTION_LOG, token, error = %e, "cannot watch a parked connection again");
        return false;
    }
    door.probe.parked_pings_total.inc();
    tracing::trace!(target: super::CONNECTION_LOG, token, pings = n / PINGREQ.len(), "answered while parked");
    true
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
        for token in watch.bell.take() {
            if !answer_pings(&door, watch, token) {
                unpark(&door, token);
            }
        }
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
        let now = Instant::now();
        let due = door.connections.tokens_where(|conn| {
            conn.parked
                .borrow()
                .as_ref()
                .is_some_and(|p| p.live.keep_alive_over(now))
        });
        for token in due {
            unpark(&door, token);
        }
    }
}

impl Watch {
    fn start(shard: usize) -> io::Result<Self> {
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
        let cpus = this_thread_cpus();
        let (e, b) = (Arc::clone(&epoll), Arc::clone(&bell));
        std::thread::Builder::new()
            .name(format!("shardmq-park-{shard}"))
            .spawn(move || {
                if let Some(cpus) = cpus {
                    // SAFETY: sets this thread's own affinity from a valid mask.
                    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&cpus), &cpus) };
                }
                watch_parked(&e, &b)
            })?;
        // Started on the shard's thread, whose parked connections' wakers ring it.
        BELL.with(|b| *b.borrow_mut() = Some(Arc::clone(&bell)));
        Ok(Watch {
            epoll,
            bell,
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
        ctl(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            WATCHED,
            token,
        )?;
        Ok(fd)
    }

    /// Watches the parked socket `fd` again after its one event.
    fn rearm(&self, fd: RawFd, token: u64) -> io::Result<()> {
        ctl(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_MOD,
            fd,
            WATCHED,
            token,
        )
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

/// The watcher thread: waits on the epoll set and queues every parked connection whose
/// socket has news, until told to stop.
fn watch_parked(epoll: &OwnedFd, bell: &Bell) {
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
            bell.push(token);
        }
    }
}
