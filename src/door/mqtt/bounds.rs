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
//! - **A publisher has a rate** (`client_publish_rate_max` packets and
//!   `client_publish_bytes_rate_max` bytes per second): [`PublishRate`] is a token bucket
//!   holding one second's worth. Once a PUBLISH puts the bucket in debt, the connection's
//!   next packet waits (buffered or not) until the rate has paid it, and the socket is not
//!   read meanwhile (TCP pushes back on the client): nothing is ever dropped.
//! - **A source address has a connection rate** (`connections_per_source_rate_max`, each
//!   shard its share): [`SourceRate`] keeps a token bucket per address that connected in
//!   the last second; a connection over it is closed at accept, before anything is read
//!   or any task spawned, so a reconnect storm or a CONNECT flood from one host costs an
//!   accept and a close each, and the clients already connected keep their shard.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::Door;
use crate::metrics::Limit;
use crate::mqtt::{self, Packet, QoS, ReasonCode};

use super::conn::Conn;
use super::socket::Socket;

/// The read deadline of the packet being received, the keep-alive, and when a quiet
/// connection is parked.
///
/// Every connection carries one, parked or not, so the limits are kept in milliseconds.
pub(super) struct PacketClock {
    /// `packet_read_timeout_ms`.
    packet_limit_ms: u32,
    /// 1.5 × keep-alive, 0 with keep-alive 0.
    keep_alive_ms: u32,
    /// `idle_park_ms`, 0 when connections are never parked.
    park_after_ms: u32,
    /// Time the reads of the current partial packet took so far, µs.
    spent_us: u32,
    /// Since when no byte arrived, for a connection that was parked: the keep-alive runs
    /// from there, not from the read after the park.
    quiet_since: Option<Instant>,
    /// What the socket's read timeout, set before each read, stands for. (The timeout
    /// itself is not kept here: setting it only stores it in the stream, and a parked
    /// connection's loop state is 16 bytes smaller without it.)
    cut: Cut,
}

/// What a read that timed out ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// The keep-alive: nothing from the client for 1.5 × its keep-alive.
    KeepAlive,
    /// `packet_read_timeout_ms`: a packet begun and not finished in time.
    Packet,
    /// `idle_park_ms` of quiet: park the connection.
    Park,
}

impl PacketClock {
    /// The clock of a connection whose keep-alive limit is `keep_alive_ms` (0: none).
    pub(super) fn new(packet_limit_ms: u64, keep_alive_ms: u32, park_after_ms: u64) -> Self {
        let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        PacketClock {
            packet_limit_ms: ms(packet_limit_ms),
            keep_alive_ms,
            park_after_ms: ms(park_after_ms),
            spent_us: 0,
            quiet_since: None,
            cut: Cut::KeepAlive,
        }
    }

    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(u64::from(self.keep_alive_ms)))
    }

    fn park_after(&self) -> Option<Duration> {
        (self.park_after_ms > 0).then(|| Duration::from_millis(u64::from(self.park_after_ms)))
    }

    /// Sets the socket's read timeout for the next read. `decoded`: a packet completed
    /// since the last read; `partial`: bytes of an incomplete packet are buffered;
    /// `parkable`: the connection could be parked if this read finds nothing for a
    /// while. Returns the read's start when a partial packet's clock runs.
    pub(super) fn before_read(
        &mut self,
        socket: &Socket,
        decoded: bool,
        partial: bool,
        parkable: bool,
    ) -> Option<Instant> {
        if decoded || !partial {
            self.spent_us = 0;
        }
        // A connection back from a park owes the keep-alive the time it was parked.
        let keep_alive = self.keep_alive().map(|k| match self.quiet_since {
            Some(since) => k
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(1)),
            None => k,
        });
        let (timeout, cut) = if partial {
            let left = Duration::from_millis(u64::from(self.packet_limit_ms))
                .saturating_sub(Duration::from_micros(u64::from(self.spent_us)))
                .max(Duration::from_millis(1));
            match keep_alive {
                Some(k) if k < left => (Some(k), Cut::KeepAlive),
                _ => (Some(left), Cut::Packet),
            }
        } else {
            match (self.park_after().filter(|_| parkable), keep_alive) {
                (Some(p), Some(k)) if p < k => (Some(p), Cut::Park),
                (Some(p), None) => (Some(p), Cut::Park),
                _ => (keep_alive, Cut::KeepAlive),
            }
        };
        self.cut = cut;
        // Only stores the duration in the stream: no syscall.
        let _ = socket.set_read_timeout(timeout);
        partial.then(Instant::now)
    }

    /// Adds the read that started at `started` (if the clock ran) to the packet's time;
    /// `read_bytes`: the read brought some.
    pub(super) fn after_read(&mut self, started: Option<Instant>, read_bytes: bool) {
        if let Some(started) = started {
            let took = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.spent_us = self.spent_us.saturating_add(took);
        }
        if read_bytes {
            self.quiet_since = None;
        }
    }

    /// What a read that timed out ran into.
    pub(super) fn cut(&self) -> Cut {
        self.cut
    }

    /// The connection is being parked after a read found nothing for `idle_park_ms`.
    pub(super) fn parked(&mut self) {
        let waited = self.park_after().unwrap_or_default();
        self.quiet_since = Some(self.quiet_since.unwrap_or_else(|| {
            Instant::now()
                .checked_sub(waited)
                .unwrap_or_else(Instant::now)
        }));
    }

    /// A packet arrived and was answered while the connection stayed parked: the
    /// keep-alive runs from `now`.
    pub(super) fn heard_while_parked(&mut self, now: Instant) {
        self.quiet_since = Some(now);
    }

    /// Whether a connection parked since [`parked`](Self::parked) has outlived its
    /// keep-alive.
    pub(super) fn keep_alive_over(&self, now: Instant) -> bool {
        match (self.keep_alive(), self.quiet_since) {
            (Some(k), Some(since)) => now.saturating_duration_since(since) >= k,
            _ => false,
        }
    }
}

