//! MQTT 5.0 §4.8.2: a QoS 2 message the broker was sending to a shared member whose
//! connection broke is completed to that same client when it reconnects
//! [MQTT-4.8.2-4], not given to another member; QoS 1 may go to another member.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_secs(2);

#[test]
fn a_qos2_message_in_flight_to_a_member_whose_connection_broke_stays_with_it() {
    let broker = Broker::start();
    let connect = Connect::v5("share-q2-member")
        .clean(false)
        .session_expiry(600);
    let (mut member, _) = Conn::connect(broker.mqtt, &connect);
    member.sub("$share/q2/q2/t", 2);
    member.auto_ack = false;
    let mut publ = Conn::client(broker.mqtt, true, "share-q2-pub");
    assert_eq!(publ.publish(Publish::new("q2/t", b"exactly-once", 2)), 0);
    assert_eq!(publ.publish(Publish::new("q2/t", b"at-least-once", 1)), 0);
    let first = member.expect_publishes(2);
    let q2 = first
        .iter()
        .find(|p| p.qos == 2)
        .expect("the QoS 2 PUBLISH");
    // Another member joins; the first one's connection breaks before its PUBREC.
    let mut other = Conn::client(broker.mqtt, true, "share-q2-other");
    other.sub("$share/q2/q2/t", 2);
    member.kill();
    let to_other: Vec<Vec<u8>> = other
        .drain_publishes(QUIET)
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert!(
        !to_other.contains(&b"exactly-once".to_vec()),
        "the QoS 2 message in flight went to another member"
    );

    let (mut member, ack) = Conn::connect(broker.mqtt, &connect);
    assert!(ack.session_present, "the session was kept");
    member.auto_ack = false;
    let again = member.drain_publishes(QUIET);
    let resent = again
        .iter()
        .find(|p| p.payload == b"exactly-once")
        .unwrap_or_else(|| panic!("the QoS 2 message was not resent to its member: {again:?}"));
    assert!(resent.dup, "resent with DUP");
    assert_eq!(resent.pid, q2.pid, "under its packet id");
    // The exchange completes with that client.
    member.ack(PUBREC, resent.pid);
    let rel = member.expect_kind(PUBREL);
    assert_eq!(Reader::new(&rel.body).u16(), resent.pid);
    member.ack(PUBCOMP, resent.pid);
    // The QoS 1 message reached one of them (each may have it; it is QoS 1).
    let qos1_somewhere = to_other.contains(&b"at-least-once".to_vec())
        || again.iter().any(|p| p.payload == b"at-least-once");
    assert!(qos1_somewhere, "the QoS 1 message was delivered again");
    other.assert_no_publish(QUIET);
}
