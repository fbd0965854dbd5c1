//! MQTT over TLS (`mqtts_listen`, `wss_listen`): the handshake of one connection under
//! the settings of `door::tls`.
//!
//! rustls runs over glommio's `TcpStream` through futures-io (`futures-rustls`). The
//! handshake happens before the connection's tasks start, under the connection's
//! `connect_timeout_ms` deadline; after it the stream is one more `Socket` kind and
//! the packet loop is the same as for plain TCP (`wss_listen` puts WebSocket on top
//! first, see `ws`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use super::Door;
use crate::door::tls::identity;
use crate::metrics::Limit;

/// Runs the TLS handshake of a connection accepted at `accepted_at`, within the
/// connection's `connect_timeout_ms`. `None` (the socket closed) if it failed, stalled,
/// or `use_identity_as_username` finds no name in the client's certificate. Beside
/// the stream: the user its certificate names, with `use_identity_as_username`.
pub(super) async fn handshake(
    door: &Rc<Door>,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    accepted_at: Instant,
) -> Option<(TlsStream<TcpStream>, Option<String>)> {
    // Looked up now: a failed handshake's log line names the peer, and by then the
    // socket is gone.
    let peer = stream.peer_addr().ok();
    let deadline = accepted_at + Duration::from_millis(door.config.connect_timeout_ms);
    let accepted = crate::runtime::within(deadline, acceptor.accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            log_failed(door, peer, &e);
            return None;
        }
        Err(_) => {
            door.probe.connect_timeouts_total.inc();
            door.probe.hit(Limit::ConnectTimeoutMs);
            log_failed(door, peer, &"no handshake within connect_timeout_ms");
            return None;
        }
    };
    let identity = if door.config.use_identity_as_username {
        let named = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(identity);
        if named.is_none() {
            log_failed(door, peer, &"client certificate names no CN or SAN");
            return None;
        }
        named
    } else {
        None
    };
    Some((stream, identity))
}

/// One "TLS handshake failed" line at info, within the shard's cap on refusal lines: a
/// wrong CA, an expired certificate or plaintext on the TLS port is what an operator
/// looks for when a client "cannot connect".
fn log_failed(door: &Door, peer: Option<SocketAddr>, reason: &dyn std::fmt::Display) {
    let Some(left_out) = door.connections.admit_refusal_line() else {
        return;
    };
    tracing::info!(target: super::CONNECTION_LOG, shard = door.id.index(),
        peer = %peer.map_or_else(|| "unknown".into(), |a| a.to_string()),
        reason = %reason,
        left_out,
        "TLS handshake failed"
    );
}
