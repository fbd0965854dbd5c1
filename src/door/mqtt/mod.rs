//! The MQTT door: the per-shard accept loop, the connection tasks, and the table of live
//! connections. It turns packets into broker calls and the broker's deliveries (written
//! into each connection's [`Link`](crate::session::Link)) into bytes on the socket, nothing more.
//!
//! May use: `broker`, `runtime` and the ground floor. One [`Door`] per shard.
//!
//! Each shard accepts on its own SO_REUSEPORT listener (glommio sets the option on every
//! bind), so the kernel spreads new connections across shards and a connection lives its
//! whole life on the shard that accepted it. On shutdown the shard stops accepting but
//! keeps the listener open until its connections have drained: dropping a listener
//! resets the connections still waiting in its backlog.

mod acl;
mod bounds;
mod conn;
mod connect;
mod link_room;
mod logcap;
mod packets;
mod park;
mod refuse;
mod serve;
mod socket;
mod tls;
mod ws;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use crate::auth::{Authenticator, HashQueue};
use crate::broker::Broker;
use crate::config::Config;
use crate::metrics::{Limit, ShardProbe};
use crate::mqtt::ReasonCode;
use crate::router::ShardId;
use crate::runtime::{ConnectionQuota, Refused, TokenMint, TokenTable};

pub use conn::Conn;

/// The log target of connection events (`SHARDMQ_LOG_LEVEL=info,shardmq::net=debug`
/// shows every connect and disconnect).
pub const CONNECTION_LOG: &str = "shardmq::net";

/// The MQTT door of one shard: its connections, over its broker.
pub struct Door {
    /// The shard's broker.
    pub broker: Rc<Broker>,
    /// This shard's id.
    pub id: ShardId,
    /// The process configuration.
    pub config: Arc<Config>,
    /// This shard's counters.
    pub probe: Arc<ShardProbe>,
    /// Live client connections on this shard.
    pub connections: Connections,
    /// The connection counts every door of this shard admits against.
    quota: Rc<ConnectionQuota>,
    /// The password-hashing thread's queue (one per process).
    hashing: Arc<HashQueue>,
    /// The TLS acceptor for new connections on `mqtts_listen` / `wss_listen` (and the
    /// metrics listener with `metrics_tls`), as of the last reload.
    tls: RefCell<Option<futures_rustls::TlsAcceptor>>,
    /// Where the reads of connections without a buffer of their own land.
    read_scratch: socket::ReadScratch,
    /// Quiet connections parked without tasks.
    parking: park::Parking,
}

/// What one shard did with a reload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resettled {
    /// Connections whose ACL was built again.
    pub kept: usize,
    /// Connections closed: their credentials no longer hold.
    pub closed: usize,
}

impl Door {
    /// The door of `broker`'s shard, with the TLS settings `tls`.
    pub fn new(
        broker: Rc<Broker>,
        quota: Rc<ConnectionQuota>,
        hashing: Arc<HashQueue>,
        tls: Option<crate::door::tls::ServerTls>,
    ) -> Rc<Self> {
        let parking = park::Parking::new(
            broker.config.idle_park_ms,
            broker.id.index(),
            Arc::clone(&broker.probe),
        );
        let door = Rc::new(Door {
            id: broker.id,
            config: Arc::clone(&broker.config),
            probe: Arc::clone(&broker.probe),
            broker,
            connections: Connections::default(),
            quota,
            hashing,
            tls: RefCell::new(tls.map(futures_rustls::TlsAcceptor::from)),
            read_scratch: socket::ReadScratch::new(),
            parking,
        });
        park::Parking::start(&door);
        door
    }

    /// The TLS acceptor in force.
    pub fn tls(&self) -> Option<futures_rustls::TlsAcceptor> {
        self.tls.borrow().clone()
    }

    /// Puts `tls` in force for new connections.
    pub fn set_tls(&self, tls: Option<crate::door::tls::ServerTls>) {
        *self.tls.borrow_mut() = tls.map(futures_rustls::TlsAcceptor::from);
    }

