//! Settings: embedded defaults < TOML file < `SHARDMQ_*` environment < command-line flags.
//!
//! The config is one flat table so that every key has exactly one environment variable
//! (`key` -> `SHARDMQ_KEY`) and one `--set key=value` form. Layers are merged as TOML
//! tables; the merged document is then deserialized once, strictly
//! (`deny_unknown_fields`), and validated. Every error names the key and where its value
//! came from, and the binary exits with status 2 on any of them.
//!
//! Owns: [`Config`] (every key, its default and what it means), loading and merging the
//! layers, and the checks of [`Config::validate`] with their [`ConfigError`]s.
//!
//! May use: `router` (the shard bound `SHARDS_MAX`) and `storage` (to parse
//! `fsync_policy` as a `FsyncPolicy`); no other shardmq module.

mod layers;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use layers::{load, ConfigSources};

/// The most `connections_per_shard_max` may be: a connection's token indexes its
/// shard's tables with 24 bits (`runtime::TokenTable`).
pub const CONNECTIONS_PER_SHARD_LIMIT: usize = (1 << 24) - 1;

/// The most `sessions_max` may be: a session's key indexes its shard's session table
/// with the same 24 bits, and restored sessions (a shard-count change) may gather on
/// fewer shards than they were spread over.
pub const SESSIONS_LIMIT: usize = CONNECTIONS_PER_SHARD_LIMIT;

/// Upper bound on shards: the router's fixed shard sets have one bit per shard, so the
/// router owns the number and `shards` is validated against it.
pub use crate::router::SHARDS_MAX;

