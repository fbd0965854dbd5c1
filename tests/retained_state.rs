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
