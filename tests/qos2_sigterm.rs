//! A QoS 2 message acknowledged (PUBREC) to its publisher right before a graceful stop
//! reaches every persistent subscriber, in that process or the next: the stop's final
//! cursors are held down by what each session still holds, by the QoS 2 publishes whose
//! fan-out waits for their fsync, and by the exchanges in the sending state (their
//! `qos2_sent` entries are logged again with the cursors).
//! Prompted by tests/nemesis.rs (seed 23: one such message lost at a plain persistent
//! 5.0 QoS 2 subscriber, acknowledged right before a SIGTERM).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{self, Conn, Connect, Recv, PUBLISH};
use common::*;

const SUBSCRIBERS: usize = 2;
const PUBLISHERS: usize = 3;
const ROUNDS: usize = 4;

fn options(dir: &tempfile::TempDir) -> BrokerOptions {
    BrokerOptions {
        shards: 2,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![
            ("SHARDMQ_FSYNC_POLICY".into(), "always".into()),
            ("SHARDMQ_SESSION_QUEUE_MESSAGES_MAX".into(), "200".into()),
            ("SHARDMQ_INFLIGHT_COUNT_MAX".into(), "32".into()),
        ],
        ..BrokerOptions::default()
    }
}

fn session(i: usize) -> Connect {
    Connect::v5(&format!("q2-term-sub-{i}"))
        .clean(false)
        .session_expiry(3600)
}

/// Reads until the connection closes or `stop`, recording every QoS 2 message (PUBREC
/// and PUBCOMP answered by the client as it reads).
fn read_all(mut conn: Conn, got: Arc<Mutex<HashSet<u64>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match conn.recv(Duration::from_millis(100)) {
            Recv::Packet(p) if p.kind == PUBLISH => {
                let publish = raw::Publish::decode(&p, true);
                let id = u64::from_be_bytes(publish.payload[..8].try_into().unwrap());
                got.lock().unwrap().insert(id);
            }
            Recv::Packet(_) | Recv::Timeout => {}
            Recv::Closed => return,
        }
    }
}

/// Publishes QoS 2 until the connection closes: each message whose PUBREC came is
/// acknowledged (its PUBREL is sent, its PUBCOMP not waited for beyond the stop).
fn publish_all(mut conn: Conn, who: u64, acked: Arc<Mutex<HashSet<u64>>>) {
    conn.auto_pubrel = true;
    for n in 1u64.. {
        let id = (who << 32) | n;
        let pid = conn.pid();
        let topic = format!("q2term/t{}", n % 8);
        let publish = raw::Publish::new(&topic, &id.to_be_bytes(), 2).pid(pid);
        if !conn.try_send(&publish.encode(true)) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match conn.recv(left) {
                Recv::Packet(p) if p.kind == raw::PUBREC => {
                    let mut r = raw::Reader::new(&p.body);
                    let (got_pid, code) = (r.u16(), if r.remaining() > 0 { r.u8() } else { 0 });
                    if got_pid == pid {
                        if code < 0x80 {
                            acked.lock().unwrap().insert(id);
                        }
                        break;
                    }
                }
                Recv::Packet(_) | Recv::Timeout => {}
                Recv::Closed => return,
            }
        }
    }
}

/// Persistent 5.0 QoS 2 subscribers and QoS 2 publishers over both shards; SIGTERM while
/// the publishers are busy, restart on the same data dir, `ROUNDS` times. Every message
/// PUBREC'd to its publisher must reach every subscriber, in one process or another.
#[test]
fn qos2_acknowledged_right_before_sigterm_reaches_every_persistent_subscriber() {
    let dir = temp_dir();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let got: Vec<Arc<Mutex<HashSet<u64>>>> = (0..SUBSCRIBERS)
        .map(|_| Arc::new(Mutex::new(HashSet::new())))
        .collect();
    let mut broker = Broker::start_with(options(&dir));
    for (i, _) in got.iter().enumerate() {
        let (mut c, _) = Conn::connect(broker.mqtt, &session(i));
        c.sub("q2term/#", 2);
    }
    for round in 0..=ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, got) in got.iter().enumerate() {
            let (conn, ack) = Conn::connect(broker.mqtt, &session(i));
            assert!(ack.session_present, "round {round}: session {i} present");
            let (got, stop) = (Arc::clone(got), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || read_all(conn, got, stop)));
        }
        if round == ROUNDS {
            // The last process: only drain what is still owed.
            std::thread::sleep(Duration::from_secs(4));
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().unwrap();
            }
            break;
        }
        for p in 0..PUBLISHERS {
            let conn = Conn::client(broker.mqtt, true, &format!("q2-term-pub-{round}-{p}"));
            let acked = Arc::clone(&acked);
            let who = (round * PUBLISHERS + p) as u64;
            threads.push(std::thread::spawn(move || publish_all(conn, who, acked)));
        }
        std::thread::sleep(Duration::from_millis(600 + 150 * round as u64));
        broker.signal(libc::SIGTERM);
        assert!(
            broker.wait_exit(Duration::from_secs(20)).is_some(),
            "round {round}: stopped"
        );
        for t in threads {
            t.join().unwrap();
        }
        broker = Broker::start_with(options(&dir));
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > 100,
        "publishers got PUBRECs ({})",
        acked.len()
    );
    for (i, got) in got.iter().enumerate() {
        let got = got.lock().unwrap();
        let mut lost: Vec<u64> = acked.difference(&got).copied().collect();
        lost.sort();
        assert!(
            lost.is_empty(),
            "subscriber {i}: {} of {} acknowledged QoS 2 messages never arrived: {:?}",
            lost.len(),
            acked.len(),
            lost.iter()
                .take(20)
                .map(|id| (id >> 32, id & 0xFFFF_FFFF))
                .collect::<Vec<_>>()
        );
    }
}