/// What `--print-config` shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The effective configuration of one broker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Number of shards (pinned executors). 0 = one per CPU in the process's affinity mask.
    pub shards: usize,
    /// CPUs to pin shards to, shard i on `cpus[i]`. Empty = the first `shards` CPUs of the
    /// affinity mask.
    pub cpus: Vec<usize>,
    /// MQTT listener address; every shard binds it with SO_REUSEPORT.
    pub mqtt_listen: SocketAddr,
    /// HTTP address for `/metrics` and `/health`, served by `metrics_shard`.
    pub metrics_listen: SocketAddr,
    /// Which shard serves the metrics endpoint.
    pub metrics_shard: usize,
    /// Bearer token for the admin API on `metrics_listen` (`/admin/...`); empty = no key.
    /// The API is off unless this or `admin_localhost_only` is set.
    pub admin_key: String,
    /// Serve the admin API to loopback peers only (with `admin_key` set, they need the
    /// key too); with neither set the API is off.
    pub admin_localhost_only: bool,
    /// MQTT over TLS listener address (conventionally port 8883), bound by every shard
    /// like `mqtt_listen`; unset = no TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtts_listen: Option<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first) for `mqtts_listen`.
    pub tls_cert_file: PathBuf,
    /// The server certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: PathBuf,
    /// CA certificates (PEM) that sign client certificates; empty = clients are not
    /// asked for one. A client certificate the CA did not sign is refused.
    pub tls_ca_file: PathBuf,
    /// With `tls_ca_file`: every TLS client must present a valid certificate (otherwise
    /// one is only checked if presented).
    pub tls_require_certificate: bool,
    /// A TLS client is the user its certificate names (the subject CN, else its first
    /// DNS or e-mail SAN), instead of a CONNECT username and password (mosquitto's
    /// option of the same name). Needs `tls_require_certificate`.
    pub use_identity_as_username: bool,
    /// Serve `metrics_listen` over TLS (HTTPS) with the same certificate, key and
    /// client-certificate settings as `mqtts_listen`.
    pub metrics_tls: bool,
    /// MQTT over WebSocket listener address (mosquitto users' conventional port is 8080;
    /// 9001 is as common), bound by every shard like `mqtt_listen`; unset = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS (conventionally 8081 or 443), with the `tls_*`
    /// settings of `mqtts_listen`; unset = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss_listen: Option<SocketAddr>,
    /// The HTTP path a WebSocket client upgrades on; any other path is answered 404.
    pub ws_path: String,
    /// Directory for the lock file and the per-shard WAL directories.
    pub data_dir: PathBuf,
    /// Log filter (`tracing` directive syntax, e.g. `info` or `shardmq=debug`).
    /// `RUST_LOG`, when set, takes precedence.
    pub log_level: String,
    /// `text` for humans, `json` for log pipelines.
    pub log_format: LogFormat,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout_ms: u64,
    /// How long the shards may take to recover and start serving before the broker gives
    /// up with an error (so a supervisor restarts it) instead of hanging; 0 = no limit.
    pub start_timeout_ms: u64,
    /// At light load a shard that wakes often for little work sleeps up to this long
    /// between turns instead of parking, so the events of that moment cost one wake-up:
    /// less CPU per message, up to this much more latency per hop. 0 = park at once.
    pub wake_coalesce_us: u64,
    /// Capacity of each mesh channel, in batches (not messages). Generous on purpose: small
    /// capacities under contention can hang the glommio mesh.
    pub mesh_channel_batches_max: usize,
    /// Most messages one mesh batch carries; a fuller outbox is sent as several batches.
    pub mesh_batch_messages_max: usize,
    /// Bytes of messages in transit on one mesh link (one shard to another) beyond
    /// which connections on either end stop being read: what bounds the memory between
    /// a shard that publishes faster than its peer delivers.
    pub mesh_link_bytes_max: usize,
    /// io_uring registered buffer memory per shard. Shrunk at start to fit RLIMIT_MEMLOCK.
    pub io_memory_bytes: usize,

    /// Most client connections the whole process holds open; one more is refused at
    /// accept. Counted by one process-wide atomic touched only at accept and close.
    pub connections_max: usize,
    /// Most client connections one shard holds open. SO_REUSEPORT spreads connections
    /// by a hash, not by load, so this keeps one executor from taking more than its share.
    pub connections_per_shard_max: usize,

    /// Accept clients that present no credentials.
    pub allow_anonymous: bool,
    /// Static API keys, accepted as the CONNECT password (any username).
    pub api_keys: Vec<String>,
    /// What an action no ACL rule decides gets (see `auth::acl`): `allow` (so a config
    /// without rules behaves as before) or `deny`.
    pub acl_default: AclDefault,
    /// A mosquitto `acl_file` whose rules are added to the `[[acl]]` ones; empty = none.
    pub acl_file: PathBuf,
    /// A 3.1.1 PUBLISH the ACL refuses (3.1.1 has no refusal code): `drop` it (acked
    /// and counted, as mosquitto does) or `disconnect` the client.
    pub acl_publish_denied_v3: AclPublishDenied,
    /// Which client ids a user may take: `any`, `username` (an id equal to a configured
    /// username is that user's alone) or `username_prefix` (also the username followed
    /// by `client_id_separator` and anything; the longest such user owns an id).
    pub client_id_owner: ClientIdOwner,
    /// What follows the username in the client ids `username_prefix` gives a user.
    pub client_id_separator: String,
    /// Largest MQTT packet accepted (and announced to v5 clients), in bytes.
    pub max_packet_bytes: u32,
    /// A client must deliver its whole CONNECT within this time from accept (a deadline,
    /// not a per-read timeout: trickling bytes does not extend it).
    pub connect_timeout_ms: u64,
    /// Once a packet has started to arrive, the rest of it must arrive within this time
    /// (a deadline for the whole packet, not a per-read timeout, and whatever the
    /// keep-alive): a client cannot hold a partial packet's buffer by trickling bytes.
    pub packet_read_timeout_ms: u64,
    /// A plain-TCP connection that sent nothing for this long, with nothing to write and
    /// no publish awaiting its owner, is parked without tasks (its socket watched by
    /// the shard's epoll thread) until the client sends or the broker has output for it.
    /// 0 = never park.
    pub idle_park_ms: u64,
    /// Longest keep-alive a client may use, in seconds (0 = no cap). A v5 client asking
    /// for more (or for none) is told this one (Server Keep Alive); a 3.1.1 client, which
    /// cannot be told, as `max_keepalive_v3` says.
    pub max_keepalive_secs: u16,
    /// A 3.1.1 client asking for a keep-alive over `max_keepalive_secs` (or none):
    /// `refuse` (CONNACK 2, identifier rejected, as mosquitto does) or `clamp` (the broker
    /// uses the cap; a client that stays silent longer is disconnected).
    pub max_keepalive_v3: KeepaliveOverMax,
    /// PUBLISH packets per second one connection may send (0 = no limit); beyond it the
    /// broker stops reading that client until it is back under (nothing is dropped).
    pub client_publish_rate_max: u32,
    /// PUBLISH bytes (whole packets) per second one connection may send (0 = no limit),
    /// enforced like `client_publish_rate_max`.
    pub client_publish_bytes_rate_max: u64,
    /// New connections per second from one source address (0 = no limit); beyond it a
    /// connection is closed at accept, before the broker reads anything from it. Each
    /// shard keeps its own share (rounded up) of this rate.
    pub connections_per_source_rate_max: u32,
    /// Most bytes of user properties (names and values) in one PUBLISH or will; a
    /// publish over it is refused (v5: 0x97 Quota exceeded). They are stored, queued and
    /// forwarded with the message.
    pub user_properties_bytes_max: usize,
    /// Password checks (Argon2, milliseconds each) waiting for the hashing thread; a
    /// CONNECT beyond it is refused with Server busy (3.1.1: return code 3).
    pub auth_hash_queue_max: usize,
    /// Our Receive Maximum: QoS 1/2 publishes a connection may have awaiting
    /// acknowledgement; reading stops at this many (backpressure for 3.1.1 clients too).
    pub receive_maximum: u16,
    /// Most QoS 1/2 deliveries in flight per session, whatever the client allows.
    pub inflight_count_max: usize,
    /// Most messages queued per session (offline, or behind its in-flight window).
    pub session_queue_messages_max: usize,
    /// Most bytes queued per session.
    pub session_queue_bytes_max: usize,
    /// Most logged QoS 2 messages one session remembers it PUBREC'd above its replay
    /// cursor, so a read of the log that brings one again never sends it as a PUBLISH
    /// (see `ReplayCursor`); beyond it the oldest completed one is forgotten.
    pub session_qos2_released_max: usize,
    /// Most QoS 1/2 messages one shared subscription group keeps on one shard while
    /// every member there has a full queue; beyond it they are read back from the log.
    pub shared_backlog_messages_max: usize,
    /// Most bytes one shared subscription group keeps on one shard (see above).
    pub shared_backlog_bytes_max: usize,
    /// Cap on any session expiry interval, in seconds (4294967295 = never expires,
    /// which 3.1.1 persistent sessions use).
    pub session_expiry_max_secs: u32,
    /// Most sessions the process holds, connected or offline, shared evenly among the
    /// shards (a session lives on the shard its connection came in on; each holds at most
    /// `ceil(sessions_max / shards)`); a CONNECT that needs a new session beyond it is
    /// refused (0x97 Quota exceeded, 3.1.1: 3). Resuming an existing session always works.
    pub sessions_max: usize,
    /// Most subscriptions one session holds; filters beyond it are refused in SUBACK
    /// (0x97 Quota exceeded, 3.1.1: 0x80).
    pub subscriptions_per_session_max: usize,
    /// Most retained topics the process stores, shared evenly among the owner shards
    /// (each owner stores at most `ceil(retained_messages_max / shards)`).
    pub retained_messages_max: usize,
    /// Most bytes (`Message::cost_bytes`) of retained messages the process stores, shared
    /// evenly among the owner shards like `retained_messages_max`.
    pub retained_bytes_max: usize,
    /// QoS 2 packet ids one owner shard keeps as received until their PUBREL (what makes
    /// a resend, also after a restart, be delivered once); beyond it the oldest is
    /// forgotten.
    pub qos2_ids_per_shard_max: usize,
    /// Topic aliases per v5 connection, each way: a client may set this many, and the
    /// broker uses up to this many (and the client's Topic Alias Maximum) towards it.
    pub topic_alias_max: u16,
    /// Longest topic name or filter, in bytes.
    pub topic_bytes_max: usize,
    /// Most levels in a topic name or filter.
    pub topic_levels_max: usize,
    /// 3.1.1 redelivery while connected: first retry after this long, doubling each time.
    pub retry_backoff_ms: u64,
    /// 3.1.1 redelivery while connected: retries per message before waiting for a
    /// reconnect.
    pub max_retries: u32,
    /// Publish the broker's figures under `$SYS/broker/...` every this many seconds
    /// (retained; 0 = never, the default: they are retained messages like any, logged
    /// and counted against the retained bounds).
    pub sys_interval_secs: u64,
    /// Pending output per connection beyond which deliveries stay queued in the session
    /// (QoS 0 is dropped): the bound for a subscriber that reads slowly. At twice it the
    /// connection is not read: replies to a client that never reads cannot pile up.
    pub connection_out_bytes_max: usize,
    /// What a QoS 1/2 acknowledgement promises: `always` | `every_n:N` | `interval_ms:M` |
    /// `none` (aliases `immediate`, `batch`, `periodic`). See the storage module.
    pub fsync_policy: String,
    /// WAL segment size; segments are pre-zeroed and rolled at this size.
    pub segment_bytes: u64,
    /// WAL group-commit buffer per shard; appends wait when it is full.
    pub wal_buffer_bytes: usize,
    /// Also log QoS 0 publishes (retained ones are always logged).
    pub log_qos0: bool,
    /// Delete WAL segments whose newest record is older than this; 0 = keep them.
    pub retention_ms: u64,
    /// Delete the oldest WAL segments while a shard's log is larger; 0 = no limit.
    pub retention_bytes: u64,
    /// Kafka protocol listener address, on every shard like `mqtt_listen` (off when
    /// unset; Kafka's conventional port is 9092). Serves the topics of `kafka_topics`.
    pub kafka_listen: Option<SocketAddr>,
    /// Users with PHC password hashes (`shardmq hash-password` makes one). Last, because
    /// TOML writes arrays of tables after plain values.
    pub users: Vec<UserConfig>,
    /// Authorization rules (`[[acl]]` tables), see `auth::acl` for the matching order.
    pub acl: Vec<AclRuleConfig>,
    /// The topics the Kafka door serves (`[[kafka_topics]]` tables).
    pub kafka_topics: Vec<KafkaTopicConfig>,
}

