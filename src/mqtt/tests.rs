//! Cross-packet tests: byte vectors laid out as in the MQTT 3.1.1 and 5.0 specs, every
//! malformed class, partial input at each split point, and property-based round trips.

use bytes::{Bytes, BytesMut};

use super::*;

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn decode_all(bytes: &[u8], protocol: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = decode(&mut buf, protocol, &limits());
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    }
    out
}

fn decoded(bytes: &[u8], protocol: Protocol) -> Packet {
    match decode_all(bytes, Some(protocol)) {
        Ok(Some(p)) => p,
        other => panic!("expected a packet from {bytes:02x?}, got {other:?}"),
    }
}

fn err(bytes: &[u8], protocol: Option<Protocol>) -> DecodeError {
    match decode_all(bytes, protocol) {
        Err(e) => e,
        other => panic!("expected an error from {bytes:02x?}, got {other:?}"),
    }
}

fn encoded(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    let n = encode(packet, protocol, &mut out).expect("encodable");
    assert_eq!(n, out.len());
    assert_eq!(encoded_len(packet, protocol), Ok(n));
    out.to_vec()
}

/// Fixed header byte + one-byte remaining length + body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn s(text: &'static str) -> ByteStr {
    ByteStr::from(text)
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero")
}

/// Asserts that `bytes` decodes to `packet` and that `packet` encodes back to `bytes`.
fn assert_vector(bytes: &[u8], protocol: Protocol, packet: &Packet) {
    assert_eq!(&decoded(bytes, protocol), packet);
    assert_eq!(encoded(packet, protocol), bytes);
}

fn connect_v311_bytes() -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
    // user name, password, will retain, will QoS 1, will flag, clean session
    body.push(0b1110_1110);
    body.extend_from_slice(&[0x00, 0x3C]);
    body.extend_from_slice(&[0, 3, b'a', b'b', b'c']);
    body.extend_from_slice(&[0, 3, b'a', b'/', b'b']);
    body.extend_from_slice(&[0, 2, b'h', b'i']);
    body.extend_from_slice(&[0, 4, b'u', b's', b'e', b'r']);
    body.extend_from_slice(&[0, 2, b'p', b'w']);
    frame(0x10, &body)
}

fn connect_v311() -> Connect {
    Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: s("abc"),
        will: Some(Will {
            topic: s("a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties::default(),
    }
}

#[test]
fn connect_v311_with_every_field() {
    assert_vector(
        &connect_v311_bytes(),
        Protocol::V311,
        &Packet::Connect(connect_v311()),
    );
    // The CONNECT's own level decides, whatever the caller believed.
    assert_eq!(
        decode_all(&connect_v311_bytes(), None),
        Ok(Some(Packet::Connect(connect_v311())))
    );
}

#[test]
fn connect_v31_uses_mqisdp() {
    let mut body = vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10];
    body.extend_from_slice(&[0, 1, b'c']);
    let bytes = frame(0x10, &body);
    let packet = Packet::Connect(Connect {
        protocol: Protocol::V31,
        clean_start: true,
        keep_alive_secs: 10,
        client_id: s("c"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    });
    assert_eq!(decode_all(&bytes, None), Ok(Some(packet.clone())));
    assert_eq!(encoded(&packet, Protocol::V311), bytes);
}

fn connect_v5_bytes() -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b1110_1110, 0x00, 0x0A];
    let props: &[u8] = &[
        0x11, 0, 0, 0, 120, // session expiry 120 s
        0x21, 0, 10, // receive maximum 10
        0x27, 0, 0, 0x10, 0, // maximum packet size 4096
        0x22, 0, 5, // topic alias maximum 5
        0x19, 1, // request response information
        0x17, 0, // request problem information
        0x15, 0, 2, b'm', b'1', // authentication method
        0x16, 0, 1, 0xAB, // authentication data
        0x26, 0, 1, b'k', 0, 1, b'v', // user property
    ];
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(&[0, 3, b'a', b'b', b'c']);
    let will_props: &[u8] = &[
        0x18, 0, 0, 0, 5, // will delay 5 s
        0x01, 1, // payload is UTF-8
        0x02, 0, 0, 0, 60, // message expiry 60 s
        0x03, 0, 4, b't', b'e', b'x', b't', // content type
        0x08, 0, 2, b'r', b't', // response topic
        0x09, 0, 2, 1, 2, // correlation data
        0x26, 0, 1, b'a', 0, 1, b'b', // user property
        0x26, 0, 1, b'a', 0, 1, b'c', // duplicate names are allowed
    ];
    body.push(will_props.len() as u8);
    body.extend_from_slice(will_props);
    body.extend_from_slice(&[0, 3, b'a', b'/', b'b', 0, 2, b'h', b'i']);
    body.extend_from_slice(&[0, 4, b'u', b's', b'e', b'r', 0, 2, b'p', b'w']);
    frame(0x10, &body)
}

fn connect_v5() -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive_secs: 10,
        client_id: s("abc"),
        will: Some(Will {
            topic: s("a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval_secs: Some(5),
                payload_format_indicator: Some(true),
                message_expiry_interval_secs: Some(60),
                content_type: Some(s("text")),
                response_topic: Some(s("rt")),
                correlation_data: Some(Bytes::from_static(&[1, 2])),
                user_properties: vec![(s("a"), s("b")), (s("a"), s("c"))],
            },
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties {
            session_expiry_interval_secs: Some(120),
            receive_maximum: Some(10),
            maximum_packet_size_bytes: Some(4096),
            topic_alias_maximum: Some(5),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user_properties: vec![(s("k"), s("v"))],
            authentication_method: Some(s("m1")),
            authentication_data: Some(Bytes::from_static(&[0xAB])),
        },
    }
}

