//! Subscriptions: wildcards, `$`-topics, overlapping filters, invalid filters,
//! unsubscribe, and the v5 subscription options and identifiers.
//!
//! Overlapping subscriptions: the broker delivers ONE copy per session, at the maximum
//! QoS granted among the session's matching subscriptions, carrying the subscription
//! identifiers of all of them (MQTT 5.0 3.3.4, the option the specification allows).

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

#[test]
fn plus_and_hash_wildcards_match_across_shards() {
    let broker = Broker::start();
    for v5 in [false, true] {
        let p = if v5 { "wild5" } else { "wild4" };
        let mut plus = Conn::client(broker.mqtt, v5, &format!("{p}-plus"));
        plus.sub(&format!("{p}/+/temp"), 1);
        let mut hash = Conn::client(broker.mqtt, v5, &format!("{p}-hash"));
        hash.sub(&format!("{p}/#"), 1);
        let mut publ = Conn::client(broker.mqtt, v5, &format!("{p}-pub"));
        let rooms = names("room", 8);
        for room in &rooms {
            publ.publish(Publish::new(
                &format!("{p}/{room}/temp"),
                room.as_bytes(),
                1,
            ));
            publ.publish(Publish::new(&format!("{p}/{room}/temp/x"), b"deep", 1));
        }
        publ.publish(Publish::new(p, b"parent", 1));
        let mut got: Vec<String> = plus
            .expect_publishes(8)
            .into_iter()
            .map(|m| m.topic)
            .collect();
        got.sort();
        let mut want: Vec<String> = rooms.iter().map(|r| format!("{p}/{r}/temp")).collect();
        want.sort();
        assert_eq!(got, want);
        plus.assert_no_publish(QUIET);
        // '#' also matches the parent level itself.
        let all = hash.expect_publishes(17);
        assert!(all.iter().any(|m| m.topic == p && m.payload == b"parent"));
        hash.assert_no_publish(QUIET);
    }
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = Broker::start();
    let mut hash = Conn::client(broker.mqtt, true, "dollar-hash");
    hash.sub("#", 0);
    let mut plus = Conn::client(broker.mqtt, false, "dollar-plus");
    plus.sub("+/x", 0);
    let mut exact = Conn::client(broker.mqtt, false, "dollar-exact");
    exact.sub("$foo/x", 0);
    let mut publ = Conn::client(broker.mqtt, true, "dollar-pub");
    publ.pub0("$SYS/x", b"sys");
    publ.pub0("$foo/x", b"foo");
    publ.pub0("plain/x", b"plain");
    assert_eq!(exact.expect_publish().payload, b"foo");
    assert_eq!(plus.expect_publish().payload, b"plain");
    assert_eq!(hash.expect_publish().payload, b"plain");
    plus.assert_no_publish(QUIET);
    hash.assert_no_publish(QUIET);
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = Broker::start();
    let mut sub = Conn::client(broker.mqtt, true, "overlap-sub");
    let codes = sub.subscribe_with(
        &[("ovl/#", 0)],
        Props::new().with(P_SUBSCRIPTION_ID, Prop::Var(1)),
    );
    assert_eq!(codes, vec![0]);
    let codes = sub.subscribe_with(
        &[("ovl/+/b", 2)],
        Props::new().with(P_SUBSCRIPTION_ID, Prop::Var(2)),
    );
    assert_eq!(codes, vec![2]);
    let codes = sub.subscribe_with(&[("ovl/a/+", 1)], Props::new());
    assert_eq!(codes, vec![1]);
    let mut publ = Conn::client(broker.mqtt, false, "overlap-pub");
    publ.publish(Publish::new("ovl/a/b", b"x", 2));
    let got = sub.expect_publish();
    assert_eq!(got.qos, 2, "highest granted QoS");
    assert_eq!(got.props.subscription_ids(), vec![1, 2]);
    sub.assert_no_publish(QUIET);
    // 3.1.1 gets the same single copy.
    let mut sub4 = Conn::client(broker.mqtt, false, "overlap-sub4");
    sub4.sub("ovl4/#", 1);
    sub4.sub("ovl4/a", 0);
    publ.publish(Publish::new("ovl4/a", b"y", 1));
    assert_eq!(sub4.expect_publish().qos, 1);
    sub4.assert_no_publish(QUIET);
}

