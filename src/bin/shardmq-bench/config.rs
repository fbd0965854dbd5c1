//! Command line and workload file: one set of optional keys, read from a TOML workload file
//! and overridden by the command line, then resolved with defaults into [`Params`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::CertificateDer;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use shardmq::mqtt::{Protocol, QoS};

/// Smallest payload: the 16-byte stamp (send time, publisher index, sequence).
pub const PAYLOAD_BYTES_MIN: usize = 16;

/// Every option of the generator; each one may also be set in a `--workload` TOML file
/// under the same kebab-case name.
#[derive(Parser, Deserialize, Default, Debug, Clone)]
#[command(name = "shardmq-bench", about = "MQTT load generator for any broker")]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Args {
    /// Workload TOML file with the same keys; command line options override it.
    #[arg(long)]
    #[serde(skip)]
    pub workload: Option<PathBuf>,
    /// Broker host.
    #[arg(long)]
    pub host: Option<String>,
    /// Broker MQTT port.
    #[arg(long)]
    pub port: Option<u16>,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long = "version")]
    pub version: Option<u8>,
    /// Publishing connections.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscribing connections.
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Distinct topics; publisher i uses `<topic-prefix>/<i % topics>`.
    #[arg(long)]
    pub topics: Option<usize>,
    /// First level of every topic (default `bench`), so two runs can share a broker.
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Extra subscribers, one per topic in turn, that subscribe and then never read
    /// their socket: a broker must keep their cost bounded.
    #[arg(long)]
    pub stuck_subscribers: Option<usize>,
    /// Filter every subscriber uses (e.g. `bench/#`, `$share/g/bench/#`); default:
    /// subscriber j subscribes to `bench/<j % topics>`.
    #[arg(long)]
    pub filter: Option<String>,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(long)]
    pub qos: Option<u8>,
    /// Payload size in bytes (at least 16).
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// Messages per second per publisher; 0 = as fast as the window allows.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Measured publishing time, seconds (after warm-up); ignored when --count is given.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Messages per publisher instead of a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// QoS 1/2 messages in flight per publisher (capped by the broker's Receive Maximum).
    #[arg(long)]
    pub inflight: Option<u16>,
    /// User name sent in CONNECT.
    #[arg(long)]
    pub username: Option<String>,
    /// Password sent in CONNECT.
    #[arg(long)]
    pub password: Option<String>,
    /// Storm mode: open this many connections, report connects/s and CONNACK latency.
    #[arg(long)]
    pub connections_only: Option<usize>,
    /// Storm mode: how long to hold the connections open, seconds.
    #[arg(long)]
    pub hold_secs: Option<u64>,
    /// Flood mode: open and close this many connections in a burst, then open this many
    /// and hold them idle for `--hold-secs`, while a probe client measures round trips.
    #[arg(long)]
    pub flood: Option<usize>,
    /// Flood mode: how many connections to hold idle (default: as many as the burst).
    #[arg(long)]
    pub flood_hold: Option<usize>,
    /// Flood mode: the held connections' keep-alive, seconds; while held, each sends a
    /// PINGREQ every half of it (0: no keep-alive, no pings).
    #[arg(long)]
    pub flood_keep_alive_secs: Option<u16>,
    /// Flood mode: open the held connections at this many per second in all (0: as fast
    /// as the broker accepts them).
    #[arg(long)]
    pub flood_rate: Option<u64>,
    /// Flood mode: each held connection subscribes (QoS 1) to a topic of its own.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub flood_subscribe: Option<bool>,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, ...
    /// (loopback brokers only), for when one address runs short of ephemeral ports.
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// Flood mode: pause between two probe round trips, ms.
    #[arg(long)]
    pub probe_interval_ms: Option<u64>,
    /// Generator threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPUs to pin generator threads to, e.g. `1` or `0,1` (thread k gets the k-th, cycling).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Print one JSON object with hardware, parameters and results at the end.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub json: Option<bool>,
    /// Seconds of publishing before measurement starts.
    #[arg(long)]
    pub warmup_secs: Option<u64>,
    /// Broker process id: report its CPU time per delivered message from /proc.
    #[arg(long)]
    #[serde(skip)]
    pub broker_pid: Option<u32>,
    /// Connect over TLS, trusting the CA certificates (PEM) in this file; the server
    /// certificate must name `--host`.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Kafka mode: produce to and fetch from partition 0 of this topic over the Kafka
    /// protocol (`--port` is the broker's Kafka port; `--rate` is records/s in all).
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// Kafka mode: the most bytes of one produced batch (librdkafka's batch.size).
    #[arg(long)]
    pub kafka_batch_bytes: Option<usize>,
    /// Kafka mode: produce to partitions 0..N, one producer connection each.
    #[arg(long)]
    pub kafka_partitions: Option<u32>,
    /// Kafka mode: produce requests in flight per connection (default 5, as Kafka
    /// producers' max.in.flight.requests.per.connection).
    #[arg(long)]
    pub kafka_inflight: Option<usize>,
    /// Kafka mode: how long a record may wait for its batch while requests are in
    /// flight, µs (default 1000; librdkafka's linger.ms).
    #[arg(long)]
    pub kafka_linger_us: Option<u64>,
    /// Relay mode: serve as the minimal QoS 0 relay on this address (see `relay`) with
    /// `--threads` threads pinned by `--cpus`, until killed, instead of generating load.
    #[arg(long)]
    #[serde(skip)]
    pub relay: Option<std::net::SocketAddr>,
}

