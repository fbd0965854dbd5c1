//! QoS 2 to a subscriber is exactly once also across a restart: a message whose exchange
//! with a persistent session completed (the broker sent PUBREL, the client answered
//! PUBCOMP) is never sent to that session again, whether the broker is killed (`kill -9`)
//! or stopped (SIGTERM) right after. Found by tests/nemesis.rs (QoS 2 deliveries "of a
//! message whose earlier delivery had its PUBREL").

mod common;

use std::time::Duration;

use common::raw::{Conn, Connect, Publish, Recv, PUBLISH, PUBREL};
use common::*;

fn completed_qos2_then_restart(kill: bool) {
    let dir = temp_dir();
    let options = BrokerOptions {
        shards: 1,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    };
    let mut b = Broker::start_with(options.clone());
    let session = Connect::v5("q2-sub").clean(false).session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub("q2/#", 2);
    let mut publ = Conn::client(b.mqtt, true, "q2-pub");
    for i in 0..20u32 {
        assert_eq!(publ.publish(Publish::new("q2/t", &i.to_be_bytes(), 2)), 0);
    }
    // Every exchange completes: PUBLISH → PUBREC, PUBREL → PUBCOMP (sent by the client).
    let (mut publishes, mut releases) = (0, 0);
    while releases < 20 {
        match sub.recv(Duration::from_secs(10)) {
            Recv::Packet(p) if p.kind == PUBLISH => publishes += 1,
            Recv::Packet(p) if p.kind == PUBREL => releases += 1,
            Recv::Packet(_) => {}
            other => panic!("expected the QoS 2 exchanges, got {other:?}"),
        }
    }
    assert_eq!(publishes, 20);
    // The last PUBCOMP on its way.
    std::thread::sleep(Duration::from_millis(20));
    if kill {
        b.child.kill().unwrap();
        b.child.wait().unwrap();
    } else {
        b.signal(libc::SIGTERM);
        assert!(b.wait_exit(Duration::from_secs(20)).is_some(), "stopped");
    }
    drop(sub);
    let b = Broker::start_with(options);
    let (mut sub, ack) = Conn::connect(b.mqtt, &session);
    assert!(ack.session_present);
    let again = sub.drain_publishes(Duration::from_secs(3));
    assert!(
        again.is_empty(),
        "{} completed QoS 2 messages delivered again after {}: {:?}",
        again.len(),
        if kill { "kill -9" } else { "SIGTERM" },
        again
            .iter()
            .map(|p| u32::from_be_bytes(p.payload[..4].try_into().unwrap()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn completed_qos2_is_not_delivered_again_after_kill_9() {
    completed_qos2_then_restart(true);
}

#[test]
fn completed_qos2_is_not_delivered_again_after_sigterm() {
    completed_qos2_then_restart(false);
}
