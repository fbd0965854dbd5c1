//! A QoS 2 exchange the client PUBREC'd is never sent as a PUBLISH again, also across a
//! restart: without its PUBCOMP the broker resends its PUBREL under the same packet id
//! (MQTT 5 §4.4); and what the client acknowledged before a graceful stop is not sent
//! again (the final cursors are logged before the broker exits).

mod common;

use std::time::Duration;

use common::raw::{Conn, Connect, Publish, Recv, PUBCOMP, PUBLISH, PUBREC, PUBREL};
use common::*;

/// A broker on `shards` shards logging in `dir`, fsync'ing every commit.
fn logged_options(dir: &tempfile::TempDir, shards: usize) -> BrokerOptions {
    BrokerOptions {
        shards,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    }
}

/// `kill -9` or SIGTERM, and the process is gone.
fn stop(b: &mut Broker, kill: bool) {
    b.signal(if kill { libc::SIGKILL } else { libc::SIGTERM });
    assert!(b.wait_exit(Duration::from_secs(20)).is_some(), "stopped");
}

/// A broker logging in `dir` with a persistent v5 session `client` subscribed to
/// `filter`, and a clean publisher.
fn subscribed(
    dir: &tempfile::TempDir,
    shards: usize,
    client: &str,
    filter: &str,
    qos: u8,
) -> (Broker, BrokerOptions, Connect, Conn, Conn) {
    let options = logged_options(dir, shards);
    let b = Broker::start_with(options.clone());
    let session = Connect::v5(client).clean(false).session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub(filter, qos);
    let publ = Conn::client(b.mqtt, true, "pub");
    (b, options, session, sub, publ)
}

/// Stops the broker (`kill -9` or SIGTERM), starts it again on the same log, and
/// resumes the session.
fn restarted(
    mut b: Broker,
    options: BrokerOptions,
    session: &Connect,
    kill: bool,
) -> (Broker, Conn) {
    stop(&mut b, kill);
    let b = Broker::start_with(options);
    let (sub, ack) = Conn::connect(b.mqtt, session);
    assert!(ack.session_present);
    (b, sub)
}

/// A new QoS 2 message on `q2/t` reaches `sub`.
fn next_comes_as_usual(b: &Broker, sub: &mut Conn) {
    let mut publ = Conn::client(b.mqtt, true, "q2-pub");
    assert_eq!(publ.publish(Publish::new("q2/t", b"next", 2)), 0);
    let next = sub
        .try_publish(Duration::from_secs(10))
        .expect("the next PUBLISH");
    assert_eq!(next.payload, b"next");
}

/// A QoS 2 exchange that got its PUBREC but no PUBCOMP before the stop: after the restart
/// the broker resends PUBREL under the same packet id (MQTT 5 §4.4), never the PUBLISH,
/// and the exchange then completes.
fn released_qos2_then_restart(kill: bool, shards: usize) {
    let dir = temp_dir();
    let (b, options, session, mut sub, mut publ) = subscribed(&dir, shards, "q2-rel", "q2/#", 2);
    sub.auto_ack = false;
    assert_eq!(publ.publish(Publish::new("q2/t", b"once", 2)), 0);
    let p = sub
        .try_publish(Duration::from_secs(10))
        .expect("the PUBLISH");
    assert_eq!(p.payload, b"once");
    sub.ack(PUBREC, p.pid);
    let rel = sub.expect_kind(PUBREL);
    assert_eq!(u16::from_be_bytes([rel.body[0], rel.body[1]]), p.pid);
    // No PUBCOMP: the client still holds the id.
    drop(sub);
    let (b, mut sub) = restarted(b, options, &session, kill);
    sub.auto_ack = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut releases = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match sub.recv(left) {
            Recv::Packet(q) if q.kind == PUBLISH => {
                panic!("the released message was sent again as a PUBLISH: {q:?}")
            }
            Recv::Packet(q) if q.kind == PUBREL => {
                releases.push(u16::from_be_bytes([q.body[0], q.body[1]]))
            }
            Recv::Packet(_) => {}
            Recv::Timeout | Recv::Closed => break,
        }
    }
    assert_eq!(
        releases,
        vec![p.pid],
        "its PUBREL, once, under its packet id"
    );
    sub.ack(PUBCOMP, p.pid);
    // The exchange is over: the next message comes as usual.
    next_comes_as_usual(&b, &mut sub);
}

