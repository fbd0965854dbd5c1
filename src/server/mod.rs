//! The broker process, wired: the runtime's shards, on each a [`Broker`] and its doors,
//! and the metrics endpoint on the metrics shard.
//!
//! [`Server::start`] claims the ports, moves the data dir into this shard count's layout,
//! starts the runtime and returns once every shard serves. On each shard, `run_shard`
//! reads the WAL, joins the mesh, starts the broker (recovery, the start barrier), opens
//! the MQTT door on each configured listener (and the Kafka door on `kafka_listen`),
//! answers reloads and, at shutdown, closes
//! the doors before the broker logs its last cursors.
//!
//! May use every module below it; nothing uses it but the daemon (`src/main.rs`).

mod reload;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use crate::auth::HashQueue;
use crate::broker::{self, Broker, Recovery, ShardMsg};
use crate::config::Config;
use crate::door::kafka::KafkaDoor;
use crate::door::mqtt::{Door, Listening};
use crate::metrics::{Probes, ShardProbe};
use crate::router::ShardId;
use crate::runtime::{
    bind_listener, claim_port, io_memory_per_shard, notify, raise_nofile_limit, spawn_naps,
    ConnectionQuota, Control, Mesh, MeshSetup, Outcome, Request, Runtime, ShardStart,
    ShutdownHandle, FDS_PER_CONNECTION, SHARD_LOG,
};

pub use crate::door::mqtt::Resettled;
pub use reload::{Live, Snapshot};

/// The running broker, as seen from the main thread.
pub struct Server {
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
    /// The Kafka protocol address, if configured (port 0 resolved).
    pub kafka_addr: Option<SocketAddr>,
    /// Every shard's counters, for reading from the main thread.
    pub probes: Probes,
    runtime: Runtime,
}

/// What every shard shares: the configuration with its ports resolved, the counters,
/// the settings in force, the password-hashing thread and the process's connection count.
#[derive(Clone)]
struct Shared {
    config: Arc<Config>,
    probes: Probes,
    mesh: MeshSetup<ShardMsg>,
    live: Arc<Live>,
    hashing: Arc<HashQueue>,
    process_connections: Arc<AtomicUsize>,
}

impl Server {
    /// Starts every shard and waits until all are serving under the settings of `live`
    /// (its TLS settings serve `mqtts_listen`).
    pub fn start(config: &Config, live: Arc<Live>) -> Result<Server, String> {
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
        let kafka_claim = match config.kafka_listen {
            Some(addr) => Some(claim_port("kafka_listen", addr)?),
            None => None,
        };
        let (mqtt_addr, metrics_addr) = (mqtt_claim.addr, metrics_claim.addr);
        let kafka_addr = kafka_claim.as_ref().map(|c| c.addr);
        let mqtts_addr = mqtts_claim.as_ref().map(|c| c.addr);
        let ws_addr = ws_claim.as_ref().map(|c| c.addr);
        let wss_addr = wss_claim.as_ref().map(|c| c.addr);
        let io_memory = io_memory_per_shard(config.shards, config.io_memory_bytes)?;
        broker::prepare_layout(config, io_memory)?;
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
            kafka_listen: kafka_addr,
            ..config.clone()
        });
        let probes: Probes = (0..config.shards)
            .map(|_| Arc::new(ShardProbe::default()))
            .collect();
        let shared = Shared {
            config: Arc::clone(&config),
            probes: probes.clone(),
            mesh: MeshSetup::new(config.shards, config.mesh_channel_batches_max),
            live,
            hashing: HashQueue::start(config.auth_hash_queue_max)
                .map(Arc::new)
                .map_err(|e| format!("cannot start the password-hashing thread: {e}"))?,
            process_connections: Arc::new(AtomicUsize::new(0)),
        };
        let runtime = Runtime::start(&config, io_memory, move |start| run_shard(start, shared))?;
        // Every shard listens now; the reservations can go.
        drop((
            mqtt_claim,
            metrics_claim,
            mqtts_claim,
            ws_claim,
            wss_claim,
            kafka_claim,
        ));
        Ok(Server {
            mqtt_addr,
            metrics_addr,
            mqtts_addr,
            ws_addr,
            wss_addr,
            kafka_addr,
            probes,
            runtime,
        })
    }

    /// Tells every shard to stop accepting and drain. Idempotent.
    pub fn request_shutdown(&mut self) {
        self.runtime.request_shutdown();
    }

    /// A handle the signal thread can use to start shutdown or a reload.
    pub fn shutdown_handle(&self) -> Result<ShutdownHandle, String> {
        self.runtime.shutdown_handle()
    }

    /// Blocks until every shard has stopped (see [`Runtime::wait`]).
    pub fn wait(
        self,
        shutdown_started: impl Fn() -> Option<Instant>,
        deadline_after_shutdown: Duration,
    ) -> Outcome {
        self.runtime.wait(shutdown_started, deadline_after_shutdown)
    }
}

