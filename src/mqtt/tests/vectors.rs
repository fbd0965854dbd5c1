//! Every packet against hand-laid bytes from the spec layouts, in both directions.

use bytes::{Bytes, BytesMut};

use super::*;

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
        // Packet id 0 parses but breaks [MQTT-2.2.1-3]: a protocol error.
        assert_eq!(
            err(&[first, 2, 0, 0], Some(Protocol::V311)).reason_code(),
            ReasonCode::ProtocolError
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

#[test]
fn v5_connack_without_property_block_is_tolerated() {
    let expected = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    });
    assert_eq!(decoded(&[0x20, 2, 1, 0], Protocol::V5), expected);
    // Encoding always writes the (empty) block.
    assert_eq!(encoded(&expected, Protocol::V5), [0x20, 3, 1, 0, 0]);
}
