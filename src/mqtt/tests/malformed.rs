//! Malformed input of every class, partial input, framing and encode-side limits.

use bytes::{Bytes, BytesMut};

use super::*;

#[test]
fn connect_malformed_classes() {
    let base = connect_v311_bytes();
    let mut wrong_name = base.clone();
    wrong_name[7] = b'X';
    let e = err(&wrong_name, None);
    assert_eq!(e, DecodeError::InvalidProtocolName);
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);

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
    let e = err(&[0x32, 5, 0, 1, b'a', 0, 0], v311);
    assert_eq!(
        e,
        DecodeError::ZeroPacketId {
            packet: PacketType::Publish
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
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
            &[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
            Some(Protocol::V5)
        ),
        DecodeError::InvalidPropertyValue { id: 0x0B, .. }
    ));
}

#[test]
fn varint_of_five_bytes_is_malformed() {
    for bytes in [
        &[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..],
        &[0x30, 0x80, 0x80, 0x80, 0x80],
        // Remaining length 0 padded to two bytes: not minimal.
        &[0xC0, 0x80, 0x00],
    ] {
        let mut buf = BytesMut::from(bytes);
        let e = decode(&mut buf, None, &limits()).unwrap_err();
        assert_eq!(e, DecodeError::MalformedVarInt { offset: 1 });
        assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn padded_varint_inside_the_body_is_malformed() {
    // Property length 0 written as 0x80 0x00 in a v5 PUBACK.
    assert_eq!(
        err(&[0x40, 5, 0, 1, 0x10, 0x80, 0x00], Some(Protocol::V5)),
        DecodeError::MalformedVarInt { offset: 5 }
    );
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
fn v311_connect_password_without_username_is_not_encodable() {
    let mut connect = connect_v311();
    connect.username = None;
    let packet = Packet::Connect(connect.clone());
    assert_eq!(
        encoded_len(&packet, Protocol::V311),
        Err(EncodeError::PasswordWithoutUsername)
    );
    connect.protocol = Protocol::V5;
    assert!(encoded_len(&Packet::Connect(connect), Protocol::V5).is_ok());
}
