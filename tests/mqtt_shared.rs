//! Shared subscriptions (`$share/{group}/{filter}`): each message goes to exactly one
//! member of a group, across shards, and a member's unacknowledged messages go to
//! another member when it leaves.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

/// The topics of `received`, sorted: which messages arrived, whatever their order.
fn sorted_topics(received: Vec<Publish>) -> Vec<String> {
    sorted(&received.into_iter().map(|m| m.topic).collect::<Vec<_>>())
}

fn sorted(topics: &[String]) -> Vec<String> {
    let mut topics = topics.to_vec();
    topics.sort();
    topics
}

#[test]
fn each_message_goes_to_exactly_one_member() {
    let broker = Broker::start();
    let mut members: Vec<Conn> = names("share-m", 3)
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut c = Conn::client(broker.mqtt, i != 1, id);
            c.sub("$share/g/shared/#", 1);
            c
        })
        .collect();
    // A plain subscriber to the same filter still gets every message.
    let mut plain = Conn::client(broker.mqtt, true, "share-plain");
    plain.sub("shared/#", 1);
    let mut publ = Conn::client(broker.mqtt, true, "share-pub");
    let topics = names("shared/t", 8);
    let mut sent = BTreeSet::new();
    for round in 0..6 {
        for t in &topics {
            let payload = format!("{t}#{round}");
            publ.publish(Publish::new(t, payload.as_bytes(), 1));
            sent.insert(payload);
        }
    }
    assert_eq!(plain.expect_publishes(sent.len()).len(), sent.len());
    let mut got = Vec::new();
    for m in &mut members {
        got.extend(m.drain_publishes(Duration::from_secs(2)));
    }
    let payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    let unique: BTreeSet<String> = payloads.iter().cloned().collect();
    assert_eq!(
        payloads.len(),
        sent.len(),
        "each message to exactly one member"
    );
    assert_eq!(unique, sent, "all messages delivered");
    assert!(
        got.iter().all(|m| !m.topic.starts_with("$share")),
        "real topic delivered"
    );
}

/// The leaving member's session ends with its connection (clean start, no expiry), so
/// its unacknowledged messages go to the remaining member (MQTT 5.0 4.8.2 SHOULD).
#[test]
fn unacked_messages_of_a_leaving_member_go_to_another() {
    let broker = Broker::start();
    let mut leaver = Conn::client(broker.mqtt, true, "share-leaver");
    leaver.sub("$share/h/handoff/#", 1);
    leaver.auto_ack = false;
    let mut publ = Conn::client(broker.mqtt, false, "share-handoff-pub");
    let topics = names("handoff/t", 8);
    for t in &topics {
        publ.publish(Publish::new(t, t.as_bytes(), 1));
    }
    let held = leaver.expect_publishes(topics.len());
    let mut stayer = Conn::client(broker.mqtt, false, "share-stayer");
    stayer.sub("$share/h/handoff/#", 1);
    leaver.kill();
    assert_eq!(
        sorted_topics(stayer.expect_publishes(held.len())),
        sorted(&topics)
    );
    stayer.assert_no_publish(QUIET);
}

/// A new connection with the member's client id ends its session before the broker has
/// read the old connection's close (a client that reconnects at once): its unacknowledged
/// messages still go to the remaining member. For a 3.1.1 clean session, and for a v5
/// session with an expiry that the new connection ends by clean start.
#[test]
fn unacked_messages_of_a_session_ended_by_a_new_connection_go_to_another() {
    let broker = Broker::start();
    for (case, old) in [
        ("v4-clean", Connect::v4("share-taken-v4")),
        (
            "v5-expiry",
            Connect::v5("share-taken-v5").session_expiry(600),
        ),
    ] {
        let filter = format!("$share/k/taken/{case}/#");
        let (mut leaver, _) = Conn::connect(broker.mqtt, &old);
        leaver.sub(&filter, 1);
        leaver.auto_ack = false;
        let mut stayer = Conn::client(broker.mqtt, true, &format!("share-taken-stayer-{case}"));
        stayer.sub(&filter, 1);
        let mut publ = Conn::client(broker.mqtt, false, &format!("share-taken-pub-{case}"));
        let topics = names(&format!("taken/{case}/t"), 8);
        for t in &topics {
            publ.publish(Publish::new(t, t.as_bytes(), 1));
        }
        // Round-robin: the stayer takes half, the leaver holds the other half unacked.
        let held = leaver.drain_publishes(Duration::from_secs(2));
        assert!(!held.is_empty(), "{case}: the leaver was given messages");
        // The old connection stays open: the new one's CONNECT ends the session first.
        let renewed = Connect {
            clean: true,
            props: Props::new(),
            ..old.clone()
        };
        let (mut newer, ack) = Conn::connect(broker.mqtt, &renewed);
        assert!(!ack.session_present, "{case}: clean start");
        // Its own half, then the leaver's.
        assert_eq!(
            sorted_topics(stayer.drain_publishes(Duration::from_secs(3))),
            sorted(&topics),
            "{case}: the stayer got every message, once"
        );
        newer.assert_no_publish(QUIET);
        drop(leaver);
    }
}

/// A persistent member that stays offline holds what its group had no connected member
/// for; when its session expires, that goes to a member that joined meanwhile.
#[test]
fn messages_held_by_an_expiring_offline_member_go_to_another() {
    let broker = Broker::start();
    let filter = "$share/x/expiring/#";
    let (mut member, _) = Conn::connect(
        broker.mqtt,
        &Connect::v5("share-expiring").clean(true).session_expiry(2),
    );
    member.sub(filter, 1);
    member.disconnect(0);
    let mut publ = Conn::client(broker.mqtt, false, "share-expiring-pub");
    let topics = names("expiring/t", 6);
    for t in &topics {
        publ.publish(Publish::new(t, t.as_bytes(), 1));
    }
    let mut stayer = Conn::client(broker.mqtt, true, "share-expiring-stayer");
    stayer.sub(filter, 1);
    // Queued for the offline member until its session ends, 2 s after it left.
    assert_eq!(
        sorted_topics(stayer.expect_publishes(topics.len())),
        sorted(&topics)
    );
    stayer.assert_no_publish(QUIET);
}