#[test]
fn released_qos2_gets_pubrel_not_publish_after_kill_9() {
    released_qos2_then_restart(true, 1);
}

#[test]
fn released_qos2_gets_pubrel_not_publish_after_sigterm() {
    released_qos2_then_restart(false, 1);
}

/// The same on two shards, where the connection may land on another shard than the
/// session's home.
#[test]
fn released_qos2_gets_pubrel_not_publish_after_kill_9_on_two_shards() {
    released_qos2_then_restart(true, 2);
}

/// QoS 1 deliveries the client PUBACKed are not sent again after a graceful stop (the
/// final cursors are logged before the broker exits).
#[test]
fn acked_qos1_is_not_delivered_again_after_sigterm() {
    let dir = temp_dir();
    let (b, options, session, mut sub, mut publ) = subscribed(&dir, 2, "q1-sub", "q1/#", 1);
    for i in 0..20u32 {
        assert_eq!(publ.publish(Publish::new("q1/t", &i.to_be_bytes(), 1)), 0);
    }
    assert_eq!(sub.expect_publishes(20).len(), 20);
    // The last PUBACK on its way.
    std::thread::sleep(Duration::from_millis(20));
    drop(publ);
    let (_b, mut sub) = restarted(b, options, &session, false);
    let again = sub.drain_publishes(Duration::from_secs(3));
    assert!(
        again.is_empty(),
        "{} acknowledged QoS 1 messages delivered again after SIGTERM",
        again.len()
    );
}

/// More PUBREC'd exchanges than a restart replays at once: the rest come back with a
/// catch-up read once the client is connected again, and each still gets its PUBREL
/// then (not only those restored before the client came back). Without it those
/// exchanges hold in-flight slots that nothing completes, and the session stops.
#[test]
fn released_qos2_past_the_replayed_window_gets_pubrel_after_kill_9() {
    const N: usize = 12;
    let dir = temp_dir();
    let mut options = logged_options(&dir, 1);
    options.env.extend([
        ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX".into(), "4".into()),
        ("SHARDMQ_INFLIGHT_COUNT_MAX".into(), "16".into()),
    ]);
    let b = Broker::start_with(options.clone());
    let session = Connect::v5("q2-rel-many").clean(false).session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub("q2/#", 2);
    sub.auto_ack = false;
    let mut publ = Conn::client(b.mqtt, true, "pub");
    let mut pids = Vec::new();
    for i in 0..N {
        assert_eq!(
            publ.publish(Publish::new("q2/t", format!("m{i}").as_bytes(), 2)),
            0
        );
        let p = sub
            .try_publish(Duration::from_secs(10))
            .expect("the PUBLISH");
        sub.ack(PUBREC, p.pid);
        let rel = sub.expect_kind(PUBREL);
        assert_eq!(u16::from_be_bytes([rel.body[0], rel.body[1]]), p.pid);
        // No PUBCOMP: the client still holds the id.
        pids.push(p.pid);
    }
    drop(sub);
    drop(publ);
    let (b, mut sub) = restarted(b, options, &session, true);
    sub.auto_ack = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut releases = Vec::new();
    while releases.len() < N {
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
            break;
        };
        match sub.recv(left) {
            Recv::Packet(q) if q.kind == PUBLISH => {
                panic!("a released message was sent again as a PUBLISH: {q:?}")
            }
            Recv::Packet(q) if q.kind == PUBREL => {
                let pid = u16::from_be_bytes([q.body[0], q.body[1]]);
                releases.push(pid);
                sub.ack(PUBCOMP, pid);
            }
            Recv::Packet(_) => {}
            Recv::Timeout | Recv::Closed => break,
        }
    }
    releases.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(releases, expected, "a PUBREL for every PUBREC'd exchange");
    // The window is free again: the next message comes as usual.
    next_comes_as_usual(&b, &mut sub);
}
