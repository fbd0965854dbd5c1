//! Sessions: persistence across disconnects (3.1.1 clean_session=0, v5 session
//! expiry), clean sessions, takeover by the same client id on another connection, and
//! resending unacknowledged QoS 1 messages with DUP after a reconnect.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const QUIET: Duration = Duration::from_millis(800);

#[test]
fn v311_persistent_session_keeps_subscriptions_and_offline_messages() {
    let broker = Broker::start();
    let ids = names("persist4", 8);
    for id in &ids {
        let (mut c, ack) = Conn::connect(broker.mqtt, &Connect::v4(id).clean(false));
        assert!(!ack.session_present);
        c.sub(&format!("persist/{id}"), 1);
        c.disconnect(0);
    }
    let mut publ = Conn::client(broker.mqtt, true, "persist4-pub");
    for id in &ids {
        publ.publish(Publish::new(&format!("persist/{id}"), id.as_bytes(), 1));
    }
    for id in &ids {
        let (mut c, ack) = Conn::connect(broker.mqtt, &Connect::v4(id).clean(false));
        assert!(ack.session_present, "{id}: session present");
        let got = c.expect_publish();
        assert_eq!(
            (got.topic, got.payload, got.qos),
            (format!("persist/{id}"), id.as_bytes().to_vec(), 1)
        );
        // The subscription itself survived too.
        publ.publish(Publish::new(&format!("persist/{id}"), b"live", 1));
        assert_eq!(c.expect_publish().payload, b"live");
    }
}

#[test]
fn clean_session_discards_state() {
    let broker = Broker::start();
    let (mut c, _) = Conn::connect(broker.mqtt, &Connect::v4("discard").clean(false));
    c.sub("discard/t", 1);
    c.disconnect(0);
    let (mut c, ack) = Conn::connect(broker.mqtt, &Connect::v4("discard").clean(true));
    assert!(!ack.session_present);
    let mut publ = Conn::client(broker.mqtt, false, "discard-pub");
    publ.publish(Publish::new("discard/t", b"x", 1));
    c.assert_no_publish(QUIET);
    c.disconnect(0);
    // And a clean_session=1 connection leaves nothing behind for the next one.
    let (_c, ack) = Conn::connect(broker.mqtt, &Connect::v4("discard").clean(false));
    assert!(!ack.session_present);
}

#[test]
fn v5_session_expires() {
    let broker = Broker::start();
    let ids = names("expiry5", 4);
    for id in &ids {
        let (mut c, _) = Conn::connect(broker.mqtt, &Connect::v5(id).session_expiry(1));
        c.sub(&format!("exp/{id}"), 1);
        c.disconnect(0);
    }
    // Before expiry the session is still there.
    let (c, ack) = Conn::connect(
        broker.mqtt,
        &Connect::v5(&ids[0]).clean(false).session_expiry(1),
    );
    assert!(ack.session_present);
    c.disconnect(0);
    std::thread::sleep(Duration::from_millis(2500));
    for id in &ids {
        let (_c, ack) = Conn::connect(
            broker.mqtt,
            &Connect::v5(id).clean(false).session_expiry(60),
        );
        assert!(!ack.session_present, "{id}: session expired");
    }
}

#[test]
fn a_session_expires_counted_from_its_last_disconnect() {
    // One shard: the session is resumed where it is, under the same key, with the
    // expiry timer of its first disconnect still pending.
    let broker = broker_with_shards(1, &[]);
    let c = Connect::v5("expiry-last").session_expiry(3);
    let (conn, _) = Conn::connect(broker.mqtt, &c);
    conn.disconnect(0);
    // Back before that expiry is due, gone again: the expiry counts from here.
    std::thread::sleep(Duration::from_millis(1500));
    let (conn, ack) = Conn::connect(broker.mqtt, &c.clone().clean(false));
    assert!(ack.session_present);
    conn.disconnect(0);
    // Past the first disconnect's expiry, before the second's.
    std::thread::sleep(Duration::from_millis(2300));
    let (conn, ack) = Conn::connect(broker.mqtt, &c.clone().clean(false));
    assert!(
        ack.session_present,
        "expired by the first disconnect's timer"
    );
    conn.disconnect(0);
    std::thread::sleep(Duration::from_millis(3800));
    let (_conn, ack) = Conn::connect(broker.mqtt, &c.clean(false));
    assert!(!ack.session_present, "the last disconnect's expiry ends it");
}

