//! The life of one connection: CONNECT, the packet loop, and cleanup; plus its writer.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use crate::metrics::Limit;
use crate::mqtt::{self, DecodeLimits, Packet, ReasonCode};
use crate::runtime::ConnectionSlot;

use super::Door;

use super::bounds::{self, Cut, PacketClock};
use super::conn::{Conn, Ending, READ_CHUNK_BYTES};
use super::connect::{self, Accepted};
use super::packets::{self, Flow};
use super::park;
use super::socket::{ReadBuf, Socket};
use super::{tls, ws, Transport};

/// A PUBLISH smaller than this is copied out of the read buffer (see
/// [`mqtt::decode_copying_small_publish`]): a queued message then keeps at most about
/// twice its size alive, never a read buffer for a few bytes. A copy this small costs
/// less than the rest of a publish's handling.
const COPY_PUBLISH_BELOW_BYTES: usize = READ_CHUNK_BYTES;

/// Serves one admitted connection; `slot` keeps it counted against the connection
/// limits until it is gone. Over TLS or WebSocket the connection first goes through
/// their handshakes.
///
/// Not an `async fn`: a future keeps its arguments for its whole life, and the stream
/// (120 B) would stay part of every connection's task after the handshakes took it.
/// The stream goes straight into the boxed opening phase instead.
pub(super) fn serve(
    door: Rc<Door>,
    stream: TcpStream,
    slot: ConnectionSlot,
    transport: Transport,
) -> impl std::future::Future<Output = ()> {
    // The connect deadline runs from here, through the TLS handshake and the WebSocket
    // upgrade to the CONNECT.
    let accepted_at = Instant::now();
    let conn = door.register(stream.as_raw_fd());
    door.probe.connections_accepted_total.inc();
    door.probe.connections_current.add(1);
    let _ = stream.set_nodelay(true);
    // A failed handshake drops the stream; nothing awaits between that and
    // unregistering, so the link's `fd` never names someone else's descriptor.
    // Boxed, like the CONNECT phase below: a connection's task is as large as the
    // largest state it can be in, and the handshakes' states (TLS, WebSocket: 7 KB)
    // would otherwise stay part of every connection for its whole life. One allocation
    // per connection, freed once it serves.
    let opened = Box::pin(open(Rc::clone(&door), stream, transport, accepted_at));
    async move {
        match opened.await {
            Some((socket, identity)) => {
                let start = Start::Connect {
                    accepted_at,
                    identity,
                };
                attend(door, conn, socket, slot, start).await;
            }
            None => {
                door.unregister(conn.link.token);
                drop(slot);
                closed(&door);
            }
        }
    }
}

/// Where a connection's tasks start from.
pub(super) enum Start {
    /// A new connection: its CONNECT is read first.
    Connect {
        accepted_at: Instant,
        /// The user a TLS client certificate names.
        identity: Option<String>,
    },
    /// A connection back from a park.
    Resume(Box<Live>),
}

/// What a connection's packet loop carries from one read to the next, and through a
/// park: everything of it that is not in its [`Conn`] or its session.
pub(super) struct Live {
    clock: PacketClock,
    state: packets::ConnState,
    rate: Option<Box<bounds::PublishRate>>,
}

impl Live {
    fn new(door: &Door, accepted: Accepted) -> Self {
        let keep_alive = accepted.keep_alive_secs;
        // 1.5 × the keep-alive, as MQTT allows.
        let keep_alive_limit_ms = u32::from(keep_alive) * 1500;
        Live {
            clock: PacketClock::new(
                door.config.packet_read_timeout_ms,
                keep_alive_limit_ms,
                door.config.idle_park_ms,
            ),
            state: packets::ConnState::new(&accepted),
            rate: bounds::PublishRate::new(
                door.config.client_publish_rate_max,
                door.config.client_publish_bytes_rate_max,
            ),
        }
    }

    /// Whether this parked connection has outlived its keep-alive.
    pub(super) fn keep_alive_over(&self, now: Instant) -> bool {
        self.clock.keep_alive_over(now)
    }

    /// The watcher answered a PINGREQ while the connection stayed parked.
    pub(super) fn heard_while_parked(&mut self, now: Instant) {
        self.clock.heard_while_parked(now);
    }
}

// Every parked connection keeps one, boxed: within the allocator's 64-byte size class.
const _: () = assert!(std::mem::size_of::<Live>() <= 64);

/// How a connection's packet loop stopped.
enum Served {
    /// The connection is over (its session detached).
    Ended,
    /// It has been quiet for `idle_park_ms`: park it.
    Quiet,
}

