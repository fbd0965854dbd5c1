//! `$SYS` topics, black-box: a real broker publishing its figures every second, read by
//! rumqttc (an independent client) and the raw test client (for exact reason codes).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::raw::{Conn, Connect, Publish, PUBACK, WAIT};
use common::{broker_with, temp_dir, Broker, BrokerOptions};

/// A rumqttc v3.1.1 client subscribed to `filter`: what it receives, as (topic, payload,
/// retain), and the SUBACK codes as ("suback", codes, false).
fn subscriber(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    filter: &str,
) -> (rumqttc::Client, mpsc::Receiver<(String, String, bool)>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    client
        .subscribe(filter, rumqttc::QoS::AtMostOnce)
        .expect("subscribe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            let item = match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => (
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.retain,
                ),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) => {
                    ("suback".into(), format!("{:?}", ack.return_codes), false)
                }
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    (client, rx)
}

/// The latest value per `$SYS` topic seen until `done` holds for them (or `limit`).
fn watch(
    rx: &mpsc::Receiver<(String, String, bool)>,
    limit: Duration,
    mut done: impl FnMut(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = Instant::now() + limit;
    let mut latest = HashMap::new();
    while !done(&latest) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((topic, payload, _)) => {
                latest.insert(topic, payload);
            }
            Err(_) => break,
        }
    }
    latest
}

fn number(values: &HashMap<String, String>, topic: &str) -> i64 {
    values
        .get(topic)
        .unwrap_or_else(|| panic!("{topic} never came; saw {values:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{topic}: {e}"))
}

