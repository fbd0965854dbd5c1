//! Acknowledgements released by the owner's durability task while fan-outs wait for a
//! full peer outbox: QoS 1 publishes whose fan-out waited used to be queued for their
//! ack behind QoS 2 (or mesh-forwarded) publishes logged after them, out of offset
//! order, and the task then spun without yielding: the whole shard froze.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{Conn, Connect, Publish, Recv, PUBACK, PUBCOMP};
use common::*;

/// `/health` within `limit`, tolerating a broker that does not answer.
fn health(addr: SocketAddr, limit: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Publishes `count` messages at `qos` over the topics, `window` at a time; returns how
/// many were completed (PUBACK, or PUBCOMP after the automatic PUBREL) before a
/// completion took longer than `stall`.
fn publish_all(
    addr: SocketAddr,
    client: &str,
    topics: &[String],
    qos: u8,
    count: usize,
    stall: Duration,
) -> usize {
    let (mut conn, _) = Conn::connect(addr, &Connect::v5(client));
    let window = 64;
    let done_kind = if qos == 1 { PUBACK } else { PUBCOMP };
    let (mut sent, mut done) = (0, 0);
    let payload = vec![b'x'; 300];
    while done < count {
        while sent < count && sent - done < window {
            let topic = &topics[sent % topics.len()];
            let publish = Publish::new(topic, &payload, qos).pid(conn.pid());
            conn.send(&publish.encode(true));
            sent += 1;
        }
        let deadline = Instant::now() + stall;
        loop {
            match conn.recv(deadline.saturating_duration_since(Instant::now())) {
                Recv::Packet(p) if p.kind == done_kind => {
                    done += 1;
                    break;
                }
                Recv::Packet(_) => {}
                Recv::Timeout | Recv::Closed => return done,
            }
        }
    }
    done
}

#[test]
fn qos1_and_qos2_publishers_through_a_full_peer_outbox_never_freeze_a_shard() {
    let broker = broker_with(&[
        // One message per batch and an outbox of eight: fan-outs wait for room often.
        ("MESH_BATCH_MESSAGES_MAX", "1"),
        // Acks due at once make the race wide: the durability task runs right after a
        // push (with `always` it usually sits in an fdatasync; rarely seen there).
        ("FSYNC_POLICY", "none"),
    ]);
    // Subscribers on both shards, so every owner fans out across the mesh.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (i, id) in names("sub", 8).into_iter().enumerate() {
        let mut sub = Conn::client(broker.mqtt, true, &id);
        sub.sub("load/#", 1);
        let stop = Arc::clone(&stop);
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Recv::Closed = sub.recv(Duration::from_millis(100)) {
                    return;
                }
            }
            drop(sub);
        }));
        if i >= 1
            && broker.metric("shardmq_sessions_current{shard=\"0\"}") > Some(0.0)
            && broker.metric("shardmq_sessions_current{shard=\"1\"}") > Some(0.0)
        {
            break;
        }
    }
    // Topics on both owners; publishers of both QoS levels, spread over both shards.
    let topics: Arc<Vec<String>> = Arc::new(names("load/t", 8));
    let count = 6_000;
    let stall = Duration::from_secs(20);
    let mut publishers = Vec::new();
    for (i, id) in names("pub", 8).into_iter().enumerate() {
        let (addr, topics) = (broker.mqtt, Arc::clone(&topics));
        let qos = if i % 2 == 0 { 1 } else { 2 };
        publishers.push(std::thread::spawn(move || {
            (
                id.clone(),
                publish_all(addr, &id, &topics, qos, count, stall),
            )
        }));
    }
    let mut stalled = Vec::new();
    for p in publishers {
        let (id, done) = p.join().expect("publisher thread");
        if done < count {
            stalled.push(format!("{id}: {done} of {count} completed"));
        }
    }
    let answered = health(broker.metrics, Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    assert!(
        stalled.is_empty() && answered == Some(200),
        "broker stopped serving (health: {answered:?}): {stalled:?}"
    );
    for r in readers {
        let _ = r.join();
    }
}
