//! Every malformed input closes only its own connection. One test per class of bad input:
//! a healthy 5.0 client is connected first, on the same shard (the broker runs one shard),
//! a second client sends the bad bytes, and the test asserts what the bad connection is
//! told — the MQTT 5 reason code in DISCONNECT, or in CONNACK while connecting — that it is
//! closed, and that the healthy client still publishes and receives afterwards.
//! A 3.1.1 client is only closed: 3.1.1 has no DISCONNECT from the server and no CONNACK
//! code for these errors.
//!
//! Some classes are also covered from other angles in `mqtt_connect.rs` (unknown level,
//! second CONNECT, packet before CONNECT) and `mqtt_v5.rs` (topic alias 0); here each gets
//! the check that the rest of the shard is unaffected.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::raw::*;
use common::{Broker, BrokerOptions};

/// The broker's Maximum Packet Size in these tests, in bytes.
const MAX_PACKET_BYTES: usize = 2048;
/// The broker's Topic Alias Maximum in these tests.
const TOPIC_ALIAS_MAX: u16 = 8;

// MQTT 5 reason codes.
const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const UNSUPPORTED_VERSION: u8 = 0x84;
const TOPIC_NAME_INVALID: u8 = 0x90;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;
/// 3.1.1 CONNACK return code 1: unacceptable protocol version.
const V3_UNACCEPTABLE_VERSION: u8 = 0x01;

/// One broker with one shard and a client on it that must keep working while others
/// misbehave: subscribed to its own topic, it publishes at QoS 1 and expects the PUBACK
/// and its own message back.
struct Shard {
    broker: Broker,
    healthy: Conn,
    topic: String,
    sent: u32,
}

/// What the broker tells the bad connection before closing it.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// v5 DISCONNECT with this reason code.
    Disconnect(u8),
    /// v5 CONNACK with this reason code.
    ConnAck(u8),
    /// 3.1.1 CONNACK with this return code.
    ConnAckV3(u8),
    /// Nothing: the connection is just closed.
    Nothing,
}

fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Shard {
    fn start(name: &str) -> Shard {
        let broker = Broker::start_with(BrokerOptions {
            shards: 1,
            env: vec![
                (
                    "SHARDMQ_MAX_PACKET_BYTES".into(),
                    MAX_PACKET_BYTES.to_string(),
                ),
                (
                    "SHARDMQ_TOPIC_ALIAS_MAX".into(),
                    TOPIC_ALIAS_MAX.to_string(),
                ),
            ],
            ..BrokerOptions::default()
        });
        let mut healthy = Conn::client(broker.mqtt, true, &format!("healthy-{name}"));
        let topic = format!("healthy/{name}");
        healthy.sub(&topic, 1);
        let mut shard = Shard {
            broker,
            healthy,
            topic,
            sent: 0,
        };
        shard.assert_healthy();
        shard
    }

    /// The healthy client publishes and receives, and a new client can connect.
    fn assert_healthy(&mut self) {
        self.sent += 1;
        let payload = format!("still here {}", self.sent).into_bytes();
        let code = self.healthy.publish(Publish::new(&self.topic, &payload, 1));
        assert!(code < 0x80, "healthy publish refused with {code:#x}");
        let got = self.healthy.expect_publish();
        assert_eq!(
            (got.topic.as_str(), got.payload),
            (self.topic.as_str(), payload)
        );
        let fresh = Conn::client(self.broker.mqtt, false, &unique_id("fresh"));
        fresh.disconnect(0);
    }

    /// `bad` (fresh or connected) sends `bytes`; checks the answer, the close, and that
    /// the rest of the shard still works.
    fn reject(&mut self, mut bad: Conn, bytes: &[u8], answer: Answer) {
        bad.try_send(bytes);
        let seen = bad.expect_closed(WAIT);
        let context = format!("v5={} sent {bytes:02x?}: got {seen:?}", bad.v5);
        match answer {
            Answer::Disconnect(code) => {
                assert_eq!(seen.len(), 1, "{context}");
                assert_eq!(disconnect_reason(&seen[0]), code, "{context}");
            }
            Answer::ConnAck(code) | Answer::ConnAckV3(code) => {
                assert_eq!(seen.len(), 1, "{context}");
                assert_eq!(seen[0].kind, CONNACK, "{context}");
                let v5 = matches!(answer, Answer::ConnAck(_));
                assert_eq!(decode_connack(&seen[0], v5).code, code, "{context}");
                if !v5 {
                    assert_eq!(seen[0].body.len(), 2, "3.1.1 form: {context}");
                }
            }
            Answer::Nothing => assert!(seen.is_empty(), "{context}"),
        }
        self.assert_healthy();
    }

    /// Bad bytes as the first thing on a new connection.
    fn raw(&mut self, bytes: &[u8], answer: Answer) {
        let bad = Conn::open(self.broker.mqtt, matches!(answer, Answer::ConnAck(_)));
        self.reject(bad, bytes, answer);
    }

    /// A bad CONNECT at 5.0 (refused in CONNACK with `code`) and at 3.1.1 (closed).
    fn bad_connect(&mut self, make: impl Fn(u8) -> Vec<u8>, code: u8) {
        self.raw(&make(5), Answer::ConnAck(code));
        self.raw(&make(4), Answer::Nothing);
    }

    /// Bad bytes after a proper CONNECT at both levels: v5 gets DISCONNECT `code`, 3.1.1
    /// is closed.
    fn connected(&mut self, bytes: impl Fn(bool) -> Vec<u8>, code: u8) {
        for v5 in [false, true] {
            let bad = Conn::client(self.broker.mqtt, v5, &unique_id("bad"));
            let answer = if v5 {
                Answer::Disconnect(code)
            } else {
                Answer::Nothing
            };
            self.reject(bad, &bytes(v5), answer);
        }
    }

    /// Bad bytes after a proper 5.0 CONNECT.
    fn connected_v5(&mut self, bytes: &[u8], code: u8) {
        let bad = Conn::client(self.broker.mqtt, true, &unique_id("bad"));
        self.reject(bad, bytes, Answer::Disconnect(code));
    }
}

