//! A subscriber that stops reading while publishers flood at QoS 0 and QoS 1: the
//! broker's memory stays bounded, QoS 0 to it is dropped and counted, QoS 1 publishers
//! are held back by the broker's own bounds (reading pauses at `receive_maximum`
//! unacknowledged publishes, and while a mesh link holds `mesh_link_bytes_max`), and a
//! healthy subscriber keeps receiving every PUBACKed message.
//!
//! QoS 1 to the stuck subscriber itself is queued up to its session bounds and then
//! dropped and counted: holding every publisher back for one subscriber that stopped
//! reading would stall every other subscriber of the topic with it.
//!
//! Each of these once stalled the healthy subscriber for seconds: a mesh receiver fed
//! by a flood never handed its CPU back, so its shard served no socket at all; the
//! shard reaped socket readiness only every 100 ms while a flooding reader kept it busy;
//! mesh relays refilled an outbox before a parked publisher could add to it; and a
//! session catching up from the log rescanned its segment from the start on each read.
//!
//! The bound: the broker's RSS once every client is connected, plus
//! [`RSS_GROWTH_MAX_BYTES`]. What may legitimately grow is the stuck session's queue
//! (`session_queue_bytes_max` = 4 MiB here) and output buffer
//! (`connection_out_bytes_max`, 1 MiB), the same for the healthy subscriber while it
//! catches up, and the WAL and mesh buffers that were untouched before the flood.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

/// How long the publishers flood.
const FLOOD: Duration = Duration::from_secs(8);
/// Growth of the broker's RSS over its connected baseline that the test allows.
const RSS_GROWTH_MAX_BYTES: u64 = 96 << 20;
const PAYLOAD_BYTES: usize = 1024;
/// QoS 1 publishes the publisher sends ahead of its acks: more than the broker's
/// `receive_maximum` (1024), so the broker has to stop reading it.
const PUBLISHER_WINDOW: u64 = 4096;
/// How long the healthy subscriber waits for more once the publishers stopped: a
/// session that fell behind catches up from the log afterwards, and a pause there is
/// not a loss.
const QUIET_END: Duration = Duration::from_secs(5);

fn payload(seq: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD_BYTES];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

/// A 3.1.1 QoS 0 publisher writing batches of PUBLISH packets as fast as it can.
fn flood_qos0(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let mut conn = Conn::client(addr, false, "flood-q0");
    let batch: Vec<u8> = (0..64)
        .flat_map(|i| Publish::new("slow/q0", &payload(i), 0).encode(false))
        .collect();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        if conn.stream.write_all(&batch).is_err() {
            break;
        }
        sent += 64;
    }
    sent
}

/// A 3.1.1 QoS 1 publisher keeping `PUBLISHER_WINDOW` publishes ahead of its acks.
/// Returns (sent, acked); the broker acks in receive order, so the first `acked` are
/// exactly the acknowledged ones.
fn flood_qos1(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let conn = Conn::client(addr, false, "flood-q1");
    let mut writer = conn.stream.try_clone().unwrap();
    let mut reader = conn.stream.try_clone().unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let acks = {
        let acked = Arc::clone(&acked);
        std::thread::spawn(move || {
            reader
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let mut bytes = 0u64;
            // Only PUBACKs come to this client: 4 bytes each.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                acked.store(bytes / 4, Ordering::Relaxed);
            }
        })
    };
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if sent - acked.load(Ordering::Relaxed) >= PUBLISHER_WINDOW {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let pid = (sent % 65_000) as u16 + 1;
        let packet = Publish::new("slow/q1", &payload(sent), 1)
            .pid(pid)
            .encode(false);
        if writer.write_all(&packet).is_err() {
            break;
        }
        sent += 1;
    }
    // Let the last acks arrive, then close so the ack reader ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    let _ = acks.join();
    (sent, acked.load(Ordering::Relaxed))
}

