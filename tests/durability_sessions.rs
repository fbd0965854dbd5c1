//! Persistent sessions through `kill -9`: under `fsync_policy = "always"` every PUBACKed
//! message reaches a persistent-session subscriber after the restart (duplicates allowed,
//! loss never), and the session's subscriptions survive with it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::load::{start_publisher, start_subscriber};
use common::raw::{Conn, Connect, Publish};
use common::*;

fn durable_broker(data_dir: PathBuf, shards: usize) -> Broker {
    Broker::start_with(BrokerOptions {
        shards,
        data_dir: Some(data_dir),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    })
}

fn kill_9(broker: &mut Broker) {
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_qos1_reaches_a_persistent_subscriber_across_kill_9() {
    let dir = temp_dir();
    let mut broker = durable_broker(dir.path().to_path_buf(), 2);
    let (got_tx, got) = mpsc::channel::<String>();
    let sub = start_subscriber(broker.mqtt, "crash-sub", Some("load/#"), got_tx.clone());

    // Four publishers on topics spread over both shards, killed mid-stream.
    let (acked_tx, acked) = mpsc::channel();
    let topics = names("load/t", 4);
    for (i, topic) in topics.iter().enumerate() {
        start_publisher(
            broker.mqtt,
            format!("crash-pub-{i}"),
            topic.clone(),
            100_000,
            acked_tx.clone(),
        );
    }
    drop(acked_tx);
    let mut highest: HashMap<String, u64> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        if let Ok((topic, seq)) = acked.recv_timeout(Duration::from_millis(50)) {
            highest.insert(topic, seq);
        }
    }
    kill_9(&mut broker);
    // Acks already on the wire before the kill still count.
    while let Ok((topic, seq)) = acked.recv_timeout(Duration::from_millis(200)) {
        highest.insert(topic, seq);
    }
    drop(sub);
    let acked_total: u64 = highest.values().map(|s| s + 1).sum();
    assert!(acked_total >= 100, "the load ran: {highest:?}");

    let broker = durable_broker(dir.path().to_path_buf(), 2);
    let _sub = start_subscriber(broker.mqtt, "crash-sub", None, got_tx);
    let mut received: BTreeSet<String> = BTreeSet::new();
    let mut deliveries = 0u64;
    let want: BTreeSet<String> = topics
        .iter()
        .enumerate()
        .flat_map(|(i, topic)| {
            let n = highest.get(topic).map_or(0, |s| s + 1);
            (0..n).map(move |seq| format!("crash-pub-{i}:{seq}"))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_subset(&received) && Instant::now() < deadline {
        while let Ok(payload) = got.recv_timeout(Duration::from_millis(100)) {
            received.insert(payload);
            deliveries += 1;
        }
    }
    let lost: Vec<&String> = want.difference(&received).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {lost:?}",
        want.difference(&received).count(),
        want.len()
    );
    eprintln!(
        "acked {} messages; the subscriber got {} distinct in {} deliveries",
        want.len(),
        received.len(),
        deliveries
    );
}

fn v5_persistent(client_id: &str) -> Connect {
    Connect::v5(client_id).clean(false).session_expiry(3600)
}

#[test]
fn subscriptions_and_queued_messages_of_an_offline_session_survive_kill_9() {
    let dir = temp_dir();
    let topics_a = names("keep/a", 8);
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 2);
        let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("offline-sub"));
        assert!(!ack.session_present);
        sub.sub("keep/#", 2);
        sub.sub("gone/#", 1);
        assert_eq!(sub.unsubscribe(&["gone/#"]), vec![0]);
        sub.disconnect(0);
        let mut publ = Conn::client(broker.mqtt, true, "offline-pub");
        for (i, t) in topics_a.iter().enumerate() {
            let code = publ.publish(Publish::new(t, t.as_bytes(), 1 + (i % 2) as u8));
            assert!(code < 0x80, "publish acknowledged with success: {code:#x}");
        }
        publ.publish(Publish::new("gone/x", b"unsubscribed", 1));
        kill_9(&mut broker);
    }
    let broker = durable_broker(dir.path().to_path_buf(), 2);
    assert_eq!(broker.metric_sum("shardmq_sessions_current"), 1.0);
    let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("offline-sub"));
    assert!(ack.session_present, "the session survived the crash");
    let mut got: Vec<(String, u8)> = sub
        .expect_publishes(topics_a.len())
        .into_iter()
        .map(|p| (String::from_utf8(p.payload).unwrap(), p.qos))
        .collect();
    got.sort();
    let mut want: Vec<(String, u8)> = topics_a
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), 1 + (i % 2) as u8))
        .collect();
    want.sort();
    assert_eq!(got, want, "every queued message, at its QoS");
    sub.assert_no_publish(Duration::from_millis(300));

    // The subscription itself is back: a new publish is routed to the session.
    let mut publ = Conn::client(broker.mqtt, true, "offline-pub-2");
    publ.publish(Publish::new("keep/after", b"live", 1));
    publ.publish(Publish::new("gone/after", b"unsubscribed", 1));
    let p = sub.expect_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("keep/after", &b"live"[..])
    );
    sub.assert_no_publish(Duration::from_millis(300));
}

