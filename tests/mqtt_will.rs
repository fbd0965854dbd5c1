//! Will messages: published on an abnormal close or a v5 DISCONNECT 0x04, discarded on a
//! normal DISCONNECT, and held for the v5 Will Delay Interval, which a reconnect cancels.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(1200);

fn will(topic: &str, payload: &[u8]) -> Will {
    Will {
        topic: topic.to_string(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
        props: Props::new(),
    }
}

/// A subscriber to `will/#` on the other protocol level.
fn watcher(broker: &Broker, id: &str) -> Conn {
    let mut w = Conn::client(broker.mqtt, true, id);
    w.sub("will/#", 1);
    w
}

#[test]
fn abnormal_close_publishes_the_will() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "will-watch-abn");
    let ids = names("will-abn", 4);
    for (i, id) in ids.iter().enumerate() {
        let topic = format!("will/{id}");
        let c = if i % 2 == 0 {
            Connect::v4(id)
        } else {
            Connect::v5(id)
        };
        let (conn, _) = Conn::connect(broker.mqtt, &c.will(will(&topic, id.as_bytes())));
        conn.kill();
        let got = w.expect_publish();
        assert_eq!((got.topic, got.payload), (topic, id.as_bytes().to_vec()));
    }
}

#[test]
fn retained_will_is_stored() {
    let broker = Broker::start();
    let mut wl = will("will/retained", b"gone");
    wl.retain = true;
    let (conn, _) = Conn::connect(broker.mqtt, &Connect::v4("will-ret").will(wl));
    conn.kill();
    let mut late = Conn::client(broker.mqtt, false, "will-ret-late");
    let deadline = Instant::now() + WAIT;
    loop {
        late.sub("will/retained", 1);
        if let Some(m) = late.try_publish(Duration::from_millis(300)) {
            assert_eq!(m.payload.as_slice(), &b"gone"[..]);
            // A subscription made before the will fired gets it live (RETAIN 0); keep
            // subscribing until the stored copy (RETAIN 1) comes back.
            if m.retain {
                break;
            }
        }
        assert!(Instant::now() < deadline, "retained will never stored");
    }
}

#[test]
fn normal_disconnect_discards_the_will() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "will-watch-norm");
    for (i, id) in names("will-norm", 4).iter().enumerate() {
        let c = if i % 2 == 0 {
            Connect::v4(id)
        } else {
            Connect::v5(id)
        };
        let (conn, _) = Conn::connect(broker.mqtt, &c.will(will(&format!("will/{id}"), b"x")));
        conn.disconnect(0);
    }
    w.assert_no_publish(QUIET);
}

#[test]
fn v5_disconnect_with_will_message_publishes_it() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "will-watch-04");
    let (conn, _) = Conn::connect(
        broker.mqtt,
        &Connect::v5("will-04").will(will("will/04", b"bye")),
    );
    conn.disconnect(0x04);
    assert_eq!(w.expect_publish().payload, b"bye");
}

#[test]
fn v5_will_delay_waits() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "will-watch-delay");
    let mut wl = will("will/delayed", b"late");
    wl.props = Props::new().with(P_WILL_DELAY, Prop::U32(2));
    let (conn, _) = Conn::connect(
        broker.mqtt,
        &Connect::v5("will-delay").session_expiry(60).will(wl),
    );
    let start = Instant::now();
    conn.kill();
    let got = w.try_publish(Duration::from_secs(6)).expect("delayed will");
    assert_eq!(got.payload, b"late");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "will after {took:?}, delay is 2 s"
    );
}

#[test]
fn v5_will_delay_is_cancelled_by_reconnect() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "will-watch-cancel");
    let mut wl = will("will/cancelled", b"never");
    wl.props = Props::new().with(P_WILL_DELAY, Prop::U32(2));
    let c = Connect::v5("will-cancel").session_expiry(60);
    let (conn, _) = Conn::connect(broker.mqtt, &c.clone().will(wl));
    conn.kill();
    std::thread::sleep(Duration::from_millis(500));
    let (_again, ack) = Conn::connect(broker.mqtt, &c.clean(false));
    assert!(ack.session_present);
    w.assert_no_publish(Duration::from_secs(3));
}

