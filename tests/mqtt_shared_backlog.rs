//! Shared subscriptions with members that stop reading: no QoS 1 message the broker
//! acknowledged is lost, whether another member has room, only the group's backlog
//! does, or even that is full and the messages wait in the log; also across `kill -9`.
//!
//! Every broker here has tiny session bounds (4 in flight, 8 queued) and a group backlog
//! of 16, so a stalled member fills up after a dozen messages and most of each run goes
//! through the backlog and the log.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::raw::*;
use common::*;

/// Silence after which a reader has everything it is going to get.
const QUIET: Duration = Duration::from_secs(3);
const MESSAGES: usize = 200;

fn small_bounds() -> Vec<(String, String)> {
    [
        ("SHARDMQ_INFLIGHT_COUNT_MAX", "4"),
        ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX", "8"),
        ("SHARDMQ_SHARED_BACKLOG_MESSAGES_MAX", "16"),
        ("SHARDMQ_FSYNC_POLICY", "always"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn broker(data_dir: Option<PathBuf>) -> Broker {
    Broker::start_with(BrokerOptions {
        env: small_bounds(),
        data_dir,
        ..BrokerOptions::default()
    })
}

/// Publishes `n` QoS 1 messages to `topic`, asserting each is acknowledged; returns
/// their payloads.
fn publish_acked(broker: &Broker, client_id: &str, topic: &str, n: usize) -> BTreeSet<String> {
    let mut publ = Conn::client(broker.mqtt, true, client_id);
    (0..n)
        .map(|i| {
            let payload = format!("{topic}#{i}");
            let code = publ.publish(Publish::new(topic, payload.as_bytes(), 1));
            assert_eq!(code, 0, "PUBACK for {payload}");
            payload
        })
        .collect()
}

/// Reads (and acknowledges) until nothing came for `QUIET`.
fn read_all(conn: &mut Conn) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = conn.try_publish(QUIET) {
        got.push(String::from_utf8(p.payload).unwrap());
    }
    got
}

/// `kill -9` once the changed cursors were logged (every 200 ms).
fn kill_9_after_cursor_flush(broker: &mut Broker) {
    std::thread::sleep(Duration::from_millis(600));
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
}

/// Reconnects a persistent session (asserting it was kept) and reads all it gets.
fn resume_and_read_all(broker: &Broker, connect: &Connect) -> Vec<String> {
    let (mut member, ack) = Conn::connect(broker.mqtt, connect);
    assert!(ack.session_present, "the persistent session was restored");
    read_all(&mut member)
}

fn missing(sent: &BTreeSet<String>, got: &[String]) -> Vec<String> {
    let got: BTreeSet<&String> = got.iter().collect();
    sent.iter().filter(|p| !got.contains(p)).cloned().collect()
}

#[test]
fn a_stalled_member_loses_no_acknowledged_message_of_its_group() {
    let broker = broker(None);
    let mut stalled = Conn::client(broker.mqtt, true, "backlog-stalled");
    stalled.sub("$share/g/backlog/t", 1);
    let mut reader = Conn::client(broker.mqtt, true, "backlog-reader");
    reader.sub("$share/g/backlog/t", 1);
    let reading = std::thread::spawn(move || read_all(&mut reader));

    let sent = publish_acked(&broker, "backlog-pub", "backlog/t", MESSAGES);
    let mut got = reading.join().unwrap();
    // The stalled member starts reading again.
    got.extend(read_all(&mut stalled));
    let lost = missing(&sent, &got);
    assert!(
        lost.is_empty(),
        "{} of {MESSAGES} acknowledged messages never arrived: {lost:?}",
        lost.len()
    );
    assert_eq!(
        broker.metric_sum("shardmq_messages_dropped_total"),
        0.0,
        "nothing dropped"
    );
}

#[test]
fn a_group_whose_only_member_stalls_keeps_its_messages_in_the_backlog_and_the_log() {
    let broker = broker(None);
    let mut member = Conn::client(broker.mqtt, true, "backlog-only");
    member.sub("$share/g/alone/t", 1);
    let sent = publish_acked(&broker, "backlog-only-pub", "alone/t", MESSAGES);
    assert!(
        eventually(Duration::from_secs(5), || {
            broker.metric_sum("shardmq_deliveries_deferred_total") > 0.0
        }),
        "past the backlog, messages were left to the log"
    );
    assert!(broker.limit_hits("shared_backlog_messages_max") > 0.0);
    let got = read_all(&mut member);
    let lost = missing(&sent, &got);
    assert!(
        lost.is_empty(),
        "{} of {MESSAGES} never arrived: {lost:?}",
        lost.len()
    );
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "no message twice to the only member"
    );
    assert_eq!(
        broker.metric_sum("shardmq_shared_backlog_messages_current"),
        0.0,
        "the backlog drained"
    );
}

#[test]
fn a_backlog_survives_kill_9() {
    let dir = temp_dir();
    let mut broker = broker(Some(dir.path().to_path_buf()));
    let connect = Connect::v4("backlog-crash").clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub("$share/g/crash/t", 1);
    let sent = publish_acked(&broker, "backlog-crash-pub", "crash/t", 60);
    assert!(
        eventually(Duration::from_secs(5), || {
            broker.metric_sum("shardmq_shared_backlog_messages_current") > 0.0
        }),
        "the group's backlog holds messages"
    );
    // The cursors the backlog holds down are the ones logged.
    kill_9_after_cursor_flush(&mut broker);
    drop(member);

    let broker = self::broker(Some(dir.path().to_path_buf()));
    let got = resume_and_read_all(&broker, &connect);
    let lost = missing(&sent, &got);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost at the crash: {lost:?}",
        lost.len(),
        sent.len()
    );
}

