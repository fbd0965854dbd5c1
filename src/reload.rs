//! Live reload, the main thread's side: on SIGHUP the config is read again from the same
//! sources the broker started with (file, environment captured at start, flags), the
//! users, API keys, ACL and TLS files are checked and built once, and only then handed to
//! the shards (see `server::reload`). A bad file is refused, named in the log line, and
//! the old settings stay in force. Keys that only a restart can change are logged and
//! ignored.
//!
//! `shardmq reload` signals the running broker: it reads the pid from the data dir's
//! lock file and sends SIGHUP, as `ExecReload=/bin/kill -HUP $MAINPID` does.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

use shardmq::config::{self, Config, ConfigSources};
use shardmq::metrics::Probes;
use shardmq::runtime::ShutdownHandle;
use shardmq::server::{Live, Snapshot};

/// The config keys a reload applies; any other key changed in the file needs a restart.
const RELOADABLE: &[&str] = &[
    "allow_anonymous",
    "api_keys",
    "users",
    "acl",
    "acl_file",
    "acl_default",
    "client_id_owner",
    "client_id_separator",
    "tls_cert_file",
    "tls_key_file",
    "tls_ca_file",
    "tls_require_certificate",
];

/// How long a shard may take to put a reload in force before the main thread stops
/// waiting for it (it still will: the settings are in `Live`).
const SHARD_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Index of each result in `shardmq_config_reloads_total` (see `metrics::RELOAD_RESULTS`).
const OK: usize = 0;
const FAILED: usize = 1;

/// What the broker was started with, to reload from.
pub struct Reloader {
    /// The config sources (file path, environment and flags as at start).
    pub sources: ConfigSources,
    /// The validated config the broker runs with.
    pub started: Config,
    /// The settings in force, shared with the shards.
    pub live: std::sync::Arc<Live>,
}

impl Reloader {
    /// Reads the config again and, if it is good, puts it in force on every shard.
    pub fn reload(&self, shards: &mut ShutdownHandle, probes: &Probes) {
        match self.build() {
            Ok((snapshot, restart)) => {
                for key in &restart {
                    tracing::warn!(
                        key = key.as_str(),
                        "reload: `{key}` changed but needs a restart; ignored until then"
                    );
                }
                let users = snapshot.auth.user_count();
                let acl_rules = snapshot.auth.acl().rule_count();
                let tls = snapshot.tls.is_some();
                self.live.replace(snapshot);
                let applied = shards.reload(SHARD_ACK_TIMEOUT);
                if applied < probes.len() {
                    tracing::warn!(
                        applied,
                        shards = probes.len(),
                        "reload: some shards did not confirm the new settings in time"
                    );
                }
                tracing::info!(
                    users,
                    acl_rules,
                    tls,
                    ignored = restart.len(),
                    "configuration reloaded: users, API keys, ACL and TLS files in force for \
                     new operations; existing connections checked again"
                );
                probes[0].config_reloads[OK].inc();
            }
            Err(e) => {
                tracing::error!(
                    key = e.key.as_str(),
                    error = %e,
                    "reload refused: the previous settings stay in force"
                );
                probes[0].config_reloads[FAILED].inc();
            }
        }
    }

    /// The new settings and the changed keys that need a restart, or the first error.
    fn build(&self) -> Result<(Snapshot, Vec<String>), config::ConfigError> {
        let mut config = config::load(&self.sources)?;
        config.validate(&config::affinity_cpus())?;
        let auth = crate::authenticator(&config)?;
        let tls = shardmq::door::tls::server_config(&config)?;
        let started_tls = self.live.current().tls.is_some();
        let tls = match (started_tls, tls) {
            (true, Some(tls)) => Some(tls),
            // Without TLS at start there is no TLS listener to serve it; with TLS at
            // start and none now (mqtts_listen removed: needs a restart) the old stays.
            (false, _) => None,
            (true, None) => self.live.current().tls.clone(),
        };
        let restart = changed_keys(&self.started, &config)
            .into_iter()
            .filter(|key| !RELOADABLE.contains(&key.as_str()))
            .collect();
        Ok((Snapshot { auth, tls }, restart))
    }
}

/// The top-level keys whose values differ between `a` and `b`.
fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let table = |c: &Config| toml::Table::try_from(c).unwrap_or_default();
    let (a, b) = (table(a), table(b));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|key| a.get(*key) != b.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// `shardmq reload`: sends SIGHUP to the broker that holds `data_dir`'s lock.
pub fn signal_running(data_dir: &Path) -> Result<i32, String> {
    let path = data_dir.join("shardmq.lock");
    let mut file = std::fs::File::open(&path)
        .map_err(|e| format!("no running broker: cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a valid, owned descriptor. Getting the lock means nobody holds it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Err(format!(
            "no running broker: nobody holds {} (is the data_dir right?)",
            path.display()
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} holds no pid: {text:?}", path.display()))?;
    // SAFETY: kill(2) with a pid read from the lock file the broker holds.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(pid)
}