/// Both levels answer a malformed filter with a SUBACK failure code for that filter and
/// keep the connection (3.1.1 also allows closing it; shardmq chooses the SUBACK).
#[test]
fn invalid_filters_get_a_failure_code() {
    let broker = Broker::start();
    for v5 in [false, true] {
        let mut c = Conn::client(broker.mqtt, v5, &format!("badfilter-{v5}"));
        let fail = if v5 { 0x8F } else { 0x80 };
        let codes = c.subscribe_with(&[("a/#/b", 1), ("ok/+", 1), ("a+", 0)], Props::new());
        assert_eq!(codes, vec![fail, 1, fail]);
    }
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = Broker::start();
    for v5 in [false, true] {
        let p = if v5 { "unsub5" } else { "unsub4" };
        let mut sub = Conn::client(broker.mqtt, v5, &format!("{p}-sub"));
        let topics = names(&format!("{p}/t"), 8);
        for t in &topics {
            sub.sub(t, 1);
        }
        let mut publ = Conn::client(broker.mqtt, false, &format!("{p}-pub"));
        for t in &topics {
            publ.publish(Publish::new(t, b"before", 1));
        }
        assert_eq!(sub.expect_publishes(8).len(), 8);
        let filters: Vec<&str> = topics.iter().map(String::as_str).collect();
        let codes = sub.unsubscribe(&filters);
        if v5 {
            assert_eq!(codes, vec![0; 8]);
        }
        for t in &topics {
            publ.publish(Publish::new(t, b"after", 1));
        }
        sub.assert_no_publish(QUIET);
    }
}

#[test]
fn v5_unsubscribe_of_unknown_filter_is_0x11() {
    let broker = Broker::start();
    let mut c = Conn::client(broker.mqtt, true, "unsub-unknown");
    c.sub("known/t", 0);
    assert_eq!(c.unsubscribe(&["never/t", "known/t"]), vec![0x11, 0x00]);
}

#[test]
fn v5_no_local_suppresses_own_messages() {
    let broker = Broker::start();
    let mut c = Conn::client(broker.mqtt, true, "nolocal");
    let codes = c.subscribe_with(&[("nl/#", sub_opts(1, true, false, 0))], Props::new());
    assert_eq!(codes, vec![1]);
    let mut other = Conn::client(broker.mqtt, true, "nolocal-other");
    for t in names("nl/t", 8) {
        c.publish(Publish::new(&t, b"own", 1));
        other.publish(Publish::new(&t, b"other", 1));
    }
    let got = c.expect_publishes(8);
    assert!(got.iter().all(|m| m.payload == b"other"), "{got:?}");
    c.assert_no_publish(QUIET);
}

#[test]
fn v5_retain_as_published_keeps_the_flag_on_live_messages() {
    let broker = Broker::start();
    let mut rap = Conn::client(broker.mqtt, true, "rap-on");
    rap.subscribe_with(&[("rap/t", sub_opts(0, false, true, 0))], Props::new());
    let mut plain = Conn::client(broker.mqtt, true, "rap-off");
    plain.subscribe_with(&[("rap/t", sub_opts(0, false, false, 0))], Props::new());
    let mut publ = Conn::client(broker.mqtt, true, "rap-pub");
    publ.publish(Publish::new("rap/t", b"live", 1).retain(true));
    assert!(rap.expect_publish().retain, "retain as published");
    assert!(
        !plain.expect_publish().retain,
        "live delivery clears retain"
    );
}

#[test]
fn v5_retain_handling_0_1_2() {
    let broker = Broker::start();
    let mut publ = Conn::client(broker.mqtt, true, "rh-pub");
    publ.publish(Publish::new("rh/t", b"kept", 1).retain(true));
    let mut c = Conn::client(broker.mqtt, true, "rh-sub");
    // 0: send retained on every subscribe.
    c.subscribe_with(&[("rh/t", sub_opts(1, false, false, 0))], Props::new());
    assert_eq!(c.expect_publish().payload, b"kept");
    c.subscribe_with(&[("rh/t", sub_opts(1, false, false, 0))], Props::new());
    assert_eq!(c.expect_publish().payload, b"kept");
    // 1: only if the subscription did not exist.
    c.subscribe_with(&[("rh/t", sub_opts(1, false, false, 1))], Props::new());
    c.assert_no_publish(QUIET);
    c.subscribe_with(&[("rh/+", sub_opts(1, false, false, 1))], Props::new());
    assert_eq!(c.expect_publish().payload, b"kept");
    // 2: never.
    let mut never = Conn::client(broker.mqtt, true, "rh-never");
    never.subscribe_with(&[("rh/t", sub_opts(1, false, false, 2))], Props::new());
    never.assert_no_publish(QUIET);
    // Live messages still flow under retain handling 2.
    publ.publish(Publish::new("rh/t", b"live", 1));
    assert_eq!(never.expect_publish().payload, b"live");
}

