//! Authorization, black-box: a real broker with users and ACL rules in its config file,
//! driven by rumqttc (an independent client) and the raw test client (for exact reason
//! codes). Each test says what an unauthorized client must not get.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::raw::{Conn, Connect, Props, Publish, Will, PUBACK, PUBREC, WAIT};
use common::{cheap_hash, eventually, run_shardmq, temp_dir, Broker, BrokerOptions};

/// How long a message that must not arrive is given to arrive anyway.
const GRACE: Duration = Duration::from_millis(700);

/// Users alice, bob and carol (password = name + "-pw") and these settings and rules.
fn config(settings: &str, rules: &str) -> String {
    let mut text = format!("allow_anonymous = false\n{settings}\n");
    for name in ["alice", "bob", "carol"] {
        text.push_str(&format!(
            "\n[[users]]\nusername = \"{name}\"\npassword_hash = \"{}\"\n",
            cheap_hash(&format!("{name}-pw"))
        ));
    }
    text + rules
}

fn start(config: &str) -> (Broker, tempfile::TempDir) {
    let dir = temp_dir();
    let broker = start_in(&dir, config);
    (broker, dir)
}

/// A broker with `config`, its data in `dir/data` (kept across restarts).
fn start_in(dir: &tempfile::TempDir, config: &str) -> Broker {
    let file = dir.path().join("acl.toml");
    std::fs::write(&file, config).expect("write config");
    Broker::start_with(BrokerOptions {
        args: vec!["--config".into(), file.to_str().expect("utf-8").into()],
        data_dir: Some(dir.path().join("data")),
        ..BrokerOptions::default()
    })
}

/// alice may do anything but touch `secret/`; bob reads `public/`, owns `users/bob/`;
/// everything else is denied.
const RULES: &str = r##"
[[acl]]
username = "alice"
topic = "#"
access = "readwrite"

[[acl]]
topic = "secret/#"
access = "deny"

[[acl]]
topic = "users/%u/#"
access = "readwrite"

[[acl]]
username = "bob"
topic = "public/#"
access = "read"
"##;

fn login(level5: bool, id: &str, user: &str) -> Connect {
    let c = if level5 {
        Connect::v5(id)
    } else {
        Connect::v4(id)
    };
    c.login(user, &format!("{user}-pw"))
}

fn denied(broker: &Broker, action: &str) -> f64 {
    broker.metric_sum_labelled("shardmq_acl_denied_total", &format!("action=\"{action}\""))
}

/// A rumqttc 3.1.1 client logged in as `user`, and what it receives.
fn rumqttc_client(
    addr: SocketAddr,
    id: &str,
    user: &str,
) -> (rumqttc::Client, mpsc::Receiver<(String, bool)>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_credentials(user, format!("{user}-pw"));
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.retain)).is_err() {
                        return;
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) => {
                    let codes = format!("suback:{:?}", ack.return_codes);
                    if tx.send((codes, false)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, rx)
}

/// Topics received until `marker` arrives (within `WAIT`), then during `GRACE`.
fn received_through(rx: &mpsc::Receiver<(String, bool)>, marker: &str) -> Vec<(String, bool)> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|(t, _)| t == marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(item) => seen.push(item),
            Err(_) => panic!("{marker} never arrived; saw {seen:?}"),
        }
    }
    while let Ok(item) = rx.recv_timeout(GRACE) {
        seen.push(item);
    }
    seen
}