#[test]
fn the_broker_publishes_its_figures_under_sys_with_mosquittos_names() {
    let broker = broker_with(&[("SYS_INTERVAL_SECS", "1")]);
    let mut publ = Conn::client(broker.mqtt, true, "sys-pub");
    for i in 0..5u8 {
        assert_eq!(publ.publish(Publish::new("sys/t", &[i], 1)), 0);
    }
    let (_sub, rx) = subscriber(broker.mqtt, "sys-reader", None, "$SYS/broker/#");
    let all = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/disconnected",
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/publish/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
    ];
    // Every figure, retained, at once; then the round after the publishes and the reader.
    let values = watch(&rx, WAIT, |v| {
        all.iter().all(|t| v.contains_key(*t))
            && v["$SYS/broker/clients/connected"] == "2"
            && v["$SYS/broker/publish/messages/received"]
                .parse::<i64>()
                .is_ok_and(|n| n >= 5)
            && v["$SYS/broker/subscriptions/count"] != "0"
    });
    for topic in all {
        assert!(values.contains_key(topic), "{topic} missing: {values:?}");
    }
    assert!(values["$SYS/broker/version"].starts_with("shardmq "));
    assert!(values["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(number(&values, "$SYS/broker/clients/connected"), 2);
    assert!(number(&values, "$SYS/broker/publish/messages/received") >= 5);
    assert!(number(&values, "$SYS/broker/bytes/received") > 0);
    assert!(number(&values, "$SYS/broker/subscriptions/count") >= 1);

    // A third client shows within a round or two; the uptime goes on.
    let _third = Conn::client(broker.mqtt, false, "sys-third");
    let later = watch(&rx, WAIT, |v| {
        v.get("$SYS/broker/clients/connected")
            .is_some_and(|n| n == "3")
    });
    assert_eq!(number(&later, "$SYS/broker/clients/connected"), 3);
}

#[test]
fn a_new_subscriber_gets_the_latest_figures_retained_and_hash_does_not_match_sys() {
    let broker = broker_with(&[("SYS_INTERVAL_SECS", "1")]);
    // Let the first round go out before anyone subscribes.
    std::thread::sleep(Duration::from_millis(500));
    let mut raw = Conn::client(broker.mqtt, true, "sys-raw");
    raw.sub("$SYS/broker/version", 0);
    let p = raw.expect_publish();
    assert!(p.retain, "sent as retained to a new subscriber");
    assert!(String::from_utf8_lossy(&p.payload).starts_with("shardmq "));

    // `#` never matches a topic beginning with `$` (MQTT-4.7.2-1).
    let (_all, rx) = subscriber(broker.mqtt, "sys-hash", None, "#");
    let mut publ = Conn::client(broker.mqtt, true, "sys-marker");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(publ.publish(Publish::new("marker", b"m", 1)), 0);
    let seen = watch(&rx, Duration::from_millis(2_500), |_| false);
    assert!(
        seen.contains_key("marker"),
        "the subscription works: {seen:?}"
    );
    let sys: Vec<&String> = seen.keys().filter(|t| t.starts_with('$')).collect();
    assert!(sys.is_empty(), "`#` delivered {sys:?}");
}

#[test]
fn clients_may_not_publish_into_sys() {
    let broker = broker_with(&[("SYS_INTERVAL_SECS", "1")]);
    let mut reader = Conn::client(broker.mqtt, true, "sys-watch");
    reader.sub("$SYS/broker/clients/connected", 0);
    // The broker's own value first.
    let own = reader.expect_publish();
    assert_ne!(own.payload, b"9999");

    let mut forger = Conn::client(broker.mqtt, true, "sys-forger");
    let code = forger.publish(Publish::new("$SYS/broker/clients/connected", b"9999", 1));
    assert_eq!(code, 0x87, "v5 PUBACK: not authorized");
    let mut v3 = Conn::client(broker.mqtt, false, "sys-forger-v3");
    let pid = v3.pid();
    v3.send(
        &Publish::new("$SYS/broker/clients/connected", b"9999", 1)
            .pid(pid)
            .encode(false),
    );
    v3.expect_ack(PUBACK, pid);
    // Neither reaches a reader, nor the retained value.
    let forged: Vec<Publish> = reader
        .drain_publishes(Duration::from_millis(2_500))
        .into_iter()
        .filter(|p| p.payload == b"9999")
        .collect();
    assert!(forged.is_empty(), "a client's publish reached $SYS readers");
    let mut late = Conn::client(broker.mqtt, true, "sys-late");
    late.sub("$SYS/broker/clients/connected", 0);
    assert_ne!(late.expect_publish().payload, b"9999");
}

#[test]
fn the_acl_decides_who_reads_sys() {
    let dir = temp_dir();
    let file = dir.path().join("sys.toml");
    let config = format!(
        "allow_anonymous = true\nacl_default = \"allow\"\nsys_interval_secs = 1\n\n\
         [[users]]\nusername = \"ops\"\npassword_hash = \"{}\"\n\n\
         [[acl]]\nanonymous = true\ntopic = \"$SYS/#\"\naccess = \"deny\"\n",
        common::hash_password("ops-pw")
    );
    std::fs::write(&file, config).unwrap();
    let broker = Broker::start_with(BrokerOptions {
        args: vec!["--config".into(), file.to_str().unwrap().into()],
        ..BrokerOptions::default()
    });
    let (_ops, ops_rx) = subscriber(broker.mqtt, "sys-ops", Some(("ops", "ops-pw")), "$SYS/#");
    let ops = watch(&ops_rx, WAIT, |v| v.contains_key("$SYS/broker/uptime"));
    assert!(
        ops.contains_key("$SYS/broker/uptime"),
        "ops reads $SYS: {ops:?}"
    );

    let mut anon = Conn::open(broker.mqtt, true);
    anon.send(&Connect::v5("sys-anon").encode());
    assert_eq!(anon.expect_connack().code, 0);
    let codes = anon.subscribe_with(&[("$SYS/#", 0)], Default::default());
    assert_eq!(codes, vec![0x87], "anonymous may not subscribe to $SYS");
    anon.assert_no_publish(Duration::from_millis(2_500));
}
