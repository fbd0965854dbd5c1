//! Every configured limit, through the public surface: the limit is enforced, its hit
//! is counted in `shardmq_limit_hits_total{limit="<key>"}`, and other clients keep
//! working while it holds.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

/// A publisher and a subscriber that are not at any limit still talk.
fn assert_pub_sub_works(broker: &Broker, a: &mut Conn, b: &mut Conn, topic: &str) {
    b.sub(topic, 1);
    assert_eq!(a.publish(Publish::new(topic, b"still here", 1)), 0);
    let got = b.expect_publish();
    assert_eq!(got.payload, b"still here", "{}", broker.log());
}

fn one_shard(settings: &[(&str, &str)]) -> Broker {
    broker_with_shards(1, settings)
}

#[test]
fn connections_over_connections_max_get_quota_exceeded() {
    let broker = broker_with(&[("CONNECTIONS_MAX", "3")]);
    let mut a = Conn::client(broker.mqtt, true, "cmax-a");
    let mut b = Conn::client(broker.mqtt, false, "cmax-b");
    let _c = Conn::client(broker.mqtt, true, "cmax-c");

    let (mut v5, ack) = Conn::connect_raw(broker.mqtt, &Connect::v5("cmax-d"));
    assert_eq!(ack.code, 0x97, "v5 refusal is Quota exceeded");
    v5.expect_closed(WAIT);
    let (mut v4, ack) = Conn::connect_raw(broker.mqtt, &Connect::v4("cmax-e"));
    assert_eq!(ack.code, 3, "3.1.1 refusal is server unavailable");
    v4.expect_closed(WAIT);

    assert_eq!(broker.limit_hits("connections_max"), 2.0);
    assert_pub_sub_works(&broker, &mut a, &mut b, "cmax/t");

    // A slot freed by a leaving client is available again.
    a.disconnect(0);
    assert!(eventually(WAIT, || broker
        .metric_sum("shardmq_connections_current")
        == 2.0));
    let mut again = Conn::client(broker.mqtt, true, "cmax-f");
    again.ping();
    again.expect_kind(PINGRESP);
}

#[test]
fn connections_over_the_shard_limit_are_refused() {
    let broker = one_shard(&[("CONNECTIONS_PER_SHARD_MAX", "2")]);
    let mut a = Conn::client(broker.mqtt, true, "cps-a");
    let mut b = Conn::client(broker.mqtt, true, "cps-b");
    let (mut c, ack) = Conn::connect_raw(broker.mqtt, &Connect::v5("cps-c"));
    assert_eq!(ack.code, 0x97);
    c.expect_closed(WAIT);
    assert_eq!(broker.limit_hits("connections_per_shard_max"), 1.0);
    assert_eq!(broker.limit_hits("connections_max"), 0.0);
    assert_pub_sub_works(&broker, &mut a, &mut b, "cps/t");
}

#[test]
fn a_flood_over_the_limit_is_closed_without_waiting_for_connect() {
    // More silent connections over the limit than the broker refuses politely at once:
    // the surplus is closed at accept, and nothing waits for the connect timeout.
    let broker = one_shard(&[("CONNECTIONS_MAX", "1"), ("CONNECT_TIMEOUT_MS", "30000")]);
    let mut held = Conn::client(broker.mqtt, true, "flood-held");
    let silent: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(broker.mqtt).expect("tcp connect"))
        .collect();
    assert!(eventually(WAIT, || broker.limit_hits("connections_max") >= 200.0));
    let started = Instant::now();
    let closed = silent
        .into_iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut byte = [0u8; 1];
            matches!(std::io::Read::read(&mut &*s, &mut byte), Ok(0) | Err(_))
        })
        .count();
    assert_eq!(closed, 200, "every refused connection is closed");
    assert!(started.elapsed() < Duration::from_secs(10));
    held.ping();
    held.expect_kind(PINGRESP);
}

#[test]
fn connect_timeout_is_a_deadline_for_the_whole_connect() {
    let broker = broker_with(&[("CONNECT_TIMEOUT_MS", "1000")]);
    // One byte every 200 ms: the 30-odd bytes of this CONNECT would take over 6 s.
    let trickle = Connect::v5("trickle").encode();
    let mut slow = std::net::TcpStream::connect(broker.mqtt).unwrap();
    let started = Instant::now();
    let mut cut_after = None;
    for byte in &trickle {
        if slow.write_all(&[*byte]).is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    // Writes may still succeed for a moment after the close; reading tells for sure.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut slow, &mut buf);
    let closed_at = cut_after.unwrap_or_else(|| started.elapsed());
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the trickling client got {read:?} instead of a close"
    );
    assert!(
        closed_at < Duration::from_millis(3000),
        "closed after {closed_at:?}, deadline 1 s"
    );
    // A client that says nothing at all is dropped too.
    let mut silent = Conn::open(broker.mqtt, true);
    let began = Instant::now();
    silent.expect_closed(WAIT);
    assert!(began.elapsed() < Duration::from_secs(3));
    assert!(eventually(WAIT, || broker.limit_hits("connect_timeout_ms") >= 2.0));
    // A prompt client is not affected.
    let mut a = Conn::client(broker.mqtt, true, "prompt-a");
    let mut b = Conn::client(broker.mqtt, false, "prompt-b");
    assert_pub_sub_works(&broker, &mut a, &mut b, "prompt/t");
}