#[test]
fn subscribe_to_a_denied_filter_is_refused() {
    let (broker, _dir) = start(&config("acl_default = \"deny\"", RULES));
    let (mut v5, _) = Conn::connect(broker.mqtt, &login(true, "bob-5", "bob"));
    let codes = v5.subscribe_with(
        &[
            ("private/#", 1),
            ("public/#", 1),
            ("secret/#", 0),
            ("users/bob/+", 1),
        ],
        Props::new(),
    );
    assert_eq!(codes, vec![0x87, 1, 0x87, 1], "v5 SUBACK");
    let (mut v4, _) = Conn::connect(broker.mqtt, &login(false, "bob-4", "bob"));
    let codes = v4.subscribe_with(&[("private/#", 1), ("users/alice/#", 0)], Props::new());
    assert_eq!(codes, vec![0x80, 0x80], "3.1.1 SUBACK");
    // rumqttc sees the refusal too.
    let (client, rx) = rumqttc_client(broker.mqtt, "bob-r", "bob");
    client
        .subscribe("users/carol/#", rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    let (ack, _) = rx.recv_timeout(WAIT).expect("SUBACK");
    assert!(ack.contains("Failure"), "{ack}");
    assert_eq!(denied(&broker, "subscribe"), 5.0);
}

#[test]
fn wildcard_subscriber_never_gets_a_forbidden_topic_nor_its_retained_message() {
    let (broker, _dir) = start(&config("acl_default = \"deny\"", RULES));
    let (mut alice, _) = Conn::connect(broker.mqtt, &login(true, "alice-1", "alice"));
    let retained = |topic: &str| Publish::new(topic, b"kept", 1).retain(true);
    assert_eq!(alice.publish(retained("users/alice/diary")), 0);
    assert_eq!(alice.publish(retained("public/news")), 0);

    // bob may read public/ and users/bob/ only: `#` is partly readable, so granted.
    let (bob, rx) = rumqttc_client(broker.mqtt, "bob-1", "bob");
    bob.subscribe("#", rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    let seen = received_through(&rx, "public/news");
    assert!(seen.contains(&("public/news".into(), true)), "{seen:?}");
    assert!(
        !seen.iter().any(|(t, _)| t.starts_with("users/alice")),
        "retained message of a forbidden topic delivered: {seen:?}"
    );

    // Live: forbidden topics before and after a readable one.
    for topic in ["users/alice/x", "other/y", "users/alice/z"] {
        assert_eq!(alice.publish(Publish::new(topic, b"no", 1)), 0);
    }
    assert_eq!(alice.publish(Publish::new("public/marker", b"yes", 1)), 0);
    let seen = received_through(&rx, "public/marker");
    let forbidden: Vec<_> = seen
        .iter()
        .filter(|(t, _)| !t.starts_with("public/") && !t.starts_with("suback"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "forbidden topics delivered: {forbidden:?}"
    );
    // The forbidden ones did reach bob's connection and were refused there.
    assert!(
        eventually(WAIT, || denied(&broker, "deliver") >= 4.0),
        "deliver denials: {}",
        denied(&broker, "deliver")
    );
}

#[test]
fn publish_denied_gets_0x87_and_is_not_delivered() {
    let (broker, _dir) = start(&config("acl_default = \"deny\"", RULES));
    let (mut alice, _) = Conn::connect(broker.mqtt, &login(true, "alice-1", "alice"));
    alice.sub("public/#", 1);
    alice.sub("users/#", 1);

    let (mut bob, _) = Conn::connect(broker.mqtt, &login(true, "bob-5", "bob"));
    assert_eq!(
        bob.publish(Publish::new("public/x", b"q1", 1)),
        0x87,
        "PUBACK"
    );
    bob.auto_pubrel = false;
    let pid = bob.pid();
    bob.send(&Publish::new("public/x", b"q2", 2).pid(pid).encode(true));
    assert_eq!(bob.expect_ack(PUBREC, pid), 0x87, "PUBREC");
    bob.pub0("public/x", b"q0");
    // 3.1.1: acked as usual (acl_publish_denied_v3 = "drop"), never delivered.
    let (mut bob4, _) = Conn::connect(broker.mqtt, &login(false, "bob-4", "bob"));
    let pid = bob4.pid();
    bob4.send(&Publish::new("public/x", b"v4", 1).pid(pid).encode(false));
    assert_eq!(bob4.expect_ack(PUBACK, pid), 0);
    // What bob may write arrives.
    assert_eq!(bob.publish(Publish::new("users/bob/ok", b"ok", 1)), 0);
    let got = alice.expect_publish();
    assert_eq!(
        got.topic, "users/bob/ok",
        "denied publish delivered: {got:?}"
    );
    alice.assert_no_publish(GRACE);
    assert_eq!(denied(&broker, "publish"), 4.0);
}

/// Topics a raw client receives until `marker` (within `WAIT`), then during `GRACE`.
fn topics_through(conn: &mut Conn, marker: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|t| t == marker) {
        match conn.try_publish(WAIT) {
            Some(p) => seen.push(p.topic),
            None => panic!("{marker} never arrived; saw {seen:?}"),
        }
    }
    seen.extend(conn.drain_publishes(GRACE).into_iter().map(|p| p.topic));
    seen
}

#[test]
fn queued_and_restored_sessions_are_checked_for_their_reader() {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let config = config("acl_default = \"deny\"", RULES);
    let mut broker = start_in(&dir, &config);
    let persistent = || login(false, "bob-p", "bob").clean(false);
    let (mut bob, _) = Conn::connect(broker.mqtt, &persistent());
    bob.sub("#", 1);
    drop(bob);
    let (mut alice, _) = Conn::connect(broker.mqtt, &login(true, "alice-1", "alice"));
    let publish_pair = |alice: &mut Conn, n: u32| {
        let forbidden = format!("users/alice/{n}");
        assert_eq!(alice.publish(Publish::new(&forbidden, b"no", 1)), 0);
        let readable = format!("public/{n}");
        assert_eq!(alice.publish(Publish::new(&readable, b"yes", 1)), 0);
    };
    // Queued while bob is offline.
    publish_pair(&mut alice, 1);
    let (mut bob, ack) = Conn::connect(broker.mqtt, &persistent());
    assert!(ack.session_present);
    let got = topics_through(&mut bob, "public/1");
    assert!(
        !got.iter().any(|t| t.starts_with("users/")),
        "offline queue: {got:?}"
    );
    drop(bob);
    // Published while bob is offline, then the broker restarts: the session and what it
    // missed come back from the log.
    publish_pair(&mut alice, 2);
    drop(alice);
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(WAIT * 2).is_some(), "stopped");
    drop(broker);
    let broker = start_in(&dir, &config);
    let (mut bob, ack) = Conn::connect(broker.mqtt, &persistent());
    assert!(ack.session_present, "restored session");
    let got = topics_through(&mut bob, "public/2");
    assert!(
        !got.iter().any(|t| t.starts_with("users/")),
        "restored: {got:?}"
    );
    assert!(denied(&broker, "deliver") >= 1.0);
}

#[test]
fn v3_publish_denied_can_disconnect() {
    let settings = "acl_default = \"deny\"\nacl_publish_denied_v3 = \"disconnect\"";
    let (broker, _dir) = start(&config(settings, RULES));
    let (mut bob, _) = Conn::connect(broker.mqtt, &login(false, "bob-4", "bob"));
    bob.send(&Publish::new("public/x", b"no", 1).pid(1).encode(false));
    assert!(
        matches!(bob.recv(WAIT), common::raw::Recv::Closed),
        "connection closed"
    );
}

#[test]
fn will_on_a_forbidden_topic_is_not_published() {
    let (broker, _dir) = start(&config("acl_default = \"deny\"", RULES));
    let (mut alice, _) = Conn::connect(broker.mqtt, &login(true, "alice-1", "alice"));
    alice.sub("public/#", 1);
    alice.sub("users/bob/#", 1);
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: b"gone".to_vec(),
        qos: 1,
        ..Will::default()
    };
    // bob may not write public/: the will is dropped; dying abruptly publishes nothing.
    let (bob, _) = Conn::connect(
        broker.mqtt,
        &login(true, "bob-a", "bob").will(will("public/will")),
    );
    drop(bob);
    // The same will on a topic bob may write is published: the check, not the setup.
    let (bob, _) = Conn::connect(
        broker.mqtt,
        &login(true, "bob-b", "bob").will(will("users/bob/will")),
    );
    drop(bob);
    let got = alice.expect_publish();
    assert_eq!(
        got.topic, "users/bob/will",
        "forbidden will published: {got:?}"
    );
    alice.assert_no_publish(GRACE);
    assert_eq!(denied(&broker, "will"), 1.0);
}

