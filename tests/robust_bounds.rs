//! Memory and time stay bounded whatever a client does: user properties are counted and
//! capped, small queued payloads do not keep whole read buffers alive, a partial packet
//! cannot be trickled forever, a client that never reads cannot make its replies pile
//! up, and a flood of wrong passwords cannot stall the shard's acknowledgements.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

fn one_shard(settings: &[(&str, &str)], args: Vec<String>) -> Broker {
    broker_on(1, settings, args)
}

/// `n` user properties of `bytes` bytes each (name and value together).
fn user_props(publish: Publish, n: usize, bytes: usize) -> Publish {
    (0..n).fold(publish, |p, i| {
        let name = format!("k{i:05}");
        let value = "v".repeat(bytes.saturating_sub(name.len()));
        p.prop(P_USER_PROPERTY, Prop::Pair(name, value))
    })
}

/// A publish whose user properties exceed `user_properties_bytes_max` is refused with
/// Quota exceeded and counted; one under it is delivered with its properties. Messages
/// with big user properties are charged for them against the session queue.
#[test]
fn user_properties_are_capped_and_counted_against_the_queue() {
    let broker = one_shard(
        &[
            ("USER_PROPERTIES_BYTES_MAX", "65536"),
            ("SESSION_QUEUE_BYTES_MAX", "1048576"),
        ],
        Vec::new(),
    );
    let mut sub = Conn::client(broker.mqtt, true, "up-sub");
    sub.sub("up/t", 1);
    let mut publ = Conn::client(broker.mqtt, true, "up-pub");

    // 100 KiB of user properties: over the limit.
    let big = user_props(Publish::new("up/t", b"big", 1), 100, 1024);
    assert_eq!(publ.publish(big), 0x97, "v5 refusal is Quota exceeded");
    let big2 = user_props(Publish::new("up/t", b"big", 2), 100, 1024);
    let mut q2 = big2;
    q2.pid = publ.pid();
    publ.send(&q2.encode(true));
    assert_eq!(
        publ.expect_ack(PUBREC, q2.pid),
        0x97,
        "QoS 2 refused in PUBREC"
    );
    publ.send(&user_props(Publish::new("up/t", b"big0", 0), 100, 1024).encode(true));
    // The QoS 0 one has no ack to wait for: its refusal is counted when it is read.
    assert!(
        eventually(Duration::from_secs(5), || broker
            .limit_hits("user_properties_bytes_max")
            >= 3.0),
        "hits counted: {}",
        broker.log()
    );

    // A will carries user properties too, stored with the session.
    let will = Will {
        topic: "up/will".into(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: false,
        props: user_props(Publish::new("-", b"", 0), 100, 1024).props,
    };
    let (_, ack) = Conn::connect_raw(broker.mqtt, &Connect::v5("up-will").will(will));
    assert_eq!(ack.code, 0x97, "a will over the limit is refused");

    // Under the limit: delivered with the properties.
    let small = user_props(Publish::new("up/t", b"small", 1), 4, 64);
    assert_eq!(publ.publish(small), 0);
    let got = sub.expect_publish();
    assert_eq!(got.payload, b"small", "the refused ones were not delivered");
    assert_eq!(got.props.user().len(), 4);

    // An offline session: 40 messages with 60 KiB of properties each are 2.4 MiB, over
    // its 1 MiB queue, though their payloads are one byte.
    let mut off = Conn::connect(
        broker.mqtt,
        &Connect::v5("up-off").clean(false).session_expiry(3600),
    )
    .0;
    off.sub("up/off", 1);
    off.disconnect(0);
    for _ in 0..40 {
        let p = user_props(Publish::new("up/off", b"x", 1), 60, 1024);
        assert_eq!(publ.publish(p), 0);
    }
    assert!(
        eventually(WAIT, || broker.limit_hits("session_queue_bytes_max") > 0.0),
        "user properties count against session_queue_bytes_max"
    );
}

/// Publishes `n` QoS 1 messages of 10 bytes one at a time (each its own read on the
/// broker), after a burst that grows the connection's read chunk to its maximum.
fn small_publisher(addr: SocketAddr, id: usize, n: usize) {
    let mut c = Conn::client(addr, false, &format!("small-pub-{id}"));
    let burst: Vec<u8> = (0..400)
        .flat_map(|_| Publish::new("nobody/listens", &[0u8; 100], 0).encode(false))
        .collect();
    c.send(&burst);
    for i in 0..n {
        let payload = format!("{id:02}-{i:07}");
        assert_eq!(c.publish(Publish::new("small/t", payload.as_bytes(), 1)), 0);
    }
}

/// 20,000 QoS 1 messages of 10 bytes queued for an offline persistent session cost about
/// what they are, not a read buffer each.
#[test]
fn small_queued_payloads_do_not_pin_read_buffers() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 5_000;
    let broker = one_shard(
        &[
            ("FSYNC_POLICY", "none"),
            ("SESSION_QUEUE_MESSAGES_MAX", "100000"),
            ("SESSION_QUEUE_BYTES_MAX", "268435456"),
        ],
        Vec::new(),
    );
    let mut sub = Conn::connect(broker.mqtt, &Connect::v4("small-sub").clean(false)).0;
    sub.sub("small/t", 1);
    sub.disconnect(0);
    std::thread::sleep(Duration::from_millis(300));
    let before = broker.rss_bytes();
    let addr = broker.mqtt;
    let threads: Vec<_> = (0..PUBLISHERS)
        .map(|id| std::thread::spawn(move || small_publisher(addr, id, EACH)))
        .collect();
    for t in threads {
        t.join().expect("publisher");
    }
    let grown = broker.rss_bytes().saturating_sub(before);
    eprintln!(
        "RSS grew {} KiB for {} queued messages",
        grown >> 10,
        PUBLISHERS * EACH
    );
    // Each queued message costs a few hundred bytes of bookkeeping; a 16 KiB read buffer
    // each would be 320 MiB.
    assert!(
        grown < 48 << 20,
        "RSS grew {} MiB for {} small queued messages",
        grown >> 20,
        PUBLISHERS * EACH
    );
    let mut sub = Conn::connect(broker.mqtt, &Connect::v4("small-sub").clean(false)).0;
    let got = sub.expect_publishes(PUBLISHERS * EACH);
    assert!(got.iter().all(|p| p.payload.len() == 10));
}

