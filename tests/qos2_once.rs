//! QoS 2 from the publisher's side: a packet id is taken as "received, awaiting PUBREL"
//! only once the owner accepted the publish and it is durable, a resend of that id is
//! answered without being delivered again, and the state survives `kill -9`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::raw::{Conn, Connect, Publish, PUBCOMP, PUBREC, PUBREL};
use common::*;

fn durable_broker(data_dir: PathBuf, env: &[(&str, &str)]) -> Broker {
    let mut vars = vec![("SHARDMQ_FSYNC_POLICY".to_string(), "always".to_string())];
    vars.extend(
        env.iter()
            .map(|(k, v)| (format!("SHARDMQ_{k}"), v.to_string())),
    );
    Broker::start_with(BrokerOptions {
        data_dir: Some(data_dir),
        env: vars,
        ..BrokerOptions::default()
    })
}

/// One retained topic in all: a retained publish to a second topic is refused (0x97).
fn one_retained_topic() -> (Broker, tempfile::TempDir) {
    let dir = temp_dir();
    let env = [("SHARDS", "1"), ("RETAINED_MESSAGES_MAX", "1")];
    (durable_broker(dir.path().to_path_buf(), &env), dir)
}

fn persistent(client: &str) -> Connect {
    Connect::v5(client).clean(false).session_expiry(3600)
}

/// PUBLISHes of `payload` a subscriber receives within `limit` (it acks them).
fn copies_of(sub: &mut Conn, payload: &[u8], limit: Duration) -> usize {
    sub.drain_publishes(limit)
        .iter()
        .filter(|p| p.payload == payload)
        .count()
}

fn received_qos2(broker: &Broker) -> f64 {
    broker.metric_sum_labelled("shardmq_messages_received_total", "qos=\"2\"")
}

/// Sends PUBREL for `pid` and returns the PUBCOMP's reason code.
fn release(conn: &mut Conn, pid: u16) -> u8 {
    conn.ack(PUBREL, pid);
    conn.expect_ack(PUBCOMP, pid)
}

#[test]
fn a_refused_publish_does_not_keep_its_packet_id() {
    let (broker, _dir) = one_retained_topic();
    let mut sub = Conn::client(broker.mqtt, true, "refused-sub");
    sub.sub("refused/#", 2);
    let mut publisher = Conn::client(broker.mqtt, true, "refused-pub");
    publisher.auto_pubrel = false;
    let pid = 7;
    publisher.send(
        &Publish::new("refused/kept", b"first", 2)
            .retain(true)
            .pid(pid)
            .encode(true),
    );
    assert_eq!(publisher.expect_ack(PUBREC, pid), 0, "first retained topic");
    assert_eq!(release(&mut publisher, pid), 0);
    publisher.send(
        &Publish::new("refused/over-quota", b"refused", 2)
            .retain(true)
            .pid(pid)
            .encode(true),
    );
    assert_eq!(
        publisher.expect_ack(PUBREC, pid),
        0x97,
        "second retained topic"
    );
    // A refused PUBREC ends the exchange: the id is free for the next message.
    publisher.send(
        &Publish::new("refused/next", b"next", 2)
            .pid(pid)
            .encode(true),
    );
    assert_eq!(publisher.expect_ack(PUBREC, pid), 0, "the next message");
    release(&mut publisher, pid);
    let got: Vec<Vec<u8>> = sub
        .drain_publishes(Duration::from_secs(2))
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(
        got,
        vec![b"first".to_vec(), b"next".to_vec()],
        "what the subscriber received"
    );
}

