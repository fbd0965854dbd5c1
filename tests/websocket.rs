//! MQTT over WebSocket, black-box: a real broker with `ws_listen` (and `wss_listen` over
//! TLS), driven by independent clients: paho-mqtt (Python) with its websockets transport,
//! a plain-TCP rumqttc client beside it, and a tungstenite client that frames MQTT bytes
//! its own way (one packet over several frames, several packets in one frame).

mod common;

use std::process::{Command, Output, Stdio};

use common::{Broker, BrokerOptions};

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

/// Whether paho-mqtt imports here; in CI (CI set) its absence fails the test instead.
fn have_paho() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with paho-mqtt is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: python3 with paho-mqtt is not installed (pip install paho-mqtt)");
    }
    found
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