#[test]
fn v5_disconnect_with_an_error_reason_publishes_the_will() {
    // v5 §3.1.2.5: only DISCONNECT 0x00 deletes the will; any other reason the client
    // gives (0x80 Unspecified error, 0x83 Implementation specific error …) publishes it.
    let broker = Broker::start();
    let mut w = watcher(&broker, "will-watch-80");
    for (id, reason) in [("will-80", 0x80u8), ("will-83", 0x83)] {
        let (conn, _) = Conn::connect(
            broker.mqtt,
            &Connect::v5(id).will(will("will/err", id.as_bytes())),
        );
        conn.disconnect(reason);
        assert_eq!(
            w.expect_publish().payload,
            id.as_bytes(),
            "DISCONNECT {reason:#04x}"
        );
    }
}

fn durable_broker(dir: &std::path::Path) -> Broker {
    Broker::start_with(BrokerOptions {
        data_dir: Some(dir.to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    })
}

fn kill_9(broker: &mut Broker) {
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
}

/// A persistent v5 subscriber `id` to `will/#`, reconnected after each restart. (A
/// persistent subscriber may get a message it acknowledged again after a crash, which
/// QoS 1 allows: each phase below watches with a session subscribed after the wills of
/// the phase before, so only a will published again could reach it.)
fn crash_watcher(broker: &Broker, id: &str) -> Conn {
    let c = Connect::v5(id).session_expiry(3600).clean(false);
    let (mut w, ack) = Conn::connect(broker.mqtt, &c);
    if !ack.session_present {
        w.sub("will/#", 1);
    }
    w
}

/// Connects every one of `clients` with a will on `will/<client id>`.
fn connect_with_wills(broker: &Broker, clients: &[Connect], payload: &[u8]) -> Vec<Conn> {
    clients
        .iter()
        .map(|c| {
            let topic = format!("will/{}", c.client_id);
            Conn::connect(broker.mqtt, &c.clone().will(will(&topic, payload))).0
        })
        .collect()
}

#[test]
fn wills_of_connections_live_at_kill_9_are_published_once_after_restart() {
    let dir = temp_dir();
    let mut broker = durable_broker(dir.path());
    // Wills dealt with before the crash are not published after it (a clean watcher
    // sees the one that was published; the crash watcher subscribes after it).
    let mut before = watcher(&broker, "will-crash-before");
    for (id, reason) in [("will-crash-normal", 0x00), ("will-crash-04", 0x04)] {
        let c = Connect::v5(id).will(will(&format!("will/{id}"), b"before"));
        Conn::connect(broker.mqtt, &c).0.disconnect(reason);
    }
    assert_eq!(before.expect_publish().topic, "will/will-crash-04");
    drop(crash_watcher(&broker, "will-crash-watch-1"));
    // One per kind of session, on both protocol levels; CONNACK means the will is logged.
    let clients = [
        Connect::v4("will-crash-clean"),
        Connect::v4("will-crash-persistent-4").clean(false),
        Connect::v5("will-crash-persistent-5").session_expiry(3600),
    ];
    let _live = connect_with_wills(&broker, &clients, b"crashed");
    kill_9(&mut broker);

    let mut broker = durable_broker(dir.path());
    let mut w = crash_watcher(&broker, "will-crash-watch-1");
    let mut got: Vec<String> = (0..clients.len())
        .map(|_| w.expect_publish().topic)
        .collect();
    got.sort();
    let mut want: Vec<String> = clients
        .iter()
        .map(|c| format!("will/{}", c.client_id))
        .collect();
    want.sort();
    assert_eq!(got, want);
    w.assert_no_publish(QUIET);
    drop(crash_watcher(&broker, "will-crash-watch-2"));

    // Published once: a second crash does not publish them again.
    kill_9(&mut broker);
    let broker = durable_broker(dir.path());
    let mut w = crash_watcher(&broker, "will-crash-watch-2");
    w.assert_no_publish(QUIET);
}

#[test]
fn a_will_delay_still_applies_to_a_connection_live_at_kill_9() {
    let dir = temp_dir();
    let mut broker = durable_broker(dir.path());
    drop(crash_watcher(&broker, "will-crash-watch"));
    let mut wl = will("will/crash/delayed", b"late");
    wl.props = Props::new().with(P_WILL_DELAY, Prop::U32(3));
    let c = Connect::v5("will-crash-delay").session_expiry(3600);
    let _live = Conn::connect(broker.mqtt, &c.will(wl)).0;
    kill_9(&mut broker);
    let broker = durable_broker(dir.path());
    let restarted = Instant::now();
    let mut w = crash_watcher(&broker, "will-crash-watch");
    let got = w
        .try_publish(Duration::from_secs(15))
        .expect("delayed will after restart");
    assert_eq!(got.payload, b"late");
    let took = restarted.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "will {took:?} after the restart, delay is 3 s"
    );
}

