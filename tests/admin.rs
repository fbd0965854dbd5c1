//! The admin API on the metrics listener and `shardmq admin`, black-box: a real broker,
//! real MQTT clients, HTTP over plain sockets.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, shardmq, temp_dir, Broker, BrokerOptions};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use serde_json::Value;

const KEY: &str = "admin-test-key-0123456789";
/// Accepted as the MQTT password with any username: how the tests name a user.
const MQTT_KEY: &str = "mqtt-api-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

fn start(shards: usize, settings: &[(&str, &str)], data_dir: Option<std::path::PathBuf>) -> Broker {
    Broker::start_with(BrokerOptions {
        shards,
        env: common::settings_env(settings),
        data_dir,
        ..BrokerOptions::default()
    })
}

fn admin_broker(shards: usize) -> Broker {
    start(shards, &[("ADMIN_KEY", KEY), ("API_KEYS", MQTT_KEY)], None)
}

/// One HTTP request; `(status, body as JSON, or as a string if it is not JSON)`.
fn http(addr: SocketAddr, method: &str, target: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let (status, body) = common::http_request(addr, method, target, &auth);
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

/// Every item of a listing, following the cursor with pages of `limit`.
fn list_all(broker: &Broker, list: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut target = format!("/admin/{list}?limit={limit}");
    for _ in 0..10_000 {
        let (status, page) = http(broker.metrics, "GET", &target, Some(KEY));
        assert_eq!(status, 200, "{target}: {page}");
        let found = page["items"].as_array().unwrap();
        assert!(found.len() <= limit, "a page larger than its limit: {page}");
        items.extend(found.iter().cloned());
        match page["next"].as_str() {
            Some(next) => target = format!("/admin/{list}?limit={limit}&after={next}"),
            None => return items,
        }
    }
    panic!("the cursor of /admin/{list} never ended");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["client_id"].as_str().unwrap().to_string())
        .collect()
}

/// What a client saw.
#[derive(Debug)]
enum Seen {
    ConnAck { session_present: bool },
    SubAck,
    Publish { topic: String, payload: Vec<u8> },
    Closed,
}

struct Mqtt {
    client: Client,
    seen: mpsc::Receiver<Seen>,
}

impl Mqtt {
    /// A v5 client; `expiry_secs` > 0 with `clean_start` false keeps its session.
    fn connect(
        addr: SocketAddr,
        id: &str,
        user: Option<&str>,
        expiry_secs: u32,
        clean: bool,
    ) -> Mqtt {
        Mqtt::connect_seeing(addr, id, user, expiry_secs, clean).0
    }

    /// Connects (resuming any session) and returns whether the broker had one.
    fn session_present(addr: SocketAddr, id: &str) -> (Mqtt, bool) {
        Mqtt::connect_seeing(addr, id, None, 600, false)
    }

    /// The client, and whether its CONNACK said a session was present.
    fn connect_seeing(
        addr: SocketAddr,
        id: &str,
        user: Option<&str>,
        expiry_secs: u32,
        clean: bool,
    ) -> (Mqtt, bool) {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_start(clean);
        if let Some(user) = user {
            opts.set_credentials(user, MQTT_KEY);
        }
        opts.set_connect_properties(ConnectProperties {
            session_expiry_interval: Some(expiry_secs),
            ..ConnectProperties::new()
        });
        let (client, mut connection) = Client::new(opts, 64);
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let seen = match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => Seen::ConnAck {
                        session_present: ack.session_present,
                    },
                    Ok(Event::Incoming(Packet::SubAck(_))) => Seen::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                    },
                    Ok(_) => continue,
                    Err(_) => {
                        let _ = tx.send(Seen::Closed);
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let mqtt = Mqtt { client, seen };
        match mqtt.next() {
            Seen::ConnAck { session_present } => (mqtt, session_present),
            other => panic!("{id}: expected CONNACK, saw {other:?}"),
        }
    }

    fn next(&self) -> Seen {
        self.seen.recv_timeout(WAIT).expect("an event within 10 s")
    }

    fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        loop {
            if let Seen::SubAck = self.next() {
                return;
            }
        }
    }

    /// Publishes seen within `within`.
    fn publishes(&self, within: Duration) -> Vec<(String, Vec<u8>)> {
        let deadline = std::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.seen.recv_timeout(left) {
                Ok(Seen::Publish { topic, payload }) => out.push((topic, payload)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }

    fn disconnect(self) {
        let _ = self.client.disconnect();
        for _ in 0..50 {
            if let Ok(Seen::Closed) | Err(_) = self.seen.recv_timeout(Duration::from_millis(200)) {
                return;
            }
        }
    }
}

fn publish_retained(addr: SocketAddr, topic: &str, payload: &str) {
    let mqtt = Mqtt::connect(addr, &format!("pub-{topic}"), None, 0, true);
    mqtt.client
        .publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec())
        .unwrap();
    // The PUBACK says the owner stored it.
    std::thread::sleep(Duration::from_millis(300));
    mqtt.disconnect();
}

#[test]
fn listings_show_every_client_with_its_fields_on_both_shards() {
    let broker = admin_broker(2);
    let names = common::names("lister", 16);
    let clients: Vec<Mqtt> = names
        .iter()
        .map(|id| {
            let c = Mqtt::connect(broker.mqtt, id, Some("alice"), 0, true);
            c.subscribe(&format!("own/{id}"));
            c.subscribe("$share/grp/shared/#");
            c
        })
        .collect();
    for i in 0..5 {
        publish_retained(broker.mqtt, &format!("kept/{i}"), &"x".repeat(i + 1));
    }

    let listed = list_all(&broker, "clients", 100);
    let mine: Vec<&Value> = listed
        .iter()
        .filter(|c| c["client_id"].as_str().unwrap().starts_with("lister-"))
        .collect();
    assert_eq!(mine.len(), names.len(), "{listed:?}");
    let shards: BTreeSet<u64> = mine.iter().map(|c| c["shard"].as_u64().unwrap()).collect();
    assert_eq!(
        shards,
        BTreeSet::from([0, 1]),
        "16 connections land on both shards: {mine:?}"
    );
    for c in &mine {
        assert_eq!(c["user"], "alice", "{c}");
        assert_eq!(c["protocol"], "5.0", "{c}");
        assert_eq!(c["keep_alive_secs"], 30, "{c}");
        assert_eq!(c["inflight"], 0, "{c}");
        assert_eq!(c["queued"], 0, "{c}");
        let peer: SocketAddr = c["peer"].as_str().unwrap().parse().unwrap();
        assert!(peer.ip().is_loopback(), "{c}");
    }

    let sessions = list_all(&broker, "sessions", 100);
    for id in &names {
        let s = sessions
            .iter()
            .find(|s| s["client_id"] == id.as_str())
            .unwrap();
        assert_eq!(s["connected"], true, "{s}");
        assert_eq!(s["subscriptions"], 2, "{s}");
    }

    let subs = list_all(&broker, "subscriptions", 100);
    for id in &names {
        let own = format!("own/{id}");
        let of: Vec<&Value> = subs
            .iter()
            .filter(|s| s["client_id"] == id.as_str())
            .collect();
        assert_eq!(of.len(), 2, "{of:?}");
        assert!(
            of.iter().any(|s| s["filter"] == own.as_str()
                && s["share_group"].is_null()
                && s["qos"] == 1),
            "{of:?}"
        );
        assert!(
            of.iter()
                .any(|s| s["filter"] == "shared/#" && s["share_group"] == "grp"),
            "{of:?}"
        );
    }

    let retained = list_all(&broker, "retained", 100);
    for i in 0..5 {
        let topic = format!("kept/{i}");
        let r = retained
            .iter()
            .find(|r| r["topic"] == topic.as_str())
            .unwrap();
        assert_eq!(r["payload_bytes"], i + 1, "{r}");
        assert_eq!(r["qos"], 1, "{r}");
    }
    drop(clients);
}

