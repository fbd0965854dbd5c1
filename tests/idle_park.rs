//! Quiet connections parked without tasks (`idle_park_ms`): a client cannot tell. It
//! still gets its deliveries, its PINGRESP, its keep-alive timeout and will, its takeover
//! and shutdown DISCONNECT. (What a park saves is measured by `scripts/idle-conns.sh`.)

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const PARKED: &str = "shardmq_connections_parked";

/// A 1-shard broker that parks connections quiet for `park_ms`.
fn parking_broker(park_ms: &str, extra: &[(&str, &str)]) -> Broker {
    let mut settings = vec![("IDLE_PARK_MS", park_ms), ("FSYNC_POLICY", "none")];
    settings.extend_from_slice(extra);
    broker_on(1, &settings, Vec::new())
}

/// A QoS 0 will on `topic`.
fn will(topic: &str, payload: &[u8]) -> Will {
    Will {
        topic: topic.into(),
        payload: payload.to_vec(),
        ..Will::default()
    }
}

fn parked(broker: &Broker) -> f64 {
    broker.metric_sum(PARKED)
}

/// Waits until at least `n` connections are parked.
fn until_parked(broker: &Broker, n: usize) {
    assert!(
        eventually(Duration::from_secs(20), || parked(broker) >= n as f64),
        "{} parked, {n} expected ({} parks so far)",
        parked(broker),
        parks(broker)
    );
}

/// A parked subscriber gets its QoS 0 and QoS 1 deliveries (and its client's PUBACK is
/// read) and parks again after each; a parked client is answered its PINGREQ.
/// The subscriber is rumqttc, an independent client; its keep-alive (30 s) is far away.
#[test]
fn parked_connections_get_their_deliveries_and_answers() {
    use rumqttc::{Event, Packet, QoS};
    let broker = parking_broker("200", &[]);
    let addr = broker.mqtt;
    let mut opts = rumqttc::MqttOptions::new("park-sub", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.qos as u8));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.subscribe("park/#", QoS::AtLeastOnce).unwrap();
    let mut pinger = Conn::client(addr, true, "park-ping");
    until_parked(&broker, 2);
    let parks_before = broker.metric_sum("shardmq_connection_parks_total");

    let mut publisher = Conn::client(addr, false, "park-pub");
    for (i, qos) in [(0u8, 0u8), (1, 1), (2, 1)] {
        // All three (subscriber, pinger, publisher) park again in between.
        until_parked(&broker, 3);
        let payload = format!("message {i}");
        assert_eq!(
            publisher.publish(Publish::new("park/t", payload.as_bytes(), qos)),
            0
        );
        let (topic, got, got_qos) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a parked subscriber gets its delivery");
        assert_eq!(topic, "park/t");
        assert_eq!(got, payload.as_bytes());
        assert_eq!(got_qos, qos);
    }
    // The QoS 1 deliveries were acknowledged: nothing waits in the session.
    assert!(eventually(Duration::from_secs(10), || {
        broker.metric_sum("shardmq_inflight_current") == 0.0
    }));
    until_parked(&broker, 3);
    let pings_before = broker.metric_sum("shardmq_parked_pings_total");
    pinger.ping();
    pinger.expect_kind(PINGRESP);
    assert_eq!(
        broker.metric_sum("shardmq_parked_pings_total") - pings_before,
        1.0,
        "the PINGREQ is answered while parked"
    );
    until_parked(&broker, 3);
    let parks = broker.metric_sum("shardmq_connection_parks_total") - parks_before;
    assert!(parks >= 7.0, "each went back to its park ({parks} parks)");
}

fn parks(broker: &Broker) -> f64 {
    broker.metric_sum("shardmq_connection_parks_total")
}

