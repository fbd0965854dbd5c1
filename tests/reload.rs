//! Live reload, black-box: a real broker started with a config file; the file is changed
//! and the broker sent SIGHUP (or `shardmq reload`); independent clients then check that
//! users, ACL rules and the TLS certificate changed, that existing connections were kept
//! (or, for a removed user, closed, as mosquitto does) and that a broken file changed
//! nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{disconnect_reason, Conn, Connect, Publish, Recv, DISCONNECT, PINGRESP, WAIT};
use common::{eventually, run_shardmq, temp_dir, Broker, BrokerOptions};

/// How long a message that must not arrive is given to arrive anyway.
const GRACE: Duration = Duration::from_millis(700);

/// `common::cheap_hash`, but the same one for the same password: a changed hash would
/// end the user's connections at a reload.
fn same_hash(password: &str) -> String {
    static HASHES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let mut hashes = HASHES.lock().unwrap();
    let hash = hashes
        .entry(password.to_string())
        .or_insert_with(|| common::cheap_hash(password));
    hash.clone()
}

/// `settings`, then these users (password = name + "-pw"), then `rules`.
fn config(settings: &str, users: &[&str], rules: &str) -> String {
    let mut text = format!("allow_anonymous = false\n{settings}\n");
    for name in users {
        text.push_str(&format!(
            "\n[[users]]\nusername = \"{name}\"\npassword_hash = \"{}\"\n",
            same_hash(&format!("{name}-pw"))
        ));
    }
    text + rules
}

/// A broker reading `dir/broker.toml`, written with `text` first.
fn start(dir: &Path, text: &str) -> Broker {
    let file = dir.join("broker.toml");
    std::fs::write(&file, text).expect("write config");
    Broker::start_with(BrokerOptions {
        args: vec!["--config".into(), file.to_str().expect("utf-8").into()],
        data_dir: Some(dir.join("data")),
        ..BrokerOptions::default()
    })
}

/// Rewrites the config file and sends SIGHUP; waits until the reload counted as `result`
/// reaches `count`.
fn reload(broker: &Broker, dir: &Path, text: &str, result: &str, count: f64) {
    std::fs::write(dir.join("broker.toml"), text).expect("write config");
    broker.signal(libc::SIGHUP);
    wait_reloads(broker, result, count);
}

fn reloads(broker: &Broker, result: &str) -> f64 {
    broker
        .metric(&format!(
            "shardmq_config_reloads_total{{result=\"{result}\"}}"
        ))
        .unwrap_or(0.0)
}

fn wait_reloads(broker: &Broker, result: &str, count: f64) {
    assert!(
        eventually(WAIT, || reloads(broker, result) >= count),
        "reload {result} never counted {count}; ok={} failed={}",
        reloads(broker, "ok"),
        reloads(broker, "failed")
    );
}

/// The broker's log comes to contain `text` (it is read from its stderr as it comes).
fn logged(broker: &Broker, text: &str) {
    assert!(
        eventually(WAIT, || broker.log().contains(text)),
        "the log never said {text:?}:\n{}",
        broker.log()
    );
}

fn login(id: &str, user: &str) -> Connect {
    Connect::v5(id).login(user, &format!("{user}-pw"))
}

/// The connection still answers a PINGREQ.
fn still_connected(conn: &mut Conn) {
    conn.ping();
    conn.expect_kind(PINGRESP);
}

/// A new user can log in after a reload and a removed one cannot; the removed user's
/// open connection is closed (v5: DISCONNECT 0x87 Not authorized) while another user's
/// stays. A changed key that needs a restart is logged and ignored.
#[test]
fn users_added_and_removed_by_a_reload() {
    let dir = temp_dir();
    let broker = start(dir.path(), &config("", &["alice", "bob"], ""));
    let (mut alice, _) = Conn::connect(broker.mqtt, &login("alice-1", "alice"));
    let (mut bob, _) = Conn::connect(broker.mqtt, &login("bob-1", "bob"));
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login("carol-1", "carol"));
    assert_eq!(ack.code, 0x86, "carol is not a user yet");

    let changed = config("connections_max = 77", &["alice", "carol"], "");
    reload(&broker, dir.path(), &changed, "ok", 1.0);

    let (_, ack) = Conn::connect_raw(broker.mqtt, &login("carol-2", "carol"));
    assert_eq!(ack.code, 0, "carol was added");
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login("bob-2", "bob"));
    assert_eq!(ack.code, 0x86, "bob was removed");
    match bob.recv(WAIT) {
        Recv::Packet(p) if p.kind == DISCONNECT => assert_eq!(disconnect_reason(&p), 0x87),
        Recv::Closed => {}
        other => panic!("bob's connection should have been closed: {other:?}"),
    }
    still_connected(&mut alice);
    logged(&broker, "`connections_max` changed but needs a restart");
    logged(&broker, "configuration reloaded");
}