#[test]
fn pages_cover_every_item_exactly_once() {
    let broker = admin_broker(2);
    let names = common::names("pager", 23);
    let clients: Vec<Mqtt> = names
        .iter()
        .map(|id| {
            let c = Mqtt::connect(broker.mqtt, id, None, 0, true);
            c.subscribe(&format!("a/{id}"));
            c.subscribe(&format!("b/{id}"));
            c
        })
        .collect();
    for i in 0..9 {
        publish_retained(broker.mqtt, &format!("page/{i}"), "v");
    }
    let expected: BTreeSet<String> = names.iter().cloned().collect();
    for limit in [1, 3, 7, 1000] {
        let sessions = ids(&list_all(&broker, "sessions", limit));
        let unique: HashSet<&String> = sessions.iter().collect();
        assert_eq!(
            unique.len(),
            sessions.len(),
            "limit {limit}: a session twice: {sessions:?}"
        );
        let got: BTreeSet<String> = sessions
            .iter()
            .filter(|i| i.starts_with("pager-"))
            .cloned()
            .collect();
        assert_eq!(got, expected, "limit {limit}");

        let subs = list_all(&broker, "subscriptions", limit);
        let pairs: Vec<(String, String)> = subs
            .iter()
            .map(|s| {
                (
                    s["client_id"].as_str().unwrap().into(),
                    s["filter"].as_str().unwrap().into(),
                )
            })
            .collect();
        let unique: HashSet<&(String, String)> = pairs.iter().collect();
        assert_eq!(unique.len(), pairs.len(), "limit {limit}: {pairs:?}");
        assert_eq!(
            pairs
                .iter()
                .filter(|(c, _)| c.starts_with("pager-"))
                .count(),
            2 * names.len(),
            "limit {limit}"
        );

        let retained: Vec<String> = list_all(&broker, "retained", limit)
            .iter()
            .map(|r| r["topic"].as_str().unwrap().to_string())
            .collect();
        let unique: HashSet<&String> = retained.iter().collect();
        assert_eq!(unique.len(), retained.len(), "limit {limit}: {retained:?}");
        assert_eq!(retained.len(), 9, "limit {limit}: {retained:?}");
    }
    let (status, _) = http(
        broker.metrics,
        "GET",
        "/admin/sessions?after=nonsense",
        Some(KEY),
    );
    assert_eq!(status, 400);
    let (status, _) = http(broker.metrics, "GET", "/admin/sessions?limit=0", Some(KEY));
    assert_eq!(status, 400);
    drop(clients);
}

#[test]
fn access_needs_the_key_and_the_api_is_off_by_default() {
    let broker = admin_broker(1);
    assert_eq!(http(broker.metrics, "GET", "/admin/clients", None).0, 401);
    assert_eq!(
        http(
            broker.metrics,
            "GET",
            "/admin/clients",
            Some("admin-test-key-0123456780")
        )
        .0,
        401
    );
    assert_eq!(
        http(broker.metrics, "GET", "/admin/clients", Some(KEY)).0,
        200
    );
    assert_eq!(
        http(broker.metrics, "DELETE", "/admin/clients?client_id=x", None).0,
        401
    );

    let off = start(1, &[], None);
    let (status, body) = http(off.metrics, "GET", "/admin/clients", Some(KEY));
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        http(off.metrics, "DELETE", "/admin/sessions?client_id=x", None).0,
        404
    );
    // /metrics is unaffected.
    assert_eq!(off.http_get("/metrics").0, 200);

    let local = start(1, &[("ADMIN_LOCALHOST_ONLY", "true")], None);
    assert_eq!(http(local.metrics, "GET", "/admin/sessions", None).0, 200);
}

#[test]
fn kick_disconnects_the_client_with_administrative_action() {
    use common::raw::{disconnect_reason, Conn, Connect};
    let broker = admin_broker(2);
    // The raw client: rumqttc reports the close, not the DISCONNECT read just before it.
    let (mut victim, _) = Conn::connect(broker.mqtt, &Connect::v5("victim"));
    let bystander = Mqtt::connect(broker.mqtt, "bystander", None, 0, true);
    let (status, body) = http(
        broker.metrics,
        "DELETE",
        "/admin/clients?client_id=victim",
        Some(KEY),
    );
    assert_eq!(status, 200, "{body}");
    let seen = victim.expect_closed(WAIT);
    let last = seen.last().expect("DISCONNECT before the close");
    assert_eq!(disconnect_reason(last), 0x98, "Administrative action");
    assert!(eventually(WAIT, || {
        let clients = ids(&list_all(&broker, "clients", 100));
        !clients.contains(&"victim".to_string()) && clients.contains(&"bystander".to_string())
    }));
    let (status, _) = http(
        broker.metrics,
        "DELETE",
        "/admin/clients?client_id=victim",
        Some(KEY),
    );
    assert_eq!(status, 404, "a client not connected is not found");
    drop(bystander);
}

