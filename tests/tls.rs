//! MQTT over TLS, black-box: a real broker with `mqtts_listen` and certificates made at
//! test time (rcgen), driven by independent clients: rumqttc with rustls, the Mosquitto
//! command-line clients (OpenSSL) and `openssl s_client`. Each refused handshake — a
//! certificate from another CA, an expired one, plaintext MQTT, a stalled handshake — is
//! checked to leave a connected TLS client alone.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{temp_dir, Broker, BrokerOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// How long anything that must happen may take.
const WAIT: Duration = Duration::from_secs(10);

/// A certificate authority: its certificate and key, to sign others with.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// Writes a certificate this CA signs for `params` as `dir/name.pem` and its key as
    /// `dir/name.key`.
    fn issue(&self, dir: &Path, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

/// A client certificate with subject CN `cn`.
fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Everything a test needs: the broker's CA, its server certificate (for 127.0.0.1 and
/// localhost), and client certificates: `alice` (valid), `expired` (CN alice, expired in
/// 2021) and `rogue` (CN alice, signed by another CA).
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    alice: (PathBuf, PathBuf),
    expired: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir();
        let ca = Ca::new("shardmq test CA");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).expect("write CA");

        let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server.distinguished_name = DistinguishedName::new();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = ca.issue(dir.path(), "server", server);

        let alice = ca.issue(dir.path(), "alice", client_params("alice"));
        let mut expired = client_params("alice");
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = ca.issue(dir.path(), "expired", expired);
        let other = Ca::new("another CA");
        let rogue = other.issue(dir.path(), "rogue", client_params("alice"));
        Pki {
            dir,
            ca: ca_path,
            server,
            alice,
            expired,
            rogue,
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read PEM")
    }
}

/// A broker with a TLS listener on a free port, this PKI's server certificate, `settings`
/// (more TOML keys) and `rules` (`[[acl]]` tables, at the end).
fn start(pki: &Pki, settings: &str, rules: &str) -> Broker {
    let file = pki.dir.path().join("tls.toml");
    let text = format!(
        "mqtts_listen = \"127.0.0.1:0\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n{settings}\n{rules}",
        pki.server.0, pki.server.1
    );
    std::fs::write(&file, text).expect("write config");
    Broker::start_with(BrokerOptions {
        args: vec!["--config".into(), file.to_str().expect("utf-8").into()],
        ..BrokerOptions::default()
    })
}

/// mTLS: client certificates from the test CA required, and the certificate's name is
/// the username; no anonymous clients.
fn mtls_settings(pki: &Pki) -> String {
    format!(
        "tls_ca_file = {:?}\ntls_require_certificate = true\nuse_identity_as_username = true\n\
         allow_anonymous = false",
        pki.ca
    )
}

/// What a rumqttc connection saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    ConnAck,
    SubAck(Vec<rumqttc::SubscribeReasonCode>),
    Publish(String, Vec<u8>, rumqttc::QoS),
    PubAck,
    Error(String),
}

/// A rumqttc 3.1.1 client over TLS to `addr` trusting the test CA, presenting
/// `client_cert` (certificate and key files) if given; its events on the receiver. The
/// event loop stops at the first error (no reconnects).
fn tls_client(
    pki: &Pki,
    addr: SocketAddr,
    id: &str,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> (rumqttc::Client, mpsc::Receiver<Seen>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_transport(rumqttc::Transport::tls(
        Pki::read(&pki.ca),
        client_cert.map(|(cert, key)| (Pki::read(cert), Pki::read(key))),
        None,
    ));
    client(opts)
}

/// A rumqttc 3.1.1 client over plain TCP.
fn plain_client(addr: SocketAddr, id: &str) -> (rumqttc::Client, mpsc::Receiver<Seen>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    client(opts)
}

fn client(mut opts: rumqttc::MqttOptions) -> (rumqttc::Client, mpsc::Receiver<Seen>) {
    use rumqttc::{Event, Packet};
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            let seen = match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::ConnAck,
                Ok(Event::Incoming(Packet::SubAck(ack))) => Seen::SubAck(ack.return_codes),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    Seen::Publish(p.topic.clone(), p.payload.to_vec(), p.qos)
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => Seen::PubAck,
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(Seen::Error(e.to_string()));
                    return;
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (client, rx)
}

/// Waits for the first event `want` accepts; panics on an error or after `WAIT`.
fn expect(rx: &mpsc::Receiver<Seen>, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(seen) if want(&seen) => return seen,
            Ok(Seen::Error(e)) => panic!("waiting for {what}: connection failed: {e}"),
            Ok(_) => {}
            Err(_) => panic!("waiting for {what}: nothing within {WAIT:?}"),
        }
    }
}

