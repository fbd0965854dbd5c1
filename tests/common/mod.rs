//! Test harness: runs the real `shardmq` binary on free ports with a temp data dir.
#![allow(dead_code)]

pub mod disk;
pub mod load;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a broker may take to report ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running broker process; killed (SIGKILL) on drop if still running.
/// How much of a broker's log a failing test prints.
const BROKER_LOG_TAIL_LINES: usize = 60;

pub struct Broker {
    pub child: Child,
    pub mqtt: SocketAddr,
    pub metrics: SocketAddr,
    /// The MQTT over TLS address, when `mqtts_listen` is set.
    pub mqtts: Option<SocketAddr>,
    /// The MQTT over WebSocket addresses, when `ws_listen` / `wss_listen` are set.
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// The Kafka protocol address, when `kafka_listen` is set.
    pub kafka: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Keeps the temp dir alive when the harness made it.
    _temp: Option<tempfile::TempDir>,
    pub log: Arc<Mutex<String>>,
}

/// Options for starting a broker.
#[derive(Clone)]
pub struct BrokerOptions {
    pub shards: usize,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub data_dir: Option<PathBuf>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            shards: 2,
            env: Vec::new(),
            args: Vec::new(),
            data_dir: None,
        }
    }
}

pub fn shardmq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardmq"));
    // Never inherit config from the environment running the tests.
    for (key, _) in std::env::vars() {
        if key.starts_with("SHARDMQ_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A temp dir on a real disk (O_DIRECT does not work on tmpfs).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shardmq-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    pub fn start_with(options: BrokerOptions) -> Broker {
        let retry = options.clone();
        match Broker::try_start(options) {
            Ok(broker) => broker,
            // The broker gave up on a stuck start itself (start_timeout_ms), as it does for
            // a supervisor: start it once more, as a supervisor would, and say so.
            Err((status, log)) if log.contains("start_timeout_ms") => {
                eprintln!("broker start stuck ({status:?}), starting it again:\n{log}");
                Broker::try_start(retry).unwrap_or_else(|(status, log)| {
                    panic!("broker did not start twice ({status:?}):\n{log}")
                })
            }
            Err((status, log)) => panic!("broker did not start ({status:?}):\n{log}"),
        }
    }

    /// Starts a broker; on failure returns its exit status and log.
    pub fn try_start(options: BrokerOptions) -> Result<Broker, (Option<ExitStatus>, String)> {
        let (temp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = temp_dir();
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut cmd = shardmq();
        cmd.env("SHARDMQ_SHARDS", options.shards.to_string())
            .env("SHARDMQ_MQTT_LISTEN", "127.0.0.1:0")
            .env("SHARDMQ_METRICS_LISTEN", "127.0.0.1:0")
            .env("SHARDMQ_DATA_DIR", &data_dir)
            .env("SHARDMQ_LOG_FORMAT", "json")
            // The runtime's start-up steps at debug: a stuck start then shows where it stopped.
            .env(
                "SHARDMQ_LOG_LEVEL",
                "info,shardmq::shard=debug,shardmq::storage::recovery=debug",
            )
            // Below START_TIMEOUT, so a stuck start ends with the broker's own error.
            .env("SHARDMQ_START_TIMEOUT_MS", "12000")
            .args(&options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn shardmq");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if line.contains("shardmq ready") {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(line);
                        }
                    }
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(line) = ready_rx.recv_timeout(Duration::from_millis(50)) {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
                let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
                return Ok(Broker {
                    mqtt: addr("mqtt_listen"),
                    metrics: addr("metrics_listen"),
                    mqtts: v["mqtts_listen"].as_str().and_then(|a| a.parse().ok()),
                    ws: v["ws_listen"].as_str().and_then(|a| a.parse().ok()),
                    wss: v["wss_listen"].as_str().and_then(|a| a.parse().ok()),
                    kafka: v["kafka_listen"].as_str().and_then(|a| a.parse().ok()),
                    child,
                    data_dir,
                    _temp: temp,
                    log,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err((Some(status), log.lock().unwrap().clone()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err((None, log.lock().unwrap().clone()));
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit up to `limit`; None if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path)
    }

    /// The value of a metric series, e.g. `shardmq_connections_accepted_total{shard="0"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        metric_value(&body, series)
    }

    /// Sum of a per-shard series over all shards.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Broker {
    /// Sum over the series of `name` whose labels include `label`, e.g. `qos="1"`,
    /// whatever the label order.
    pub fn metric_sum_labelled(&self, name: &str, label: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| {
                l.split('}')
                    .next()
                    .is_some_and(|labels| labels.contains(label))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test shows what the broker said last.
            let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(BROKER_LOG_TAIL_LINES)..];
            eprintln!(
                "broker log (last {} of {} lines):\n{}",
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "")
}

/// One request with `headers` (each line ending in CRLF) on its own connection.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Runs `shardmq` with the given args/env to completion (for config errors, --print-config).
pub fn run_shardmq(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
) -> (Option<i32>, String, String) {
    let mut cmd = shardmq();
    cmd.args(args).current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run shardmq");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a 2-shard broker with extra `SHARDMQ_*` settings, e.g. `("RETRY_BACKOFF_MS", "200")`.
pub fn broker_with(settings: &[(&str, &str)]) -> Broker {
    broker_with_shards(2, settings)
}

/// Starts a broker of `shards` shards with extra `SHARDMQ_*` settings.
pub fn broker_with_shards(shards: usize, settings: &[(&str, &str)]) -> Broker {
    broker_on(shards, settings, Vec::new())
}

/// Starts a broker on `shards` shards with extra `SHARDMQ_*` settings and arguments.
pub fn broker_on(shards: usize, settings: &[(&str, &str)], args: Vec<String>) -> Broker {
    Broker::start_with(BrokerOptions {
        shards,
        env: settings_env(settings),
        args,
        ..BrokerOptions::default()
    })
}

/// `("KEY", value)` settings as the broker's `SHARDMQ_KEY` environment variables.
pub fn settings_env(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (format!("SHARDMQ_{k}"), v.to_string()))
        .collect()
}

/// `n` distinct names `{prefix}-{i}`; with 2 shards, 8 or more spread over both by hash.
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A PHC hash with cheap parameters (the broker reads them from the hash), so a debug
/// broker checks passwords in microseconds.
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(64, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string()
}

/// An argon2id PHC hash of `password`, made by `shardmq hash-password`.
pub fn hash_password(password: &str) -> String {
    let mut child = shardmq()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shardmq hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("hash-password output");
    assert!(
        out.status.success(),
        "hash-password failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "PHC string: {hash}");
    hash
}

impl Broker {
    /// Sum over shards of `shardmq_limit_hits_total{limit="<key>"}`.
    pub fn limit_hits(&self, key: &str) -> f64 {
        self.metric_sum_labelled("shardmq_limit_hits_total", &format!("limit=\"{key}\""))
    }

    /// The broker process's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }
}

/// VmRSS of process `pid`, in bytes (0 if it cannot be read).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Whether `check` runs and succeeds here; in CI (CI set) a failure fails the test,
/// elsewhere it is skipped with `hint` (how to install what is missing).
pub fn tool_present(check: &mut Command, what: &str, hint: &str) -> bool {
    let found = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: {what} is not installed ({hint})");
    }
    found
}
