//! Connection flood: N connections opened and closed in a burst (each closed as soon as
//! it is accepted: a reconnect storm), then M (`--flood-hold`, default N) opened and
//! held idle, while a probe client keeps timing a full round trip (connect, subscribe,
//! QoS 1 publish to itself, receive, disconnect). Reports the probe's latency in each phase,
//! and with `--broker-pid` the broker's RSS before and after the idle connections, hence
//! the broker's memory per idle connection, and its CPU while they are held.
//!
//! The held connections open at `--flood-rate` per second (default: as fast as accepted),
//! from `--source-ips` loopback addresses, with keep-alive `--flood-keep-alive-secs` (each
//! then sends a PINGREQ every half of it while held) and, with `--flood-subscribe`, one
//! QoS 1 subscription each.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use shardmq::mqtt::{self, ByteStr, Disconnect, Packet, PacketId, Publish, QoS, ReasonCode};

use crate::config::Params;
use crate::conn::{self, BenchError, Session};
use crate::report::Latency;
use crate::stats::now_ns;
use crate::sys;

/// Which phase the probe is measuring.
const PHASES: [&str; 3] = ["burst", "hold", "idle"];
/// Longest probe round trip recorded, µs (a minute).
const PROBE_US_MAX: u64 = 60_000_000;
/// How long the first half of the idle connections is left before the half-way RSS is
/// taken: past the broker's default `idle_park_ms` (2 s), so they are parked as at the end.
const SETTLE: Duration = Duration::from_secs(4);

/// The result of a flood.
#[derive(Debug, Serialize)]
pub struct FloodReport {
    /// Connections in the burst.
    pub connections: usize,
    /// Connections to hold idle.
    pub hold_target: usize,
    /// Burst: connections opened (CONNACK received) and closed.
    pub burst_connected: usize,
    pub burst_failed: usize,
    pub burst_secs: f64,
    /// Hold: connections opened and then held idle.
    pub held: usize,
    pub hold_failed: usize,
    pub hold_open_secs: f64,
    /// Held connections accepted (CONNACK, and SUBACK with `--flood-subscribe`) per second
    /// while they were opened.
    pub hold_accepts_per_sec: f64,
    /// Keep-alive of the held connections, seconds (0: no pings).
    pub keep_alive_secs: u16,
    /// PINGREQs answered and not answered while held.
    pub pings: u64,
    pub pings_failed: u64,
    /// Whether each held connection had a subscription.
    pub subscribed: bool,
    /// Broker CPU while every held connection was open, in % of one CPU.
    pub broker_cpu_percent_held: Option<f64>,
    pub first_error: Option<String>,
    /// Broker RSS before the flood (bytes).
    pub broker_rss_start_bytes: Option<u64>,
    /// Broker RSS after the burst, before the idle connections (bytes). Memory the
    /// burst touched stays with the allocator, so this is no baseline for the idle ones.
    pub broker_rss_after_burst_bytes: Option<u64>,
    /// Broker RSS with every idle connection open, at the end of the hold (bytes).
    pub broker_rss_held_bytes: Option<u64>,
    /// Broker RSS after the idle connections closed (bytes).
    pub broker_rss_after_bytes: Option<u64>,
    /// (held RSS - start RSS) / held: what each idle connection costs with the broker's
    /// fixed memory that the first connections touch (mesh rings, allocator pages of
    /// each shard) spread over them.
    pub broker_bytes_per_idle_connection: Option<u64>,
    /// Idle connections open and settled when the half-way RSS was taken (0: all opened
    /// at once, with a keep-alive under 12 s that the settling would outlast).
    pub held_half: usize,
    /// Broker RSS with the first half of the idle connections open and settled (bytes).
    pub broker_rss_half_bytes: Option<u64>,
    /// (held RSS - half-way RSS) / (held - held_half): what one more idle connection
    /// costs once the broker's fixed memory is touched; the slope a million connections
    /// follow.
    pub broker_marginal_bytes_per_idle_connection: Option<u64>,
    /// Probe round trips per phase (`burst`, `hold` = opening the idle connections and
    /// holding them, `idle` = after they closed).
    pub probe: Vec<ProbePhase>,
}

/// The probe's view of one phase.
#[derive(Debug, Serialize)]
pub struct ProbePhase {
    pub phase: &'static str,
    pub round_trips: Latency,
    pub failures: u64,
    pub first_error: Option<String>,
}

struct ProbeState {
    phase: AtomicUsize,
    stop: AtomicBool,
    phases: Mutex<Vec<PhaseStats>>,
}

/// What the probe saw in one phase.
struct PhaseStats {
    latency_us: Histogram<u64>,
    failures: u64,
    first_error: Option<String>,
}

