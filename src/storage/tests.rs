//! WAL tests on a real disk (O_DIRECT is silently off on tmpfs, which would hide bugs).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

use super::*;

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A temp dir on a disk-backed filesystem: `SHARDMQ_TEST_DIR` or /var/tmp.
fn disk_tempdir() -> tempfile::TempDir {
    let base = std::env::var_os("SHARDMQ_TEST_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("shardmq-wal-")
        .tempdir_in(&base)
        .expect("temp dir");
    let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and fs a valid out pointer.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut fs) }, 0);
    assert_ne!(
        fs.f_type as i64,
        TMPFS_MAGIC,
        "{} is tmpfs: set SHARDMQ_TEST_DIR to a real disk",
        base.display()
    );
    dir
}

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(fut)
}

fn config(dir: &Path, policy: FsyncPolicy) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 64 * 1024,
        fsync_policy: policy,
        write_buffer_bytes: 16 * 1024,
        retention_ms: None,
        retention_bytes: None,
    }
}

/// A body that identifies its record and varies in length.
fn body(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

#[derive(Debug, Clone, PartialEq)]
struct Owned(u64, u8, u64, Vec<u8>);

fn own(r: RecordRef<'_>) -> Owned {
    Owned(r.offset.0, r.kind.0, r.timestamp_ms, r.body.to_vec())
}

fn expected(range: std::ops::Range<u64>) -> Vec<Owned> {
    range
        .map(|i| Owned(i, (i % 5) as u8, 1000 + i, body(i)))
        .collect()
}

async fn open_collect(cfg: WalConfig) -> Result<(Wal, RecoveryReport, Vec<Owned>), WalError> {
    let mut seen = Vec::new();
    let (wal, report) = Wal::open(cfg, |r| seen.push(own(r))).await?;
    Ok((wal, report, seen))
}

/// Appends records `range` (each split into two parts), waiting when the buffer is full.
async fn append_range(wal: &Wal, range: std::ops::Range<u64>) -> Offset {
    let mut last = Offset(0);
    for i in range {
        let b = body(i);
        let (x, y) = b.split_at(b.len() / 3);
        wal.reserve(b.len()).await.expect("reserve");
        last = wal
            .append(RecordKind((i % 5) as u8), 1000 + i, &[x, y])
            .expect("append");
        assert_eq!(last, Offset(i));
    }
    last
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list_segments(dir)
        .expect("list")
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn last_nonzero_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

#[test]
fn every_policy_reopens_exactly_the_appended_records() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::EveryN(7),
        FsyncPolicy::IntervalMs(2),
        FsyncPolicy::None,
    ] {
        let dir = disk_tempdir();
        run(async {
            let (wal, report, seen) = open_collect(config(dir.path(), policy))
                .await
                .expect("open");
            assert_eq!(
                (report.records, seen.len(), report.next_offset),
                (0, 0, Offset(0))
            );
            let last = append_range(&wal, 0..600).await;
            wal.wait_durable(last).await.expect("durable");
            wal.close().await.expect("close");
            let (wal, report, seen) = open_collect(config(dir.path(), policy))
                .await
                .expect("reopen");
            assert_eq!(seen, expected(0..600), "{policy}");
            assert_eq!(
                (report.records, report.torn_records, report.next_offset),
                (600, 0, Offset(600))
            );
            // Appends continue the same log across the restart.
            append_range(&wal, 600..650).await;
            wal.close().await.expect("close");
            let (wal, _, seen) = open_collect(config(dir.path(), policy))
                .await
                .expect("reopen");
            assert_eq!(seen, expected(0..650), "{policy}");
            wal.close().await.expect("close");
        });
    }
}

