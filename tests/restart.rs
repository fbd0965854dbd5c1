//! Restarting on the same ports: a broker stopped with SIGTERM or killed with SIGKILL while
//! clients were connected and `/metrics` was scraped leaves server-side TIME_WAIT (and
//! FIN_WAIT) sockets on both ports; an immediate start on the same ports must serve, as
//! `systemctl restart` or a supervisor expect. A port another program listens on is still
//! refused, with a message naming the setting.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::*;
use common::*;

/// Leaves as many kinds of server-side sockets on both ports as clients make: a rumqttc
/// client, a raw 3.1.1 and a raw 5.0 client (one of them with traffic), and several
/// metrics scrapes (the server closes those first, so they end in TIME_WAIT there).
fn load(broker: &Broker) -> Vec<Box<dyn std::any::Any>> {
    let mut opts = rumqttc::MqttOptions::new("restart-rumqttc", "127.0.0.1", broker.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(opts, 16);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            let Ok(event) = event else { break };
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = event {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("rumqttc connected");
    client
        .subscribe("restart/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let mut sub = Conn::client(broker.mqtt, false, "restart-raw-4");
    sub.sub("restart/#", 1);
    let mut publisher = Conn::client(broker.mqtt, true, "restart-raw-5");
    assert_eq!(publisher.publish(Publish::new("restart/a", b"x", 1)), 0);
    sub.expect_publish();
    for _ in 0..5 {
        let (status, body) = broker.http_get("/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("shardmq_"));
    }
    vec![Box::new(client), Box::new(sub), Box::new(publisher)]
}

/// Starts a broker on fixed ports with `data_dir`.
fn start_on(
    data_dir: &std::path::Path,
    mqtt: SocketAddr,
    metrics: SocketAddr,
) -> Result<Broker, (Option<std::process::ExitStatus>, String)> {
    Broker::try_start(BrokerOptions {
        data_dir: Some(data_dir.to_path_buf()),
        env: vec![
            ("SHARDMQ_MQTT_LISTEN".into(), mqtt.to_string()),
            ("SHARDMQ_METRICS_LISTEN".into(), metrics.to_string()),
        ],
        ..BrokerOptions::default()
    })
}

fn restart_after(signal: i32) {
    let dir = temp_dir();
    let mut first = Broker::start_with(BrokerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..BrokerOptions::default()
    });
    let (mqtt, metrics) = (first.mqtt, first.metrics);
    let clients = load(&first);
    first.signal(signal);
    assert!(
        first.wait_exit(Duration::from_secs(20)).is_some(),
        "broker did not stop on signal {signal}"
    );
    // The clients stay around (a real client does not close at once); the server's side
    // of their connections is what holds the ports.
    let second = start_on(dir.path(), mqtt, metrics).unwrap_or_else(|(status, log)| {
        panic!("immediate restart on {mqtt} / {metrics} refused ({status:?}):\n{log}")
    });
    assert_eq!((second.mqtt, second.metrics), (mqtt, metrics));
    let (_conn, ack) = Conn::connect(second.mqtt, &Connect::v5("restart-after"));
    assert_eq!(ack.code, 0);
    assert_eq!(second.http_get("/metrics").0, 200);
    drop(clients);
}

#[test]
fn immediate_restart_after_sigterm_serves_on_the_same_ports() {
    restart_after(libc::SIGTERM);
}

#[test]
fn immediate_restart_after_sigkill_serves_on_the_same_ports() {
    restart_after(libc::SIGKILL);
}

#[test]
fn a_port_another_program_listens_on_is_refused() {
    for key in ["mqtt_listen", "metrics_listen"] {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = other.local_addr().unwrap();
        let dir = temp_dir();
        let env = format!("SHARDMQ_{}", key.to_uppercase());
        let err = Broker::try_start(BrokerOptions {
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![(env, taken.to_string())],
            ..BrokerOptions::default()
        });
        let Err((status, log)) = err else {
            panic!("{key} {taken} is taken by another listener, yet the broker started");
        };
        assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
        assert!(
            log.contains(&format!("{key} {taken}")) && log.contains("already in use"),
            "the refusal names the setting and the address:\n{log}"
        );
        drop(other);
    }
}