/// Runs the flood; every connection is closed before it returns.
pub fn run(p: Arc<Params>, connections: usize) -> Result<FloodReport, String> {
    let probe = Arc::new(ProbeState {
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        phases: Mutex::new(
            PHASES
                .iter()
                .map(|_| PhaseStats {
                    latency_us: Histogram::new_with_bounds(1, PROBE_US_MAX, 3)
                        .expect("constant histogram bounds are valid"),
                    failures: 0,
                    first_error: None,
                })
                .collect(),
        ),
    });
    let prober = {
        let (p, probe) = (Arc::clone(&p), Arc::clone(&probe));
        std::thread::spawn(move || run_probe(&p, &probe))
    };
    let rss = || p.broker_pid.and_then(sys::rss_bytes);
    let rss_start = rss();

    let started = Instant::now();
    let burst = open_all(&p, 0..connections, "burst", 0, Keep::No);
    let burst_secs = started.elapsed().as_secs_f64();
    let burst_connected = burst.connected;
    eprintln!(
        "shardmq-bench flood: burst {burst_connected} connected and closed in {burst_secs:.2} s"
    );
    // Let the broker finish closing the burst before measuring its baseline.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_burst = rss();

    probe.phase.store(1, Ordering::SeqCst);
    // The idle connections open in two halves with the RSS taken after each has settled
    // (parked), so the report gives the slope beside the average. Pings start with the
    // hold, so the first half waits unpinged: only a keep-alive far longer than the
    // settling (or none) allows it; with a shorter one all open at once.
    let hold_target = p.flood_hold.unwrap_or(connections);
    let keep_alive = Duration::from_secs(p.flood_keep_alive_secs.into());
    let half = if keep_alive.is_zero() || keep_alive >= 3 * SETTLE {
        hold_target / 2
    } else {
        0
    };
    let started = Instant::now();
    let mut hold = open_all(&p, 0..half, "idle", connections, Keep::Yes);
    let mut hold_open_secs = started.elapsed().as_secs_f64();
    let held_half = hold.sessions.len();
    let rss_half = if held_half > 0 {
        std::thread::sleep(SETTLE);
        rss()
    } else {
        None
    };
    let started = Instant::now();
    hold.absorb(open_all(
        &p,
        half..hold_target,
        "idle",
        connections,
        Keep::Yes,
    ));
    hold_open_secs += started.elapsed().as_secs_f64();
    let held = hold.sessions.len();
    eprintln!(
        "shardmq-bench flood: {held} idle connections open in {hold_open_secs:.2} s; holding {} s",
        p.hold_secs
    );
    let cpu_start = p.broker_pid.and_then(sys::process_cpu_secs);
    let mut sessions = hold.sessions;
    let (pings, pings_failed) = hold_for(&p, &mut sessions, Duration::from_secs(p.hold_secs));
    let cpu_held = match (cpu_start, p.broker_pid.and_then(sys::process_cpu_secs)) {
        (Some(a), Some(b)) if p.hold_secs > 0 => Some((b - a) * 100.0 / p.hold_secs as f64),
        _ => None,
    };
    let rss_held = rss();
    close_all(&p, sessions);
    probe.phase.store(2, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss();
    probe.stop.store(true, Ordering::SeqCst);
    prober
        .join()
        .map_err(|_| "the probe thread panicked".to_string())?;

    let phases = probe.phases.lock().expect("probe lock");
    let per_idle = match (rss_start, rss_held) {
        (Some(b), Some(h)) if held > 0 => Some(h.saturating_sub(b) / held as u64),
        _ => None,
    };
    let marginal = match (rss_half, rss_held) {
        (Some(m), Some(h)) if held > held_half => {
            Some(h.saturating_sub(m) / (held - held_half) as u64)
        }
        _ => None,
    };
    Ok(FloodReport {
        connections,
        hold_target,
        burst_connected,
        burst_failed: burst.failed,
        burst_secs,
        held,
        hold_failed: hold.failed,
        hold_open_secs,
        hold_accepts_per_sec: if hold_open_secs > 0.0 {
            held as f64 / hold_open_secs
        } else {
            0.0
        },
        keep_alive_secs: p.flood_keep_alive_secs,
        pings,
        pings_failed,
        subscribed: p.flood_subscribe,
        broker_cpu_percent_held: cpu_held,
        first_error: burst.first_error.or(hold.first_error),
        broker_rss_start_bytes: rss_start,
        broker_rss_after_burst_bytes: rss_after_burst,
        broker_rss_held_bytes: rss_held,
        broker_rss_after_bytes: rss_after,
        broker_bytes_per_idle_connection: per_idle,
        held_half,
        broker_rss_half_bytes: rss_half,
        broker_marginal_bytes_per_idle_connection: marginal,
        probe: PHASES
            .iter()
            .zip(phases.iter())
            .map(|(phase, s)| ProbePhase {
                phase,
                round_trips: Latency::of(&s.latency_us),
                failures: s.failures,
                first_error: s.first_error.clone(),
            })
            .collect(),
    })
}

struct Opened {
    sessions: Vec<Session>,
    connected: usize,
    failed: usize,
    first_error: Option<String>,
}

/// Whether opened connections are kept (held idle) or closed at once (a reconnect storm).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Yes,
    No,
}

