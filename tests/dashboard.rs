//! The Grafana dashboard `dist/grafana/shardmq.json` queries only series the broker
//! exports: every metric name in its PromQL (panel targets and template variables) must
//! appear in a real broker's `/metrics` after some MQTT traffic.

mod common;

use std::collections::BTreeSet;

use common::raw::{Conn, Publish};
use common::Broker;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/grafana/shardmq.json");

/// Every PromQL string in the dashboard: panel target `expr`s and variable queries.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                        out.push(q.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The shardmq metric names a PromQL expression uses (identifiers starting `shardmq_`;
/// label names and values inside `{...}` and strings are skipped).
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut in_braces, mut in_string) = (false, false);
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("shardmq_") {
            names.insert(std::mem::take(word));
        }
        word.clear();
    };
    for c in query.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' => in_braces = true,
            '}' => in_braces = false,
            c if !in_braces && (c.is_ascii_alphanumeric() || c == '_' || c == ':') => {
                word.push(c);
                continue;
            }
            _ => {}
        }
        flush(&mut word);
    }
    flush(&mut word);
    names
}

/// The series names in a Prometheus / OpenMetrics text exposition.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_extractor_finds_names_outside_labels_and_strings() {
    let names = metric_names(
        r#"sum by (le) (rate(shardmq_a_bucket{instance=~"shardmq_not"}[5m])) / shardmq_b"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["shardmq_a_bucket", "shardmq_b"]
    );
}

#[test]
fn every_series_the_dashboard_queries_is_exported() {
    let text = std::fs::read_to_string(DASHBOARD).expect("dist/grafana/shardmq.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} queries nothing", panel["title"]);
    }
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    let wanted: BTreeSet<String> = all.iter().flat_map(|q| metric_names(q)).collect();
    // The dashboard covers clients, messages, limits, the WAL and the mesh.
    assert!(
        wanted.len() >= 30,
        "only {} series: {wanted:?}",
        wanted.len()
    );

    let broker = Broker::start();
    let mut sub = Conn::client(broker.mqtt, true, "dash-sub");
    sub.sub("dash/#", 2);
    let mut publisher = Conn::client(broker.mqtt, true, "dash-pub");
    for qos in 0..=2 {
        publisher.publish(Publish::new("dash/t", b"payload", qos).retain(qos == 1));
    }
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    // The QoS 1 and QoS 2 publish each waited for their ack once.
    assert_eq!(
        broker.metric_sum("shardmq_publish_ack_seconds_count"),
        2.0,
        "{body}"
    );
    let have = exported(&body);
    let missing: Vec<&String> = wanted.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series /metrics does not export: {missing:?}"
    );
}