#[test]
fn v5_session_with_zero_expiry_ends_at_disconnect() {
    let broker = Broker::start();
    let (mut c, _) = Conn::connect(broker.mqtt, &Connect::v5("expiry0").clean(false));
    c.sub("exp0/t", 1);
    c.disconnect(0);
    let (_c, ack) = Conn::connect(broker.mqtt, &Connect::v5("expiry0").clean(false));
    assert!(!ack.session_present);
}

#[test]
fn takeover_disconnects_the_old_connection_and_keeps_the_session() {
    let broker = Broker::start();
    for id in names("takeover", 6) {
        let c = Connect::v5(&id).session_expiry(60);
        let (mut old, _) = Conn::connect(broker.mqtt, &c);
        old.sub(&format!("take/{id}"), 1);
        let (mut new, ack) = Conn::connect(broker.mqtt, &c.clone().clean(false));
        assert!(
            ack.session_present,
            "{id}: session moved to the new connection"
        );
        let seen = old.expect_closed(WAIT);
        let last = seen.last().expect("DISCONNECT before close");
        assert_eq!(disconnect_reason(last), 0x8E, "session taken over");
        let mut publ = Conn::client(broker.mqtt, false, &format!("{id}-pub"));
        publ.publish(Publish::new(&format!("take/{id}"), b"to-new", 1));
        assert_eq!(new.expect_publish().payload, b"to-new");
    }
    // 3.1.1: the old connection is simply closed.
    let (mut old, _) = Conn::connect(broker.mqtt, &Connect::v4("takeover4"));
    let (_new, _) = Conn::connect(broker.mqtt, &Connect::v4("takeover4"));
    old.expect_closed(WAIT);
}

#[test]
fn unacked_qos1_is_resent_with_dup_after_reconnect() {
    let broker = Broker::start();
    for (v5, id) in [(false, "resend4"), (true, "resend5")] {
        let c = if v5 {
            Connect::v5(id).clean(false).session_expiry(60)
        } else {
            Connect::v4(id).clean(false)
        };
        let (mut sub, _) = Conn::connect(broker.mqtt, &c);
        sub.sub(&format!("resend/{id}"), 1);
        sub.auto_ack = false;
        let mut publ = Conn::client(broker.mqtt, false, &format!("{id}-pub"));
        publ.publish(Publish::new(&format!("resend/{id}"), b"unacked", 1));
        let first = sub.expect_publish();
        assert!(!first.dup);
        sub.kill();
        std::thread::sleep(Duration::from_millis(200));
        let (mut sub, ack) = Conn::connect(broker.mqtt, &c);
        assert!(ack.session_present);
        let again = sub.expect_publish();
        assert!(again.dup, "resent with DUP=1: {again:?}");
        assert_eq!(
            (again.pid, again.payload.as_slice()),
            (first.pid, &b"unacked"[..])
        );
        sub.assert_no_publish(QUIET);
    }
}

/// Regression: many connections claiming one client id at once (on both shards) must
/// leave exactly one session, not one per connection that raced its claim.
#[test]
fn concurrent_claims_of_one_client_id_leave_one_session() {
    let broker = Broker::start();
    let ids = names("race", 3);
    let mut conns = Vec::new();
    for round in 0..10 {
        for id in &ids {
            let mut conn = Conn::open(broker.mqtt, round % 2 == 1);
            let connect = if round % 2 == 1 {
                Connect::v5(id).clean(false).session_expiry(3600)
            } else {
                Connect::v4(id).clean(false)
            };
            conn.send(&connect.encode());
            conns.push(conn);
        }
    }
    assert!(eventually(Duration::from_secs(10), || {
        broker.metric_sum("shardmq_sessions_taken_over_total") >= 27.0
    }));
    drop(conns);
    assert!(
        eventually(Duration::from_secs(10), || {
            broker.metric_sum("shardmq_connections_current") == 0.0
        }),
        "connections close"
    );
    assert_eq!(
        broker.metric_sum("shardmq_sessions_current"),
        ids.len() as f64
    );
}