/// No rules at first: a wildcard subscriber gets everything. A reload that denies
/// `secret/#` (sent with `shardmq reload`) stops deliveries of `secret/` topics to that
/// existing subscription, queued or new, and refuses new subscriptions and publishes to
/// it; other topics still flow.
#[test]
fn a_denied_topic_stops_an_existing_wildcard_subscription() {
    let dir = temp_dir();
    let users = ["alice", "bob"];
    let broker = start(dir.path(), &config("", &users, ""));
    let (mut sub, _) = Conn::connect(broker.mqtt, &login("bob-sub", "bob"));
    assert_eq!(sub.subscribe_with(&[("#", 1)], Default::default()), vec![1]);
    let (mut publisher, _) = Conn::connect(broker.mqtt, &login("alice-pub", "alice"));
    assert_eq!(publisher.publish(Publish::new("secret/a", b"1", 1)), 0);
    assert_eq!(sub.expect_publish().topic, "secret/a", "allowed before");

    let rules = "\n[[acl]]\nusername = \"bob\"\ntopic = \"secret/#\"\naccess = \"deny\"\n";
    std::fs::write(dir.path().join("broker.toml"), config("", &users, rules)).unwrap();
    let data_dir = dir.path().join("data");
    let (code, out, err) = run_shardmq(
        &["--data-dir", data_dir.to_str().unwrap(), "reload"],
        &[],
        dir.path(),
    );
    assert_eq!(code, Some(0), "shardmq reload: {out}{err}");
    wait_reloads(&broker, "ok", 1.0);

    for topic in ["secret/b", "public/x", "secret/c", "public/marker"] {
        assert_eq!(publisher.publish(Publish::new(topic, b"2", 1)), 0);
    }
    let mut seen: Vec<String> = sub
        .drain_publishes(GRACE)
        .into_iter()
        .map(|p| p.topic)
        .collect();
    seen.sort();
    assert_eq!(seen, vec!["public/marker", "public/x"], "secret/ no more");

    let (mut bob, _) = Conn::connect(broker.mqtt, &login("bob-2", "bob"));
    let codes = bob.subscribe_with(&[("secret/#", 1), ("public/#", 1)], Default::default());
    assert_eq!(codes, vec![0x87, 1], "new SUBSCRIBE under the new rules");
    assert_eq!(bob.publish(Publish::new("secret/z", b"3", 1)), 0x87);
    assert_eq!(
        sub.publish(Publish::new("secret/y", b"3", 1)),
        0x87,
        "the existing connection publishes under the new rules too"
    );
    assert_eq!(reloads(&broker, "failed"), 0.0);
}

/// Unparseable TOML, then a bad password hash, then a missing certificate: each reload
/// is refused with a log line naming the file or key, counted as failed, and the old
/// users and rules stay in force.
#[test]
fn a_broken_file_leaves_the_old_settings() {
    let dir = temp_dir();
    let good = config("", &["alice"], "");
    let broker = start(dir.path(), &good);
    let (mut alice, _) = Conn::connect(broker.mqtt, &login("alice-1", "alice"));

    reload(
        &broker,
        dir.path(),
        "allow_anonymous = [oops",
        "failed",
        1.0,
    );
    let file = dir.path().join("broker.toml");
    logged(&broker, "reload refused");
    logged(&broker, file.to_str().unwrap());

    let bad_hash =
        format!("{good}\n[[users]]\nusername = \"mallory\"\npassword_hash = \"plain\"\n");
    reload(&broker, dir.path(), &bad_hash, "failed", 2.0);
    logged(&broker, "user \\\"mallory\\\"");

    let missing = format!("acl_file = {:?}\n{good}", dir.path().join("nowhere.acl"));
    reload(&broker, dir.path(), &missing, "failed", 3.0);
    logged(&broker, "nowhere.acl");

    assert_eq!(reloads(&broker, "ok"), 0.0);
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login("alice-2", "alice"));
    assert_eq!(ack.code, 0, "the old user still logs in");
    let (_, ack) = Conn::connect_raw(broker.mqtt, &login("mallory-1", "mallory"));
    assert_eq!(ack.code, 0x86);
    still_connected(&mut alice);
}

/// A server certificate for 127.0.0.1 with common name `cn`, signed by `ca`, written as
/// `dir/cn.pem` and `dir/cn.key`.
fn server_cert(
    dir: &Path,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    cn: &str,
) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.0, &ca.1).expect("sign");
    let paths = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    paths
}