/// MQTT: a subscription gets what is published after it. Messages acknowledged right
/// before the SUBSCRIBE (well within the owners' one-second watermark) are logged on both
/// shards; the subscriber's session goes offline and the broker is killed: the replay
/// after the restart brings only the message published after the SUBACK.
#[test]
fn a_replay_after_kill_9_brings_nothing_published_before_the_subscribe() {
    let dir = temp_dir();
    let before = names("since/before", 16);
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 2);
        let (sub, _) = Conn::connect(broker.mqtt, &v5_persistent("since-sub"));
        let mut publ = Conn::client(broker.mqtt, true, "since-pub");
        for t in &before {
            let code = publ.publish(Publish::new(t, b"before", 1));
            assert!(code < 0x80, "publish acknowledged with success: {code:#x}");
        }
        let mut sub = sub;
        sub.sub("since/#", 1);
        sub.disconnect(0);
        let code = publ.publish(Publish::new("since/after", b"after", 1));
        assert!(code < 0x80, "publish acknowledged with success: {code:#x}");
        kill_9(&mut broker);
    }
    let broker = durable_broker(dir.path().to_path_buf(), 2);
    let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("since-sub"));
    assert!(ack.session_present, "the session survived the crash");
    // Until the one owed arrives, then a while longer (the owners replay in parallel).
    let mut got = Vec::new();
    while !got.iter().any(|t| t == "since/after") {
        got.push(sub.expect_publish().topic);
    }
    got.extend(
        sub.drain_publishes(Duration::from_millis(500))
            .into_iter()
            .map(|p| p.topic),
    );
    assert_eq!(got, vec!["since/after".to_string()]);
}

#[test]
fn acknowledged_messages_are_not_replayed_and_clean_start_forgets_the_session() {
    let dir = temp_dir();
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 2);
        let (mut sub, _) = Conn::connect(broker.mqtt, &v5_persistent("acked-sub"));
        sub.sub("acked/#", 1);
        let mut publ = Conn::client(broker.mqtt, true, "acked-pub");
        for t in names("acked/t", 6) {
            publ.publish(Publish::new(&t, b"seen", 1));
        }
        assert_eq!(sub.expect_publishes(6).len(), 6);
        // The subscriber acknowledged all six; give the cursor time to be logged.
        std::thread::sleep(Duration::from_millis(800));
        publ.publish(Publish::new("acked/late", b"unseen", 1));
        sub.kill();
        kill_9(&mut broker);
    }
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 2);
        let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("acked-sub"));
        assert!(ack.session_present);
        let mut payloads: Vec<Vec<u8>> = sub
            .drain_publishes(Duration::from_millis(800))
            .into_iter()
            .map(|p| p.payload)
            .collect();
        payloads.dedup();
        assert_eq!(
            payloads,
            vec![b"unseen".to_vec()],
            "only what was not acknowledged comes again"
        );
        sub.kill();
        kill_9(&mut broker);
    }
    let mut broker = durable_broker(dir.path().to_path_buf(), 2);
    let (fresh, ack) = Conn::connect(broker.mqtt, &Connect::v5("acked-sub").clean(true));
    assert!(!ack.session_present);
    fresh.disconnect(0);
    kill_9(&mut broker);
    let broker = durable_broker(dir.path().to_path_buf(), 2);
    assert_eq!(broker.metric_sum("shardmq_sessions_current"), 0.0);
    let (_, ack) = Conn::connect(broker.mqtt, &v5_persistent("acked-sub"));
    assert!(
        !ack.session_present,
        "the clean start ended the logged session for good"
    );
}