#[test]
fn a_sole_persistent_member_that_goes_offline_gets_its_messages_when_it_returns() {
    let broker = broker(None);
    let connect = Connect::v4("backlog-offline").clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub("$share/g/offline/t", 1);
    let mut sent = publish_acked(&broker, "backlog-offline-pub", "offline/t", 40);
    // Gone with its queue and window full (and unacknowledged), then more arrive for it.
    member.kill();
    assert!(eventually(Duration::from_secs(5), || {
        broker.metric_sum("shardmq_connections_current") <= 1.0
    }));
    sent.extend(publish_acked(
        &broker,
        "backlog-offline-pub2",
        "offline/t",
        40,
    ));
    // It may come back on the other shard: its session then moves there.
    let (mut member, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(ack.session_present);
    let got = read_all(&mut member);
    let lost = missing(&sent, &got);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost while the only member was away: {lost:?}",
        lost.len(),
        sent.len()
    );
}

/// Restored after `kill -9` with more than the member's byte limit to replay: what does
/// not fit goes to the group's backlog and the log, never dropped.
#[test]
fn restored_shared_deliveries_beyond_the_byte_limit_are_kept_for_the_group() {
    let dir = temp_dir();
    let mut env = small_bounds();
    env.retain(|(k, _)| k != "SHARDMQ_SESSION_QUEUE_MESSAGES_MAX");
    env.push(("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX".into(), "1000".into()));
    // About eight of the messages below fill a member's queue by bytes.
    env.push(("SHARDMQ_SESSION_QUEUE_BYTES_MAX".into(), "16384".into()));
    let start = |dir: &std::path::Path| {
        Broker::start_with(BrokerOptions {
            env: env.clone(),
            data_dir: Some(dir.to_path_buf()),
            ..BrokerOptions::default()
        })
    };
    let mut broker = start(dir.path());
    let connect = Connect::v4("restored-shared").clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub("$share/g/restored/t", 1);
    let mut publ = Conn::client(broker.mqtt, true, "restored-shared-pub");
    let pad = "x".repeat(1800);
    let sent: BTreeSet<String> = (0..80)
        .map(|i| {
            let payload = format!("restored#{i}:{pad}");
            let code = publ.publish(Publish::new("restored/t", payload.as_bytes(), 1));
            assert_eq!(code, 0, "PUBACK for restored#{i}");
            payload
        })
        .collect();
    kill_9_after_cursor_flush(&mut broker);
    drop(member);
    // Crashed again before the member is back: what the restart gave the group must
    // still hold the member's logged cursor down.
    kill_9_after_cursor_flush(&mut start(dir.path()));

    let broker = start(dir.path());
    let got = resume_and_read_all(&broker, &connect);
    let lost = missing(&sent, &got);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost after the restart: {:?}",
        lost.len(),
        sent.len(),
        lost.iter()
            .map(|p| p.split(':').next().unwrap())
            .collect::<Vec<_>>()
    );
}

/// A graceful stop (SIGTERM) closes a clean member that holds the group's messages
/// unacknowledged: they go back to the group (the offline persistent member, or the
/// backlog), and the next start must still give them to it. The persistent member had
/// received everything else, so its logged cursor was past them before the stop.
#[test]
fn a_graceful_stop_keeps_what_a_clean_member_held_for_the_group() {
    let dir = temp_dir();
    let start = |dir: &std::path::Path| {
        Broker::start_with(BrokerOptions {
            shards: 1,
            env: small_bounds(),
            data_dir: Some(dir.to_path_buf()),
            ..BrokerOptions::default()
        })
    };
    let mut broker = start(dir.path());
    let connect = Connect::v4("stop-persistent").clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub("$share/g/stop/t", 1);
    // A clean member that never reads: it holds its window and queue.
    let mut clean = Conn::client(broker.mqtt, false, "stop-clean");
    clean.sub("$share/g/stop/t", 1);
    let reading = std::thread::spawn(move || read_all(&mut member));
    let sent = publish_acked(&broker, "stop-pub", "stop/t", 40);
    let mut got = reading.join().unwrap();
    assert!(got.len() < sent.len(), "the clean member holds some");
    // The persistent member's cursor (past what the clean one holds) is logged.
    std::thread::sleep(Duration::from_millis(600));
    broker.signal(libc::SIGTERM);
    assert!(
        broker.wait_exit(Duration::from_secs(20)).is_some(),
        "stopped"
    );
    drop(clean);

    let broker = start(dir.path());
    got.extend(resume_and_read_all(&broker, &connect));
    let lost = missing(&sent, &got);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost at the stop: {lost:?}",
        lost.len(),
        sent.len()
    );
}