/// What the healthy subscriber saw.
struct Healthy {
    qos1: HashSet<u64>,
    qos0: u64,
    /// Messages received in each second of the run.
    per_second: Vec<u64>,
    /// Longest wait between two messages while the publishers ran.
    gap_max: Duration,
    /// The broker never closed the connection.
    connected: bool,
}

/// Receives until the publishers stopped and either every acknowledged QoS 1 message
/// (`acked`, known once they stopped) arrived or nothing came for [`QUIET_END`].
fn healthy_subscriber(mut conn: Conn, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> Healthy {
    let started = Instant::now();
    let mut seen = Healthy {
        qos1: HashSet::new(),
        qos0: 0,
        per_second: Vec::new(),
        gap_max: Duration::ZERO,
        connected: false,
    };
    let mut quiet_since = None;
    let mut last = Instant::now();
    loop {
        match conn.try_publish(Duration::from_millis(100)) {
            Some(p) => {
                quiet_since = None;
                if !stop.load(Ordering::Relaxed) {
                    seen.gap_max = seen.gap_max.max(last.elapsed());
                }
                last = Instant::now();
                let second = started.elapsed().as_secs() as usize;
                if seen.per_second.len() <= second {
                    seen.per_second.resize(second + 1, 0);
                }
                seen.per_second[second] += 1;
                if p.qos == 1 {
                    seen.qos1
                        .insert(u64::from_be_bytes(p.payload[..8].try_into().unwrap()));
                } else {
                    seen.qos0 += 1;
                }
            }
            None if stop.load(Ordering::Relaxed) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if seen.qos1.len() as u64 >= acked.load(Ordering::Relaxed)
                    || since.elapsed() > QUIET_END
                {
                    seen.connected = still_connected(&mut conn);
                    return seen;
                }
            }
            None => {
                seen.gap_max = seen.gap_max.max(last.elapsed());
            }
        }
    }
}

/// Whether the broker still answers a PINGREQ on `conn` (it never closed it).
fn still_connected(conn: &mut Conn) -> bool {
    if !conn.try_send(&frame(PINGREQ, 0, &[])) {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match conn.recv(Duration::from_millis(500)) {
            Recv::Packet(p) if p.kind == PINGRESP => return true,
            Recv::Closed => return false,
            _ => {}
        }
    }
    false
}

