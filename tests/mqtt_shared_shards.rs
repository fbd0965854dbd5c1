//! Shared subscriptions whose members sit on different shards: a member that leaves
//! gives its unacknowledged deliveries back to the group, and no acknowledged message may
//! be lost on the way, whatever the other members do (offline, on another shard).
//!
//! The kernel spreads connections over the shards' listeners (`SO_REUSEPORT`), so each
//! test connects until a session lands where it needs it, read from the per-shard
//! `shardmq_sessions_current` gauge.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::raw::*;
use common::*;

/// Silence after which a reader has everything it is going to get.
const QUIET: Duration = Duration::from_secs(3);
const FILTER: &str = "$share/g/leave/t";
const TOPIC: &str = "leave/t";

fn broker(shards: usize) -> Broker {
    broker_in(shards, None)
}

fn broker_in(shards: usize, data_dir: Option<PathBuf>) -> Broker {
    let env = [
        ("SHARDMQ_INFLIGHT_COUNT_MAX", "4"),
        ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX", "8"),
        ("SHARDMQ_SHARED_BACKLOG_MESSAGES_MAX", "16"),
        ("SHARDMQ_FSYNC_POLICY", "always"),
    ];
    Broker::start_with(BrokerOptions {
        shards,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        data_dir,
        ..BrokerOptions::default()
    })
}

/// Sessions per shard.
fn sessions(broker: &Broker, shards: usize) -> Vec<f64> {
    (0..shards)
        .map(|s| {
            broker
                .metric(&format!("shardmq_sessions_current{{shard=\"{s}\"}}"))
                .unwrap_or(0.0)
        })
        .collect()
}

/// Connects (clean) clients with id `client_id` until one lands on a shard whose session
/// count is not `avoid`'s, i.e. on the other one of two shards; returns it.
fn clean_client_beside(broker: &Broker, v5: bool, client_id: &str, avoid: usize) -> Conn {
    for _ in 0..64 {
        let before = sessions(broker, 2);
        let conn = Conn::client(broker.mqtt, v5, client_id);
        let after = sessions(broker, 2);
        if after[avoid] == before[avoid] {
            return conn;
        }
        drop(conn);
        // The clean session ends with its connection.
        assert!(
            eventually(Duration::from_secs(10), || sessions(broker, 2) == before),
            "the clean session ended"
        );
    }
    panic!("64 connections all landed on shard {avoid}");
}

/// Reads (and acknowledges) until nothing came for `QUIET`.
fn read_all(conn: &mut Conn) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = conn.try_publish(QUIET) {
        got.push(String::from_utf8(p.payload).unwrap());
    }
    got
}

/// The payloads of what comes within `limit` (acknowledged if `auto_ack`).
fn payloads_within(conn: &mut Conn, limit: Duration) -> Vec<String> {
    conn.drain_publishes(limit)
        .into_iter()
        .map(|p| String::from_utf8(p.payload).unwrap())
        .collect()
}

/// Publishes `n` QoS 1 messages to `TOPIC`, asserting each is acknowledged; returns
/// their payloads.
fn publish_acked(broker: &Broker, client_id: &str, n: usize) -> BTreeSet<String> {
    let mut publ = Conn::client(broker.mqtt, true, client_id);
    (0..n)
        .map(|i| {
            let payload = format!("m{i}");
            let code = publ.publish(Publish::new(TOPIC, payload.as_bytes(), 1));
            assert_eq!(code, 0, "PUBACK for {payload}");
            payload
        })
        .collect()
}

/// Asserts that every acknowledged message (`sent`) is among those received (`got`).
fn assert_none_lost(broker: &Broker, sent: &BTreeSet<String>, got: &BTreeSet<String>, when: &str) {
    let lost: Vec<&String> = sent.difference(got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost {when}: {lost:?} (dropped by the broker: {})",
        lost.len(),
        sent.len(),
        broker.metric_sum("shardmq_messages_dropped_total")
    );
}

/// Resumes the persistent member after the restart and asserts that, with what it (and
/// the clean member) got before, every acknowledged message arrived.
fn resume_and_assert_none_lost(
    broker: &Broker,
    connect: &Connect,
    sent: &BTreeSet<String>,
    mut got: Vec<String>,
    when: &str,
) {
    let (mut member, ack) = Conn::connect(broker.mqtt, connect);
    assert!(ack.session_present, "the persistent member was restored");
    got.extend(read_all(&mut member));
    let got: BTreeSet<String> = got.into_iter().collect();
    assert_none_lost(broker, sent, &got, when);
}