/// Runs a connection's reader (in this task) and writer (in its own) until the
/// connection ends or is parked. A connection whose park is refused at the last moment
/// (output arrived while its writer stopped) goes on serving.
///
/// What the task holds while it serves is little more than the read wait: the CONNECT
/// phase runs boxed (its states are large and over once the CONNACK is out), [`Live`]
/// is boxed (moved, not copied, between the phases and into a park), and packet
/// handling is boxed per read (see `packet_loop`).
pub(super) async fn attend(
    door: Rc<Door>,
    conn: Rc<Conn>,
    mut socket: Socket,
    mut slot: ConnectionSlot,
    mut start: Start,
) {
    loop {
        // The writer task shares the socket: reading and writing never wait for each
        // other (see `socket`), and the connection costs one descriptor.
        let writer = glommio::spawn_local(write_loop(
            Rc::clone(&door),
            Rc::clone(&conn),
            socket.clone(),
        ));
        let opened = match start {
            Start::Connect {
                accepted_at,
                identity,
            } => Box::pin(connect_phase(&door, &conn, &socket, accepted_at, identity))
                .await
                .map(|(rbuf, accepted)| {
                    // Kept through parks (see `runtime::lasting`).
                    let live = crate::runtime::lasting(|| Box::new(Live::new(&door, accepted)));
                    (rbuf, live)
                }),
            Start::Resume(live) => Some((ReadBuf::new(), live)),
        };
        let stop = match opened {
            Some((rbuf, mut live)) => {
                match serve_live(&door, &conn, &socket, rbuf, &mut live).await {
                    Served::Ended => None,
                    Served::Quiet => Some(live),
                }
            }
            None => None,
        };
        let Some(live) = stop else {
            conn.reading.set(false);
            conn.link.close(ReasonCode::Success);
            writer.await;
            break;
        };
        conn.link.park_writer(true);
        let written = writer.await;
        conn.link.park_writer(false);
        start = if written {
            match park::Parking::park(&door, &conn, socket, slot, live) {
                Ok(()) => return,
                Err((s, l, live)) => {
                    (socket, slot) = (s, l);
                    Start::Resume(live)
                }
            }
        } else {
            Start::Resume(live)
        };
    }
    // The link's `fd` must stay this socket's descriptor while the connection is registered
    // (shutdown paths use it). This is the last handle on the socket (the writer's went
    // with its task), so the descriptor closes only after unregistering.
    door.unregister(conn.link.token);
    drop(socket);
    drop(slot);
    closed(&door);
}

/// Counts a connection gone.
fn closed(door: &Door) {
    door.probe.connections_current.add(-1);
    door.probe.connections_closed_total.inc();
}

/// The MQTT byte stream of a connection on a `transport` listener, after the handshakes
/// it needs, and the user a TLS client certificate names.
async fn open(
    door: Rc<Door>,
    stream: TcpStream,
    transport: Transport,
    accepted_at: Instant,
) -> Option<(Socket, Option<String>)> {
    match transport {
        Transport::Tcp => Some((Socket::plain(stream), None)),
        Transport::Tls(acceptor) => {
            let (stream, identity) = tls::handshake(&door, &acceptor, stream, accepted_at).await?;
            Some((Socket::tls(stream), identity))
        }
        Transport::Ws => {
            let peer = stream.peer_addr().ok();
            let conn = ws::upgrade(&door, stream, peer, accepted_at).await?;
            Some((Socket::ws(conn), None))
        }
        Transport::Wss(acceptor) => {
            let peer = stream.peer_addr().ok();
            let (stream, identity) = tls::handshake(&door, &acceptor, stream, accepted_at).await?;
            let conn = ws::upgrade(&door, stream, peer, accepted_at).await?;
            Some((Socket::wss(conn), identity))
        }
    }
}