#[test]
fn a_resend_after_a_dropped_connection_is_not_acknowledged_for_a_refused_first_copy() {
    let (broker, _dir) = one_retained_topic();
    let mut publisher = Conn::connect(broker.mqtt, &persistent("resend-pub")).0;
    publisher.auto_pubrel = false;
    assert_eq!(
        publisher.publish(Publish::new("resend/kept", b"k", 1).retain(true)),
        0
    );
    // Over the retained quota: refused. The connection drops before the PUBREC is read.
    let before = received_qos2(&broker);
    publisher.send(
        &Publish::new("resend/over", b"over", 2)
            .retain(true)
            .pid(9)
            .encode(true),
    );
    assert!(
        eventually(Duration::from_secs(10), || received_qos2(&broker) > before),
        "the broker read the publish"
    );
    publisher.kill();
    let (mut publisher, ack) = Conn::connect(broker.mqtt, &persistent("resend-pub"));
    assert!(ack.session_present);
    publisher.auto_pubrel = false;
    publisher.send(
        &Publish::new("resend/over", b"over", 2)
            .retain(true)
            .pid(9)
            .dup(true)
            .encode(true),
    );
    assert_eq!(
        publisher.expect_ack(PUBREC, 9),
        0x97,
        "the resend of a refused publish is refused, not taken as received"
    );
}

#[test]
fn a_resend_after_a_dropped_connection_is_delivered_once() {
    let dir = temp_dir();
    let broker = durable_broker(dir.path().to_path_buf(), &[]);
    let mut sub = Conn::connect(broker.mqtt, &persistent("drop-sub")).0;
    sub.sub("drop/#", 2);
    for round in 0..20u16 {
        let mut publisher = Conn::connect(broker.mqtt, &persistent("drop-pub")).0;
        publisher.auto_pubrel = false;
        let pid = 100 + round;
        let payload = format!("drop-{round}");
        let publish = Publish::new(&format!("drop/{round}"), payload.as_bytes(), 2).pid(pid);
        // Sent and dropped at once: the first copy may still be on its way to durable.
        publisher.send(&publish.encode(true));
        publisher.kill();
        let mut publisher = Conn::connect(broker.mqtt, &persistent("drop-pub")).0;
        publisher.auto_pubrel = false;
        publisher.send(&publish.clone().dup(true).encode(true));
        assert_eq!(publisher.expect_ack(PUBREC, pid), 0, "round {round}");
        assert_eq!(release(&mut publisher, pid), 0, "round {round}");
        let n = copies_of(&mut sub, payload.as_bytes(), Duration::from_millis(300));
        assert_eq!(n, 1, "copies of round {round}");
    }
}

#[test]
fn a_durable_qos2_publish_resent_after_kill_9_is_delivered_once() {
    let dir = temp_dir();
    let mut broker = durable_broker(dir.path().to_path_buf(), &[]);
    let mut sub = Conn::connect(broker.mqtt, &persistent("once-sub")).0;
    sub.sub("once/#", 2);
    let mut publisher = Conn::connect(broker.mqtt, &persistent("once-pub")).0;
    let pid = 42;
    let publish = Publish::new("once/a", b"exactly-once", 2).pid(pid);
    publisher.send(&publish.encode(true));
    // QoS 2 reaches subscribers only once durable: its arrival proves the record is on
    // disk. The publisher never reads its PUBREC.
    assert_eq!(
        copies_of(&mut sub, b"exactly-once", Duration::from_secs(5)),
        1
    );
    // Let the subscriber's cursor be logged, so a restart does not replay it anyway.
    std::thread::sleep(Duration::from_secs(1));
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
    drop(publisher);
    drop(sub);

    let broker = durable_broker(dir.path().to_path_buf(), &[]);
    let (mut sub, ack) = Conn::connect(broker.mqtt, &persistent("once-sub"));
    assert!(ack.session_present);
    let (mut publisher, ack) = Conn::connect(broker.mqtt, &persistent("once-pub"));
    assert!(ack.session_present);
    publisher.auto_pubrel = false;
    publisher.send(&publish.clone().dup(true).encode(true));
    assert_eq!(publisher.expect_ack(PUBREC, pid), 0, "the resend's PUBREC");
    assert_eq!(release(&mut publisher, pid), 0, "PUBCOMP after the restart");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < deadline {
        n += copies_of(&mut sub, b"exactly-once", Duration::from_millis(200));
    }
    assert_eq!(
        n, 0,
        "copies delivered again after the restart and the resend"
    );
    // The id is free again: the next message with it is delivered.
    publisher.send(&Publish::new("once/b", b"next", 2).pid(pid).encode(true));
    assert_eq!(publisher.expect_ack(PUBREC, pid), 0);
    release(&mut publisher, pid);
    assert_eq!(copies_of(&mut sub, b"next", Duration::from_secs(3)), 1);
}

