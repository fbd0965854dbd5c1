//! A QoS 2 message reaches one session at most once, whichever way it comes back to the
//! session: a shared group's catch-up read that re-reads messages a member already
//! completed, a takeover that reads the logs again from the session's floor, or a replay
//! after a graceful stop. Every PUBLISH is counted per message, and a repeat of a message
//! whose PUBREL the client already got is told apart (the worst kind: the client has
//! forgotten the exchange and takes it as a new message).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::raw::{
    Conn, Connect, Prop, Publish, Recv, PUBCOMP, PUBLISH, PUBREC, PUBREL, P_RECEIVE_MAXIMUM,
};
use common::*;

/// Silence after which a reader has everything it is going to get.
const QUIET: Duration = Duration::from_secs(3);

/// What one session received, per payload.
#[derive(Default)]
struct Tally {
    copies: BTreeMap<String, usize>,
    /// Payloads whose PUBREL arrived.
    released: BTreeSet<String>,
    /// PUBLISHes of a payload whose PUBREL had already arrived.
    after_pubrel: Vec<String>,
    /// Packet id -> payload of the exchanges under way.
    open: HashMap<u16, String>,
    /// Payloads whose PUBLISH is not answered (their exchanges stay open).
    hold: BTreeSet<String>,
}

impl Tally {
    /// Reads with manual acks (PUBREC for each QoS 2 PUBLISH, PUBCOMP for each PUBREL)
    /// until nothing came for `quiet`.
    fn read(&mut self, conn: &mut Conn, quiet: Duration) {
        self.read_up_to(conn, quiet, usize::MAX);
    }

    /// Like `read`, but stops after `n` PUBLISHes (with their exchanges answered so far).
    fn read_n(&mut self, conn: &mut Conn, n: usize) {
        self.read_up_to(conn, QUIET, n);
    }

    fn read_up_to(&mut self, conn: &mut Conn, quiet: Duration, n: usize) {
        conn.auto_ack = false;
        let mut got = 0;
        while got < n {
            match conn.recv(quiet) {
                Recv::Packet(p) if p.kind == PUBLISH => {
                    got += 1;
                    let publish = Publish::decode(&p, true);
                    assert_eq!(publish.qos, 2, "granted QoS 2");
                    let payload = String::from_utf8(publish.payload).unwrap();
                    self.count(&payload, publish.dup);
                    if self.released.contains(&payload) {
                        self.after_pubrel.push(payload.clone());
                    }
                    let hold = self.hold.contains(&payload);
                    self.open.insert(publish.pid, payload);
                    if !hold {
                        conn.ack(PUBREC, publish.pid);
                    }
                }
                Recv::Packet(p) if p.kind == PUBREL => {
                    let pid = u16::from_be_bytes([p.body[0], p.body[1]]);
                    if let Some(payload) = self.open.remove(&pid) {
                        self.released.insert(payload);
                    }
                    conn.ack(PUBCOMP, pid);
                }
                Recv::Packet(_) => {}
                Recv::Timeout | Recv::Closed => return,
            }
        }
    }

    /// Answers the held exchanges (PUBREC) and holds nothing more.
    fn release_held(&mut self, conn: &mut Conn) {
        for (pid, payload) in &self.open {
            if self.hold.contains(payload) {
                conn.ack(PUBREC, *pid);
            }
        }
        self.hold.clear();
    }

    /// A PUBLISH of `payload`. A resend with DUP of an exchange the client has not
    /// finished is MQTT's redelivery (after a reconnect), not a second message.
    fn count(&mut self, payload: &str, dup: bool) {
        let seen = self.copies.contains_key(payload);
        if !(dup && seen && !self.released.contains(payload)) {
            *self.copies.entry(payload.to_string()).or_default() += 1;
        }
    }

    fn twice(&self) -> Vec<(&String, &usize)> {
        self.copies.iter().filter(|(_, n)| **n > 1).collect()
    }