/// Waits while `conn` has more output pending than its replies may take (see the module
/// docs); counted as a `connection_out_bytes_max` hit.
pub(super) async fn output_room(door: &Door, conn: &Conn) {
    let bytes_max = door.config.connection_out_bytes_max.saturating_mul(2);
    if conn.link.pending_bytes() >= bytes_max {
        door.probe.hit(Limit::ConnectionOutBytesMax);
        conn.link.output_below(bytes_max).await;
    }
}

/// Whether `packet` is refused for exceeding a per-packet bound; if so it has been
/// answered and counted, and must not be handled.
pub(super) fn refused(door: &Door, conn: &Conn, packet: &Packet) -> bool {
    let Packet::Publish(publish) = packet else {
        return false;
    };
    let user_bytes = mqtt::user_properties_bytes(&publish.properties.user_properties);
    if user_bytes <= door.config.user_properties_bytes_max {
        return false;
    }
    door.probe.hit(Limit::UserPropertiesBytesMax);
    tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token,
        user_bytes,
        "publish refused: user properties over user_properties_bytes_max"
    );
    if let (Some(pid), true) = (publish.packet_id, publish.qos != QoS::AtMostOnce) {
        // In receive order with the publishes before it; a refused QoS 2 publish leaves
        // no state behind (PUBREC with an error code ends its flow).
        conn.link.expect_ack(pid.get(), publish.qos);
        conn.link
            .complete_ack(pid.get(), ReasonCode::QuotaExceeded, |us| {
                door.probe.publish_ack_latency.0.record(us)
            });
    }
    true
}

/// A connection's PUBLISH token buckets (see the module docs). Spending costs a
/// subtraction per packet; the clock is read once per read of the socket.
pub(super) struct PublishRate {
    /// (tokens now, tokens per second) for packets, then bytes; a rate of 0 is no limit.
    buckets: [(f64, f64); 2],
    refilled: Instant,
}

impl PublishRate {
    /// The buckets for these limits, full; `None` if neither is set. Boxed: every
    /// connection's loop state holds the option, few hold buckets.
    pub(super) fn new(packets_per_sec: u32, bytes_per_sec: u64) -> Option<Box<Self>> {
        if packets_per_sec == 0 && bytes_per_sec == 0 {
            return None;
        }
        let rates = [f64::from(packets_per_sec), bytes_per_sec as f64];
        Some(Box::new(PublishRate {
            buckets: rates.map(|r| (r, r)),
            refilled: Instant::now(),
        }))
    }

    /// One PUBLISH of `bytes` (the whole packet) was read. Returns whether a bucket is
    /// in debt now (then [`publish_room`] waits before the next packet).
    pub(super) fn spend(&mut self, bytes: usize) -> bool {
        self.buckets[0].0 -= 1.0;
        self.buckets[1].0 -= bytes as f64;
        self.buckets
            .iter()
            .any(|&(tokens, rate)| rate > 0.0 && tokens < 0.0)
    }