/// Opens connections `ks` over the generator threads, at `flood_rate` from the first;
/// connection k of the run uses source address `source_of(offset + k)`. With
/// `Keep::No` each one is closed (DISCONNECT) as soon as its CONNACK arrives.
fn open_all(
    p: &Arc<Params>,
    ks: std::ops::Range<usize>,
    name: &str,
    offset: usize,
    keep: Keep,
) -> Opened {
    let handles: Vec<_> = (0..p.threads)
        .map(|t| {
            let p = Arc::clone(p);
            // The run's tag at a fixed width: the ids (and the topics built from them) are
            // as long in every run, so what the broker keeps per connection does not move
            // with the generator's process id.
            let name = format!("flood-{:05}-{name}", std::process::id() % 100_000);
            let ks = ks.clone();
            std::thread::spawn(move || {
                let mut opened = Opened {
                    sessions: Vec::new(),
                    connected: 0,
                    failed: 0,
                    first_error: None,
                };
                let started = Instant::now();
                for k in (ks.start + t..ks.end).step_by(p.threads) {
                    if keep == Keep::Yes && p.flood_rate > 0 {
                        let nth = k - ks.start;
                        let due = Duration::from_secs_f64(nth as f64 / p.flood_rate as f64);
                        std::thread::sleep(due.saturating_sub(started.elapsed()));
                    }
                    let source = p.source_of(offset + k);
                    let client_id = format!("{name}-{k}");
                    match open_one(&p, &client_id, source, keep) {
                        Ok(s) => {
                            opened.connected += 1;
                            match keep {
                                Keep::Yes => opened.sessions.push(s),
                                Keep::No => close_all(&p, vec![s]),
                            }
                        }
                        Err(e) => {
                            opened.failed += 1;
                            opened.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                opened
            })
        })
        .collect();
    let mut all = Opened {
        sessions: Vec::with_capacity(ks.len()),
        connected: 0,
        failed: 0,
        first_error: None,
    };
    for h in handles {
        if let Ok(o) = h.join() {
            all.absorb(o);
        }
    }
    all
}

impl Opened {
    fn absorb(&mut self, o: Opened) {
        self.sessions.extend(o.sessions);
        self.connected += o.connected;
        self.failed += o.failed;
        self.first_error = self.first_error.take().or(o.first_error);
    }
}

/// Opens one connection; a held one gets the flood's keep-alive and, if asked, its own
/// subscription.
fn open_one(
    p: &Params,
    client_id: &str,
    source: Option<std::net::IpAddr>,
    keep: Keep,
) -> Result<Session, BenchError> {
    if keep == Keep::No {
        return conn::connect_from(p, client_id, 0, source);
    }
    let mut s = conn::connect_from(p, client_id, p.flood_keep_alive_secs, source)?;
    if p.flood_subscribe {
        let topic = format!("flood/idle/{client_id}");
        conn::subscribe(&mut s, p.protocol, &topic, QoS::AtLeastOnce)?;
    }
    Ok(s)
}

/// Holds the connections open for `hold`; with a keep-alive, pings each one every half
/// of it and reads the answer. Returns (pings answered, pings not answered).
fn hold_for(p: &Params, sessions: &mut [Session], hold: Duration) -> (u64, u64) {
    let started = Instant::now();
    if p.flood_keep_alive_secs == 0 {
        std::thread::sleep(hold);
        return (0, 0);
    }
    let every = Duration::from_millis(u64::from(p.flood_keep_alive_secs) * 500);
    let mut ping = BytesMut::new();
    let _ = mqtt::encode(&Packet::PingReq, p.protocol, &mut ping);
    let (mut answered, mut failed) = (0, 0);
    let mut round = 1u32;
    loop {
        let due = every * round;
        if due >= hold {
            break;
        }
        std::thread::sleep(due.saturating_sub(started.elapsed()));
        for s in sessions.iter_mut() {
            let _ = s.stream.write_all(&ping);
        }
        for s in sessions.iter_mut() {
            match conn::read_packet(&mut s.stream, &mut s.rbuf, p.protocol) {
                Ok(Packet::PingResp) => answered += 1,
                _ => failed += 1,
            }
        }
        round += 1;
    }
    std::thread::sleep(hold.saturating_sub(started.elapsed()));
    (answered, failed)
}

fn close_all(p: &Params, sessions: Vec<Session>) {
    let mut out = BytesMut::new();
    let disconnect = Packet::Disconnect(Disconnect::new(ReasonCode::Success));
    let _ = mqtt::encode(&disconnect, p.protocol, &mut out);
    for mut s in sessions {
        let _ = s.stream.write_all(&out);
    }
}

fn run_probe(p: &Params, probe: &ProbeState) {
    let mut n = 0u64;
    while !probe.stop.load(Ordering::SeqCst) {
        let phase = probe.phase.load(Ordering::SeqCst);
        let t0 = now_ns();
        let result = probe_once(p, n);
        let us = ((now_ns() - t0) / 1_000).max(1);
        {
            let mut phases = probe.phases.lock().expect("probe lock");
            let s = &mut phases[phase];
            match result {
                Ok(()) => s.latency_us.saturating_record(us),
                Err(e) => {
                    s.failures += 1;
                    s.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(p.probe_interval_ms));
    }
}

/// One round trip: connect, subscribe to its own topic, publish QoS 1, receive it back.
fn probe_once(p: &Params, n: u64) -> Result<(), BenchError> {
    let client_id = format!("flood-probe-{}-{n}", std::process::id());
    let topic = format!("flood/probe/{n}");
    let mut s = conn::connect(p, &client_id, 0)?;
    conn::subscribe(&mut s, p.protocol, &topic, QoS::AtLeastOnce)?;
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteStr::from(topic.clone()),
        packet_id: PacketId::new(7),
        properties: Default::default(),
        payload: Bytes::from_static(b"probe"),
    };
    let mut out = BytesMut::new();
    mqtt::encode(&Packet::Publish(publish), p.protocol, &mut out)?;
    s.stream.write_all(&out)?;
    // PUBACK and the delivery arrive in either order.
    let (mut acked, mut received) = (false, false);
    while !(acked && received) {
        match conn::read_packet(&mut s.stream, &mut s.rbuf, p.protocol)? {
            Packet::PubAck(_) => acked = true,
            Packet::Publish(got) if got.topic.as_str() == topic => {
                received = true;
                if let Some(pid) = got.packet_id {
                    let ack = Packet::PubAck(mqtt::Ack::new(pid));
                    out.clear();
                    mqtt::encode(&ack, p.protocol, &mut out)?;
                    s.stream.write_all(&out)?;
                }
            }
            _ => {}
        }
    }
    close_all(p, vec![s]);
    Ok(())
}

/// Prints the human-readable summary.
pub fn print_text(r: &FloodReport) {
    println!(
        "shardmq-bench flood: burst {} of {} in {:.2} s ({} failed); held {} idle ({} failed, opened in {:.2} s)",
        r.burst_connected, r.connections, r.burst_secs, r.burst_failed, r.held, r.hold_failed, r.hold_open_secs
    );
    if let (Some(s), Some(b), Some(h), Some(a)) = (
        r.broker_rss_start_bytes,
        r.broker_rss_after_burst_bytes,
        r.broker_rss_held_bytes,
        r.broker_rss_after_bytes,
    ) {
        println!(
            "  broker RSS start {} KiB, after burst {} KiB, held {} KiB, after {} KiB: \
             {} bytes per idle connection; {} bytes for each of the second {}",
            s >> 10,
            b >> 10,
            h >> 10,
            a >> 10,
            r.broker_bytes_per_idle_connection.unwrap_or(0),
            r.broker_marginal_bytes_per_idle_connection.unwrap_or(0),
            r.held - r.held_half,
        );
    }
    println!(
        "  held connections accepted at {:.0}/s; keep-alive {} s, {} pings answered, {} not; \
         subscribed: {}; broker CPU while held: {}",
        r.hold_accepts_per_sec,
        r.keep_alive_secs,
        r.pings,
        r.pings_failed,
        r.subscribed,
        r.broker_cpu_percent_held
            .map_or("-".to_string(), |c| format!("{c:.2} % of a CPU"))
    );
    for phase in &r.probe {
        let l = &phase.round_trips;
        println!(
            "  probe during {:<5}: {} round trips, µs p50 {} p99 {} max {}; {} failed",
            phase.phase, l.samples, l.p50_us, l.p99_us, l.max_us, phase.failures
        );
    }
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}
