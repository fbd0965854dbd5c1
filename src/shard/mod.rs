//! The runtime: N glommio executors, each pinned to one CPU, joined by a channel mesh.
//!
//! `Runtime::start` checks the process preconditions, spawns one executor thread per
//! shard and returns once every shard has joined the mesh and bound its listeners. Each
//! shard owns its data outright; shards interact only through [`ShardMsg`] batches.
//! Shutdown reaches each shard through its own socket pair (a byte, or the main thread
//! going away), so a signal never has to touch shard state from another thread; so does
//! a reload (`reload`), which the shard answers on the same socket once applied.

mod limits;
mod mesh;
mod msg;
pub mod notify;
mod quota;
mod reload;
mod state;
mod wakeup;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::auth::HashQueue;
use crate::broker::persist::migrate::MigrationConfig;
use crate::broker::Recovered;
use crate::config::Config;
use crate::metrics::{Probes, ShardProbe};
use crate::net::Listening;
use crate::storage::{Wal, WalConfig};

/// How long a shard runs tasks before it reaps io_uring completions and timers again.
/// glommio's default, 100 ms, let one connection that always has input hold back every
/// other socket's readiness on the shard for that long: a subscriber whose socket had
/// drained got 1,024 messages per 100 ms beside a flooding publisher. At 2 ms the same
/// subscriber keeps up; the price is one non-blocking `io_uring_enter` per 2 ms of busy
/// time. (A short timer makes glommio 0.9's park-with-runnable-work more likely; see
/// `wakeup`, which bounds it.)
const PREEMPT_TIMER: Duration = Duration::from_millis(2);

pub use limits::{
    bind_listener, claim_port, io_memory_per_shard, raise_nofile_limit, DataDirLock, PortClaim,
    FDS_PER_CONNECTION, MEMLOCK_MIN_BYTES,
};
pub use mesh::{Batch, Mesh, MeshSetup};
pub use msg::{AckTo, ConnRef, ShardMsg};
pub use quota::{
    ConnectionSlot, Quota, RefusalSlot, Refused, RetainedAdmission, RetainedReservation,
    REFUSING_MAX,
};
pub use reload::{Live, Resettled, Snapshot};
pub use state::{Shard, Shutdown, HEALTH_TIMEOUT};

/// What a shard thread reports to the main thread.
#[derive(Debug)]
enum Event {
    Ready,
    Exited(usize, Result<(), String>),
}

/// The running shards, as seen from the main thread.
pub struct Runtime {
    /// The MQTT address every shard listens on (port 0 resolved).
    pub mqtt_addr: SocketAddr,
    /// The metrics address (port 0 resolved).
    pub metrics_addr: SocketAddr,
    /// The MQTT over TLS address, if configured (port 0 resolved).
    pub mqtts_addr: Option<SocketAddr>,
    /// The MQTT over WebSocket address, if configured (port 0 resolved).
    pub ws_addr: Option<SocketAddr>,
    /// The MQTT over WebSocket over TLS address, if configured (port 0 resolved).
    pub wss_addr: Option<SocketAddr>,
    /// Every shard's counters, for reading from the main thread.
    pub probes: Probes,
    shutdown: ShutdownHandle,
    events: mpsc::Receiver<Event>,
    running: usize,
}

/// How the shards ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every shard drained and stopped.
    Clean,
    /// A shard failed or panicked; the message says which and why.
    Failed(String),
    /// Shards were still running at the deadline.
    TimedOut,
}