fn publish(topic: &str, qos: u8, pid: u16, v5: bool) -> Vec<u8> {
    Publish::new(topic, b"payload", qos).pid(pid).encode(v5)
}

/// A PUBLISH whose topic is these raw bytes (QoS 0).
fn publish_raw_topic(topic: &[u8], v5: bool) -> Vec<u8> {
    let mut body = Vec::new();
    put_bin(&mut body, topic);
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(b"payload");
    frame(PUBLISH, 0, &body)
}

fn subscribe(pid: u16, filters: &[&str], v5: bool) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for filter in filters {
        put_str(&mut body, filter);
        body.push(1);
    }
    frame(SUBSCRIBE, 2, &body)
}

/// A CONNECT at `level` with byte `at` (counted from the fixed header) replaced.
fn connect_patched(level: u8, at: usize, value: u8) -> Vec<u8> {
    let mut c = Connect::v4(&unique_id("patched"));
    c.level = level;
    let mut bytes = c.encode();
    bytes[at] = value;
    bytes
}

// Offsets in a short CONNECT: header, remaining length, name length (2), "MQTT", level, flags.
const CONNECT_NAME_AT: usize = 4;
const CONNECT_LEVEL_AT: usize = 8;
const CONNECT_FLAGS_AT: usize = 9;

#[test]
fn remaining_length_over_four_bytes_or_short_is_malformed() {
    let mut shard = Shard::start("remaining-length");
    shard.connected(|_| vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], MALFORMED);
    // Not in its minimal form [MQTT-1.5.5-1]: a PINGREQ whose zero length takes 2 bytes.
    shard.connected(|_| vec![0xC0, 0x80, 0x00], MALFORMED);
    // A remaining length too short for the topic it announces.
    let short = |v5| {
        let mut b = publish("remaining/short", 0, 0, v5);
        b[1] = 3;
        b
    };
    shard.connected(short, MALFORMED);
    // Before CONNECT nothing is known about the client: it is just closed.
    shard.raw(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Answer::Nothing);
}

#[test]
fn reserved_flag_bits_are_malformed() {
    let mut shard = Shard::start("reserved-flags");
    let subscribe_flags_0 = |v5| {
        let mut b = subscribe(1, &["a/b"], v5);
        b[0] = SUBSCRIBE << 4;
        b
    };
    shard.connected(subscribe_flags_0, MALFORMED);
    shard.connected(|_| frame(PUBREL, 0, &[0, 1]), MALFORMED);
    shard.connected(|_| frame(PINGREQ, 1, &[]), MALFORMED);
    // CONNECT's reserved flag bit 0.
    shard.bad_connect(
        |level| connect_patched(level, CONNECT_FLAGS_AT, 0x03),
        MALFORMED,
    );
}

#[test]
fn wrong_protocol_name_is_an_unsupported_version() {
    let mut shard = Shard::start("protocol-name");
    let wrong_name = |level| connect_patched(level, CONNECT_NAME_AT + 1, b'X');
    shard.bad_connect(wrong_name, UNSUPPORTED_VERSION);
}

#[test]
fn wrong_protocol_level_is_an_unsupported_version() {
    let mut shard = Shard::start("protocol-level");
    // A client of an unknown level cannot read a v5 CONNACK: it is answered in the 3.1.1
    // form, return code 1, the counterpart of 0x84.
    for level in [0, 2, 6, 0xFF] {
        let bytes = connect_patched(5, CONNECT_LEVEL_AT, level);
        shard.raw(&bytes, Answer::ConnAckV3(V3_UNACCEPTABLE_VERSION));
    }
}

#[test]
fn a_packet_before_connect_closes_silently() {
    let mut shard = Shard::start("before-connect");
    for v5 in [false, true] {
        for bytes in [
            publish("before/connect", 0, 0, v5),
            subscribe(1, &["a/b"], v5),
            frame(PINGREQ, 0, &[]),
            frame(DISCONNECT, 0, &[]),
        ] {
            shard.raw(&bytes, Answer::Nothing);
        }
    }
}

