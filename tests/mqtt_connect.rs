//! CONNECT and the connection's life: CONNACK codes for both protocol levels, client
//! identifiers, protocol violations that close the connection, keep-alive, and
//! authentication (anonymous, API keys, users).

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

#[test]
fn connack_success_for_both_protocol_levels() {
    let broker = Broker::start();
    for (i, id) in names("conn-ok", 8).iter().enumerate() {
        let c = if i % 2 == 0 {
            Connect::v4(id)
        } else {
            Connect::v5(id)
        };
        let (_conn, ack) = Conn::connect(broker.mqtt, &c);
        assert!(
            !ack.session_present,
            "clean connect has no session: {ack:?}"
        );
    }
}

#[test]
fn v5_connack_announces_receive_maximum() {
    let broker = broker_with(&[("RECEIVE_MAXIMUM", "7")]);
    let (_conn, ack) = Conn::connect(broker.mqtt, &Connect::v5("recv-max-announce"));
    assert_eq!(ack.props.u16(P_RECEIVE_MAXIMUM), Some(7), "{ack:?}");
}

#[test]
fn v5_empty_client_id_gets_an_assigned_identifier() {
    let broker = Broker::start();
    let (mut conn, ack) = Conn::connect(broker.mqtt, &Connect::v5(""));
    let assigned = ack
        .props
        .str(P_ASSIGNED_CLIENT_ID)
        .expect("Assigned Client Identifier property");
    assert!(!assigned.is_empty());
    // The connection works.
    conn.sub("assigned/t", 0);
    conn.pub0("assigned/t", b"x");
    assert_eq!(conn.expect_publish().payload, b"x");
    // Two anonymous clients get different identifiers.
    let (_c2, ack2) = Conn::connect(broker.mqtt, &Connect::v5(""));
    assert_ne!(ack2.props.str(P_ASSIGNED_CLIENT_ID), Some(assigned));
}

#[test]
fn v311_empty_client_id_needs_clean_session() {
    let broker = Broker::start();
    let (_conn, ack) = Conn::connect_raw(broker.mqtt, &Connect::v4(""));
    assert_eq!(ack.code, 0, "empty id with clean session is accepted");
    let (mut conn, ack) = Conn::connect_raw(broker.mqtt, &Connect::v4("").clean(false));
    assert_eq!(ack.code, 2, "identifier rejected");
    conn.expect_closed(WAIT);
}

#[test]
fn unknown_protocol_level_is_refused_and_closed() {
    let broker = Broker::start();
    let mut c = Connect::v4("level-6");
    c.level = 6;
    let mut conn = Conn::open(broker.mqtt, false);
    conn.send(&c.encode());
    let p = conn.expect(WAIT);
    assert_eq!(p.kind, CONNACK, "{p:?}");
    // Answered in the 3.1.1 form: flags, return code 1, nothing else.
    assert_eq!(p.body, vec![0, 1], "unacceptable protocol version");
    conn.expect_closed(WAIT);
}

/// A second CONNECT is a protocol error: the connection is closed, and a v5 client is
/// told why with DISCONNECT 0x82 first.
#[test]
fn second_connect_closes_the_connection() {
    let broker = Broker::start();
    let c = Connect::v4("second-connect-4");
    let (mut conn, _) = Conn::connect(broker.mqtt, &c);
    conn.try_send(&c.encode());
    let seen = conn.expect_closed(WAIT);
    assert!(seen.iter().all(|p| p.kind != CONNACK), "{seen:?}");

    let c = Connect::v5("second-connect-5");
    let (mut conn, _) = Conn::connect(broker.mqtt, &c);
    conn.try_send(&c.encode());
    let seen = conn.expect_closed(WAIT);
    let last = seen.last().expect("v5 DISCONNECT before close");
    assert_eq!(disconnect_reason(last), 0x82, "protocol error");
}

