//! A QoS 2 PUBLISH that was in flight to a persistent session when the broker stopped
//! (sent, not yet PUBREC'd) is resent after the restart under its ORIGINAL packet id with
//! DUP set (MQTT 5 §4.4): the client may already hold that id awaiting PUBREL, and a
//! PUBLISH under a new id would be a second message to it. Found by tests/nemesis.rs
//! (QoS 2 duplicates "first from broker 0 … again from broker 1").

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::raw::{Conn, Connect, Publish, Recv, PUBREL};
use common::*;

/// A client id whose home shard (of 2) is, or is not, the owner of the topic `q2/t`: the
/// `qos2_sent` records then go to the topic owner's log or over the mesh to another's.
fn client_id(home_is_owner: bool) -> String {
    let owner = shardmq::router::owner_of("q2/t", 2);
    (0..)
        .map(|n| format!("q2-same-id-{n}"))
        .find(|c| (shardmq::router::owner_of(c, 2) == owner) == home_is_owner)
        .expect("both kinds exist")
}

/// `count` QoS 2 messages reach the persistent subscriber `client`, which never PUBRECs
/// them; the broker stops (SIGTERM, or SIGKILL with `kill`); after the restart every
/// redelivery carries DUP and the packet id it had before. (The connection lands on
/// either shard, its session's home or the other.)
fn inflight_qos2_then_restart(kill: bool, client: &str) {
    let dir = temp_dir();
    let options = BrokerOptions {
        shards: 2,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    };
    let mut b = Broker::start_with(options.clone());
    let session = Connect::v5(client).clean(false).session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub("q2/#", 2);
    let mut publ = Conn::client(b.mqtt, true, "q2-pub");
    // A few completed exchanges first, so a fresh numbering after the restart would
    // differ from the one before.
    for i in 0..3u32 {
        assert_eq!(
            publ.publish(Publish::new("q2/warm", &i.to_be_bytes(), 2)),
            0
        );
    }
    let mut releases = 0;
    while releases < 3 {
        match sub.recv(Duration::from_secs(10)) {
            Recv::Packet(p) if p.kind == PUBREL => releases += 1,
            Recv::Packet(_) => {}
            other => panic!("expected the warm-up exchanges, got {other:?}"),
        }
    }
    // Let the last PUBCOMP arrive before the exchanges that stay open.
    std::thread::sleep(Duration::from_millis(100));
    sub.auto_ack = false;
    let count = 10u32;
    for i in 0..count {
        assert_eq!(publ.publish(Publish::new("q2/t", &i.to_be_bytes(), 2)), 0);
    }
    let mut first: HashMap<u32, u16> = HashMap::new();
    while first.len() < count as usize {
        let p = sub
            .try_publish(Duration::from_secs(10))
            .expect("every PUBLISH before the stop");
        first.insert(
            u32::from_be_bytes(p.payload[..4].try_into().unwrap()),
            p.pid,
        );
    }
    if kill {
        b.signal(libc::SIGKILL);
    } else {
        b.signal(libc::SIGTERM);
    }
    assert!(b.wait_exit(Duration::from_secs(20)).is_some(), "stopped");
    drop(sub);
    drop(publ);
    let b = Broker::start_with(options);
    let (mut sub, ack) = Conn::connect(b.mqtt, &session);
    assert!(ack.session_present);
    sub.auto_ack = false;
    let again: Vec<Publish> = sub
        .drain_publishes(Duration::from_secs(3))
        .into_iter()
        .filter(|p| p.topic == "q2/t")
        .collect();
    let wrong: Vec<(u32, u16, u16, bool)> = again
        .iter()
        .map(|p| {
            let n = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
            (n, first.get(&n).copied().unwrap_or(0), p.pid, p.dup)
        })
        .filter(|&(_, before, after, dup)| before != after || !dup)
        .collect();
    assert_eq!(
        again.len(),
        count as usize,
        "every unacknowledged QoS 2 message is resent"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} in-flight QoS 2 messages resent after {} under a new packet id or without \
         DUP (message, id before, id after, dup): {wrong:?}",
        wrong.len(),
        again.len(),
        if kill { "kill -9" } else { "SIGTERM" },
    );
}

#[test]
fn inflight_qos2_keeps_its_packet_id_across_sigterm() {
    inflight_qos2_then_restart(false, &client_id(true));
}

/// The ids are logged before each PUBLISH goes out, not only at a graceful stop.
#[test]
fn inflight_qos2_keeps_its_packet_id_across_kill_9() {
    inflight_qos2_then_restart(true, &client_id(true));
}

/// The same with the session's home on the other shard than the topic's owner.
#[test]
fn inflight_qos2_keeps_its_packet_id_across_kill_9_home_not_owner() {
    inflight_qos2_then_restart(true, &client_id(false));
}
