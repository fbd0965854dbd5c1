//! Retained messages: stored per topic on its owner shard, replaced, cleared by an empty
//! payload, delivered on subscribe with RETAIN=1, and gathered from every shard for a
//! wildcard subscription.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

#[test]
fn retained_is_stored_replaced_and_cleared() {
    let broker = Broker::start();
    for v5 in [false, true] {
        let topic = if v5 { "ret5/t" } else { "ret4/t" };
        let mut publ = Conn::client(broker.mqtt, v5, &format!("{topic}-pub"));
        publ.publish(Publish::new(topic, b"first", 1).retain(true));
        let mut a = Conn::client(broker.mqtt, v5, &format!("{topic}-a"));
        a.sub(topic, 1);
        let got = a.expect_publish();
        assert_eq!((got.payload.as_slice(), got.retain), (&b"first"[..], true));

        publ.publish(Publish::new(topic, b"second", 1).retain(true));
        // The live copy to an existing subscriber has RETAIN=0.
        let live = a.expect_publish();
        assert_eq!(
            (live.payload.as_slice(), live.retain),
            (&b"second"[..], false)
        );
        let mut b = Conn::client(broker.mqtt, v5, &format!("{topic}-b"));
        b.sub(topic, 1);
        let got = b.expect_publish();
        assert_eq!((got.payload.as_slice(), got.retain), (&b"second"[..], true));
        b.assert_no_publish(QUIET);

        publ.publish(Publish::new(topic, b"", 1).retain(true));
        let mut c = Conn::client(broker.mqtt, v5, &format!("{topic}-c"));
        c.sub(topic, 1);
        c.assert_no_publish(QUIET);
    }
}

#[test]
fn non_retained_publish_leaves_the_retained_message() {
    let broker = Broker::start();
    let mut publ = Conn::client(broker.mqtt, true, "keep-pub");
    publ.publish(Publish::new("keep/t", b"retained", 1).retain(true));
    publ.publish(Publish::new("keep/t", b"transient", 1));
    let mut s = Conn::client(broker.mqtt, true, "keep-sub");
    s.sub("keep/t", 1);
    assert_eq!(s.expect_publish().payload, b"retained");
    s.assert_no_publish(QUIET);
}

#[test]
fn wildcard_subscribe_gathers_retained_from_all_shards() {
    let broker = Broker::start();
    let topics = names("gather/t", 10);
    let mut publ = Conn::client(broker.mqtt, false, "gather-pub");
    for t in &topics {
        publ.publish(Publish::new(t, t.as_bytes(), 1).retain(true));
    }
    publ.publish(Publish::new("other/t", b"no", 1).retain(true));
    for (v5, filter) in [(false, "gather/#"), (true, "gather/+")] {
        let mut s = Conn::client(broker.mqtt, v5, &format!("gather-sub-{v5}"));
        s.sub(filter, 1);
        let mut got: Vec<(String, Vec<u8>, bool)> = s
            .expect_publishes(10)
            .into_iter()
            .map(|m| (m.topic, m.payload, m.retain))
            .collect();
        got.sort();
        let mut want: Vec<_> = topics
            .iter()
            .map(|t| (t.clone(), t.as_bytes().to_vec(), true))
            .collect();
        want.sort();
        assert_eq!(got, want);
        s.assert_no_publish(QUIET);
    }
}
