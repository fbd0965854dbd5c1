//! A client connection costs the broker exactly one file descriptor: its reader and
//! writer share the socket. Counted from outside, in `/proc/<broker pid>/fd`.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;

const CONNECTIONS: usize = 200;
/// Descriptors the broker may open or close for other reasons meanwhile (a WAL segment,
/// a metrics scrape). Far below `CONNECTIONS`: a second descriptor per connection fails.
const SLACK: usize = CONNECTIONS / 4;

/// The broker's open socket descriptors.
fn broker_sockets(broker: &Broker) -> usize {
    let dir = format!("/proc/{}/fd", broker.child.id());
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn each_connection_holds_one_descriptor() {
    let broker = Broker::start();
    let before = broker_sockets(&broker);
    let mut clients: Vec<Conn> = (0..CONNECTIONS)
        .map(|i| Conn::client(broker.mqtt, i % 2 == 0, &format!("fd-{i}")))
        .collect();
    // Every CONNACK arrived, so every connection's tasks run; a ping through each proves
    // its reader and writer both work on the shared socket.
    for client in &mut clients {
        client.ping();
    }
    for client in &mut clients {
        client.expect_kind(PINGRESP);
    }
    let during = broker_sockets(&broker);
    let extra = during.saturating_sub(before);
    assert!(
        (CONNECTIONS - SLACK..=CONNECTIONS + SLACK).contains(&extra),
        "{CONNECTIONS} connections added {extra} socket descriptors ({before} -> {during})"
    );

    // Reading and writing at once on one descriptor: a subscriber receives while it sends.
    let (mut publisher, mut subscriber) = (clients.pop().unwrap(), clients.pop().unwrap());
    subscriber.sub("fd/echo", 1);
    for i in 0..50u16 {
        assert_eq!(publisher.publish(Publish::new("fd/echo", b"x", 1)), 0);
        subscriber.ping();
        assert_eq!(subscriber.expect_publish().payload, b"x", "message {i}");
    }

    // Closed connections give their descriptor back.
    drop((publisher, subscriber));
    drop(clients);
    assert!(
        eventually(Duration::from_secs(10), || broker_sockets(&broker)
            <= before + SLACK),
        "sockets after closing: {} (before {before})\n{}",
        broker_sockets(&broker),
        broker.log()
    );
}