#[test]
fn deleted_sessions_stay_deleted_across_a_restart() {
    let dir = temp_dir();
    let mut broker = start(2, &[("ADMIN_KEY", KEY)], Some(dir.path().to_path_buf()));
    for id in ["gone-now", "gone-later", "kept"] {
        let c = Mqtt::connect(broker.mqtt, id, None, 600, false);
        c.subscribe(&format!("s/{id}"));
        c.disconnect();
    }
    assert!(eventually(WAIT, || {
        let sessions = list_all(&broker, "sessions", 100);
        sessions.iter().filter(|s| s["connected"] == false).count() == 3
    }));
    for id in ["gone-now", "gone-later"] {
        let (status, body) = http(
            broker.metrics,
            "DELETE",
            &format!("/admin/sessions?client_id={id}"),
            Some(KEY),
        );
        assert_eq!(status, 200, "{body}");
    }
    let left = ids(&list_all(&broker, "sessions", 100));
    assert_eq!(left, vec!["kept".to_string()]);
    let (again, present) = Mqtt::session_present(broker.mqtt, "gone-now");
    assert!(!present, "a deleted session is not resumed");
    // Without a session of its own to resume it now has a fresh one: end it so the
    // restart below has only what the test left.
    drop(again);

    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some());
    let broker = start(2, &[("ADMIN_KEY", KEY)], Some(dir.path().to_path_buf()));
    let (_later, present) = Mqtt::session_present(broker.mqtt, "gone-later");
    assert!(!present, "a deleted session came back after a restart");
    let (_kept, present) = Mqtt::session_present(broker.mqtt, "kept");
    assert!(present, "the session not deleted is restored");
}

#[test]
fn deleted_retained_messages_stay_deleted_across_a_restart() {
    let dir = temp_dir();
    let mut broker = start(2, &[("ADMIN_KEY", KEY)], Some(dir.path().to_path_buf()));
    publish_retained(broker.mqtt, "ret/gone", "old");
    publish_retained(broker.mqtt, "ret/kept", "still");
    let (status, body) = http(
        broker.metrics,
        "DELETE",
        "/admin/retained?topic=ret%2Fgone",
        Some(KEY),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        broker.metrics,
        "DELETE",
        "/admin/retained?topic=ret%2Fnone",
        Some(KEY),
    );
    assert_eq!(status, 404);

    let check = |broker: &Broker, id: &str| {
        let sub = Mqtt::connect(broker.mqtt, id, None, 0, true);
        sub.subscribe("ret/#");
        let got = sub.publishes(Duration::from_secs(1));
        assert_eq!(got, vec![("ret/kept".to_string(), b"still".to_vec())]);
        let topics: Vec<Value> = list_all(broker, "retained", 100);
        assert_eq!(topics.len(), 1, "{topics:?}");
    };
    check(&broker, "sub-before");

    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some());
    let broker = start(2, &[("ADMIN_KEY", KEY)], Some(dir.path().to_path_buf()));
    check(&broker, "sub-after");
}

#[test]
fn the_cli_lists_and_acts() {
    let broker = admin_broker(2);
    let _client = Mqtt::connect(broker.mqtt, "cli-client", Some("carol"), 0, true);
    publish_retained(broker.mqtt, "cli/topic", "v");
    let url = format!("http://{}", broker.metrics);
    let run = |args: &[&str], key: Option<&str>| {
        let mut cmd = shardmq();
        cmd.args(["admin", "--url", &url]).args(args);
        if let Some(key) = key {
            cmd.env("SHARDMQ_ADMIN_KEY", key);
        }
        let out = cmd.output().expect("run shardmq admin");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["clients"], Some(KEY));
    assert_eq!(code, Some(0), "{err}");
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("CLIENT_ID") && header.contains("USER"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli-client") && l.contains("carol")),
        "{out}"
    );

    let (code, out, err) = run(&["--json", "--page", "1", "sessions"], Some(KEY));
    assert_eq!(code, Some(0), "{err}");
    let sessions: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert!(
        ids(sessions.as_array().unwrap()).contains(&"cli-client".to_string()),
        "{out}"
    );

    let (code, out, _) = run(&["retained"], Some(KEY));
    assert_eq!(code, Some(0));
    assert!(out.contains("cli/topic"), "{out}");
    let (code, _, err) = run(&["delete-retained", "cli/topic"], Some(KEY));
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = run(&["retained"], Some(KEY));
    assert!(!out.contains("cli/topic"), "{out}");

    let (code, _, err) = run(&["kick", "cli-client"], Some(KEY));
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["kick", "nobody-here"], Some(KEY));
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");

    let (code, _, err) = run(&["clients"], Some("wrong-key-0123456789"));
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
}