/// One `[[kafka_topics]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopicConfig {
    /// The topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
    pub name: String,
    /// Partitions, 1 to [`KAFKA_PARTITIONS_MAX`]. Adding partitions later keeps the
    /// existing ones where they are; removing some drops them from service.
    pub partitions: u32,
    /// Batches older than this are dropped; unset: `retention_ms`; 0: kept by age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// A partition keeps at most about this many bytes; unset or 0: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// MQTT publishes whose topic this filter matches become records of this topic
    /// (key: the MQTT topic); unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_filter: Option<String>,
}

/// Most partitions a Kafka topic may have.
pub const KAFKA_PARTITIONS_MAX: u32 = 1024;

/// Why `name` is not a Kafka topic name, if it is not one.
pub fn kafka_topic_name_problem(name: &str) -> Option<&'static str> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let bad = name.is_empty()
        || name.len() > 249
        || name == "."
        || name == ".."
        || !name.chars().all(legal);
    bad.then_some("a Kafka topic name is 1 to 249 of a-z A-Z 0-9 . _ - (not . or ..)")
}

/// One `[[acl]]` entry: who (at most one of `username`, `client_id`, `anonymous`; none =
/// every client), a topic pattern (`%u` / `%c` as whole levels) and an access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// The rule is for the user of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The rule is for the client of this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The rule is for clients without credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
    /// Topic pattern: a topic filter whose whole levels may be `%u` or `%c`.
    pub topic: String,
    /// `read`, `write`, `readwrite`, `subscribe` or `deny`.
    pub access: String,
}

/// `acl_default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDefault {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// `acl_publish_denied_v3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclPublishDenied {
    /// Acknowledge as usual, do not deliver, count.
    Drop,
    /// Close the connection.
    Disconnect,
}

