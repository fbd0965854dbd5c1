//! Connection flood against the real broker, through `shardmq-bench --flood`: 1,000
//! connections opened and closed in a burst, then 1,000 held idle; a probe client's
//! connect + subscribe + publish + receive round trips keep succeeding throughout, and
//! the broker's memory per idle connection stays small.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONNECTIONS: usize = 1_000;
/// A round trip of the probe may take this long at most, even mid-burst. Loose: the
/// broker, 2 flood threads and the probe share two cores.
const PROBE_MAX: Duration = Duration::from_secs(3);
/// Broker memory per idle connection that the test tolerates (measured: see PERF.md).
const IDLE_CONNECTION_BYTES_MAX: u64 = 64 << 10;

/// Starts `shardmq-bench` against `broker` with `args` (a flood mode), a JSON report and
/// the broker's pid for its memory and CPU figures.
fn spawn_flood(broker: &Broker, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_shardmq-bench"))
        .args(["--host", "127.0.0.1", "--port"])
        .arg(broker.mqtt.port().to_string())
        .args(args)
        .args(["--threads", "2", "--json", "--broker-pid"])
        .arg(broker.child.id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shardmq-bench")
}

/// Waits for the bench, asserts it succeeded and returns its report's `result`.
fn flood_result(broker: &Broker, bench: std::process::Child) -> serde_json::Value {
    let out = bench.wait_with_output().expect("bench output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {stderr}\n{}",
        broker.log()
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON object");
    report["result"].clone()
}

#[test]
fn a_connection_flood_leaves_the_broker_responsive() {
    let broker = Broker::start();
    let started = Instant::now();
    let connections = CONNECTIONS.to_string();
    let bench = spawn_flood(
        &broker,
        &[
            "--flood",
            &connections,
            "--hold-secs",
            "3",
            "--source-ips",
            "4",
        ],
    );
    // While the idle connections are held, the broker counts them.
    assert!(
        eventually(Duration::from_secs(60), || broker
            .metric_sum("shardmq_connections_current")
            >= CONNECTIONS as f64),
        "the idle connections never all arrived\n{}",
        broker.log()
    );
    let r = &flood_result(&broker, bench);
    eprintln!("{r:#}");
    assert_eq!(
        r["burst_connected"].as_u64(),
        Some(CONNECTIONS as u64),
        "{r}"
    );
    assert_eq!(r["held"].as_u64(), Some(CONNECTIONS as u64), "{r}");
    for phase in r["probe"].as_array().expect("probe phases") {
        assert_eq!(phase["failures"].as_u64(), Some(0), "{phase}");
        let max_us = phase["round_trips"]["max_us"].as_u64().unwrap();
        assert!(
            max_us < PROBE_MAX.as_micros() as u64,
            "probe round trip took {max_us} µs: {phase}"
        );
    }
    let hold = &r["probe"][1]["round_trips"];
    assert!(
        hold["samples"].as_u64().unwrap() > 0,
        "probed while held: {r}"
    );
    let per_idle = r["broker_bytes_per_idle_connection"].as_u64().unwrap();
    assert!(
        per_idle < IDLE_CONNECTION_BYTES_MAX,
        "{per_idle} bytes per idle connection"
    );
    // Every connection is gone again, and the broker serves.
    assert!(eventually(WAIT_CLOSED, || broker
        .metric_sum("shardmq_connections_current")
        == 0.0));
    assert!(started.elapsed() < Duration::from_secs(90));
    let (status, _) = broker.http_get("/health");
    assert_eq!(status, 200);
}

const WAIT_CLOSED: Duration = Duration::from_secs(10);

/// Held connections opened at a set rate, each with a subscription and a 2 s keep-alive:
/// the broker holds a subscription for each and answers every PINGREQ of every one of
/// them while they are held, and the report says how fast they were accepted.
#[test]
fn held_connections_at_a_set_rate_are_pinged_and_subscribed() {
    const HELD: usize = 200;
    const RATE: usize = 400;
    let broker = Broker::start();
    let (held, rate) = (HELD.to_string(), RATE.to_string());
    let bench = spawn_flood(
        &broker,
        &[
            "--flood",
            "0",
            "--flood-hold",
            &held,
            "--flood-rate",
            &rate,
            "--flood-subscribe",
            "--flood-keep-alive-secs",
            "2",
            "--hold-secs",
            "5",
            "--source-ips",
            "2",
        ],
    );
    // While they are held, the broker has a subscription for each.
    assert!(
        eventually(Duration::from_secs(15), || broker
            .metric_sum("shardmq_subscriptions_current")
            >= HELD as f64),
        "the held connections' subscriptions never all arrived\n{}",
        broker.log()
    );
    let r = &flood_result(&broker, bench);
    assert_eq!(r["held"].as_u64(), Some(HELD as u64), "{r}");
    // Pings every second over a 5 s hold: rounds at 1, 2, 3 and 4 s.
    assert_eq!(r["pings"].as_u64(), Some(4 * HELD as u64), "{r}");
    assert_eq!(r["pings_failed"].as_u64(), Some(0), "{r}");
    // Opened at the set rate: 200 at 400/s take about half a second, not a few ms.
    let rate = r["hold_accepts_per_sec"].as_f64().unwrap();
    assert!(
        rate > 0.0 && rate <= RATE as f64 * 1.1,
        "accept rate {rate}: {r}"
    );
    assert!(r["broker_cpu_percent_held"].as_f64().is_some(), "{r}");
}
