//! `shardmq-bench`: a broker-neutral MQTT 3.1.1/5.0 load generator.
//!
//! What it measures: publishers send stamped messages (send time, publisher, sequence in the
//! first 16 payload bytes) to `bench/<i % topics>`; subscribers measure end-to-end latency
//! and check every publisher's sequence for loss, duplicates and reordering. Connection
//! storm mode (`--connections-only N`) measures connects/s and CONNECT→CONNACK latency.
//! Flood mode (`--flood N`) opens and closes N connections in a burst, then holds N idle,
//! while a probe client times connect + subscribe + publish + receive round trips and the
//! broker's RSS is sampled (`--broker-pid`). Kafka mode (`--kafka-topic T`) measures a
//! Kafka broker instead: produce throughput and produce → fetch latency of one partition.
//!
//! How to read it: rates count messages *sent* inside the measured window (after
//! `--warmup-secs`, until the publishers stop); "delivered" counts deliveries of those
//! messages, so a broker that drops or queues shows a gap between the two; "arrived" counts
//! every delivery received inside the window whenever it was sent, which is the broker's
//! delivery throughput even while it works through seconds of queue, and CPU per delivery
//! divides by it. "lost" compares
//! every sequence sent (warm-up included) with the distinct sequences each subscription got,
//! after a drain of up to 5 s. At QoS 0 losses are allowed by the protocol. CPU µs per
//! delivery is the generator's own cost (and the broker's with `--broker-pid`): on a small
//! machine both share the cores, so read msgs/s next to broker CPU per delivery.
//!
//! Design: `--threads` OS threads, each driving its share of connections from one `ppoll`
//! loop over non-blocking sockets with batched writes and reused buffers (see `driver`).

mod config;
mod conn;
mod driver;
mod flood;
mod kafka;
mod relay;
mod report;
mod stats;
mod storm;
mod sys;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use config::{Args, Params, Stop};
use driver::{Assignment, Shared};
use report::CpuSample;
use stats::{now_ns, ThreadStats};

/// Longest wait, after the publishers stop, for deliveries still on their way.
const DRAIN_MS_MAX: u64 = 5_000;
/// Deliveries must stay unchanged this long for the drain to end early.
const DRAIN_QUIET_MS: u64 = 300;
/// Progress line period.
const PROGRESS_MS: u64 = 1_000;