#[test]
fn segments_roll_and_read_from_crosses_them() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::EveryN(50)))
            .await
            .expect("open");
        append_range(&wal, 0..2000).await;
        wal.sync_all().await.expect("sync");
        let files = segment_files(dir.path());
        assert!(files.len() >= 4, "only {} segments", files.len());
        let mut all = Vec::new();
        let next = wal
            .read_from(Offset(0), usize::MAX, |r| all.push(own(r)))
            .await
            .expect("read");
        assert_eq!((next, all), (Offset(2000), expected(0..2000)));
        // A budget stops early but always delivers at least one record.
        let mut some = Vec::new();
        let next = wal
            .read_from(Offset(1234), 1, |r| some.push(own(r)))
            .await
            .expect("read");
        assert_eq!((next, some), (Offset(1235), expected(1234..1235)));
        let mut page = Vec::new();
        let next = wal
            .read_from(Offset(700), 5000, |r| page.push(own(r)))
            .await
            .expect("read");
        let bytes: usize = page.iter().map(|o| o.3.len()).sum();
        assert!(bytes <= 5000 && next.0 > 700 && page == expected(700..next.0));
        wal.close().await.expect("close");
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::EveryN(50)))
            .await
            .expect("reopen");
        assert_eq!(
            (seen, report.segments as usize),
            (expected(0..2000), files.len())
        );
        wal.close().await.expect("close");
    });
}

/// Writes 100 records in one segment, closes, and returns the segment file.
fn write_hundred(dir: &Path) -> PathBuf {
    run(async {
        let (wal, _, _) = open_collect(config(dir, FsyncPolicy::Always))
            .await
            .expect("open");
        append_range(&wal, 0..100).await;
        wal.close().await.expect("close");
    });
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

#[test]
fn a_frame_cut_in_half_is_a_torn_tail_and_the_prefix_survives() {
    let dir = disk_tempdir();
    let path = write_hundred(dir.path());
    let bytes = std::fs::read(&path).expect("read");
    let end = last_nonzero_end(&bytes);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len((end - 10) as u64)
        .expect("cut");
    run(async {
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        assert_eq!(seen, expected(0..99));
        assert_eq!(
            (report.torn_records, report.torn_reason),
            (1, Some(StopReason::Truncated))
        );
        assert_eq!(wal.stats().torn_records_total.load(Relaxed), 1);
        // The reused offset gets a new record; a second restart sees a clean log.
        append_range(&wal, 99..120).await;
        wal.close().await.expect("close");
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("reopen");
        assert_eq!((seen, report.torn_records), (expected(0..120), 0));
        wal.close().await.expect("close");
    });
}

#[test]
fn overwritten_bytes_stop_recovery_at_the_damaged_frame_and_are_zeroed() {
    let dir = disk_tempdir();
    let path = write_hundred(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    let end = last_nonzero_end(&bytes);
    let at = end - 3000;
    bytes[at..at + 8].copy_from_slice(b"garbage!");
    std::fs::write(&path, &bytes).expect("write");
    run(async {
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        let kept = seen.len() as u64;
        assert!(kept > 50 && kept < 100, "kept {kept}");
        assert_eq!(seen, expected(0..kept));
        assert_eq!(report.torn_records, 1);
        assert!(
            report.torn_bytes >= 3000 - 8,
            "torn_bytes {}",
            report.torn_bytes
        );
        assert_eq!(report.next_offset, Offset(kept));
        wal.close().await.expect("close");
        let after = std::fs::read(&path).expect("read");
        assert!(last_nonzero_end(&after) <= at, "the torn tail was zeroed");
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("reopen");
        assert_eq!((seen.len() as u64, report.torn_records), (kept, 0));
        wal.close().await.expect("close");
    });
}

#[test]
fn a_zeroed_tail_keeps_the_records_before_it() {
    let dir = disk_tempdir();
    let path = write_hundred(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    let end = last_nonzero_end(&bytes);
    bytes[end - 2000..end].fill(0);
    std::fs::write(&path, &bytes).expect("write");
    run(async {
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        let kept = seen.len() as u64;
        assert!(kept > 80 && kept < 100, "kept {kept}");
        assert_eq!(seen, expected(0..kept));
        assert_eq!(report.next_offset, Offset(kept));
        wal.close().await.expect("close");
    });
}

#[test]
fn a_damaged_closed_segment_is_corruption_not_a_torn_tail() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        append_range(&wal, 0..1000).await;
        wal.close().await.expect("close");
    });
    let first = segment_files(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[5000] ^= 0xFF;
    std::fs::write(&first, &bytes).expect("write");
    run(async {
        match open_collect(config(dir.path(), FsyncPolicy::Always)).await {
            Err(WalError::Corrupt { segment, .. }) => assert_eq!(segment, first),
            other => panic!("expected Corrupt, got {:?}", other.map(|(_, r, _)| r)),
        }
    });
}

#[test]
fn always_resolves_only_after_an_fsync() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        let stats = wal.stats();
        for i in 0..20 {
            let before = stats.fsyncs_total.load(Relaxed);
            let offset = wal.append(RecordKind(1), i, &[b"payload"]).expect("append");
            wal.wait_durable(offset).await.expect("durable");
            assert!(stats.fsyncs_total.load(Relaxed) > before, "record {i}");
        }
        wal.close().await.expect("close");
    });
}

