//! Cost of one shard-to-shard hop: shard 0 sends `ShardMsg::Deliver` messages to shard 1
//! over a glommio channel mesh, the two executors pinned to different CPUs.
//!
//! Four cases: the raw glommio mesh with one message per `send_to` and with batches of 64
//! (`Vec<ShardMsg>`, the broker's batch type), and the broker's own [`Mesh`] (per-peer
//! outbox and sender task) with `batch_messages_max` = 1 and = 64. The receiver drops every
//! message, as a shard does once it has delivered it, so the cross-core `Arc` release is
//! part of the cost. Messages cycle through a ring of distinct `Arc<Message>`s, as distinct
//! publishes would, so the two cores do not fight over one reference count. Prints
//! wall-clock ns per message from the sender's first send to the receiver's last receive.
//!
//! Run: `cargo bench --bench mesh_hop [-- MESSAGES]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shardmq::broker::ShardMsg;
use shardmq::metrics::ShardProbe;
use shardmq::mqtt::{ByteStr, ClientId, PublishProperties, QoS};
use shardmq::router::ShardId;
use shardmq::runtime::{Batch, Mesh, MeshSetup};
use shardmq::session::{LogPos, Message};

const MESSAGES_DEFAULT: u64 = 2_000_000;
/// Batches a mesh channel holds, as the broker's default `mesh_channel_batches_max`.
const CHANNEL_BATCHES: usize = 1024;
const BATCH_MESSAGES: usize = 64;
/// Distinct messages the sender cycles through.
const RING_MESSAGES: usize = 4096;

/// Which sending side a case drives.
#[derive(Clone, Copy)]
enum Path {
    /// `Senders::send_to` straight on the glommio mesh, `batch` messages per send.
    Raw { batch: usize },
    /// The broker's `Mesh::send` with `batch_messages_max = batch`.
    Shard { batch: usize },
}

fn main() {
    let messages: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(MESSAGES_DEFAULT);
    let cpus = pinned_cpus();
    println!(
        "mesh_hop: {messages} ShardMsg::Deliver (256 B payload) from shard 0 to shard 1, CPUs {cpus:?}"
    );
    println!("{:<34} {:>10} {:>14}", "case", "ns/msg", "msgs/s");
    for (name, path) in [
        ("glommio mesh, 1 per send", Path::Raw { batch: 1 }),
        (
            "glommio mesh, batches of 64",
            Path::Raw {
                batch: BATCH_MESSAGES,
            },
        ),
        ("shard Mesh, batch_messages_max 1", Path::Shard { batch: 1 }),
        (
            "shard Mesh, batch_messages_max 64",
            Path::Shard {
                batch: BATCH_MESSAGES,
            },
        ),
    ] {
        let elapsed = run_case(path, messages, cpus);
        let ns = elapsed.as_nanos() as f64 / messages as f64;
        println!("{name:<34} {ns:>10.1} {:>14.0}", 1e9 / ns);
    }
}

/// Two different CPUs when the process may use two, else the same one twice.
fn pinned_cpus() -> [usize; 2] {
    let online: Vec<usize> = glommio::CpuSet::online()
        .map(|set| set.into_iter().map(|l| l.cpu).collect())
        .unwrap_or_default();
    match online.as_slice() {
        [a, b, ..] => [*a, *b],
        [a] => [*a, *a],
        [] => [0, 0],
    }
}

fn messages() -> Vec<Arc<Message>> {
    (0..RING_MESSAGES as u64).map(message).collect()
}

fn message(offset: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from_static("bench/sensors/room-17/temperature"),
        payload: Bytes::from(vec![0xA5u8; 256]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PublishProperties::default(),
        publisher: ClientId::from("bench-publisher"),
        expires_at: None,
        log: Some(LogPos {
            shard: ShardId(0),
            offset,
            floor: offset + 1,
        }),
    })
}

