//! The runtime seen from outside: shards, metrics, health, config layering, the data
//! dir lock and shutdown.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn connections_spread_over_both_shards() {
    let broker = Broker::start();
    let conns: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(broker.mqtt).expect("connect"))
        .collect();
    let counted = eventually(Duration::from_secs(10), || {
        broker.metric_sum("shardmq_connections_accepted_total") == 100.0
    });
    assert!(
        counted,
        "100 accepted connections:\n{}",
        broker.http_get("/metrics").1
    );
    let s0 = broker
        .metric("shardmq_connections_accepted_total{shard=\"0\"}")
        .unwrap();
    let s1 = broker
        .metric("shardmq_connections_accepted_total{shard=\"1\"}")
        .unwrap();
    assert!(s0 > 0.0 && s1 > 0.0, "both shards accept: {s0} / {s1}");
    assert_eq!(broker.metric_sum("shardmq_connections_current"), 100.0);
    drop(conns);
    assert!(eventually(Duration::from_secs(10), || {
        broker.metric_sum("shardmq_connections_current") == 0.0
    }));
}

#[test]
fn health_pings_every_shard_over_the_mesh() {
    let broker = Broker::start();
    let (status, body) = broker.http_get("/health");
    assert_eq!(status, 200, "{body}");
    // The metrics shard pinged the other shard and got its answer back.
    assert!(
        broker
            .metric("shardmq_mesh_messages_sent_total{shard=\"0\"}")
            .unwrap()
            >= 1.0
    );
    assert!(
        broker
            .metric("shardmq_mesh_messages_sent_total{shard=\"1\"}")
            .unwrap()
            >= 1.0
    );
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    for series in [
        "shardmq_build_info",
        "shardmq_connections_current{shard=\"1\"}",
        "shardmq_connections_accepted_total{shard=\"0\"}",
        "shardmq_mesh_batches_sent_total{shard=\"1\"}",
        "shardmq_mesh_messages_sent_total{shard=\"0\"}",
    ] {
        assert!(body.contains(series), "missing {series}:\n{body}");
    }
    assert_eq!(broker.http_get("/nope").0, 404);
}

#[test]
fn env_beats_file_and_flag_beats_env() {
    let dir = temp_dir();
    let file = dir.path().join("shardmq.toml");
    std::fs::write(
        &file,
        "shards = 1\nlog_level = \"warn\"\nshutdown_timeout_ms = 1234\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (code, out, err) = run_shardmq(
        &["--config", file, "--print-config"],
        &[("SHARDMQ_LOG_LEVEL", "debug")],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("log_level = \"debug\""),
        "env beats file:\n{out}"
    );
    assert!(
        out.contains("shutdown_timeout_ms = 1234"),
        "file beats default:\n{out}"
    );
    assert!(out.contains("shards = 1\n"), "{out}");

    let (code, out, err) = run_shardmq(
        &[
            "--print-config",
            "--log-level",
            "error",
            "--set",
            "shutdown_timeout_ms=99",
        ],
        &[("SHARDMQ_LOG_LEVEL", "debug"), ("SHARDMQ_CONFIG", file)],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("log_level = \"error\""),
        "flag beats env:\n{out}"
    );
    assert!(
        out.contains("shutdown_timeout_ms = 99"),
        "--set beats file:\n{out}"
    );
}

#[test]
fn defaults_print_without_any_config() {
    let dir = temp_dir();
    let (code, out, err) = run_shardmq(&["--print-config"], &[], dir.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("mqtt_listen = \"127.0.0.1:1883\""), "{out}");
    assert!(out.contains("metrics_listen = \"127.0.0.1:9883\""), "{out}");
    assert!(out.contains("data_dir = \"./data\""), "{out}");
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let dir = temp_dir();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "shards = 1\nshard_count = 4\n").unwrap();
    let (code, _, err) = run_shardmq(&["--config", file.to_str().unwrap()], &[], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("shard_count"), "{err}");

    let (code, _, err) = run_shardmq(&[], &[("SHARDMQ_SHARDZ", "1")], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("SHARDMQ_SHARDZ"), "{err}");
}