    /// Settles every connection under the credentials and ACL of `auth`, which replaced
    /// `previous`: one whose credentials no longer hold is closed (see
    /// `Authenticator::still_admits`); every other gets its `ClientAcl` built again and
    /// its session's subscriptions classified again, so a subscription the new rules
    /// forbid stops delivering at once (queued messages included: deliveries are checked
    /// where they reach the wire).
    pub fn resettle(&self, auth: &Authenticator, previous: &Authenticator) -> Resettled {
        let mut done = Resettled::default();
        for conn in self.connections.all() {
            let who = conn.who.borrow().clone();
            let Some((principal, client_id)) = who else {
                continue; // still in CONNECT: it reads the new settings itself
            };
            if !auth.still_admits(&principal, previous) {
                tracing::info!(target: CONNECTION_LOG, shard = self.id.index(),
                    client_id = client_id.as_str(),
                    ?principal,
                    "reload: credentials no longer valid, closing the connection"
                );
                conn.link.close(ReasonCode::NotAuthorized);
                done.closed += 1;
                continue;
            }
            let acl = auth
                .acl()
                .for_client(principal.identity(), client_id.as_str());
            *conn.link.acl.borrow_mut() = acl.map(Box::new);
            conn.acl_epoch.set(conn.acl_epoch.get().wrapping_add(1));
            if let Some(key) = conn.link.session() {
                acl::settle(self, &conn, key);
            }
            done.kept += 1;
        }
        done
    }

    /// Tells every connection the server is going away (v5: DISCONNECT 0x8B), waits up
    /// to `limit` for them to flush and close, then cuts the stragglers.
    pub async fn drain(&self, limit: Duration) {
        self.connections.drain(limit).await
    }

    /// A freshly accepted socket `fd` from `peer`: a live connection here, and a link the
    /// broker sends its acks to.
    fn register(&self, fd: std::os::fd::RawFd) -> Rc<Conn> {
        let conn = self.connections.register(fd);
        self.broker.link_opened(&conn.link);
        conn
    }

    /// The connection `token` is gone.
    fn unregister(&self, token: u64) {
        self.broker.link_closed(token);
        self.connections.unregister(token);
    }
}

/// The live connections of one shard, by token.
#[derive(Default)]
pub struct Connections {
    tokens: RefCell<TokenMint>,
    live: RefCell<TokenTable<Rc<Conn>>>,
    /// Publishers waiting for room on a mesh link.
    turns: link_room::LinkTurns,
    /// The cap on this shard's "connection refused" log lines.
    refusals_logged: logcap::LineCap,
}

impl Connections {
    fn register(&self, fd: std::os::fd::RawFd) -> Rc<Conn> {
        let token = self.tokens.borrow_mut().mint().expect(
            "connections_per_shard_max (at most 2^24 - 1) keeps a shard's connections within its token slots",
        );
        // The connection and its link last as long as it does, parked or not.
        let conn = crate::runtime::lasting(|| Rc::new(Conn::new(token, fd)));
        self.live.borrow_mut().insert(Rc::clone(&conn));
        conn
    }

    fn unregister(&self, token: u64) {
        if let Some(conn) = self.live.borrow_mut().remove(token) {
            // Its descriptor closes next and may soon name another socket.
            conn.link.set_fd(-1);
            self.tokens.borrow_mut().release(token);
        }
    }

    /// The live connection `token`.
    pub(super) fn get(&self, token: u64) -> Option<Rc<Conn>> {
        self.live.borrow().get(token).cloned()
    }

    /// The tokens of the live connections for which `f` holds.
    pub(super) fn tokens_where(&self, f: impl Fn(&Conn) -> bool) -> Vec<u64> {
        self.live
            .borrow()
            .values()
            .filter(|conn| f(conn))
            .map(|conn| conn.link.token)
            .collect()
    }

    /// Every live connection.
    pub fn all(&self) -> Vec<Rc<Conn>> {
        self.live.borrow().values().cloned().collect()
    }

    /// Whether a "connection refused" line may be written now, and how many such lines
    /// were left out before it (see `logcap`).
    pub(super) fn admit_refusal_line(&self) -> Option<u64> {
        self.refusals_logged.admit(Instant::now())
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.live.borrow().is_empty()
    }

