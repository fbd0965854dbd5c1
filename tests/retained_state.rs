//! Retained state across restarts and under its limits: the last writer of a topic wins
//! after a restart (an expired retained message clears its topic rather than bringing
//! back the one it replaced), and `retained_bytes_max` bounds what retained messages hold.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

fn one_shard_in(dir: &std::path::Path, settings: &[(&str, &str)]) -> Broker {
    Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.to_path_buf()),
        env: settings
            .iter()
            .map(|(k, v)| (format!("SHARDMQ_{k}"), v.to_string()))
            .collect(),
        ..BrokerOptions::default()
    })
}

/// The retained messages a new subscriber to `filter` gets, sorted by topic.
fn retained(broker: &Broker, client_id: &str, filter: &str) -> Vec<(String, Vec<u8>)> {
    let mut sub = Conn::client(broker.mqtt, true, client_id);
    sub.sub(filter, 1);
    let mut got: Vec<(String, Vec<u8>)> = sub
        .drain_publishes(QUIET)
        .into_iter()
        .map(|p| {
            assert!(p.retain, "only retained messages were published");
            (p.topic, p.payload)
        })
        .collect();
    got.sort();
    got
}

#[test]
fn an_expired_retained_message_does_not_bring_back_the_one_it_replaced() {
    let dir = temp_dir();
    let mut broker = one_shard_in(dir.path(), &[]);
    let mut publ = Conn::client(broker.mqtt, true, "expiry-pub");
    let expiry_secs = 2;
    assert_eq!(
        publ.publish(Publish::new("ex/t", b"old", 1).retain(true)),
        0
    );
    let replaced_at = Instant::now();
    let short = Publish::new("ex/t", b"short-lived", 1)
        .retain(true)
        .prop(P_MESSAGE_EXPIRY, Prop::U32(expiry_secs));
    assert_eq!(publ.publish(short), 0);
    assert_eq!(
        retained(&broker, "expiry-before", "ex/#"),
        vec![("ex/t".to_string(), b"short-lived".to_vec())]
    );
    let expired_at = replaced_at + Duration::from_secs(u64::from(expiry_secs));
    std::thread::sleep(expired_at.saturating_duration_since(Instant::now()) + QUIET);
    assert_eq!(retained(&broker, "expiry-after", "ex/#"), vec![]);
    drop(publ);
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some());

    let broker = one_shard_in(dir.path(), &[]);
    assert_eq!(
        retained(&broker, "expiry-restarted", "ex/#"),
        vec![],
        "the expired message was the last writer: {}",
        broker.log()
    );
}