#[test]
fn received_ids_beyond_the_bound_are_forgotten_oldest_first_and_counted() {
    let dir = temp_dir();
    let env = [("SHARDS", "1"), ("QOS2_IDS_PER_SHARD_MAX", "2")];
    let broker = durable_broker(dir.path().to_path_buf(), &env);
    let mut sub = Conn::client(broker.mqtt, true, "bound-sub");
    sub.sub("bound/#", 2);
    let (mut publisher, _) = Conn::connect(broker.mqtt, &persistent("bound-pub"));
    publisher.auto_pubrel = false;
    // Three exchanges left without PUBREL: the owner keeps only the newest two ids.
    let publishes: Vec<Publish> = (1..=3u16)
        .map(|pid| Publish::new("bound/t", format!("m{pid}").as_bytes(), 2).pid(pid))
        .collect();
    for p in &publishes {
        publisher.send(&p.encode(true));
        assert_eq!(publisher.expect_ack(PUBREC, p.pid), 0);
    }
    assert_eq!(broker.limit_hits("qos2_ids_per_shard_max"), 1.0);
    publisher.kill();
    let (mut publisher, _) = Conn::connect(broker.mqtt, &persistent("bound-pub"));
    publisher.auto_pubrel = false;
    // Resends after a dropped connection: the kept ones are answered, not delivered.
    for p in &publishes[1..] {
        publisher.send(&p.clone().dup(true).encode(true));
        assert_eq!(publisher.expect_ack(PUBREC, p.pid), 0);
        assert_eq!(release(&mut publisher, p.pid), 0);
    }
    let got: Vec<Vec<u8>> = sub
        .drain_publishes(Duration::from_secs(2))
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
}

#[test]
fn a_resend_on_the_same_connection_carries_the_first_copys_verdict() {
    let (broker, _dir) = one_retained_topic();
    let mut publisher = Conn::client(broker.mqtt, true, "same-conn-pub");
    publisher.auto_pubrel = false;
    assert_eq!(
        publisher.publish(Publish::new("same/kept", b"k", 1).retain(true)),
        0
    );
    // Refused (over the retained quota); the resend follows before any verdict.
    let first = Publish::new("same/over", b"over", 2).retain(true).pid(5);
    let mut both = first.encode(true);
    both.extend(first.clone().dup(true).encode(true));
    publisher.send(&both);
    assert_eq!(publisher.expect_ack(PUBREC, 5), 0x97, "the first copy");
    assert_eq!(publisher.expect_ack(PUBREC, 5), 0x97, "the resend");
}