/// Sends the start of a PUBLISH that announces 100 KiB, then one byte every `every`,
/// until the broker closes the connection or `limit` passes. Returns how long the
/// broker held it and the DISCONNECT reason it sent, if any.
fn trickle(conn: &mut Conn, every: Duration, limit: Duration) -> (Duration, Option<u8>) {
    let mut head = vec![0x32];
    put_var(&mut head, 100 << 10);
    conn.send(&head);
    let started = Instant::now();
    while started.elapsed() < limit {
        match conn.recv(every) {
            Recv::Closed => return (started.elapsed(), None),
            Recv::Packet(p) if p.kind == DISCONNECT => {
                let reason = disconnect_reason(&p);
                let _ = conn.expect_closed(WAIT);
                return (started.elapsed(), Some(reason));
            }
            Recv::Packet(_) | Recv::Timeout => {}
        }
        if !conn.try_send(b"x") {
            return (started.elapsed(), None);
        }
    }
    (started.elapsed(), None)
}

/// A partial packet trickled in a byte at a time is cut off after
/// `packet_read_timeout_ms`, with keep-alive 0 and with each byte inside the keep-alive.
#[test]
fn a_trickled_partial_packet_is_cut_off() {
    let broker = one_shard(&[("PACKET_READ_TIMEOUT_MS", "2000")], Vec::new());
    let addr = broker.mqtt;
    let slow = std::thread::spawn(move || {
        // Keep-alive 1 s: a byte every 0.7 s satisfies the per-read 1.5 s timer.
        let mut c = Conn::connect(addr, &Connect::v5("trickle-ka").keep_alive(1)).0;
        trickle(&mut c, Duration::from_millis(700), Duration::from_secs(10))
    });
    let mut c = Conn::connect(broker.mqtt, &Connect::v4("trickle-0").keep_alive(0)).0;
    let (held, _) = trickle(&mut c, Duration::from_millis(200), Duration::from_secs(10));
    assert!(held < Duration::from_secs(8), "keep-alive 0: held {held:?}");
    let (held, reason) = slow.join().unwrap();
    assert!(held < Duration::from_secs(8), "keep-alive 1: held {held:?}");
    assert_eq!(reason, Some(0x8D), "v5 is told why (Keep Alive timeout)");
    assert!(broker.limit_hits("packet_read_timeout_ms") >= 2.0);

    // A packet that arrives whole in time is not affected.
    let mut a = Conn::client(broker.mqtt, true, "trickle-a");
    a.sub("trickle/t", 0);
    let mut b = Conn::client(broker.mqtt, false, "trickle-b");
    b.pub0("trickle/t", b"whole");
    assert_eq!(a.expect_publish().payload, b"whole");
}