/// Bytes in transit on a mesh link to or from a shard from which it takes no light-load
/// nap: a few hundred messages, far above what light load keeps in flight.
const NAP_LINK_BYTES_MAX: usize = 64 << 10;

/// One shard's life: recover, join the mesh, start the broker, open the doors, serve
/// until asked to stop, close the doors, stop the broker.
async fn run_shard(start: ShardStart, shared: Shared) -> Result<(), String> {
    let ShardStart { id, control, ready } = start;
    let config = Arc::clone(&shared.config);
    let broker = start_broker(id, &shared).await?;
    let snapshot = shared.live.current();
    let quota = ConnectionQuota::new(
        Arc::clone(&shared.process_connections),
        Arc::clone(&config),
        Arc::clone(&broker.probe),
    );
    let kafka = config.kafka_listen.map(|listen| {
        KafkaDoor::new(
            Rc::clone(&broker),
            Rc::clone(&quota),
            Arc::clone(&shared.hashing),
            listen,
        )
    });
    let door = Door::new(
        Rc::clone(&broker),
        quota,
        Arc::clone(&shared.hashing),
        snapshot.tls.clone(),
    );
    let tls = snapshot.tls.is_some();
    let listeners = Listeners::bind(id, &config, tls)?;
    tracing::debug!(
        target: SHARD_LOG,
        shard = id,
        cpu = unsafe { libc::sched_getcpu() },
        "shard serving"
    );
    let metrics_task = listeners
        .metrics
        .map(|listener| spawn_metrics(&door, listener, tls));
    spawn_control(control, &broker, &door, Arc::clone(&shared.live));
    if metrics_task.is_some() {
        spawn_watchdog(&broker);
    }
    let mesh = Rc::clone(&broker.mesh);
    spawn_naps(
        Duration::from_micros(config.wake_coalesce_us),
        Arc::clone(&broker.probe),
        move || mesh.backlogged(NAP_LINK_BYTES_MAX),
    );
    ready.ready();

    let others = listeners
        .others
        .iter()
        .map(|(listener, kind)| {
            let (door, listener, kind) = (Rc::clone(&door), Rc::clone(listener), *kind);
            glommio::spawn_local(async move { door.accept_loop(&listener, kind).await })
        })
        .collect::<Vec<_>>();
    let kafka_task = kafka
        .as_ref()
        .zip(listeners.kafka.as_ref())
        .map(|(kafka, listener)| {
            let (kafka, listener) = (Rc::clone(kafka), Rc::clone(listener));
            glommio::spawn_local(async move { kafka.accept_loop(&listener).await })
        });
    door.accept_loop(&listeners.mqtt, Listening::Tcp).await;
    for task in others {
        task.await;
    }
    if let Some(task) = kafka_task {
        task.await;
    }
    let drain = Duration::from_millis(config.shutdown_timeout_ms * 8 / 10);
    match &kafka {
        Some(kafka) => {
            futures_lite::future::zip(door.drain(drain), kafka.drain(drain)).await;
        }
        None => door.drain(drain).await,
    }
    broker
        .stop(Duration::from_millis(config.shutdown_timeout_ms / 10))
        .await;
    if let Some(task) = metrics_task {
        task.await;
    }
    // Only now: dropping a listener resets the connections still in its backlog.
    drop((listeners.mqtt, listeners.others, listeners.kafka));
    tracing::debug!(target: SHARD_LOG, shard = id, "shard stopped");
    Ok(())
}

/// Reads shard `id`'s WAL, joins the mesh and starts the broker: returns once every
/// shard has recovered (the start barrier).
async fn start_broker(id: usize, shared: &Shared) -> Result<Rc<Broker>, String> {
    let config = &shared.config;
    // The executor runs this shard's first task: a start stuck before this line is stuck
    // in the executor or the ring setup, not in the broker.
    tracing::debug!(
        target: SHARD_LOG,
        shard = id,
        cpu = unsafe { libc::sched_getcpu() },
        "shard executor running; recovering the WAL"
    );
    // The runtime numbers its shards with plain indices; the broker knows them by id.
    let shard = ShardId::from_index(id);
    let recovery = Recovery::open(shard, config).await?;
    let _ = shared.probes[id].wal.set(recovery.wal_stats());
    tracing::debug!(target: SHARD_LOG, shard = id, "joining the mesh");
    let joined = Mesh::join(
        shared.mesh.clone(),
        id,
        config.mesh_batch_messages_max,
        Arc::clone(&shared.probes[id]),
    )
    .await
    .map_err(|e| e.to_string())?;
    let broker = Broker::new(
        shard,
        Arc::clone(config),
        Rc::clone(&joined.mesh),
        shared.probes.clone(),
        Arc::clone(&shared.live.current().auth),
    );
    tracing::debug!(target: SHARD_LOG, shard = id, "joined the mesh");
    broker.start(recovery, joined.inbound).await;
    Ok(broker)
}