/// `max_keepalive_v3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepaliveOverMax {
    /// CONNACK return code 2 (identifier rejected), and close.
    Refuse,
    /// Use the cap.
    Clamp,
}

/// `client_id_owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdOwner {
    /// Any client may use any client id.
    Any,
    /// An id equal to a configured username is that user's.
    Username,
    /// So are ids that start with the username and `client_id_separator`.
    UsernamePrefix,
}

/// One `[[users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The CONNECT username.
    pub username: String,
    /// PHC string (argon2id), e.g. from `shardmq hash-password`.
    pub password_hash: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Longest light-load nap a config may ask for (`wake_coalesce_us`), µs: beyond it a nap
/// would hold back keep-alive and WAL completions noticeably.
pub const WAKE_COALESCE_US_MAX: u64 = 5_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            shards: 0,
            cpus: Vec::new(),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9883)),
            metrics_shard: 0,
            admin_key: String::new(),
            admin_localhost_only: false,
            mqtts_listen: None,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_require_certificate: false,
            use_identity_as_username: false,
            metrics_tls: false,
            ws_listen: None,
            wss_listen: None,
            ws_path: "/mqtt".to_string(),
            data_dir: PathBuf::from("./data"),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            shutdown_timeout_ms: 5_000,
            start_timeout_ms: 120_000,
            wake_coalesce_us: 0,
            mesh_channel_batches_max: 1_024,
            mesh_batch_messages_max: 256,
            mesh_link_bytes_max: 16 << 20,
            io_memory_bytes: 10 << 20,
            connections_max: 100_000,
            connections_per_shard_max: 100_000,
            allow_anonymous: true,
            api_keys: Vec::new(),
            acl_default: AclDefault::Allow,
            acl_file: PathBuf::new(),
            acl_publish_denied_v3: AclPublishDenied::Drop,
            client_id_owner: ClientIdOwner::Any,
            client_id_separator: "-".to_string(),
            max_packet_bytes: 1 << 20,
            connect_timeout_ms: 10_000,
            packet_read_timeout_ms: 30_000,
            idle_park_ms: 2_000,
            max_keepalive_secs: 0,
            max_keepalive_v3: KeepaliveOverMax::Refuse,
            client_publish_rate_max: 0,
            client_publish_bytes_rate_max: 0,
            connections_per_source_rate_max: 0,
            user_properties_bytes_max: 64 << 10,
            auth_hash_queue_max: 32,
            receive_maximum: 1024,
            inflight_count_max: 256,
            session_queue_messages_max: 10_000,
            session_queue_bytes_max: 16 << 20,
            session_qos2_released_max: 16_384,
            shared_backlog_messages_max: 10_000,
            shared_backlog_bytes_max: 16 << 20,
            session_expiry_max_secs: u32::MAX,
            subscriptions_per_session_max: 1_000,
            retained_messages_max: 100_000,
            retained_bytes_max: 256 << 20,
            sessions_max: 1_000_000,
            qos2_ids_per_shard_max: 100_000,
            topic_alias_max: 64,
            topic_bytes_max: 65_535,
            topic_levels_max: 128,
            retry_backoff_ms: 5_000,
            max_retries: 5,
            sys_interval_secs: 0,
            connection_out_bytes_max: 1 << 20,
            fsync_policy: "always".to_string(),
            segment_bytes: 64 << 20,
            wal_buffer_bytes: 4 << 20,
            log_qos0: false,
            retention_ms: 0,
            retention_bytes: 0,
            kafka_listen: None,
            users: Vec::new(),
            kafka_topics: Vec::new(),
            acl: Vec::new(),
        }
    }
}