#[test]
fn a_changed_shard_count_loses_no_session_message_or_retained_message() {
    let dir = temp_dir();
    let queued = names("move/t", 16);
    let retained = names("moveret/r", 8);
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 2);
        let (mut sub, _) = Conn::connect(broker.mqtt, &v5_persistent("move-sub"));
        sub.sub("move/#", 1);
        sub.disconnect(0);
        let mut publ = Conn::client(broker.mqtt, true, "move-pub");
        for t in &queued {
            publ.publish(Publish::new(t, t.as_bytes(), 1));
        }
        for t in &retained {
            publ.publish(Publish::new(t, t.as_bytes(), 1).retain(true));
        }
        kill_9(&mut broker);
    }
    let layout = || std::fs::read_to_string(dir.path().join("layout")).unwrap();
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 1);
        assert_eq!(layout().trim(), "shards = 1");
        assert!(
            !dir.path().join("shard-1").exists(),
            "the old layout is gone"
        );
        assert_eq!(broker.metric_sum("shardmq_retained_messages_current"), 8.0);
        let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("move-sub"));
        assert!(ack.session_present, "the session moved to its new home");
        let mut got: Vec<String> = sub
            .expect_publishes(queued.len())
            .into_iter()
            .map(|p| p.topic)
            .collect();
        got.sort();
        let mut want = queued.clone();
        want.sort();
        assert_eq!(got, want);
        sub.assert_no_publish(Duration::from_millis(300));
        sub.disconnect(0);
        // Acknowledged above; these four are not.
        let mut publ = Conn::client(broker.mqtt, true, "move-pub");
        for t in &queued[..4] {
            publ.publish(Publish::new(t, b"again", 1));
        }
        std::thread::sleep(Duration::from_millis(800));
        kill_9(&mut broker);
    }
    let broker = durable_broker(dir.path().to_path_buf(), 2);
    assert_eq!(layout().trim(), "shards = 2");
    let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("move-sub"));
    assert!(ack.session_present);
    let mut got: Vec<(String, Vec<u8>)> = sub
        .drain_publishes(Duration::from_millis(1000))
        .into_iter()
        .map(|p| (p.topic, p.payload))
        .collect();
    let want: Vec<(String, Vec<u8>)> = queued[..4]
        .iter()
        .map(|t| (t.clone(), b"again".to_vec()))
        .collect();
    // Order holds per topic; these four topics have one message each.
    got.sort();
    assert_eq!(got, want, "exactly the unacknowledged messages");
    let mut fresh = Conn::client(broker.mqtt, true, "move-check");
    fresh.sub("moveret/#", 1);
    let mut topics: Vec<String> = fresh
        .expect_publishes(8)
        .into_iter()
        .map(|p| p.topic)
        .collect();
    topics.sort();
    let mut want = retained.clone();
    want.sort();
    assert_eq!(topics, want, "retained messages followed both changes");
}

/// Copies a stopped broker's data dir (the lock file included; it is free once the
/// broker is gone).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

#[test]
fn a_layout_change_interrupted_by_a_crash_is_finished_at_the_next_start() {
    let prepared = temp_dir();
    {
        let mut broker = durable_broker(prepared.path().to_path_buf(), 2);
        let (mut sub, _) = Conn::connect(broker.mqtt, &v5_persistent("interrupted-sub"));
        sub.sub("int/#", 1);
        sub.disconnect(0);
        let mut publ = Conn::client(broker.mqtt, true, "interrupted-pub");
        for t in names("int/t", 6) {
            publ.publish(Publish::new(&t, b"kept", 1));
        }
        kill_9(&mut broker);
    }
    let interrupted = |dir: &std::path::Path| {
        let mig = dir.join("migrating");
        std::fs::create_dir(&mig).unwrap();
        std::fs::write(mig.join("from"), "2\n").unwrap();
        std::fs::rename(dir.join("shard-1"), mig.join("shard-1")).unwrap();
        mig
    };
    // 1. A crash between the renames of step 1.
    let mid_rename = temp_dir();
    copy_dir(prepared.path(), mid_rename.path());
    interrupted(mid_rename.path());
    // 2. A crash during the rewrite: everything moved, partial new logs left behind.
    let mid_rewrite = temp_dir();
    copy_dir(prepared.path(), mid_rewrite.path());
    let mig = interrupted(mid_rewrite.path());
    std::fs::rename(mid_rewrite.path().join("shard-0"), mig.join("shard-0")).unwrap();
    std::fs::write(mig.join("moved"), "").unwrap();
    std::fs::create_dir(mid_rewrite.path().join("shard-0")).unwrap();
    std::fs::write(
        mid_rewrite.path().join("shard-0/00000000000000000000.log"),
        vec![0xA5u8; 8192],
    )
    .unwrap();

    for dir in [mid_rename.path(), mid_rewrite.path()] {
        let broker = durable_broker(dir.to_path_buf(), 1);
        assert!(!dir.join("migrating").exists(), "the migration finished");
        let (mut sub, ack) = Conn::connect(broker.mqtt, &v5_persistent("interrupted-sub"));
        assert!(ack.session_present);
        let got = sub.expect_publishes(6);
        assert!(got.iter().all(|p| p.payload == b"kept"));
        sub.assert_no_publish(Duration::from_millis(300));
    }
}

