//! MQTT over WebSocket, black-box: a real broker with `ws_listen` (and `wss_listen` over
//! TLS), driven by independent clients: paho-mqtt (Python) with its websockets transport,
//! MQTT.js (Node), a plain-TCP rumqttc client beside them, and a tungstenite client that frames MQTT bytes
//! its own way (one packet over several frames, several packets in one frame).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::{self, Message, WebSocket};
use common::raw::{frame, put_bin, put_str};
use common::{tool_present, Broker, BrokerOptions};
use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType};

/// How long anything that must happen may take.
const WAIT: Duration = Duration::from_secs(10);

/// A paho-mqtt client script: `MODE PORT PATH CA ...`. Modes:
/// - `pubsub COUNT SIZE`: one websockets client subscribes (QoS 1) to `ws/t`, another
///   publishes COUNT messages of SIZE bytes, alternating QoS 0 and 1; prints `got N`.
/// - `echo COUNT`: subscribes to `in/#` and republishes each message to `out/...`
///   (QoS 1), COUNT times, then exits; prints `ready` once subscribed.
const PAHO: &str = r#"
import sys, time, ssl
import paho.mqtt.client as mqtt

mode, port, path, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def client(cid):
    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, transport="websockets")
    except AttributeError:
        c = mqtt.Client(client_id=cid, transport="websockets")
    c.ws_set_options(path=path)
    if ca != "-":
        c.tls_set(ca_certs=ca)
    return c

def wait(cond, what, limit=10):
    end = time.time() + limit
    while not cond():
        if time.time() > end:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.01)