impl Args {
    /// Fills every key this set lacks from `base`.
    pub fn or(self, base: Args) -> Args {
        Args {
            workload: self.workload.or(base.workload),
            host: self.host.or(base.host),
            port: self.port.or(base.port),
            version: self.version.or(base.version),
            publishers: self.publishers.or(base.publishers),
            subscribers: self.subscribers.or(base.subscribers),
            topics: self.topics.or(base.topics),
            topic_prefix: self.topic_prefix.or(base.topic_prefix),
            stuck_subscribers: self.stuck_subscribers.or(base.stuck_subscribers),
            filter: self.filter.or(base.filter),
            qos: self.qos.or(base.qos),
            payload_bytes: self.payload_bytes.or(base.payload_bytes),
            rate: self.rate.or(base.rate),
            duration_secs: self.duration_secs.or(base.duration_secs),
            count: self.count.or(base.count),
            inflight: self.inflight.or(base.inflight),
            username: self.username.or(base.username),
            password: self.password.or(base.password),
            connections_only: self.connections_only.or(base.connections_only),
            hold_secs: self.hold_secs.or(base.hold_secs),
            flood: self.flood.or(base.flood),
            flood_hold: self.flood_hold.or(base.flood_hold),
            flood_keep_alive_secs: self.flood_keep_alive_secs.or(base.flood_keep_alive_secs),
            flood_subscribe: self.flood_subscribe.or(base.flood_subscribe),
            flood_rate: self.flood_rate.or(base.flood_rate),
            source_ips: self.source_ips.or(base.source_ips),
            probe_interval_ms: self.probe_interval_ms.or(base.probe_interval_ms),
            threads: self.threads.or(base.threads),
            cpus: self.cpus.or(base.cpus),
            json: self.json.or(base.json),
            warmup_secs: self.warmup_secs.or(base.warmup_secs),
            broker_pid: self.broker_pid.or(base.broker_pid),
            tls_ca: self.tls_ca.or(base.tls_ca),
            kafka_topic: self.kafka_topic.or(base.kafka_topic),
            kafka_batch_bytes: self.kafka_batch_bytes.or(base.kafka_batch_bytes),
            kafka_partitions: self.kafka_partitions.or(base.kafka_partitions),
            kafka_inflight: self.kafka_inflight.or(base.kafka_inflight),
            kafka_linger_us: self.kafka_linger_us.or(base.kafka_linger_us),
            relay: self.relay.or(base.relay),
        }
    }
}

/// Why the options cannot run.
#[derive(Debug)]
pub enum ConfigError {
    /// The workload file could not be read.
    Read(PathBuf, std::io::Error),
    /// The workload file is not valid TOML for these keys.
    Parse(PathBuf, toml::de::Error),
    /// A value is out of range.
    Invalid(&'static str),
    /// The TLS CA file cannot be used.
    Tls(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Self::Parse(p, e) => write!(f, "bad workload {}: {e}", p.display()),
            Self::Invalid(what) => write!(f, "invalid option: {what}"),
            Self::Tls(why) => write!(f, "--tls-ca: {why}"),
        }
    }
}