#[test]
fn a_subscriber_that_stops_reading_gets_every_acknowledged_message_from_the_log() {
    let broker = Broker::start_with(BrokerOptions {
        env: vec![
            ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX".into(), "64".into()),
            ("SHARDMQ_INFLIGHT_COUNT_MAX".into(), "16".into()),
        ],
        ..BrokerOptions::default()
    });
    let mut slow = Conn::client(broker.mqtt, true, "stalled-sub");
    slow.sub("stalled/#", 1);
    // The subscriber reads nothing while 2,000 QoS 1 messages are acknowledged.
    let topics = names("stalled/t", 4);
    let mut publ = Conn::client(broker.mqtt, true, "stalled-pub");
    let payload = vec![b'x'; 512];
    for seq in 0..500u32 {
        for t in &topics {
            let mut body = seq.to_be_bytes().to_vec();
            body.extend_from_slice(&payload);
            let code = publ.publish(Publish::new(t, &body, 1));
            assert!(code < 0x80, "acknowledged: {code:#x}");
        }
    }
    assert!(
        broker.metric_sum("shardmq_deliveries_deferred_total") > 0.0,
        "the 64-message queue overflowed into the log"
    );
    let mut next: HashMap<String, u32> = HashMap::new();
    let mut got = 0;
    while got < 2000 {
        let p = slow
            .try_publish(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("only {got} of 2000 arrived"));
        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        let want = next.entry(p.topic.clone()).or_insert(0);
        assert_eq!(seq, *want, "{}: in order, none lost or doubled", p.topic);
        *want += 1;
        got += 1;
    }
    slow.assert_no_publish(Duration::from_millis(300));
    assert!(broker.metric_sum("shardmq_catch_up_messages_total") > 0.0);
    assert_eq!(broker.metric_sum("shardmq_messages_dropped_total"), 0.0);
}

#[test]
fn a_delayed_will_outlives_kill_9_and_fires_once() {
    use common::raw::{Prop, Props, Will, P_WILL_DELAY};
    let dir = temp_dir();
    {
        let mut broker = durable_broker(dir.path().to_path_buf(), 2);
        let will = Will {
            topic: "wills/kept".into(),
            payload: b"gone for good".to_vec(),
            qos: 1,
            retain: false,
            props: Props::new().with(P_WILL_DELAY, Prop::U32(3)),
        };
        let (conn, _) = Conn::connect(broker.mqtt, &v5_persistent("will-keeper").will(will));
        conn.kill();
        // Let the detach record reach the home's log, then crash well before the delay.
        std::thread::sleep(Duration::from_millis(500));
        kill_9(&mut broker);
    }
    let mut broker = durable_broker(dir.path().to_path_buf(), 2);
    let mut watcher = Conn::client(broker.mqtt, true, "will-watcher");
    watcher.sub("wills/#", 1);
    let p = watcher
        .try_publish(Duration::from_secs(8))
        .expect("the delayed will is published after the restart");
    assert_eq!(p.payload, b"gone for good");
    watcher.assert_no_publish(Duration::from_millis(500));
    kill_9(&mut broker);
    let broker = durable_broker(dir.path().to_path_buf(), 2);
    let mut watcher = Conn::client(broker.mqtt, true, "will-watcher-2");
    watcher.sub("wills/#", 1);
    watcher.assert_no_publish(Duration::from_secs(4));
}