#[test]
fn subscriptions_over_the_session_limit_get_quota_exceeded() {
    let broker = broker_with(&[("SUBSCRIPTIONS_PER_SESSION_MAX", "3")]);
    let mut v5 = Conn::client(broker.mqtt, true, "subs-5");
    let codes = v5.subscribe_with(
        &[
            ("s/1", 1),
            ("s/2", 1),
            ("s/1", 0),
            ("s/3", 1),
            ("s/4", 1),
            ("s/5", 0),
        ],
        Props::new(),
    );
    // s/1 twice counts once; s/4 and s/5 are over the limit.
    assert_eq!(codes, vec![1, 1, 0, 1, 0x97, 0x97]);
    // Re-subscribing a held filter at the limit is a replacement, not a new one.
    assert_eq!(v5.subscribe_with(&[("s/2", 0)], Props::new()), vec![0]);
    assert_eq!(v5.subscribe_with(&[("s/6", 0)], Props::new()), vec![0x97]);
    // Unsubscribing makes room.
    assert_eq!(v5.unsubscribe(&["s/3"]), vec![0]);
    assert_eq!(v5.subscribe_with(&[("s/6", 1)], Props::new()), vec![1]);

    let mut v4 = Conn::client(broker.mqtt, false, "subs-4");
    let codes = v4.subscribe_with(
        &[("t/1", 1), ("t/2", 1), ("t/3", 1), ("t/4", 1)],
        Props::new(),
    );
    assert_eq!(codes, vec![1, 1, 1, 0x80], "3.1.1 failure code");
    assert_eq!(broker.limit_hits("subscriptions_per_session_max"), 4.0);

    // The granted subscriptions deliver; the refused ones do not.
    let mut publ = Conn::client(broker.mqtt, true, "subs-pub");
    publ.publish(Publish::new("s/6", b"six", 1));
    assert_eq!(v5.expect_publish().payload, b"six");
    publ.publish(Publish::new("s/4", b"four", 1));
    v5.assert_no_publish(QUIET);
    publ.publish(Publish::new("t/3", b"three", 1));
    assert_eq!(v4.expect_publish().payload, b"three");
}

#[test]
fn retained_topics_over_the_limit_are_not_stored() {
    let broker = one_shard(&[("RETAINED_MESSAGES_MAX", "2")]);
    let mut v5 = Conn::client(broker.mqtt, true, "ret-pub5");
    let mut v4 = Conn::client(broker.mqtt, false, "ret-pub4");
    let mut live = Conn::client(broker.mqtt, true, "ret-live");
    live.sub("r/#", 1);

    assert_eq!(v5.publish(Publish::new("r/a", b"a1", 1).retain(true)), 0);
    assert_eq!(v5.publish(Publish::new("r/b", b"b1", 1).retain(true)), 0);
    assert_eq!(live.expect_publishes(2).len(), 2);
    // A third topic: a v5 QoS 1 publisher is told, and nothing is delivered.
    assert_eq!(v5.publish(Publish::new("r/c", b"c1", 1).retain(true)), 0x97);
    live.assert_no_publish(QUIET);
    // Replacing a stored topic is not a new one.
    assert_eq!(v5.publish(Publish::new("r/a", b"a2", 1).retain(true)), 0);
    assert_eq!(live.expect_publish().payload, b"a2");
    // QoS 0 and 3.1.1 publishers cannot be told: delivered as plain publishes.
    v5.publish(Publish::new("r/d", b"d0", 0).retain(true));
    assert_eq!(v4.publish(Publish::new("r/e", b"e1", 1).retain(true)), 0);
    let plain = live.expect_publishes(2);
    assert!(plain.iter().all(|p| !p.retain));
    assert_eq!(broker.limit_hits("retained_messages_max"), 3.0);

    // Only the two admitted topics are retained.
    let mut late = Conn::client(broker.mqtt, true, "ret-late");
    late.sub("r/#", 1);
    let mut got: Vec<(String, Vec<u8>)> = late
        .expect_publishes(2)
        .into_iter()
        .map(|p| (p.topic, p.payload))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("r/a".into(), b"a2".to_vec()),
            ("r/b".into(), b"b1".to_vec())
        ]
    );
    late.assert_no_publish(QUIET);
    // Clearing one makes room for a new topic.
    assert_eq!(v5.publish(Publish::new("r/b", b"", 1).retain(true)), 0);
    assert_eq!(v5.publish(Publish::new("r/c", b"c2", 1).retain(true)), 0);
}