/// The CONNECT, its credentials and the session claim: what the packet loop starts
/// from (bytes read after the CONNECT, and the CONNECT's terms), or `None`.
async fn connect_phase(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    socket: &Socket,
    accepted_at: Instant,
    identity: Option<String>,
) -> Option<(ReadBuf, Accepted)> {
    let limits = DecodeLimits {
        packet_bytes_max: door.config.max_packet_bytes,
    };
    let mut rbuf = ReadBuf::new();
    // A deadline for the whole CONNECT and its credential check from accept, not per
    // read: a client that trickles one byte at a time is dropped at the same moment as
    // one that sends nothing, and a password check waiting its turn is given up.
    // Kept by the shard's deadline watcher, not a timer of glommio's per connection
    // (see `runtime::within`).
    let deadline = accepted_at + Duration::from_millis(door.config.connect_timeout_ms);
    let (connect, principal) = match Box::pin(crate::runtime::within(deadline, async {
        let connect = connect::read_connect(door, conn, socket, &mut rbuf, &limits).await;
        match connect {
            Some(c) => connect::check_credentials(door, conn, &c, identity)
                .await
                .map(|principal| (c, principal)),
            None => None,
        }
    }))
    .await
    {
        Ok(Some(connect)) => connect,
        Ok(None) => return None,
        Err(_) => {
            door.probe.connect_timeouts_total.inc();
            door.probe.hit(Limit::ConnectTimeoutMs);
            return None;
        }
    };
    let accepted = Box::pin(connect::handshake(door, conn, connect, principal)).await?;
    Some((rbuf, accepted))
}

/// The packet loop of an accepted connection until it ends (its session detached) or
/// is quiet long enough to park.
async fn serve_live(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    socket: &Socket,
    mut rbuf: ReadBuf,
    live: &mut Live,
) -> Served {
    let ending = match packet_loop(door, conn, socket, &mut rbuf, live).await {
        Ok(ending) => ending,
        Err(Park) => return Served::Quiet,
    };
    let who = conn.who.borrow();
    tracing::debug!(target: super::CONNECTION_LOG, shard = door.id.index(),
        client_id = who.as_ref().map_or("", |(_, client_id)| client_id.as_str()),
        ending = ?ending,
        "client disconnected"
    );
    drop(who);
    let Some(key) = conn.link.session() else {
        return Served::Ended;
    };
    conn.link.set_session(None);
    match ending {
        Ending::Normal { expiry_secs } => door.broker.detach_session(key, false, expiry_secs),
        Ending::WithWill { expiry_secs } => door.broker.detach_session(key, true, expiry_secs),
        Ending::Abnormal => door.broker.detach_session(key, true, None),
        Ending::ByServer => door.broker.detach_session(key, false, None),
    }
    Served::Ended
}

/// The packet loop found the connection quiet for `idle_park_ms`.
struct Park;

async fn packet_loop(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    socket: &Socket,
    rbuf: &mut ReadBuf,
    live: &mut Live,
) -> Result<Ending, Park> {
    let protocol = conn.link.protocol.get();
    let limits = DecodeLimits {
        packet_bytes_max: door.config.max_packet_bytes,
    };
    let Live {
        clock, state, rate, ..
    } = live;
    loop {
        // Decode and handle everything already buffered before reading again. Boxed, once
        // per read: handling a packet may wait (a publish for mesh room or its owner, a
        // subscription for the WAL), and those states are most of what a connection's
        // task would otherwise hold for its whole life, idle or not. A busy connection
        // handles all the packets of one read in one box.
        let mut decoded = false;
        if !rbuf.buf.is_empty() {
            let handled = Box::pin(handle_buffered(
                door, conn, rbuf, &limits, protocol, state, rate,
            ));
            match handled.await {
                Ok(any) => decoded = any,
                Err(ending) => return Ok(ending),
            }
        }
        if conn.link.closing().is_some() {
            return Ok(Ending::ByServer);
        }
        // Let the other tasks of this shard (writers above all) run before reading more:
        // a publisher whose socket never runs dry would otherwise keep the executor until
        // the preemption timer, and subscribers' output would pile up undelivered.
        futures_lite::future::yield_now().await;
        // Backpressure: stop reading while too many publishes await their owner shard.
        let receive_maximum = usize::from(door.config.receive_maximum);
        if conn.link.acks_pending() >= receive_maximum {
            door.probe.hit(Limit::ReceiveMaximum);
            conn.link.acks_below(receive_maximum).await;
        }
        bounds::output_room(door, conn).await;
        if conn.link.closing().is_some() {
            return Ok(Ending::ByServer);
        }
        let partial = !rbuf.buf.is_empty();
        let parkable = !partial && socket.parkable();
        let started = clock.before_read(socket, decoded, partial, parkable);
        let result = rbuf.read_from(socket, &door.read_scratch).await;
        clock.after_read(started, matches!(result, Ok(n) if n > 0));
        match result {
            Ok(0) => return Ok(Ending::Abnormal),
            Ok(n) => door.probe.bytes_received_total.add(n as u64),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    match clock.cut() {
                        // A publish still awaiting its owner's verdict: not quiet
                        // yet, look again after another `idle_park_ms`.
                        Cut::Park if conn.link.acks_pending() > 0 => continue,
                        Cut::Park => {
                            clock.parked();
                            return Err(Park);
                        }
                        Cut::Packet => door.probe.hit(Limit::PacketReadTimeoutMs),
                        Cut::KeepAlive => door.probe.keep_alive_timeouts_total.inc(),
                    }
                    conn.link.close(ReasonCode::KeepAliveTimeout);
                }
                return Ok(Ending::Abnormal);
            }
        }
    }
}

