//! MQTT 5.0 message features: message expiry, topic aliases both ways, forwarded
//! properties, and the client's Receive Maximum.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

#[test]
fn expired_message_is_not_delivered_to_an_offline_session() {
    let broker = Broker::start();
    let c = Connect::v5("msg-expiry").session_expiry(60);
    let (mut sub, _) = Conn::connect(broker.mqtt, &c);
    sub.sub("mexp/#", 1);
    sub.disconnect(0);
    let mut publ = Conn::client(broker.mqtt, true, "msg-expiry-pub");
    publ.publish(Publish::new("mexp/short", b"stale", 1).prop(P_MESSAGE_EXPIRY, Prop::U32(1)));
    publ.publish(Publish::new("mexp/long", b"fresh", 1).prop(P_MESSAGE_EXPIRY, Prop::U32(60)));
    std::thread::sleep(Duration::from_secs(2));
    let (mut sub, ack) = Conn::connect(broker.mqtt, &c.clean(false));
    assert!(ack.session_present);
    let got = sub.expect_publish();
    assert_eq!(got.payload, b"fresh");
    let left = got.props.u32(P_MESSAGE_EXPIRY).expect("expiry forwarded");
    assert!(
        (55..60).contains(&left),
        "reduced by the time queued: {left}"
    );
    sub.assert_no_publish(QUIET);
}