if mode == "pubsub":
    count, size = int(sys.argv[5]), int(sys.argv[6])
    got, subscribed = [], []
    sub = client("ws-sub")
    sub.on_message = lambda c, u, m: got.append((m.qos, m.payload))
    sub.on_subscribe = lambda *a: subscribed.append(1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    wait(lambda: sub.is_connected(), "the subscriber's CONNACK")
    sub.subscribe("ws/t", qos=1)
    wait(lambda: subscribed, "the SUBACK")
    pub = client("ws-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    wait(lambda: pub.is_connected(), "the publisher's CONNACK")
    for i in range(count):
        payload = (b"%06d" % i) * (size // 6) + b"x" * (size % 6)
        pub.publish("ws/t", payload, qos=i % 2).wait_for_publish(10)
    wait(lambda: len(got) >= count, "the messages")
    for i, (qos, payload) in enumerate(sorted(got, key=lambda m: m[1][:6])):
        expected = (b"%06d" % i) * (size // 6) + b"x" * (size % 6)
        if payload != expected:
            sys.exit("message %d: %d bytes, not the %d published" % (i, len(payload), len(expected)))
        if qos != i % 2:
            sys.exit("message %d: QoS %d, expected %d" % (i, qos, i % 2))
    print("got %d" % len(got), flush=True)
    pub.disconnect()
    sub.disconnect()
elif mode == "echo":
    count = int(sys.argv[5])
    done, subscribed = [], []
    c = client("ws-echo")
    def on_message(c, u, m):
        c.publish("out/" + m.topic[3:], m.payload, qos=1)
        done.append(1)
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.append(1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    wait(lambda: c.is_connected(), "the CONNACK")
    c.subscribe("in/#", qos=1)
    wait(lambda: subscribed, "the SUBACK")
    print("ready", flush=True)
    wait(lambda: len(done) >= count, "the messages to echo", 20)
    time.sleep(0.5)
    c.disconnect()
    print("echoed %d" % len(done), flush=True)
"#;

/// Whether paho-mqtt imports here.
fn have_paho() -> bool {
    tool_present(
        Command::new("python3").args(["-c", "import paho.mqtt.client"]),
        "python3 with paho-mqtt",
        "pip install paho-mqtt",
    )
}

fn paho_command(mode: &str, port: u16, ca: &str, rest: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PAHO, mode, &port.to_string(), "/mqtt", ca])
        .args(rest)
        .stdin(Stdio::null());
    cmd
}

fn assert_ran(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn ws_broker(settings: &[(&str, &str)]) -> Broker {
    let mut all = vec![("ws_listen", "127.0.0.1:0")];
    all.extend_from_slice(settings);
    Broker::start_with(BrokerOptions {
        shards: 2,
        env: common::settings_env(&all),
        ..BrokerOptions::default()
    })
}

/// paho over ws: QoS 0 and 1 publishes reach a QoS 1 subscriber, in order and intact.
#[test]
fn paho_publishes_and_subscribes_over_websocket() {
    if !have_paho() {
        return;
    }
    let broker = ws_broker(&[]);
    let port = broker.ws.expect("ws_listen resolved").port();
    let out = paho_command("pubsub", port, "-", &["20", "100"])
        .output()
        .expect("python3");
    let stdout = assert_ran(&out, "paho over ws");
    assert!(stdout.contains("got 20"), "{stdout}");
}

/// A rumqttc 3.1.1 client over plain TCP, and the (topic, payload) of what it receives.
fn tcp_client(addr: SocketAddr, id: &str) -> (rumqttc::Client, mpsc::Receiver<(String, Vec<u8>)>) {
    use rumqttc::{Event, Packet};
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (client, rx)
}

/// A subscription made, its SUBACK through: rumqttc's events say nothing of it here,
/// so a message to itself proves it.
fn subscribed(
    client: &rumqttc::Client,
    rx: &mpsc::Receiver<(String, Vec<u8>)>,
    filter: &str,
    probe: &str,
) {
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        client
            .publish(probe, rumqttc::QoS::AtMostOnce, false, b"probe".to_vec())
            .unwrap();
        if let Ok((topic, _)) = rx.recv_timeout(Duration::from_millis(200)) {
            if topic == probe {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no subscription to {filter}");
    }
}

/// A message from a TCP client reaches a WebSocket client, and one from the WebSocket
/// client reaches the TCP client.
#[test]
fn tcp_and_websocket_clients_reach_each_other() {
    if !have_paho() {
        return;
    }
    let broker = ws_broker(&[]);
    let port = broker.ws.expect("ws_listen resolved").port();
    let mut echo = paho_command("echo", port, "-", &["3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(echo.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    let (tcp, rx) = tcp_client(broker.mqtt, "tcp-side");
    subscribed(&tcp, &rx, "out/#", "out/probe");
    for i in 0..3 {
        let payload = format!("from tcp {i}").into_bytes();
        tcp.publish(
            format!("in/{i}"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload.clone(),
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (topic, got) = rx.recv_timeout(left).expect("the echo over WebSocket");
            if topic == format!("out/{i}") {
                assert_eq!(got, payload);
                break;
            }
        }
    }
    let out = echo.wait_with_output().expect("echo output");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        out.status.success(),
        "paho echo failed: {}\n{rest:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 it signs: (CA path, cert path, key path).
fn server_pki(dir: &std::path::Path) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "ws test CA");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate().unwrap();
    let server = server.signed_by(&key, &ca, &ca_key).unwrap();
    let path = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    };
    (
        path("ca.pem", ca.pem()),
        path("server.pem", server.pem()),
        path("server.key", key.serialize_pem()),
    )
}

/// paho over wss (TLS underneath, the broker's certificate checked against the test
/// CA): QoS 0 and 1, messages of 100 kB.
#[test]
fn paho_over_websocket_over_tls() {
    if !have_paho() {
        return;
    }
    let dir = common::temp_dir();
    let (ca, cert, key) = server_pki(dir.path());
    let broker = ws_broker(&[
        ("wss_listen", "127.0.0.1:0"),
        ("tls_cert_file", &cert),
        ("tls_key_file", &key),
    ]);
    let port = broker.wss.expect("wss_listen resolved").port();
    let out = paho_command("pubsub", port, &ca, &["6", "100000"])
        .output()
        .expect("python3");
    let stdout = assert_ran(&out, "paho over wss");
    assert!(stdout.contains("got 6"), "{stdout}");
}

/// Sends an HTTP request to `addr` and returns the status line of the answer.
fn http_status(addr: SocketAddr, request: &str) -> String {
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_string()
}

fn upgrade_request(path: &str, protocol: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    )
}

/// The wrong path is answered 404, a plain HTTP request 426, an upgrade offering no MQTT
/// subprotocol 400; `mqtt` and `mqttv3.1` are both accepted, `mqtt` chosen first.
#[test]
fn wrong_path_plain_http_and_other_subprotocols_are_refused() {
    let broker = ws_broker(&[]);
    let ws = broker.ws.expect("ws_listen resolved");
    let status = http_status(ws, &upgrade_request("/other", "mqtt"));
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let status = http_status(ws, "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 426"), "{status}");
    let status = http_status(ws, &upgrade_request("/mqtt", "chat"));
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    for (offered, chosen) in [("mqttv3.1, mqtt", "mqtt"), ("mqttv3.1", "mqttv3.1")] {
        let (_client, response) = ws_client(ws, offered);
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            chosen,
            "offered {offered}"
        );
    }
}

/// A client that stalls in the HTTP upgrade is closed at `connect_timeout_ms`.
#[test]
fn a_stalled_upgrade_is_closed_at_the_connect_timeout() {
    let broker = ws_broker(&[("connect_timeout_ms", "500")]);
    let ws = broker.ws.expect("ws_listen resolved");
    let mut raw = TcpStream::connect(ws).expect("connect");
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert!(
        common::eventually(WAIT, || broker.metric_sum("shardmq_connect_timeouts_total")
            >= 1.0),
        "the stall counted as a connect timeout"
    );
}

/// A WebSocket client that frames MQTT bytes as a test says.
struct WsClient {
    ws: WebSocket<TcpStream>,
    /// Bytes received and not yet taken as packets.
    buf: Vec<u8>,
}

fn ws_client(
    addr: SocketAddr,
    protocol: &str,
) -> (WsClient, tungstenite::handshake::client::Response) {
    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, response) = tungstenite::client(request, stream).expect("WebSocket upgrade");
    (
        WsClient {
            ws,
            buf: Vec::new(),
        },
        response,
    )
}

impl WsClient {
    /// Sends each of `frames` as one binary frame.
    fn send(&mut self, frames: &[&[u8]]) {
        for bytes in frames {
            self.ws
                .send(Message::Binary(bytes.to_vec().into()))
                .unwrap();
        }
    }

    /// The next whole MQTT packet: its first byte and its body.
    fn packet(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some((header, len)) = packet_header(&self.buf) {
                if self.buf.len() >= header + len {
                    let body = self.buf[header..header + len].to_vec();
                    let first = self.buf[0];
                    self.buf.drain(..header + len);
                    return (first, body);
                }
            }
            match self.ws.read().expect("a frame") {
                Message::Binary(data) => self.buf.extend_from_slice(&data),
                Message::Pong(_) | Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// The fixed header's length and the remaining length, once both are in `buf`.
fn packet_header(buf: &[u8]) -> Option<(usize, usize)> {
    let (mut len, mut shift) = (0usize, 0);
    for (i, byte) in buf.iter().enumerate().skip(1).take(4) {
        len |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((i + 1, len));
        }
    }
    None
}

/// A 3.1.1 CONNECT with a clean session, and a QoS 0 will when `will` is given.
fn connect(id: &str, will: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4);
    body.push(if will.is_some() { 0x06 } else { 0x02 });
    body.extend_from_slice(&30u16.to_be_bytes());
    put_str(&mut body, id);
    if let Some((topic, message)) = will {
        put_str(&mut body, topic);
        put_bin(&mut body, message);
    }
    frame(1, 0, &body)
}

fn subscribe(filter: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    put_str(&mut body, filter);
    body.push(0);
    frame(8, 2, &body)
}

fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    body.extend_from_slice(payload);
    frame(3, 0, &body)
}

/// The payload of a QoS 0 PUBLISH body on `topic`.
fn payload_of(topic: &str, (first, body): (u8, Vec<u8>)) -> Vec<u8> {
    assert_eq!(first >> 4, 3, "a PUBLISH");
    let mut expected = Vec::new();
    put_str(&mut expected, topic);
    assert_eq!(&body[..expected.len()], &expected[..], "on {topic}");
    body[expected.len()..].to_vec()
}

/// MQTT packets are one byte stream across frames: CONNECT and SUBSCRIBE in one frame,
/// a 300 kB PUBLISH over frames of 1,000 bytes whose last also holds the start of the
/// next PUBLISH (same topic: order is kept per topic), whose end comes alone; a ping
/// is answered with its pong.
#[test]
fn packets_span_frames_and_frames_hold_several_packets() {
    let broker = ws_broker(&[]);
    let ws = broker.ws.expect("ws_listen resolved");
    let (mut sub, _) = ws_client(ws, "mqtt");
    sub.send(&[&[connect("raw-sub", None), subscribe("big/#")].concat()]);
    assert_eq!(sub.packet().0, 0x20, "CONNACK");
    assert_eq!(sub.packet().0, 0x90, "SUBACK");

    let (mut publisher, _) = ws_client(ws, "mqtt");
    publisher.send(&[&connect("raw-pub", None)]);
    assert_eq!(publisher.packet().0, 0x20, "CONNACK");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let stream = [publish("big/t", &big), publish("big/t", b"small")].concat();
    let split = stream.len() - 4;
    let mut frames: Vec<&[u8]> = stream[..split].chunks(1000).collect();
    frames.push(&stream[split..]);
    publisher.send(&frames);

    assert_eq!(payload_of("big/t", sub.packet()), big);
    assert_eq!(payload_of("big/t", sub.packet()), b"small");

    sub.ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    loop {
        match sub.ws.read().expect("the pong") {
            Message::Pong(data) => {
                assert_eq!(&data[..], b"are you there");
                break;
            }
            Message::Binary(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A close frame from the client ends the connection as a TCP close does: the will is
/// published, unless DISCONNECT came first. A text frame ends the connection.
#[test]
fn a_close_frame_publishes_the_will_unless_disconnect_came_first() {
    let broker = ws_broker(&[]);
    let ws = broker.ws.expect("ws_listen resolved");
    let (tcp, rx) = tcp_client(broker.mqtt, "will-watcher");
    subscribed(&tcp, &rx, "will/#", "will/probe");

    let (mut polite, _) = ws_client(ws, "mqtt");
    polite.send(&[&connect("polite", Some(("will/polite", b"gone")))]);
    assert_eq!(polite.packet().0, 0x20, "CONNACK");
    polite.send(&[&frame(14, 0, &[])]);
    let _ = polite.ws.close(None);

    let (mut abrupt, _) = ws_client(ws, "mqtt");
    abrupt.send(&[&connect("abrupt", Some(("will/abrupt", b"gone")))]);
    assert_eq!(abrupt.packet().0, 0x20, "CONNACK");
    abrupt.ws.close(None).unwrap();
    // The broker answers the close frame, then ends the connection.
    loop {
        match abrupt.ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("not a clean close: {e}"),
        }
    }
    let (topic, payload) = rx.recv_timeout(WAIT).expect("the will");
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("will/abrupt", &b"gone"[..])
    );

    let (mut texter, _) = ws_client(ws, "mqtt");
    texter.send(&[&connect("texter", Some(("will/texter", b"gone")))]);
    assert_eq!(texter.packet().0, 0x20, "CONNACK");
    texter.ws.send(Message::Text("not MQTT".into())).unwrap();
    let (topic, _) = rx.recv_timeout(WAIT).expect("the text frame's will");
    assert_eq!(topic, "will/texter", "and never will/polite");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
}

/// A client that sends DISCONNECT and only then its close frame (as MQTT.js and paho
/// do) gets a clean closing handshake: the broker answers DISCONNECT with its close
/// frame and waits for the client's before shutting the socket, so the late close frame
/// meets an open socket, not a reset. The same when the broker ends the connection.
#[test]
fn disconnect_then_a_late_close_frame_ends_cleanly() {
    let broker = ws_broker(&[]);
    let ws = broker.ws.expect("ws_listen resolved");
    for round in 0..3 {
        let (mut client, _) = ws_client(ws, "mqtt");
        client.send(&[&connect(&format!("late-close-{round}"), None)]);
        assert_eq!(client.packet().0, 0x20, "CONNACK");
        client.send(&[&frame(14, 0, &[])]);
        // The broker's close frame is on its way or here by now.
        std::thread::sleep(Duration::from_millis(100));
        client.ws.close(None).expect("the close frame is sent");
        loop {
            match client.ws.read() {
                Ok(Message::Close(_)) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("round {round}: not a clean close: {e}"),
            }
        }
        // A reset that came after the last read would show here.
        std::thread::sleep(Duration::from_millis(50));
        let socket = client.ws.get_ref();
        assert!(
            socket.take_error().unwrap().is_none(),
            "round {round}: the broker reset the socket"
        );
        let mut rest = [0u8; 16];
        match (&*socket).read(&mut rest) {
            Ok(0) => {}
            other => panic!("round {round}: after the close, {other:?}"),
        }
    }

    // The broker ends a connection itself (a takeover): the old connection's reader is
    // still waiting for bytes, sees the client's close reply and only then the socket
    // is shut.
    let (mut old, _) = ws_client(ws, "mqtt");
    old.send(&[&connect("taken-over", None)]);
    assert_eq!(old.packet().0, 0x20, "CONNACK");
    let (mut new, _) = ws_client(ws, "mqtt");
    new.send(&[&connect("taken-over", None)]);
    assert_eq!(new.packet().0, 0x20, "the new connection's CONNACK");
    std::thread::sleep(Duration::from_millis(100));
    loop {
        // Reading the broker's close frame queues the reply, sent with the next read.
        match old.ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("taken over: not a clean close: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        old.ws.get_ref().take_error().unwrap().is_none(),
        "taken over: the broker reset the socket"
    );
}

/// An MQTT.js script (Node, npm `mqtt`): a v5 client and a 3.1.1 client over ws, the
/// first subscribed (QoS 1) to `js/t`, the second publishing QoS 0 and 1 messages and a
/// 200 kB one there; prints `got N` once the first has them all.
const MQTTJS: &str = r#"
const mqtt = require("mqtt");
const url = "ws://127.0.0.1:" + process.env.WS_PORT + "/mqtt";
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail("timed out"), 10000);
const big = "b".repeat(200000);
const sent = ["zero", "one", big];
const got = [];
const sub = mqtt.connect(url, { clientId: "js-sub", protocolVersion: 5 });
sub.on("error", (e) => fail("subscriber: " + e));
sub.on("message", (topic, payload, packet) => {
    got.push([payload.toString(), packet.qos]);
    if (got.length < sent.length) return;
    sent.forEach((p, i) => {
        if (got[i][0] !== p) fail("message " + i + ": " + got[i][0].length + " bytes");
        if (got[i][1] !== Math.min(i, 1)) fail("message " + i + ": QoS " + got[i][1]);
    });
    console.log("got " + got.length);
    sub.end(false, {}, () => pub.end(false, {}, () => process.exit(0)));
});
let pub;
sub.on("connect", () => sub.subscribe("js/t", { qos: 1 }, (err) => {
    if (err) fail("subscribe: " + err);
    pub = mqtt.connect(url, { clientId: "js-pub", protocolVersion: 4 });
    pub.on("error", (e) => fail("publisher: " + e));
    pub.on("connect", () => sent.forEach((p, i) => pub.publish("js/t", p, { qos: Math.min(i, 1) })));
}));
"#;

/// Where .ci/run installs MQTT.js (`npm install --prefix target/node mqtt`).
fn node_modules() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node/node_modules")
}

/// Whether Node runs here with MQTT.js.
fn have_mqttjs() -> bool {
    tool_present(
        Command::new("node")
            .args(["-e", "require('mqtt')"])
            .env("NODE_PATH", node_modules()),
        "node with MQTT.js",
        "npm install --prefix target/node mqtt",
    )
}

/// MQTT.js, the browsers' MQTT client, over ws: v5 and 3.1.1, QoS 0 and 1, 200 kB.
#[test]
fn mqttjs_publishes_and_subscribes_over_websocket() {
    if !have_mqttjs() {
        return;
    }
    let broker = ws_broker(&[]);
    let port = broker.ws.expect("ws_listen resolved").port();
    let out = Command::new("node")
        .args(["-e", MQTTJS])
        .env("NODE_PATH", node_modules())
        .env("WS_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("node");
    let stdout = assert_ran(&out, "MQTT.js over ws");
    assert!(stdout.contains("got 3"), "{stdout}");
}

/// Whether headless Chromium (Debian's `chromium`) is here to check the example page.
fn have_chromium() -> bool {
    tool_present(
        Command::new("chromium").arg("--version"),
        "chromium",
        "apt-get install chromium",
    )
}

/// examples/web/index.html in headless Chromium subscribes over ws and shows messages
/// live: what it lists (it publishes its list to a report topic) is what was sent.
#[test]
fn the_example_web_page_shows_messages_live() {
    if !have_chromium() || !have_mqttjs() {
        return;
    }
    let broker = ws_broker(&[]);
    let ws = broker.ws.expect("ws_listen resolved");
    let (tcp, rx) = tcp_client(broker.mqtt, "web-watcher");
    subscribed(&tcp, &rx, "web/report", "web/report");

    let dir = common::temp_dir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("examples/web/index.html"),
        dir.path().join("index.html"),
    )
    .unwrap();
    std::fs::copy(
        node_modules().join("mqtt/dist/mqtt.min.js"),
        dir.path().join("mqtt.min.js"),
    )
    .unwrap();
    let page = format!(
        "file://{}/index.html?url=ws://{ws}/mqtt&topic=demo/%23&report=web/report",
        dir.path().display()
    );
    let mut chromium = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(&page)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: the renderer and helper processes end with it.
        .process_group(0)
        .spawn()
        .expect("chromium");
    let report = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, got)) = rx.recv_timeout(left) else {
                return false;
            };
            if got == want.as_bytes() {
                return true;
            }
        }
    };
    let subscribed = report("subscribed");
    if subscribed {
        for (topic, payload) in [("demo/a", "hello"), ("demo/b", "world")] {
            tcp.publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .unwrap();
        }
    }
    let shown = subscribed && report("demo/a: hello\ndemo/b: world");
    // SAFETY: kill(2) on the process group this test started for the browser.
    unsafe { libc::kill(-(chromium.id() as i32), libc::SIGKILL) };
    let _ = chromium.wait();
    assert!(subscribed, "the page never subscribed");
    assert!(shown, "the page did not show both messages");
}
