//! Connection storm: open N connections as fast as the threads can (each thread connects its
//! share one after another), measure TCP connect + CONNECT→CONNACK latency, hold them, close.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use shardmq::mqtt::{self, Disconnect, Packet, ReasonCode};

use crate::config::Params;
use crate::conn::{self, Session};
use crate::report::Latency;
use crate::stats::{now_ns, ThreadStats};

/// The result of a storm.
#[derive(Debug, Serialize)]
pub struct StormReport {
    pub connections: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub elapsed_secs: f64,
    pub connects_per_sec: f64,
    pub connect_latency: Latency,
    pub hold_secs: u64,
}

struct ThreadResult {
    stats: ThreadStats,
    sessions: Vec<Session>,
    failed: usize,
    first_error: Option<String>,
}

/// Runs the storm and returns its report; connections are closed before it returns.
pub fn run(p: Arc<Params>, connections: usize) -> StormReport {
    let start_ns = now_ns();
    let handles: Vec<_> = (0..p.threads)
        .map(|t| {
            let p = Arc::clone(&p);
            let cpu = (!p.cpus.is_empty()).then(|| p.cpus[t % p.cpus.len()]);
            std::thread::spawn(move || open_share(&p, t, connections, cpu))
        })
        .collect();
    let results: Vec<ThreadResult> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    let elapsed_secs = (now_ns() - start_ns) as f64 / 1e9;
    let mut latency = ThreadStats::new().latency_us;
    let (mut failed, mut first_error, mut sessions) = (0, None, Vec::new());
    for r in results {
        let _ = latency.add(&r.stats.latency_us);
        failed += r.failed;
        first_error = first_error.or(r.first_error);
        sessions.extend(r.sessions);
    }
    let connected = sessions.len();
    eprintln!(
        "shardmq-bench: {connected} connected, {failed} failed; holding {} s",
        p.hold_secs
    );
    std::thread::sleep(Duration::from_secs(p.hold_secs));
    close_all(&p, sessions);
    StormReport {
        connections,
        connected,
        failed,
        first_error,
        elapsed_secs,
        connects_per_sec: if elapsed_secs > 0.0 {
            connected as f64 / elapsed_secs
        } else {
            0.0
        },
        connect_latency: Latency::of(&latency),
        hold_secs: p.hold_secs,
    }
}

fn open_share(p: &Params, thread: usize, connections: usize, cpu: Option<usize>) -> ThreadResult {
    if let Some(cpu) = cpu {
        crate::sys::pin_to_cpu(cpu);
    }
    let keep_alive = crate::driver::keep_alive_secs(p);
    let pid = std::process::id();
    let mut r = ThreadResult {
        stats: ThreadStats::new(),
        sessions: Vec::new(),
        failed: 0,
        first_error: None,
    };
    for k in (thread..connections).step_by(p.threads) {
        let t0 = now_ns();
        match conn::connect(p, &format!("bench-{pid}-c{k}"), keep_alive) {
            Ok(s) => {
                r.stats.record_latency_ns(now_ns() - t0);
                r.sessions.push(s);
            }
            Err(e) => {
                r.failed += 1;
                r.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    r
}

fn close_all(p: &Params, sessions: Vec<Session>) {
    let mut out = BytesMut::new();
    let disconnect = Packet::Disconnect(Disconnect::new(ReasonCode::Success));
    if mqtt::encode(&disconnect, p.protocol, &mut out).is_err() {
        return;
    }
    for mut s in sessions {
        let _ = s.stream.write_all(&out);
    }
}

/// Prints the human-readable summary.
pub fn print_text(r: &StormReport) {
    println!(
        "shardmq-bench storm: {} of {} connected ({} failed) in {:.2} s = {:.0} connects/s",
        r.connected, r.connections, r.failed, r.elapsed_secs, r.connects_per_sec
    );
    let l = &r.connect_latency;
    println!(
        "  connect latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}