/// A shard's listeners: `mqtt_listen`, the other MQTT listeners configured (the TLS
/// ones only with certificates loaded at start), and `metrics_listen` on the metrics
/// shard.
struct Listeners {
    mqtt: TcpListener,
    others: Vec<(Rc<TcpListener>, Listening)>,
    kafka: Option<Rc<TcpListener>>,
    metrics: Option<TcpListener>,
}

impl Listeners {
    fn bind(id: usize, config: &Config, tls: bool) -> Result<Listeners, String> {
        let bind = |key: &str, addr: SocketAddr| {
            bind_listener(addr).map_err(|e| format!("binding {key} {addr}: {e}"))
        };
        let mqtt = bind("mqtt_listen", config.mqtt_listen)?;
        let mut others = Vec::new();
        for (key, addr, kind) in [
            ("mqtts_listen", config.mqtts_listen, Listening::Tls),
            ("ws_listen", config.ws_listen, Listening::Ws),
            ("wss_listen", config.wss_listen, Listening::Wss),
        ] {
            let usable = tls || kind == Listening::Ws;
            if let Some(addr) = addr.filter(|_| usable) {
                others.push((Rc::new(bind(key, addr)?), kind));
            }
        }
        let kafka = match config.kafka_listen {
            Some(addr) => Some(Rc::new(bind("kafka_listen", addr)?)),
            None => None,
        };
        let metrics = if id == config.metrics_shard {
            Some(bind("metrics_listen", config.metrics_listen)?)
        } else {
            None
        };
        Ok(Listeners {
            mqtt,
            others,
            kafka,
            metrics,
        })
    }
}

/// Answers the main thread: a reload puts the settings now in `live` in force on the
/// broker and the door; anything else starts this shard's shutdown.
fn spawn_control(mut control: Control, broker: &Rc<Broker>, door: &Rc<Door>, live: Arc<Live>) {
    let (broker, door) = (Rc::clone(broker), Rc::clone(door));
    glommio::spawn_local(async move {
        while control.next().await == Request::Reload {
            let done = reload::apply(&live.current(), &broker, &door);
            tracing::debug!(
                shard = broker.id.index(),
                kept = done.kept,
                closed = done.closed,
                "reload applied"
            );
            control.reloaded().await;
        }
        broker.shutdown.trigger();
    })
    .detach();
}

/// Serves `/metrics`, `/health` and the admin API on `listener` (over TLS with
/// `metrics_tls` and certificates in force).
fn spawn_metrics(
    door: &Rc<Door>,
    listener: glommio::net::TcpListener,
    tls: bool,
) -> glommio::Task<()> {
    let door = Rc::clone(door);
    let metrics_tls = tls && door.broker.config.metrics_tls;
    glommio::spawn_local(async move {
        let broker = Rc::clone(&door.broker);
        let probes = broker.probes.clone();
        let checker = Rc::clone(&broker);
        let health: crate::metrics::HealthCheck = Rc::new(move || {
            let broker = Rc::clone(&checker);
            Box::pin(async move { broker.check_health().await })
        });
        let admin = crate::metrics::Admin {
            backend: Rc::clone(&broker) as Rc<dyn crate::metrics::AdminBackend>,
            access: Rc::new(crate::metrics::AdminAccess {
                key: broker.config.admin_key.clone(),
                localhost_only: broker.config.admin_localhost_only,
            }),
        };
        let stop = broker.shutdown.wait();
        let acceptor = Rc::clone(&door);
        let tls = move || metrics_tls.then(|| acceptor.tls()).flatten();
        crate::metrics::serve(listener, tls, probes, health, admin, stop).await;
    })
}

/// On the metrics shard under a systemd watchdog: pings it after each ping round of every
/// other shard over the mesh (see [`notify`]); a round that fails skips the ping.
fn spawn_watchdog(broker: &Rc<Broker>) {
    let Some(every) = notify::watchdog_interval() else {
        return;
    };
    let broker = Rc::clone(broker);
    glommio::spawn_local(async move {
        let pings = async {
            loop {
                match broker.check_health().await {
                    Ok(()) => notify::watchdog(),
                    Err(reason) => tracing::warn!(%reason, "systemd watchdog not pinged"),
                }
                glommio::timer::sleep(every).await;
            }
        };
        futures_lite::future::or(pings, broker.shutdown.wait()).await;
    })
    .detach();
}
