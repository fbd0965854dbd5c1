//! The publish path end to end: QoS 0/1/2 for both protocol levels through an
//! independent client (rumqttc), acknowledgements, QoS downgrade, per-publisher order,
//! QoS 2 exactly-once under DUP resends, 3.1.1 redelivery while connected, and the
//! message metrics.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::*;
use common::*;
use std::sync::mpsc;

const TICK: Duration = Duration::from_secs(10);

/// What a rumqttc event loop saw, reduced to what the tests assert.
#[derive(Debug)]
enum Seen {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
    SubAck,
    PubAck,
    PubComp,
}

fn v4_client(addr: SocketAddr, id: &str) -> (rumqttc::AsyncClient, mpsc::Receiver<Seen>) {
    use rumqttc::{Event, Packet};
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            let seen = match event {
                Event::Incoming(Packet::Publish(p)) => Seen::Publish {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                },
                Event::Incoming(Packet::SubAck(_)) => Seen::SubAck,
                Event::Incoming(Packet::PubAck(_)) => Seen::PubAck,
                Event::Incoming(Packet::PubComp(_)) => Seen::PubComp,
                _ => continue,
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    (client, rx)
}

fn v5_client(addr: SocketAddr, id: &str) -> (rumqttc::v5::AsyncClient, mpsc::Receiver<Seen>) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            let seen = match event {
                Event::Incoming(Packet::Publish(p)) => Seen::Publish {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                },
                Event::Incoming(Packet::SubAck(_)) => Seen::SubAck,
                Event::Incoming(Packet::PubAck(_)) => Seen::PubAck,
                Event::Incoming(Packet::PubComp(_)) => Seen::PubComp,
                _ => continue,
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    (client, rx)
}

async fn next(rx: &mut mpsc::Receiver<Seen>) -> Seen {
    // The event loop runs on the runtime's other worker; block only this one.
    tokio::task::block_in_place(|| rx.recv_timeout(TICK)).expect("event within 10 s")
}

fn qos(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(level: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Collects publishes until `n` arrived, skipping acks.
async fn publishes(rx: &mut mpsc::Receiver<Seen>, n: usize) -> Vec<(String, Vec<u8>, u8)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Seen::Publish {
            topic,
            payload,
            qos,
        } = next(rx).await
        {
            out.push((topic, payload, qos));
        }
    }
    out
}

async fn wait_for(rx: &mut mpsc::Receiver<Seen>, want: fn(&Seen) -> bool) {
    loop {
        if want(&next(rx).await) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos_0_1_2_end_to_end_across_shards() {
    let broker = Broker::start();
    let topics = names("e2e4/t", 8);
    let (sub, mut sub_rx) = v4_client(broker.mqtt, "e2e4-sub");
    sub.subscribe("e2e4/#", qos(2)).await.unwrap();
    wait_for(&mut sub_rx, |s| matches!(s, Seen::SubAck)).await;
    let (publ, mut pub_rx) = v4_client(broker.mqtt, "e2e4-pub");
    for (i, topic) in topics.iter().enumerate() {
        let level = (i % 3) as u8;
        let payload = vec![i as u8; 100 + i];
        publ.publish(topic, qos(level), false, payload)
            .await
            .unwrap();
        match level {
            1 => wait_for(&mut pub_rx, |s| matches!(s, Seen::PubAck)).await,
            2 => wait_for(&mut pub_rx, |s| matches!(s, Seen::PubComp)).await,
            _ => {}
        }
    }
    let mut got = publishes(&mut sub_rx, topics.len()).await;
    got.sort();
    let mut want: Vec<_> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), vec![i as u8; 100 + i], (i % 3) as u8))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos_0_1_2_end_to_end_across_shards() {
    let broker = Broker::start();
    let topics = names("e2e5/t", 8);
    let (sub, mut sub_rx) = v5_client(broker.mqtt, "e2e5-sub");
    sub.subscribe("e2e5/#", qos5(2)).await.unwrap();
    wait_for(&mut sub_rx, |s| matches!(s, Seen::SubAck)).await;
    let (publ, mut pub_rx) = v5_client(broker.mqtt, "e2e5-pub");
    for (i, topic) in topics.iter().enumerate() {
        let level = (i % 3) as u8;
        publ.publish(topic, qos5(level), false, vec![i as u8; 1000 + i])
            .await
            .unwrap();
        match level {
            1 => wait_for(&mut pub_rx, |s| matches!(s, Seen::PubAck)).await,
            2 => wait_for(&mut pub_rx, |s| matches!(s, Seen::PubComp)).await,
            _ => {}
        }
    }
    let mut got = publishes(&mut sub_rx, topics.len()).await;
    got.sort();
    let mut want: Vec<_> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), vec![i as u8; 1000 + i], (i % 3) as u8))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let broker = Broker::start();
    for v5 in [false, true] {
        let prefix = if v5 { "down5" } else { "down4" };
        let mut subs: Vec<Conn> = (0..3)
            .map(|max| {
                let mut c = Conn::client(broker.mqtt, v5, &format!("{prefix}-sub-{max}"));
                c.sub(&format!("{prefix}/#"), max);
                c
            })
            .collect();
        let mut publ = Conn::client(broker.mqtt, v5, &format!("{prefix}-pub"));
        for (i, topic) in names(&format!("{prefix}/t"), 6).iter().enumerate() {
            let level = (i % 3) as u8;
            assert_eq!(
                publ.publish(Publish::new(topic, topic.as_bytes(), level)),
                0
            );
            for (max, sub) in subs.iter_mut().enumerate() {
                let got = sub.expect_publish();
                assert_eq!(got.topic, *topic);
                assert_eq!(got.payload, topic.as_bytes());
                assert_eq!(
                    got.qos,
                    level.min(max as u8),
                    "sub max {max}, publish {level}"
                );
            }
        }
    }
}