#[test]
fn connect_v5_with_every_field() {
    assert_vector(
        &connect_v5_bytes(),
        Protocol::V5,
        &Packet::Connect(connect_v5()),
    );
    assert_eq!(
        decode_all(&connect_v5_bytes(), None),
        Ok(Some(Packet::Connect(connect_v5())))
    );
}

#[test]
fn connect_malformed_classes() {
    let base = connect_v311_bytes();
    let mut wrong_name = base.clone();
    wrong_name[7] = b'X';
    assert_eq!(err(&wrong_name, None), DecodeError::InvalidProtocolName);

    let mut level6 = base.clone();
    level6[8] = 6;
    let e = err(&level6, None);
    assert_eq!(e, DecodeError::UnsupportedProtocolLevel { level: 6 });
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);

    let mut mqisdp_level4 = vec![
        0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4, 0x02, 0, 0, 0, 0,
    ];
    mqisdp_level4 = frame(0x10, &mqisdp_level4);
    assert_eq!(err(&mqisdp_level4, None), DecodeError::InvalidProtocolName);

    for flags in [
        0b1110_1111u8, // reserved bit
        0b0001_1100,   // will QoS 3
        0b0000_1000,   // will QoS without will flag
        0b0010_0000,   // will retain without will flag
    ] {
        let mut bad = base.clone();
        bad[9] = flags;
        assert_eq!(
            err(&bad, None),
            DecodeError::InvalidConnectFlags { flags },
            "{flags:#010b}"
        );
    }
}

#[test]
fn password_without_username_only_in_v5() {
    let v311 = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 0, 0, 0, 0, 1, b'p',
        ],
    );
    assert_eq!(
        err(&v311, None),
        DecodeError::InvalidConnectFlags { flags: 0x42 }
    );
    let v5 = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 0, 0, 0, 0, 0, 1, b'p',
        ],
    );
    let Packet::Connect(c) = decoded(&v5, Protocol::V5) else {
        panic!("not a CONNECT")
    };
    assert_eq!(
        (c.username, c.password),
        (None, Some(Bytes::from_static(b"p")))
    );
}

#[test]
fn connect_property_values_are_checked() {
    let connect = |props: &[u8]| {
        let mut body = vec![
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            5,
            0x02,
            0,
            0,
            props.len() as u8,
        ];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 0]);
        frame(0x10, &body)
    };
    let e = err(&connect(&[0x21, 0, 0]), None);
    assert_eq!(
        e,
        DecodeError::InvalidPropertyValue {
            packet: PacketType::Connect,
            id: 0x21
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert!(matches!(
        err(&connect(&[0x27, 0, 0, 0, 0]), None),
        DecodeError::InvalidPropertyValue { id: 0x27, .. }
    ));
    let e = err(&connect(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), None);
    assert_eq!(
        e,
        DecodeError::DuplicateProperty {
            packet: PacketType::Connect,
            id: 0x11
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    let e = err(&connect(&[0x23, 0, 1]), None);
    assert_eq!(
        e,
        DecodeError::PropertyNotAllowed {
            packet: PacketType::Connect,
            id: 0x23
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    assert_eq!(
        err(&connect(&[0x7F, 0]), None),
        DecodeError::UnknownProperty {
            packet: PacketType::Connect,
            id: 0x7F
        }
    );
    assert!(matches!(
        err(&connect(&[0x19, 2]), None),
        DecodeError::InvalidPropertyValue { id: 0x19, .. }
    ));
    // Property block longer than the packet.
    assert!(matches!(
        err(&connect(&[0x11, 0, 0]), None),
        DecodeError::Truncated { .. }
    ));
}

#[test]
fn connack_both_levels() {
    let v3 = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    });
    assert_vector(&[0x20, 2, 1, 5], Protocol::V311, &v3);
    assert!(matches!(
        err(&[0x20, 2, 0, 6], Some(Protocol::V311)),
        DecodeError::InvalidReasonCode { code: 6, .. }
    ));
    assert_eq!(
        err(&[0x20, 2, 2, 0], Some(Protocol::V311)),
        DecodeError::InvalidConnAckFlags { flags: 2 }
    );

    let props: &[u8] = &[
        0x21, 0, 20, // receive maximum
        0x24, 1, // maximum QoS 1
        0x25, 0, // retain not available
        0x12, 0, 2, b'i', b'd', // assigned client id
        0x1F, 0, 1, b'r', // reason string
        0x28, 0, 0x29, 1, 0x2A, 0, // wildcard / sub id / shared available
        0x13, 0, 30, // server keep alive
        0x1C, 0, 1, b's', // server reference
    ];
    let mut body = vec![0, 0x00, props.len() as u8];
    body.extend_from_slice(props);
    let v5 = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ConnAckProperties {
            receive_maximum: Some(20),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            assigned_client_identifier: Some(s("id")),
            reason_string: Some(s("r")),
            wildcard_subscription_available: Some(false),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(false),
            server_keep_alive_secs: Some(30),
            server_reference: Some(s("s")),
            ..ConnAckProperties::default()
        },
    });
    assert_vector(&frame(0x20, &body), Protocol::V5, &v5);
    // A v5-only reason is sent to a 3.1.1 client as its closest return code.
    let banned = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Banned,
        properties: ConnAckProperties::default(),
    });
    assert_eq!(encoded(&banned, Protocol::V311), [0x20, 2, 0, 5]);
    // A v5 CONNACK may not carry a PUBACK-only reason.
    assert!(matches!(
        err(&[0x20, 3, 0, 0x10, 0], Some(Protocol::V5)),
        DecodeError::InvalidReasonCode { code: 0x10, .. }
    ));
}

