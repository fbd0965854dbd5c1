//! Codec tests across packets: byte vectors laid out as in the MQTT 3.1.1 and 5.0 specs
//! (`vectors`), every malformed class and partial input (`malformed`), and property-based
//! round trips and fuzzing (`proptests`). Shared helpers live here.

mod alloc;
mod malformed;
mod proptests;
mod vectors;

use bytes::{Bytes, BytesMut};

use super::*;

pub(super) fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

pub(super) fn decode_all(
    bytes: &[u8],
    protocol: Option<Protocol>,
) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = decode(&mut buf, protocol, &limits());
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    }
    out
}

pub(super) fn decoded(bytes: &[u8], protocol: Protocol) -> Packet {
    match decode_all(bytes, Some(protocol)) {
        Ok(Some(p)) => p,
        other => panic!("expected a packet from {bytes:02x?}, got {other:?}"),
    }
}

pub(super) fn err(bytes: &[u8], protocol: Option<Protocol>) -> DecodeError {
    match decode_all(bytes, protocol) {
        Err(e) => e,
        other => panic!("expected an error from {bytes:02x?}, got {other:?}"),
    }
}

pub(super) fn encoded(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    let n = encode(packet, protocol, &mut out).expect("encodable");
    assert_eq!(n, out.len());
    assert_eq!(encoded_len(packet, protocol), Ok(n));
    out.to_vec()
}

/// Fixed header byte + one-byte remaining length + body.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

pub(super) fn s(text: &'static str) -> ByteStr {
    ByteStr::from(text)
}

pub(super) fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero")
}

/// Asserts that `bytes` decodes to `packet` and that `packet` encodes back to `bytes`.
pub(super) fn assert_vector(bytes: &[u8], protocol: Protocol, packet: &Packet) {
    assert_eq!(&decoded(bytes, protocol), packet);
    assert_eq!(encoded(packet, protocol), bytes);
}

pub(super) fn connect_v311_bytes() -> Vec<u8> {
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

pub(super) fn connect_v311() -> Connect {
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

pub(super) fn connect_v5_bytes() -> Vec<u8> {
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

pub(super) fn connect_v5() -> Connect {
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

pub(super) fn sample_packets() -> Vec<(Vec<u8>, Protocol)> {
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
