//! A QoS 2 PUBLISH that was in flight to a persistent session when the broker stopped
//! (sent, not yet PUBREC'd) is resent after the restart under its ORIGINAL packet id with
//! DUP set (MQTT 5 §4.4): the client may already hold that id awaiting PUBREL, and a
//! PUBLISH under a new id would be a second message to it. Found by tests/nemesis.rs
//! (QoS 2 duplicates "first from broker 0 … again from broker 1").

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::raw::{frame, put_str, Conn, Connect, Publish, Recv, PUBREL, UNSUBSCRIBE};
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

/// Stops the broker (SIGKILL with `kill`, else SIGTERM), starts it again on the same log
/// and resumes `session` (present), acknowledging nothing automatically.
fn restarted(
    mut b: Broker,
    sub: Conn,
    options: BrokerOptions,
    session: &Connect,
    kill: bool,
) -> (Broker, Conn) {
    b.signal(if kill { libc::SIGKILL } else { libc::SIGTERM });
    assert!(b.wait_exit(Duration::from_secs(20)).is_some(), "stopped");
    drop(sub);
    let b = Broker::start_with(options);
    let (mut sub, ack) = Conn::connect(b.mqtt, session);
    assert!(ack.session_present);
    sub.auto_ack = false;
    (b, sub)
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
    let b = Broker::start_with(options.clone());
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
    drop(publ);
    let (_b, mut sub) = restarted(b, sub, options, &session, kill);
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

/// A topic under `q2/` whose owner (of 2 shards) is `owner`.
fn topic_owned_by(owner: u16) -> String {
    (0..)
        .map(|n| format!("q2/o{n}"))
        .find(|t| shardmq::router::owner_of(t, 2).0 == owner)
        .expect("both owners have topics")
}

/// After a restart, an exchange recovered from the log comes back into the window only
/// when a replay or catch-up read meets its message; until then its packet id is still
/// the client's. The session's other messages must not take that id meanwhile: given to
/// another message, the recovered one can no longer be resent under it and went out
/// again under a new id (a second message to the client), or, once the other exchange
/// had completed, went out under it after the client had freed it with that exchange's
/// PUBREL (again a second message). Seen by tests/nemesis.rs at its shared member:
/// "before from broker 108 (packet id 196), again from broker 109 (packet id 288)" and
/// "(packet id 195) … again (packet id 195, DUP, the packet id free)".
///
/// Before the `kill -9` the member has, from owner B, a QoS 2 message in flight, four
/// QoS 1 messages it acknowledged, and then the QoS 2 message `late` in flight; from
/// owner A a QoS 2 message in flight and three QoS 1 messages acknowledged. The restart
/// replays four messages per owner (the queue bound), so `late` is beyond B's replay
/// and comes back only with the catch-up read after the reconnect, while the replayed
/// QoS 1 messages go out first under fresh ids: one of them took `late`'s id.
///
/// With `unsubscribe`, the client's first packet after its CONNECT (in the same write)
/// unsubscribes the filter: the exchange was started before, so it is still completed
/// with this client under its id (MQTT 5 [MQTT-3.10.4-3], [MQTT-4.8.2-4]), though no
/// read for the session's subscriptions brings its message any more.
fn recovered_id_stays_reserved_until_its_exchange_is_back(filter: &str, unsubscribe: bool) {
    let dir = temp_dir();
    let options = BrokerOptions {
        shards: 2,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![
            ("SHARDMQ_FSYNC_POLICY".into(), "always".into()),
            ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX".into(), "4".into()),
            ("SHARDMQ_INFLIGHT_COUNT_MAX".into(), "32".into()),
        ],
        ..BrokerOptions::default()
    };
    let (topic_a, topic_b) = (topic_owned_by(0), topic_owned_by(1));
    let b = Broker::start_with(options.clone());
    let session = Connect::v5("q2-reserved").clean(false).session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub(filter, 2);
    sub.auto_ack = false;
    let mut publ = Conn::client(b.mqtt, true, "q2-pub");
    // (topic, payload, QoS); the subscriber acknowledges QoS 1 and leaves QoS 2 open.
    let sends: Vec<(&str, String, u8)> = [
        (&topic_b, "b0", 2),
        (&topic_b, "b1", 1),
        (&topic_b, "b2", 1),
        (&topic_b, "b3", 1),
        (&topic_b, "b4", 1),
        (&topic_b, "late", 2),
        (&topic_a, "a0", 2),
        (&topic_a, "a1", 1),
        (&topic_a, "a2", 1),
        (&topic_a, "a3", 1),
    ]
    .into_iter()
    .map(|(t, p, q)| (t.as_str(), p.to_string(), q))
    .collect();
    let mut before: HashMap<String, u16> = HashMap::new();
    for (topic, payload, qos) in &sends {
        assert_eq!(
            publ.publish(Publish::new(topic, payload.as_bytes(), *qos)),
            0
        );
        let p = sub
            .try_publish(Duration::from_secs(10))
            .expect("each PUBLISH before the kill");
        assert_eq!(p.payload, payload.as_bytes(), "in publish order");
        if p.qos == 1 {
            sub.ack(common::raw::PUBACK, p.pid);
        }
        before.insert(payload.clone(), p.pid);
    }
    // The PUBACKs reach the broker.
    std::thread::sleep(Duration::from_millis(300));
    drop(publ);
    // Acknowledge nothing after the restart: every id given out stays taken.
    let (_b, mut sub) = if unsubscribe {
        restarted_unsubscribing(b, sub, options, &session, filter)
    } else {
        restarted(b, sub, options, &session, true)
    };
    let again = sub.drain_publishes(Duration::from_secs(3));
    let late: Vec<(u16, bool)> = again
        .iter()
        .filter(|p| p.payload == b"late")
        .map(|p| (p.pid, p.dup))
        .collect();
    let late_id = before["late"];
    let others_under_late_id: Vec<String> = again
        .iter()
        .filter(|p| p.pid == late_id && p.payload != b"late")
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(
        late,
        vec![(late_id, true)],
        "the QoS 2 message in flight under id {late_id} comes again once, under that id and \
         with DUP (other messages under that id: {others_under_late_id:?}; all: {:?})",
        again
            .iter()
            .map(|p| (
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.pid,
                p.dup
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        others_under_late_id.is_empty(),
        "id {late_id} went to {others_under_late_id:?} while its exchange was open"
    );
}

/// Like `restarted` after a `kill -9`, but the CONNECT and an UNSUBSCRIBE of `filter` go
/// out in one write, so the broker reads the UNSUBSCRIBE before any read of the log
/// answers for the resumed session.
fn restarted_unsubscribing(
    mut b: Broker,
    sub: Conn,
    options: BrokerOptions,
    session: &Connect,
    filter: &str,
) -> (Broker, Conn) {
    b.signal(libc::SIGKILL);
    assert!(b.wait_exit(Duration::from_secs(20)).is_some(), "stopped");
    drop(sub);
    let b = Broker::start_with(options);
    let mut sub = Conn::open(b.mqtt, true);
    sub.auto_ack = false;
    let mut bytes = session.encode();
    let mut body = 77u16.to_be_bytes().to_vec();
    body.push(0); // no properties
    put_str(&mut body, filter);
    bytes.extend(frame(UNSUBSCRIBE, 2, &body));
    sub.send(&bytes);
    let ack = sub.expect_connack();
    assert!(ack.session_present);
    (b, sub)
}

#[test]
fn a_recovered_id_is_not_given_to_another_message_before_its_exchange_is_back() {
    recovered_id_stays_reserved_until_its_exchange_is_back("q2/#", false);
}

/// The same at a persistent member of a shared group, where tests/nemesis.rs saw it.
#[test]
fn a_shared_members_recovered_id_is_not_given_to_another_message_before_its_exchange_is_back() {
    recovered_id_stays_reserved_until_its_exchange_is_back("$share/g/q2/#", false);
}

/// A recovered exchange is completed with its client even when the client unsubscribes
/// before a read brings its message back. Seen by tests/nemesis.rs at its shared
/// member, which unsubscribed and subscribed again after a restart: "4:20454 came under
/// packet id 2479 while 4:18716 held it awaiting PUBREL", and the member dropped it.
#[test]
fn a_recovered_exchange_is_completed_after_its_client_unsubscribes() {
    recovered_id_stays_reserved_until_its_exchange_is_back("q2/#", true);
}

/// The same at a persistent member of a shared group.
#[test]
fn a_shared_members_recovered_exchange_is_completed_after_it_unsubscribes() {
    recovered_id_stays_reserved_until_its_exchange_is_back("$share/g/q2/#", true);
}

/// A retained QoS 2 message sent to a persistent subscriber when it subscribes is an
/// exchange like any: the client holds its packet id from the PUBLISH on. Its log
/// position lies below the session's cursor (the subscription began at the log's end),
/// so nothing may drop its `qos2_sent` entry for being below the cursor: after `kill -9`
/// it is resent under its id with DUP, and no other message takes that id first.
#[test]
fn a_retained_message_in_flight_keeps_its_packet_id_across_kill_9() {
    let dir = temp_dir();
    let options = BrokerOptions {
        shards: 2,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    };
    let b = Broker::start_with(options.clone());
    let mut publ = Conn::client(b.mqtt, true, "q2-ret-pub");
    assert_eq!(
        publ.publish(Publish::new("q2r/kept", b"retained", 2).retain(true)),
        0
    );
    drop(publ);
    let session = Connect::v5("q2-ret-sub").clean(false).session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.auto_ack = false;
    sub.sub("q2r/#", 2);
    let first = sub
        .try_publish(Duration::from_secs(10))
        .expect("the retained message on subscribe");
    assert_eq!(first.payload, b"retained");
    // Later messages of the same owner are acknowledged, so the session's cursor there
    // moves past them, and past the retained message's position.
    let mut publ = Conn::client(b.mqtt, true, "q2-ret-pub1");
    for i in 0..3u8 {
        assert_eq!(publ.publish(Publish::new("q2r/kept", &[b'a' + i], 1)), 0);
        let p = sub.try_publish(Duration::from_secs(10)).expect("live");
        sub.ack(common::raw::PUBACK, p.pid);
    }
    // The cursor is logged every 200 ms.
    std::thread::sleep(Duration::from_millis(600));
    drop(publ);
    let (b, mut sub) = restarted(b, sub, options, &session, true);
    let mut publ = Conn::client(b.mqtt, true, "q2-ret-pub2");
    for i in 0..5u8 {
        assert_eq!(publ.publish(Publish::new("q2r/new", &[i], 2)), 0);
    }
    let again = sub.drain_publishes(Duration::from_secs(3));
    let seen: Vec<(String, u16, bool)> = again
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.pid,
                p.dup,
            )
        })
        .collect();
    let under_its_id: Vec<&(String, u16, bool)> = seen
        .iter()
        .filter(|(_, pid, _)| *pid == first.pid)
        .collect();
    assert!(
        under_its_id
            .iter()
            .all(|(payload, _, dup)| payload == "retained" && *dup),
        "id {} held for the retained message went to another message: {seen:?}",
        first.pid
    );
}