    /// Tells every connection the server is going away (v5: DISCONNECT 0x8B), waits up
    /// to `limit` for them to flush and close, then cuts the stragglers.
    pub async fn drain(&self, limit: Duration) {
        let all: Vec<Rc<Conn>> = self.live.borrow().values().cloned().collect();
        for conn in &all {
            conn.link.close(ReasonCode::ServerShuttingDown);
        }
        let started = Instant::now();
        while !self.is_empty() && started.elapsed() < limit {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        for conn in self.live.borrow().values() {
            // SAFETY: shutdown(2) on a socket a live connection task (or a parked
            // connection's record) still owns; it only ends I/O, the owner closes the
            // descriptor. A parked connection sees it as its client's close and unparks.
            unsafe { libc::shutdown(conn.link.fd(), libc::SHUT_RDWR) };
        }
        let cut = Instant::now();
        while !self.is_empty() && cut.elapsed() < Duration::from_secs(1) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What a listener speaks underneath MQTT. A TLS listener takes the acceptor in force at
/// each accept: a reload swaps it for new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// `mqtt_listen`.
    Tcp,
    /// `mqtts_listen`.
    Tls,
    /// `ws_listen`.
    Ws,
    /// `wss_listen`.
    Wss,
}

/// What one connection speaks underneath MQTT.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP (`mqtt_listen`).
    Tcp,
    /// TLS (`mqtts_listen`).
    Tls(futures_rustls::TlsAcceptor),
    /// WebSocket (`ws_listen`).
    Ws,
    /// WebSocket over TLS (`wss_listen`).
    Wss(futures_rustls::TlsAcceptor),
}

/// Whether the source of `stream` is within `connections_per_source_rate_max`.
fn source_admitted(
    door: &Door,
    sources: &mut Option<bounds::SourceRate>,
    stream: &glommio::net::TcpStream,
) -> bool {
    let Some(sources) = sources.as_mut() else {
        return true;
    };
    match stream.peer_addr() {
        Ok(peer) => sources.admit(peer.ip(), Instant::now()),
        Err(e) => {
            tracing::debug!(target: CONNECTION_LOG, shard = door.id.index(), error = %e, "accepted a connection without a peer");
            false
        }
    }
}

impl Door {
    /// Accepts connections until the shard starts shutting down.
    ///
    /// A connection over `connections_max` or `connections_per_shard_max` is refused: its
    /// CONNECT is read (briefly) so it can be answered CONNACK 0x97 Quota exceeded — the v5
    /// code for an administrative limit; 0x9F Connection rate exceeded is about rates, 0x89
    /// Server busy about transient load — or, for 3.1.1, return code 3 (server
    /// unavailable). On the TLS and WebSocket listeners such a connection is closed at
    /// once: answering would first cost the broker a handshake. When more than [`REFUSING_MAX`](crate::runtime::REFUSING_MAX) such
    /// refusals are already in progress the connection is closed at once, before any
    /// CONNECT: a flood of connections over the limit costs at most that many small tasks.
    pub async fn accept_loop(self: &Rc<Self>, listener: &TcpListener, kind: Listening) {
        let door = self;
        let mut sources = bounds::SourceRate::new(
            door.config.connections_per_source_rate_max,
            door.broker.mesh.shards(),
        );
        let accept = async {
            loop {
                // An accept with connections waiting completes at once: under a flood of
                // connects (reconnect storms, a password flood refused as busy) this
                // loop would otherwise keep the executor for as long as the backlog
                // lasts, and every connection already served would wait (seconds,
                // measured) for its next turn.
                glommio::yield_if_needed().await;
                match listener.accept().await {
                    Ok(stream) if !source_admitted(door, &mut sources, &stream) => {
                        door.probe.hit(Limit::ConnectionsPerSourceRateMax);
                        drop(stream);
                    }
                    Ok(stream) => match door.quota.admit() {
                        Ok(slot) => {
                            let door = Rc::clone(door);
                            // The acceptor in force now: a reload swaps it for new connections.
                            let tls = || door.tls();
                            let transport = match kind {
                                Listening::Tcp => Some(Transport::Tcp),
                                Listening::Ws => Some(Transport::Ws),
                                Listening::Tls => tls().map(Transport::Tls),
                                Listening::Wss => tls().map(Transport::Wss),
                            };
                            let Some(transport) = transport else {
                                drop(stream);
                                continue;
                            };
                            glommio::spawn_local(serve::serve(door, stream, slot, transport))
                                .detach();
                        }
                        Err(Refused::Answer(limit, slot)) if kind == Listening::Tcp => {
                            let door = Rc::clone(door);
                            glommio::spawn_local(async move {
                                refuse::refuse(&door, stream, limit, slot).await
                            })
                            .detach();
                        }
                        Err(Refused::Answer(limit, _) | Refused::Close(limit)) => {
                            tracing::debug!(target: CONNECTION_LOG, shard = door.id.index(),
                                limit = limit.key(),
                                "connection closed at accept"
                            );
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(target: CONNECTION_LOG, shard = door.id.index(), error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        futures_lite::future::or(accept, door.broker.shutdown.wait()).await;
    }
}