/// Decodes and handles every complete packet in `rbuf`: whether any was decoded, or how
/// the connection ends.
async fn handle_buffered(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    rbuf: &mut ReadBuf,
    limits: &DecodeLimits,
    protocol: mqtt::Protocol,
    state: &mut packets::ConnState,
    rate: &mut Option<Box<bounds::PublishRate>>,
) -> Result<bool, Ending> {
    let mut decoded = false;
    loop {
        if conn.link.closing().is_some() {
            return Err(Ending::ByServer);
        }
        let buffered = rbuf.buf.len();
        match mqtt::decode_copying_small_publish(
            &mut rbuf.buf,
            Some(protocol),
            limits,
            COPY_PUBLISH_BELOW_BYTES,
        ) {
            Ok(Some(packet)) => {
                decoded = true;
                let indebted = match (rate.as_mut(), &packet) {
                    (Some(rate), Packet::Publish(_)) => rate.spend(buffered - rbuf.buf.len()),
                    _ => false,
                };
                if bounds::refused(door, conn, &packet) {
                    continue;
                }
                if let Flow::End(ending) = packets::handle(door, conn, state, packet).await {
                    return Err(ending);
                }
                if indebted {
                    bounds::publish_room(door, rate).await;
                }
            }
            Ok(None) => return Ok(decoded),
            Err(e) => {
                tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token, error = %e, "malformed packet");
                door.probe.protocol_errors_total.inc();
                conn.link.close(e.reason_code());
                return Err(Ending::Abnormal);
            }
        }
    }
}

/// How long a TLS connection's close_notify may wait for room in the socket.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_millis(100);
/// How long a WebSocket connection waits for the client's close frame after sending its
/// own, before the socket is shut regardless.
const WS_CLOSE_REPLY_WAIT: Duration = Duration::from_millis(500);
/// How often the writer looks whether a reader still parked on a WebSocket has seen the
/// client's close frame.
const WS_CLOSE_TICK: Duration = Duration::from_millis(5);

/// Waits (at most [`WS_CLOSE_REPLY_WAIT`]) for the client's WebSocket close frame, so
/// the socket is not shut under a client still sending it: a client whose close frame
/// meets a closed socket sees a reset (`EPIPE`) instead of a clean close. A reader that
/// stopped (it read a DISCONNECT) left the frame unread: the writer reads it. A reader
/// still parked (the broker ended the connection) reads it itself and stops.
async fn await_close_reply(conn: &Conn, socket: &Socket) {
    if !conn.reading.get() {
        socket.read_until_closed(WS_CLOSE_REPLY_WAIT).await;
        return;
    }
    let deadline = Instant::now() + WS_CLOSE_REPLY_WAIT;
    while conn.reading.get() && Instant::now() < deadline {
        glommio::timer::sleep(WS_CLOSE_TICK).await;
    }
}

/// Writes the connection's output until it closes, or (returning `true`) until it is
/// asked to stop for a park with everything written.
async fn write_loop(door: Rc<Door>, conn: Rc<Conn>, socket: Socket) -> bool {
    let mut failed = false;
    while let Some(chunk) = conn.link.next_output().await {
        // The output moved here: a reader paused on it may fill it again meanwhile.
        conn.link.output_drained(false);
        if socket.write_all(chunk).await.is_err() {
            failed = true;
            break;
        }
        // The buffer drained: move more of the session's queue onto the wire.
        if let Some(key) = conn.link.session() {
            door.broker.on_drained(key);
        }
    }
    if !failed && conn.link.parking() && conn.link.closing().is_none() {
        return true;
    }
    conn.link.output_drained(true);
    if !failed {
        socket.close_notify(CLOSE_NOTIFY_WAIT).await;
        if socket.is_websocket() {
            await_close_reply(&conn, &socket).await;
        }
    }
    // Everything is written (glommio's stream has no buffer of its own to flush): end
    // the reader too (it may be parked in a read). `socket` holds the descriptor open,
    // so it cannot name another connection's socket.
    socket.shutdown();
    false
}
