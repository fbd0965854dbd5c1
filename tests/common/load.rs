//! Load through an independent client (rumqttc): QoS 1 publishers that report what was
//! acknowledged, and persistent-session subscribers that report what they received.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

/// A QoS 1 publisher that keeps up to 64 publishes in flight and reports, per PUBACK,
/// the sequence number acknowledged (the broker acknowledges in publish order).
pub fn start_publisher(
    addr: SocketAddr,
    id: String,
    topic: String,
    count: u64,
    acked: mpsc::Sender<(String, u64)>,
) {
    use rumqttc::{Event, Packet, QoS};
    let mut opts = rumqttc::MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(64);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
    let who = topic.clone();
    tokio::spawn(async move {
        for seq in 0..count {
            let payload = format!("{id}:{seq}");
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut next = 0u64;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                if acked.send((who.clone(), next)).is_err() {
                    break;
                }
                next += 1;
            }
        }
    });
}

/// A 3.1.1 persistent-session subscriber (rumqttc) reporting every payload it receives.
pub fn start_subscriber(
    addr: SocketAddr,
    id: &str,
    subscribe: Option<&str>,
    got: mpsc::Sender<String>,
) -> rumqttc::AsyncClient {
    use rumqttc::{Event, Packet, QoS};
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
    let (subscribed_tx, subscribed) = mpsc::channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::Publish(p)) => {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    if got.send(text).is_err() {
                        break;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = subscribed_tx.send(());
                }
                _ => {}
            }
        }
    });
    if let Some(filter) = subscribe {
        let c = client.clone();
        let filter = filter.to_string();
        tokio::spawn(async move { c.subscribe(filter, QoS::AtLeastOnce).await });
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("SUBACK");
    }
    client
}