impl Runtime {
    /// Starts every shard and waits until all are serving under the settings of `live`
    /// (its TLS settings serve `mqtts_listen`).
    pub fn start(config: &Config, live: Arc<Live>) -> Result<Runtime, String> {
        let tls = live.current().tls.clone();
        let mqtt_claim = claim_port("mqtt_listen", config.mqtt_listen)?;
        let metrics_claim = claim_port("metrics_listen", config.metrics_listen)?;
        let mqtts_claim = match config.mqtts_listen {
            Some(addr) if tls.is_some() => Some(claim_port("mqtts_listen", addr)?),
            _ => None,
        };
        let ws_claim = match config.ws_listen {
            Some(addr) => Some(claim_port("ws_listen", addr)?),
            None => None,
        };
        let wss_claim = match config.wss_listen {
            Some(addr) if tls.is_some() => Some(claim_port("wss_listen", addr)?),
            _ => None,
        };
        let (mqtt_addr, metrics_addr) = (mqtt_claim.addr, metrics_claim.addr);
        let mqtts_addr = mqtts_claim.as_ref().map(|c| c.addr);
        let ws_addr = ws_claim.as_ref().map(|c| c.addr);
        let wss_addr = wss_claim.as_ref().map(|c| c.addr);
        let io_memory = io_memory_per_shard(config.shards, config.io_memory_bytes)?;
        crate::broker::persist::migrate::prepare_layout(&MigrationConfig {
            data_dir: config.data_dir.clone(),
            shards: config.shards,
            wal: wal_config(config, config.data_dir.clone())?,
            io_memory_bytes: io_memory,
        })?;
        let fd_connections = raise_nofile_limit();
        if fd_connections < config.connections_max as u64 {
            tracing::warn!(
                connections = fd_connections,
                connections_max = config.connections_max,
                "RLIMIT_NOFILE allows fewer client connections than connections_max \
                 ({FDS_PER_CONNECTION} descriptor each); beyond it accept fails and backs off. \
                 Raise it: `ulimit -n`, LimitNOFILE= in a systemd unit, --ulimit nofile= for a container"
            );
        }
        let config = Arc::new(Config {
            mqtt_listen: mqtt_addr,
            metrics_listen: metrics_addr,
            mqtts_listen: mqtts_addr,
            ws_listen: ws_addr,
            wss_listen: wss_addr,
            ..config.clone()
        });
        let probes: Probes = (0..config.shards)
            .map(|_| Arc::new(ShardProbe::default()))
            .collect();
        let setup = MeshSetup::new(config.shards, config.mesh_channel_batches_max);
        let (events_tx, events) = mpsc::channel();
        let process_connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hashing = HashQueue::start(config.auth_hash_queue_max)
            .map(Arc::new)
            .map_err(|e| format!("cannot start the password-hashing thread: {e}"))?;
        let mut shutdown_senders = Vec::with_capacity(config.shards);

        for id in 0..config.shards {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| format!("cannot create shutdown socket: {e}"))?;
            shutdown_senders.push(ours);
            let theirs = theirs.into_raw_fd();
            let (config, probes, setup, shard_events, auth) = (
                Arc::clone(&config),
                probes.clone(),
                setup.clone(),
                events_tx.clone(),
                (Arc::clone(&live), Arc::clone(&hashing)),
            );
            let quota = Quota::new(Arc::clone(&process_connections));
            let cpu = config.cpus[id];
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("shard-{id}"))
                .io_memory(io_memory)
                // File ops (rename, remove) share the blocking pool; keep it off this CPU's
                // executor thread so it can never stall the ring.
                .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
                .preempt_timer(PREEMPT_TIMER)
                .spawn(move || {
                    // SAFETY: the fd came from into_raw_fd above and is owned only here.
                    let stop = unsafe { glommio::net::UnixStream::from_raw_fd(theirs) };
                    let shared = SharedState {
                        probes,
                        auth,
                        quota,
                    };
                    run_shard(id, config, setup, stop, shard_events, shared)
                })
                .map_err(|e| format!("cannot start shard {id} on CPU {cpu}: {e}"))?;
            let events_tx = events_tx.clone();
            std::thread::Builder::new()
                .name(format!("shard-{id}-join"))
                .spawn(move || {
                    let result = match handle.join() {
                        Ok(result) => result,
                        Err(e) => Err(format!("shard {id} crashed: {e}")),
                    };
                    let _ = events_tx.send(Event::Exited(id, result));
                })
                .map_err(|e| format!("cannot start joiner thread: {e}"))?;
        }
        drop(events_tx);

        let mut runtime = Runtime {
            mqtt_addr,
            metrics_addr,
            mqtts_addr,
            ws_addr,
            wss_addr,
            probes: probes.clone(),
            shutdown: ShutdownHandle {
                senders: shutdown_senders,
            },
            events,
            running: config.shards,
        };
        let mut ready = 0;
        let deadline = (config.start_timeout_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(config.start_timeout_ms));
        while ready < config.shards {
            let event = match deadline {
                Some(at) => runtime
                    .events
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                    .map_err(|e| e == mpsc::RecvTimeoutError::Timeout),
                None => runtime.events.recv().map_err(|_| false),
            };
            match event {
                Err(true) => {
                    runtime.request_shutdown();
                    return Err(format!(
                        "{} of {} shards not serving after start_timeout_ms = {}: a shard is \
                         stuck (the log above says how far each got); exiting so a supervisor \
                         can restart the broker",
                        config.shards - ready,
                        config.shards,
                        config.start_timeout_ms
                    ));
                }
                Ok(Event::Ready) => ready += 1,
                Ok(Event::Exited(id, result)) => {
                    runtime.running -= 1;
                    runtime.request_shutdown();
                    let reason = result.err().unwrap_or_else(|| "exited early".into());
                    return Err(format!("shard {id} failed to start: {reason}"));
                }
                Err(false) => return Err("every shard exited during start".into()),
            }
        }
        // Every shard listens now; the reservations can go.
        drop((mqtt_claim, metrics_claim, mqtts_claim));
        Ok(runtime)
    }

    /// Tells every shard to stop accepting and drain. Idempotent.
    pub fn request_shutdown(&mut self) {
        self.shutdown.trigger();
    }

    /// A handle the signal thread can use to start shutdown.
    pub fn shutdown_handle(&self) -> Result<ShutdownHandle, String> {
        let senders = self
            .shutdown
            .senders
            .iter()
            .map(|s| s.try_clone())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot clone shutdown socket: {e}"))?;
        Ok(ShutdownHandle { senders })
    }

    /// Blocks until every shard has stopped. A shard that fails takes the others down
    /// with it. Once `deadline_after_shutdown` has passed since shutdown started
    /// (`shutdown_started` returns its start), gives up with `TimedOut`.
    pub fn wait(
        mut self,
        shutdown_started: impl Fn() -> Option<Instant>,
        deadline_after_shutdown: Duration,
    ) -> Outcome {
        let mut failure = None;
        while self.running > 0 {
            let event = match shutdown_started() {
                Some(start) => {
                    let left = deadline_after_shutdown.saturating_sub(start.elapsed());
                    match self.events.recv_timeout(left) {
                        Ok(event) => event,
                        Err(mpsc::RecvTimeoutError::Timeout) => return Outcome::TimedOut,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.events.recv_timeout(Duration::from_millis(50)) {
                    Ok(event) => event,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            if let Event::Exited(id, result) = event {
                self.running -= 1;
                if let Err(reason) = result {
                    tracing::error!(shard = id, %reason, "shard failed; stopping the others");
                    failure.get_or_insert(reason);
                    self.request_shutdown();
                } else if shutdown_started().is_none() {
                    failure.get_or_insert(format!("shard {id} stopped unexpectedly"));
                    self.request_shutdown();
                }
            }
        }
        match failure {
            Some(reason) => Outcome::Failed(reason),
            None => Outcome::Clean,
        }
    }
}

/// Starts shutdown from another thread (the signal handler thread).
pub struct ShutdownHandle {
    senders: Vec<std::os::unix::net::UnixStream>,
}

/// The control byte that tells a shard to swap in the settings in force (any other
/// byte: stop).
const RELOAD: u8 = 2;

impl ShutdownHandle {
    /// Tells every shard to stop accepting and drain.
    pub fn trigger(&mut self) {
        self.send(1);
    }

    /// Tells every shard to swap in the settings now in the process's [`Live`] and waits
    /// (at most `limit` each) until it has; returns how many shards did.
    pub fn reload(&mut self, limit: Duration) -> usize {
        use std::io::Read;
        self.send(RELOAD);
        let mut done = 0;
        for sender in &mut self.senders {
            let mut byte = [0u8; 1];
            let _ = sender.set_read_timeout(Some(limit));
            if matches!(sender.read(&mut byte), Ok(1) if byte[0] == RELOAD) {
                done += 1;
            }
        }
        done
    }

    fn send(&mut self, byte: u8) {
        use std::io::Write;
        for sender in &mut self.senders {
            let _ = sender.write_all(&[byte]);
        }
    }
}

/// What a shard shares with the others: counters, credentials, the connection count.
struct SharedState {
    probes: Probes,
    /// Credentials, ACL and TLS settings in force, and the password-hashing queue.
    auth: (Arc<Live>, Arc<HashQueue>),
    quota: Quota,
}

async fn run_shard(
    id: usize,
    config: Arc<Config>,
    setup: MeshSetup,
    mut stop: glommio::net::UnixStream,
    events: mpsc::Sender<Event>,
    shared: SharedState,
) -> Result<(), String> {
    let SharedState {
        probes,
        auth,
        quota,
    } = shared;
    // First of all: every later step may wait on another shard.
    wakeup::spawn();
    // The executor runs this shard's first task: a start stuck before this line is stuck
    // in the executor or the ring setup, not in the broker.
    tracing::debug!(
        shard = id,
        cpu = unsafe { libc::sched_getcpu() },
        "shard executor running; recovering the WAL"
    );
    let (wal, mut recovered) = open_wal(id, &config).await?;
    let _ = probes[id].wal.set(wal.stats());
    tracing::debug!(shard = id, "joining the mesh");
    let joined = Mesh::join(
        setup,
        id,
        config.mesh_batch_messages_max,
        Arc::clone(&probes[id]),
    )
    .await
    .map_err(|e| e.to_string())?;
    let shard = Shard::new(
        id,
        Arc::clone(&config),
        Rc::clone(&joined.mesh),
        probes,
        auth,
        quota,
    );
    tracing::debug!(shard = id, "joined the mesh");
    // Before any peer's session record can arrive (see `retention`).
    shard.shadow_session_records(&recovered.sessions);
    // The WAL is in place before any peer's request (a replay) can arrive.
    let received = std::mem::take(&mut recovered.received);
    let _ = shard.durable.set(crate::broker::Durability::with_received(
        wal,
        received,
        config.qos2_ids_per_shard_max,
    ));
    shard.spawn_receivers(joined.inbound);
    shard.spawn_durability();
    shard.spawn_loopback();
    let (sessions, armed_wills) = install_recovered(&shard, recovered);
    let restored = sessions.len();
    let due_wills = shard.restore_sessions(sessions, armed_wills).await;
    tracing::debug!(shard = id, "sessions restored; waiting for every shard");
    // No shard serves before every shard has rebuilt its sessions and replayed their
    // messages: a live publish can then never overtake a replay.
    shard.recovered_barrier().await;
    tracing::debug!(shard = id, "every shard recovered");
    if restored > 0 {
        tracing::info!(
            shard = id,
            sessions = restored,
            "persistent sessions restored"
        );
    }
    for (client, will) in due_wills {
        shard.publish_will(&client, will);
    }
    shard.spawn_redelivery();
    shard.spawn_cursor_flush();
    shard.spawn_sent_log();
    shard.spawn_retention();
    shard.spawn_watermarks();
    shard.spawn_sys();

    let listener = bind_listener(config.mqtt_listen)
        .map_err(|e| format!("binding mqtt_listen {}: {e}", config.mqtt_listen))?;
    let tls = shard.tls.borrow().is_some();
    // Beside mqtt_listen: each listener that is configured, with what it speaks (the TLS
    // ones only with certificates loaded at start).
    let mut listeners = Vec::new();
    for (key, addr, kind) in [
        ("mqtts_listen", config.mqtts_listen, Listening::Tls),
        ("ws_listen", config.ws_listen, Listening::Ws),
        ("wss_listen", config.wss_listen, Listening::Wss),
    ] {
        let usable = tls || kind == Listening::Ws;
        if let Some(addr) = addr.filter(|_| usable) {
            let listener = bind_listener(addr).map_err(|e| format!("binding {key} {addr}: {e}"))?;
            listeners.push((Rc::new(listener), kind));
        }
    }
    let metrics_tls = tls && config.metrics_tls;
    let metrics = if id == config.metrics_shard {
        Some(
            bind_listener(config.metrics_listen)
                .map_err(|e| format!("binding metrics_listen {}: {e}", config.metrics_listen))?,
        )
    } else {
        None
    };
    tracing::debug!(
        shard = id,
        cpu = unsafe { libc::sched_getcpu() },
        "shard serving"
    );

    let metrics_task = metrics.map(|listener| {
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            let probes = shard.probes.clone();
            let checker = Rc::clone(&shard);
            let health: crate::metrics::HealthCheck = Rc::new(move || {
                let shard = Rc::clone(&checker);
                Box::pin(async move { shard.check_health().await })
            });
            let admin = crate::metrics::Admin {
                backend: Rc::clone(&shard) as Rc<dyn crate::metrics::AdminBackend>,
                access: Rc::new(crate::metrics::AdminAccess {
                    key: shard.config.admin_key.clone(),
                    localhost_only: shard.config.admin_localhost_only,
                }),
            };
            let stop = shard.shutdown.wait();
            let acceptor = Rc::clone(&shard);
            let tls = move || metrics_tls.then(|| acceptor.tls.borrow().clone()).flatten();
            crate::metrics::serve(listener, tls, probes, health, admin, stop).await;
        })
    });
    {
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            let mut byte = [0u8; 1];
            // RELOAD swaps in the settings in force; any other byte, EOF (main thread
            // gone) or an error means: stop.
            while let Ok(1) = stop.read(&mut byte).await {
                if byte[0] != RELOAD {
                    break;
                }
                let done = shard.reload();
                tracing::debug!(
                    shard = shard.id,
                    kept = done.kept,
                    closed = done.closed,
                    "reload applied"
                );
                // The main thread counts the reload once every shard has it in force.
                let _ = stop.write_all(&[RELOAD]).await;
            }
            shard.shutdown.trigger();
        })
        .detach();
    }
    if metrics_task.is_some() {
        spawn_watchdog(&shard);
    }
    let _ = events.send(Event::Ready);

    let others = listeners
        .iter()
        .map(|(listener, kind)| {
            let shard = Rc::clone(&shard);
            let (listener, kind) = (Rc::clone(listener), *kind);
            glommio::spawn_local(
                async move { crate::net::accept_loop(&shard, &listener, kind).await },
            )
        })
        .collect::<Vec<_>>();
    crate::net::accept_loop(&shard, &listener, Listening::Tcp).await;
    for task in others {
        task.await;
    }
    let drain = Duration::from_millis(config.shutdown_timeout_ms * 8 / 10);
    shard.connections.drain(drain).await;
    // What the closed connections acknowledged is not sent again after the restart.
    let flush = Duration::from_millis(config.shutdown_timeout_ms / 10);
    shard.flush_cursors_for_stop(flush).await;
    if let Some(task) = metrics_task {
        task.await;
    }
    if let Some(durable) = shard.durable.get() {
        if let Err(e) = durable.wal.sync_all().await {
            tracing::error!(shard = id, error = %e, "final WAL sync failed");
        }
    }
    shard.mesh.close();
    drop(listener);
    tracing::debug!(shard = id, "shard stopped");
    Ok(())
}

