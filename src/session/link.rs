//! The link between a session and the connection it is attached to: what the broker
//! sees of a connection, without its socket.
//!
//! A door's connection task owns the socket; the broker reaches the client only through
//! this handle. Everything the broker wants to send — acks, deliveries, DISCONNECT — is
//! encoded into `out` and the writer is woken; the door's writer task takes what is
//! pending (`next_output`) and writes it in one syscall per wake-up. The link also keeps
//! the protocol state of the connection that the broker and the door share: the acks
//! owed to the publisher in receive order, the topic aliases towards the client, and
//! what the client may receive (its `ClientAcl`).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::os::fd::{FromRawFd, RawFd};
use std::task::{Poll, Waker};

use std::time::Instant;

use bytes::BytesMut;

use crate::auth::acl::ClientAcl;
use crate::mqtt::{self, Ack, Disconnect, Packet, PacketId, Protocol, QoS, ReasonCode};

use super::{Outlet, TopicAliases};

/// Output of at least this size is written as a batch, leaving its buffer's spare
/// capacity to the next (see [`Link::next_output`]).
const OUT_KEEP_FROM_BYTES: usize = 4 << 10;

/// A publish awaiting its ack: packet id, QoS, the owner's verdict once known, and when
/// it was read.
type PendingAck = (u16, QoS, Option<ReasonCode>, Instant);

/// One client connection, as the broker sees it.
pub struct Link {
    /// Unique on this shard for the process lifetime.
    pub token: u64,
    /// The connection's socket descriptor while its door has it registered, -1 after:
    /// the broker never reads or writes it, but asks it for the client's address
    /// ([`peer`](Self::peer)), which is not worth keeping in every connection for the
    /// rare log line and admin listing that want it.
    fd: Cell<RawFd>,
    /// Protocol from CONNECT (3.1.1 until then).
    pub protocol: Cell<Protocol>,
    /// The client's Maximum Packet Size (v5), else the protocol limit.
    packet_bytes_max: Cell<u32>,
    /// The session this connection is attached to, once CONNACK went out (a session key
    /// is never 0: its serial starts at 1).
    session: Cell<Option<NonZeroU64>>,
    /// Encoded packets waiting for the writer.
    pub out: RefCell<BytesMut>,
    /// What this client may publish, subscribe to and receive (`None`: everything, no
    /// rules configured). Set at CONNECT, before the session is attached.
    pub acl: RefCell<Option<Box<ClientAcl>>>,
    /// The CONNECT's username, for the admin API's listing.
    pub username: OnceCell<Box<str>>,
    /// The keep alive the connection runs under (seconds), for the same.
    pub keep_alive_secs: Cell<u16>,
    writer: Cell<Option<Waker>>,
    reader: Cell<Option<Waker>>,
    /// Set when the shard wants the connection gone (takeover, shutdown, protocol error).
    closing: Cell<Option<ReasonCode>>,
    /// Set when the writer task ended: output will never drain again.
    writer_ended: Cell<bool>,
    /// Set while the connection's reader asks the writer to stop for a park (see
    /// [`park_writer`](Self::park_writer)).
    parking: Cell<bool>,
    /// What only some connections use: topic aliases and the acks of QoS 1/2
    /// publishes. Built by the first of them: every other connection holds 8 bytes here
    /// instead of 32, which keeps a link in the allocator's 160-byte class.
    rare: OnceCell<Box<Rare>>,
}

/// The part of a [`Link`] that only some connections use (see `Link::rare`).
#[derive(Default)]
struct Rare {
    /// Topic aliases towards the client, if it allows them (v5 Topic Alias Maximum).
    aliases: RefCell<Option<Box<TopicAliases>>>,
    /// QoS 1/2 publishes from this client in receive order, each with the owner shard's
    /// verdict once known: acks go out in receive order, as MQTT requires. With each,
    /// when it was read (for `shardmq_publish_ack_seconds`).
    acks: RefCell<VecDeque<PendingAck>>,
}

// Every connection keeps one, parked or not: with the `Rc`'s two counts it fits the
// allocator's 160-byte size class.
const _: () = assert!(std::mem::size_of::<Link>() + 2 * std::mem::size_of::<usize>() <= 160);

impl Link {
    /// A handle for a freshly accepted connection on socket `fd`.
    pub fn new(token: u64, fd: RawFd) -> Self {
        Link {
            token,
            fd: Cell::new(fd),
            protocol: Cell::new(Protocol::V311),
            packet_bytes_max: Cell::new(packet_bytes(mqtt::PACKET_BYTES_LIMIT)),
            session: Cell::new(None),
            // Grows with output and goes with a small chunk (see `next_output`): an idle
            // connection holds none.
            out: RefCell::new(BytesMut::new()),
            acl: RefCell::new(None),
            username: OnceCell::new(),
            keep_alive_secs: Cell::new(0),
            writer: Cell::new(None),
            reader: Cell::new(None),
            closing: Cell::new(None),
            writer_ended: Cell::new(false),
            parking: Cell::new(false),
            rare: OnceCell::new(),
        }
    }