    fn missing<'a>(&self, sent: &'a [String]) -> Vec<&'a String> {
        sent.iter()
            .filter(|p| !self.copies.contains_key(*p))
            .collect()
    }

    fn assert_once(&self, sent: &[String]) {
        let twice = self.twice();
        let missing = self.missing(sent);
        assert!(
            twice.is_empty() && missing.is_empty(),
            "{} of {} QoS 2 messages arrived more than once ({} PUBLISHes after the \
             message's PUBREL: {:?}), {} never arrived: twice {twice:?}, missing {missing:?}",
            twice.len(),
            sent.len(),
            self.after_pubrel.len(),
            self.after_pubrel,
            missing.len(),
        );
    }
}

fn env(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (format!("SHARDMQ_{k}"), v.to_string()))
        .collect()
}

/// A broker logging in `dir` (fsync on every commit) with 4 deliveries in flight and 8
/// queued per session, so a subscriber that stops reading soon reads from the log.
fn small_queues(dir: &tempfile::TempDir, shards: usize) -> BrokerOptions {
    BrokerOptions {
        shards,
        data_dir: Some(dir.path().to_path_buf()),
        env: env(&[
            ("FSYNC_POLICY", "always"),
            ("INFLIGHT_COUNT_MAX", "4"),
            ("SESSION_QUEUE_MESSAGES_MAX", "8"),
        ]),
        ..BrokerOptions::default()
    }
}

/// A one-shard broker logging in `dir` (fsync on every commit) with `inflight`
/// deliveries in flight and 8 queued per session, and 16 in a shared group's backlog:
/// a group whose members stop reading soon reads from the log.
fn small_group(dir: &tempfile::TempDir, inflight: usize) -> Broker {
    let inflight = inflight.to_string();
    Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.path().to_path_buf()),
        env: env(&[
            ("FSYNC_POLICY", "always"),
            ("INFLIGHT_COUNT_MAX", &inflight),
            ("SESSION_QUEUE_MESSAGES_MAX", "8"),
            ("SHARED_BACKLOG_MESSAGES_MAX", "16"),
        ]),
        ..BrokerOptions::default()
    })
}

fn persistent(client: &str) -> Connect {
    Connect::v5(client).clean(false).session_expiry(3600)
}

/// Publishes QoS 2 messages `{prefix}{i}` for `i` in `range` to `topic(i)`, each
/// acknowledged (PUBCOMP); returns the payloads.
fn publish_qos2(
    publ: &mut Conn,
    range: std::ops::Range<usize>,
    topic: impl Fn(usize) -> String,
) -> Vec<String> {
    range
        .map(|i| {
            let payload = format!("m{i}");
            let code = publ.publish(Publish::new(&topic(i), payload.as_bytes(), 2));
            assert_eq!(code, 0, "PUBCOMP for {payload}");
            payload
        })
        .collect()
}

/// A shared group's persistent QoS 2 member completes its first messages, then stops
/// reading; the group's backlog fills and the rest waits in the log (a gap). A clean
/// member then leaves with its unacknowledged deliveries, which go back to the group and
/// lower the gap to their older offsets: the catch-up read brings the messages the
/// persistent member had already completed once more. They must not reach it again.
#[test]
fn a_shared_members_catch_up_never_repeats_what_it_completed() {
    let dir = temp_dir();
    let broker = small_group(&dir, 4);
    let filter = "$share/g/once/t";
    let (mut member, _) = Conn::connect(broker.mqtt, &persistent("once-member"));
    member.sub(filter, 2);
    let mut clean = Conn::client(broker.mqtt, true, "once-clean");
    clean.sub(filter, 2);
    let mut publ = Conn::client(broker.mqtt, true, "once-pub");
    let topic = |_| "once/t".to_string();

    // Both members take a share; the persistent one completes all of its own.
    let mut sent = publish_qos2(&mut publ, 0..24, topic);
    let mut tally = Tally::default();
    tally.read(&mut member, QUIET);
    let first = tally.released.len();
    assert!(first > 0, "the persistent member completed its first share");
    // It stops reading: its window and queue fill, then the backlog, then the log.
    sent.extend(publish_qos2(&mut publ, 24..84, topic));
    // The clean member leaves without acknowledging anything: its share goes back to
    // the group, behind a full backlog, at offsets below the completed ones.
    drop(clean);
    std::thread::sleep(Duration::from_millis(300));
    tally.read(&mut member, QUIET);
    tally.assert_once(&sent);
}