/// How long the publishers run.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stop {
    /// Publish for this many seconds after warm-up.
    DurationSecs(u64),
    /// Publish this many messages per publisher (warm-up included).
    Count(u64),
}

/// Resolved parameters of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub host: String,
    pub port: u16,
    pub version: u8,
    #[serde(skip)]
    pub protocol: Protocol,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub topic_prefix: String,
    pub stuck_subscribers: usize,
    pub filter: Option<String>,
    pub qos: u8,
    #[serde(skip)]
    pub qos_level: QoS,
    pub payload_bytes: usize,
    pub rate: u64,
    pub stop: Stop,
    pub inflight: u16,
    pub username: Option<String>,
    #[serde(skip)]
    pub password: Option<String>,
    pub connections_only: Option<usize>,
    pub hold_secs: u64,
    pub flood: Option<usize>,
    pub flood_hold: Option<usize>,
    pub flood_keep_alive_secs: u16,
    pub flood_subscribe: bool,
    pub flood_rate: u64,
    pub source_ips: u8,
    pub probe_interval_ms: u64,
    pub threads: usize,
    pub cpus: Vec<usize>,
    #[serde(skip)]
    pub json: bool,
    pub warmup_secs: u64,
    pub broker_pid: Option<u32>,
    pub tls_ca: Option<PathBuf>,
    /// The client TLS settings made from `tls_ca`.
    #[serde(skip)]
    pub tls: Option<Arc<ClientConfig>>,
    pub kafka_topic: Option<String>,
    pub kafka_batch_bytes: usize,
    pub kafka_partitions: u32,
    pub kafka_inflight: usize,
    pub kafka_linger_us: u64,
    pub relay: Option<std::net::SocketAddr>,
}