/// Runs one case; returns the time from the first send to the last receive.
fn run_case(path: Path, messages: u64, cpus: [usize; 2]) -> Duration {
    let raw = MeshBuilder::<Batch<ShardMsg>, _>::full(2, CHANNEL_BATCHES);
    let setup = MeshSetup::new(2, CHANNEL_BATCHES);
    // Both sides pass it once joined, so the clock starts with the mesh up on both ends.
    let ready = Arc::new(Barrier::new(2));
    let started = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let handles: Vec<_> = (0..2usize)
        .map(|me| {
            let (raw, setup, ready, started) = (
                raw.clone(),
                setup.clone(),
                Arc::clone(&ready),
                Arc::clone(&started),
            );
            LocalExecutorBuilder::new(Placement::Fixed(cpus[me]))
                .name(&format!("hop-{me}"))
                .spawn(move || async move {
                    let side = Side {
                        me,
                        messages,
                        ready,
                        started,
                        origin,
                    };
                    match path {
                        Path::Raw { batch } => side.raw(raw, batch).await,
                        Path::Shard { batch } => side.shard(setup, batch).await,
                    }
                })
                .expect("executor")
        })
        .collect();
    let mut elapsed = Duration::ZERO;
    for handle in handles {
        if let Some(e) = handle.join().expect("executor ran") {
            elapsed = e;
        }
    }
    elapsed
}

/// One end of the hop: shard 0 sends, shard 1 receives and reports the elapsed time.
struct Side {
    me: usize,
    messages: u64,
    ready: Arc<Barrier>,
    /// ns after `origin` at which shard 0 started sending.
    started: Arc<AtomicU64>,
    origin: Instant,
}

impl Side {
    fn start_clock(&self) {
        let ns = self.origin.elapsed().as_nanos() as u64;
        self.started.store(ns, Ordering::Release);
    }

    fn elapsed(&self) -> Duration {
        let start = Duration::from_nanos(self.started.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(start)
    }

    async fn raw(
        self,
        builder: MeshBuilder<Batch<ShardMsg>, glommio::channels::channel_mesh::Full>,
        batch: usize,
    ) -> Option<Duration> {
        let (senders, mut receivers) = builder.join().await.expect("mesh join");
        self.ready.wait();
        let peer = 1 - senders.peer_id();
        if self.me == 0 {
            let ring = messages();
            self.start_clock();
            let mut sent = 0u64;
            while sent < self.messages {
                let n = (self.messages - sent).min(batch as u64) as usize;
                let items: Batch<ShardMsg> = (0..n as u64)
                    .map(|i| ShardMsg::Deliver {
                        msg: Arc::clone(&ring[((sent + i) % RING_MESSAGES as u64) as usize]),
                    })
                    .collect();
                if senders.send_to(peer, items).await.is_err() {
                    panic!("receiver went away");
                }
                sent += n as u64;
            }
            None
        } else {
            let (_, rx) = receivers.streams().pop().expect("one peer");
            let mut received = 0u64;
            while received < self.messages {
                let batch = rx.recv().await.expect("sender stays until done");
                received += batch.len() as u64;
            }
            Some(self.elapsed())
        }
    }

    async fn shard(self, setup: MeshSetup<ShardMsg>, batch: usize) -> Option<Duration> {
        let probe = Arc::new(ShardProbe::default());
        let mut joined = Mesh::join(setup, self.me, batch, probe)
            .await
            .expect("mesh join");
        self.ready.wait();
        if self.me == 0 {
            let ring = messages();
            self.start_clock();
            for i in 0..self.messages {
                let msg = Arc::clone(&ring[(i % RING_MESSAGES as u64) as usize]);
                joined.mesh.send(1, ShardMsg::Deliver { msg }).await;
            }
            // The sender task ships the last batches after this task yields; stay alive
            // until the receiver has them all.
            while ring.iter().any(|m| Arc::strong_count(m) > 1) {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            None
        } else {
            let (_, rx) = joined.inbound.pop().expect("one peer");
            let mut received = 0u64;
            while received < self.messages {
                let batch = rx.recv().await.expect("sender stays until done");
                received += batch.len() as u64;
            }
            Some(self.elapsed())
        }
    }
}
