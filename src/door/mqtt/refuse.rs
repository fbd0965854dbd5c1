//! Refusing a connection over a connection limit: read just enough of its CONNECT to
//! learn the protocol level, answer CONNACK 0x97 Quota exceeded (3.1.1: return code 3,
//! server unavailable), close.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::metrics::Limit;
use crate::mqtt::{self, ConnAck, Packet, Protocol, ReasonCode};
use crate::runtime::RefusalSlot;

use super::Door;

use super::connect::connect_level;

/// A refused client gets at most this long (or `connect_timeout_ms`, if shorter) to show
/// its CONNECT header before the connection is simply closed.
const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// How long a refused client may take to close after its CONNACK.
const LINGER: Duration = Duration::from_millis(500);

/// Enough for a CONNECT's fixed header, protocol name and level.
const HEADER_BYTES_MAX: usize = 64;

/// Answers a connection refused for `limit` and closes it; `_slot` counts it among the
/// refusals in progress until then.
pub(super) async fn refuse(
    door: &Rc<Door>,
    mut stream: TcpStream,
    limit: Limit,
    _slot: RefusalSlot,
) {
    // Before the client can go away: the log line names it.
    let peer = stream.peer_addr().ok();
    let wait = REFUSE_WAIT.min(Duration::from_millis(door.config.connect_timeout_ms));
    let level = glommio::timer::timeout(wait, async {
        let mut header = [0u8; HEADER_BYTES_MAX];
        let mut filled = 0;
        while filled < header.len() {
            match stream.read(&mut header[filled..]).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => filled += n,
            }
            if let Some(level) = connect_level(&header[..filled]) {
                return Ok(Some(level));
            }
        }
        Ok(None)
    })
    .await;
    let Ok(Some(level)) = level else {
        log_refused(door, peer, limit, &"no CONNECT within the refusal wait");
        return;
    };
    let protocol = if level == 5 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let mut out = BytesMut::with_capacity(16);
    let connack = Packet::ConnAck(ConnAck::new(false, ReasonCode::QuotaExceeded));
    if mqtt::encode(&connack, protocol, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    }
    // Closing with the rest of the CONNECT unread would send RST, and the client's
    // kernel may then discard the CONNACK: half-close, drain briefly, then close.
    // SAFETY: shutdown(2) on the descriptor this stream owns.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    let _ = glommio::timer::timeout(LINGER, async {
        let mut sink = [0u8; HEADER_BYTES_MAX];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        Ok(())
    })
    .await;
    log_refused(door, peer, limit, &ReasonCode::QuotaExceeded);
}

/// One "connection refused" line at info, within the shard's cap (see `logcap`).
fn log_refused(
    door: &Door,
    peer: Option<std::net::SocketAddr>,
    limit: Limit,
    reason: &dyn std::fmt::Debug,
) {
    let Some(left_out) = door.connections.admit_refusal_line() else {
        return;
    };
    tracing::info!(target: super::CONNECTION_LOG, shard = door.id.index(),
        left_out,
        peer = %peer.map_or_else(|| "unknown".into(), |a| a.to_string()),
        limit = limit.key(),
        reason = ?reason,
        "connection refused"
    );
}