fn main() -> ExitCode {
    let params = match Params::load(Args::parse()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("shardmq-bench: {e}");
            return ExitCode::from(2);
        }
    };
    stats::epoch();
    sys::raise_nofile_limit();
    if let Some(addr) = params.relay {
        return match relay::run(&params, addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardmq-bench: relay on {addr}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(topic) = params.kafka_topic.clone() {
        return match kafka::run(&params, &topic) {
            Ok(r) => {
                emit(&params, &r, || kafka::print_text(&params, &topic, &r));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shardmq-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match (params.flood, params.connections_only) {
        (Some(n), _) => flood::run(Arc::clone(&params), n).map(|r| {
            emit(&params, &r, || flood::print_text(&r));
        }),
        (None, Some(n)) => {
            let r = storm::run(Arc::clone(&params), n);
            emit(&params, &r, || storm::print_text(&r));
            Ok(())
        }
        (None, None) => {
            run_pubsub(&params).map(|r| emit(&params, &r, || report::print_text(&params, &r)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardmq-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the result as text, or as one JSON object with hardware and parameters.
fn emit<R: serde::Serialize>(p: &Params, result: &R, text: impl FnOnce()) {
    if !p.json {
        text();
        return;
    }
    let out = json!({
        "tool": "shardmq-bench",
        "date": sys::utc_now(),
        "hardware": { "nproc": sys::nproc(), "cpu_model": sys::cpu_model(), "kernel": sys::kernel() },
        "params": p,
        "result": result,
    });
    println!("{out}");
}

fn run_pubsub(p: &Arc<Params>) -> Result<report::Report, String> {
    let stuck = open_stuck(p)?;
    let shared = Arc::new(Shared::new(p.threads));
    let handles: Vec<_> = assign(p)
        .into_iter()
        .enumerate()
        .map(|(t, work)| {
            let (p, shared) = (Arc::clone(p), Arc::clone(&shared));
            let cpu = (!p.cpus.is_empty()).then(|| p.cpus[t % p.cpus.len()]);
            std::thread::spawn(move || driver::run(p, shared, work, cpu))
        })
        .collect();
    shared.barrier.wait();
    let start_ns = now_ns();
    shared.start_ns.store(start_ns, Ordering::SeqCst);
    if shared.failed.load(Ordering::SeqCst) {
        shared.stop.store(true, Ordering::SeqCst);
    }
    shared.barrier.wait();
    let (cpu, end_ns) = if shared.failed.load(Ordering::SeqCst) {
        let s = sample(p);
        ((s, s), start_ns)
    } else {
        supervise(p, &shared, start_ns)
    };
    shared.stop.store(true, Ordering::SeqCst);
    let mut threads: Vec<ThreadStats> = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(stats)) => threads.push(stats),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("a generator thread panicked".into()),
        }
    }
    drop(stuck);
    let warm_end_ns = start_ns + p.warmup_secs * 1_000_000_000;
    let window_secs = end_ns.saturating_sub(warm_end_ns) as f64 / 1e9;
    Ok(report::build(p, threads, window_secs, cpu))
}

/// Connects the `--stuck-subscribers`: each subscribes to a topic (in turn) and is
/// never read again until the run ends.
fn open_stuck(p: &Params) -> Result<Vec<conn::Session>, String> {
    let pid = std::process::id();
    (0..p.stuck_subscribers)
        .map(|k| {
            let mut s = conn::connect(p, &format!("bench-{pid}-stuck{k}"), 0)
                .map_err(|e| format!("stuck subscriber {k}: {e}"))?;
            conn::subscribe(&mut s, p.protocol, &p.filter_of(k), p.qos_level)
                .map_err(|e| format!("stuck subscriber {k}: {e}"))?;
            Ok(s)
        })
        .collect()
}

/// Spreads publishers and subscribers round-robin over the threads.
fn assign(p: &Params) -> Vec<Assignment> {
    let mut work = vec![Assignment::default(); p.threads];
    for j in 0..p.subscribers {
        work[j % p.threads].subscribers.push(j);
    }
    for i in 0..p.publishers {
        work[(p.subscribers + i) % p.threads].publishers.push(i);
    }
    work
}

fn sample(p: &Params) -> CpuSample {
    CpuSample {
        generator_secs: sys::self_cpu_secs(),
        broker_secs: p.broker_pid.and_then(sys::process_cpu_secs),
    }
}

/// Prints progress, samples CPU at the window's edges, waits for the drain. Returns the CPU
/// samples and the window's end, ns since the epoch.
fn supervise(p: &Params, shared: &Shared, start_ns: u64) -> ((CpuSample, CpuSample), u64) {
    let warm_end_ns = start_ns + p.warmup_secs * 1_000_000_000;
    let publish_end_ns = match p.stop {
        Stop::DurationSecs(d) => Some(warm_end_ns + d * 1_000_000_000),
        Stop::Count(_) => None,
    };
    let (mut first, mut last_progress_ns) = (None, start_ns);
    let (mut last_pub, mut last_del) = (0u64, 0u64);
    let tick = Duration::from_millis(10);
    loop {
        let now = now_ns();
        if first.is_none() && now >= warm_end_ns {
            first = Some(sample(p));
        }
        if now - last_progress_ns >= PROGRESS_MS * 1_000_000 {
            let (pb, dl) = (
                shared.published.load(Ordering::Relaxed),
                shared.delivered.load(Ordering::Relaxed),
            );
            let secs = (now - last_progress_ns) as f64 / 1e9;
            eprintln!(
                "[{:>5.1} s] published {:>10.0}/s delivered {:>10.0}/s (total {pb} / {dl})",
                (now - start_ns) as f64 / 1e9,
                (pb - last_pub) as f64 / secs,
                (dl - last_del) as f64 / secs,
            );
            (last_pub, last_del, last_progress_ns) = (pb, dl, now);
        }
        if shared.failed.load(Ordering::SeqCst) {
            break;
        }
        let all_done = shared.publishers_done.load(Ordering::SeqCst) >= p.publishers;
        let time_up = publish_end_ns.is_some_and(|end| now >= end + DRAIN_MS_MAX * 1_000_000);
        let subscribers_only = p.publishers == 0 && publish_end_ns.is_some_and(|end| now >= end);
        if first.is_some() && (all_done || time_up || subscribers_only) {
            break;
        }
        std::thread::sleep(tick);
    }
    let second = sample(p);
    let end_ns = publish_end_ns
        .unwrap_or_else(|| shared.last_send_ns.load(Ordering::SeqCst))
        .min(now_ns());
    drain(shared);
    let first = first.unwrap_or(second);
    ((first, second), end_ns)
}

/// Waits until deliveries stop arriving, at most [`DRAIN_MS_MAX`].
fn drain(shared: &Shared) {
    let deadline = now_ns() + DRAIN_MS_MAX * 1_000_000;
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut quiet_since = now_ns();
    while now_ns() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let d = shared.delivered.load(Ordering::Relaxed);
        if d != last {
            (last, quiet_since) = (d, now_ns());
        } else if now_ns() - quiet_since >= DRAIN_QUIET_MS * 1_000_000 {
            return;
        }
    }
}
