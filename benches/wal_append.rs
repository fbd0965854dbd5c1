//! WAL append throughput per fsync policy: many concurrent appenders on one shard, each
//! awaiting `wait_durable` for every record, as the broker does before a PUBACK.
//!
//! Run: `cargo bench --bench wal_append [-- RECORDS [BODY_BYTES [APPENDERS]]]`.
//! Writes to a temp dir under the cargo target dir (must be a real disk: tmpfs silently
//! turns O_DIRECT off and fakes fsyncs), or `SHARDMQ_BENCH_DIR`.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use glommio::LocalExecutorBuilder;
use shardmq::storage::{FsyncPolicy, RecordKind, Wal, WalConfig};

/// Defaults keep a full run well under 30 s on the 2-vCPU dev machines.
const RECORDS_DEFAULT: u64 = 200_000;
const BODY_BYTES_DEFAULT: usize = 256;
const APPENDERS_DEFAULT: u64 = 64;
const SEGMENT_BYTES: u64 = 32 << 20;
const WRITE_BUFFER_BYTES: usize = 1 << 20;

struct Params {
    records: u64,
    body_bytes: usize,
    appenders: u64,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let params = Params {
        records: arg(0, RECORDS_DEFAULT),
        body_bytes: arg(1, BODY_BYTES_DEFAULT as u64) as usize,
        appenders: arg(2, APPENDERS_DEFAULT).max(1),
    };
    let base = std::env::var_os("SHARDMQ_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    println!(
        "wal_append: {} records x {} B body, {} appenders awaiting wait_durable, segment {} MiB, buffer {} KiB, dir {}",
        params.records,
        params.body_bytes,
        params.appenders,
        SEGMENT_BYTES >> 20,
        WRITE_BUFFER_BYTES >> 10,
        base.display()
    );
    println!(
        "{:<14} {:>10} {:>8} {:>9} {:>10} {:>12} {:>14}",
        "policy", "records/s", "MiB/s", "fsyncs/s", "fsync_us", "rec/commit", "commits"
    );
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::EveryN(1000),
        FsyncPolicy::IntervalMs(10),
        FsyncPolicy::None,
    ] {
        let dir = tempfile::Builder::new()
            .prefix("wal-bench-")
            .tempdir_in(&base)
            .expect("temp dir");
        let config = WalConfig {
            dir: dir.path().to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            fsync_policy: policy,
            write_buffer_bytes: WRITE_BUFFER_BYTES,
            retention_ms: None,
            retention_bytes: None,
        };
        let line = LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(run_policy(config, &params));
        println!("{line}");
    }
}

async fn run_policy(config: WalConfig, params: &Params) -> String {
    let policy = config.fsync_policy;
    let (wal, _) = Wal::open(config, |_| {}).await.expect("open");
    let body = Rc::new(vec![0x5Au8; params.body_bytes]);
    let per_task = params.records / params.appenders;
    let started = Instant::now();
    let tasks: Vec<_> = (0..params.appenders)
        .map(|t| {
            let (wal, body) = (wal.clone(), body.clone());
            glommio::spawn_local(async move {
                for i in 0..per_task {
                    wal.reserve(body.len()).await.expect("reserve");
                    let offset = wal
                        .append(RecordKind(1), t * per_task + i, &[&body])
                        .expect("append");
                    wal.wait_durable(offset).await.expect("durable");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    wal.close().await.expect("close");
    let appended = stats.appends_total.load(Relaxed) as f64;
    let bytes = stats.bytes_total.load(Relaxed) as f64;
    let fsyncs = stats.fsyncs_total.load(Relaxed) as f64;
    let commits = stats.group_commit_records.count().max(1) as f64;
    let fsync_us =
        stats.fsync_latency_us.sum() as f64 / stats.fsync_latency_us.count().max(1) as f64;
    format!(
        "{:<14} {:>10.0} {:>8.1} {:>9.0} {:>10.0} {:>12.1} {:>14}",
        policy.to_string(),
        appended / secs,
        bytes / secs / (1 << 20) as f64,
        fsyncs / secs,
        fsync_us,
        stats.group_commit_records.sum() as f64 / commits,
        commits as u64
    )
}
