//! Client connections: the per-shard accept loop, the connection tasks, and the table of
//! live connections.
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
mod logcap;
mod packets;
mod refuse;
mod room;
mod serve;
mod socket;
pub mod tls;
mod ws;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use crate::metrics::Limit;
use crate::mqtt::ReasonCode;
use crate::shard::{Refused, Shard};

pub(crate) use acl::settle as settle_acl;
pub use conn::Conn;
pub(crate) use connect::version as protocol_version;

/// The live connections of one shard, by token.
#[derive(Default)]
pub struct Connections {
    next_token: Cell<u64>,
    live: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Publishers waiting for room on a mesh link.
    turns: room::LinkTurns,
    /// The cap on this shard's "connection refused" log lines.
    refusals_logged: logcap::LineCap,
}

impl Connections {
    fn register(&self, fd: std::os::fd::RawFd) -> Rc<Conn> {
        let token = self.next_token.get() + 1;
        self.next_token.set(token);
        let conn = Rc::new(Conn::new(token, fd));
        self.live.borrow_mut().insert(token, Rc::clone(&conn));
        conn
    }

    fn unregister(&self, token: u64) {
        self.live.borrow_mut().remove(&token);
    }

    /// Every live connection.
    pub fn all(&self) -> Vec<Rc<Conn>> {
        self.live.borrow().values().cloned().collect()
    }

    /// The live connection with `token`.
    pub fn get(&self, token: u64) -> Option<Rc<Conn>> {
        self.live.borrow().get(&token).cloned()
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
            conn.close(ReasonCode::ServerShuttingDown);
        }
        let started = Instant::now();
        while !self.is_empty() && started.elapsed() < limit {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        for conn in self.live.borrow().values() {
            // SAFETY: shutdown(2) on a socket a live connection task still owns; it only
            // ends I/O, the task closes the descriptor.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
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
    shard: &Shard,
    sources: &mut Option<bounds::SourceRate>,
    stream: &glommio::net::TcpStream,
) -> bool {
    let Some(sources) = sources.as_mut() else {
        return true;
    };
    match stream.peer_addr() {
        Ok(peer) => sources.admit(peer.ip(), Instant::now()),
        Err(e) => {
            tracing::debug!(shard = shard.id, error = %e, "accepted a connection without a peer");
            false
        }
    }
}

/// Accepts connections until the shard starts shutting down.
///
/// A connection over `connections_max` or `connections_per_shard_max` is refused: its
/// CONNECT is read (briefly) so it can be answered CONNACK 0x97 Quota exceeded — the v5
/// code for an administrative limit; 0x9F Connection rate exceeded is about rates, 0x89
/// Server busy about transient load — or, for 3.1.1, return code 3 (server
/// unavailable). On the TLS and WebSocket listeners such a connection is closed at
/// once: answering would first cost the broker a handshake. When more than [`REFUSING_MAX`](crate::shard::REFUSING_MAX) such
/// refusals are already in progress the connection is closed at once, before any
/// CONNECT: a flood of connections over the limit costs at most that many small tasks.
pub async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener, kind: Listening) {
    let mut sources = bounds::SourceRate::new(
        shard.config.connections_per_source_rate_max,
        shard.mesh.shards(),
    );
    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) if !source_admitted(shard, &mut sources, &stream) => {
                    shard.probe.hit(Limit::ConnectionsPerSourceRateMax);
                    drop(stream);
                }
                Ok(stream) => match shard.admit_connection() {
                    Ok(slot) => {
                        let shard = Rc::clone(shard);
                        // The acceptor in force now: a reload swaps it for new connections.
                        let tls = || shard.tls.borrow().clone();
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
                        glommio::spawn_local(async move {
                            serve::serve(shard, stream, slot, transport).await
                        })
                        .detach();
                    }
                    Err(Refused::Answer(limit, slot)) if kind == Listening::Tcp => {
                        let shard = Rc::clone(shard);
                        glommio::spawn_local(async move {
                            refuse::refuse(&shard, stream, limit, slot).await
                        })
                        .detach();
                    }
                    Err(Refused::Answer(limit, _) | Refused::Close(limit)) => {
                        tracing::debug!(
                            shard = shard.id,
                            limit = limit.key(),
                            "connection closed at accept"
                        );
                        drop(stream);
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(shard = shard.id, error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    futures_lite::future::or(accept, shard.shutdown.wait()).await;
}
