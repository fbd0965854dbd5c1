//! A timer that is always pending, so a shard never sleeps with work queued for long.
//!
//! glommio 0.9's executor loop cannot tell "preempted before any task ran" from
//! "nothing to run": after the first it may park the thread in `io_uring_enter` while a
//! task queue is still runnable. That work is the shard's own, so no completion and no
//! other thread is coming to wake it; a shard that does this while the others wait for
//! it over the mesh (at start, at the recovery barrier) stops for good. A park does end
//! at the next glommio timer, though, so one timer that is always armed bounds such a
//! sleep to its period. The cost is one wake-up per period on an idle shard.

use std::time::Duration;

/// The longest a shard can sleep with runnable work.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Arms the timer on the current shard for as long as the shard runs.
pub fn spawn() {
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(PERIOD).await;
        }
    })
    .detach();
}