/// A clean member on one shard holds the group's messages (its window and queue) while
/// the only other member, persistent, is offline on the other shard. The clean member
/// leaves: what it held goes back to the group, i.e. to the offline persistent member,
/// which must get every acknowledged message when it returns.
#[test]
fn a_clean_member_leaving_gives_its_messages_to_an_offline_member_on_another_shard() {
    let broker = broker(2);
    let connect = Connect::v4("shards-persistent").clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub(FILTER, 1);
    let home = sessions(&broker, 2)
        .iter()
        .position(|&n| n == 1.0)
        .expect("the persistent member's shard");
    drop(member);
    // Offline, still a member.
    let mut clean = clean_client_beside(&broker, true, "shards-clean", home);
    clean.sub(FILTER, 1);

    // Fewer than the clean member's window and queue hold: all of them reach it.
    let sent = publish_acked(&broker, "shards-pub", 10);
    // It never acknowledged any of them, and leaves.
    std::thread::sleep(Duration::from_millis(500));
    drop(clean);
    std::thread::sleep(Duration::from_millis(500));

    let (mut member, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(ack.session_present, "the persistent member was kept");
    let got: BTreeSet<String> = read_all(&mut member).into_iter().collect();
    assert_none_lost(&broker, &sent, &got, "when the clean member left");
}

/// Like `mqtt_shared_backlog::a_graceful_stop_keeps_what_a_clean_member_held_for_the_group`,
/// with the two members on different shards: at the stop the clean member's messages
/// (its window, its queue and its shard's backlog of the group) go to the persistent
/// member's shard, whose logged cursor is already past them.
#[test]
fn a_graceful_stop_keeps_what_a_clean_member_on_another_shard_held_for_the_group() {
    let dir = temp_dir();
    let start = || broker_in(2, Some(dir.path().to_path_buf()));
    let mut broker = start();
    let connect = Connect::v4("stop-shards-persistent").clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub(FILTER, 1);
    let home = sessions(&broker, 2)
        .iter()
        .position(|&n| n == 1.0)
        .expect("the persistent member's shard");
    // A clean member that never reads: it holds its window and queue.
    let mut clean = clean_client_beside(&broker, false, "stop-shards-clean", home);
    clean.sub(FILTER, 1);
    let reading = std::thread::spawn(move || read_all(&mut member));
    let sent = publish_acked(&broker, "stop-shards-pub", 40);
    let got = reading.join().unwrap();
    assert!(got.len() < sent.len(), "the clean member holds some");
    // The persistent member's cursor (past what the clean one holds) is logged.
    std::thread::sleep(Duration::from_millis(600));
    broker.signal(libc::SIGTERM);
    assert!(
        broker.wait_exit(Duration::from_secs(20)).is_some(),
        "stopped"
    );
    drop(clean);

    let broker = start();
    resume_and_assert_none_lost(&broker, &connect, &sent, got, "at the stop");
}

/// `kill -9` while a clean member (on the persistent member's shard or the other one)
/// holds the group's messages in its queue: they were never sent to any client, and the
/// persistent member's logged cursor is past them, so only that cursor can bring them
/// back at the next start.
fn a_crash_keeps_what_a_clean_member_queued_for_the_group(shards: usize) {
    let dir = temp_dir();
    let start = || broker_in(shards, Some(dir.path().to_path_buf()));
    let mut broker = start();
    let connect = Connect::v4(&format!("crash-shards-persistent-{shards}")).clean(false);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub(FILTER, 1);
    let clean_id = format!("crash-shards-clean-{shards}");
    let mut clean = if shards == 1 {
        Conn::client(broker.mqtt, false, &clean_id)
    } else {
        let home = sessions(&broker, 2)
            .iter()
            .position(|&n| n == 1.0)
            .expect("the persistent member's shard");
        clean_client_beside(&broker, false, &clean_id, home)
    };
    clean.sub(FILTER, 1);
    clean.auto_ack = false;
    let reading = std::thread::spawn(move || read_all(&mut member));
    let sent = publish_acked(&broker, "crash-shards-pub", 40);
    let mut got = reading.join().unwrap();
    // What reached the clean client counts as delivered.
    got.extend(payloads_within(&mut clean, Duration::from_millis(500)));
    std::thread::sleep(Duration::from_millis(600));
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
    drop(clean);

    let broker = start();
    let when = format!("at the crash ({shards} shards)");
    resume_and_assert_none_lost(&broker, &connect, &sent, got, &when);
}

#[test]
fn a_crash_keeps_what_a_clean_member_queued_for_the_group_on_one_shard() {
    a_crash_keeps_what_a_clean_member_queued_for_the_group(1);
}

/// The clean member's shard has no persistent member of the group whose cursor its queue
/// (or that shard's backlog of the group) could hold down: the other shard's must be.
#[test]
fn a_crash_keeps_what_a_clean_member_queued_for_the_group_on_another_shard() {
    a_crash_keeps_what_a_clean_member_queued_for_the_group(2);
}

/// A persistent member of a group is offline while more messages are acknowledged than
/// its queue and the group's backlog hold; the broker restarts (SIGTERM) with the other
/// `shards` count, which carries every message the member had not acknowledged into the
/// new logs as records naming it. The member comes back, takes a window of them without
/// acknowledging, and drops the connection: what it held goes back to the group, past
/// the backlog's bound into the backlog's gap, which the group reads back from the log.
/// When the member returns, every acknowledged message must reach it.
fn member_leaving_after_shard_change(from: usize, to: usize) {
    const TOPICS: usize = 8;
    const COUNT: usize = 60;
    let dir = temp_dir();
    let start = |shards| {
        Broker::start_with(BrokerOptions {
            shards,
            env: [
                ("SHARDMQ_INFLIGHT_COUNT_MAX", "4"),
                ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX", "8"),
                ("SHARDMQ_SHARED_BACKLOG_MESSAGES_MAX", "2"),
                ("SHARDMQ_FSYNC_POLICY", "always"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            data_dir: Some(dir.path().to_path_buf()),
            ..BrokerOptions::default()
        })
    };
    let filter = "$share/g/change/#";
    let connect = Connect::v4(&format!("change-member-{from}-{to}")).clean(false);
    let mut broker = start(from);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub(filter, 1);
    member.disconnect(0);
    let mut publ = Conn::client(broker.mqtt, true, &format!("change-pub-{from}-{to}"));
    let sent: BTreeSet<String> = (0..COUNT)
        .map(|i| {
            let payload = format!("m{i}");
            let topic = format!("change/{}", i % TOPICS);
            let code = publ.publish(Publish::new(&topic, payload.as_bytes(), 1));
            assert_eq!(code, 0, "PUBACK for {payload}");
            payload
        })
        .collect();
    drop(publ);
    std::thread::sleep(Duration::from_millis(600));
    broker.signal(libc::SIGTERM);
    assert!(
        broker.wait_exit(Duration::from_secs(20)).is_some(),
        "stopped"
    );

    let broker = start(to);
    let layout = std::fs::read_to_string(dir.path().join("layout")).unwrap();
    assert_eq!(
        layout.trim(),
        format!("shards = {to}"),
        "the layout is the new one"
    );
    let (mut member, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(ack.session_present, "the persistent member was restored");
    member.auto_ack = false;
    let held = member.drain_publishes(Duration::from_millis(500));
    assert!(!held.is_empty(), "the member got a window");
    // Gone without acknowledging: its window and queue go back to the group.
    drop(member);
    std::thread::sleep(Duration::from_millis(500));
    let (mut member, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(ack.session_present, "the persistent member was kept");
    let got: BTreeSet<String> = read_all(&mut member).into_iter().collect();
    let when = format!("after a change from {from} to {to} shards");
    assert_none_lost(&broker, &sent, &got, &when);
}

#[test]
fn a_member_leaving_after_a_change_from_one_shard_to_two_loses_nothing() {
    member_leaving_after_shard_change(1, 2);
}

#[test]
fn a_member_leaving_after_a_change_from_two_shards_to_one_loses_nothing() {
    member_leaving_after_shard_change(2, 1);
}

/// `kill -9` within a cursor flush interval of a clean member on the other shard taking
/// the group's messages into its queue (and its shard's backlog), while the group's
/// persistent member reads on: that member's logged cursor follows the floors of the
/// later messages it gets, so it must already be held down by what the other shard took,
/// or nothing brings those messages back. Each cycle starts a fresh clean member (its
/// first holds are the ones not yet reported) and kills the broker a little later each
/// time, so some cycle falls between the persistent member's cursor flush and the
/// report of the other shard's holds.
#[test]
fn a_crash_soon_after_a_clean_member_on_another_shard_took_messages_keeps_them() {
    const CYCLES: u64 = 10;
    let dir = temp_dir();
    let start = || broker_in(2, Some(dir.path().to_path_buf()));
    let connect = Connect::v4("window-persistent").clean(false);
    let mut sent = BTreeSet::new();
    let mut got = Vec::new();
    let mut next = 0usize;
    for cycle in 0..CYCLES {
        let mut broker = start();
        let (mut member, _) = Conn::connect(broker.mqtt, &connect);
        if cycle == 0 {
            member.sub(FILTER, 1);
        }
        // What the restart replays to it comes now, before the clean member joins.
        got.extend(payloads_within(&mut member, Duration::from_secs(1)));
        let home = sessions(&broker, 2)
            .iter()
            .position(|&n| n == 1.0)
            .expect("the persistent member's shard");
        let mut clean = clean_client_beside(&broker, false, &format!("window-clean-{cycle}"), home);
        clean.sub(FILTER, 1);
        // It never acknowledges: its window and queue, then its shard's backlog, fill.
        clean.auto_ack = false;
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(p) = member.try_publish(QUIET) {
                got.push(String::from_utf8(p.payload).unwrap());
            }
            got
        });
        // Publishes for 100 to 370 ms, then the crash right after the last PUBACK.
        let mut publ = Conn::client(broker.mqtt, true, &format!("window-pub-{cycle}"));
        let until = std::time::Instant::now() + Duration::from_millis(100 + 30 * cycle);
        while std::time::Instant::now() < until {
            let payload = format!("m{next}");
            next += 1;
            let code = publ.publish(Publish::new(TOPIC, payload.as_bytes(), 1));
            assert_eq!(code, 0, "PUBACK for {payload}");
            sent.insert(payload);
        }
        broker.child.kill().expect("SIGKILL");
        broker.child.wait().expect("reaped");
        got.extend(reading.join().unwrap());
        // What reached the clean client counts as delivered.
        got.extend(payloads_within(&mut clean, Duration::from_millis(500)));
    }
    let broker = start();
    let when = format!("in {CYCLES} crashes");
    resume_and_assert_none_lost(&broker, &connect, &sent, got, &when);
}

/// A graceful stop while the group's only persistent member holds unacknowledged
/// messages (its window and queue, nothing in its shard's backlog) on one shard and a
/// clean member is connected on the other. The stop closes both connections at once:
/// the persistent member's shard, with no connected member left, hands what it held on
/// through each message's owner while it may still count the other shard as one of the
/// group's. The owner, which has seen the clean member leave, finds no shard of the
/// group besides the one that handed the message on, which still has the (now offline)
/// persistent member: the message must go back to it, not be dropped (MQTT 5 §4.8.2).
/// Topics on both shards, several stops: the close order is the shards' own.
#[test]
fn a_graceful_stop_keeps_what_a_persistent_member_held_while_the_other_shards_member_left() {
    const STOPS: usize = 6;
    const TOPICS: usize = 8;
    // The member's window and queue (see `broker_in`): none goes to the backlog.
    const HELD: usize = 12;
    let filter = "$share/g/stop/#";
    let dir = temp_dir();
    let start = || broker_in(2, Some(dir.path().to_path_buf()));
    let connect = Connect::v4("stop-held-persistent").clean(false);
    let mut sent = BTreeSet::new();
    let mut got = Vec::new();
    let mut next = 0usize;
    for stop in 0..STOPS {
        let mut broker = start();
        let (mut member, _) = Conn::connect(broker.mqtt, &connect);
        if stop == 0 {
            member.sub(filter, 1);
        } else {
            // What the restart brings it, read and acknowledged.
            got.extend(payloads_within(&mut member, Duration::from_secs(1)));
        }
        let home = sessions(&broker, 2)
            .iter()
            .position(|&n| n == 1.0)
            .expect("the persistent member's shard");
        // It acknowledges nothing from now on and holds every message.
        member.auto_ack = false;
        let mut publ = Conn::client(broker.mqtt, true, &format!("stop-held-pub-{stop}"));
        for _ in 0..HELD {
            let payload = format!("m{next}");
            let topic = format!("stop/{}", next % TOPICS);
            next += 1;
            let code = publ.publish(Publish::new(&topic, payload.as_bytes(), 1));
            assert_eq!(code, 0, "PUBACK for {payload}");
            sent.insert(payload);
        }
        publ.disconnect(0);
        assert!(
            eventually(Duration::from_secs(10), || sessions(&broker, 2)
                .iter()
                .sum::<f64>()
                == 1.0),
            "the publisher's clean session ended"
        );
        // Joins after the messages: it gets none of them, and the stop ends it.
        let mut clean =
            clean_client_beside(&broker, true, &format!("stop-held-clean-{stop}"), home);
        clean.sub(filter, 1);
        // Cursors and the shards' holds reports are logged.
        std::thread::sleep(Duration::from_millis(600));
        broker.signal(libc::SIGTERM);
        assert!(
            broker.wait_exit(Duration::from_secs(20)).is_some(),
            "stopped"
        );
        got.extend(payloads_within(&mut clean, Duration::from_millis(100)));
        drop(member);
    }
    let broker = start();
    let when = format!("in {STOPS} graceful stops");
    resume_and_assert_none_lost(&broker, &connect, &sent, got, &when);
}
