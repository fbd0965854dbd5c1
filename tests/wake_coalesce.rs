//! `wake_coalesce_us`, black-box: a shard that a paced publisher wakes thousands of times a
//! second tries napping between turns instead of parking (each nap counted in
//! `shardmq_naps_total`; whether it keeps napping depends on what the naps save), and
//! every message still arrives, once and in order, at an independent subscriber
//! (rumqttc) while the shards nap. Off by default: the same stream makes no nap there.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::load::start_subscriber;
use common::raw::{Conn, Publish, Recv, PUBACK};
use common::{broker_with_shards, Broker};

/// Publishes per round; rounds go on until the broker has napped (or [`ROUNDS_MAX`]).
const ROUND: u64 = 1_000;
const ROUNDS_MAX: u64 = 15;
/// One publish per this interval: thousands of wake-ups a second, far more than the 250 a
/// second from which naps of [`COALESCE_US`] are tried (half as many as would fit), even
/// on a machine busy enough to slow the stream down severalfold.
const PACE: Duration = Duration::from_micros(200);
const COALESCE_US: &str = "2000";

/// Streams paced QoS 1 publishes on `topic` from a raw client, round after round, until
/// `enough` says so after a round; returns how many were sent.
fn paced_stream(broker: &Broker, topic: &str, enough: impl Fn() -> bool) -> u64 {
    let mut publisher = Conn::client(broker.mqtt, false, &format!("{topic}-pub"));
    let mut sent = 0;
    for _ in 0..ROUNDS_MAX {
        let round_start = Instant::now();
        for k in 0..ROUND {
            let pid = publisher.pid();
            let seq = sent + k;
            publisher.send(
                &Publish::new(topic, seq.to_string().as_bytes(), 1)
                    .pid(pid)
                    .encode(false),
            );
            // Paced against the round's start, so a late wake-up does not slow the rate.
            let due = round_start + PACE * (k as u32 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sent += ROUND;
        if enough() {
            break;
        }
    }
    // Every publish acknowledged before the socket closes (closing with unread PUBACKs
    // would reset the connection, and the broker could not read what it had not yet).
    let mut acked = 0;
    while acked < sent {
        match publisher.recv(Duration::from_secs(20)) {
            Recv::Packet(p) if p.kind == PUBACK => acked += 1,
            Recv::Packet(_) => {}
            other => panic!("{acked} of {sent} publishes acknowledged, then {other:?}"),
        }
    }
    sent
}

/// Every payload `0..sent`, in order, exactly once.
fn expect_in_order(got: &mpsc::Receiver<String>, sent: u64) {
    for seq in 0..sent {
        let payload = got
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("message {seq} of {sent} never arrived"));
        assert_eq!(payload, seq.to_string(), "order broken at {seq}");
    }
    assert!(
        got.recv_timeout(Duration::from_millis(300)).is_err(),
        "a message arrived twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_woken_often_naps_and_delivers_everything_in_order() {
    let broker = broker_with_shards(2, &[("WAKE_COALESCE_US", COALESCE_US)]);
    let (tx, got) = mpsc::channel();
    let _subscriber = start_subscriber(broker.mqtt, "nap-sub", Some("nap/stream"), tx);
    let naps = || broker.metric_sum("shardmq_naps_total");
    let sent = tokio::task::block_in_place(|| paced_stream(&broker, "nap/stream", || naps() > 0.0));
    assert!(
        naps() > 0.0,
        "no shard napped after {sent} paced publishes with wake_coalesce_us = {COALESCE_US}"
    );
    tokio::task::block_in_place(|| expect_in_order(&got, sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_shard_parks_instead_of_napping() {
    let broker = broker_with_shards(2, &[]);
    let (tx, got) = mpsc::channel();
    let _subscriber = start_subscriber(broker.mqtt, "park-sub", Some("park/stream"), tx);
    let sent = tokio::task::block_in_place(|| paced_stream(&broker, "park/stream", || true));
    tokio::task::block_in_place(|| expect_in_order(&got, sent));
    let (_, body) = broker.http_get("/metrics");
    let naps: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("shardmq_naps_total{"))
        .collect();
    assert_eq!(naps.len(), 2, "one series per shard: {naps:?}");
    assert!(naps.iter().all(|l| l.ends_with(" 0")), "{naps:?}");
}