/// The client's connection must fail without a CONNACK; returns its error.
fn expect_refused(rx: &mpsc::Receiver<Seen>) -> String {
    match rx.recv_timeout(WAIT) {
        Ok(Seen::Error(e)) => e,
        Ok(other) => panic!("expected the connection to fail, got {other:?}"),
        Err(_) => panic!("the connection neither failed nor succeeded within {WAIT:?}"),
    }
}

/// A connected subscriber to `filter` (QoS 1) over TLS.
fn subscriber(
    pki: &Pki,
    addr: SocketAddr,
    id: &str,
    cert: Option<&(PathBuf, PathBuf)>,
    filter: &str,
) -> (rumqttc::Client, mpsc::Receiver<Seen>) {
    let (client, rx) = tls_client(pki, addr, id, cert);
    expect(&rx, "CONNACK", |s| *s == Seen::ConnAck);
    client
        .subscribe(filter, rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    expect(&rx, "SUBACK", |s| matches!(s, Seen::SubAck(_)));
    (client, rx)
}

fn expect_message(rx: &mpsc::Receiver<Seen>, topic: &str, payload: &[u8]) -> rumqttc::QoS {
    match expect(
        rx,
        topic,
        |s| matches!(s, Seen::Publish(t, _, _) if t == topic),
    ) {
        Seen::Publish(_, got, qos) => {
            assert_eq!(got, payload, "payload on {topic}");
            qos
        }
        _ => unreachable!(),
    }
}

/// The connected `client` (subscribed to `t/#`) still gets its own publish to `topic`.
fn still_served(client: &rumqttc::Client, rx: &mpsc::Receiver<Seen>, topic: &str) {
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, b"ok".to_vec())
        .unwrap();
    expect_message(rx, topic, b"ok");
}

/// Opens a TCP connection to `addr`, writes `first`, and reads until the broker closes
/// it (at most `WAIT`): how long that took and what was read.
fn until_closed(addr: SocketAddr, first: &[u8]) -> (Duration, Vec<u8>) {
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(first).expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    (started.elapsed(), answer)
}

/// A publish over TLS reaches a subscriber over TLS at QoS 0 and QoS 1, and one from the
/// plain listener does too: both listeners feed the same broker.
#[test]
fn publish_and_subscribe_over_tls_at_qos0_and_qos1() {
    let pki = Pki::new();
    let broker = start(&pki, "", "");
    let tls = broker.mqtts.expect("the ready line names mqtts_listen");
    assert_ne!(tls, broker.mqtt);

    let (_sub, rx) = subscriber(&pki, tls, "tls-sub", None, "t/#");
    let (publisher, prx) = tls_client(&pki, tls, "tls-pub", None);
    expect(&prx, "CONNACK", |s| *s == Seen::ConnAck);
    publisher
        .publish("t/0", rumqttc::QoS::AtMostOnce, false, b"zero".to_vec())
        .unwrap();
    assert_eq!(
        expect_message(&rx, "t/0", b"zero"),
        rumqttc::QoS::AtMostOnce
    );
    publisher
        .publish("t/1", rumqttc::QoS::AtLeastOnce, false, b"one".to_vec())
        .unwrap();
    expect(&prx, "PUBACK", |s| *s == Seen::PubAck);
    assert_eq!(
        expect_message(&rx, "t/1", b"one"),
        rumqttc::QoS::AtLeastOnce
    );
    // A large message crosses many TLS records both ways.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    publisher
        .publish("t/big", rumqttc::QoS::AtLeastOnce, false, big.clone())
        .unwrap();
    expect_message(&rx, "t/big", &big);

    let (plain, plrx) = plain_client(broker.mqtt, "plain-pub");
    expect(&plrx, "CONNACK", |s| *s == Seen::ConnAck);
    plain
        .publish("t/plain", rumqttc::QoS::AtLeastOnce, false, b"p".to_vec())
        .unwrap();
    expect_message(&rx, "t/plain", b"p");
}