#[test]
fn publish_v311_qos1() {
    let bytes = [0x32, 10, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'e', b'y'];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: Some(pid(10)),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hey"),
    });
    assert_vector(&bytes, Protocol::V311, &packet);
    // Wildcards in a topic name are the router's to judge.
    let wild = [0x30, 5, 0, 1, b'#', b'x', b'y'];
    assert!(matches!(decoded(&wild, Protocol::V311), Packet::Publish(_)));
}

#[test]
fn publish_v5_with_properties_and_alias_only_topic() {
    let props: &[u8] = &[
        0x01, 1, // UTF-8 payload
        0x02, 0, 0, 0, 9, // expiry 9 s
        0x23, 0, 7, // topic alias 7
        0x08, 0, 1, b'r', // response topic
        0x09, 0, 1, 9, // correlation data
        0x0B, 0x81, 0x01, // subscription identifier 129
        0x0B, 0x02, // and 2
        0x03, 0, 1, b'j', // content type
        0x26, 0, 1, b'k', 0, 0, // user property with an empty value
    ];
    let mut body = vec![0, 0, 0, 5, props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(b"{}");
    // DUP, QoS 2, RETAIN
    let bytes = frame(0x3D, &body);
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: ByteStr::new(),
        packet_id: Some(pid(5)),
        properties: PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval_secs: Some(9),
            topic_alias: Some(7),
            response_topic: Some(s("r")),
            correlation_data: Some(Bytes::from_static(&[9])),
            user_properties: vec![(s("k"), s(""))],
            subscription_identifiers: vec![129, 2],
            content_type: Some(s("j")),
        },
        payload: Bytes::from_static(b"{}"),
    });
    assert_vector(&bytes, Protocol::V5, &packet);
}

