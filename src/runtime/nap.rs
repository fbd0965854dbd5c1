//! Light-load naps: a shard woken many times a second for a little work each time sleeps
//! a bounded moment between turns instead of parking, so the events of that moment are
//! handled in one turn.
//!
//! A glommio park costs far more than the work it waits for at light load: every park
//! issues a process-wide memory barrier (`membarrier`, an IPI to each CPU running another
//! shard), arms and cancels timers and a ring-link poll, and every wake-up from a peer
//! shard is an eventfd write. A shard that parks and wakes once per message spends most
//! of its CPU there. While a shard naps (a plain `nanosleep` on its thread) it is not
//! parked: peers queue to it without an eventfd write, sockets fill and are read in one
//! go, and no barrier is issued.
//!
//! Whether napping pays depends on the load and the machine, so the nap task measures it.
//! A parked shard counts its wake-ups over a [`WINDOW`]; once they are many (more than
//! half as many as naps would fit), it naps for one window and compares the thread's CPU
//! time per second of the two windows. It keeps napping only while that costs at least
//! [`SAVING_PERCENT_MIN`] less than parking, measures a parked window again every
//! [`RECHECK`] (the load may have changed), and after a nap window that did not pay waits
//! a [`RECHECK`] before it tries again. Naps come only after a turn whose work took less
//! than a nap, so a busy shard never naps. An idle shard parks as before, and a message
//! waits at most one nap longer.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use glommio::{Latency, Shares};

use crate::metrics::ShardProbe;

/// How long each measurement of parking or napping lasts.
const WINDOW: Duration = Duration::from_millis(50);

/// How often a napping shard measures parking again, and how long a shard whose nap did
/// not pay parks before it tries again.
const RECHECK: Duration = Duration::from_secs(1);

/// How much less CPU per second a nap window must cost than the parked window before it,
/// in percent, for the shard to keep napping.
const SAVING_PERCENT_MIN: u64 = 10;

/// Timer slack of a napping shard's thread, ns.
const NAP_TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// Spawns the nap task on the current executor, in a task queue of its own; each nap is
/// counted in `probe`. `nap` zero: no task.
pub fn spawn(nap: Duration, probe: Arc<ShardProbe>) {
    if nap.is_zero() {
        return;
    }
    // A nap is short; the kernel's default timer slack (50 µs) would stretch it.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, NAP_TIMER_SLACK_NS, 0, 0, 0) };
    let queue = glommio::executor().create_task_queue(
        Shares::Static(1),
        Latency::NotImportant,
        "light-load-nap",
    );
    glommio::spawn_local_into(run(nap, probe), queue)
        .expect("the nap task queue was just created")
        .detach();
}

async fn run(nap: Duration, probe: Arc<ShardProbe>) {
    // Wake-ups per window from which napping may pay: half as many as naps would fit.
    let wakes_min = (WINDOW.as_nanos() / nap.as_nanos() / 2) as u64;
    loop {
        let parked = park_for(WINDOW).await;
        if parked.wakes <= wakes_min {
            continue;
        }
        let mut napped = nap_for(WINDOW, nap, &probe).await;
        if !pays(&napped, &parked) {
            glommio::timer::sleep(RECHECK).await;
            continue;
        }
        // Napping pays: go on, and look at parking again now and then.
        loop {
            let recent = nap_for(RECHECK, nap, &probe).await;
            napped = if recent.wall >= WINDOW {
                recent
            } else {
                napped
            };
            let parked = park_for(WINDOW).await;
            if !pays(&napped, &parked) {
                break;
            }
        }
    }
}

/// What one measurement window cost the shard's thread.
struct Usage {
    /// Thread CPU time.
    cpu: Duration,
    /// Wall time of the window.
    wall: Duration,
    /// Voluntary context switches: parks (and naps).
    wakes: u64,
}

impl Usage {
    /// CPU time per second of wall time, in nanoseconds.
    fn cpu_per_sec(&self) -> u64 {
        (self.cpu.as_nanos() * 1_000_000_000 / self.wall.as_nanos().max(1)) as u64
    }
}

/// Whether `napped` cost at least [`SAVING_PERCENT_MIN`] less CPU per second than
/// `parked`.
fn pays(napped: &Usage, parked: &Usage) -> bool {
    napped.cpu_per_sec() * 100 <= parked.cpu_per_sec() * (100 - SAVING_PERCENT_MIN)
}

/// Where the thread stands: CPU time, voluntary switches, the time.
fn mark() -> (Duration, u64, Instant) {
    (thread_cpu(), voluntary_switches(), Instant::now())
}

fn since(start: (Duration, u64, Instant)) -> Usage {
    let (cpu, wakes, at) = start;
    Usage {
        cpu: thread_cpu().saturating_sub(cpu),
        wall: at.elapsed(),
        wakes: voluntary_switches().saturating_sub(wakes),
    }
}

/// Lets the shard park as glommio does for `window`, and measures it.
async fn park_for(window: Duration) -> Usage {
    let start = mark();
    glommio::timer::sleep(window).await;
    since(start)
}

/// Naps between turns for `window` (ending early once turns come up empty for a whole
/// nap's worth of them), and measures it.
async fn nap_for(window: Duration, nap: Duration, probe: &ShardProbe) -> Usage {
    let start = mark();
    let mut last_work = start.2;
    let mut yielded_at = start.2;
    // Resets the counters, so the first turn counts from here.
    let _ = glommio::executor().executor_stats();
    loop {
        let now = Instant::now();
        if now - start.2 >= window {
            break;
        }
        // One of the tasks counted is this one.
        if glommio::executor().executor_stats().tasks_executed() > 1 {
            last_work = now;
        } else if now - last_work >= WINDOW {
            // Nothing to do for a while: parking costs nothing then.
            break;
        }
        // A turn that took as long as a nap had work enough: nap only after short ones.
        if now - yielded_at < nap {
            std::thread::sleep(nap);
            probe.naps_total.inc();
        }
        yielded_at = Instant::now();
        next_turn().await;
    }
    since(start)
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Voluntary context switches of this thread so far: each park (and each nap) is one.
fn voluntary_switches() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    u64::try_from(usage.ru_nvcsw).unwrap_or(0)
}

/// Returns on the executor's next turn: once it has reaped completions, timers and
/// channel messages again.
async fn next_turn() {
    let mut timer: Option<Timer> = None;
    let mut waited = false;
    poll_fn(|cx| loop {
        let t = timer.get_or_insert_with(|| Timer::new(Duration::from_micros(1)));
        match std::pin::Pin::new(&mut *t).poll(cx) {
            Poll::Pending => {
                waited = true;
                return Poll::Pending;
            }
            Poll::Ready(_) if waited => return Poll::Ready(()),
            // Expired before its first poll: arm another, so a turn really passes.
            Poll::Ready(_) => timer = None,
        }
    })
    .await
}
