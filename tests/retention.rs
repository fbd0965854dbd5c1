//! WAL retention through the real broker: whole segments past the limit go only once no
//! persistent session needs them, and retained messages outlive the segment they were
//! first written in (also across kill -9).

mod common;

use std::time::Duration;

use common::raw::{self, Conn, Connect, Props, Publish, Reader, Will};
use common::*;

fn broker(dir: &std::path::Path) -> Broker {
    Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.to_path_buf()),
        env: vec![
            ("SHARDMQ_SEGMENT_BYTES".into(), "1048576".into()),
            // Everything but the active segment is over the limit.
            ("SHARDMQ_RETENTION_BYTES".into(), "1".into()),
        ],
        ..BrokerOptions::default()
    })
}

#[test]
fn segments_go_only_when_no_session_needs_them_and_retained_messages_stay() {
    let dir = temp_dir();
    let mut b = broker(dir.path());
    let session = Connect::v5("retention-sub")
        .clean(false)
        .session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub("ret/data", 1);
    sub.disconnect(0);
    let mut publ = Conn::client(b.mqtt, true, "retention-pub");
    publ.publish(Publish::new("ret/keep", b"retained", 1).retain(true));
    publ.publish(Publish::new("ret/data", b"for the offline session", 1));
    let bulk = vec![b'b'; 1024];
    for _ in 0..3000 {
        publ.publish(Publish::new("ret/bulk", &bulk, 1));
    }
    // Four floor rounds: the offline session's queued message holds the first segment.
    std::thread::sleep(Duration::from_millis(4500));
    let held = b.metric_sum("shardmq_wal_segments");
    assert!(held >= 3.0, "segments held by the session: {held}");

    let (mut sub, ack) = Conn::connect(b.mqtt, &session);
    assert!(ack.session_present);
    assert_eq!(sub.expect_publish().payload, b"for the offline session");
    assert!(
        eventually(Duration::from_secs(15), || b
            .metric_sum("shardmq_wal_segments")
            <= 2.0),
        "segments deleted once acknowledged: {}",
        b.metric_sum("shardmq_wal_segments")
    );
    sub.kill();
    b.child.kill().expect("SIGKILL");
    b.child.wait().unwrap();

    let b = broker(dir.path());
    let mut check = Conn::client(b.mqtt, true, "retention-check");
    check.sub("ret/keep", 1);
    let p = check.expect_publish();
    assert!(p.retain);
    assert_eq!(
        p.payload, b"retained",
        "written again before its segment went"
    );
}

fn broker_on(dir: &std::path::Path, shards: usize) -> Broker {
    Broker::start_with(BrokerOptions {
        shards,
        data_dir: Some(dir.to_path_buf()),
        env: vec![
            ("SHARDMQ_SEGMENT_BYTES".into(), "1048576".into()),
            ("SHARDMQ_RETENTION_BYTES".into(), "1".into()),
        ],
        ..BrokerOptions::default()
    })
}

fn kill_9(b: &mut Broker) {
    b.child.kill().expect("SIGKILL");
    b.child.wait().unwrap();
}

/// Publishes 3 MiB (QoS 1) on `topic` and waits until retention has deleted every
/// segment of its owner's log but the last two (the other shards' logs hold one each):
/// whatever that log held before is in a deleted segment.
fn fill_and_wait_for_retention(b: &Broker, shards: usize, topic: &str) {
    let mut publ = Conn::client(b.mqtt, true, "retention-bulk");
    let bulk = vec![b'b'; 1024];
    for _ in 0..3000 {
        publ.publish(Publish::new(topic, &bulk, 1));
    }
    assert!(
        eventually(Duration::from_secs(20), || b
            .metric_sum("shardmq_wal_segments")
            <= shards as f64 + 1.0),
        "old segments deleted: {}",
        b.metric_sum("shardmq_wal_segments")
    );
    // The deletion is applied after the floor round that allowed it.
    std::thread::sleep(Duration::from_millis(1500));
}

/// A persistent v5 watcher of `will/#`, subscribed (once) right before the crash.
fn will_watcher(b: &Broker) -> Conn {
    let c = Connect::v5("retention-will-watch")
        .session_expiry(3600)
        .clean(false);
    let (mut w, ack) = Conn::connect(b.mqtt, &c);
    if !ack.session_present {
        w.sub("will/#", 1);
    }
    w
}