/// The common name of the certificate the server at `addr` presents, verified with rustls
/// against `ca_pem`.
fn served_cn(addr: std::net::SocketAddr, ca_pem: &[u8]) -> String {
    use futures_rustls::rustls;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).expect("handshake");
    }
    let der = tls.peer_certificates().expect("server certificate")[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let cn = cert.subject().iter_common_name().next().expect("CN");
    cn.as_str().expect("utf-8 CN").to_string()
}

/// After a reload with a new certificate and key (written over the old files), new TLS
/// connections get the new certificate while an existing TLS connection keeps working.
#[test]
fn a_new_certificate_is_served_to_new_connections() {
    let dir = temp_dir();
    let ca = {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "reload CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        (params.self_signed(&key).expect("CA"), key)
    };
    let ca_pem = ca.0.pem().into_bytes();
    let first = server_cert(dir.path(), &ca, "first");
    let second = server_cert(dir.path(), &ca, "second");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::copy(&first.0, &cert).unwrap();
    std::fs::copy(&first.1, &key).unwrap();
    let text = format!(
        "allow_anonymous = true\nmqtts_listen = \"127.0.0.1:0\"\ntls_cert_file = {cert:?}\n\
         tls_key_file = {key:?}\n"
    );
    let broker = start(dir.path(), &text);
    let tls = broker.mqtts.expect("mqtts_listen");
    assert_eq!(served_cn(tls, &ca_pem), "first");

    let mut opts = rumqttc::MqttOptions::new("kept", "127.0.0.1", tls.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_transport(rumqttc::Transport::tls(ca_pem.clone(), None, None));
    let (client, mut connection) = rumqttc::Client::new(opts, 16);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            let stop = event.is_err();
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = &event {
                let _ = tx.send(p.topic.clone());
            }
            if stop {
                let _ = tx.send(format!("error: {event:?}"));
                return;
            }
        }
    });
    client.subscribe("t/#", rumqttc::QoS::AtLeastOnce).unwrap();
    client
        .publish("t/before", rumqttc::QoS::AtLeastOnce, false, "x")
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).expect("t/before"), "t/before");

    std::fs::copy(&second.0, &cert).unwrap();
    std::fs::copy(&second.1, &key).unwrap();
    broker.signal(libc::SIGHUP);
    wait_reloads(&broker, "ok", 1.0);
    assert_eq!(served_cn(tls, &ca_pem), "second");

    client
        .publish("t/after", rumqttc::QoS::AtLeastOnce, false, "x")
        .unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).expect("t/after"),
        "t/after",
        "the TLS connection made before the reload still works"
    );

    // A key that does not fit the certificate is refused; the second one stays.
    std::fs::copy(&first.1, &key).unwrap();
    broker.signal(libc::SIGHUP);
    wait_reloads(&broker, "failed", 1.0);
    logged(&broker, "tls_key_file");
    assert_eq!(served_cn(tls, &ca_pem), "second");
}

/// Only the mosquitto-format `acl_file` changes (the config file does not): the reload
/// reads it again, and bob's existing `#` subscription narrows to what it now grants.
#[test]
fn a_changed_acl_file_alone_is_reloaded() {
    let dir = temp_dir();
    let acl_file = dir.path().join("broker.acl");
    let grants =
        |bob: &str| format!("user alice\ntopic readwrite #\n\nuser bob\ntopic read {bob}\n");
    std::fs::write(&acl_file, grants("#")).unwrap();
    let settings = format!("acl_default = \"deny\"\nacl_file = {acl_file:?}");
    let broker = start(dir.path(), &config(&settings, &["alice", "bob"], ""));
    let (mut bob, _) = Conn::connect(broker.mqtt, &login("bob-1", "bob"));
    assert_eq!(bob.subscribe_with(&[("#", 1)], Default::default()), vec![1]);
    let (mut alice, _) = Conn::connect(broker.mqtt, &login("alice-1", "alice"));
    assert_eq!(alice.publish(Publish::new("private/a", b"1", 1)), 0);
    assert_eq!(bob.expect_publish().topic, "private/a", "readable before");

    std::fs::write(&acl_file, grants("public/#")).unwrap();
    broker.signal(libc::SIGHUP);
    wait_reloads(&broker, "ok", 1.0);
    for topic in ["private/b", "public/marker"] {
        assert_eq!(alice.publish(Publish::new(topic, b"2", 1)), 0);
    }
    let seen: Vec<String> = bob
        .drain_publishes(GRACE)
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(seen, vec!["public/marker"], "private/ no more");
    let codes = bob.subscribe_with(&[("private/#", 1)], Default::default());
    assert_eq!(codes, vec![0x87]);
}
