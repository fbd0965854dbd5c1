//! The committer: one task per WAL that turns buffered appends into DMA writes and
//! fdatasyncs (group commit), rolls segments, applies retention and wakes waiters.
//!
//! Failure rule: a failed write or fdatasync **poisons** the WAL and the task ends.
//! Nothing is retried. After a failed fsync Linux may have dropped the dirty pages and
//! cleared the error, so a retry can "succeed" without the data ever reaching the disk
//! (the PostgreSQL "fsyncgate", Rebello et al., "Can applications recover from fsync
//! failures?", USENIX ATC '20). Every pending and later waiter gets `Poisoned`; only a
//! restart, which re-reads what is really on disk, may continue.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::io::{Directory, DmaFile, OpenOptions};
use glommio::timer::Timer;

use super::retention::{self, RetentionLimits};
use super::segment::{self, align_up};
use super::state::{Pending, Poison, Shared, Spare, State};
use super::stats::WalStats;
use super::{FsyncPolicy, Offset, WalConfig, WalError};

/// Starts preparing the next segment file in the background.
pub(crate) fn spawn_spare(shared: &Rc<Shared>) {
    shared.state.borrow_mut().spare = Spare::Preparing;
    let shared = shared.clone();
    glommio::spawn_local(async move {
        let result = segment::prepare_spare(&shared.config.dir, shared.config.segment_bytes).await;
        let mut st = shared.state.borrow_mut();
        st.spare = match result {
            Ok(file) => Spare::Ready(file),
            Err(e) => {
                tracing::warn!(error = %e, dir = %shared.config.dir.display(), "WAL could not prepare the next segment");
                Spare::Failed { disk_full: matches!(e, WalError::DiskFull) }
            }
        };
        if let Some(waker) = st.committer_waker.take() {
            waker.wake();
        }
    })
    .detach();
}

/// Runs the committer until `close` or a failure.
pub(crate) async fn run(shared: Rc<Shared>, file: Option<DmaFile>, dir: Directory) {
    let segment = file.as_ref().map(|_| shared.state.borrow().active.segment);
    let mut committer = Committer {
        shared,
        file,
        segment,
        dir,
        round: Vec::with_capacity(2),
        last_sync: Instant::now(),
        unsynced_records: 0,
    };
    if let Err(e) = committer.run_loop().await {
        committer.poison(e);
    }
    if let Some(file) = committer.file.take() {
        if let Err(e) = file.close().await {
            tracing::warn!(error = %e, "WAL segment close failed");
        }
    }
}

struct Committer {
    shared: Rc<Shared>,
    /// The segment being written and its first offset.
    file: Option<DmaFile>,
    segment: Option<Offset>,
    dir: Directory,
    round: Vec<Pending>,
    last_sync: Instant,
    unsynced_records: u64,
}

/// Whether an fdatasync is due now.
fn sync_wanted(config: &WalConfig, st: &State, unsynced_records: u64, last_sync: Instant) -> bool {
    if st.written <= st.durable {
        return false;
    }
    st.sync_target > st.durable
        || match config.fsync_policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryN(n) => unsynced_records >= u64::from(n),
            FsyncPolicy::IntervalMs(ms) => {
                last_sync.elapsed() >= Duration::from_millis(u64::from(ms))
            }
            FsyncPolicy::None => false,
        }
}

impl Committer {
    async fn run_loop(&mut self) -> Result<(), WalError> {
        while self.next_round().await {
            let mut round = std::mem::take(&mut self.round);
            let written = self.write_round(&mut round).await;
            round.clear();
            self.round = round;
            written?;
            self.sync_if_due().await?;
            self.wake_acked();
            self.apply_retention().await;
        }
        Ok(())
    }