#[test]
fn order_is_kept_per_publisher_per_topic() {
    let broker = Broker::start();
    let mut sub = Conn::client(broker.mqtt, true, "order-sub");
    sub.sub("order/one", 1);
    let mut publ = Conn::client(broker.mqtt, false, "order-pub");
    // Pipeline all 500 before reading any PUBACK, as a fast publisher does.
    let mut batch = Vec::new();
    for i in 1..=500u16 {
        batch.extend(
            Publish::new("order/one", &i.to_be_bytes(), 1)
                .pid(i)
                .encode(false),
        );
    }
    publ.send(&batch);
    for i in 1..=500u16 {
        assert_eq!(publ.expect_ack(PUBACK, i), 0);
    }
    let got: Vec<u16> = sub
        .expect_publishes(500)
        .iter()
        .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
        .collect();
    assert_eq!(got, (1..=500).collect::<Vec<u16>>());
}

#[test]
fn qos2_dup_resend_before_pubrel_is_delivered_once() {
    let broker = Broker::start();
    for v5 in [false, true] {
        let topic = if v5 { "eo5/t" } else { "eo4/t" };
        let mut sub = Conn::client(broker.mqtt, v5, &format!("{topic}-sub"));
        sub.sub(topic, 2);
        let mut publ = Conn::client(broker.mqtt, v5, &format!("{topic}-pub"));
        publ.auto_pubrel = false;
        let first = Publish::new(topic, b"once", 2).pid(7);
        publ.send(&first.encode(v5));
        assert_eq!(publ.expect_ack(PUBREC, 7), 0);
        publ.send(&first.clone().dup(true).encode(v5));
        assert_eq!(publ.expect_ack(PUBREC, 7), 0);
        publ.ack(PUBREL, 7);
        assert_eq!(publ.expect_ack(PUBCOMP, 7), 0);
        assert_eq!(sub.expect_publish().payload, b"once");
        sub.assert_no_publish(Duration::from_secs(1));
    }
}

/// 3.1.1 allows resending unacknowledged messages on a live connection; shardmq does so
/// after `retry_backoff_ms` (v5 forbids it and resends only on reconnect).
#[test]
fn v311_unacked_qos1_is_resent_with_dup_while_connected() {
    let broker = broker_with(&[("RETRY_BACKOFF_MS", "200"), ("MAX_RETRIES", "5")]);
    let mut sub = Conn::client(broker.mqtt, false, "retry-sub");
    sub.sub("retry/t", 1);
    sub.auto_ack = false;
    let mut publ = Conn::client(broker.mqtt, false, "retry-pub");
    publ.publish(Publish::new("retry/t", b"again", 1));
    let first = sub.expect_publish();
    assert!(!first.dup);
    let again = sub.try_publish(Duration::from_secs(3)).expect("redelivery");
    assert!(again.dup, "redelivery has DUP=1: {again:?}");
    assert_eq!((again.pid, &again.payload[..]), (first.pid, &b"again"[..]));
    sub.ack(PUBACK, first.pid);
}

#[test]
fn message_metrics_count_traffic() {
    let broker = Broker::start();
    let mut sub = Conn::client(broker.mqtt, true, "metrics-sub");
    sub.sub("metrics/#", 1);
    sub.sub("metrics-retained/#", 0);
    let mut publ = Conn::client(broker.mqtt, false, "metrics-pub");
    let topics = names("metrics/t", 8);
    for t in &topics {
        publ.publish(Publish::new(t, b"m", 1));
    }
    sub.expect_publishes(topics.len());
    for t in names("metrics-retained/t", 3) {
        publ.publish(Publish::new(&t, b"r", 1).retain(true));
    }
    sub.expect_publishes(3);
    let settled = eventually(WAIT, || {
        broker.metric_sum_labelled("shardmq_messages_received_total", "qos=\"1\"") >= 11.0
            && broker.metric_sum("shardmq_messages_delivered_total") >= 11.0
            && broker.metric_sum("shardmq_sessions_current") == 2.0
            && broker.metric_sum("shardmq_subscriptions_current") == 2.0
            && broker.metric_sum("shardmq_retained_messages_current") == 3.0
    });
    assert!(settled, "{}", broker.http_get("/metrics").1);
    sub.unsubscribe(&["metrics/#"]);
    publ.publish(Publish::new("metrics-retained/t-0", b"", 1).retain(true));
    assert!(eventually(WAIT, || {
        broker.metric_sum("shardmq_subscriptions_current") == 1.0
            && broker.metric_sum("shardmq_retained_messages_current") == 2.0
    }));
    drop(sub);
    assert!(eventually(WAIT, || broker
        .metric_sum("shardmq_sessions_current")
        == 1.0));
}
