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
    assert_every_message_once_in_order(&report);
    assert_eq!(report["params"]["qos"].as_u64(), Some(1));
    assert!(report["hardware"]["nproc"].as_u64().unwrap() >= 1);
}

/// The report's delivery check found nothing lost, duplicated or out of order.
fn assert_every_message_once_in_order(report: &serde_json::Value) {
    let delivery = &report["result"]["delivery"];
    for key in ["lost", "duplicates", "out_of_order"] {
        assert_eq!(delivery[key].as_u64(), Some(0), "{key}: {report}");
    }
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

/// `shardmq-bench --relay` on a free port, killed when dropped.
struct Relay {
    child: std::process::Child,
    port: u16,
}

impl Relay {
    /// Starts the relay with `threads` threads and reads its port from the line it
    /// prints once it listens.
    fn start(threads: usize) -> Relay {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq-bench"))
            .args(["--relay", "127.0.0.1:0", "--threads"])
            .arg(threads.to_string())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run shardmq-bench --relay");
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .expect("the relay's first line");
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Relay { child, port }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay (the cost floor of the light-load comparison) with two threads passes every
/// QoS 0 publish of the generator on, in order, in MQTT 3.1.1 and 5.0: connections land
/// on either thread, so publishes cross between them too.
#[test]
fn relay_mode_passes_every_publish_on_in_both_versions() {
    let relay = Relay::start(2);
    for version in ["4", "5"] {
        let out = Command::new(env!("CARGO_BIN_EXE_shardmq-bench"))
            .args(["--host", "127.0.0.1", "--port"])
            .arg(relay.port.to_string())
            .args([
                "--version",
                version,
                "--topic-prefix",
                &format!("v{version}"),
            ])
            .args(["--publishers", "4", "--subscribers", "4", "--topics", "4"])
            .args(["--qos", "0", "--payload-bytes", "64", "--rate", "1000"])
            .args(["--duration-secs", "2", "--json"])
            .output()
            .expect("run shardmq-bench");
        assert!(
            out.status.success(),
            "bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON");
        let result = &report["result"];
        assert!(
            result["delivered"].as_u64().unwrap() >= 4 * 1000,
            "{report}"
        );
        assert_every_message_once_in_order(&report);
    }
}

/// An independent client (rumqttc) subscribes to a wildcard through the relay and gets
/// the publishes that match it and none that do not.
#[test]
fn relay_mode_serves_an_independent_client() {
    use rumqttc::{Event, Packet, QoS};
    use std::time::Duration;
    let relay = Relay::start(1);
    let connect = |id: &str| {
        let opts = rumqttc::MqttOptions::new(id, "127.0.0.1", relay.port);
        rumqttc::Client::new(opts, 16)
    };
    let (sub, mut sub_events) = connect("floor-sub");
    sub.subscribe("floor/+", QoS::AtMostOnce).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in sub_events.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some((p.topic.clone(), p.payload.to_vec())));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let wait = Duration::from_secs(10);
    assert_eq!(rx.recv_timeout(wait).expect("SUBACK"), None);
    let (publisher, mut pub_events) = connect("floor-pub");
    std::thread::spawn(move || for _ in pub_events.iter().take_while(Result::is_ok) {});
    for topic in ["elsewhere/a", "floor/a/b", "floor/a"] {
        publisher
            .publish(topic, QoS::AtMostOnce, false, topic.as_bytes())
            .unwrap();
    }
    let got = rx.recv_timeout(wait).expect("a delivery");
    assert_eq!(got, Some(("floor/a".to_string(), b"floor/a".to_vec())));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing else matches"
    );
}
