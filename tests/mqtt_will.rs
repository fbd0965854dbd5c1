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
