//! MQTT codec cost per packet: encode and decode of a PUBLISH (3.1.1 and 5.0), with the
//! 256-byte payload the peer comparisons use.
//!
//! Run: `cargo bench --bench codec [-- ITERATIONS]`. Prints ns per packet; a plain
//! program, so the numbers are comparable across commits on the same machine.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shardmq::mqtt::{
    decode, encode, ByteStr, DecodeLimits, Packet, PacketId, Protocol, Publish, PublishProperties,
    QoS,
};

const ITERATIONS_DEFAULT: u64 = 2_000_000;
/// Packets encoded into one buffer before it is reset: a batch, as a connection writes.
const BATCH_PACKETS: u64 = 64;

fn publish(qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from_static("bench/sensors/room-17/temperature"),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(7).expect("non-zero")),
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0xA5u8; 256]),
    })
}

fn main() {
    let iterations: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(ITERATIONS_DEFAULT);
    println!("codec: {iterations} packets each, 256 B payload, batches of {BATCH_PACKETS}");
    println!("{:<28} {:>10} {:>12}", "case", "ns/packet", "packets/s");
    for (protocol, name) in [(Protocol::V311, "3.1.1"), (Protocol::V5, "5.0")] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let packet = publish(qos);
            let mut out = BytesMut::with_capacity(64 << 10);
            let started = Instant::now();
            for i in 0..iterations {
                if i % BATCH_PACKETS == 0 {
                    out.clear();
                }
                black_box(encode(black_box(&packet), protocol, &mut out).expect("encodes"));
            }
            report(
                &format!("encode {name} qos{}", qos as u8),
                iterations,
                started,
            );

            let mut one = BytesMut::new();
            encode(&packet, protocol, &mut one).expect("encodes");
            let mut batch = BytesMut::new();
            for _ in 0..BATCH_PACKETS {
                batch.extend_from_slice(&one);
            }
            let batch = batch.freeze();
            let limits = DecodeLimits::default();
            let started = Instant::now();
            let mut decoded = 0u64;
            while decoded < iterations {
                let mut buf = BytesMut::from(&batch[..]);
                while let Some(p) = decode(&mut buf, Some(protocol), &limits).expect("decodes") {
                    black_box(p);
                    decoded += 1;
                }
            }
            report(&format!("decode {name} qos{}", qos as u8), decoded, started);
        }
    }
}

fn report(case: &str, packets: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{case:<28} {:>10.1} {:>12.0}",
        secs * 1e9 / packets as f64,
        packets as f64 / secs
    );
}