#[test]
fn concurrent_appenders_share_group_commits() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let wal = wal.clone();
                glommio::spawn_local(async move {
                    for i in 0..20u64 {
                        wal.reserve(8).await.expect("reserve");
                        let o = wal
                            .append(RecordKind(t), i, &[&i.to_le_bytes()])
                            .expect("append");
                        wal.wait_durable(o).await.expect("durable");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let stats = wal.stats();
        assert_eq!(stats.appends_total.load(Relaxed), 640);
        assert!(
            stats.fsyncs_total.load(Relaxed) < 640,
            "group commit should batch"
        );
        assert_eq!(stats.group_commit_records.sum(), 640);
        wal.close().await.expect("close");
    });
}

#[test]
fn a_failed_fdatasync_poisons_every_waiter() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        let o = wal.append(RecordKind(1), 0, &[b"before"]).expect("append");
        wal.wait_durable(o).await.expect("durable");
        wal.inject_sync_failure();
        let results = Rc::new(RefCell::new(Vec::new()));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (wal, results) = (wal.clone(), results.clone());
                glommio::spawn_local(async move {
                    let o = wal.append(RecordKind(1), 0, &[b"after"]).expect("append");
                    let r = wal.wait_durable(o).await;
                    results.borrow_mut().push(r);
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let results = results.take();
        assert_eq!(results.len(), 10);
        assert!(
            results.iter().all(|r| matches!(r, Err(WalError::Poisoned))),
            "{results:?}"
        );
        assert!(matches!(
            wal.append(RecordKind(1), 0, &[b"x"]),
            Err(WalError::Poisoned)
        ));
        assert!(matches!(wal.sync_all().await, Err(WalError::Poisoned)));
        assert!(matches!(wal.close().await, Err(WalError::Poisoned)));
    });
}

#[test]
fn a_full_buffer_pushes_back_and_reserve_waits_for_room() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        let chunk = [7u8; 1000];
        let mut accepted = 0;
        let refused = loop {
            match wal.append(RecordKind(1), 0, &[&chunk]) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, WalError::BufferFull), "{refused}");
        assert!(accepted < 20, "the buffer is bounded, accepted {accepted}");
        wal.reserve(chunk.len()).await.expect("reserve");
        let o = wal
            .append(RecordKind(1), 0, &[&chunk])
            .expect("append after reserve");
        wal.wait_durable(o).await.expect("durable");
        assert_eq!(wal.stats().backpressure_total.load(Relaxed), 1);
        let too_big = vec![0u8; wal.body_bytes_max() + 1];
        assert!(matches!(
            wal.append(RecordKind(1), 0, &[&too_big]),
            Err(WalError::RecordTooLarge { .. })
        ));
        wal.close().await.expect("close");
    });
}

