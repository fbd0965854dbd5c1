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
        broker.metric_sum("shardmq_connection_parks_total")
    );
}

/// A parked subscriber gets its QoS 0 and QoS 1 deliveries (and its client's PUBACK is
/// read), a parked client is answered its PINGREQ, and each of them parks again after.
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
    pinger.ping();
    pinger.expect_kind(PINGRESP);
    until_parked(&broker, 3);
    let parks = broker.metric_sum("shardmq_connection_parks_total") - parks_before;
    assert!(parks >= 8.0, "each went back to its park ({parks} parks)");
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