/// A configuration error: which key, where its value came from, and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending key (or file / variable when no single key is to blame).
    pub key: String,
    /// Where the value came from (`config file x.toml`, `SHARDMQ_SHARDS`, `--shards`).
    pub source: Option<String>,
    /// What is wrong, in words.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            source: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config key `{}`", self.key)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks what types alone cannot; resolves `shards = 0` against the CPUs available.
    /// The first failing check is reported; the checks run in this order.
    pub fn validate(&mut self, available_cpus: &[usize]) -> Result<(), ConfigError> {
        self.resolve_shards(available_cpus)?;
        self.check_listeners()?;
        self.check_tls()?;
        self.check_process()?;
        self.check_mesh()?;
        self.check_connection_limits()?;
        self.check_session_limits()?;
        self.check_topic_limits()?;
        self.check_delivery_limits()?;
        self.check_credentials()?;
        self.check_wal()?;
        self.check_kafka()?;
        self.check_io_memory()
    }

    /// Kafka topic names are valid Kafka names, each once, with 1 to
    /// [`KAFKA_PARTITIONS_MAX`] partitions.
    fn check_kafka(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for topic in &self.kafka_topics {
            let name = &topic.name;
            let key = || format!("kafka_topics.{name}");
            if let Some(problem) = kafka_topic_name_problem(name) {
                return Err(ConfigError::new(
                    "kafka_topics.name",
                    format!("{name:?}: {problem}"),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(ConfigError::new(
                    "kafka_topics.name",
                    format!("{name:?} is listed twice"),
                ));
            }
            if let Some(filter) = &topic.mqtt_filter {
                let limits = crate::router::TopicLimits {
                    topic_bytes_max: self.topic_bytes_max,
                    topic_levels_max: self.topic_levels_max,
                };
                if filter.starts_with("$share/")
                    || crate::router::parse_filter(filter, &limits).is_err()
                {
                    return Err(ConfigError::new(
                        format!("{}.mqtt_filter", key()),
                        format!("{filter:?} is not an MQTT topic filter (shared subscriptions are not mapped)"),
                    ));
                }
            }
            if !(1..=KAFKA_PARTITIONS_MAX).contains(&topic.partitions) {
                return Err(ConfigError::new(
                    format!("{}.partitions", key()),
                    format!("{} is outside 1..={KAFKA_PARTITIONS_MAX}", topic.partitions),
                ));
            }
        }
        Ok(())
    }

    /// Resolves `shards = 0`, then checks the shard count, the CPUs they are pinned to
    /// and the metrics shard.
    fn resolve_shards(&mut self, available_cpus: &[usize]) -> Result<(), ConfigError> {
        if self.shards == 0 {
            self.shards = if self.cpus.is_empty() {
                available_cpus.len().max(1)
            } else {
                self.cpus.len()
            };
        }
        if self.shards > SHARDS_MAX {
            return Err(ConfigError::new(
                "shards",
                format!("{} is more than the supported {SHARDS_MAX}", self.shards),
            ));
        }
        self.resolve_cpus(available_cpus)?;
        if self.metrics_shard >= self.shards {
            return Err(ConfigError::new(
                "metrics_shard",
                format!(
                    "{} is not a shard (shards = {})",
                    self.metrics_shard, self.shards
                ),
            ));
        }
        Ok(())
    }

    /// Every listener has an address of its own, and the WebSocket path is a path.
    fn check_listeners(&self) -> Result<(), ConfigError> {
        if self.mqtt_listen == self.metrics_listen && self.mqtt_listen.port() != 0 {
            return Err(ConfigError::new(
                "metrics_listen",
                "must differ from mqtt_listen",
            ));
        }
        let extra = [
            ("mqtts_listen", self.mqtts_listen),
            ("ws_listen", self.ws_listen),
            ("wss_listen", self.wss_listen),
            ("kafka_listen", self.kafka_listen),
        ];
        for (i, (key, addr)) in extra.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if addr == self.mqtt_listen
                || addr == self.metrics_listen
                || extra[..i].iter().any(|(_, other)| *other == Some(addr))
            {
                return Err(ConfigError::new(
                    *key,
                    "must differ from every other listener address",
                ));
            }
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::new("ws_path", "must start with '/'"));
        }
        Ok(())
    }

    /// The TLS keys hang together; the files themselves are read by `door::tls`.
    fn check_tls(&self) -> Result<(), ConfigError> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if self.mqtts_listen.is_some() || self.wss_listen.is_some() || self.metrics_tls {
            for (key, path) in [
                ("tls_cert_file", &self.tls_cert_file),
                ("tls_key_file", &self.tls_key_file),
            ] {
                if !set(path) {
                    return Err(ConfigError::new(
                        key,
                        "required with mqtts_listen, wss_listen or metrics_tls",
                    ));
                }
            }
        }
        if self.tls_require_certificate && !set(&self.tls_ca_file) {
            return Err(ConfigError::new(
                "tls_require_certificate",
                "needs tls_ca_file (the CA that signs client certificates)",
            ));
        }
        if self.use_identity_as_username && !self.tls_require_certificate {
            return Err(ConfigError::new(
                "use_identity_as_username",
                "needs tls_require_certificate = true (and tls_ca_file)",
            ));
        }
        Ok(())
    }

    /// Process-wide settings: where data lives, what is logged, how long shutdown takes.
    fn check_process(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError::new(
                "log_level",
                format!("`{}` is not a log filter: {e}", self.log_level),
            ));
        }
        positive("shutdown_timeout_ms", self.shutdown_timeout_ms)
    }

    /// The channels between shards and how a shard waits for them.
    fn check_mesh(&self) -> Result<(), ConfigError> {
        positive_each(&[
            (
                "mesh_channel_batches_max",
                self.mesh_channel_batches_max as u64,
            ),
            (
                "mesh_batch_messages_max",
                self.mesh_batch_messages_max as u64,
            ),
            ("mesh_link_bytes_max", self.mesh_link_bytes_max as u64),
        ])?;
        if self.wake_coalesce_us > WAKE_COALESCE_US_MAX {
            return Err(ConfigError::new(
                "wake_coalesce_us",
                format!("must be at most {WAKE_COALESCE_US_MAX} (a shard must not nap longer)"),
            ));
        }
        if self.mesh_channel_batches_max < 16 {
            return Err(ConfigError::new(
                "mesh_channel_batches_max",
                "must be at least 16: small mesh channels can deadlock under contention",
            ));
        }
        Ok(())
    }

    /// What one connection, and all of them together, may send and hold open.
    fn check_connection_limits(&self) -> Result<(), ConfigError> {
        if self.max_packet_bytes < 64 || self.max_packet_bytes > 268_435_460 {
            return Err(ConfigError::new(
                "max_packet_bytes",
                "must be between 64 and 268435460 (the MQTT maximum)",
            ));
        }
        positive_each(&[
            ("connections_max", self.connections_max as u64),
            (
                "connections_per_shard_max",
                self.connections_per_shard_max as u64,
            ),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("packet_read_timeout_ms", self.packet_read_timeout_ms),
            ("auth_hash_queue_max", self.auth_hash_queue_max as u64),
            ("receive_maximum", u64::from(self.receive_maximum)),
            ("inflight_count_max", self.inflight_count_max as u64),
        ])?;
        if self.inflight_count_max > usize::from(u16::MAX) {
            return Err(ConfigError::new(
                "inflight_count_max",
                "must be at most 65535",
            ));
        }
        if self.connections_per_shard_max > CONNECTIONS_PER_SHARD_LIMIT {
            return Err(ConfigError::new(
                "connections_per_shard_max",
                "must be at most 16777215",
            ));
        }
        Ok(())
    }

    /// What sessions, shared groups and retained messages may hold.
    fn check_session_limits(&self) -> Result<(), ConfigError> {
        positive_each(&[
            (
                "session_queue_messages_max",
                self.session_queue_messages_max as u64,
            ),
            (
                "session_queue_bytes_max",
                self.session_queue_bytes_max as u64,
            ),
            (
                "session_qos2_released_max",
                self.session_qos2_released_max as u64,
            ),
            (
                "shared_backlog_messages_max",
                self.shared_backlog_messages_max as u64,
            ),
            (
                "shared_backlog_bytes_max",
                self.shared_backlog_bytes_max as u64,
            ),
            (
                "subscriptions_per_session_max",
                self.subscriptions_per_session_max as u64,
            ),
            ("retained_messages_max", self.retained_messages_max as u64),
            ("retained_bytes_max", self.retained_bytes_max as u64),
            ("sessions_max", self.sessions_max as u64),
            ("qos2_ids_per_shard_max", self.qos2_ids_per_shard_max as u64),
        ])?;
        if self.sessions_max > SESSIONS_LIMIT {
            return Err(ConfigError::new("sessions_max", "must be at most 16777215"));
        }
        Ok(())
    }

    /// Topic names and filters: bytes (an MQTT string holds at most 65535) and levels.
    fn check_topic_limits(&self) -> Result<(), ConfigError> {
        positive("topic_bytes_max", self.topic_bytes_max as u64)?;
        if self.topic_bytes_max > 65_535 {
            return Err(ConfigError::new("topic_bytes_max", "must be at most 65535"));
        }
        positive("topic_levels_max", self.topic_levels_max as u64)
    }

    /// How deliveries go out: the 3.1.1 retry backoff and the pending-output bound.
    fn check_delivery_limits(&self) -> Result<(), ConfigError> {
        positive_each(&[
            ("retry_backoff_ms", self.retry_backoff_ms),
            (
                "connection_out_bytes_max",
                self.connection_out_bytes_max as u64,
            ),
        ])
    }

    /// Admin key, API keys and the shape of each ACL rule.
    fn check_credentials(&self) -> Result<(), ConfigError> {
        if !self.admin_key.is_empty() && self.admin_key.len() < 16 {
            return Err(ConfigError::new(
                "admin_key",
                "must be at least 16 characters (or empty: no key)",
            ));
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError::new(
                "api_keys",
                "every key must be at least 16 characters",
            ));
        }
        for (i, rule) in self.acl.iter().enumerate() {
            let who = [
                rule.username.is_some(),
                rule.client_id.is_some(),
                rule.anonymous,
            ];
            if who.iter().filter(|&&set| set).count() > 1 {
                return Err(ConfigError::new(
                    format!("acl[{i}]"),
                    "set at most one of username, client_id and anonymous (none = every client)",
                ));
            }
        }
        Ok(())
    }

    /// The fsync policy and the WAL's sizes; the buffer must hold the largest packet.
    fn check_wal(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.fsync_policy.parse::<crate::storage::FsyncPolicy>() {
            return Err(ConfigError::new("fsync_policy", e.to_string()));
        }
        if self.segment_bytes < (1 << 20) {
            return Err(ConfigError::new(
                "segment_bytes",
                "must be at least 1048576",
            ));
        }
        if self.wal_buffer_bytes < (64 << 10)
            || self.wal_buffer_bytes < self.max_packet_bytes as usize * 2
        {
            return Err(ConfigError::new(
                "wal_buffer_bytes",
                "must be at least 65536 and twice max_packet_bytes",
            ));
        }
        Ok(())
    }

    /// io_uring registered buffer memory per shard.
    fn check_io_memory(&self) -> Result<(), ConfigError> {
        if self.io_memory_bytes < (64 << 10) {
            return Err(ConfigError::new(
                "io_memory_bytes",
                "must be at least 65536",
            ));
        }
        Ok(())
    }

    /// Pins shards to CPUs: the first `shards` of the affinity mask, or the listed ones,
    /// which must exist in it once each.
    fn resolve_cpus(&mut self, available_cpus: &[usize]) -> Result<(), ConfigError> {
        if self.cpus.is_empty() {
            if self.shards > available_cpus.len() {
                return Err(ConfigError::new(
                    "shards",
                    format!(
                        "{} shards but only {} CPUs in this process's affinity mask {:?}; \
                         lower shards or list cpus explicitly",
                        self.shards,
                        available_cpus.len(),
                        available_cpus
                    ),
                ));
            }
            self.cpus = available_cpus[..self.shards].to_vec();
            return Ok(());
        }
        if self.cpus.len() != self.shards {
            return Err(ConfigError::new(
                "cpus",
                format!(
                    "lists {} CPUs but shards = {}",
                    self.cpus.len(),
                    self.shards
                ),
            ));
        }
        for (i, cpu) in self.cpus.iter().enumerate() {
            if !available_cpus.contains(cpu) {
                return Err(ConfigError::new(
                    "cpus",
                    format!("CPU {cpu} is not in this process's affinity mask {available_cpus:?}"),
                ));
            }
            if self.cpus[..i].contains(cpu) {
                return Err(ConfigError::new(
                    "cpus",
                    format!("CPU {cpu} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// How many sessions one shard may hold: its even share of `sessions_max`, rounded up.
    pub fn sessions_per_shard_max(&self) -> usize {
        self.sessions_max.div_ceil(self.shards.max(1))
    }

    /// How many retained topics one owner shard may store: its even share of
    /// `retained_messages_max`, rounded up.
    pub fn retained_messages_per_shard_max(&self) -> usize {
        self.retained_messages_max.div_ceil(self.shards.max(1))
    }

    /// How many bytes of retained messages one owner shard may store: its even share of
    /// `retained_bytes_max`, rounded up.
    pub fn retained_bytes_per_shard_max(&self) -> usize {
        self.retained_bytes_max.div_ceil(self.shards.max(1))
    }

    /// The effective configuration as TOML (for `--print-config`), secrets redacted: the
    /// output ends up in terminals, tickets and chat.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.redacted()).expect("a Config always serializes")
    }

    /// A copy with every secret (API keys, password hashes) replaced by [`REDACTED`],
    /// keeping how many there are and whose they are. A new secret setting belongs here.
    pub fn redacted(&self) -> Config {
        let user = |u: &UserConfig| {
            // Exhaustive, so a new field of a user is a decision here, not a leak.
            let UserConfig {
                username,
                password_hash: _,
            } = u;
            UserConfig {
                username: username.clone(),
                password_hash: REDACTED.to_string(),
            }
        };
        Config {
            api_keys: vec![REDACTED.to_string(); self.api_keys.len()],
            admin_key: if self.admin_key.is_empty() {
                String::new()
            } else {
                REDACTED.to_string()
            },
            users: self.users.iter().map(user).collect(),
            ..self.clone()
        }
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

/// `positive` for each `(key, value)`, in order: the first zero is reported.
fn positive_each(limits: &[(&str, u64)]) -> Result<(), ConfigError> {
    limits
        .iter()
        .try_for_each(|&(key, value)| positive(key, value))
}

/// CPUs this process may run on, ascending.
pub fn affinity_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shards_means_every_cpu() {
        let mut config = Config::default();
        config.validate(&[0, 1, 2]).unwrap();
        assert_eq!(config.shards, 3);
        assert_eq!(config.cpus, vec![0, 1, 2]);
    }

    #[test]
    fn cpus_must_exist_and_match_shards() {
        let mut config = Config {
            shards: 2,
            cpus: vec![0, 7],
            ..Config::default()
        };
        let err = config.validate(&[0, 1]).unwrap_err();
        assert_eq!(err.key, "cpus");
        let mut config = Config {
            shards: 3,
            cpus: vec![0, 1],
            ..Config::default()
        };
        assert_eq!(config.validate(&[0, 1, 2]).unwrap_err().key, "cpus");
    }

    #[test]
    fn more_shards_than_cpus_is_refused() {
        let mut config = Config {
            shards: 4,
            ..Config::default()
        };
        assert_eq!(config.validate(&[0, 1]).unwrap_err().key, "shards");
    }

    #[test]
    fn sessions_beyond_what_their_keys_index_are_refused() {
        let mut at_limit = Config {
            sessions_max: SESSIONS_LIMIT,
            ..Config::default()
        };
        assert!(at_limit.validate(&[0]).is_ok());
        let mut over = Config {
            sessions_max: SESSIONS_LIMIT + 1,
            ..Config::default()
        };
        assert_eq!(over.validate(&[0]).unwrap_err().key, "sessions_max");
    }

    #[test]
    fn websocket_listeners_are_checked() {
        let cpus = vec![0];
        let ws = Config {
            ws_listen: Some("127.0.0.1:8080".parse().unwrap()),
            ..Config::default()
        };
        ws.clone().validate(&cpus).unwrap();
        let same = Config {
            wss_listen: ws.ws_listen,
            ..ws.clone()
        };
        assert_eq!(same.clone().validate(&cpus).unwrap_err().key, "wss_listen");
        let on_mqtt = Config {
            ws_listen: Some(ws.mqtt_listen),
            ..ws.clone()
        };
        assert_eq!(
            on_mqtt.clone().validate(&cpus).unwrap_err().key,
            "ws_listen"
        );
        let wss = Config {
            wss_listen: Some("127.0.0.1:8081".parse().unwrap()),
            ..ws.clone()
        };
        assert_eq!(
            wss.clone().validate(&cpus).unwrap_err().key,
            "tls_cert_file"
        );
        let wss = Config {
            tls_cert_file: "cert.pem".into(),
            tls_key_file: "key.pem".into(),
            ..wss
        };
        wss.clone().validate(&cpus).unwrap();
        let path = Config {
            ws_path: "mqtt".into(),
            ..wss
        };
        assert_eq!(path.clone().validate(&cpus).unwrap_err().key, "ws_path");
    }

    #[test]
    fn kafka_listener_and_topics_are_checked() {
        let cpus = vec![0];
        let topic = |name: &str, partitions: u32| KafkaTopicConfig {
            name: name.into(),
            partitions,
            retention_ms: None,
            retention_bytes: None,
            mqtt_filter: None,
        };
        let good = Config {
            kafka_listen: Some("127.0.0.1:9092".parse().unwrap()),
            kafka_topics: vec![topic("telemetry", 4), topic("a.b_c-1", 1)],
            ..Config::default()
        };
        good.clone().validate(&cpus).unwrap();
        let on_mqtt = Config {
            kafka_listen: Some(good.mqtt_listen),
            ..good.clone()
        };
        assert_eq!(
            on_mqtt.clone().validate(&cpus).unwrap_err().key,
            "kafka_listen"
        );
        for bad in ["", ".", "..", "has space", "slash/ed", &"x".repeat(250)] {
            let named = Config {
                kafka_topics: vec![topic(bad, 1)],
                ..good.clone()
            };
            assert_eq!(
                named.clone().validate(&cpus).unwrap_err().key,
                "kafka_topics.name",
                "{bad:?}"
            );
        }
        let twice = Config {
            kafka_topics: vec![topic("t", 1), topic("t", 2)],
            ..good.clone()
        };
        assert_eq!(
            twice.clone().validate(&cpus).unwrap_err().key,
            "kafka_topics.name"
        );
        for filter in ["a/#/b", "$share/g/a/#", ""] {
            let mut mapped = topic("t", 1);
            mapped.mqtt_filter = Some(filter.into());
            let bad = Config {
                kafka_topics: vec![mapped],
                ..good.clone()
            };
            assert_eq!(
                bad.clone().validate(&cpus).unwrap_err().key,
                "kafka_topics.t.mqtt_filter",
                "{filter:?}"
            );
        }
        let mut mapped = topic("t", 1);
        mapped.mqtt_filter = Some("sensors/+/temp".into());
        Config {
            kafka_topics: vec![mapped],
            ..good.clone()
        }
        .validate(&cpus)
        .unwrap();
        for partitions in [0, KAFKA_PARTITIONS_MAX + 1] {
            let sized = Config {
                kafka_topics: vec![topic("t", partitions)],
                ..good.clone()
            };
            assert_eq!(
                sized.clone().validate(&cpus).unwrap_err().key,
                "kafka_topics.t.partitions"
            );
        }
    }

    #[test]
    fn shards_are_bounded_by_what_the_router_can_address() {
        let cpus: Vec<usize> = (0..=SHARDS_MAX).collect();
        let mut config = Config {
            shards: SHARDS_MAX + 1,
            ..Config::default()
        };
        assert_eq!(config.validate(&cpus).unwrap_err().key, "shards");
        let mut config = Config {
            shards: SHARDS_MAX,
            ..Config::default()
        };
        config.validate(&cpus).unwrap();
        // The highest shard a valid config can have fits the router's shard sets.
        let last = crate::router::ShardId::from_index(config.shards - 1);
        let mut set = crate::router::ShardSet::new();
        set.insert(last);
        assert!(set.contains(last));
    }

    #[test]
    fn metrics_shard_must_exist() {
        let mut config = Config {
            shards: 2,
            metrics_shard: 2,
            ..Config::default()
        };
        assert_eq!(config.validate(&[0, 1]).unwrap_err().key, "metrics_shard");
    }

    #[test]
    fn tls_keys_hang_together() {
        let cpus = [0, 1];
        let tls = Config {
            mqtts_listen: Some("127.0.0.1:8883".parse().unwrap()),
            ..Config::default()
        };
        assert_eq!(
            tls.clone().validate(&cpus).unwrap_err().key,
            "tls_cert_file"
        );
        let metrics_only = Config {
            metrics_tls: true,
            ..Config::default()
        };
        assert_eq!(
            metrics_only.clone().validate(&cpus).unwrap_err().key,
            "tls_cert_file"
        );
        let tls = Config {
            tls_cert_file: "cert.pem".into(),
            ..tls
        };
        assert_eq!(tls.clone().validate(&cpus).unwrap_err().key, "tls_key_file");
        let tls = Config {
            tls_key_file: "key.pem".into(),
            ..tls
        };
        tls.clone().validate(&cpus).unwrap();
        let same_port = Config {
            mqtts_listen: Some(tls.mqtt_listen),
            ..tls.clone()
        };
        assert_eq!(
            same_port.clone().validate(&cpus).unwrap_err().key,
            "mqtts_listen"
        );
        let require = Config {
            tls_require_certificate: true,
            ..tls.clone()
        };
        assert_eq!(
            require.clone().validate(&cpus).unwrap_err().key,
            "tls_require_certificate"
        );
        let identity = Config {
            use_identity_as_username: true,
            tls_ca_file: "ca.pem".into(),
            ..tls
        };
        assert_eq!(
            identity.clone().validate(&cpus).unwrap_err().key,
            "use_identity_as_username"
        );
        Config {
            tls_require_certificate: true,
            ..identity
        }
        .validate(&cpus)
        .unwrap();
    }

    #[test]
    fn printed_config_reads_back_identically() {
        let mut config = Config::default();
        config.validate(&[0, 1]).unwrap();
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }
}

#[cfg(test)]
mod shipped_file {
    use super::*;

    /// `config/shardmq.toml` documents every key at its default: keep it so.
    #[test]
    fn shipped_config_lists_every_key_at_its_default() {
        let text = include_str!("../../config/shardmq.toml");
        let shipped: toml::Table = text.parse().expect("config/shardmq.toml parses");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut missing: Vec<_> = defaults
            .keys()
            .filter(|k| !shipped.contains_key(*k))
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "config/shardmq.toml lacks {missing:?}");
        let parsed: Config = toml::from_str(text).expect("config/shardmq.toml is valid");
        assert_eq!(parsed, Config::default());
    }
}