#[test]
fn retained_bytes_over_the_limit_are_not_stored() {
    // One shard, 10 KiB of retained messages; each 3000-byte payload costs a bit more.
    let dir = temp_dir();
    let mut broker = one_shard_in(dir.path(), &[("RETAINED_BYTES_MAX", "10240")]);
    let mut v5 = Conn::client(broker.mqtt, true, "bytes-pub5");
    let mut v4 = Conn::client(broker.mqtt, false, "bytes-pub4");
    let mut live = Conn::client(broker.mqtt, true, "bytes-live");
    live.sub("b/#", 1);
    let big = vec![b'x'; 3000];
    for topic in ["b/1", "b/2", "b/3"] {
        assert_eq!(v5.publish(Publish::new(topic, &big, 1).retain(true)), 0);
    }
    assert_eq!(live.expect_publishes(3).len(), 3);
    // A fourth would pass 10 KiB: a v5 QoS 1 publisher is told, nothing is delivered.
    assert_eq!(v5.publish(Publish::new("b/4", &big, 1).retain(true)), 0x97);
    live.assert_no_publish(QUIET);
    // Nor may a stored topic grow past it.
    let bigger = vec![b'y'; 4200];
    assert_eq!(
        v5.publish(Publish::new("b/1", &bigger, 1).retain(true)),
        0x97
    );
    // Replacing one with a smaller message is fine.
    assert_eq!(v5.publish(Publish::new("b/1", b"small", 1).retain(true)), 0);
    assert_eq!(live.expect_publish().payload, b"small");
    // QoS 0 and 3.1.1 publishers cannot be told: delivered as plain publishes.
    v5.publish(Publish::new("b/5", &bigger, 0).retain(true));
    assert_eq!(
        v4.publish(Publish::new("b/6", &[b'z'; 6000], 1).retain(true)),
        0
    );
    let plain = live.expect_publishes(2);
    assert!(plain.iter().all(|p| !p.retain));
    assert_eq!(broker.limit_hits("retained_bytes_max"), 4.0);
    let stored = |broker: &Broker, id: &str| -> Vec<(String, usize)> {
        retained(broker, id, "b/#")
            .into_iter()
            .map(|(t, p)| (t, p.len()))
            .collect()
    };
    let want = vec![
        ("b/1".to_string(), 5),
        ("b/2".into(), 3000),
        ("b/3".into(), 3000),
    ];
    assert_eq!(stored(&broker, "bytes-late"), want);
    // Clearing one makes room; and the bound holds across a restart.
    assert_eq!(v5.publish(Publish::new("b/2", b"", 1).retain(true)), 0);
    assert_eq!(v5.publish(Publish::new("b/4", &bigger, 1).retain(true)), 0);
    drop((v5, v4, live));
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some());
    let broker = one_shard_in(dir.path(), &[("RETAINED_BYTES_MAX", "10240")]);
    let want = vec![
        ("b/1".to_string(), 5),
        ("b/3".into(), 3000),
        ("b/4".into(), 4200),
    ];
    assert_eq!(stored(&broker, "bytes-restarted"), want);
    let mut v5 = Conn::client(broker.mqtt, true, "bytes-pub5-again");
    assert_eq!(v5.publish(Publish::new("b/7", &big, 1).retain(true)), 0x97);
}

/// A retained publish that lands while retention is writing the topic's older message
/// again (to free its segment) stays the topic's retained message across a restart.
#[test]
fn a_newer_retained_publish_during_retention_copies_wins_after_a_restart() {
    let dir = temp_dir();
    let settings = [("SEGMENT_BYTES", "1048576"), ("RETENTION_BYTES", "1")];
    let mut broker = one_shard_in(dir.path(), &settings);
    let mut publ = Conn::client(broker.mqtt, true, "copy-pub");
    let topics = names("rw/t", 400);
    let old = vec![b'a'; 1000];
    for t in &topics {
        assert_eq!(publ.publish(Publish::new(t, &old, 1).retain(true)), 0);
    }
    // Past the first segment: retention wants it, so the 400 messages are copied.
    let bulk = vec![b'b'; 1000];
    for _ in 0..700 {
        assert_eq!(publ.publish(Publish::new("rw-bulk", &bulk, 1)), 0);
    }
    // Nothing else appends now: the first new append is retention's first copy.
    let appends = |b: &Broker| b.metric_sum("shardmq_wal_appends_total");
    let idle = appends(&broker);
    assert!(
        eventually(Duration::from_secs(30), || appends(&broker) > idle),
        "retention never copied the retained messages"
    );
    // While the copies go on (one fdatasync each), replace every topic, last copied first.
    for t in topics.iter().rev() {
        let new = format!("new {t}");
        assert_eq!(
            publ.publish(Publish::new(t, new.as_bytes(), 1).retain(true)),
            0
        );
    }
    assert!(
        eventually(Duration::from_secs(30), || {
            broker.metric_sum("shardmq_wal_segments") <= 2.0
        }),
        "the first segment went"
    );
    drop(publ);
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("wait");

    let broker = one_shard_in(dir.path(), &settings);
    let got = retained(&broker, "copy-check", "rw/#");
    let stale: Vec<&String> = got
        .iter()
        .filter(|(t, p)| *p != format!("new {t}").into_bytes())
        .map(|(t, _)| t)
        .collect();
    assert_eq!(got.len(), topics.len());
    assert!(
        stale.is_empty(),
        "{} of {} topics came back with the replaced message, e.g. {:?}",
        stale.len(),
        topics.len(),
        stale.first()
    );
}