#[test]
fn first_packet_other_than_connect_closes() {
    let broker = Broker::start();
    // Control: a proper CONNECT on the same broker is answered.
    let _control = Conn::client(broker.mqtt, false, "first-packet-control");
    for v5 in [false, true] {
        let mut conn = Conn::open(broker.mqtt, v5);
        conn.send(&Publish::new("t", b"x", 0).encode(v5));
        let seen = conn.expect_closed(WAIT);
        assert!(seen.iter().all(|p| p.kind != CONNACK), "{seen:?}");
    }
    let mut conn = Conn::open(broker.mqtt, false);
    conn.send(&frame(PINGREQ, 0, &[]));
    let seen = conn.expect_closed(WAIT);
    assert!(seen.iter().all(|p| p.kind != PINGRESP), "{seen:?}");
}

#[test]
fn silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let broker = Broker::start();
    for (i, id) in names("keepalive", 2).iter().enumerate() {
        let c = if i == 0 {
            Connect::v4(id)
        } else {
            Connect::v5(id)
        };
        let (mut conn, _) = Conn::connect(broker.mqtt, &c.keep_alive(1));
        let start = Instant::now();
        conn.expect_closed(Duration::from_secs(5));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took <= Duration::from_secs(3),
            "closed after {took:?}, expected about 1.5 s"
        );
    }
}

#[test]
fn pingreq_gets_pingresp_and_keeps_the_connection() {
    let broker = Broker::start();
    let (mut conn, _) = Conn::connect(broker.mqtt, &Connect::v4("pinger").keep_alive(1));
    for _ in 0..6 {
        conn.ping();
        match conn.recv(Duration::from_secs(2)) {
            Recv::Packet(p) => assert_eq!(p.kind, PINGRESP, "{p:?}"),
            other => panic!("expected PINGRESP, got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

const API_KEY: &str = "test-api-key-0123456789";

#[test]
fn anonymous_refused_when_not_allowed() {
    let broker = broker_with(&[("ALLOW_ANONYMOUS", "false"), ("API_KEYS", API_KEY)]);
    let (mut conn, ack) = Conn::connect_raw(broker.mqtt, &Connect::v4("anon-4"));
    assert_eq!(ack.code, 5, "not authorized");
    conn.expect_closed(WAIT);
    let (mut conn, ack) = Conn::connect_raw(broker.mqtt, &Connect::v5("anon-5"));
    assert_eq!(ack.code, 0x87, "not authorized");
    conn.expect_closed(WAIT);
}

#[test]
fn api_key_as_password_is_accepted() {
    let broker = broker_with(&[("ALLOW_ANONYMOUS", "false"), ("API_KEYS", API_KEY)]);
    Conn::connect(broker.mqtt, &Connect::v4("key-4").login("any", API_KEY));
    Conn::connect(broker.mqtt, &Connect::v5("key-5").login("any", API_KEY));
    let (_, ack) = Conn::connect_raw(
        broker.mqtt,
        &Connect::v5("key-bad").login("any", "not-the-api-key-000"),
    );
    assert_eq!(ack.code, 0x86, "bad user name or password");
}

#[test]
fn users_need_the_right_password() {
    let dir = temp_dir();
    let file = dir.path().join("auth.toml");
    let hash = hash_password("s3cret-pw");
    std::fs::write(
        &file,
        format!(
            "allow_anonymous = false\n\n[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let broker = Broker::start_with(BrokerOptions {
        args: vec!["--config".into(), file.to_str().unwrap().into()],
        ..BrokerOptions::default()
    });
    Conn::connect(
        broker.mqtt,
        &Connect::v4("alice-4").login("alice", "s3cret-pw"),
    );
    Conn::connect(
        broker.mqtt,
        &Connect::v5("alice-5").login("alice", "s3cret-pw"),
    );
    let (mut conn, ack) = Conn::connect_raw(
        broker.mqtt,
        &Connect::v4("mallory-4").login("alice", "wrong"),
    );
    assert_eq!(ack.code, 4, "bad user name or password");
    conn.expect_closed(WAIT);
    let (mut conn, ack) = Conn::connect_raw(
        broker.mqtt,
        &Connect::v5("mallory-5").login("alice", "wrong"),
    );
    assert_eq!(ack.code, 0x86, "bad user name or password");
    conn.expect_closed(WAIT);
}