/// With `use_identity_as_username`, the certificate's CN is the user the ACL sees: alice
/// (no username, anonymous clients refused) may use `users/alice/#` and nothing else,
/// and a CONNECT username cannot make her someone else.
#[test]
fn certificate_identity_is_the_username_the_acl_checks() {
    let pki = Pki::new();
    let rules = r#"
[[acl]]
username = "alice"
topic = "users/alice/#"
access = "readwrite"

[[acl]]
username = "bob"
topic = "users/bob/#"
access = "readwrite"
"#;
    let settings = format!("{}\nacl_default = \"deny\"", mtls_settings(&pki));
    let broker = start(&pki, &settings, rules);
    let tls = broker.mqtts.expect("mqtts_listen");

    let (alice, rx) = tls_client(&pki, tls, "alice-1", Some(&pki.alice));
    expect(&rx, "CONNACK", |s| *s == Seen::ConnAck);
    alice
        .subscribe("users/alice/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let granted = expect(&rx, "SUBACK", |s| matches!(s, Seen::SubAck(_)));
    assert_eq!(
        granted,
        Seen::SubAck(vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )])
    );
    alice
        .subscribe("users/bob/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let refused = expect(&rx, "SUBACK", |s| matches!(s, Seen::SubAck(_)));
    assert_eq!(
        refused,
        Seen::SubAck(vec![rumqttc::SubscribeReasonCode::Failure])
    );
    alice
        .publish(
            "users/alice/x",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"hi".to_vec(),
        )
        .unwrap();
    expect_message(&rx, "users/alice/x", b"hi");

    // Claiming to be bob in CONNECT changes nothing: the certificate says alice.
    let mut opts = rumqttc::MqttOptions::new("alice-2", tls.ip().to_string(), tls.port());
    opts.set_credentials("bob", "not-checked");
    opts.set_transport(rumqttc::Transport::tls(
        Pki::read(&pki.ca),
        Some((Pki::read(&pki.alice.0), Pki::read(&pki.alice.1))),
        None,
    ));
    let (posing, prx) = client(opts);
    expect(&prx, "CONNACK", |s| *s == Seen::ConnAck);
    posing
        .subscribe("users/bob/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let refused = expect(&prx, "SUBACK", |s| matches!(s, Seen::SubAck(_)));
    assert_eq!(
        refused,
        Seen::SubAck(vec![rumqttc::SubscribeReasonCode::Failure])
    );

    // Without a certificate there is no identity, and anonymous clients are refused:
    // the handshake itself fails (a certificate is required).
    let (_nobody, nrx) = tls_client(&pki, tls, "nobody", None);
    expect_refused(&nrx);
}

/// A client certificate from another CA, and an expired one from the right CA, fail the
/// handshake (and the log says why); a connected client notices nothing.
#[test]
fn wrong_ca_and_expired_client_certificates_are_refused() {
    let pki = Pki::new();
    let broker = start(&pki, &mtls_settings(&pki), "");
    let tls = broker.mqtts.expect("mqtts_listen");
    let (alice, rx) = subscriber(&pki, tls, "alice-sub", Some(&pki.alice), "t/#");

    let (_rogue, rogue_rx) = tls_client(&pki, tls, "rogue", Some(&pki.rogue));
    let error = expect_refused(&rogue_rx);
    eprintln!("certificate from another CA: {error}");
    let (_expired, expired_rx) = tls_client(&pki, tls, "expired", Some(&pki.expired));
    let error = expect_refused(&expired_rx);
    eprintln!("expired certificate: {error}");

    assert!(
        common::eventually(WAIT, || {
            let log = broker.log();
            log.contains("UnknownIssuer") && log.contains("certificate expired")
        }),
        "the log names both reasons:\n{}",
        broker.log()
    );
    still_served(&alice, &rx, "t/still");
}

/// An MQTT CONNECT in plaintext to the TLS port is closed without a CONNACK; a TLS
/// client connected meanwhile goes on.
#[test]
fn plaintext_mqtt_to_the_tls_port_is_closed() {
    let pki = Pki::new();
    let broker = start(&pki, "", "");
    let tls = broker.mqtts.expect("mqtts_listen");
    let (client, rx) = subscriber(&pki, tls, "tls-sub", None, "t/#");

    // CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "p".
    let connect = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'p',
    ];
    let (open, answer) = until_closed(tls, &connect);
    assert!(open < WAIT, "the plaintext connection stayed open");
    assert!(
        answer.first() != Some(&0x20),
        "plaintext got an MQTT answer: {answer:?}"
    );

    still_served(&client, &rx, "t/after");
}

/// A handshake that stops halfway (a record header, then nothing) is closed at
/// `connect_timeout_ms` from accept, and counted; a TLS client connected meanwhile goes on.
#[test]
fn a_stalled_handshake_is_closed_after_connect_timeout() {
    let pki = Pki::new();
    let broker = start(&pki, "connect_timeout_ms = 1000", "");
    let tls = broker.mqtts.expect("mqtts_listen");
    let (client, rx) = subscriber(&pki, tls, "tls-sub", None, "t/#");

    // A handshake record header announcing 512 bytes that never come; then nothing at all.
    for first in [&[0x16u8, 0x03, 0x01, 0x02, 0x00][..], &[][..]] {
        let (open, _) = until_closed(tls, first);
        assert!(
            open >= Duration::from_millis(800) && open < Duration::from_secs(5),
            "a stalled handshake ({first:?}) was closed after {open:?}, not at connect_timeout_ms"
        );
    }
    assert!(
        common::eventually(WAIT, || broker.metric_sum("shardmq_connect_timeouts_total")
            >= 2.0),
        "both stalls counted as connect timeouts"
    );

    still_served(&client, &rx, "t/after");
}