    /// Refills the buckets for the time gone by; if one is in debt, how long reading must
    /// wait for it to be paid, and which limit that is.
    pub(super) fn debt(&mut self, now: Instant) -> Option<(Duration, Limit)> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let mut wait = None;
        let limits = [
            Limit::ClientPublishRateMax,
            Limit::ClientPublishBytesRateMax,
        ];
        for ((tokens, rate), limit) in self.buckets.iter_mut().zip(limits) {
            if *rate == 0.0 {
                continue;
            }
            *tokens = (*tokens + elapsed * *rate).min(*rate);
            if *tokens < 0.0 {
                let pay = Duration::from_secs_f64(-*tokens / *rate);
                if wait.is_none_or(|(w, _)| pay > w) {
                    wait = Some((pay, limit));
                }
            }
        }
        wait
    }
}

/// Pauses reading `rate`'s connection while its bucket is in debt (counted once per
/// pause as a hit of the limit that holds it).
pub(super) async fn publish_room(door: &Door, rate: &mut Option<Box<PublishRate>>) {
    let Some(rate) = rate.as_mut() else { return };
    while let Some((wait, limit)) = rate.debt(Instant::now()) {
        door.probe.hit(limit);
        glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// Per source address, the connections it may still open now (see the module docs).
pub(super) struct SourceRate {
    /// This shard's share of `connections_per_source_rate_max`, per second.
    per_sec: f64,
    /// Addresses seen in about the last second: (tokens, refilled at).
    sources: HashMap<IpAddr, (f64, Instant)>,
    /// Size of `sources` after its last sweep; it is swept when it doubles.
    swept_len: usize,
}

impl SourceRate {
    /// The limiter for a process-wide `per_sec` over `shards` shards; `None` without one.
    pub(super) fn new(per_sec: u32, shards: usize) -> Option<Self> {
        (per_sec > 0).then(|| SourceRate {
            per_sec: f64::from(per_sec.div_ceil(shards.max(1) as u32)),
            sources: HashMap::new(),
            swept_len: 0,
        })
    }

    /// Whether `source` may open a connection at `now` (and takes its token if so).
    pub(super) fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.sources.len() >= 2 * self.swept_len.max(512) {
            // Addresses quiet for a second are full again: forget them.
            self.sources
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(1));
            self.swept_len = self.sources.len();
        }
        let per_sec = self.per_sec;
        let (tokens, at) = self.sources.entry(source).or_insert((per_sec, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * per_sec).min(per_sec);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_of_the_connection_rate() {
        assert!(SourceRate::new(0, 2).is_none());
        // 5 per second over 2 shards: 3 here.
        let mut rate = SourceRate::new(5, 2).expect("a limit");
        let now = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let admitted = (0..10).filter(|_| rate.admit(a, now)).count();
        assert_eq!(admitted, 3);
        assert!(rate.admit(b, now), "another address has its own");
        assert!(!rate.admit(a, now + Duration::from_millis(100)));
        assert!(
            rate.admit(a, now + Duration::from_millis(400)),
            "a token back"
        );
        // Many addresses: the quiet ones are forgotten.
        for i in 0..2_000u32 {
            rate.admit(IpAddr::from(i.to_be_bytes()), now);
        }
        let later = now + Duration::from_secs(2);
        for i in 0..2_000u32 {
            rate.admit(IpAddr::from((i + 10_000).to_be_bytes()), later);
        }
        assert!(
            rate.sources.len() < 3_000,
            "{} remembered",
            rate.sources.len()
        );
    }

    #[test]
    fn a_publisher_in_debt_waits_for_its_rate_to_pay_it() {
        assert!(PublishRate::new(0, 0).is_none());
        let mut rate = PublishRate::new(100, 0).expect("a limit");
        let start = rate.refilled;
        // A second's worth goes at once (the burst).
        for _ in 0..100 {
            rate.spend(1_000_000);
        }
        assert_eq!(rate.debt(start), None);
        // Fifty more: half a second of debt, paid by half a second.
        for _ in 0..50 {
            rate.spend(10);
        }
        let (wait, limit) = rate.debt(start).expect("in debt");
        assert_eq!(limit, Limit::ClientPublishRateMax);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(rate.debt(start + Duration::from_millis(500)), None);
        // A minute idle saves up one second's worth, no more.
        let later = start + Duration::from_secs(60);
        assert_eq!(rate.debt(later), None);
        for _ in 0..150 {
            rate.spend(10);
        }
        let (wait, _) = rate.debt(later).expect("no more than a second is saved up");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn the_byte_rate_holds_big_packets() {
        let mut rate = PublishRate::new(0, 1_000).expect("a limit");
        let start = rate.refilled;
        rate.spend(3_000);
        let (wait, limit) = rate.debt(start).expect("in debt");
        assert_eq!(limit, Limit::ClientPublishBytesRateMax);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
    }
}
