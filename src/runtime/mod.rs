//! The runtime: N glommio executors, each pinned to one CPU, and how the main thread
//! starts, reloads and stops them.
//!
//! [`Runtime::start`] spawns one executor thread per shard, runs the caller's shard main
//! on each and returns once every shard has said it serves ([`ShardStart::ready`]).
//! Shutdown and reload reach each shard through its own socket pair
//! ([`ShardStart::control`]: a byte, or the main thread going away), so a signal never
//! has to touch shard state from another thread. Beside that, the runtime offers what
//! every shard needs and no shard owns: the channel mesh (generic over its message),
//! the shutdown latch, periodic tasks, light-load naps, the connection quota and
//! process bootstrap (ports, rlimits, locked memory).
//!
//! May use: `config`, `metrics`. It knows neither the broker nor its protocols.

mod deadlines;
mod every;
mod lasting;
mod limits;
mod mesh;
mod nap;
pub mod notify;
mod quota;
mod shutdown;
mod tokens;
mod wakeup;

use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::config::Config;

/// How long a shard runs tasks before it reaps io_uring completions and timers again.
/// glommio's default, 100 ms, let one connection that always has input hold back every
/// other socket's readiness on the shard for that long: a subscriber whose socket had
/// drained got 1,024 messages per 100 ms beside a flooding publisher. At 2 ms the same
/// subscriber keeps up; the price is one non-blocking `io_uring_enter` per 2 ms of busy
/// time. (A short timer makes glommio 0.9's park-with-runnable-work more likely; see
/// `wakeup`, which ends such a park within its period.)
const PREEMPT_TIMER: Duration = Duration::from_millis(2);

/// Entries of each io_uring ring of a shard. Every idle connection keeps a poll request
/// armed in the ring, and the kernel keeps those in a cancel hash with 2^(log2(CQ
/// entries) - 5) buckets, clamped to 2..256. glommio cancels the poll that links its
/// rings every time the shard parks and wakes, which walks one bucket: at glommio's
/// default depth (128: 8 buckets) and 15,000 idle connections that walk was 61 % of the
/// broker's idle CPU. At 4,096 (8,192 CQ entries: 256 buckets) the walk is 32 times
/// shorter and the idle CPU half (PERF.md, "Idle connections side by side"); the rings
/// cost about 3 MB more per shard.
///
/// A process without CAP_IPC_LOCK has its rings charged to RLIMIT_MEMLOCK, and a ring
/// that does not fit fails the shard's start (while a buffer registration that does not
/// fit only falls back to plain buffers); the rings of a process that just exited are
/// released a moment after it. Under a finite limit (8 MB by default for a user) the deep
/// rings would take most of it and a quick restart could fail, so there the shards keep
/// glommio's default depth ([`SMALL_RING_DEPTH`]). The packaged unit sets
/// `LimitMEMLOCK=infinity`.
const RING_DEPTH: usize = 4096;

/// The ring depth under a finite RLIMIT_MEMLOCK without CAP_IPC_LOCK (glommio's default).
const SMALL_RING_DEPTH: usize = 128;

/// [`RING_DEPTH`] when locked memory is no constraint (root, or RLIMIT_MEMLOCK
/// unlimited), else [`SMALL_RING_DEPTH`].
fn ring_depth() -> usize {
    if limits::memlock_unconstrained() {
        RING_DEPTH
    } else {
        SMALL_RING_DEPTH
    }
}

/// The log target of a shard's start and stop (`SHARDMQ_LOG_LEVEL=info,shardmq::shard=debug`
/// shows how far each shard got).
pub const SHARD_LOG: &str = "shardmq::shard";

pub use deadlines::{within, Expired};
pub use every::spawn_every;
pub use lasting::lasting;
pub use limits::{
    bind_listener, claim_port, io_memory_per_shard, no_huge_pages, raise_nofile_limit, DataDirLock,
    PortClaim, FDS_PER_CONNECTION, MEMLOCK_MIN_BYTES,
};
pub use mesh::{batch_cost_bytes, Batch, Joined, Mesh, MeshMessage, MeshSetup};
pub use nap::spawn as spawn_naps;
pub use quota::{ConnectionQuota, ConnectionSlot, RefusalSlot, Refused, REFUSING_MAX};
pub use shutdown::Shutdown;
pub use tokens::{index as token_index, TokenMint, TokenTable, Tokened};
pub use wakeup::spawn as spawn_executor;

/// What a shard thread reports to the main thread.
#[derive(Debug)]
enum Event {
    Ready,
    Exited(usize, Result<(), String>),
}

