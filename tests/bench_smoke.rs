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

/// Kafka mode against the Kafka door: an offered rate is acknowledged, and every record
/// due in the window comes back to the consumer with its latency.
#[test]
fn kafka_mode_produces_at_the_offered_rate_and_fetches_everything() {
    let dir = common::temp_dir();
    let config = dir.path().join("shardmq.toml");
    std::fs::write(
        &config,
        "kafka_listen = \"127.0.0.1:0\"\n[[kafka_topics]]\nname = \"bench\"\npartitions = 1\n",
    )
    .unwrap();
    let broker = Broker::start_with(common::BrokerOptions {
        shards: 1,
        args: vec!["--config".into(), config.display().to_string()],
        ..common::BrokerOptions::default()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq-bench"))
        .args(["--kafka-topic", "bench", "--port"])
        .arg(broker.kafka.unwrap().port().to_string())
        .args([
            "--rate",
            "2000",
            "--payload-bytes",
            "100",
            "--duration-secs",
            "2",
        ])
        .arg("--json")
        .output()
        .expect("run shardmq-bench");
    assert!(
        out.status.success(),
        "bench failed: {}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let result = &report["result"];
    let acked = result["acked_per_s"].as_f64().unwrap();
    assert!((1_800.0..=2_200.0).contains(&acked), "{report}");
    // Every record due in the 2 s window was fetched and timed.
    let samples = result["produce_to_fetch"]["samples"].as_u64().unwrap();
    assert!(samples.abs_diff(4_000) <= 2, "{report}");
    assert_eq!(result["fetched"].as_u64(), Some(samples), "{report}");
    assert!(
        result["produce_to_fetch"]["p50_us"].as_u64().unwrap() > 0,
        "{report}"
    );
}