#[test]
fn client_id_ownership_refuses_a_takeover() {
    let settings = "client_id_owner = \"username_prefix\"";
    let (broker, _dir) = start(&config(settings, ""));
    let (mut bob, _) = Conn::connect(broker.mqtt, &login(true, "bob-phone", "bob"));
    bob.sub("t", 0);
    // alice reusing bob's client id is refused, in both protocols, and bob stays on.
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login(true, "bob-phone", "alice"));
    assert_eq!(ack.code, 0x87, "v5 CONNACK");
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login(false, "bob-phone", "alice"));
    assert_eq!(ack.code, 5, "3.1.1 CONNACK");
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login(true, "bob", "carol"));
    assert_eq!(ack.code, 0x87, "a bare username is its user's id");
    let (mut alice, _) = Conn::connect(broker.mqtt, &login(true, "alice-laptop", "alice"));
    alice.pub0("t", b"still here");
    assert_eq!(bob.expect_publish().payload, b"still here");
    // bob himself takes his session over as usual.
    Conn::connect(broker.mqtt, &login(true, "bob-phone", "bob"));
    assert_eq!(denied(&broker, "connect"), 3.0);
}

#[test]
fn mosquitto_acl_file_is_imported() {
    let dir = temp_dir();
    let acl_file = dir.path().join("acl");
    std::fs::write(
        &acl_file,
        "# mosquitto format\nuser bob\ntopic read public/#\ntopic deny public/secret\n\
         pattern readwrite users/%u/#\n",
    )
    .expect("write acl file");
    let settings = format!(
        "acl_default = \"deny\"\nacl_file = \"{}\"",
        acl_file.display()
    );
    let (broker, _dir) = start(&config(&settings, ""));
    let (mut bob, _) = Conn::connect(broker.mqtt, &login(true, "bob-1", "bob"));
    let codes = bob.subscribe_with(
        &[
            ("public/secret", 0),
            ("public/#", 0),
            ("users/alice/#", 0),
            ("users/bob/#", 0),
        ],
        Props::new(),
    );
    assert_eq!(codes, vec![0x87, 0, 0x87, 0]);
    assert_eq!(bob.publish(Publish::new("public/a", b"x", 1)), 0x87);
    assert_eq!(bob.publish(Publish::new("users/bob/a", b"x", 1)), 0);
}