impl Params {
    /// Reads the workload file named on the command line, if any, and resolves defaults.
    pub fn load(cli: Args) -> Result<Params, ConfigError> {
        let args = match cli.workload.clone() {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                let file: Args = toml::from_str(&text).map_err(|e| ConfigError::Parse(path, e))?;
                cli.or(file)
            }
            None => cli,
        };
        Params::resolve(args)
    }

    fn resolve(a: Args) -> Result<Params, ConfigError> {
        let version = a.version.unwrap_or(5);
        let protocol = match version {
            4 => Protocol::V311,
            5 => Protocol::V5,
            _ => return Err(ConfigError::Invalid("--version must be 4 or 5")),
        };
        let qos = a.qos.unwrap_or(0);
        let qos_level = QoS::from_u8(qos).ok_or(ConfigError::Invalid("--qos must be 0, 1 or 2"))?;
        let payload_bytes = a.payload_bytes.unwrap_or(256);
        if payload_bytes < PAYLOAD_BYTES_MIN {
            return Err(ConfigError::Invalid("--payload-bytes must be at least 16"));
        }
        let inflight = a.inflight.unwrap_or(64);
        if inflight == 0 {
            return Err(ConfigError::Invalid("--inflight must be at least 1"));
        }
        let topics = a.topics.unwrap_or(1).max(1);
        let threads = a.threads.unwrap_or(1).max(1);
        let host = a.host.unwrap_or_else(|| "127.0.0.1".into());
        let source_ips = a.source_ips.unwrap_or(0);
        if source_ips > 0 && host != "127.0.0.1" {
            return Err(ConfigError::Invalid(
                "--source-ips spreads over 127.0.0.x and needs --host 127.0.0.1",
            ));
        }
        if source_ips > 250 {
            return Err(ConfigError::Invalid("--source-ips must be at most 250"));
        }
        let stop = match a.count {
            Some(n) => Stop::Count(n),
            None => Stop::DurationSecs(a.duration_secs.unwrap_or(5)),
        };
        let tls = a.tls_ca.as_deref().map(client_tls).transpose()?;
        Ok(Params {
            host,
            port: a.port.unwrap_or(1883),
            version,
            protocol,
            publishers: a.publishers.unwrap_or(1),
            subscribers: a.subscribers.unwrap_or(1),
            topics,
            topic_prefix: a.topic_prefix.unwrap_or_else(|| "bench".into()),
            stuck_subscribers: a.stuck_subscribers.unwrap_or(0),
            filter: a.filter,
            qos,
            qos_level,
            payload_bytes,
            rate: a.rate.unwrap_or(0),
            stop,
            inflight,
            username: a.username,
            password: a.password,
            connections_only: a.connections_only,
            hold_secs: a.hold_secs.unwrap_or(0),
            flood: a.flood,
            flood_hold: a.flood_hold,
            flood_keep_alive_secs: a.flood_keep_alive_secs.unwrap_or(0),
            flood_subscribe: a.flood_subscribe.unwrap_or(false),
            flood_rate: a.flood_rate.unwrap_or(0),
            source_ips,
            probe_interval_ms: a.probe_interval_ms.unwrap_or(100),
            threads,
            cpus: a.cpus.unwrap_or_default(),
            json: a.json.unwrap_or(false),
            warmup_secs: a.warmup_secs.unwrap_or(0),
            broker_pid: a.broker_pid,
            tls_ca: a.tls_ca,
            tls,
            kafka_topic: a.kafka_topic,
            kafka_batch_bytes: a.kafka_batch_bytes.unwrap_or(1_000_000).max(64),
            kafka_partitions: a.kafka_partitions.unwrap_or(1).clamp(1, 1024),
            kafka_inflight: a.kafka_inflight.unwrap_or(5).max(1),
            kafka_linger_us: a.kafka_linger_us.unwrap_or(1000),
            relay: a.relay,
        })
    }

    /// Topic publisher `i` publishes to.
    pub fn topic_of(&self, publisher: usize) -> String {
        format!("{}/{}", self.topic_prefix, publisher % self.topics)
    }

    /// The source address of connection `k`: 127.0.0.(2 + k mod source_ips), or the
    /// kernel's choice when `--source-ips` is 0.
    pub fn source_of(&self, k: usize) -> Option<std::net::IpAddr> {
        (self.source_ips > 0).then(|| {
            let last = 2 + (k % usize::from(self.source_ips)) as u8;
            std::net::IpAddr::from([127, 0, 0, last])
        })
    }

    /// Filter subscriber `j` subscribes to.
    pub fn filter_of(&self, subscriber: usize) -> String {
        match &self.filter {
            Some(f) => f.clone(),
            None => format!("{}/{}", self.topic_prefix, subscriber % self.topics),
        }
    }
}

/// The share group of a `$share/<group>/<filter>` filter and the filter it wraps.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
    {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    }
}

/// Whether `filter` (no `$share` prefix) matches `topic`, by MQTT wildcard rules.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match (f, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// TLS 1.2/1.3 client settings (rustls with ring, as the broker) trusting the CAs in `ca`.
fn client_tls(ca: &Path) -> Result<Arc<ClientConfig>, ConfigError> {
    let tls = |e: &dyn std::fmt::Display| ConfigError::Tls(format!("{}: {e}", ca.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| tls(&e))? {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_broker() {
        assert!(filter_matches("bench/#", "bench/3"));
        assert!(filter_matches("bench/+", "bench/3"));
        assert!(filter_matches("bench/3", "bench/3"));
        assert!(!filter_matches("bench/3", "bench/30"));
        assert!(!filter_matches("bench/+", "bench/3/x"));
        assert!(filter_matches("#", "bench/3"));
    }

    #[test]
    fn shared_prefix_is_split() {
        assert_eq!(split_shared("$share/g/bench/#"), (Some("g"), "bench/#"));
        assert_eq!(split_shared("bench/#"), (None, "bench/#"));
    }

    #[test]
    fn command_line_overrides_workload() {
        let file: Args = toml::from_str("publishers = 4\nqos = 1\npayload-bytes = 64").unwrap();
        let cli = Args {
            qos: Some(0),
            ..Args::default()
        };
        let p = Params::resolve(cli.or(file)).unwrap();
        assert_eq!((p.publishers, p.qos, p.payload_bytes), (4, 0, 64));
    }

    #[test]
    fn short_payload_is_rejected() {
        let a = Args {
            payload_bytes: Some(8),
            ..Args::default()
        };
        assert!(Params::resolve(a).is_err());
    }
}