/// A connection that stays connected longer than its `will` record's segment survives
/// keeps its will across kill -9 (published once after the restart, not again after a
/// second crash), and its persistent session stays, with its subscription.
#[test]
fn a_live_connections_will_and_session_outlive_their_segment() {
    let dir = temp_dir();
    let mut b = broker_on(dir.path(), 1);
    let will = |id: &str| Will {
        topic: format!("will/{id}"),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
        props: Props::new(),
    };
    let persistent = Connect::v5("retention-will-p")
        .session_expiry(3600)
        .clean(false);
    let (mut p, _) = Conn::connect(b.mqtt, &persistent.clone().will(will("retention-will-p")));
    p.sub("ret/session", 1);
    let clean = Connect::v4("retention-will-c");
    let (_c, _) = Conn::connect(b.mqtt, &clean.will(will("retention-will-c")));
    fill_and_wait_for_retention(&b, 1, "ret/bulk");
    will_watcher(&b).disconnect(0);
    kill_9(&mut b);

    let mut b = broker_on(dir.path(), 1);
    let mut w = will_watcher(&b);
    let mut got: Vec<String> = w
        .drain_publishes(Duration::from_secs(3))
        .into_iter()
        .map(|p| p.topic)
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["will/retention-will-c", "will/retention-will-p"],
        "each will published once after the crash"
    );
    let (mut p, ack) = Conn::connect(b.mqtt, &persistent);
    assert!(ack.session_present, "the persistent session survived");
    let mut publ = Conn::client(b.mqtt, true, "retention-after");
    publ.publish(Publish::new("ret/session", b"still subscribed", 1));
    assert_eq!(p.expect_publish().payload, b"still subscribed");
    p.disconnect(0);
    w.disconnect(0);

    kill_9(&mut b);
    let b = broker_on(dir.path(), 1);
    let mut w = will_watcher(&b);
    w.assert_no_publish(Duration::from_millis(1500));
}

/// A QoS 2 message PUBREC'd (its `qos2_delivered` record durable, PUBREL sent) but not
/// PUBCOMP'd is still owed only its PUBREL after kill -9, also when retention deleted the
/// segment of the session's home log that held that record.
#[test]
fn a_logged_qos2_release_outlives_its_segment() {
    let shards = 2;
    // The session's home log is not the topic's: only the home's records age out.
    let client = "retention-q2-sub";
    let home = shardmq::router::owner_of(client, shards).0;
    let topic = (0..)
        .map(|i| format!("ret/q2/{i}"))
        .find(|t| shardmq::router::owner_of(t, shards).0 != home)
        .unwrap();
    let bulk = (0..)
        .map(|i| format!("ret/bulk/{i}"))
        .find(|t| shardmq::router::owner_of(t, shards).0 == home)
        .unwrap();
    let dir = temp_dir();
    let mut b = broker_on(dir.path(), shards);
    let session = Connect::v5(client).session_expiry(3600).clean(false);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub(&topic, 2);
    sub.auto_ack = false;
    let mut publ = Conn::client(b.mqtt, true, "retention-q2-pub");
    publ.publish(Publish::new(&topic, b"once", 2));
    let first = sub.expect_publish();
    assert_eq!(first.payload, b"once");
    sub.ack(raw::PUBREC, first.pid);
    let rel = sub.expect_kind(raw::PUBREL);
    assert_eq!(Reader::new(&rel.body).u16(), first.pid);
    // No PUBCOMP: the exchange stays open, its release logged at the home.
    fill_and_wait_for_retention(&b, shards, &bulk);
    kill_9(&mut b);

    let b = broker_on(dir.path(), shards);
    let (mut sub, ack) = Conn::connect(b.mqtt, &session);
    assert!(ack.session_present, "the session survived");
    sub.auto_ack = false;
    let rel = sub.expect_kind(raw::PUBREL);
    assert_eq!(Reader::new(&rel.body).u16(), first.pid, "its PUBREL resent");
    sub.ack(raw::PUBCOMP, first.pid);
    let again = sub.drain_publishes(Duration::from_millis(1500));
    assert!(
        again.is_empty(),
        "a PUBREC'd message sent again as a PUBLISH: {again:?}"
    );
}
