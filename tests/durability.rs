//! Durability through the real process: acknowledged publishes are in the WAL, and the
//! retained index survives `kill -9` under `fsync_policy = "always"`.

mod common;

use std::time::Duration;

use common::raw::{Conn, Publish};
use common::*;

fn durable_broker(data_dir: std::path::PathBuf) -> Broker {
    Broker::start_with(BrokerOptions {
        data_dir: Some(data_dir),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    })
}

#[test]
fn retained_messages_survive_kill_9() {
    let dir = temp_dir();
    let topics = names("durable/r", 16);
    {
        let mut broker = durable_broker(dir.path().to_path_buf());
        let mut publ = Conn::client(broker.mqtt, true, "durable-pub");
        for t in &topics {
            publ.publish(Publish::new(t, t.as_bytes(), 1).retain(true));
        }
        // One retained message replaced, one cleared: recovery must keep only the last.
        publ.publish(Publish::new(&topics[0], b"replaced", 1).retain(true));
        publ.publish(Publish::new(&topics[1], b"", 1).retain(true));
        assert!(broker.metric_sum("shardmq_wal_fsyncs_total") >= 1.0);
        assert!(broker.metric_sum("shardmq_wal_appends_total") >= 18.0);
        broker.child.kill().expect("SIGKILL");
        broker.child.wait().unwrap();
    }
    let broker = durable_broker(dir.path().to_path_buf());
    assert_eq!(broker.metric_sum("shardmq_retained_messages_current"), 15.0);
    let mut sub = Conn::client(broker.mqtt, true, "durable-sub");
    sub.sub("durable/#", 1);
    let mut got: Vec<(String, Vec<u8>)> = sub
        .expect_publishes(15)
        .into_iter()
        .map(|p| {
            assert!(p.retain, "recovered retained messages keep the retain flag");
            (p.topic, p.payload)
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, Vec<u8>)> = topics[2..]
        .iter()
        .map(|t| (t.clone(), t.as_bytes().to_vec()))
        .collect();
    want.push((topics[0].clone(), b"replaced".to_vec()));
    want.sort();
    assert_eq!(got, want);
    sub.assert_no_publish(Duration::from_millis(300));
}

#[test]
fn a_bad_fsync_policy_is_a_config_error() {
    let dir = temp_dir();
    let (code, _, err) = run_shardmq(&[], &[("SHARDMQ_FSYNC_POLICY", "sometimes")], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("fsync_policy"), "{err}");
}

#[test]
fn every_policy_acknowledges_qos1_and_qos2() {
    for policy in [
        "always",
        "every_n:8",
        "interval_ms:5",
        "none",
        "batch",
        "periodic",
    ] {
        let broker = Broker::start_with(BrokerOptions {
            env: vec![("SHARDMQ_FSYNC_POLICY".into(), policy.into())],
            ..BrokerOptions::default()
        });
        let mut sub = Conn::client(broker.mqtt, true, "policy-sub");
        sub.sub("p/#", 2);
        let mut publ = Conn::client(broker.mqtt, true, "policy-pub");
        for (i, t) in names("p/t", 4).iter().enumerate() {
            publ.publish(Publish::new(t, t.as_bytes(), 1 + (i % 2) as u8));
        }
        assert_eq!(sub.expect_publishes(4).len(), 4, "policy {policy}");
    }
}