/// A shared group's catch-up read errs low and can hand a member a message another
/// member still holds; when that other member leaves, its copy goes back to the group.
/// Here the persistent QoS 2 member has not yet PUBREC'd its copy (it holds the
/// exchange open) and has room: the returning copy must not be queued beside it, or the
/// member gets the message again under a new packet id once it completed the first.
#[test]
fn a_member_holding_a_message_never_gets_it_again_from_a_member_that_leaves() {
    let dir = temp_dir();
    let broker = small_group(&dir, 8);
    let filter = "$share/g/twin/t";
    let (mut member, _) = Conn::connect(broker.mqtt, &persistent("twin-member"));
    member.sub(filter, 2);
    // Two clean members that never answer; `holder` takes 4 at a time.
    let holder_connect = Connect::v5("twin-holder").prop(P_RECEIVE_MAXIMUM, Prop::U16(4));
    let (mut holder, _) = Conn::connect(broker.mqtt, &holder_connect);
    holder.sub(filter, 2);
    let mut leaver = Conn::client(broker.mqtt, true, "twin-leaver");
    leaver.sub(filter, 2);
    holder.auto_ack = false;
    leaver.auto_ack = false;
    let mut publ = Conn::client(broker.mqtt, true, "twin-pub");
    // Every window and queue fills, then the backlog, then the log (a gap).
    let sent = publish_qos2(&mut publ, 0..80, |_| "twin/t".to_string());
    let held_by_holder: BTreeSet<String> = holder
        .drain_publishes(Duration::from_millis(500))
        .into_iter()
        .map(|p| String::from_utf8(p.payload).unwrap())
        .collect();
    assert_eq!(held_by_holder.len(), 4, "the holder's window is full");
    // One member leaves: its share goes back to the group behind the full backlog and
    // lowers the gap to its first offset, so the catch-up read brings the holder's
    // messages (above that offset) once more, to the persistent member.
    leaver.kill();
    std::thread::sleep(Duration::from_millis(300));
    // The persistent member takes everything it gets and completes it, except the
    // holder's messages: those exchanges it keeps open.
    let mut tally = Tally {
        hold: held_by_holder.clone(),
        ..Tally::default()
    };
    tally.read(&mut member, QUIET);
    let open: Vec<&String> = tally.open.values().collect();
    assert!(
        !open.is_empty(),
        "the catch-up read brought none of the holder's messages ({held_by_holder:?}) \
         to the member"
    );
    // The holder leaves: its copies go back to the group, whose only member holds them.
    holder.kill();
    tally.read(&mut member, QUIET);
    tally.release_held(&mut member);
    tally.read(&mut member, QUIET);
    tally.assert_once(&sent);
}

/// A persistent QoS 2 subscriber on two shards falls behind (its queue overflows, the
/// rest is read from the logs) and completes what it gets; the broker stops gracefully
/// and starts again, and the client reconnects a few times (taking its session over on
/// either shard, which reads the logs again from the session's floor). No message it
/// completed before the stop comes again.
#[test]
fn completed_qos2_messages_do_not_come_again_after_a_graceful_stop_on_two_shards() {
    let dir = temp_dir();
    let options = small_queues(&dir, 2);
    let mut broker = Broker::start_with(options.clone());
    let session = persistent("once-stop");
    let (mut sub, _) = Conn::connect(broker.mqtt, &session);
    sub.sub("stop/#", 2);
    // Topics on both owners.
    let topic = |i: usize| format!("stop/{}", i % 7);
    let mut publ = Conn::client(broker.mqtt, true, "once-stop-pub");
    let mut tally = Tally::default();
    let mut sent = Vec::new();
    for round in 0..4 {
        sent.extend(publish_qos2(&mut publ, round * 40..(round + 1) * 40, topic));
        tally.read(&mut sub, Duration::from_millis(800));
    }
    tally.read(&mut sub, QUIET);
    let before = tally.twice().len();
    drop(publ);
    broker.signal(libc::SIGTERM);
    assert!(
        broker.wait_exit(Duration::from_secs(20)).is_some(),
        "stopped"
    );
    drop(sub);
    let broker = Broker::start_with(options);
    for _ in 0..6 {
        let (mut sub, ack) = Conn::connect(broker.mqtt, &session);
        assert!(ack.session_present, "the session was restored");
        tally.read(&mut sub, Duration::from_secs(1));
    }
    assert_eq!(before, 0, "no repeats before the stop");
    tally.assert_once(&sent);
}

