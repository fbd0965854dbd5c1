//! Running under systemd: the broker's `sd_notify` messages to `$NOTIFY_SOCKET` (READY=1
//! once every shard serves, STOPPING=1 when the drain begins, WATCHDOG=1 while every
//! shard answers over the mesh) and the unit file `dist/shardmq.service`.
//!
//! The tests play systemd's part: they bind the datagram socket themselves (a path in a
//! temp dir, or an abstract name) and start the real broker binary pointing at it.

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::raw::{Conn, Connect};

/// A broker process started for these tests, killed on drop; its log is in a file.
struct Started {
    child: Child,
    log: std::path::PathBuf,
    mqtt: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Started {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free a moment ago: the test must know the MQTT port before the broker is ready.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn start(dir: tempfile::TempDir, notify_socket: &str, env: &[(&str, &str)]) -> Started {
    let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.path().join("broker.log");
    let data = dir.path().join("data");
    let mut cmd = common::shardmq();
    cmd.env("SHARDMQ_SHARDS", "2")
        .env("SHARDMQ_MQTT_LISTEN", mqtt.to_string())
        .env("SHARDMQ_METRICS_LISTEN", "127.0.0.1:0")
        .env("SHARDMQ_DATA_DIR", &data)
        .env("SHARDMQ_LOG_LEVEL", "info,shardmq::shard=debug")
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn shardmq");
    Started {
        child,
        log,
        mqtt,
        _dir: dir,
    }
}

/// Receives notification datagrams until one has a line `want`, or `limit` passes.
/// Returns every datagram received, the matching one last; `None` on timeout.
fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Option<Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = text.lines().any(|l| l == want);
            seen.push(text);
            if hit {
                return Some(seen);
            }
        }
    }
    None
}

#[test]
fn ready_only_once_every_shard_serves_and_stopping_when_the_drain_begins() {
    let dir = common::temp_dir();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let mut broker = start(dir, path.to_str().unwrap(), &[]);

    let seen = recv_until(&sock, "READY=1", common::START_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no READY=1 within {:?}:\n{}",
            common::START_TIMEOUT,
            broker.log()
        )
    });
    // Told ready, a client is served at once, whichever shard the kernel hands it to.
    for i in 0..8 {
        let (_conn, ack) = Conn::connect(broker.mqtt, &Connect::v4(&format!("ready-{i}")));
        assert_eq!(ack.code, 0, "CONNACK right after READY=1");
    }
    assert!(
        seen.iter().all(|d| !d.lines().any(|l| l == "STOPPING=1")),
        "{seen:?}"
    );
    assert!(
        broker.log().contains("shardmq ready"),
        "READY=1 before the broker logged it was ready:\n{}",
        broker.log()
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(broker.child.id() as i32, libc::SIGTERM) };
    let seen = recv_until(&sock, "STOPPING=1", Duration::from_secs(20));
    assert!(
        seen.is_some(),
        "no STOPPING=1 after SIGTERM:\n{}",
        broker.log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = broker.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}:\n{}", broker.log());
}

#[test]
fn abstract_socket_gets_ready_then_watchdog_pings() {
    let dir = common::temp_dir();
    let name = format!(
        "shardmq-test-{}-{}",
        std::process::id(),
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    let broker = start(dir, &format!("@{name}"), &[("WATCHDOG_USEC", "1000000")]);

    let seen = recv_until(&sock, "READY=1", common::START_TIMEOUT)
        .unwrap_or_else(|| panic!("no READY=1 on @{name}:\n{}", broker.log()));
    assert!(
        seen.iter().all(|d| !d.contains("WATCHDOG=1")),
        "a watchdog ping before READY=1: {seen:?}"
    );
    // WatchdogSec=1s: a ping at least every half second, so three come within a few
    // seconds even on a loaded machine.
    for n in 0..3 {
        assert!(
            recv_until(&sock, "WATCHDOG=1", Duration::from_secs(10)).is_some(),
            "watchdog ping {n} missing:\n{}",
            broker.log()
        );
    }
}

#[test]
fn watchdog_for_another_pid_is_not_ours() {
    let dir = common::temp_dir();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    // systemd sets WATCHDOG_PID to the main process; a child inheriting it must not ping.
    let broker = start(
        dir,
        path.to_str().unwrap(),
        &[("WATCHDOG_USEC", "1000000"), ("WATCHDOG_PID", "1")],
    );
    recv_until(&sock, "READY=1", common::START_TIMEOUT)
        .unwrap_or_else(|| panic!("no READY=1:\n{}", broker.log()));
    assert!(
        recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3)).is_none(),
        "pinged a watchdog meant for PID 1"
    );
}

/// `systemd-analyze verify` on the unit, through the script CI runs; skipped (with a
/// message) where the machine has no systemd-analyze.
#[test]
fn unit_file_verifies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/verify-unit.sh"))
        .env("SHARDMQ_BIN", env!("CARGO_BIN_EXE_shardmq"))
        .output()
        .expect("run scripts/verify-unit.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "verify-unit.sh failed:\n{text}");
}