#[test]
fn v5_subscription_identifiers_are_carried_on_delivery() {
    let broker = Broker::start();
    let mut c = Conn::client(broker.mqtt, true, "subid");
    let topics = names("subid/t", 8);
    for (i, t) in topics.iter().enumerate() {
        c.subscribe_with(
            &[(t, 1)],
            Props::new().with(P_SUBSCRIPTION_ID, Prop::Var(100 + i as u32)),
        );
    }
    c.sub("subid-none/t", 1);
    let mut publ = Conn::client(broker.mqtt, false, "subid-pub");
    for t in &topics {
        publ.publish(Publish::new(t, b"x", 1));
    }
    for m in c.expect_publishes(8) {
        let i = topics
            .iter()
            .position(|t| *t == m.topic)
            .expect("known topic");
        assert_eq!(m.props.subscription_ids(), vec![100 + i as u32]);
    }
    publ.publish(Publish::new("subid-none/t", b"y", 1));
    assert_eq!(
        c.expect_publish().props.subscription_ids(),
        Vec::<u32>::new()
    );
}

/// A filter without wildcards is announced to its topic's owner only (none when the
/// subscriber's shard owns it): whichever shard a subscriber and a publisher landed on,
/// a publish made after the SUBACK is delivered, one made after the UNSUBACK is not, and
/// a filter subscribed again after its last subscriber left is routed again.
#[test]
fn exact_filters_route_from_every_shard_after_suback_and_stop_after_unsuback() {
    let broker = Broker::start();
    let n_subs = 8;
    let per_sub = 4;
    let topic = |i: usize, j: usize| format!("exact/{i}/{j}");
    // 8 subscribers and 4 publishers: both shards hold some of each (a test that lands
    // them all on one shard, 2 in 2^12, still checks delivery); 32 topics: both own some.
    let mut subs: Vec<Conn> = (0..n_subs)
        .map(|i| Conn::client(broker.mqtt, i % 2 == 1, &format!("exact-sub-{i}")))
        .collect();
    let mut pubs: Vec<Conn> = (0..4)
        .map(|k| Conn::client(broker.mqtt, k % 2 == 0, &format!("exact-pub-{k}")))
        .collect();
    let publish_all = |pubs: &mut Vec<Conn>, round: &str| {
        for p in pubs.iter_mut() {
            for i in 0..n_subs {
                for j in 0..per_sub {
                    assert_eq!(
                        p.publish(Publish::new(&topic(i, j), round.as_bytes(), 1)),
                        0
                    );
                }
            }
        }
    };
    let received = |s: &mut Conn, n: usize| -> Vec<(String, Vec<u8>)> {
        let mut got: Vec<_> = s
            .expect_publishes(n)
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect();
        got.sort();
        got
    };
    let wanted = |i: usize, js: &[usize], round: &str| -> Vec<(String, Vec<u8>)> {
        let mut want: Vec<_> = js
            .iter()
            .flat_map(|&j| (0..4).map(move |_| (topic(i, j), round.as_bytes().to_vec())))
            .collect();
        want.sort();
        want
    };

    for (i, s) in subs.iter_mut().enumerate() {
        for j in 0..per_sub {
            s.sub(&topic(i, j), 1);
        }
    }
    publish_all(&mut pubs, "subscribed");
    for (i, s) in subs.iter_mut().enumerate() {
        assert_eq!(
            received(s, 16),
            wanted(i, &[0, 1, 2, 3], "subscribed"),
            "sub {i}"
        );
    }

    // The last subscriber of a filter leaves: its shard tells the owner.
    for (i, s) in subs.iter_mut().enumerate() {
        s.unsubscribe(&[&topic(i, 0), &topic(i, 1)]);
    }
    publish_all(&mut pubs, "half");
    for (i, s) in subs.iter_mut().enumerate() {
        assert_eq!(received(s, 8), wanted(i, &[2, 3], "half"), "sub {i}");
        s.assert_no_publish(Duration::from_millis(50));
    }

    // And comes back: announced again.
    for (i, s) in subs.iter_mut().enumerate() {
        s.sub(&topic(i, 0), 1);
    }
    publish_all(&mut pubs, "again");
    for (i, s) in subs.iter_mut().enumerate() {
        assert_eq!(received(s, 12), wanted(i, &[0, 2, 3], "again"), "sub {i}");
    }
    for s in subs.iter_mut() {
        s.assert_no_publish(QUIET);
    }
}