/// A persistent QoS 2 subscriber on two shards fell far behind: its queue overflowed and
/// it is reading the rest back from the logs, a batch at a time, completing each message.
/// It reconnects several times meanwhile; a reconnect that lands on the other shard takes
/// the session over there, which reads every owner's log again from the session's floor
/// (still where the gap opened). What it completed before must not come again.
#[test]
fn a_takeover_on_another_shard_never_repeats_completed_qos2_messages() {
    let dir = temp_dir();
    let broker = Broker::start_with(small_queues(&dir, 2));
    let session = persistent("once-move");
    let (mut sub, _) = Conn::connect(broker.mqtt, &session);
    sub.sub("move/#", 2);
    let topic = |i: usize| format!("move/{}", i % 7);
    let mut publ = Conn::client(broker.mqtt, true, "once-move-pub");
    let sent = publish_qos2(&mut publ, 0..120, topic);
    let mut tally = Tally::default();
    for _ in 0..8 {
        tally.read_n(&mut sub, 10);
        let (next, ack) = Conn::connect(broker.mqtt, &session);
        assert!(ack.session_present, "the session was kept");
        sub = next;
    }
    tally.read(&mut sub, QUIET);
    tally.assert_once(&sent);
}

/// The same with the session far behind at the stop: it never answered its first
/// message (which holds its cursor there), completed the next ones, then stopped reading
/// while more were published (its queue overflowed: a gap). After the restart the replay
/// from the cursor brings the completed ones (dropped), stops at the queue's bound and
/// leaves the rest to a catch-up read; a reconnect on the other shard reads again from
/// the floor. The completed ones must not come again on any of these reads.
#[test]
fn completed_qos2_messages_above_an_open_exchange_do_not_come_again_after_a_graceful_stop() {
    let dir = temp_dir();
    let options = small_queues(&dir, 2);
    let mut broker = Broker::start_with(options.clone());
    let session = persistent("once-open");
    let (mut sub, _) = Conn::connect(broker.mqtt, &session);
    sub.sub("open/#", 2);
    let topic = |i: usize| format!("open/{}", i % 7);
    let mut publ = Conn::client(broker.mqtt, true, "once-open-pub");
    let mut tally = Tally {
        hold: ["m0".to_string()].into(),
        ..Tally::default()
    };
    let mut sent = Vec::new();
    for round in 0..3 {
        sent.extend(publish_qos2(&mut publ, round * 10..(round + 1) * 10, topic));
        tally.read(&mut sub, Duration::from_millis(800));
    }
    tally.read(&mut sub, Duration::from_secs(1));
    assert!(tally.released.len() >= 20, "completed most of the first 30");
    // It stops reading; more than its queue holds is published.
    sent.extend(publish_qos2(&mut publ, 30..70, topic));
    drop(publ);
    broker.signal(libc::SIGTERM);
    assert!(
        broker.wait_exit(Duration::from_secs(20)).is_some(),
        "stopped"
    );
    drop(sub);
    let broker = Broker::start_with(options);
    for i in 0..6 {
        let (mut sub, ack) = Conn::connect(broker.mqtt, &session);
        assert!(ack.session_present, "the session was restored");
        if i == 5 {
            tally.hold.clear();
            tally.read(&mut sub, QUIET);
        } else {
            tally.read_n(&mut sub, 6);
        }
    }
    tally.assert_once(&sent);
}