#[test]
fn publish_malformed_classes() {
    let v311 = Some(Protocol::V311);
    assert_eq!(
        err(&[0x36, 5, 0, 1, b'a', 0, 1], v311),
        DecodeError::InvalidQos {
            packet: PacketType::Publish
        }
    );
    let e = err(&[0x38, 3, 0, 1, b'a'], v311);
    assert_eq!(e, DecodeError::DupWithQos0);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert_eq!(
        err(&[0x32, 5, 0, 1, b'a', 0, 0], v311),
        DecodeError::ZeroPacketId {
            packet: PacketType::Publish
        }
    );
    assert_eq!(
        err(&[0x30, 4, 0, 2, 0xC3, 0x28], v311),
        DecodeError::InvalidUtf8 {
            packet: PacketType::Publish,
            offset: 2
        }
    );
    let e = err(&[0x30, 4, 0, 2, b'a', 0], v311);
    assert_eq!(
        e,
        DecodeError::NullCharacter {
            packet: PacketType::Publish,
            offset: 2
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    assert_eq!(err(&[0x30, 2, 0, 0], v311), DecodeError::EmptyTopic);
    assert_eq!(
        err(&[0x30, 3, 0, 0, 0], Some(Protocol::V5)),
        DecodeError::EmptyTopic
    );

    let e = err(&[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0], Some(Protocol::V5));
    assert_eq!(e, DecodeError::TopicAliasZero);
    assert_eq!(e.reason_code(), ReasonCode::TopicAliasInvalid);
    assert_eq!(
        err(
            &[0x30, 8, 0, 1, b'a', 4, 0x01, 0, 0x01, 1],
            Some(Protocol::V5)
        ),
        DecodeError::DuplicateProperty {
            packet: PacketType::Publish,
            id: 0x01
        }
    );
    assert_eq!(
        err(
            &[0x30, 9, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
            Some(Protocol::V5)
        ),
        DecodeError::PropertyNotAllowed {
            packet: PacketType::Publish,
            id: 0x11
        }
    );
    assert!(matches!(
        err(&[0x30, 6, 0, 1, b'a', 2, 0x0B, 0], Some(Protocol::V5)),
        DecodeError::InvalidPropertyValue { id: 0x0B, .. }
    ));
}

#[test]
fn acks_v311_and_v5_short_forms() {
    for (first, make) in [
        (0x40u8, Packet::PubAck as fn(Ack) -> Packet),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ] {
        let ok = make(Ack::new(pid(0x0102)));
        assert_vector(&[first, 2, 1, 2], Protocol::V311, &ok);
        assert_vector(&[first, 2, 1, 2], Protocol::V5, &ok);
        // Explicit success with an empty property block: accepted, re-encoded short.
        assert_eq!(decoded(&[first, 4, 1, 2, 0, 0], Protocol::V5), ok);
        assert_eq!(
            err(&[first, 2, 0, 0], Some(Protocol::V311)).reason_code(),
            ReasonCode::MalformedPacket
        );
        // 3.1.1 acks have a fixed length.
        assert!(matches!(
            err(&[first, 3, 1, 2, 0], Some(Protocol::V311)),
            DecodeError::TrailingBytes { offset: 4, .. }
        ));
    }
    let no_match = Packet::PubAck(Ack {
        packet_id: pid(1),
        reason: ReasonCode::NoMatchingSubscribers,
        properties: AckProperties::default(),
    });
    assert_vector(&[0x40, 3, 0, 1, 0x10], Protocol::V5, &no_match);
    let with_props = Packet::PubRec(Ack {
        packet_id: pid(1),
        reason: ReasonCode::QuotaExceeded,
        properties: AckProperties {
            reason_string: Some(s("q")),
            user_properties: vec![(s("a"), s("b"))],
        },
    });
    let body = [
        0, 1, 0x97, 11, 0x1F, 0, 1, b'q', 0x26, 0, 1, b'a', 0, 1, b'b',
    ];
    assert_vector(&frame(0x50, &body), Protocol::V5, &with_props);
    // PUBREL may not carry a PUBACK reason; its header flags must be 0b0010.
    assert!(matches!(
        err(&[0x62, 3, 0, 1, 0x10], Some(Protocol::V5)),
        DecodeError::InvalidReasonCode { code: 0x10, .. }
    ));
    assert_eq!(
        err(&[0x60, 2, 0, 1], None),
        DecodeError::InvalidHeaderFlags {
            packet: PacketType::PubRel,
            flags: 0
        }
    );
}

#[test]
fn subscribe_and_suback() {
    let v311 = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![
            (
                s("a/b"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            ),
            (
                s("#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            ),
        ],
        properties: SubscribeProperties::default(),
    });
    let body = [0, 1, 0, 3, b'a', b'/', b'b', 1, 0, 1, b'#', 2];
    assert_vector(&frame(0x82, &body), Protocol::V311, &v311);

    let v5 = Packet::Subscribe(Subscribe {
        packet_id: pid(2),
        filters: vec![(
            s("$share/g/t"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
        properties: SubscribeProperties {
            subscription_identifier: Some(5),
            user_properties: vec![],
        },
    });
    let mut body = vec![0, 2, 2, 0x0B, 5, 0, 10];
    body.extend_from_slice(b"$share/g/t");
    body.push(0x2D);
    assert_vector(&frame(0x82, &body), Protocol::V5, &v5);

    let suback = Packet::SubAck(SubAck {
        packet_id: pid(1),
        reason_codes: vec![
            ReasonCode::GrantedQos1,
            ReasonCode::UnspecifiedError,
            ReasonCode::Success,
        ],
        properties: AckProperties::default(),
    });
    assert_vector(&[0x90, 5, 0, 1, 1, 0x80, 0], Protocol::V311, &suback);
    assert_vector(&[0x90, 6, 0, 1, 0, 1, 0x80, 0], Protocol::V5, &suback);
    assert!(matches!(
        err(&[0x90, 3, 0, 1, 3], Some(Protocol::V311)),
        DecodeError::InvalidReasonCode { code: 3, .. }
    ));
}

#[test]
fn subscribe_malformed_classes() {
    let e = err(&[0x82, 2, 0, 1], None);
    assert_eq!(
        e,
        DecodeError::NoTopicFilters {
            packet: PacketType::Subscribe
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert!(matches!(
        err(&[0x82, 3, 0, 1, 0], Some(Protocol::V5)),
        DecodeError::NoTopicFilters { .. }
    ));
    assert_eq!(
        err(&[0x80, 6, 0, 1, 0, 1, b'a', 0], None),
        DecodeError::InvalidHeaderFlags {
            packet: PacketType::Subscribe,
            flags: 0
        }
    );
    assert_eq!(
        err(&[0x82, 6, 0, 0, 0, 1, b'a', 0], None),
        DecodeError::ZeroPacketId {
            packet: PacketType::Subscribe
        }
    );
    // QoS 3, v5 bits in 3.1.1, v5 reserved bits, retain handling 3.
    for (protocol, options, reason) in [
        (Protocol::V311, 0x03u8, ReasonCode::ProtocolError),
        (Protocol::V311, 0x04, ReasonCode::MalformedPacket),
        (Protocol::V5, 0x40, ReasonCode::MalformedPacket),
        (Protocol::V5, 0x30, ReasonCode::ProtocolError),
    ] {
        let mut body = vec![0, 1];
        if protocol.is_v5() {
            body.push(0);
        }
        body.extend_from_slice(&[0, 1, b'a', options]);
        let e = err(&frame(0x82, &body), Some(protocol));
        assert!(
            matches!(e, DecodeError::InvalidSubscriptionOptions { options: o, .. } if o == options),
            "{e:?}"
        );
        assert_eq!(e.reason_code(), reason, "{options:#x}");
    }
    assert!(matches!(
        err(
            &[0x82, 5, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
            Some(Protocol::V5)
        ),
        DecodeError::InvalidPropertyValue { id: 0x0B, .. } | DecodeError::Truncated { .. }
    ));
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsub = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(3),
        filters: vec![s("a/+"), s("b")],
        properties: UnsubscribeProperties::default(),
    });
    let body = [0, 3, 0, 3, b'a', b'/', b'+', 0, 1, b'b'];
    assert_vector(&frame(0xA2, &body), Protocol::V311, &unsub);
    let mut v5_body = vec![0, 3, 0];
    v5_body.extend_from_slice(&body[2..]);
    assert_vector(&frame(0xA2, &v5_body), Protocol::V5, &unsub);
    assert!(matches!(
        err(&[0xA2, 2, 0, 3], None),
        DecodeError::NoTopicFilters { .. }
    ));
    assert!(matches!(
        err(&[0xA2, 5, 0, 0, 0, 1, b'a'], None),
        DecodeError::ZeroPacketId { .. }
    ));

    let v311_ack = Packet::UnsubAck(UnsubAck {
        packet_id: pid(3),
        reason_codes: vec![],
        properties: AckProperties::default(),
    });
    assert_vector(&[0xB0, 2, 0, 3], Protocol::V311, &v311_ack);
    let v5_ack = Packet::UnsubAck(UnsubAck {
        packet_id: pid(3),
        reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        properties: AckProperties::default(),
    });
    assert_vector(&[0xB0, 5, 0, 3, 0, 0x00, 0x11], Protocol::V5, &v5_ack);
}

#[test]
fn ping_disconnect_auth() {
    assert_vector(&[0xC0, 0], Protocol::V311, &Packet::PingReq);
    assert_vector(&[0xD0, 0], Protocol::V5, &Packet::PingResp);
    assert_eq!(
        err(&[0xC1, 0], None),
        DecodeError::InvalidHeaderFlags {
            packet: PacketType::PingReq,
            flags: 1
        }
    );
    assert!(matches!(
        err(&[0xC0, 1, 0], None),
        DecodeError::TrailingBytes { offset: 2, .. }
    ));

    let normal = Packet::Disconnect(Disconnect::default());
    assert_vector(&[0xE0, 0], Protocol::V311, &normal);
    assert_vector(&[0xE0, 0], Protocol::V5, &normal);
    let taken = Packet::Disconnect(Disconnect {
        reason: ReasonCode::SessionTakenOver,
        properties: DisconnectProperties::default(),
    });
    assert_vector(&[0xE0, 1, 0x8E], Protocol::V5, &taken);
    let with_props = Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: DisconnectProperties {
            session_expiry_interval_secs: Some(0),
            reason_string: Some(s("x")),
            server_reference: Some(s("y")),
            user_properties: vec![],
        },
    });
    let body = [
        0x04, 13, 0x11, 0, 0, 0, 0, 0x1F, 0, 1, b'x', 0x1C, 0, 1, b'y',
    ];
    assert_vector(&frame(0xE0, &body), Protocol::V5, &with_props);

    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(s("S")),
            authentication_data: Some(Bytes::from_static(&[7])),
            reason_string: None,
            user_properties: vec![],
        },
    });
    let body = [0x18, 8, 0x15, 0, 1, b'S', 0x16, 0, 1, 7];
    assert_vector(&frame(0xF0, &body), Protocol::V5, &auth);
    assert_vector(&[0xF0, 0], Protocol::V5, &Packet::Auth(Auth::default()));
    assert_eq!(
        err(&[0xF0, 0], Some(Protocol::V311)),
        DecodeError::InvalidPacketType { header: 0xF0 }
    );
    assert_eq!(
        encode(&auth, Protocol::V311, &mut BytesMut::new()),
        Err(EncodeError::NotInProtocol {
            packet: PacketType::Auth,
            protocol: Protocol::V311
        })
    );
    assert_eq!(
        err(&[0x00, 0], None),
        DecodeError::InvalidPacketType { header: 0 }
    );
}

#[test]
fn varint_of_five_bytes_is_malformed() {
    for bytes in [
        &[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..],
        &[0x30, 0x80, 0x80, 0x80, 0x80],
    ] {
        let mut buf = BytesMut::from(bytes);
        let e = decode(&mut buf, None, &limits()).unwrap_err();
        assert_eq!(e, DecodeError::MalformedVarInt { offset: 1 });
        assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn oversize_packet_is_rejected_from_the_header_alone() {
    let limits = DecodeLimits {
        packet_bytes_max: 1000,
    };
    // Remaining length 16,383: header known, body absent.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    let e = decode(&mut buf, None, &limits).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            packet_bytes: 16_386,
            packet_bytes_max: 1000
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(buf.len(), 3);
    // Exactly at the limit is accepted.
    let at = DecodeLimits {
        packet_bytes_max: 12,
    };
    let mut ok = BytesMut::from(&[0x32u8, 10, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'e', b'y'][..]);
    assert!(matches!(
        decode(&mut ok, None, &at),
        Ok(Some(Packet::Publish(_)))
    ));
}

fn sample_packets() -> Vec<(Vec<u8>, Protocol)> {
    vec![
        (connect_v311_bytes(), Protocol::V311),
        (connect_v5_bytes(), Protocol::V5),
        (
            vec![0x32, 10, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'e', b'y'],
            Protocol::V311,
        ),
        (vec![0x40, 3, 0, 1, 0x10], Protocol::V5),
        (vec![0x82, 6, 0, 1, 0, 1, b'a', 1], Protocol::V311),
        (vec![0xE0, 1, 0x8E], Protocol::V5),
        (vec![0xC0, 0], Protocol::V311),
    ]
}

#[test]
fn partial_input_at_every_split_is_none_and_untouched() {
    for (bytes, protocol) in sample_packets() {
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode(&mut buf, Some(protocol), &limits()),
                Ok(None),
                "cut {cut} of {bytes:02x?}"
            );
            assert_eq!(&buf[..], &bytes[..cut]);
        }
    }
    // A long remaining length split inside its varint.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80][..]);
    assert_eq!(decode(&mut buf, None, &limits()), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn back_to_back_packets_decode_one_at_a_time() {
    let mut buf = BytesMut::new();
    for (bytes, _) in sample_packets().iter().filter(|(_, p)| !p.is_v5()) {
        buf.extend_from_slice(bytes);
    }
    buf.extend_from_slice(&[0xD0]);
    let mut count = 0;
    while decode(&mut buf, Some(Protocol::V311), &limits())
        .unwrap()
        .is_some()
    {
        count += 1;
    }
    assert_eq!(count, 4);
    assert_eq!(&buf[..], &[0xD0]);
}

#[test]
fn decode_shares_the_read_buffer() {
    let bytes = [0x30u8, 8, 0, 3, b'a', b'/', b'b', b'x', b'y', b'z'];
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&bytes);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, None, &limits()).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
    assert_eq!(p.payload.as_ptr() as usize, base + 7);
}

#[test]
fn before_connect_packets_decode_as_v311() {
    // A v5 PUBACK with a reason code is 3.1.1-malformed.
    assert!(matches!(
        err(&[0x40, 3, 0, 1, 0x10], None),
        DecodeError::TrailingBytes { .. }
    ));
}

#[test]
fn encode_rejects_unencodable_values() {
    let long = ByteStr::from("x".repeat(65_536));
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long,
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::new(),
    });
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&publish, Protocol::V311, &mut out),
        Err(EncodeError::FieldTooLong {
            packet: PacketType::Publish,
            len: 65_536
        })
    );
    assert!(out.is_empty());
    let huge = Packet::Publish(Publish {
        topic: s("t"),
        payload: Bytes::from(vec![0u8; VARINT_MAX as usize]),
        ..match publish {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    });
    assert!(matches!(
        encoded_len(&huge, Protocol::V311),
        Err(EncodeError::PacketTooLarge { .. })
    ));
    let no_id = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        encoded_len(&no_id, Protocol::V5),
        Err(EncodeError::MissingPacketId)
    );
    let mut sub_id_too_big = Subscribe {
        packet_id: pid(1),
        filters: vec![(s("a"), SubscriptionOptions::default())],
        properties: SubscribeProperties::default(),
    };
    sub_id_too_big.properties.subscription_identifier = Some(VARINT_MAX + 1);
    assert!(matches!(
        encoded_len(&Packet::Subscribe(sub_id_too_big), Protocol::V5),
        Err(EncodeError::VarIntTooLarge { .. })
    ));
}