    /// Waits for work; false when the committer should stop.
    async fn next_round(&mut self) -> bool {
        let shared = self.shared.clone();
        let round = &mut self.round;
        let (unsynced, last_sync) = (self.unsynced_records, self.last_sync);
        let mut timer: Option<Timer> = None;
        poll_fn(|cx| {
            let mut st = shared.state.borrow_mut();
            if st.poison.is_some() {
                return Poll::Ready(false);
            }
            st.take_round(&shared.config, round);
            if !round.is_empty()
                || st.retention_due
                || sync_wanted(&shared.config, &st, unsynced, last_sync)
            {
                return Poll::Ready(true);
            }
            if st.closing {
                return Poll::Ready(false);
            }
            if let FsyncPolicy::IntervalMs(ms) = shared.config.fsync_policy {
                if st.written > st.durable {
                    let deadline = last_sync + Duration::from_millis(u64::from(ms));
                    let timer = timer.get_or_insert_with(|| {
                        Timer::new(deadline.saturating_duration_since(Instant::now()))
                    });
                    if Pin::new(timer).poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                }
            }
            st.committer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Writes every pending buffer (one DMA write each) and marks their records written.
    async fn write_round(&mut self, round: &mut Vec<Pending>) -> Result<(), WalError> {
        let mut records = 0;
        for pending in round.drain(..) {
            if self.segment != Some(pending.segment) {
                self.roll_to(pending.segment).await?;
            }
            records += pending.records;
            let end = pending.end;
            self.write_pending(pending).await?;
            let mut st = self.shared.state.borrow_mut();
            assert!(end >= st.written, "written offsets only grow");
            st.written = end;
        }
        if records > 0 {
            let stats = &self.shared.stats;
            WalStats::add(&stats.group_commits_total, 1);
            stats.group_commit_records.record(records);
            self.unsynced_records += records;
        }
        Ok(())
    }

    async fn write_pending(&mut self, pending: Pending) -> Result<(), WalError> {
        let file = self
            .file
            .as_ref()
            .expect("a segment is open before writing");
        let write_bytes = align_up(pending.len as u64) as usize;
        let mut buf = pending.buf;
        // sync-style padding: the block is rewritten with more frames next round.
        buf.as_bytes_mut()[pending.len..write_bytes].fill(0);
        buf.trim_to_size(write_bytes);
        let written = file.write_at(buf, pending.file_pos).await?;
        if written != write_bytes {
            return Err(WalError::Io(std::io::Error::other(format!(
                "short DMA write: {written} of {write_bytes} bytes"
            ))));
        }
        Ok(())
    }

    /// Finishes the current segment durably and switches to the prepared spare.
    async fn roll_to(&mut self, first: Offset) -> Result<(), WalError> {
        if let Some(old) = self.file.take() {
            // Closed segments are always complete and durable, which lets recovery treat
            // a bad frame in any but the last segment as corruption rather than a torn tail.
            self.fdatasync(&old).await?;
            old.close().await?;
        }
        let path = segment::segment_path(&self.shared.config.dir, first);
        let file = match self.take_spare().await {
            Some(spare) => {
                spare.rename(&path).await?;
                spare
            }
            None => {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .dma_open(&path)
                    .await?
            }
        };
        self.dir.sync().await?;
        self.file = Some(file);
        self.segment = Some(first);
        spawn_spare(&self.shared);
        let mut st = self.shared.state.borrow_mut();
        st.retention_due = true;
        WalStats::set(
            &self.shared.stats.segments_current,
            st.segments.len() as u64,
        );
        Ok(())
    }

    /// The prepared spare file, waiting for it if still being zeroed; None if it failed.
    async fn take_spare(&self) -> Option<DmaFile> {
        poll_fn(|cx| {
            let mut st = self.shared.state.borrow_mut();
            match std::mem::replace(&mut st.spare, Spare::Preparing) {
                Spare::Ready(file) => Poll::Ready(Some(file)),
                Spare::Failed { .. } => Poll::Ready(None),
                Spare::Preparing => {
                    st.committer_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// fdatasyncs `file` and moves the durable mark to what was written before it.
    async fn fdatasync(&mut self, file: &DmaFile) -> Result<(), WalError> {
        let covered = self.shared.state.borrow().written;
        if self.shared.fail_next_sync.replace(false) {
            return Err(WalError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let started = Instant::now();
        file.fdatasync().await?;
        let stats = &self.shared.stats;
        stats
            .fsync_latency_us
            .record(started.elapsed().as_micros() as u64);
        WalStats::add(&stats.fsyncs_total, 1);
        self.last_sync = Instant::now();
        self.unsynced_records = 0;
        let mut st = self.shared.state.borrow_mut();
        st.durable = st.durable.max(covered);
        Ok(())
    }

    async fn sync_if_due(&mut self) -> Result<(), WalError> {
        let due = {
            let st = self.shared.state.borrow();
            sync_wanted(
                &self.shared.config,
                &st,
                self.unsynced_records,
                self.last_sync,
            )
        };
        if !due {
            return Ok(());
        }
        let file = self
            .file
            .take()
            .expect("written data implies an open segment");
        let result = self.fdatasync(&file).await;
        self.file = Some(file);
        result
    }

    /// Wakes, in offset order, everyone whose record reached what the policy promises.
    fn wake_acked(&self) {
        let mut st = self.shared.state.borrow_mut();
        let acked = match self.shared.config.fsync_policy {
            FsyncPolicy::Always => st.durable,
            _ => st.written,
        };
        while st.ack_waiters.front().is_some_and(|(o, _)| *o < acked) {
            if let Some((_, waker)) = st.ack_waiters.pop_front() {
                waker.wake();
            }
        }
        let durable = st.durable;
        while st.sync_waiters.front().is_some_and(|(o, _)| *o < durable) {
            if let Some((_, waker)) = st.sync_waiters.pop_front() {
                waker.wake();
            }
        }
    }

    /// Deletes whole old segments the retention rule allows (see `retention`).
    async fn apply_retention(&mut self) {
        let doomed: Vec<Offset> = {
            let mut st = self.shared.state.borrow_mut();
            if !st.retention_due {
                return;
            }
            st.retention_due = false;
            let limits = RetentionLimits {
                retention_ms: self.shared.config.retention_ms,
                retention_bytes: self.shared.config.retention_bytes,
                floor: st.retention_floor,
            };
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let n = retention::deletable_prefix(st.segments.make_contiguous(), limits, now_ms);
            // Forget them before deleting so no reader looks one up half-deleted.
            st.segments.drain(..n).map(|s| s.first).collect()
        };
        for first in &doomed {
            let path = segment::segment_path(&self.shared.config.dir, *first);
            if let Err(e) = glommio::io::remove(&path).await {
                tracing::warn!(error = %e, path = %path.display(), "WAL retention could not delete a segment");
            }
            WalStats::add(&self.shared.stats.segments_deleted_total, 1);
        }
        if !doomed.is_empty() {
            // Make the unlinks durable in order: a crash must never bring back an older
            // segment while a newer deleted one stays gone (recovery would see a gap).
            if let Err(e) = self.dir.sync().await {
                tracing::warn!(error = %e, "WAL retention could not sync the directory");
            }
        }
        let st = self.shared.state.borrow();
        WalStats::set(
            &self.shared.stats.segments_current,
            st.segments.len() as u64,
        );
        let retry_spare =
            !doomed.is_empty() && matches!(st.spare, Spare::Failed { disk_full: true });
        drop(st);
        if retry_spare {
            spawn_spare(&self.shared);
        }
    }

    fn poison(&self, error: WalError) {
        tracing::error!(error = %error, dir = %self.shared.config.dir.display(), "WAL poisoned: acknowledging nothing more");
        let mut guard = self.shared.state.borrow_mut();
        let st = &mut *guard;
        st.poison = Some(if matches!(error, WalError::DiskFull) {
            Poison::DiskFull
        } else {
            Poison::Io
        });
        let mut wakers: Vec<_> = st
            .ack_waiters
            .drain(..)
            .chain(st.sync_waiters.drain(..))
            .map(|(_, w)| w)
            .collect();
        wakers.append(&mut st.space_waiters);
        drop(guard);
        for waker in wakers {
            waker.wake();
        }
    }
}
