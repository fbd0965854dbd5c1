//! The seed corpus of the `mqtt_decode` fuzz target, built from packet values with the
//! encoder (valid packets of every type at 3.1.1 and 5.0, a whole session in one stream)
//! and from valid encodings damaged in one known way (one input per malformed class the
//! broker must reject). `tests/fuzz_corpus.rs` writes them to `fuzz/corpus/mqtt_decode/`.

use bytes::{Bytes, BytesMut};

use crate::mqtt::*;

/// Named seed inputs in the layout [`super::decode_check`] reads: a level selector byte,
/// then the stream.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (level, tag) in [(Protocol::V311, "v4"), (Protocol::V5, "v5")] {
        for (name, packet) in packets(level) {
            out.push((format!("{tag}-{name}"), input(Some(level), &[packet])));
        }
    }
    let v31 = Packet::Connect(Connect {
        protocol: Protocol::V31,
        ..connect(Protocol::V31, false)
    });
    out.push(("v3-connect".into(), input(None, &[v31])));
    for (level, tag) in [(Protocol::V311, "v4"), (Protocol::V5, "v5")] {
        let session = [
            Packet::Connect(connect(level, false)),
            publish(level, QoS::AtLeastOnce),
            Packet::PingReq,
            Packet::Disconnect(Disconnect::default()),
        ];
        out.push((format!("{tag}-session-stream"), input(None, &session)));
    }
    for (name, level, bytes) in edge_cases() {
        let mut data = vec![selector(level)];
        data.extend_from_slice(&bytes);
        out.push((format!("edge-{name}"), data));
    }
    out
}

/// The selector byte for decoding at `level` (`None`: before CONNECT).
fn selector(level: Option<Protocol>) -> u8 {
    match level {
        None => 0,
        Some(Protocol::V31) => 1,
        Some(Protocol::V311) => 2,
        Some(Protocol::V5) => 3,
    }
}

fn input(level: Option<Protocol>, packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[selector(level)]);
    for p in packets {
        let at = match p {
            Packet::Connect(c) => c.protocol,
            _ => level.unwrap_or(Protocol::V311),
        };
        encode(p, at, &mut out).expect("seed packets are encodable");
    }
    out.to_vec()
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero")
}

fn user(v5: bool) -> UserProperties {
    if v5 {
        vec![(ByteStr::from("k"), ByteStr::from("v"))]
    } else {
        Vec::new()
    }
}

