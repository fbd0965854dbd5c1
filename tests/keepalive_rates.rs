//! The keep-alive cap and the rate limits, black-box: raw MQTT on real sockets against a
//! real broker. Each limit is shown holding a client back without losing anything it
//! sent, counted in `shardmq_limit_hits_total`, and leaving the other clients alone.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::raw::{Conn, Connect, Publish, DISCONNECT};
use common::{broker_with, broker_with_shards};

/// CONNACK property Server Keep Alive.
const P_SERVER_KEEP_ALIVE: u8 = 0x13;

#[test]
fn a_v5_client_is_told_the_keep_alive_cap_and_held_to_it() {
    let broker = broker_with(&[("MAX_KEEPALIVE_SECS", "1")]);
    // Within the cap: its own, nothing said.
    let (_ok, ack) = Conn::connect(broker.mqtt, &Connect::v5("ka-within").keep_alive(1));
    assert_eq!(ack.props.u16(P_SERVER_KEEP_ALIVE), None);
    // Over it, or none at all: told the cap.
    for asked in [600, 0] {
        let id = format!("ka-{asked}");
        let (mut conn, ack) = Conn::connect(broker.mqtt, &Connect::v5(&id).keep_alive(asked));
        assert_eq!(
            ack.props.u16(P_SERVER_KEEP_ALIVE),
            Some(1),
            "keep-alive {asked}"
        );
        // A client silent past 1.5 x the cap is closed with 0x8D Keep Alive timeout.
        let started = Instant::now();
        let seen = conn.expect_closed(Duration::from_secs(10));
        assert!(
            started.elapsed() >= Duration::from_millis(1_400),
            "closed after {:?}",
            started.elapsed()
        );
        let reasons: Vec<u8> = seen
            .iter()
            .filter(|p| p.kind == DISCONNECT)
            .map(|p| p.body[0])
            .collect();
        assert_eq!(reasons, vec![0x8D], "keep-alive {asked}: {seen:?}");
    }
    assert_eq!(broker.limit_hits("max_keepalive_secs"), 2.0);
}

#[test]
fn a_v3_client_over_the_cap_is_refused_or_clamped_as_configured() {
    let refusing = broker_with(&[("MAX_KEEPALIVE_SECS", "30")]);
    let (_, ack) = Conn::connect_raw(refusing.mqtt, &Connect::v4("ka3-over").keep_alive(600));
    assert_eq!(
        ack.code, 2,
        "3.1.1 identifier rejected, as mosquitto answers"
    );
    let (_, ack) = Conn::connect_raw(refusing.mqtt, &Connect::v4("ka3-none").keep_alive(0));
    assert_eq!(ack.code, 2, "no keep-alive is over any cap");
    let (_, ack) = Conn::connect_raw(refusing.mqtt, &Connect::v4("ka3-in").keep_alive(30));
    assert_eq!(ack.code, 0);
    assert_eq!(refusing.limit_hits("max_keepalive_secs"), 2.0);

    let clamping = broker_with(&[("MAX_KEEPALIVE_SECS", "1"), ("MAX_KEEPALIVE_V3", "clamp")]);
    let (mut conn, ack) =
        Conn::connect_raw(clamping.mqtt, &Connect::v4("ka3-clamped").keep_alive(600));
    assert_eq!(ack.code, 0, "accepted under the cap");
    let started = Instant::now();
    conn.expect_closed(Duration::from_secs(10));
    assert!(started.elapsed() >= Duration::from_millis(1_400));
}

/// `n` QoS 0 PUBLISHes of `bytes` payload bytes each on `topic`, in one write.
fn burst(conn: &mut Conn, topic: &str, n: u32, bytes: usize) {
    let mut out = Vec::new();
    for i in 0..n {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(bytes.max(4), 0);
        out.extend(Publish::new(topic, &payload, 0).encode(true));
    }
    conn.send(&out);
}

/// Reads PUBLISHes until `n` arrived (panics after `limit`); the time it took.
fn receive(conn: &mut Conn, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    let got = (0..n)
        .take_while(|_| conn.try_publish(limit).is_some())
        .count();
    assert_eq!(got, n, "every message arrives, none dropped");
    started.elapsed()
}

#[test]
fn a_publisher_over_its_rate_is_slowed_not_dropped_and_others_go_on() {
    let broker = broker_with_shards(1, &[("CLIENT_PUBLISH_RATE_MAX", "50")]);
    let mut sub = Conn::client(broker.mqtt, true, "rate-sub");
    sub.sub("rate/#", 0);
    let mut fast = Conn::client(broker.mqtt, true, "rate-fast");
    // A second's worth at once, then 100 more at 50 per second: at least 2 s.
    burst(&mut fast, "rate/fast", 150, 16);
    std::thread::sleep(Duration::from_millis(300));
    // Another client on the same shard is not held back by it.
    let mut other = Conn::client(broker.mqtt, true, "rate-other");
    let t = Instant::now();
    assert_eq!(other.publish(Publish::new("rate/other", b"x", 1)), 0);
    let other_ack = t.elapsed();
    let took = receive(&mut sub, 151, Duration::from_secs(20));
    assert!(
        took >= Duration::from_millis(1_500),
        "150 publishes at 50/s went through in {took:?}"
    );
    assert!(
        other_ack < Duration::from_secs(3),
        "another client waited {other_ack:?} for its PUBACK"
    );
    assert!(broker.limit_hits("client_publish_rate_max") >= 1.0);
}

#[test]
fn a_publisher_over_its_byte_rate_is_slowed_not_dropped() {
    let broker = broker_with_shards(1, &[("CLIENT_PUBLISH_BYTES_RATE_MAX", "20000")]);
    let mut sub = Conn::client(broker.mqtt, true, "brate-sub");
    sub.sub("brate/#", 0);
    let mut fast = Conn::client(broker.mqtt, true, "brate-fast");
    // 60 KB at 20 KB/s with a second's worth at once: at least 2 s.
    burst(&mut fast, "brate/t", 60, 1_000);
    let took = receive(&mut sub, 60, Duration::from_secs(20));
    assert!(took >= Duration::from_millis(1_500), "60 KB in {took:?}");
    assert!(broker.limit_hits("client_publish_bytes_rate_max") >= 1.0);
}

/// Whether a new connection from here gets a CONNACK.
fn gets_connack(addr: std::net::SocketAddr, id: &str) -> bool {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    use std::io::{Read, Write};
    if stream.write_all(&Connect::v5(id).encode()).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(stream.read(&mut first), Ok(1) if first[0] >> 4 == 2)
}

#[test]
fn a_source_over_its_connection_rate_is_closed_at_accept() {
    let broker = broker_with_shards(1, &[("CONNECTIONS_PER_SOURCE_RATE_MAX", "4")]);
    let mut held = Conn::client(broker.mqtt, true, "conn-rate-held");
    held.sub("held/#", 0);
    // The subscriber above took one of this second's four.
    let admitted = (0..20)
        .filter(|i| gets_connack(broker.mqtt, &format!("conn-rate-{i}")))
        .count();
    assert!(
        (3..=5).contains(&admitted),
        "{admitted} of 20 connections in a burst were served"
    );
    assert!(broker.limit_hits("connections_per_source_rate_max") >= 15.0);
    // The connected client never noticed; a second later the source may connect again.
    std::thread::sleep(Duration::from_millis(1_100));
    let mut publ = Conn::client(broker.mqtt, true, "conn-rate-later");
    assert_eq!(publ.publish(Publish::new("held/t", b"still here", 1)), 0);
    assert_eq!(held.expect_publish().payload, b"still here");
}
