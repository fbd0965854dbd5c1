//! A wake-up from outside the shard every period, so a shard never sleeps with work queued
//! for long.
//!
//! glommio 0.9's executor loop cannot tell "preempted before any task ran" from
//! "nothing to run": after the first it may park the thread in `io_uring_enter` while a
//! task queue is still runnable. That work is the shard's own, so no completion and no
//! other thread is coming to wake it; a shard that does this while the others wait for
//! it over the mesh (at start, at the recovery barrier) stops for good.
//!
//! A park ends at the next glommio timer, but an always-armed timer is not enough: the
//! timer is armed again only when its task runs, and a park right after it fired (its task
//! queued, not run, no other timer) has nothing left to end it. So a plain thread wakes
//! one task of the shard every period instead: a wake from another thread writes the
//! shard's eventfd when it sleeps, which ends any park. The cost is one wake-up per
//! period on an idle shard.
//!
//! What is left: a park before the shard's first task ever ran (the thread does not
//! exist yet). The start timeout ends such a start.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The longest a shard can sleep with runnable work.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Starts the wake-ups of the current shard for as long as the shard runs.
pub fn spawn() {
    glommio::spawn_local(Nudged { running: None }).detach();
}

/// A task that is never done; on its first poll it starts the thread that wakes it.
struct Nudged {
    /// Cleared on drop (the executor ended): the thread then stops.
    running: Option<Arc<AtomicBool>>,
}

impl Future for Nudged {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.running.is_none() {
            let running = Arc::new(AtomicBool::new(true));
            let (flag, waker) = (Arc::clone(&running), cx.waker().clone());
            let started = std::thread::Builder::new()
                .name("shard-wakeup".into())
                .spawn(move || {
                    while flag.load(Ordering::Relaxed) {
                        std::thread::sleep(PERIOD);
                        waker.wake_by_ref();
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the shard wake-up thread");
            }
            self.running = Some(running);
        }
        Poll::Pending
    }
}

impl Drop for Nudged {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.store(false, Ordering::Relaxed);
        }
    }
}