#[test]
fn client_topic_alias_is_resolved_for_subscribers() {
    let broker = Broker::start();
    let mut sub = Conn::client(broker.mqtt, false, "alias-sub");
    sub.sub("alias/#", 1);
    let (mut publ, ack) = Conn::connect(broker.mqtt, &Connect::v5("alias-pub"));
    let alias_max = ack.props.u16(P_TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    assert!(alias_max >= 1, "broker accepts topic aliases: {ack:?}");
    let topics = names("alias/t", 8);
    for (i, t) in topics.iter().enumerate() {
        let alias = 1 + (i as u16 % alias_max);
        publ.publish(Publish::new(t, b"set", 1).prop(P_TOPIC_ALIAS, Prop::U16(alias)));
        publ.publish(Publish::new("", b"use", 1).prop(P_TOPIC_ALIAS, Prop::U16(alias)));
        // The 3.1.1 subscriber reads only now: on a loaded machine its first copy may
        // have waited past retry_backoff_ms and been resent (DUP); skip resends.
        let mut next = || loop {
            let p = sub.expect_publish();
            if !p.dup {
                return p;
            }
        };
        let a = next();
        let b = next();
        assert_eq!(
            (a.topic.as_str(), a.payload.as_slice()),
            (t.as_str(), &b"set"[..])
        );
        assert_eq!(
            (b.topic.as_str(), b.payload.as_slice()),
            (t.as_str(), &b"use"[..])
        );
    }
}

/// (topic, alias) of each PUBLISH `sub` gets within `QUIET` after the last.
fn topics_and_aliases(sub: &mut Conn) -> Vec<(String, Option<u16>)> {
    sub.drain_publishes(QUIET)
        .into_iter()
        .map(|p| (p.topic, p.props.u16(P_TOPIC_ALIAS)))
        .collect()
}

#[test]
fn the_broker_uses_topic_aliases_towards_a_client_that_allows_them() {
    let broker = Broker::start();
    // The client allows two aliases.
    let allows = Connect::v5("alias-out").prop(P_TOPIC_ALIAS_MAXIMUM, Prop::U16(2));
    let (mut sub, _) = Conn::connect(broker.mqtt, &allows);
    sub.sub("aout/#", 1);
    let (mut plain, _) = Conn::connect(broker.mqtt, &Connect::v5("alias-none"));
    plain.sub("aout/#", 1);
    let mut publ = Conn::client(broker.mqtt, true, "alias-out-pub");
    for t in ["aout/a", "aout/a", "aout/b", "aout/a", "aout/c", "aout/b"] {
        assert_eq!(publ.publish(Publish::new(t, b"x", 1)), 0);
    }
    let got = topics_and_aliases(&mut sub);
    let expected: Vec<(String, Option<u16>)> = [
        ("aout/a", 1),
        ("", 1),
        ("aout/b", 2),
        ("", 1),
        // Both taken: "b" was used longest ago and gives its alias to "c".
        ("aout/c", 2),
        ("aout/b", 1),
    ]
    .iter()
    .map(|(t, a)| (t.to_string(), Some(*a)))
    .collect();
    assert_eq!(got, expected);
    // A client that allows none gets every topic in full.
    let none = topics_and_aliases(&mut plain);
    assert_eq!(none.len(), 6);
    assert!(
        none.iter()
            .all(|(t, a)| t.starts_with("aout/") && a.is_none()),
        "{none:?}"
    );

    // A new connection starts afresh: the topic comes in full again.
    drop(sub);
    let (mut again, _) = Conn::connect(broker.mqtt, &allows);
    again.sub("aout/#", 1);
    assert_eq!(publ.publish(Publish::new("aout/c", b"y", 1)), 0);
    assert_eq!(
        topics_and_aliases(&mut again),
        vec![("aout/c".to_string(), Some(1))]
    );
}

#[test]
fn topic_alias_zero_is_a_protocol_error() {
    let broker = Broker::start();
    let (mut publ, _) = Conn::connect(broker.mqtt, &Connect::v5("alias-zero"));
    publ.send(
        &Publish::new("alias/z", b"x", 0)
            .prop(P_TOPIC_ALIAS, Prop::U16(0))
            .encode(true),
    );
    let seen = publ.expect_closed(WAIT);
    let last = seen.last().expect("DISCONNECT before close");
    assert_eq!(disconnect_reason(last), 0x94, "topic alias invalid");
}

#[test]
fn application_properties_are_forwarded_unchanged() {
    let broker = Broker::start();
    let mut sub = Conn::client(broker.mqtt, true, "props-sub");
    sub.sub("props/#", 2);
    let mut publ = Conn::client(broker.mqtt, true, "props-pub");
    for (i, t) in names("props/t", 8).iter().enumerate() {
        let qos = (i % 3) as u8;
        let sent = Publish::new(t, b"{\"k\":1}", qos)
            .prop(P_PAYLOAD_FORMAT, Prop::Byte(1))
            .prop(P_CONTENT_TYPE, Prop::Str("application/json".into()))
            .prop(P_RESPONSE_TOPIC, Prop::Str(format!("reply/{i}")))
            .prop(P_CORRELATION_DATA, Prop::Bin(vec![0, 1, 2, 255, i as u8]))
            .prop(P_USER_PROPERTY, Prop::Pair("a".into(), "1".into()))
            .prop(P_USER_PROPERTY, Prop::Pair("a".into(), "2".into()))
            .prop(P_USER_PROPERTY, Prop::Pair("ü".into(), format!("v{i}")));
        publ.publish(sent.clone());
        let got = sub.expect_publish();
        assert_eq!(got.payload, sent.payload);
        for id in [
            P_PAYLOAD_FORMAT,
            P_CONTENT_TYPE,
            P_RESPONSE_TOPIC,
            P_CORRELATION_DATA,
        ] {
            assert_eq!(got.props.get(id), sent.props.get(id), "property {id:#x}");
        }
        // User properties keep their order, duplicates included.
        assert_eq!(got.props.user(), sent.props.user());
    }
}

#[test]
fn receive_maximum_limits_unacked_deliveries() {
    let broker = Broker::start();
    let (mut sub, _) = Conn::connect(
        broker.mqtt,
        &Connect::v5("recvmax").prop(P_RECEIVE_MAXIMUM, Prop::U16(2)),
    );
    sub.sub("rm/#", 1);
    sub.auto_ack = false;
    let mut publ = Conn::client(broker.mqtt, false, "recvmax-pub");
    let topics = names("rm/t", 8);
    for t in &topics {
        publ.publish(Publish::new(t, t.as_bytes(), 1));
    }
    let first = sub.drain_publishes(Duration::from_secs(2));
    assert_eq!(first.len(), 2, "at most 2 in flight: {first:?}");
    // Each ack opens the window for one more, until all 8 arrive.
    let mut got: Vec<String> = first.iter().map(|m| m.topic.clone()).collect();
    let mut pending: Vec<u16> = first.iter().map(|m| m.pid).collect();
    while got.len() < topics.len() {
        let pid = pending.remove(0);
        sub.ack(PUBACK, pid);
        let next = sub.try_publish(WAIT).expect("next after ack");
        pending.push(next.pid);
        got.push(next.topic);
    }
    got.sort();
    let mut want = topics.clone();
    want.sort();
    assert_eq!(got, want);
}