/// The running shards, as seen from the main thread.
pub struct Runtime {
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
    /// Starts one executor per shard, pinned to `config.cpus[id]` with `io_memory` bytes
    /// of locked memory each, runs `shard_main` on each, and waits (at most
    /// `start_timeout_ms`) until every shard called [`Ready::ready`].
    pub fn start<F, Fut>(
        config: &Config,
        io_memory: usize,
        shard_main: F,
    ) -> Result<Runtime, String>
    where
        F: FnOnce(ShardStart) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        let (events_tx, events) = mpsc::channel();
        let mut control_senders = Vec::with_capacity(config.shards);
        for id in 0..config.shards {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| format!("cannot create shutdown socket: {e}"))?;
            control_senders.push(ours);
            let cpu = config.cpus[id];
            let start = PendingStart {
                id,
                control: theirs,
                events: events_tx.clone(),
            };
            spawn_shard(start, cpu, io_memory, shard_main.clone())?;
        }
        drop(events_tx);
        let mut runtime = Runtime {
            shutdown: ShutdownHandle {
                senders: control_senders,
            },
            events,
            running: config.shards,
        };
        runtime.wait_ready(config)?;
        Ok(runtime)
    }

    /// Waits until every shard is ready, or one failed, or `start_timeout_ms` passed (the
    /// shards are then told to stop).
    fn wait_ready(&mut self, config: &Config) -> Result<(), String> {
        let mut ready = 0;
        let deadline = (config.start_timeout_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(config.start_timeout_ms));
        while ready < config.shards {
            let event = match deadline {
                Some(at) => self
                    .events
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                    .map_err(|e| e == mpsc::RecvTimeoutError::Timeout),
                None => self.events.recv().map_err(|_| false),
            };
            match event {
                Err(true) => {
                    self.request_shutdown();
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
                    self.running -= 1;
                    self.request_shutdown();
                    let reason = result.err().unwrap_or_else(|| "exited early".into());
                    return Err(format!("shard {id} failed to start: {reason}"));
                }
                Err(false) => return Err("every shard exited during start".into()),
            }
        }
        Ok(())
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

    /// Tells every shard to swap in the settings now in the process's `Live` and waits
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

/// A shard about to start: its id, the runtime's end of its control socket pair, and
/// where it reports.
struct PendingStart {
    id: usize,
    control: std::os::unix::net::UnixStream,
    events: mpsc::Sender<Event>,
}

/// Starts shard `start.id`'s executor thread on `cpu` running `shard_main`, and a thread
/// that reports when it exits.
fn spawn_shard<F, Fut>(
    start: PendingStart,
    cpu: usize,
    io_memory: usize,
    shard_main: F,
) -> Result<(), String>
where
    F: FnOnce(ShardStart) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + 'static,
{
    let PendingStart {
        id,
        control,
        events,
    } = start;
    let control = control.into_raw_fd();
    let ready = events.clone();
    let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(io_memory)
        // File ops (rename, remove) share the blocking pool; keep it off this CPU's
        // executor thread so it can never stall the ring.
        .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
        .preempt_timer(PREEMPT_TIMER)
        .ring_depth(ring_depth());
    let handle = spawn_executor(builder, format!("shard-{id}"), move || {
        // SAFETY: the fd came from into_raw_fd above and is owned only here.
        let control = unsafe { glommio::net::UnixStream::from_raw_fd(control) };
        shard_main(ShardStart {
            id,
            control: Control { stream: control },
            ready: Ready(ready),
        })
    })
    .map_err(|e| format!("cannot start shard {id} on CPU {cpu}: {e}"))?;
    std::thread::Builder::new()
        .name(format!("shard-{id}-join"))
        .spawn(move || {
            let result = match handle.join() {
                Ok(result) => result.and_then(|r| r),
                Err(panic) => Err(format!("shard {id} crashed: {}", panic_message(&*panic))),
            };
            let _ = events.send(Event::Exited(id, result));
        })
        .map_err(|e| format!("cannot start joiner thread: {e}"))?;
    Ok(())
}

/// The message a thread panicked with, if it was text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "a panic without a message",
    }
}

/// What a shard's main gets from the runtime.
pub struct ShardStart {
    /// The shard's id: its index into `cpus` and the mesh.
    pub id: usize,
    /// Where the main thread's stop and reload requests arrive.
    pub control: Control,
    /// Tells the main thread this shard serves.
    pub ready: Ready,
}

/// Tells the main thread a shard serves (see [`Runtime::start`]).
pub struct Ready(mpsc::Sender<Event>);

impl Ready {
    /// This shard has recovered, bound its listeners and serves.
    pub fn ready(&self) {
        let _ = self.0.send(Event::Ready);
    }
}

/// What the main thread asks of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Put the settings now in force in place, then answer with [`Control::reloaded`].
    Reload,
    /// Stop accepting and drain (also: the main thread has gone away).
    Stop,
}

/// A shard's end of its control socket.
pub struct Control {
    stream: glommio::net::UnixStream,
}

impl Control {
    /// Waits for the main thread's next request.
    pub async fn next(&mut self) -> Request {
        let mut byte = [0u8; 1];
        // RELOAD swaps in the settings in force; any other byte, EOF (main thread gone)
        // or an error means: stop.
        match self.stream.read(&mut byte).await {
            Ok(1) if byte[0] == RELOAD => Request::Reload,
            _ => Request::Stop,
        }
    }

    /// The reload asked for is in force on this shard: the main thread counts it once
    /// every shard said so.
    pub async fn reloaded(&mut self) {
        let _ = self.stream.write_all(&[RELOAD]).await;
    }
}
