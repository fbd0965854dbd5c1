//! The `shardmq` daemon: load the config, start the shards, wait for signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod admin_client;
mod kafka_client;
mod reload;

use clap::{Parser, Subcommand};
use shardmq::auth::acl::{self, Acl, AclConfig, RuleSpec, Who};
use shardmq::auth::{AuthConfig, Authenticator, UserEntry};
use shardmq::config::{self, Config, ConfigSources, LogFormat};
use shardmq::runtime::{notify, DataDirLock, Outcome};
use shardmq::server::{Live, Server, Snapshot};

/// Every shard frees messages that another shard allocated (a publish is decoded on the
/// publisher's shard and dropped on each subscriber's): glibc malloc serializes those frees
/// on the allocating thread's arena lock, mimalloc hands them back without one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The release and the git commit it was built from ("unknown" outside a checkout).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SHARDMQ_GIT_COMMIT"),
    ")"
);

/// Exit status for configuration errors (and for command-line errors, as clap uses).
const EXIT_CONFIG: u8 = 2;
/// Exit status for runtime failures.
const EXIT_FAILURE: u8 = 1;

/// shardmq — a thread-per-core MQTT 5.0 / 3.1.1 broker.
///
/// Settings come from embedded defaults, then the TOML file (--config or SHARDMQ_CONFIG),
/// then SHARDMQ_<KEY> environment variables, then these flags.
#[derive(Debug, Parser)]
#[command(name = "shardmq", version = VERSION, about)]
struct Cli {
    /// TOML config file.
    #[arg(long, env = "SHARDMQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Number of shards (0 = one per available CPU).
    #[arg(long, value_name = "N")]
    shards: Option<String>,
    /// MQTT listen address.
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<String>,
    /// Metrics HTTP listen address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Data directory (lock file, WAL).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Log filter, e.g. `info` or `shardmq=debug`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Set any config key, e.g. `--set shutdown_timeout_ms=2000` (repeatable).
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a password from standard input and print its argon2id hash for `[[users]]`.
    HashPassword,
    /// List and act on clients, sessions, subscriptions and retained messages of a
    /// running broker through its admin API (`admin_key` or `admin_localhost_only`).
    Admin(admin_client::AdminArgs),
    /// Make the running broker (the one holding the config's `data_dir`) read its config
    /// again: sends it SIGHUP, as `kill -HUP` would. See the broker's log for the outcome.
    Reload,
    /// Kafka topics of a running broker (its `kafka_listen`, or --bootstrap).
    Topics(kafka_client::TopicsArgs),
    /// Kafka consumer groups of a running broker: members, committed offsets, lag.
    Groups(kafka_client::GroupsArgs),
    /// Produce each line of standard input as a Kafka record (acks all).
    Produce(kafka_client::ProduceArgs),
    /// Print a Kafka topic's records.
    Consume(kafka_client::ConsumeArgs),
}

impl Cli {
    fn sources(&self) -> Result<ConfigSources, config::ConfigError> {
        let mut flags = Vec::new();
        let named = [
            ("shards", &self.shards),
            ("mqtt_listen", &self.mqtt_listen),
            ("metrics_listen", &self.metrics_listen),
            ("data_dir", &self.data_dir),
            ("log_level", &self.log_level),
            ("log_format", &self.log_format),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                flags.push((
                    key.to_string(),
                    value.clone(),
                    format!("--{}", key.replace('_', "-")),
                ));
            }
        }
        for item in &self.set {
            let (key, value) = item.split_once('=').ok_or_else(|| config::ConfigError {
                key: item.clone(),
                source: Some("--set".into()),
                reason: "expected KEY=VALUE".into(),
            })?;
            flags.push((
                key.trim().to_string(),
                value.to_string(),
                format!("--set {}", key.trim()),
            ));
        }
        Ok(ConfigSources {
            file: self.config.clone(),
            env: std::env::vars().collect(),
            flags,
        })
    }
}