#[test]
fn retention_deletes_only_whole_old_segments_below_the_floor() {
    let dir = disk_tempdir();
    let mut cfg = config(dir.path(), FsyncPolicy::EveryN(100));
    cfg.retention_ms = Some(1);
    run(async {
        let (wal, _, _) = open_collect(cfg.clone()).await.expect("open");
        append_range(&wal, 0..2000).await; // timestamps ~1970: all older than 1 ms
        wal.sync_all().await.expect("sync");
        let before = segment::list_segments(dir.path()).expect("list");
        assert!(before.len() >= 4);
        let floor = Offset(before[2].0 .0 + 3); // inside the third segment
        wal.set_retention_floor(floor);
        let stats = wal.stats();
        for _ in 0..200 {
            if stats.segments_deleted_total.load(Relaxed) > 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let after = segment::list_segments(dir.path()).expect("list");
        assert_eq!(
            after.len(),
            before.len() - 2,
            "exactly the two segments wholly below the floor"
        );
        assert_eq!(after[0].0, before[2].0);
        assert!(matches!(
            wal.read_from(Offset(0), usize::MAX, |_| {}).await,
            Err(WalError::NotRetained { .. })
        ));
        let mut seen = Vec::new();
        wal.read_from(floor, usize::MAX, |r| seen.push(own(r)))
            .await
            .expect("read");
        assert_eq!(seen, expected(floor.0..2000));
        wal.close().await.expect("close");
        let (wal, report, seen) = open_collect(cfg.clone()).await.expect("reopen");
        assert_eq!(seen, expected(before[2].0 .0..2000));
        assert_eq!(report.next_offset, Offset(2000));
        wal.close().await.expect("close");
    });
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let dir = disk_tempdir();
    run(async {
        let mut cfg = config(dir.path(), FsyncPolicy::Always);
        cfg.write_buffer_bytes = 5000;
        match Wal::open(cfg, |_| {}).await {
            Err(WalError::InvalidConfig(why)) => {
                assert!(why.contains("write_buffer_bytes"), "{why}")
            }
            other => panic!("expected InvalidConfig, got {:?}", other.map(|(_, r)| r)),
        }
    });
}

#[test]
fn every_n_and_interval_sync_on_their_own_schedule() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::EveryN(10)))
            .await
            .expect("open");
        for i in 0..35u64 {
            let o = wal.append(RecordKind(1), i, &[b"n"]).expect("append");
            wal.wait_durable(o).await.expect("written");
        }
        assert_eq!(
            wal.stats().fsyncs_total.load(Relaxed),
            3,
            "one fdatasync per 10 records"
        );
        wal.close().await.expect("close");
    });
    let dir = disk_tempdir();
    run(async {
        // An interval long enough that a loaded machine still writes the record first.
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::IntervalMs(400)))
            .await
            .expect("open");
        let o = wal.append(RecordKind(1), 0, &[b"i"]).expect("append");
        wal.wait_durable(o).await.expect("written");
        let stats = wal.stats();
        assert_eq!(
            stats.fsyncs_total.load(Relaxed),
            0,
            "acknowledged before any fdatasync"
        );
        glommio::timer::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            stats.fsyncs_total.load(Relaxed),
            1,
            "the interval timer synced it"
        );
        wal.close().await.expect("close");
    });
}