/// Whether `tool` runs here; in CI (CI set) its absence fails the test instead.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install mosquitto-clients openssl)");
    }
    found
}

/// The Mosquitto clients (OpenSSL underneath) subscribe and publish over mTLS with
/// `--cafile`, `--cert` and `--key`.
#[test]
fn mosquitto_clients_over_mutual_tls() {
    if !have("mosquitto_sub") || !have("mosquitto_pub") {
        return;
    }
    let pki = Pki::new();
    let broker = start(&pki, &mtls_settings(&pki), "");
    let tls = broker.mqtts.expect("mqtts_listen");
    let port = tls.port().to_string();
    let tls_args = |cmd: &mut Command| {
        cmd.args(["-h", "localhost", "-p", &port, "--cafile"])
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.alice.0)
            .arg("--key")
            .arg(&pki.alice.1);
    };
    for (version, qos) in [("mqttv311", "1"), ("mqttv5", "0")] {
        let topic = format!("mosq/{version}");
        let mut sub = Command::new("mosquitto_sub");
        tls_args(&mut sub);
        let mut sub = sub
            .args([
                "-V", version, "-q", qos, "-t", &topic, "-C", "1", "-W", "10",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        // Publish until the subscriber has it (it may not have subscribed yet).
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline && sub.try_wait().expect("try_wait").is_none() {
            let mut publish = Command::new("mosquitto_pub");
            tls_args(&mut publish);
            let out = publish
                .args(["-V", version, "-q", qos, "-t", &topic, "-m", "over-tls"])
                .output()
                .expect("mosquitto_pub");
            assert!(
                out.status.success(),
                "mosquitto_pub over TLS failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = sub.wait_with_output().expect("mosquitto_sub output");
        assert!(
            out.status.success(),
            "mosquitto_sub over TLS failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over-tls");
    }
}

/// `openssl s_client` negotiates TLS 1.2 and TLS 1.3 and verifies the server's chain.
#[test]
fn openssl_negotiates_tls12_and_tls13() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let broker = start(&pki, "", "");
    let tls = broker.mqtts.expect("mqtts_listen");
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &tls.to_string(), flag, "-CAfile"])
            .arg(&pki.ca)
            .args(["-verify_return_error", "-brief"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("Protocol version: {name}")),
            "s_client {flag} did not negotiate {name}:\n{text}"
        );
        assert!(
            text.contains("Verification: OK"),
            "s_client {flag} did not verify the chain:\n{text}"
        );
    }
}

/// `openssl s_client` to `addr`, verifying the chain against the test CA, with `input`
/// on its standard input; it reads until the server closes.
fn s_client(pki: &Pki, addr: SocketAddr, input: &[u8]) -> std::process::Output {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(&pki.ca)
        // -ign_eof: read the answer after the end of the input.
        .args(["-verify_return_error", "-quiet", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to s_client");
    child.wait_with_output().expect("s_client output")
}

/// With `metrics_tls`, `/health` and `/metrics` answer over HTTPS (checked with
/// `openssl s_client`, verifying the chain) and plain HTTP gets no answer.
#[test]
fn metrics_over_tls() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let broker = start(&pki, "metrics_tls = true", "");
    let request = "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let out = s_client(&pki, broker.metrics, request.as_bytes());
    let response = String::from_utf8_lossy(&out.stdout);
    assert!(
        response.starts_with("HTTP/1.1 200 OK") && response.contains("shardmq_"),
        "no metrics over TLS:\n{response}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, answer) = until_closed(broker.metrics, request.as_bytes());
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "plain HTTP was answered on the TLS metrics port"
    );
}

/// A connection the broker ends (here after the client's DISCONNECT) ends with a TLS
/// close_notify, which a TLS client tells from a truncated stream.
#[test]
fn the_broker_ends_a_tls_connection_with_close_notify() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let broker = start(&pki, "", "");
    let tls = broker.mqtts.expect("mqtts_listen");
    // CONNECT (3.1.1, client id "c"), then DISCONNECT.
    let packets = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'c', 0xe0, 0,
    ];
    let out = s_client(&pki, tls, &packets);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.stdout,
        [0x20, 2, 0, 0],
        "CONNACK, then the end; {stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("unexpected eof"),
        "the stream ended without close_notify:\n{stderr}"
    );
}