fn main() -> ExitCode {
    // Before the heap grows: resident memory that follows what the broker holds (see
    // `no_huge_pages`).
    let huge_pages_off = shardmq::runtime::no_huge_pages();
    let cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        return hash_password();
    }
    let sources = match cli.sources() {
        Ok(sources) => sources,
        Err(e) => return config_error(e),
    };
    let mut config = match config::load(&sources) {
        Ok(config) => config,
        Err(e) => return config_error(e),
    };
    if let Some(Command::Reload) = &cli.command {
        return match reload::signal_running(&config.data_dir) {
            Ok(pid) => {
                println!("sent SIGHUP to shardmq (pid {pid}); its log says whether the reload was applied");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shardmq reload: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    let kafka = config.kafka_listen;
    let kafka_command = match &cli.command {
        Some(Command::Topics(args)) => Some(("topics", kafka_client::topics(args, kafka))),
        Some(Command::Groups(args)) => Some(("groups", kafka_client::groups(args, kafka))),
        Some(Command::Produce(args)) => Some(("produce", kafka_client::produce(args, kafka))),
        Some(Command::Consume(args)) => Some(("consume", kafka_client::consume(args, kafka))),
        _ => None,
    };
    if let Some((name, result)) = kafka_command {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardmq {name}: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    if let Some(Command::Admin(args)) = &cli.command {
        return match admin_client::run(args, config.metrics_listen, &config.admin_key) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardmq admin: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    if let Err(e) = config.validate(&config::affinity_cpus()) {
        return config_error(e);
    }
    // Users and ACL rules are checked before anything is printed or started.
    let auth = match authenticator(&config) {
        Ok(auth) => auth,
        Err(e) => return config_error(e),
    };
    // So are the TLS certificate and key.
    let tls = match shardmq::door::tls::server_config(&config) {
        Ok(tls) => tls,
        Err(e) => return config_error(e),
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    if let Err(e) = huge_pages_off {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off: resident memory may grow by whole 2 MiB pages");
    }
    let reloader = reload::Reloader {
        sources,
        started: config.clone(),
        live: Live::new(Snapshot { auth, tls }),
    };
    match run(&config, reloader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            tracing::error!(%reason, "shardmq stopped with an error");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(config: &Config, reloader: reload::Reloader) -> Result<(), String> {
    let lock = DataDirLock::acquire(&config.data_dir)?;
    // The WAL opens its directories through io_uring, which needs absolute paths; and an
    // absolute path in the logs says exactly where the data is.
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("data_dir {}: {e}", config.data_dir.display()))?;
    let config = &Config {
        data_dir,
        ..config.clone()
    };
    let mut signals = signal_hook::iterator::Signals::new([
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let runtime = Server::start(config, std::sync::Arc::clone(&reloader.live))?;
    tracing::info!(
        version = VERSION,
        mqtt_listen = %runtime.mqtt_addr,
        metrics_listen = %runtime.metrics_addr,
        mqtts_listen = %runtime.mqtts_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        ws_listen = %runtime.ws_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        wss_listen = %runtime.wss_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        kafka_listen = %runtime.kafka_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        shards = config.shards,
        cpus = ?config.cpus,
        data_dir = %config.data_dir.display(),
        lock = %lock.path().display(),
        "shardmq ready"
    );
    notify::ready(&format!(
        "serving MQTT on {} with {} shards",
        runtime.mqtt_addr, config.shards
    ));

    let shutdown_started: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let mut trigger = runtime.shutdown_handle()?;
    let started = Arc::clone(&shutdown_started);
    let probes = runtime.probes.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == libc::SIGUSR1 {
                    shardmq::metrics::log_summary(&probes);
                } else if signal == libc::SIGHUP {
                    if started.get().is_none() {
                        reloader.reload(&mut trigger, &probes);
                    }
                } else if started.set(Instant::now()).is_ok() {
                    tracing::info!(signal, "shutting down: no new connections, draining");
                    notify::stopping("draining connections");
                    trigger.trigger();
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(128 + signal);
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;

    let deadline = Duration::from_millis(config.shutdown_timeout_ms);
    match runtime.wait(|| shutdown_started.get().copied(), deadline) {
        Outcome::Clean => {
            tracing::info!("shardmq stopped");
            Ok(())
        }
        Outcome::Failed(reason) => Err(reason),
        Outcome::TimedOut => Err(format!(
            "shards still running {} ms after shutdown started",
            config.shutdown_timeout_ms
        )),
    }
}

/// Users, API keys and the ACL from `config`; an error names the key (or file) at fault.
pub(crate) fn authenticator(config: &Config) -> Result<Arc<Authenticator>, config::ConfigError> {
    let auth = AuthConfig {
        allow_anonymous: config.allow_anonymous,
        api_keys: config.api_keys.clone(),
        users: config
            .users
            .iter()
            .map(|u| UserEntry {
                username: u.username.clone(),
                password_hash: u.password_hash.clone(),
            })
            .collect(),
    };
    let authenticator = Authenticator::new(&auth).map_err(|e| config::ConfigError {
        key: "users".into(),
        source: None,
        reason: e.to_string(),
    })?;
    Ok(Arc::new(authenticator.with_acl(authorization(config)?)))
}

/// The ACL from `[[acl]]` and `acl_file`; an error names the rule's key (`acl[2].topic`)
/// or the file and line.
fn authorization(config: &Config) -> Result<Acl, config::ConfigError> {
    let error = |key: String, reason: String| config::ConfigError {
        key,
        source: None,
        reason,
    };
    let mut rules: Vec<RuleSpec> = config
        .acl
        .iter()
        .map(|r| RuleSpec {
            who: match (&r.username, &r.client_id, r.anonymous) {
                (Some(name), _, _) => Who::User(name.clone()),
                (_, Some(id), _) => Who::ClientId(id.clone()),
                (_, _, true) => Who::Anonymous,
                _ => Who::Everyone,
            },
            topic: r.topic.clone(),
            access: r.access.clone(),
        })
        .collect();
    let from_config = rules.len();
    if !config.acl_file.as_os_str().is_empty() {
        let path = config.acl_file.display();
        let text = std::fs::read_to_string(&config.acl_file)
            .map_err(|e| error("acl_file".into(), format!("cannot read {path}: {e}")))?;
        let imported = acl::import_mosquitto(&text)
            .map_err(|e| error("acl_file".into(), format!("{path}: {e}")))?;
        rules.extend(imported);
    }
    let acl = Acl::new(&AclConfig {
        rules,
        default_allow: config.acl_default == config::AclDefault::Allow,
        client_id_owner: match config.client_id_owner {
            config::ClientIdOwner::Any => acl::ClientIdOwner::Any,
            config::ClientIdOwner::Username => acl::ClientIdOwner::Username,
            config::ClientIdOwner::UsernamePrefix => acl::ClientIdOwner::UsernamePrefix,
        },
        client_id_separator: config.client_id_separator.clone(),
        usernames: config.users.iter().map(|u| u.username.clone()).collect(),
    })
    .map_err(|e| {
        let key = match e.field {
            "client_id_separator" => e.field.to_string(),
            field if e.index < from_config => format!("acl[{}].{field}", e.index),
            field => format!("acl_file (rule {}).{field}", e.index - from_config),
        };
        error(key, e.reason)
    })?;
    Ok(acl)
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err()
        || line.trim_end_matches(['\r', '\n']).is_empty()
    {
        eprintln!("shardmq: give the password on standard input");
        return ExitCode::from(EXIT_CONFIG);
    }
    match shardmq::auth::hash_password(line.trim_end_matches(['\r', '\n'])) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shardmq: cannot hash the password: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn config_error(e: config::ConfigError) -> ExitCode {
    eprintln!("shardmq: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| tracing_subscriber::EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