#[test]
fn a_rolled_but_never_written_segment_is_dropped() {
    let dir = disk_tempdir();
    write_hundred(dir.path());
    // As if the process died right after renaming the pre-zeroed spare at a roll.
    let orphan = segment::segment_path(dir.path(), Offset(100));
    std::fs::write(&orphan, vec![0u8; 64 * 1024]).expect("write");
    run(async {
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        assert_eq!(
            (seen, report.next_offset, report.torn_records),
            (expected(0..100), Offset(100), 0)
        );
        assert!(!orphan.exists());
        append_range(&wal, 100..110).await;
        wal.close().await.expect("close");
        let (wal, _, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("reopen");
        assert_eq!(seen, expected(0..110));
        wal.close().await.expect("close");
    });
}

/// Appends `count` records of one fixed frame size (1 KiB) whose bodies are all `fill`,
/// from offset `first`, and waits until they are durable.
async fn append_kib_frames(wal: &Wal, first: u64, count: u64, fill: u8) {
    let body = vec![fill; 1024 - frame::FRAME_HEADER_BYTES];
    for i in first..first + count {
        wal.reserve(body.len()).await.expect("reserve");
        let at = wal.append(RecordKind(1), i, &[&body]).expect("append");
        assert_eq!(at, Offset(i));
    }
    wal.wait_durable(Offset(first + count - 1))
        .await
        .expect("durable");
}

/// Opens the WAL in `dir`, appends like `append_kib_frames` and closes it.
fn append_kib_frames_and_close(dir: &Path, first: u64, count: u64, fill: u8) {
    run(async {
        let (wal, _, _) = open_collect(config(dir, FsyncPolicy::Always))
            .await
            .expect("open");
        append_kib_frames(&wal, first, count, fill).await;
        wal.close().await.expect("close");
    });
}

/// The offsets and fill bytes of the records a fresh open of `dir` recovers.
fn recovered_kib_frames(dir: &Path) -> Vec<(u64, u8)> {
    run(async {
        let (wal, _, seen) = open_collect(config(dir, FsyncPolicy::Always))
            .await
            .expect("open");
        wal.close().await.expect("close");
        seen.iter().map(|r| (r.0, r.3[0])).collect()
    })
}

#[test]
fn stale_frames_behind_a_zeroed_header_never_come_back() {
    let dir = disk_tempdir();
    // Group commit 1: records 0 and 1 end mid-block 1 and are made durable.
    append_kib_frames_and_close(dir.path(), 0, 2, 0xA0);
    let path = segment_files(dir.path())[0].clone();
    let block = frame::DMA_ALIGN_BYTES;
    let synced_block1 = std::fs::read(&path).expect("read")[block..2 * block].to_vec();
    // Group commit 2 (never acknowledged): records 2..12 rewrite block 1 and fill 2 and 3.
    append_kib_frames_and_close(dir.path(), 2, 10, 0xB0);
    // Power loss that persisted blocks 2 and 3 but not the rewrite of block 1: record 1 is
    // followed by zeros, and valid stale frames 4..12 start at block 2.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[block..2 * block].copy_from_slice(&synced_block1);
    std::fs::write(&path, &bytes).expect("write");
    // A power loss means a new boot.
    std::fs::write(dir.path().join(recovery::BOOT_FILE_NAME), "an earlier boot").expect("write");
    let data_end = block + 2 * 1024;
    run(async {
        let (wal, report, seen) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        wal.close().await.expect("close");
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (report.torn_records, report.torn_reason, report.torn_bytes),
            (1, Some(StopReason::Zeroed), (4 * block - data_end) as u64)
        );
    });
    let after = std::fs::read(&path).expect("read");
    assert_eq!(
        last_nonzero_end(&after),
        data_end,
        "the stale frames were zeroed"
    );
    assert_eq!(recovered_kib_frames(dir.path()), vec![(0, 0xA0), (1, 0xA0)]);
    // New records 2 and 3 end exactly where stale record 4 begins.
    append_kib_frames_and_close(dir.path(), 2, 2, 0xC0);
    let want = vec![(0, 0xA0), (1, 0xA0), (2, 0xC0), (3, 0xC0)];
    assert_eq!(recovered_kib_frames(dir.path()), want);
    // And the log goes on from there.
    run(async {
        let (wal, report, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        assert_eq!(report.next_offset, Offset(4));
        append_kib_frames(&wal, 4, 1, 0xD0).await;
        let mut read = Vec::new();
        wal.read_from(Offset(0), usize::MAX, |r| {
            read.push((r.offset.0, r.body[0]))
        })
        .await
        .expect("read");
        wal.close().await.expect("close");
        assert_eq!(read.last(), Some(&(4, 0xD0)));
    });
    let mut want = want;
    want.push((4, 0xD0));
    assert_eq!(recovered_kib_frames(dir.path()), want);
}

#[test]
fn a_record_damaged_under_a_running_wal_is_reported_by_reads_never_served() {
    let dir = disk_tempdir();
    run(async {
        let (wal, _, _) = open_collect(config(dir.path(), FsyncPolicy::Always))
            .await
            .expect("open");
        append_kib_frames(&wal, 0, 8, 0xA0).await;
        // Flip one body byte of record 5 (frames are 1 KiB from the header block on).
        let path = segment_files(dir.path())[0].clone();
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[frame::DMA_ALIGN_BYTES + 5 * 1024 + 100] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let mut served = Vec::new();
        let result = wal
            .read_from(Offset(0), usize::MAX, |r| served.push(r.offset.0))
            .await;
        match result {
            Err(WalError::Corrupt { reason, .. }) => {
                assert_eq!(reason, StopReason::BadCrc.as_str())
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            served,
            vec![0, 1, 2, 3, 4],
            "nothing from the damaged frame on"
        );
        wal.close().await.expect("close");
    });
}