#[test]
fn retained_limit_survives_a_restart() {
    let dir = temp_dir();
    let start = |max: &str| {
        Broker::start_with(BrokerOptions {
            shards: 1,
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![("SHARDMQ_RETAINED_MESSAGES_MAX".into(), max.into())],
            ..BrokerOptions::default()
        })
    };
    let broker = start("2");
    let mut v4 = Conn::client(broker.mqtt, false, "restart-pub");
    for topic in ["k/1", "k/2", "k/3", "k/4"] {
        assert_eq!(v4.publish(Publish::new(topic, b"x", 1).retain(true)), 0);
    }
    drop(v4);
    drop(broker);
    // The plain publishes the limit turned away do not come back as retained.
    let broker = start("10");
    let mut sub = Conn::client(broker.mqtt, true, "restart-sub");
    sub.sub("k/#", 0);
    let mut topics: Vec<String> = sub
        .drain_publishes(QUIET)
        .into_iter()
        .map(|p| p.topic)
        .collect();
    topics.sort();
    assert_eq!(topics, vec!["k/1", "k/2"], "{}", broker.log());
}

#[test]
fn inflight_and_queue_limits_hold_deliveries_and_count() {
    let broker = broker_with(&[
        ("INFLIGHT_COUNT_MAX", "2"),
        ("SESSION_QUEUE_MESSAGES_MAX", "5"),
    ]);
    let mut sub = Conn::client(broker.mqtt, true, "lim-sub");
    sub.auto_ack = false;
    sub.sub("lim/t", 1);
    let mut publ = Conn::client(broker.mqtt, true, "lim-pub");
    for i in 0..20u8 {
        assert_eq!(publ.publish(Publish::new("lim/t", &[i], 1)), 0);
    }
    // Two in flight, five queued, thirteen left in the log (QoS 1 is never dropped).
    let first = sub.drain_publishes(QUIET);
    assert_eq!(first.len(), 2, "the in-flight window");
    assert!(broker.limit_hits("inflight_count_max") >= 1.0);
    assert!(eventually(WAIT, || broker
        .limit_hits("session_queue_messages_max")
        >= 1.0));
    assert_eq!(broker.metric_sum("shardmq_deliveries_deferred_total"), 13.0);
    assert_eq!(
        broker.metric_sum_labelled("shardmq_messages_dropped_total", "qos=\"1\""),
        0.0
    );
    // Acks move the queue on, then the log catches the session up.
    let mut payloads: Vec<u8> = first.iter().map(|p| p.payload[0]).collect();
    let mut pending = first;
    while let Some(p) = pending.pop() {
        sub.ack(PUBACK, p.pid);
        if pending.is_empty() {
            pending = sub.drain_publishes(QUIET);
            payloads.extend(pending.iter().map(|p| p.payload[0]));
        }
    }
    payloads.sort();
    assert_eq!(payloads, (0..20).collect::<Vec<u8>>());
}

#[test]
fn queue_bytes_limit_drops_and_counts() {
    let broker = broker_with(&[
        ("INFLIGHT_COUNT_MAX", "1"),
        ("SESSION_QUEUE_BYTES_MAX", "4096"),
    ]);
    let mut sub = Conn::client(broker.mqtt, true, "qb-sub");
    sub.auto_ack = false;
    sub.sub("qb/t", 1);
    let mut publ = Conn::client(broker.mqtt, true, "qb-pub");
    let payload = vec![7u8; 1000];
    for _ in 0..10 {
        assert_eq!(publ.publish(Publish::new("qb/t", &payload, 1)), 0);
    }
    assert!(eventually(WAIT, || broker
        .limit_hits("session_queue_bytes_max")
        >= 1.0));
    assert!(broker.metric_sum("shardmq_deliveries_deferred_total") >= 5.0);
    assert_eq!(broker.limit_hits("session_queue_messages_max"), 0.0);
    // The healthy publisher side is untouched: another subscriber gets everything.
    let mut other = Conn::client(broker.mqtt, true, "qb-other");
    other.sub("qb/t", 1);
    for _ in 0..3 {
        assert_eq!(publ.publish(Publish::new("qb/t", b"small", 1)), 0);
    }
    assert_eq!(other.expect_publishes(3).len(), 3);
}
