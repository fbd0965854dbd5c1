//! Property tests: arbitrary packets of each level round-trip exactly; random and
//! corrupted bytes never panic the decoder.

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
    fn every_strict_prefix_is_incomplete((protocol, packet) in protocol_and_packet()) {
        let bytes = encoded(&packet, protocol);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(decode(&mut buf, Some(protocol), &limits()), Ok(None));
            prop_assert_eq!(&buf[..], &bytes[..cut]);
        }
    }

    #[test]
    fn limit_is_enforced_from_the_header((protocol, packet) in protocol_and_packet()) {
        let bytes = encoded(&packet, protocol);
        let tight = DecodeLimits { packet_bytes_max: bytes.len() as u32 - 1 };
        // Only the fixed header is offered: the verdict must not wait for the body.
        let header_bytes = 1 + (1..5).find(|i| bytes[*i] & 0x80 == 0).expect("valid varint");
        let mut buf = BytesMut::from(&bytes[..header_bytes]);
        let verdict = decode(&mut buf, Some(protocol), &tight);
        let is_too_large = matches!(verdict, Err(DecodeError::PacketTooLarge { .. }));
        prop_assert!(is_too_large);
        prop_assert_eq!(buf.len(), header_bytes);
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