/// The stuck subscriber costs bounded memory and is counted; beside it a healthy
/// subscriber gets every PUBACKed message without a long stall.
#[test]
fn a_stuck_subscriber_costs_bounded_memory_while_a_healthy_one_gets_every_acked_message() {
    // Acks wait for the WAL write, not its fdatasync: the test is about memory and
    // backpressure, and other processes' fsyncs on a shared disk would otherwise set the
    // QoS 1 publisher's pace.
    // The subscriber's in-flight window is twice the publisher's (receive_maximum 1024):
    // at equal round-trip times a subscriber with a smaller window cannot keep up with
    // the publisher, and is then a slow subscriber like any other.
    let broker = broker_with(&[
        ("SESSION_QUEUE_BYTES_MAX", "4194304"),
        ("FSYNC_POLICY", "none"),
        ("INFLIGHT_COUNT_MAX", "2048"),
    ]);

    // The stuck subscriber: subscribes, then never reads its socket again.
    let mut stuck = Conn::client(broker.mqtt, true, "stuck");
    stuck.sub("slow/q0", 1);
    stuck.sub("slow/q1", 1);
    // The healthy subscriber takes the QoS 1 stream, which it can keep up with: a reader
    // slower than the flood would itself be a slow subscriber, its queue bounded too.
    let mut healthy = Conn::client(broker.mqtt, true, "healthy");
    healthy.sub("slow/q1", 1);

    let stop = Arc::new(AtomicBool::new(false));
    let stop_healthy = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(u64::MAX));
    let healthy = {
        let (stop, acked) = (Arc::clone(&stop_healthy), Arc::clone(&acked_total));
        std::thread::spawn(move || healthy_subscriber(healthy, stop, acked))
    };
    let baseline = broker.rss_bytes();
    assert!(baseline > 0, "VmRSS of the broker");
    let q0 = {
        let (addr, stop) = (broker.mqtt, Arc::clone(&stop));
        std::thread::spawn(move || flood_qos0(addr, stop))
    };
    let q1 = {
        let (addr, stop) = (broker.mqtt, Arc::clone(&stop));
        std::thread::spawn(move || flood_qos1(addr, stop))
    };
    let started = Instant::now();
    let mut rss_max = baseline;
    while started.elapsed() < FLOOD {
        std::thread::sleep(Duration::from_millis(200));
        rss_max = rss_max.max(broker.rss_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    let q0_sent = q0.join().unwrap();
    let (q1_sent, q1_acked) = q1.join().unwrap();
    rss_max = rss_max.max(broker.rss_bytes());
    acked_total.store(q1_acked, Ordering::Relaxed);
    stop_healthy.store(true, Ordering::Relaxed);
    let seen = healthy.join().unwrap();
    eprintln!(
        "baseline RSS {} KiB, max {} KiB (+{} KiB); QoS 0 sent {q0_sent}, QoS 1 sent {q1_sent} \
         acked {q1_acked}; healthy got {} QoS 1, {} QoS 0, per second {:?}, longest gap {:?}",
        baseline >> 10,
        rss_max >> 10,
        (rss_max - baseline) >> 10,
        seen.qos1.len(),
        seen.qos0,
        seen.per_second,
        seen.gap_max
    );

    let (_, metrics) = broker.http_get("/metrics");
    for line in metrics.lines().filter(|l| {
        l.starts_with("shardmq_messages_dropped")
            || (l.starts_with("shardmq_limit_hits") && !l.ends_with(" 0"))
            || l.starts_with("shardmq_messages_delivered")
    }) {
        eprintln!("{line}");
    }
    assert!(
        rss_max < baseline + RSS_GROWTH_MAX_BYTES,
        "broker RSS grew from {} KiB to {} KiB",
        baseline >> 10,
        rss_max >> 10
    );
    assert!(
        seen.connected,
        "the broker closed the healthy subscriber\n{}",
        broker.log()
    );
    assert!(q1_acked > 1000, "the QoS 1 publisher made progress");
    assert!(!seen.qos1.is_empty(), "the healthy subscriber received");
    // QoS 0 to the stuck subscriber was dropped and counted; its bounds were hit.
    assert!(broker.metric_sum_labelled("shardmq_messages_dropped_total", "qos=\"0\"") > 0.0);
    let queue_hits = broker.limit_hits("session_queue_bytes_max")
        + broker.limit_hits("session_queue_messages_max");
    assert!(queue_hits > 0.0, "the stuck session's queue bound was hit");
    // Its deliveries were held back by its in-flight window or its pending output.
    assert!(
        broker.limit_hits("inflight_count_max") + broker.limit_hits("connection_out_bytes_max")
            > 0.0
    );
    // (Whether the publishers were paused, at receive_maximum or a full mesh link,
    // depends on whether the broker fell behind them; the RSS bound above is what
    // says nothing was buffered without limit.)
    // The broker still answers.
    let mut probe = Conn::client(broker.mqtt, true, "after");
    probe.ping();
    probe.expect_kind(PINGRESP);
    // Every PUBACKed QoS 1 message reached the healthy subscriber.
    let missing: Vec<u64> = (0..q1_acked).filter(|s| !seen.qos1.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} acked messages missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The healthy subscriber kept receiving throughout. (The bound on a gap is loose,
    // 5x the worst seen: broker, publishers and this subscriber share two cores; a
    // stuck subscriber blocking the others would stall it for the whole flood.)
    assert!(
        seen.gap_max < Duration::from_secs(2),
        "healthy subscriber stalled for {:?}: {:?}",
        seen.gap_max,
        seen.per_second
    );
}