#[test]
fn a_will_cut_by_kill_9_is_published_after_a_restart_with_another_shard_count() {
    let dir = temp_dir();
    let mut broker = durable_broker(dir.path());
    drop(crash_watcher(&broker, "will-layout-watch"));
    let c = Connect::v4("will-layout").will(will("will/layout", b"moved"));
    let _live = Conn::connect(broker.mqtt, &c).0;
    kill_9(&mut broker);
    let broker = Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    });
    let mut w = crash_watcher(&broker, "will-layout-watch");
    assert_eq!(w.expect_publish().payload, b"moved");
    w.assert_no_publish(QUIET);
}

#[test]
fn a_graceful_stop_leaves_the_wills_of_connected_clients_to_the_next_start() {
    // v5 §3.1.2.5: the server closing the connection without the client's DISCONNECT
    // 0x00 publishes its will; a stopping broker leaves it to its next start, which
    // publishes it once, as for a crash.
    let dir = temp_dir();
    let mut broker = durable_broker(dir.path());
    drop(crash_watcher(&broker, "will-stop-watch"));
    let clients = [
        Connect::v4("will-stop-clean"),
        Connect::v5("will-stop-persistent").session_expiry(3600),
    ];
    let _live = connect_with_wills(&broker, &clients, b"stopped");
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some());
    let mut broker = durable_broker(dir.path());
    let mut w = crash_watcher(&broker, "will-stop-watch");
    let mut got: Vec<String> = w
        .drain_publishes(Duration::from_secs(5))
        .into_iter()
        .map(|p| p.topic)
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["will/will-stop-clean", "will/will-stop-persistent"],
        "{}",
        broker.log()
    );
    w.assert_no_publish(QUIET);
    drop(crash_watcher(&broker, "will-stop-watch-2"));
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some());
    let broker = durable_broker(dir.path());
    crash_watcher(&broker, "will-stop-watch-2").assert_no_publish(QUIET);
}

/// A persistent session taken over by a new connection on its own shard stays in place
/// (`park`, `resume_in_place`): the new connection's will is logged before its CONNACK
/// like any other, so a crash right after publishes it once.
#[test]
fn the_will_of_a_connection_that_took_its_session_over_in_place_survives_kill_9() {
    let dir = temp_dir();
    // One shard: the takeover is always on the session's own shard.
    let mut broker = Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    });
    let mut before = watcher(&broker, "will-in-place-before");
    let c = Connect::v5("will-in-place")
        .session_expiry(3600)
        .clean(false);
    let first = Conn::connect(
        broker.mqtt,
        &c.clone().will(will("will/in-place", b"first")),
    )
    .0;
    let _second = Conn::connect(broker.mqtt, &c.will(will("will/in-place", b"second"))).0;
    // The first connection ended without DISCONNECT: its will is due at the takeover.
    assert_eq!(before.expect_publish().payload, b"first");
    drop(first);
    drop(crash_watcher(&broker, "will-in-place-watch"));
    kill_9(&mut broker);

    let broker = Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    });
    let mut w = crash_watcher(&broker, "will-in-place-watch");
    let got = w.try_publish(Duration::from_secs(5)).map(|p| p.payload);
    assert_eq!(
        got.as_deref(),
        Some(&b"second"[..]),
        "the live connection's will"
    );
    w.assert_no_publish(QUIET);
}
