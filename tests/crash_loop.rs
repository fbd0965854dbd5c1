//! The crash loop: cycles of QoS 1 load from several publishers ended by `kill -9` at a
//! random moment, with one persistent-session subscriber throughout. After the last
//! cycle every PUBACKed message must have reached the subscriber (duplicates are
//! allowed, loss is not). Prints acked / lost / duplicated.
//!
//! `SHARDMQ_CRASH_CYCLES` (default 3) sets the cycles, `SHARDMQ_CRASH_SEED` the seed of
//! the kill moments (printed; default from the clock). `scripts/crash-loop.sh` runs it
//! with more cycles against a release build.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::load::{start_publisher, start_subscriber};
use common::*;

const PUBLISHERS: usize = 4;
const SUBSCRIBER: &str = "crash-loop-sub";

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// xorshift64*: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn broker(dir: &Path) -> Broker {
    Broker::start_with(BrokerOptions {
        shards: 2,
        data_dir: Some(dir.to_path_buf()),
        env: vec![("SHARDMQ_FSYNC_POLICY".into(), "always".into())],
        ..BrokerOptions::default()
    })
}

/// One cycle: publishers run until the broker is killed; returns the acknowledged
/// payloads.
fn cycle(
    broker: &mut Broker,
    cycle: u64,
    run: Duration,
    got: mpsc::Sender<String>,
) -> BTreeSet<String> {
    let _sub = start_subscriber(
        broker.mqtt,
        SUBSCRIBER,
        (cycle == 0).then_some("loop/#"),
        got,
    );
    let (acked_tx, acked) = mpsc::channel();
    for p in 0..PUBLISHERS {
        let id = format!("loop-c{cycle}-p{p}");
        start_publisher(
            broker.mqtt,
            id.clone(),
            format!("loop/{id}"),
            u64::MAX,
            acked_tx.clone(),
        );
    }
    drop(acked_tx);
    let mut highest: HashMap<String, u64> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < run {
        if let Ok((topic, seq)) = acked.recv_timeout(Duration::from_millis(20)) {
            highest.insert(topic, seq);
        }
    }
    let dropped = broker.metric_sum("shardmq_messages_dropped_total");
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
    if dropped > 0.0 {
        eprintln!("cycle {cycle}: the broker had dropped {dropped} deliveries");
    }
    while let Ok((topic, seq)) = acked.recv_timeout(Duration::from_millis(200)) {
        highest.insert(topic, seq);
    }
    highest
        .iter()
        .flat_map(|(topic, last)| {
            let id = topic.trim_start_matches("loop/").to_string();
            (0..=*last).map(move |seq| format!("{id}:{seq}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_cycles_lose_no_acknowledged_message() {
    let cycles = env_u64("SHARDMQ_CRASH_CYCLES").unwrap_or(3);
    let seed = env_u64("SHARDMQ_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!("crash loop: {cycles} cycles, SHARDMQ_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = temp_dir();
    let (got_tx, got) = mpsc::channel::<String>();
    let mut acked = BTreeSet::new();
    for c in 0..cycles {
        let mut b = broker(dir.path());
        let run = Duration::from_millis(200 + rng.next() % 1300);
        let this = cycle(&mut b, c, run, got_tx.clone());
        eprintln!(
            "cycle {c}: killed after {} ms, {} acknowledged",
            run.as_millis(),
            this.len()
        );
        acked.extend(this);
    }
    let b = broker(dir.path());
    let _sub = start_subscriber(b.mqtt, SUBSCRIBER, None, got_tx);
    let mut received: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        while let Ok(payload) = got.recv_timeout(Duration::from_millis(100)) {
            *received.entry(payload).or_default() += 1;
        }
        let all = acked.iter().all(|p| received.contains_key(p));
        if all || Instant::now() > deadline {
            break;
        }
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|p| !received.contains_key(*p))
        .collect();
    let duplicated: u64 = received.values().map(|n| n - 1).sum();
    eprintln!(
        "crash loop: acked {} lost {} duplicated {} (received {} distinct)",
        acked.len(),
        lost.len(),
        duplicated,
        received.len()
    );
    assert!(acked.len() >= 100, "the load ran");
    assert!(
        lost.is_empty(),
        "seed {seed}: {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
