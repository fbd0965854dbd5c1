//! What an operator sees of a running broker: `--version`, the log lines for client
//! connects, disconnects and refusals, and the state summary SIGUSR1 writes to the log.

mod common;

use std::time::Duration;

use common::raw::{Conn, Connect, Publish};
use common::{eventually, shardmq, Broker, BrokerOptions};

const WAIT: Duration = Duration::from_secs(10);

/// The broker's JSON log lines whose `message` is `message`.
fn lines_with(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[test]
fn version_names_the_release_and_the_git_commit() {
    let out = shardmq().arg("--version").output().expect("run --version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let prefix = format!("shardmq {} (", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&prefix), "{text}");
    let commit = text[prefix.len()..].trim_end_matches(')');
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        // Built from a checkout: the commit built, 12 hex digits.
        Some(head) => assert!(
            head.starts_with(commit) && commit.len() == 12,
            "--version says {commit}, HEAD is {head}"
        ),
        None => assert_eq!(commit, "unknown"),
    }
    // The same commit labels the build info series.
    let broker = Broker::start();
    let (_, body) = broker.http_get("/metrics");
    assert!(
        body.contains(&format!("commit=\"{commit}\"")),
        "build info without the commit:\n{}",
        body.lines()
            .find(|l| l.contains("build_info"))
            .unwrap_or("")
    );
}

#[test]
fn connects_disconnects_and_refusals_are_logged() {
    let broker = Broker::start_with(BrokerOptions {
        env: vec![
            ("SHARDMQ_LOG_LEVEL".into(), "info,shardmq::net=debug".into()),
            ("SHARDMQ_ALLOW_ANONYMOUS".into(), "false".into()),
            ("SHARDMQ_API_KEYS".into(), "k3y-for-the-log-test".into()),
        ],
        ..BrokerOptions::default()
    });

    let (conn, ack) = Conn::connect(
        broker.mqtt,
        &Connect::v5("logged-in").login("svc", "k3y-for-the-log-test"),
    );
    assert_eq!(ack.code, 0);
    drop(conn);
    let (_refused, ack) =
        Conn::connect_raw(broker.mqtt, &Connect::v5("no-key").login("svc", "wrong"));
    assert_ne!(ack.code, 0);

    let found = eventually(WAIT, || {
        let log = broker.log();
        !lines_with(&log, "client disconnected").is_empty()
            && !lines_with(&log, "connection refused").is_empty()
    });
    let log = broker.log();
    assert!(found, "missing lines:\n{log}");
    let connected = lines_with(&log, "client connected");
    assert_eq!(connected.len(), 1, "{log}");
    assert_eq!(connected[0]["level"], "DEBUG");
    assert_eq!(connected[0]["client_id"], "logged-in");
    assert_eq!(connected[0]["protocol"], "5.0");
    assert!(connected[0]["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    let disconnected = lines_with(&log, "client disconnected");
    assert_eq!(disconnected[0]["level"], "DEBUG");
    assert_eq!(disconnected[0]["client_id"], "logged-in");
    let refused = lines_with(&log, "connection refused");
    assert_eq!(refused.len(), 1, "{log}");
    assert_eq!(refused[0]["level"], "INFO");
    assert_eq!(refused[0]["client_id"], "no-key");
    assert!(
        refused[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("BadUserNameOrPassword")),
        "{:?}",
        refused[0]
    );
}

#[test]
fn a_connection_over_the_limit_is_logged_at_info_with_the_limit() {
    let broker = Broker::start_with(BrokerOptions {
        env: vec![("SHARDMQ_CONNECTIONS_MAX".into(), "1".into())],
        ..BrokerOptions::default()
    });
    let _first = Conn::client(broker.mqtt, true, "first");
    let (_second, ack) = Conn::connect_raw(broker.mqtt, &Connect::v5("second"));
    assert_eq!(ack.code, 0x97, "quota exceeded");
    assert!(eventually(WAIT, || !lines_with(
        &broker.log(),
        "connection refused"
    )
    .is_empty()));
    let refused = lines_with(&broker.log(), "connection refused");
    assert_eq!(refused[0]["level"], "INFO");
    assert_eq!(refused[0]["limit"], "connections_max");
}

#[test]
fn sigusr1_writes_a_state_summary_to_the_log() {
    let broker = Broker::start();
    let mut sub = Conn::connect(
        broker.mqtt,
        &Connect::v5("summary-sub").clean(false).session_expiry(600),
    )
    .0;
    sub.sub("summary/#", 1);
    let mut publisher = Conn::client(broker.mqtt, true, "summary-pub");
    assert_eq!(
        publisher.publish(Publish::new("summary/kept", b"x", 1).retain(true)),
        0
    );

    broker.signal(libc::SIGUSR1);
    assert!(
        eventually(WAIT, || !lines_with(&broker.log(), "state summary")
            .is_empty()),
        "no summary after SIGUSR1:\n{}",
        broker.log()
    );
    let log = broker.log();
    let per_shard = lines_with(&log, "shard state");
    assert_eq!(per_shard.len(), 2, "one line per shard:\n{log}");
    let total = &lines_with(&log, "state summary")[0];
    assert_eq!(total["level"], "INFO");
    assert_eq!(total["connections"], 2, "{total}");
    assert_eq!(total["sessions"], 2, "{total}");
    assert_eq!(total["subscriptions"], 1, "{total}");
    assert_eq!(total["retained"], 1, "{total}");
    let summed: i64 = per_shard
        .iter()
        .map(|s| s["connections"].as_i64().unwrap())
        .sum();
    assert_eq!(summed, 2);
    // The broker keeps serving after it.
    Conn::client(broker.mqtt, false, "after-summary");
}