/// A parked connection's PINGREQs are answered where it lies: it is not unparked (and
/// parked again) per ping, and each ping starts its keep-alive again. A PINGREQ split
/// across two writes, or followed by another packet, is the reader's, as before.
#[test]
fn parked_connections_are_answered_their_pings_without_unparking() {
    let broker = parking_broker("200", &[]);
    let mut watcher = Conn::client(broker.mqtt, true, "pp-watch");
    watcher.sub("pp/t", 0);
    // Keep-alive 2 s: cut 3 s after its last packet.
    let (mut pinging, _) = Conn::connect(broker.mqtt, &Connect::v5("pp-ping").keep_alive(2));
    until_parked(&broker, 2);
    let parks_before = parks(&broker);
    let pings_before = broker.metric_sum("shardmq_parked_pings_total");

    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(5) {
        pinging.ping();
        pinging.expect_kind(PINGRESP);
        pings += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(
        parks(&broker) - parks_before,
        0.0,
        "{pings} pings, 5 s past the keep-alive, and never unparked"
    );
    assert_eq!(parked(&broker), 2.0);
    let answered = broker.metric_sum("shardmq_parked_pings_total") - pings_before;
    assert_eq!(answered, f64::from(pings));

    // Two in one write: both answered, still parked.
    pinging.send(&[0xC0, 0, 0xC0, 0]);
    pinging.expect_kind(PINGRESP);
    pinging.expect_kind(PINGRESP);
    assert_eq!(parks(&broker) - parks_before, 0.0);

    // Half a PINGREQ, then the rest: unparked, answered by the reader, parked again.
    pinging.send(&[0xC0]);
    std::thread::sleep(Duration::from_millis(50));
    pinging.send(&[0]);
    pinging.expect_kind(PINGRESP);
    until_parked(&broker, 2);
    assert!(parks(&broker) - parks_before >= 1.0);

    // A PINGREQ and a PUBLISH in one write: both served.
    let mut bytes = vec![0xC0, 0];
    bytes.extend(Publish::new("pp/t", b"after a ping", 0).encode(true));
    pinging.send(&bytes);
    pinging.expect_kind(PINGRESP);
    let delivered = watcher
        .try_publish(Duration::from_secs(5))
        .expect("the publish behind the PINGREQ is delivered");
    assert_eq!(delivered.payload, b"after a ping");
    assert_eq!(
        broker.metric_sum("shardmq_parked_pings_total") - pings_before,
        f64::from(pings) + 1.0
    );
}

/// While parked a connection's keep-alive still runs: a silent client is cut about 1.5 ×
/// its keep-alive after its last packet, and its will is published; one that pings in
/// time stays.
#[test]
fn the_keep_alive_runs_while_parked() {
    let broker = parking_broker("200", &[]);
    let mut watcher = Conn::client(broker.mqtt, true, "ka-watch");
    watcher.sub("ka/will", 0);
    let will = will("ka/will", b"gone");
    let connect = Connect::v5("ka-silent").keep_alive(2).will(will);
    let (mut silent, _) = Conn::connect(broker.mqtt, &connect);
    let (mut pinging, _) = Conn::connect(broker.mqtt, &Connect::v5("ka-pinging").keep_alive(2));
    let last_packet = Instant::now();
    until_parked(&broker, 3);

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut will_at = None;
    while Instant::now() < deadline && will_at.is_none() {
        pinging.ping();
        pinging.expect_kind(PINGRESP);
        if let Some(p) = watcher.try_publish(Duration::from_millis(1000)) {
            assert_eq!(p.payload, b"gone");
            will_at = Some(last_packet.elapsed());
        }
    }
    let will_at = will_at.expect("the silent client's will, after its keep-alive");
    assert!(
        will_at >= Duration::from_millis(2900) && will_at <= Duration::from_millis(5500),
        "cut {will_at:?} after its last packet; 1.5 x 2 s expected"
    );
    // v5: told why (0x8D Keep Alive timeout), then closed.
    let last = silent.expect_closed(Duration::from_secs(5));
    assert!(
        last.iter()
            .any(|p| p.kind == DISCONNECT && p.body.first() == Some(&0x8D)),
        "DISCONNECT 0x8D before the close: {last:?}"
    );
    pinging.ping();
    pinging.expect_kind(PINGRESP);
    assert!(broker.metric_sum("shardmq_keep_alive_timeouts_total") >= 1.0);
}

/// A parked connection whose client goes away is noticed at once (its will goes out);
/// one whose session is taken over is told so (v5 0x8E); at shutdown every parked v5
/// client is told the server is going away (0x8B) and the broker exits in time.
#[test]
fn parked_connections_close_takeover_and_shutdown() {
    let mut broker = parking_broker("200", &[]);
    let mut watcher = Conn::client(broker.mqtt, true, "pc-watch");
    watcher.sub("pc/will", 0);
    let will = will("pc/will", b"dropped");
    let (dropped, _) = Conn::connect(broker.mqtt, &Connect::v5("pc-drop").will(will));
    let mut taken = Conn::client(broker.mqtt, true, "pc-taken");
    let mut stay: Vec<Conn> = (0..20)
        .map(|i| Conn::client(broker.mqtt, i % 2 == 0, &format!("pc-stay-{i}")))
        .collect();
    until_parked(&broker, 23);

    dropped.kill();
    let will = watcher
        .try_publish(Duration::from_secs(5))
        .expect("the will of a parked client that went away");
    assert_eq!(will.payload, b"dropped");

    let _taker = Conn::client(broker.mqtt, true, "pc-taken");
    let last = taken.expect_closed(Duration::from_secs(5));
    assert!(
        last.iter()
            .any(|p| p.kind == DISCONNECT && p.body.first() == Some(&0x8E)),
        "DISCONNECT 0x8E (session taken over): {last:?}"
    );

    until_parked(&broker, 20);
    let started = Instant::now();
    broker.signal(libc::SIGTERM);
    for (i, c) in stay.iter_mut().enumerate() {
        let last = c.expect_closed(Duration::from_secs(10));
        if i % 2 == 0 {
            assert!(
                last.iter()
                    .any(|p| p.kind == DISCONNECT && p.body.first() == Some(&0x8B)),
                "DISCONNECT 0x8B (server shutting down): {last:?}"
            );
        }
    }
    let status = broker.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The broker turns transparent huge pages off for itself, so that its resident memory
/// follows what it holds (`runtime::no_huge_pages`): the kernel reports it in the
/// process's status.
#[test]
fn the_broker_runs_without_transparent_huge_pages() {
    let broker = parking_broker("1000", &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.child.id()))
        .expect("the broker's /proc status");
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(
        thp,
        Some("0"),
        "THP_enabled in the broker's status (Linux 5.0+)"
    );
}