#[test]
fn a_clean_start_releases_the_ids_its_old_session_awaited() {
    let dir = temp_dir();
    let broker = durable_broker(dir.path().to_path_buf(), &[]);
    let mut sub = Conn::client(broker.mqtt, true, "clean-sub");
    sub.sub("clean/#", 2);
    let publish = Publish::new("clean/t", b"same", 2).pid(3);
    let (mut publisher, _) = Conn::connect(broker.mqtt, &persistent("clean-pub"));
    publisher.auto_pubrel = false;
    publisher.send(&publish.encode(true));
    assert_eq!(publisher.expect_ack(PUBREC, 3), 0);
    publisher.kill();
    assert_eq!(copies_of(&mut sub, b"same", Duration::from_secs(3)), 1);
    // A clean start discards the exchange: the same message again with that id (sent
    // DUP, as after a connection lost before it arrived) is a new message.
    let connect = Connect::v5("clean-pub").clean(true).session_expiry(3600);
    let (mut publisher, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(!ack.session_present);
    publisher.auto_pubrel = false;
    publisher.send(&publish.clone().dup(true).encode(true));
    assert_eq!(publisher.expect_ack(PUBREC, 3), 0);
    assert_eq!(release(&mut publisher, 3), 0);
    assert_eq!(copies_of(&mut sub, b"same", Duration::from_secs(3)), 1);
}

/// Keeps the WAL buffers of both shards full with pipelined 30 KB QoS 1 publishes (a
/// 3.1.1 client that never reads its PUBACKs), until `stop`.
fn flood_wal(
    addr: std::net::SocketAddr,
    name: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut flooder = Conn::client(addr, false, &name);
        let body = vec![b'f'; 30 << 10];
        let mut i = 0u16;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i = i % 1000 + 1;
            let topic = format!("flood/{}", i % 8);
            if !flooder.try_send(&Publish::new(&topic, &body, 1).pid(i).encode(false)) {
                return;
            }
        }
    })
}

#[test]
fn a_resend_racing_its_first_copy_for_wal_room_is_delivered_once() {
    // A WAL buffer of two 30 KB frames, always full: the first copy of each QoS 2
    // publish waits for room when its connection drops, and the resend on the next
    // connection (on either shard) arrives while it still waits.
    let dir = temp_dir();
    let env = [("WAL_BUFFER_BYTES", "65536"), ("MAX_PACKET_BYTES", "32768")];
    let broker = durable_broker(dir.path().to_path_buf(), &env);
    let mut subs: Vec<Conn> = ["race-sub-a", "race-sub-b"]
        .iter()
        .map(|name| {
            let mut sub = Conn::connect(broker.mqtt, &persistent(name)).0;
            sub.sub("race/#", 2);
            sub
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|i| flood_wal(broker.mqtt, &format!("race-flood-{i}"), stop.clone()))
        .collect();
    let rounds = 40u16;
    let mut copies = vec![vec![0usize; usize::from(rounds)]; subs.len()];
    let payload = |round: u16| format!("race-{round}").into_bytes();
    for round in 0..rounds {
        let pid = 200 + round;
        let publish = Publish::new(&format!("race/{round}"), &payload(round), 2).pid(pid);
        let mut publisher = Conn::connect(broker.mqtt, &persistent("race-pub")).0;
        publisher.send(&publish.encode(true));
        publisher.kill();
        let mut publisher = Conn::connect(broker.mqtt, &persistent("race-pub")).0;
        publisher.auto_pubrel = false;
        publisher.send(&publish.clone().dup(true).encode(true));
        assert_eq!(publisher.expect_ack(PUBREC, pid), 0, "round {round}");
        assert_eq!(release(&mut publisher, pid), 0, "round {round}");
        for (sub, copies) in subs.iter_mut().zip(copies.iter_mut()) {
            for p in sub.drain_publishes(Duration::from_millis(20)) {
                if let Some(r) = (0..rounds).find(|&r| p.payload == payload(r)) {
                    copies[usize::from(r)] += 1;
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    for (sub, copies) in subs.iter_mut().zip(copies.iter_mut()) {
        for p in sub.drain_publishes(Duration::from_secs(3)) {
            if let Some(r) = (0..rounds).find(|&r| p.payload == payload(r)) {
                copies[usize::from(r)] += 1;
            }
        }
    }
    let twice: Vec<(usize, usize)> = copies
        .iter()
        .enumerate()
        .flat_map(|(s, c)| {
            c.iter()
                .enumerate()
                .filter(|(_, n)| **n != 1)
                .map(move |(r, _)| (s, r))
        })
        .collect();
    assert!(
        twice.is_empty(),
        "(subscriber, round) not delivered exactly once: {twice:?}; copies {copies:?}"
    );
}