/// A client sends PINGREQs and QoS 2 publishes as fast as it can and never reads its
/// replies: the broker stops reading it instead of buffering every reply, its memory
/// stays bounded, and other clients keep working.
#[test]
fn a_client_that_never_reads_its_replies_is_paused() {
    const FLOOD_BYTES: u64 = 48 << 20;
    let broker = one_shard(
        &[
            ("CONNECTION_OUT_BYTES_MAX", "262144"),
            ("FSYNC_POLICY", "none"),
        ],
        Vec::new(),
    );
    let mut a = Conn::client(broker.mqtt, true, "deaf-a");
    a.sub("deaf/ok", 1);
    let mut b = Conn::client(broker.mqtt, false, "deaf-b");
    std::thread::sleep(Duration::from_millis(300));
    let before = broker.rss_bytes();

    let deaf = Conn::client(broker.mqtt, false, "deaf");
    let mut stream: TcpStream = deaf.stream.try_clone().unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let flood = {
        let (sent, blocked) = (Arc::clone(&sent), Arc::clone(&blocked));
        std::thread::spawn(move || {
            let pings: Vec<u8> = [0xC0u8, 0x00].repeat(32 << 10);
            let started = Instant::now();
            let mut pid = 0u16;
            while sent.load(Ordering::Relaxed) < FLOOD_BYTES
                && started.elapsed() < Duration::from_secs(40)
            {
                pid = pid % 1000 + 1;
                let q2 = Publish::new("deaf/q2", b"q2", 2).pid(pid).encode(false);
                let mut chunk = q2;
                chunk.extend_from_slice(&pings);
                if stream.write_all(&chunk).is_err() {
                    blocked.store(true, Ordering::Relaxed);
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    flood.join().unwrap();
    let grown = broker.rss_bytes().saturating_sub(before);
    eprintln!(
        "sent {} KiB without reading; RSS grew {} KiB; blocked: {}",
        sent.load(Ordering::Relaxed) >> 10,
        grown >> 10,
        blocked.load(Ordering::Relaxed)
    );
    assert!(
        blocked.load(Ordering::Relaxed),
        "the broker kept reading a client that never reads ({} KiB)",
        sent.load(Ordering::Relaxed) >> 10
    );
    assert!(grown < 16 << 20, "RSS grew {} MiB", grown >> 20);
    assert!(broker.limit_hits("connection_out_bytes_max") >= 1.0);

    // Everyone else is unaffected.
    assert_eq!(b.publish(Publish::new("deaf/ok", b"fine", 1)), 0);
    assert_eq!(a.expect_publish().payload, b"fine");
    drop(deaf);
}

/// Connects as alice with a wrong password; the CONNACK code.
fn wrong_password(addr: SocketAddr, v5: bool, id: &str) -> Option<u8> {
    let connect =
        if v5 { Connect::v5(id) } else { Connect::v4(id) }.login("alice", "not-her-password");
    let mut conn = Conn::open(addr, v5);
    if !conn.try_send(&connect.encode()) {
        return None;
    }
    match conn.recv(Duration::from_secs(30)) {
        Recv::Packet(p) if p.kind == CONNACK => Some(decode_connack(&p, v5).code),
        _ => None,
    }
}

/// A flood of wrong-password CONNECTs: password checks queue on their own bounded queue
/// (beyond it: Server busy), and a QoS 1 publisher whose log rolls segments all the time
/// keeps getting its acks.
///
/// Four flooders keep the two-check queue full (thousands of busy answers a second).
/// Sixteen, as this test once had, ran on the broker's own CPU in this process and took
/// most of it: acks then came 2–6 s late with or without the password checks, the WAL or
/// segment rolls in the way, which was the machine and not the broker (and failed the
/// 5 s limit of those days in about 1 run of 3). With four the worst ack is 8–22 ms here,
/// so a limit of 2 s still catches an ack held up behind password checks.
#[test]
fn a_flood_of_wrong_passwords_does_not_stall_acks() {
    const FLOODERS: usize = 4;
    let dir = temp_dir();
    let file = dir.path().join("auth.toml");
    let hash = hash_password("alice-password");
    std::fs::write(
        &file,
        format!(
            "allow_anonymous = true\n\n[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let broker = one_shard(
        &[("SEGMENT_BYTES", "1048576"), ("AUTH_HASH_QUEUE_MAX", "2")],
        vec!["--config".into(), file.to_str().unwrap().into()],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let codes: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let (stop, addr) = (Arc::clone(&stop), broker.mqtt);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    seen.push(wrong_password(addr, i % 2 == 0, &format!("flood-{i}-{n}")));
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let mut publ = Conn::client(broker.mqtt, true, "busy-pub");
    let payload = vec![7u8; 32 << 10];
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut acked = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        assert_eq!(publ.publish(Publish::new("busy/t", &payload, 1)), 0);
        worst = worst.max(t.elapsed());
        acked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let codes: Vec<Option<u8>> = codes.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let busy = codes
        .iter()
        .filter(|c| matches!(c, Some(0x89) | Some(3)))
        .count();
    let bad = codes
        .iter()
        .filter(|c| matches!(c, Some(0x86) | Some(4)))
        .count();
    eprintln!(
        "{acked} acks, worst {worst:?}; flood: {} CONNECTs, {busy} busy, {bad} bad password",
        codes.len()
    );
    assert!(
        worst < Duration::from_secs(2),
        "a QoS 1 ack took {worst:?} during the flood ({acked} acked)"
    );
    assert!(busy > 0, "some flooders are told Server busy");
    assert!(
        codes.contains(&Some(0x89)) && codes.contains(&Some(3)),
        "v5 is told 0x89 Server busy, 3.1.1 return code 3"
    );
    // Once the flood is over, passwords are checked again (the queue drained).
    let checked = (0..20).find_map(|i| {
        wrong_password(broker.mqtt, true, &format!("after-{i}"))
            .filter(|&c| c != 0x89)
            .or_else(|| {
                std::thread::sleep(Duration::from_millis(500));
                None
            })
    });
    assert_eq!(checked, Some(0x86), "a wrong password after the flood");
    assert!(broker.limit_hits("auth_hash_queue_max") >= busy as f64);
}

/// Connections that have talked and gone quiet hold no read or write buffer and little
/// else: 2,000 of them, each having sent a PINGREQ and read its PINGRESP, grow the
/// broker's memory by a few KB each, not the 12 KB one cost when every connection kept
/// its buffers and the largest state a packet's handling could need. They all still
/// answer afterwards, and a big publish read after the quiet arrives whole.
#[test]
fn idle_connections_hold_no_buffers() {
    const IDLE: usize = 2_000;
    // This test's (debug) build measured about 7 KB per connection; 16 KB before idle
    // connections let their buffers go.
    const PER_CONNECTION_MAX: u64 = 10 << 10;
    // This process holds the client ends: the broker's own limit lets it raise the soft
    // one to the hard one here too.
    let room = shardmq::runtime::raise_nofile_limit();
    assert!(
        room >= IDLE as u64 + 100,
        "RLIMIT_NOFILE leaves room for {room} connections; {IDLE} needed"
    );
    let broker = one_shard(&[("FSYNC_POLICY", "none")], Vec::new());
    let mut sub = Conn::client(broker.mqtt, true, "idle-sub");
    sub.sub("idle/big", 1);
    let mut publisher = Conn::client(broker.mqtt, false, "idle-pub");
    std::thread::sleep(Duration::from_millis(300));
    let before = broker.rss_bytes();
    let mut idle: Vec<Conn> = (0..IDLE)
        .map(|i| {
            let mut c = Conn::client(broker.mqtt, i % 2 == 0, &format!("idle-{i}"));
            c.ping();
            c.expect_kind(PINGRESP);
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let per = broker.rss_bytes().saturating_sub(before) / IDLE as u64;
    eprintln!("broker RSS per idle connection: {per} B");
    assert!(
        per < PER_CONNECTION_MAX,
        "{per} B of broker memory per idle connection"
    );
    for c in idle.iter_mut() {
        c.ping();
    }
    for c in idle.iter_mut() {
        c.expect_kind(PINGRESP);
    }
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(publisher.publish(Publish::new("idle/big", &big, 1)), 0);
    assert_eq!(sub.expect_publish().payload, big);
}