#[test]
fn invalid_value_exits_2_naming_the_key() {
    let dir = temp_dir();
    let (code, _, err) = run_shardmq(&[], &[("SHARDMQ_SHARDS", "lots")], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`shards`") && err.contains("SHARDMQ_SHARDS"),
        "{err}"
    );

    let (code, _, err) = run_shardmq(&["--mqtt-listen", "localhost"], &[], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mqtt_listen"), "{err}");

    let (code, _, err) = run_shardmq(&["--set", "log_format=xml"], &[], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("log_format"), "{err}");

    let (code, _, err) = run_shardmq(
        &["--set", "metrics_shard=7", "--shards", "1"],
        &[],
        dir.path(),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("metrics_shard"), "{err}");
}

#[test]
fn second_instance_on_same_data_dir_refuses_to_start() {
    let first = Broker::start();
    let second = Broker::try_start(BrokerOptions {
        data_dir: Some(first.data_dir.clone()),
        ..Default::default()
    });
    let Err((status, log)) = second else {
        panic!("a second broker started on the same data_dir");
    };
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("in use by another shardmq"), "{log}");
    // The first one is unaffected.
    assert_eq!(first.http_get("/health").0, 200);
}

#[test]
fn busy_mqtt_port_is_refused() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().to_string();
    let result = Broker::try_start(BrokerOptions {
        args: vec!["--mqtt-listen".into(), port],
        ..Default::default()
    });
    let Err((status, log)) = result else {
        panic!("broker shared a port another program listens on");
    };
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("already in use"), "{log}");
}

#[test]
fn sigterm_drains_and_exits_zero_promptly() {
    let mut broker = Broker::start_with(BrokerOptions {
        args: vec!["--set".into(), "shutdown_timeout_ms=3000".into()],
        ..Default::default()
    });
    let conns: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(broker.mqtt).unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(10), || {
        broker.metric_sum("shardmq_connections_current") == 10.0
    }));
    let started = Instant::now();
    broker.signal(libc::SIGTERM);
    let status = broker
        .wait_exit(Duration::from_secs(5))
        .expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Held connections were closed by the broker, not left hanging.
    for mut conn in conns {
        use std::io::Read;
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
    }
    assert!(broker.log().contains("shardmq stopped"));
}

#[test]
fn runs_on_the_default_relative_data_dir() {
    // The quick start: no data_dir given, so ./data under the working directory.
    let cwd = temp_dir();
    let mut child = shardmq()
        .current_dir(cwd.path())
        .env("SHARDMQ_MQTT_LISTEN", "127.0.0.1:0")
        .env("SHARDMQ_METRICS_LISTEN", "127.0.0.1:0")
        .env("SHARDMQ_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|l| l.contains("shardmq ready") || l.contains("ERROR"));
    let _ = child.kill();
    let _ = child.wait();
    let line = ready.expect("a ready or error line");
    assert!(line.contains("shardmq ready"), "{line}");
    assert!(cwd.path().join("data/shard-0").is_dir());
}

#[test]
fn a_start_that_overruns_start_timeout_ms_exits_with_an_error() {
    let dir = temp_dir();
    let (code, _, err) = run_shardmq(
        &[],
        &[
            ("SHARDMQ_MQTT_LISTEN", "127.0.0.1:0"),
            ("SHARDMQ_METRICS_LISTEN", "127.0.0.1:0"),
            ("SHARDMQ_DATA_DIR", dir.path().to_str().unwrap()),
            // No shard recovers its WAL and joins the mesh within a millisecond.
            ("SHARDMQ_START_TIMEOUT_MS", "1"),
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("start_timeout_ms"), "{err}");
}

#[test]
fn print_config_redacts_every_secret() {
    let dir = temp_dir();
    let hash = hash_password("correct horse");
    let keys = ["key-one-0123456789abcdef", "key-two-fedcba9876543210"];
    let file = dir.path().join("secrets.toml");
    std::fs::write(
        &file,
        format!(
            "shards = 1\napi_keys = [\"{}\", \"{}\"]\n\n[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\n",
            keys[0], keys[1]
        ),
    )
    .unwrap();
    let (code, out, err) = run_shardmq(
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{err}");
    for secret in keys.iter().copied().chain([hash.as_str()]) {
        assert!(!out.contains(secret), "{secret} printed in clear:\n{out}");
    }
    // The salt and digest of the hash are secret too, not just the whole string.
    let digest = hash.rsplit('$').next().unwrap();
    assert!(
        !out.contains(digest),
        "password hash digest printed:\n{out}"
    );
    // What is not secret still shows: how many keys, which users; still TOML.
    let printed: toml::Value = toml::from_str(&out).expect("printed config is TOML");
    assert_eq!(
        printed["api_keys"].as_array().map(Vec::len),
        Some(2),
        "{out}"
    );
    assert_eq!(
        printed["users"][0]["username"].as_str(),
        Some("alice"),
        "{out}"
    );
    assert!(out.contains("redacted"), "{out}");
}
