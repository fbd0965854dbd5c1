//! What one connection may cost, whatever its client does.
//!
//! - **A partial packet has a deadline** (`packet_read_timeout_ms`): keep-alive is a
//!   per-read timeout, so a client trickling a byte now and then (or any client with
//!   keep-alive 0) could hold a partial packet, and the buffer it announces, forever.
//!   [`PacketClock`] counts the time the reads of one packet take; the time the broker
//!   itself stops reading (backpressure) is not the client's and is not counted. The
//!   connection is then closed; a v5 client is told 0x8D Keep Alive timeout, as it did
//!   not deliver a control packet in time.
//! - **Replies cannot pile up** for a client that sends but never reads: deliveries stop
//!   at `connection_out_bytes_max` pending bytes, but acks, PINGRESP and SUBACK must go
//!   out, so past twice that the connection is not read until its writer takes the output
//!   ([`output_room`]). TCP then pushes back on the client. What a connection holds is
//!   its output (at most about twice the bound) and the chunk its writer is writing.
//! - **User properties are bounded per PUBLISH** (`user_properties_bytes_max`): they are
//!   stored and queued with the message. A publish over it is refused (v5 0x97 Quota
//!   exceeded in PUBACK/PUBREC; QoS 0 is dropped) before it reaches any shard state.

use std::time::{Duration, Instant};

use crate::metrics::Limit;
use crate::mqtt::{self, Packet, QoS, ReasonCode};
use crate::shard::Shard;

use super::conn::Conn;
use super::socket::Socket;

/// The read deadline of the packet being received, and the keep-alive.
pub(super) struct PacketClock {
    /// `packet_read_timeout_ms`.
    packet_limit: Duration,
    /// 1.5 × keep-alive, `None` with keep-alive 0.
    keep_alive: Option<Duration>,
    /// Time the reads of the current partial packet took so far.
    spent: Duration,
    /// The socket's read timeout as last set.
    timeout: Option<Duration>,
    /// Whether that timeout is the packet's deadline rather than the keep-alive.
    packet_cuts: bool,
}

impl PacketClock {
    pub(super) fn new(packet_limit_ms: u64, keep_alive: Option<Duration>) -> Self {
        PacketClock {
            packet_limit: Duration::from_millis(packet_limit_ms),
            keep_alive,
            spent: Duration::ZERO,
            timeout: None,
            packet_cuts: false,
        }
    }

    /// Sets the socket's read timeout for the next read. `decoded`: a packet completed
    /// since the last read; `partial`: bytes of an incomplete packet are buffered.
    /// Returns the read's start when a partial packet's clock runs.
    pub(super) fn before_read(
        &mut self,
        socket: &Socket,
        decoded: bool,
        partial: bool,
    ) -> Option<Instant> {
        if decoded || !partial {
            self.spent = Duration::ZERO;
        }
        let (timeout, packet_cuts) = if partial {
            let left = self
                .packet_limit
                .saturating_sub(self.spent)
                .max(Duration::from_millis(1));
            match self.keep_alive {
                Some(k) if k < left => (Some(k), false),
                _ => (Some(left), true),
            }
        } else {
            (self.keep_alive, false)
        };
        self.packet_cuts = packet_cuts;
        if timeout != self.timeout {
            // Only stores the duration: no syscall.
            let _ = socket.set_read_timeout(timeout);
            self.timeout = timeout;
        }
        partial.then(Instant::now)
    }

    /// Adds the read that started at `started` (if the clock ran) to the packet's time.
    pub(super) fn after_read(&mut self, started: Option<Instant>) {
        if let Some(started) = started {
            self.spent += started.elapsed();
        }
    }

    /// Whether a read that timed out ran into the packet's deadline (else keep-alive).
    pub(super) fn expired(&self) -> bool {
        self.packet_cuts
    }
}

/// Waits while `conn` has more output pending than its replies may take (see the module
/// docs); counted as a `connection_out_bytes_max` hit.
pub(super) async fn output_room(shard: &Shard, conn: &Conn) {
    let bytes_max = shard.config.connection_out_bytes_max.saturating_mul(2);
    if conn.pending_bytes() >= bytes_max {
        shard.probe.hit(Limit::ConnectionOutBytesMax);
        conn.output_below(bytes_max).await;
    }
}

/// Whether `packet` is refused for exceeding a per-packet bound; if so it has been
/// answered and counted, and must not be handled.
pub(super) fn refused(shard: &Shard, conn: &Conn, packet: &Packet) -> bool {
    let Packet::Publish(publish) = packet else {
        return false;
    };
    let user_bytes = mqtt::user_properties_bytes(&publish.properties.user_properties);
    if user_bytes <= shard.config.user_properties_bytes_max {
        return false;
    }
    shard.probe.hit(Limit::UserPropertiesBytesMax);
    tracing::debug!(
        token = conn.token,
        user_bytes,
        "publish refused: user properties over user_properties_bytes_max"
    );
    if let (Some(pid), true) = (publish.packet_id, publish.qos != QoS::AtMostOnce) {
        // In receive order with the publishes before it; a refused QoS 2 publish leaves
        // no state behind (PUBREC with an error code ends its flow).
        conn.expect_ack(pid.get(), publish.qos);
        conn.complete_ack(
            pid.get(),
            ReasonCode::QuotaExceeded,
            &shard.probe.publish_ack_latency.0,
        );
    }
    true
}