/// On the metrics shard under a systemd watchdog: pings it after each ping round of every
/// other shard over the mesh (see [`notify`]); a round that fails skips the ping.
fn spawn_watchdog(shard: &Rc<Shard>) {
    let Some(every) = notify::watchdog_interval() else {
        return;
    };
    let shard = Rc::clone(shard);
    glommio::spawn_local(async move {
        let pings = async {
            loop {
                match shard.check_health().await {
                    Ok(()) => notify::watchdog(),
                    Err(reason) => tracing::warn!(%reason, "systemd watchdog not pinged"),
                }
                glommio::timer::sleep(every).await;
            }
        };
        futures_lite::future::or(pings, shard.shutdown.wait()).await;
    })
    .detach();
}

/// Opens (and recovers) this shard's WAL in `data_dir/shard-<id>`.
async fn open_wal(id: usize, config: &Config) -> Result<(Wal, Recovered), String> {
    let dir = config.data_dir.join(format!("shard-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let wal_config = wal_config(config, dir.clone())?;
    let mut recovered = Recovered {
        shard: id as u16,
        ..Recovered::default()
    };
    let (wal, report) = Wal::open(wal_config, |record| recovered.visit(record))
        .await
        .map_err(|e| format!("opening the WAL in {}: {e}", dir.display()))?;
    if recovered.damaged > 0 {
        tracing::error!(
            shard = id,
            records = recovered.damaged,
            "WAL session records with a valid CRC did not decode; they were skipped"
        );
    }
    if report.torn_records > 0 {
        tracing::warn!(shard = id, torn_records = report.torn_records, torn_bytes = report.torn_bytes,
            reason = ?report.torn_reason, "WAL had a torn tail (cut at the last intact record)");
    }
    tracing::info!(
        shard = id,
        records = report.records,
        segments = report.segments,
        publishes = recovered.publishes,
        retained = recovered.retained.len(),
        sessions = recovered.sessions.len(),
        recovery_ms = report.duration.as_millis() as u64,
        next_offset = report.next_offset.0,
        "WAL recovered"
    );
    Ok((wal, recovered))
}

/// The WAL settings of the shard whose log is in `dir`.
fn wal_config(config: &Config, dir: std::path::PathBuf) -> Result<WalConfig, String> {
    let mut wal_config = WalConfig::new(dir);
    wal_config.fsync_policy = config
        .fsync_policy
        .parse()
        .map_err(|e| format!("fsync_policy: {e}"))?;
    wal_config.segment_bytes = config.segment_bytes;
    wal_config.write_buffer_bytes = config.wal_buffer_bytes;
    wal_config.retention_ms = (config.retention_ms > 0).then_some(config.retention_ms);
    wal_config.retention_bytes = (config.retention_bytes > 0).then_some(config.retention_bytes);
    Ok(wal_config)
}

/// Installs the recovered retained messages; returns the persistent sessions to restore
/// and the wills of connections the crash cut.
fn install_recovered(
    shard: &Shard,
    recovered: Recovered,
) -> (
    std::collections::HashMap<String, crate::broker::RecoveredSession>,
    crate::broker::ArmedWills,
) {
    let mut retained = shard.broker.retained.borrow_mut();
    let share = shard.config.retained_messages_per_shard_max();
    let bytes_share = shard.config.retained_bytes_per_shard_max();
    let (mut over_share, mut over_bytes) = (0u64, 0u64);
    for (topic, msg) in recovered.retained {
        if msg.payload.is_empty() || msg.is_expired(std::time::Instant::now()) {
            continue;
        }
        // Only a lowered `retained_messages_max` gets here: the limit held when they
        // were stored.
        if retained.len() >= share {
            over_share += 1;
            continue;
        }
        let bytes = msg.cost_bytes();
        if shard.quota.retained_bytes() + bytes > bytes_share {
            over_bytes += 1;
            continue;
        }
        // A copy's version is not its own offset: remember it for the next copy.
        if let Some(&version) = recovered.retained_versions.get(&topic) {
            if msg.log.is_none_or(|p| p.offset != version) {
                let mut versions = shard.broker.retained_versions.borrow_mut();
                versions.insert(topic.clone(), version);
            }
        }
        retained.insert(&topic, msg);
        shard.quota.retained_bytes_changed(bytes, 0);
    }
    if over_bytes > 0 {
        let limit = crate::metrics::Limit::RetainedBytesMax;
        shard.probe.hits(limit, over_bytes);
        tracing::warn!(
            shard = shard.id,
            dropped = over_bytes,
            bytes_share,
            "more retained bytes in the WAL than retained_bytes_max allows; some not restored"
        );
    }
    if over_share > 0 {
        shard
            .probe
            .hits(crate::metrics::Limit::RetainedMessagesMax, over_share);
        tracing::warn!(
            shard = shard.id,
            dropped = over_share,
            share,
            "more retained topics in the WAL than retained_messages_max allows; some not restored"
        );
    }
    shard
        .probe
        .retained_messages_current
        .set(retained.len() as i64);
    (recovered.sessions, recovered.wills)
}