    /// The connection's socket descriptor (-1 once its door let it go).
    #[inline]
    pub fn fd(&self) -> RawFd {
        self.fd.get()
    }

    /// Records that the connection's socket is now on descriptor `fd` (-1: gone).
    pub fn set_fd(&self, fd: RawFd) {
        self.fd.set(fd);
    }

    /// The client's address, asked of the socket (`None` once it is gone, or if it
    /// has none).
    pub fn peer(&self) -> Option<SocketAddr> {
        let fd = self.fd.get();
        if fd < 0 {
            return None;
        }
        // SAFETY: the door keeps `fd` open while it is set here, and the stream is
        // never dropped, so it is only borrowed for the one getpeername(2).
        let socket = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        socket.peer_addr().ok()
    }

    /// The session this connection is attached to, once CONNACK went out.
    #[inline]
    pub fn session(&self) -> Option<u64> {
        self.session.get().map(NonZeroU64::get)
    }

    /// Attaches the connection to session `key` (`None`: detaches it).
    pub fn set_session(&self, key: Option<u64>) {
        self.session
            .set(key.map(|k| NonZeroU64::new(k).expect("a session key is never 0")));
    }

    /// The client's Maximum Packet Size (v5), else the protocol limit.
    #[inline]
    pub fn packet_bytes_max(&self) -> usize {
        self.packet_bytes_max.get() as usize
    }

    /// Sets the client's Maximum Packet Size.
    pub fn set_packet_bytes_max(&self, bytes: usize) {
        self.packet_bytes_max.set(packet_bytes(bytes));
    }

    /// Encodes `packet` into the output buffer and wakes the writer.
    pub fn send(&self, packet: &Packet) {
        {
            let mut out = self.out.borrow_mut();
            let mark = out.len();
            if mqtt::encode(packet, self.protocol.get(), &mut out).is_err() {
                out.truncate(mark);
                tracing::warn!(token = self.token, "dropped an unencodable packet");
            }
        }
        self.wake_writer();
    }