fn connect(level: Protocol, full: bool) -> Connect {
    let v5 = level.is_v5() && full;
    Connect {
        protocol: level,
        clean_start: !full,
        keep_alive_secs: 60,
        client_id: ByteStr::from(if full { "client-1" } else { "" }),
        will: full.then(|| Will {
            topic: ByteStr::from("will/t"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval_secs: Some(5),
                    payload_format_indicator: Some(true),
                    message_expiry_interval_secs: Some(60),
                    content_type: Some(ByteStr::from("text/plain")),
                    response_topic: Some(ByteStr::from("r/t")),
                    correlation_data: Some(Bytes::from_static(&[1, 2])),
                    user_properties: user(true),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: full.then(|| ByteStr::from("user")),
        password: full.then(|| Bytes::from_static(b"secret")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval_secs: Some(300),
                receive_maximum: Some(20),
                maximum_packet_size_bytes: Some(65536),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user(true),
                authentication_method: Some(ByteStr::from("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"nonce")),
            }
        } else {
            ConnectProperties::default()
        },
    }
}

fn publish(level: Protocol, qos: QoS) -> Packet {
    let v5 = level.is_v5();
    Packet::Publish(Publish {
        dup: qos == QoS::ExactlyOnce,
        qos,
        retain: qos == QoS::AtLeastOnce,
        topic: ByteStr::from("sensors/room-1/temp"),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(7)),
        properties: if v5 && qos == QoS::ExactlyOnce {
            PublishProperties {
                payload_format_indicator: Some(true),
                message_expiry_interval_secs: Some(30),
                topic_alias: Some(3),
                response_topic: Some(ByteStr::from("reply/1")),
                correlation_data: Some(Bytes::from_static(b"c-1")),
                user_properties: user(true),
                subscription_identifiers: vec![1, 268_435_455],
                content_type: Some(ByteStr::from("application/json")),
            }
        } else {
            PublishProperties::default()
        },
        payload: Bytes::from_static(b"{\"c\":21.5}"),
    })
}

fn ack(level: Protocol, reason: ReasonCode) -> Ack {
    Ack {
        packet_id: pid(7),
        reason: if level.is_v5() {
            reason
        } else {
            ReasonCode::Success
        },
        properties: if level.is_v5() {
            AckProperties {
                reason_string: Some(ByteStr::from("why")),
                user_properties: user(true),
            }
        } else {
            AckProperties::default()
        },
    }
}

fn packets(level: Protocol) -> Vec<(&'static str, Packet)> {
    let v5 = level.is_v5();
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: v5,
        retain_as_published: v5,
        retain_handling: if v5 {
            RetainHandling::DoNotSend
        } else {
            RetainHandling::SendAtSubscribe
        },
    };
    let mut list = vec![
        ("connect-min", Packet::Connect(connect(level, false))),
        ("connect-full", Packet::Connect(connect(level, true))),
        (
            "connack",
            Packet::ConnAck(ConnAck::new(true, ReasonCode::Success)),
        ),
        ("publish-qos0", publish(level, QoS::AtMostOnce)),
        ("publish-qos1", publish(level, QoS::AtLeastOnce)),
        ("publish-qos2", publish(level, QoS::ExactlyOnce)),
        (
            "puback",
            Packet::PubAck(ack(level, ReasonCode::NoMatchingSubscribers)),
        ),
        ("pubrec", Packet::PubRec(ack(level, ReasonCode::Success))),
        ("pubrel", Packet::PubRel(ack(level, ReasonCode::Success))),
        ("pubcomp", Packet::PubComp(ack(level, ReasonCode::Success))),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: pid(2),
                filters: vec![
                    (ByteStr::from("a/+/c"), options),
                    (ByteStr::from("#"), SubscriptionOptions::default()),
                    (ByteStr::from("$share/g/x/y"), options),
                ],
                properties: SubscribeProperties {
                    subscription_identifier: v5.then_some(42),
                    user_properties: user(v5),
                },
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: pid(2),
                reason_codes: vec![ReasonCode::GrantedQos2, ReasonCode::UnspecifiedError],
                properties: AckProperties::default(),
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(3),
                filters: vec![ByteStr::from("a/+/c"), ByteStr::from("#")],
                properties: UnsubscribeProperties::default(),
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(3),
                reason_codes: if v5 {
                    vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
                } else {
                    Vec::new()
                },
                properties: AckProperties::default(),
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        ("disconnect", Packet::Disconnect(Disconnect::default())),
    ];
    if v5 {
        list.push((
            "disconnect-reason",
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DisconnectWithWillMessage,
                properties: DisconnectProperties {
                    session_expiry_interval_secs: Some(0),
                    reason_string: Some(ByteStr::from("bye")),
                    server_reference: None,
                    user_properties: user(true),
                },
            }),
        ));
        list.push((
            "auth",
            Packet::Auth(Auth {
                reason: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some(ByteStr::from("SCRAM-SHA-256")),
                    authentication_data: Some(Bytes::from_static(b"proof")),
                    reason_string: None,
                    user_properties: Vec::new(),
                },
            }),
        ));
    }
    list
}