#[test]
fn remaining_length_uses_minimal_varint() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![7u8; 200]),
    });
    let bytes = encoded(&publish, Protocol::V311);
    // 203 = 0xCB 0x01
    assert_eq!(&bytes[..3], &[0x30, 0xCB, 0x01]);
    assert_eq!(bytes.len(), 206);
    assert_eq!(decoded(&bytes, Protocol::V311), publish);
}

mod proptests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = ByteStr> {
        "[a-z/+#é\u{1F600}]{0,6}".prop_map(ByteStr::from)
    }

    fn topic() -> impl Strategy<Value = ByteStr> {
        "[a-z/é]{1,6}".prop_map(ByteStr::from)
    }

    fn data() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..8).prop_map(Bytes::from)
    }

    fn user() -> impl Strategy<Value = UserProperties> {
        vec((text(), text()), 0..3)
    }

    fn packet_id() -> impl Strategy<Value = PacketId> {
        (1u16..).prop_map(|id| PacketId::new(id).expect("non-zero"))
    }

    fn qos() -> impl Strategy<Value = QoS> {
        (0u8..3).prop_map(|q| QoS::from_u8(q).expect("valid"))
    }

    fn reason(t: PacketType) -> impl Strategy<Value = ReasonCode> {
        proptest::sample::select(ReasonCode::allowed_in(t))
            .prop_map(|b| ReasonCode::from_u8(b).expect("known"))
    }

    fn sub_id() -> impl Strategy<Value = u32> {
        1u32..=VARINT_MAX
    }

    fn ack_props(v5: bool) -> BoxedStrategy<AckProperties> {
        if !v5 {
            return Just(AckProperties::default()).boxed();
        }
        (proptest::option::of(text()), user())
            .prop_map(|(reason_string, user_properties)| AckProperties {
                reason_string,
                user_properties,
            })
            .boxed()
    }

    fn connect_props() -> impl Strategy<Value = ConnectProperties> {
        (
            any::<Option<u32>>(),
            proptest::option::of(1u16..),
            proptest::option::of(1u32..),
            any::<Option<u16>>(),
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            user(),
            proptest::option::of(text()),
            proptest::option::of(data()),
        )
            .prop_map(
                |(se, rm, mps, tam, rri, rpi, up, am, ad)| ConnectProperties {
                    session_expiry_interval_secs: se,
                    receive_maximum: rm,
                    maximum_packet_size_bytes: mps,
                    topic_alias_maximum: tam,
                    request_response_information: rri,
                    request_problem_information: rpi,
                    user_properties: up,
                    authentication_method: am,
                    authentication_data: ad,
                },
            )
    }

    fn will_props() -> impl Strategy<Value = WillProperties> {
        (
            any::<Option<u32>>(),
            any::<Option<bool>>(),
            any::<Option<u32>>(),
            proptest::option::of(text()),
            proptest::option::of(topic()),
            proptest::option::of(data()),
            user(),
        )
            .prop_map(|(wd, pf, me, ct, rt, cd, up)| WillProperties {
                will_delay_interval_secs: wd,
                payload_format_indicator: pf,
                message_expiry_interval_secs: me,
                content_type: ct,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
            })
    }

    fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        let will = (topic(), data(), qos(), any::<bool>(), will_props()).prop_map(
            move |(topic, payload, qos, retain, properties)| Will {
                topic,
                payload,
                qos,
                retain,
                properties: if v5 {
                    properties
                } else {
                    WillProperties::default()
                },
            },
        );
        (
            any::<bool>(),
            any::<u16>(),
            text(),
            proptest::option::of(will),
            proptest::option::of(text()),
            proptest::option::of(data()),
            connect_props(),
        )
            .prop_map(move |(clean, ka, id, will, username, password, props)| {
                // Before v5 a password needs a user name.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Connect {
                    protocol,
                    clean_start: clean,
                    keep_alive_secs: ka,
                    client_id: id,
                    will,
                    username,
                    password,
                    properties: if v5 {
                        props
                    } else {
                        ConnectProperties::default()
                    },
                })
            })
    }

    fn connack(protocol: Protocol) -> BoxedStrategy<Packet> {
        if !protocol.is_v5() {
            return (any::<bool>(), 0u8..6)
                .prop_map(|(sp, rc)| {
                    Packet::ConnAck(ConnAck {
                        session_present: sp,
                        reason: ReasonCode::from_connack_v3_return_code(rc).expect("0..6"),
                        properties: ConnAckProperties::default(),
                    })
                })
                .boxed();
        }
        let a = (
            any::<Option<u32>>(),
            proptest::option::of(1u16..),
            proptest::option::of((0u8..2).prop_map(|q| QoS::from_u8(q).expect("0..2"))),
            any::<Option<bool>>(),
            proptest::option::of(1u32..),
            proptest::option::of(text()),
            any::<Option<u16>>(),
            proptest::option::of(text()),
            user(),
        );
        let b = (
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            any::<Option<u16>>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(data()),
        );
        (any::<bool>(), reason(PacketType::ConnAck), a, b)
            .prop_map(|(sp, reason, a, b)| {
                Packet::ConnAck(ConnAck {
                    session_present: sp,
                    reason,
                    properties: ConnAckProperties {
                        session_expiry_interval_secs: a.0,
                        receive_maximum: a.1,
                        maximum_qos: a.2,
                        retain_available: a.3,
                        maximum_packet_size_bytes: a.4,
                        assigned_client_identifier: a.5,
                        topic_alias_maximum: a.6,
                        reason_string: a.7,
                        user_properties: a.8,
                        wildcard_subscription_available: b.0,
                        subscription_identifiers_available: b.1,
                        shared_subscription_available: b.2,
                        server_keep_alive_secs: b.3,
                        response_information: b.4,
                        server_reference: b.5,
                        authentication_method: b.6,
                        authentication_data: b.7,
                    },
                })
            })
            .boxed()
    }

    fn publish_props() -> impl Strategy<Value = PublishProperties> {
        (
            any::<Option<bool>>(),
            any::<Option<u32>>(),
            proptest::option::of(1u16..),
            proptest::option::of(topic()),
            proptest::option::of(data()),
            user(),
            vec(sub_id(), 0..3),
            proptest::option::of(text()),
        )
            .prop_map(|(pf, me, ta, rt, cd, up, si, ct)| PublishProperties {
                payload_format_indicator: pf,
                message_expiry_interval_secs: me,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
                subscription_identifiers: si,
                content_type: ct,
            })
    }

    fn publish(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            topic(),
            any::<bool>(),
            packet_id(),
            publish_props(),
            data(),
        )
            .prop_map(
                move |(qos, dup, retain, topic, alias_only, id, props, payload)| {
                    let properties = if v5 {
                        props
                    } else {
                        PublishProperties::default()
                    };
                    let topic = if alias_only && properties.topic_alias.is_some() {
                        ByteStr::new()
                    } else {
                        topic
                    };
                    let qos0 = qos == QoS::AtMostOnce;
                    Packet::Publish(Publish {
                        dup: dup && !qos0,
                        qos,
                        retain,
                        topic,
                        packet_id: (!qos0).then_some(id),
                        properties,
                        payload,
                    })
                },
            )
    }

    fn ack(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        (
            0usize..4,
            packet_id(),
            any::<prop::sample::Index>(),
            ack_props(v5),
        )
            .prop_map(move |(kind, packet_id, pick, properties)| {
                let (t, make): (PacketType, fn(Ack) -> Packet) = match kind {
                    0 => (PacketType::PubAck, Packet::PubAck),
                    1 => (PacketType::PubRec, Packet::PubRec),
                    2 => (PacketType::PubRel, Packet::PubRel),
                    _ => (PacketType::PubComp, Packet::PubComp),
                };
                let reason = if v5 {
                    let codes = ReasonCode::allowed_in(t);
                    ReasonCode::from_u8(*pick.get(codes)).expect("known")
                } else {
                    ReasonCode::Success
                };
                make(Ack {
                    packet_id,
                    reason,
                    properties,
                })
            })
    }

    fn options(v5: bool) -> impl Strategy<Value = SubscriptionOptions> {
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
            if !v5 {
                return SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                };
            }
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: match rh {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            }
        })
    }

    fn subscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        (
            packet_id(),
            vec((text(), options(v5)), 1..4),
            proptest::option::of(sub_id()),
            user(),
        )
            .prop_map(move |(packet_id, filters, si, up)| {
                let properties = if v5 {
                    SubscribeProperties {
                        subscription_identifier: si,
                        user_properties: up,
                    }
                } else {
                    SubscribeProperties::default()
                };
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties,
                })
            })
    }

    fn suback(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        let code = if v5 {
            reason(PacketType::SubAck).boxed()
        } else {
            proptest::sample::select(&[0u8, 1, 2, 0x80][..])
                .prop_map(|b| ReasonCode::from_suback_v3_return_code(b).expect("valid"))
                .boxed()
        };
        (packet_id(), vec(code, 1..4), ack_props(v5)).prop_map(|(packet_id, codes, props)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes: codes,
                properties: props,
            })
        })
    }

    fn unsubscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        (packet_id(), vec(text(), 1..4), user()).prop_map(move |(packet_id, filters, up)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: UnsubscribeProperties {
                    user_properties: if v5 { up } else { Vec::new() },
                },
            })
        })
    }

    fn unsuback(protocol: Protocol) -> impl Strategy<Value = Packet> {
        let v5 = protocol.is_v5();
        (
            packet_id(),
            vec(reason(PacketType::UnsubAck), 0..4),
            ack_props(v5),
        )
            .prop_map(move |(packet_id, codes, properties)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reason_codes: if v5 { codes } else { Vec::new() },
                    properties,
                })
            })
    }

    fn disconnect_and_auth(protocol: Protocol) -> BoxedStrategy<Packet> {
        if !protocol.is_v5() {
            return Just(Packet::Disconnect(Disconnect::default())).boxed();
        }
        let disconnect = (
            reason(PacketType::Disconnect),
            any::<Option<u32>>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            user(),
        )
            .prop_map(|(reason, se, rs, sr, up)| {
                Packet::Disconnect(Disconnect {
                    reason,
                    properties: DisconnectProperties {
                        session_expiry_interval_secs: se,
                        reason_string: rs,
                        server_reference: sr,
                        user_properties: up,
                    },
                })
            });
        let auth = (
            reason(PacketType::Auth),
            proptest::option::of(text()),
            proptest::option::of(data()),
            proptest::option::of(text()),
            user(),
        )
            .prop_map(|(reason, am, ad, rs, up)| {
                Packet::Auth(Auth {
                    reason,
                    properties: AuthProperties {
                        authentication_method: am,
                        authentication_data: ad,
                        reason_string: rs,
                        user_properties: up,
                    },
                })
            });
        prop_oneof![disconnect, auth].boxed()
    }

    fn packet(protocol: Protocol) -> impl Strategy<Value = Packet> {
        prop_oneof![
            connect(protocol).boxed(),
            connack(protocol),
            publish(protocol).boxed(),
            ack(protocol).boxed(),
            subscribe(protocol).boxed(),
            suback(protocol).boxed(),
            unsubscribe(protocol).boxed(),
            unsuback(protocol).boxed(),
            Just(Packet::PingReq).boxed(),
            Just(Packet::PingResp).boxed(),
            disconnect_and_auth(protocol),
        ]
    }

    fn protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
        prop_oneof![
            Just(Protocol::V31),
            Just(Protocol::V311),
            Just(Protocol::V5)
        ]
        .prop_flat_map(|p| (Just(p), packet(p)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encode_then_decode_is_identity((protocol, packet) in protocol_and_packet()) {
            let mut buf = BytesMut::new();
            let n = encode(&packet, protocol, &mut buf).expect("encodable");
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(encoded_len(&packet, protocol), Ok(n));
            let bytes = buf.clone();
            let back = decode(&mut buf, Some(protocol), &limits()).expect("decodes");
            prop_assert_eq!(back.as_ref(), Some(&packet));
            prop_assert!(buf.is_empty());
            // Canonical: re-encoding the decoded packet gives the same bytes.
            let mut again = BytesMut::new();
            encode(back.as_ref().expect("some"), protocol, &mut again).expect("encodable");
            prop_assert_eq!(again, bytes);
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics(
            bytes in vec(any::<u8>(), 0..96),
            level in 0u8..4,
        ) {
            let protocol = Protocol::from_level(level + 2);
            let mut buf = BytesMut::from(&bytes[..]);
            let max = DecodeLimits { packet_bytes_max: 64 };
            while let Ok(Some(_)) = decode(&mut buf, protocol, &max) {}
        }

        #[test]
        fn decode_of_corrupted_packets_never_panics(
            (protocol, packet) in protocol_and_packet(),
            flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encoded(&packet, protocol);
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, Some(protocol), &limits()) {}
        }
    }
}
