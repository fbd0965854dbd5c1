//! Runs the `shardmq-bench` binary against a real broker: a short point-to-point QoS 1 run
//! must deliver messages and lose none, and its JSON report must carry the parameters.

mod common;

use std::process::Command;

use common::Broker;

#[test]
fn p2p_qos1_run_delivers_without_loss() {
    let broker = Broker::start();
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq-bench"))
        .args(["--host", "127.0.0.1", "--port"])
        .arg(broker.mqtt.port().to_string())
        .args(["--publishers", "2", "--subscribers", "2", "--topics", "2"])
        .args(["--qos", "1", "--payload-bytes", "64", "--rate", "2000"])
        .args(["--duration-secs", "2", "--json"])
        .output()
        .expect("run shardmq-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {stderr}\nbroker log:\n{}",
        broker.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let result = &report["result"];
    let delivered = result["delivered"].as_u64().unwrap();
    assert!(delivered > 0, "{report}");
    // Nothing queues at 4,000 msg/s: what arrived in the window is what was sent in it,
    // give or take the messages in flight at its two edges.
    let arrived = result["arrived"].as_u64().unwrap();
    assert!(
        arrived.abs_diff(delivered) <= delivered / 20 + 100,
        "{report}"
    );
    assert_eq!(result["delivery"]["lost"].as_u64(), Some(0), "{report}");
    assert_eq!(
        result["delivery"]["duplicates"].as_u64(),
        Some(0),
        "{report}"
    );
    assert_eq!(report["params"]["qos"].as_u64(), Some(1));
    assert!(report["hardware"]["nproc"].as_u64().unwrap() >= 1);
}