#[test]
fn a_second_connect_is_a_protocol_error() {
    let mut shard = Shard::start("second-connect");
    let again = |v5| {
        let c = if v5 {
            Connect::v5("again")
        } else {
            Connect::v4("again")
        };
        c.encode()
    };
    shard.connected(again, PROTOCOL_ERROR);
}

#[test]
fn qos_3_is_malformed() {
    let mut shard = Shard::start("qos3");
    let qos3 = |v5| {
        let mut b = publish("qos/three", 1, 1, v5);
        b[0] |= 0x06;
        b
    };
    shard.connected(qos3, MALFORMED);
}

#[test]
fn packet_id_0_with_qos_above_0_is_a_protocol_error() {
    let mut shard = Shard::start("packet-id-0");
    for qos in [1, 2] {
        shard.connected(|v5| publish("pid/zero", qos, 0, v5), PROTOCOL_ERROR);
    }
    shard.connected(|v5| subscribe(0, &["a/b"], v5), PROTOCOL_ERROR);
}

#[test]
fn a_wildcard_in_a_publish_topic_is_an_invalid_topic_name() {
    let mut shard = Shard::start("wildcard-topic");
    for topic in ["wild/+/card", "wild/#", "+", "#"] {
        shard.connected(|v5| publish(topic, 0, 0, v5), TOPIC_NAME_INVALID);
    }
}

#[test]
fn invalid_utf8_or_nul_is_malformed() {
    let mut shard = Shard::start("utf8");
    let topics: [&[u8]; 4] = [b"a/\xC3\x28", b"a/\xED\xA0\x80", b"a/\xFF", b"a/\0/b"];
    for topic in topics {
        shard.connected(|v5| publish_raw_topic(topic, v5), MALFORMED);
    }
    shard.connected(|v5| subscribe(1, &["a/\0"], v5), MALFORMED);
    // In CONNECT: a v5 client is told in CONNACK, a 3.1.1 one is closed.
    let nul_client_id = |level| {
        let mut c = Connect::v4("nul\0id");
        c.level = level;
        c.encode()
    };
    shard.bad_connect(nul_client_id, MALFORMED);
}

#[test]
fn subscribe_without_filters_is_a_protocol_error() {
    let mut shard = Shard::start("no-filters");
    shard.connected(|v5| subscribe(1, &[], v5), PROTOCOL_ERROR);
}

#[test]
fn a_packet_over_max_packet_size_is_too_large() {
    let mut shard = Shard::start("too-large");
    let payload = vec![b'x'; MAX_PACKET_BYTES];
    shard.connected(
        |v5| Publish::new("too/large", &payload, 0).encode(v5),
        PACKET_TOO_LARGE,
    );
    // Only the header of a huge packet is needed to refuse it.
    shard.connected(|_| vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F], PACKET_TOO_LARGE);
    // A CONNECT over the limit.
    let password = "p".repeat(MAX_PACKET_BYTES);
    let big_connect = |level| {
        let mut c = Connect::v4("big-connect").login("u", &password);
        c.level = level;
        c.encode()
    };
    shard.bad_connect(big_connect, PACKET_TOO_LARGE);
    // Exactly at the limit is fine. The empty PUBLISH has a 1-byte remaining length; the
    // full one needs 2.
    let overhead = Publish::new("at/limit", b"", 0).encode(true).len() + 1;
    let fits = vec![b'y'; MAX_PACKET_BYTES - overhead];
    let bytes = Publish::new("at/limit", &fits, 0).encode(true);
    assert_eq!(
        bytes.len(),
        MAX_PACKET_BYTES,
        "a packet of exactly the limit"
    );
    let mut ok = Conn::client(shard.broker.mqtt, true, "at-limit");
    ok.send(&bytes);
    ok.ping();
    assert_eq!(ok.expect_kind(PINGRESP).kind, PINGRESP);
}

#[test]
fn topic_alias_0_or_above_the_maximum_is_invalid() {
    let mut shard = Shard::start("topic-alias");
    let with_alias = |topic: &str, alias| {
        Publish::new(topic, b"x", 0)
            .prop(P_TOPIC_ALIAS, Prop::U16(alias))
            .encode(true)
    };
    for alias in [0, TOPIC_ALIAS_MAX + 1, u16::MAX] {
        shard.connected_v5(&with_alias("alias/t", alias), TOPIC_ALIAS_INVALID);
    }
    // An alias never set, used without a topic, is a protocol error [MQTT-3.3.2-8].
    shard.connected_v5(&with_alias("", 1), PROTOCOL_ERROR);
    // The maximum itself is a valid alias.
    let mut ok = Conn::client(shard.broker.mqtt, true, "alias-max");
    ok.sub("alias/max", 0);
    ok.send(&with_alias("alias/max", TOPIC_ALIAS_MAX));
    assert_eq!(ok.expect_publish().payload, b"x");
}
