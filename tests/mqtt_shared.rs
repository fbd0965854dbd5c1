//! Shared subscriptions (`$share/{group}/{filter}`): each message goes to exactly one
//! member of a group, across shards, and a member's unacknowledged messages go to
//! another member when it leaves.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

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
    let mut got: Vec<String> = stayer
        .expect_publishes(held.len())
        .into_iter()
        .map(|m| m.topic)
        .collect();
    got.sort();
    let mut want = topics.clone();
    want.sort();
    assert_eq!(got, want);
    stayer.assert_no_publish(QUIET);
}
