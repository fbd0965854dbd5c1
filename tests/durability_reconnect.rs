//! What ordinary client behaviour on reconnect must not lose: subscribing again to the
//! filter a persistent session already holds (most client libraries do it on every
//! reconnect), and reconnecting with the same client id while messages keep coming,
//! whether the new connection lands on the session's shard or on another. Every QoS 1
//! message the broker acknowledged must reach the persistent session; duplicates are
//! allowed.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::load::{start_publisher, start_subscriber};
use common::raw::*;
use common::*;

/// Silence after which a reader has everything it is going to get.
const QUIET: Duration = Duration::from_secs(4);

/// A small session queue, so an offline session's backlog lives mostly in the log.
fn broker(shards: usize, data_dir: Option<PathBuf>) -> Broker {
    Broker::start_with(BrokerOptions {
        shards,
        data_dir,
        env: vec![
            ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX".into(), "64".into()),
            ("SHARDMQ_SESSION_QUEUE_BYTES_MAX".into(), "65536".into()),
            ("SHARDMQ_INFLIGHT_COUNT_MAX".into(), "16".into()),
            ("SHARDMQ_FSYNC_POLICY".into(), "always".into()),
        ],
        ..BrokerOptions::default()
    })
}

/// The default (large) session queue: nothing overflows into the log, so no catch-up
/// read hides a delivery the broker missed.
fn roomy_broker(shards: usize) -> Broker {
    Broker::start_with(BrokerOptions {
        shards,
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    })
}

/// Publishes `count` QoS 1 messages through rumqttc (64 in flight) and waits for every
/// PUBACK; returns the acknowledged payloads (`<id>:<seq>`).
fn publish_all(broker: &Broker, id: &str, topic: &str, count: u64) -> BTreeSet<String> {
    let (acked_tx, acked) = mpsc::channel();
    start_publisher(broker.mqtt, id.into(), topic.into(), count, acked_tx);
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while last != Some(count - 1) && Instant::now() < deadline {
        if let Ok((_, seq)) = acked.recv_timeout(Duration::from_millis(100)) {
            last = Some(seq);
        }
    }
    assert_eq!(last, Some(count - 1), "every publish acknowledged");
    (0..count).map(|seq| format!("{id}:{seq}")).collect()
}

/// Collects what `got` brings until `want` is all there or nothing came for `QUIET`.
fn collect(got: &mpsc::Receiver<String>, want: &BTreeSet<String>) -> HashSet<String> {
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !want.iter().all(|p| seen.contains(p)) {
        match got.recv_timeout(QUIET) {
            Ok(p) => {
                seen.insert(p);
            }
            Err(_) => break,
        }
    }
    seen
}

fn assert_none_lost(sent: &BTreeSet<String>, seen: &HashSet<String>, what: &str) {
    let lost: Vec<&String> = sent.iter().filter(|p| !seen.contains(*p)).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {} acknowledged messages never arrived (first: {:?})",
        lost.len(),
        sent.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
}

/// Subscribes a 3.1.1 persistent session to `filter`, then leaves it offline.
fn subscribe_and_leave(broker: &Broker, client_id: &str, filter: &str) {
    let (mut conn, _) = Conn::connect(broker.mqtt, &Connect::v4(client_id).clean(false));
    conn.sub(filter, 1);
    conn.disconnect(0);
    assert!(
        eventually(Duration::from_secs(10), || {
            broker.metric_sum("shardmq_connections_current") == 0.0
        }),
        "the subscriber is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_on_reconnect_loses_no_offline_backlog() {
    let broker = broker(2, None);
    subscribe_and_leave(&broker, "resub-sub", "resub/#");
    let sent = publish_all(&broker, "resub-pub", "resub/t", 2000);
    assert!(
        broker.metric_sum("shardmq_deliveries_deferred_total") > 0.0,
        "the backlog outgrew the queue and waits in the log"
    );
    // rumqttc reconnects and subscribes to the same filter again, as client libraries do.
    let (got_tx, got) = mpsc::channel();
    let _sub = start_subscriber(broker.mqtt, "resub-sub", Some("resub/#"), got_tx);
    let seen = collect(&got, &sent);
    assert_none_lost(&sent, &seen, "after a re-subscribe");
    assert_eq!(broker.metric_sum("shardmq_messages_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_subscribe_before_kill_9_loses_no_backlog_at_replay() {
    let dir = temp_dir();
    let mut broker = broker(2, Some(dir.path().to_path_buf()));
    subscribe_and_leave(&broker, "resub-crash", "crash/#");
    let sent = publish_all(&broker, "resub-crash-pub", "crash/t", 1000);
    // Back, subscribes to the same filter again (logged), and is gone before reading.
    let connect = Connect::v4("resub-crash").clean(false);
    let (mut conn, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(ack.session_present);
    conn.auto_ack = false;
    conn.sub("crash/#", 1);
    conn.kill();
    // Past the cursor flush interval (200 ms), so what is logged is the state now.
    std::thread::sleep(Duration::from_millis(600));
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");

    let broker = self::broker(2, Some(dir.path().to_path_buf()));
    let (got_tx, got) = mpsc::channel();
    let _sub = start_subscriber(broker.mqtt, "resub-crash", Some("crash/#"), got_tx);
    let seen = collect(&got, &sent);
    assert_none_lost(&sent, &seen, "replayed after kill -9");
}

/// A publisher streams QoS 1 while a persistent subscriber reconnects again and again
/// with the same client id (each new connection takes the session over from the last).
fn reconnect_while_publishing(shards: usize) {
    let broker = roomy_broker(shards);
    let connect = Connect::v4("takeover-sub").clean(false);
    let (mut conn, _) = Conn::connect(broker.mqtt, &connect);
    conn.sub("takeover/#", 1);

    let count = 20_000;
    let (acked_tx, acked) = mpsc::channel();
    start_publisher(
        broker.mqtt,
        "takeover-pub".into(),
        "takeover/t".into(),
        count,
        acked_tx,
    );
    let mut seen = HashSet::new();
    let mut last_acked = None;
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_acked != Some(count - 1) && Instant::now() < deadline {
        let until = Instant::now() + Duration::from_millis(40);
        while Instant::now() < until {
            match conn.try_publish(Duration::from_millis(5)) {
                Some(p) => {
                    seen.insert(String::from_utf8(p.payload).unwrap());
                }
                None => break,
            }
        }
        while let Ok((_, seq)) = acked.try_recv() {
            last_acked = Some(seq);
        }
        // The new connection takes the session over; the old one is closed by the broker.
        conn = Conn::connect(broker.mqtt, &connect).0;
        reconnects += 1;
    }
    assert_eq!(last_acked, Some(count - 1), "every publish acknowledged");
    while let Some(p) = conn.try_publish(QUIET) {
        seen.insert(String::from_utf8(p.payload).unwrap());
    }
    let sent: BTreeSet<String> = (0..count).map(|s| format!("takeover-pub:{s}")).collect();
    eprintln!("{shards} shard(s): {reconnects} reconnects");
    assert!(
        reconnects >= 5,
        "the subscriber reconnected while messages came"
    );
    assert_none_lost(
        &sent,
        &seen,
        &format!("{shards} shard(s), {reconnects} reconnects"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_on_the_same_shard_loses_nothing() {
    reconnect_while_publishing(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_on_two_shards_loses_nothing() {
    reconnect_while_publishing(2);
}