/// Valid encodings damaged in one way each, and forms at the edge of what the codec
/// accepts, with the level they are decoded at.
fn edge_cases() -> Vec<(&'static str, Option<Protocol>, Vec<u8>)> {
    let v4 = Some(Protocol::V311);
    let v5 = Some(Protocol::V5);
    let enc = |level: Protocol, p: Packet| input(Some(level), &[p])[1..].to_vec();
    let qos1 = enc(Protocol::V311, publish(Protocol::V311, QoS::AtLeastOnce));
    let connect_v5 = enc(Protocol::V5, Packet::Connect(connect(Protocol::V5, false)));
    // Fixed header (2 bytes) and the topic's length prefix (2), then the topic.
    let topic_at = 4;
    let patched = |bytes: &[u8], at: usize, value: u8| {
        let mut b = bytes.to_vec();
        b[at] = value;
        b
    };
    let alias_zero = {
        let mut p = publish(Protocol::V5, QoS::ExactlyOnce);
        if let Packet::Publish(p) = &mut p {
            p.properties = PublishProperties {
                topic_alias: Some(0x0100),
                ..Default::default()
            };
        }
        let b = enc(Protocol::V5, p);
        // The alias is the property block's last two bytes, just before the payload.
        let alias_low = b.len() - b"{\"c\":21.5}".len() - 1;
        patched(&b, alias_low - 1, 0)
    };
    vec![
        ("varint-incomplete", v4, vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
        (
            "varint-5-bytes",
            v4,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        ("varint-not-minimal", v4, vec![0xC0, 0x80, 0x00]),
        ("remaining-too-short", v4, patched(&qos1, 1, 3)),
        (
            "reserved-flags-subscribe",
            v4,
            vec![0x80, 0x05, 0, 1, 0, 0, 0],
        ),
        ("reserved-flags-pubrel", v5, vec![0x60, 0x02, 0, 1]),
        ("qos3", v4, patched(&qos1, 0, 0x36)),
        ("packet-id-0", v4, {
            let id_at = topic_at + "sensors/room-1/temp".len();
            patched(&patched(&qos1, id_at, 0), id_at + 1, 0)
        }),
        ("topic-invalid-utf8", v4, patched(&qos1, topic_at + 2, 0xC3)),
        ("topic-nul", v4, patched(&qos1, topic_at + 3, 0x00)),
        ("topic-wildcard", v4, patched(&qos1, topic_at + 3, b'+')),
        ("subscribe-no-filters", v4, vec![0x82, 0x02, 0, 1]),
        ("protocol-name", None, patched(&connect_v5, 5, b'X')),
        ("protocol-level", None, patched(&connect_v5, 8, 6)),
        ("topic-alias-0", v5, alias_zero),
        ("connack-v5-no-properties", v5, vec![0x20, 0x02, 0x00, 0x00]),
        (
            "puback-v5-long-success",
            v5,
            vec![0x40, 0x04, 0, 1, 0x00, 0x00],
        ),
        ("auth-before-v5", v4, vec![0xF0, 0x00]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(data: &[u8]) -> Result<Vec<PacketType>, DecodeError> {
        let level = match data[0] {
            0 => None,
            1 => Some(Protocol::V31),
            2 => Some(Protocol::V311),
            _ => Some(Protocol::V5),
        };
        let mut buf = BytesMut::from(&data[1..]);
        let mut types = Vec::new();
        while let Some(p) = decode(&mut buf, level, &DecodeLimits::default())? {
            types.push(p.packet_type());
        }
        Ok(types)
    }

    /// Each edge case ends the way its name says, so the corpus starts the fuzzer at every
    /// error path; each valid seed decodes completely.
    #[test]
    fn seeds_reach_the_paths_they_name() {
        let expected = [
            ("varint-incomplete", "Ok([])"),
            ("varint-5-bytes", "Err(MalformedVarInt"),
            ("varint-not-minimal", "Err(MalformedVarInt"),
            ("remaining-too-short", "Err(Truncated"),
            ("reserved-flags-subscribe", "Err(InvalidHeaderFlags"),
            ("reserved-flags-pubrel", "Err(InvalidHeaderFlags"),
            ("qos3", "Err(InvalidQos"),
            ("packet-id-0", "Err(ZeroPacketId"),
            ("topic-invalid-utf8", "Err(InvalidUtf8"),
            ("topic-nul", "Err(NullCharacter"),
            // Topic syntax is the router's rule, not the codec's.
            ("topic-wildcard", "Ok([Publish])"),
            ("subscribe-no-filters", "Err(NoTopicFilters"),
            ("protocol-name", "Err(InvalidProtocolName"),
            ("protocol-level", "Err(UnsupportedProtocolLevel"),
            ("topic-alias-0", "Err(TopicAliasZero"),
            ("connack-v5-no-properties", "Ok([ConnAck])"),
            ("puback-v5-long-success", "Ok([PubAck])"),
            ("auth-before-v5", "Err(InvalidPacketType"),
        ];
        let all = seeds();
        assert_eq!(
            all.iter().filter(|(n, _)| n.starts_with("edge-")).count(),
            expected.len()
        );
        for (name, data) in all {
            let got = format!("{:?}", verdict(&data));
            match name.strip_prefix("edge-") {
                None => assert!(got.starts_with("Ok([") && got != "Ok([])", "{name}: {got}"),
                Some(class) => {
                    let (_, want) = expected
                        .iter()
                        .find(|(c, _)| *c == class)
                        .unwrap_or_else(|| panic!("no expectation for {class}"));
                    assert!(got.starts_with(want), "{name}: {got}, expected {want}");
                }
            }
        }
    }
}