    /// Runs `f` with this connection's output as an [`Outlet`] that stops filling at
    /// `buf_bytes_max` pending bytes (`usize::MAX`: acks and resends, which must go out).
    pub fn with_outlet<R>(&self, buf_bytes_max: usize, f: impl FnOnce(&mut Outlet<'_>) -> R) -> R {
        let mut buf = self.out.borrow_mut();
        let mut aliases = self.rare.get().map(|rare| rare.aliases.borrow_mut());
        let mut outlet = Outlet {
            buf: &mut buf,
            protocol: self.protocol.get(),
            packet_bytes_max: self.packet_bytes_max(),
            buf_bytes_max,
            aliases: aliases.as_deref_mut().and_then(|a| a.as_deref_mut()),
        };
        f(&mut outlet)
    }

    /// Uses `aliases` towards the client (set at CONNECT, if it allows them).
    pub fn set_aliases(&self, aliases: TopicAliases) {
        *self.rare().aliases.borrow_mut() = Some(Box::new(aliases));
    }

    fn rare(&self) -> &Rare {
        self.rare.get_or_init(Box::default)
    }

    /// Wakes the writer task (after something was appended to `out`).
    pub fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Bytes waiting for the writer.
    pub fn pending_bytes(&self) -> usize {
        self.out.borrow().len()
    }

    /// Asks the connection to close: a v5 client first gets DISCONNECT with `reason`.
    pub fn close(&self, reason: ReasonCode) {
        if self.closing.get().is_none() {
            self.closing.set(Some(reason));
            if self.protocol.get() == Protocol::V5 && self.session.get().is_some() {
                self.send(&Packet::Disconnect(Disconnect::new(reason)));
            }
            self.wake_writer();
            self.wake_reader();
        }
    }

    /// Why the shard closed this connection, if it did.
    pub fn closing(&self) -> Option<ReasonCode> {
        self.closing.get()
    }

    fn wake_reader(&self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Records a QoS 1/2 publish in receive order, awaiting its owner's verdict.
    pub fn expect_ack(&self, packet_id: u16, qos: QoS) {
        let read_at = Instant::now();
        self.rare()
            .acks
            .borrow_mut()
            .push_back((packet_id, qos, None, read_at));
    }

    /// Whether a QoS 2 publish with `packet_id` still awaits its owner's verdict.
    pub fn awaits_verdict(&self, packet_id: u16) -> bool {
        self.rare.get().is_some_and(|rare| {
            rare.acks
                .borrow()
                .iter()
                .any(|&(pid, qos, r, _)| pid == packet_id && qos == QoS::ExactlyOnce && r.is_none())
        })
    }

    /// Publishes received but not yet accepted by their owner shard.
    pub fn acks_pending(&self) -> usize {
        self.rare.get().map_or(0, |rare| rare.acks.borrow().len())
    }

    /// The owner shard decided on `packet_id`: send every ack that is now due, in order,
    /// telling `latency` how long each publish waited for it (microseconds).
    pub fn complete_ack(&self, packet_id: u16, reason: ReasonCode, latency: impl Fn(u64)) {
        let Some(rare) = self.rare.get() else {
            return;
        };
        let mut acks = rare.acks.borrow_mut();
        if let Some(entry) = acks
            .iter_mut()
            .find(|(pid, _, r, _)| *pid == packet_id && r.is_none())
        {
            entry.2 = Some(reason);
        }
        let mut sent = false;
        let mut now = None;
        while let Some(&(pid, qos, Some(reason), read_at)) = acks.front() {
            acks.pop_front();
            let now = *now.get_or_insert_with(Instant::now);
            latency(now.saturating_duration_since(read_at).as_micros() as u64);
            if reason.is_error() && self.protocol.get() != Protocol::V5 {
                // 3.1.1 cannot refuse a publish: an ack would claim a durability that
                // does not exist, so the connection closes instead (the client resends).
                drop(acks);
                self.close(reason);
                return;
            }
            let Some(pid) = PacketId::new(pid) else {
                continue;
            };
            let ack = Ack::with_reason(pid, reason);
            let packet = if qos == QoS::ExactlyOnce {
                Packet::PubRec(ack)
            } else {
                Packet::PubAck(ack)
            };
            let mut out = self.out.borrow_mut();
            let _ = mqtt::encode(&packet, self.protocol.get(), &mut out);
            sent = true;
        }
        drop(acks);
        if sent {
            self.wake_writer();
            self.wake_reader();
        }
    }

    /// Waits until fewer than `max` publishes await their owner (reader backpressure).
    pub async fn acks_below(&self, max: usize) {
        poll_fn(|cx| {
            if self.acks_pending() < max || self.closing.get().is_some() {
                Poll::Ready(())
            } else {
                self.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Waits until fewer than `bytes_max` bytes of output are pending, or the connection
    /// is closing, or its writer ended (reader backpressure: a client that sends but
    /// never reads must not make its replies pile up here).
    pub async fn output_below(&self, bytes_max: usize) {
        poll_fn(|cx| {
            if self.out.borrow().len() < bytes_max
                || self.closing.get().is_some()
                || self.writer_ended.get()
            {
                Poll::Ready(())
            } else {
                self.reader.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// The writer moved output to the socket, or `ended`: a reader paused in
    /// [`output_below`](Self::output_below) looks again.
    pub fn output_drained(&self, ended: bool) {
        if ended {
            self.writer_ended.set(true);
        }
        self.wake_reader();
    }

    /// Asks the writer to stop once its output is written (`true`), for the connection to
    /// be parked without tasks, or takes the request back (`false`).
    pub fn park_writer(&self, park: bool) {
        self.parking.set(park);
        if park {
            self.wake_writer();
        }
    }

    /// Whether the writer was asked to stop for a park.
    pub fn parking(&self) -> bool {
        self.parking.get()
    }

    /// Whether nothing waits on this connection: no output, no publish awaiting its
    /// owner, no close asked for. Only such a connection may be parked.
    pub fn quiet(&self) -> bool {
        self.out.borrow().is_empty() && self.acks_pending() == 0 && self.closing.get().is_none()
    }

    /// Puts `waker` where the writer's would be: whatever would wake the writer (output,
    /// a close) wakes it instead. How a parked connection, which has no writer, learns it
    /// has something to do.
    pub fn wake_instead_of_writer(&self, waker: Waker) {
        self.writer.set(Some(waker));
    }

    /// Whether a waker waits in the writer's place: nothing has woken it since it was put
    /// there.
    pub fn writer_waits(&self) -> bool {
        let waker = self.writer.take();
        let waits = waker.is_some();
        self.writer.set(waker);
        waits
    }

    /// Takes the pending output, waiting until there is some or the connection closes.
    /// Returns `None` when closing and nothing is left to write, and when the writer was
    /// asked to stop for a park and nothing is left to write.
    pub async fn next_output(&self) -> Option<BytesMut> {
        poll_fn(|cx| {
            let mut out = self.out.borrow_mut();
            if !out.is_empty() {
                // A small chunk takes the buffer with it, freed once written: a connection
                // that sends now and then (an idle client's PINGRESP, one delivery at a
                // time) holds no output buffer between writes. A batch leaves the spare
                // capacity behind for the next one, so a busy connection keeps reusing
                // one buffer instead of growing a new one per write.
                let chunk = if out.len() < OUT_KEEP_FROM_BYTES {
                    std::mem::take(&mut *out)
                } else {
                    out.split()
                };
                return Poll::Ready(Some(chunk));
            }
            if self.closing.get().is_some() || self.parking.get() {
                return Poll::Ready(None);
            }
            self.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

/// A packet size limit as kept: MQTT's largest packet fits in 32 bits.
fn packet_bytes(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}