#[test]
fn invalid_rules_name_the_field_and_exit_2() {
    let dir = temp_dir();
    let cases = [
        (
            "[[acl]]\ntopic = \"a/#/b\"\naccess = \"read\"\n",
            "acl[0].topic",
        ),
        (
            "[[acl]]\ntopic = \"a\"\naccess = \"read\"\n\n[[acl]]\ntopic = \"a\"\naccess = \"reed\"\n",
            "acl[1].access",
        ),
        (
            "[[acl]]\nusername = \"a\"\nanonymous = true\ntopic = \"a\"\naccess = \"read\"\n",
            "acl[0]",
        ),
        ("acl_default = \"maybe\"\n", "acl_default"),
        ("acl_file = \"/nonexistent/acl\"\n", "acl_file"),
    ];
    for (text, key) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).expect("write config");
        let (code, _, stderr) = run_shardmq(
            &["--config", file.to_str().expect("utf-8"), "--print-config"],
            &[],
            dir.path(),
        );
        assert_eq!(code, Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{key}: {stderr}");
    }
    let mosquitto = dir.path().join("bad.acl");
    std::fs::write(&mosquitto, "user a\ntopic read ok\nbogus line\n").expect("write");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, format!("acl_file = \"{}\"\n", mosquitto.display())).expect("write");
    let (code, _, stderr) = run_shardmq(
        &["--config", file.to_str().expect("utf-8"), "--print-config"],
        &[],
        dir.path(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}
