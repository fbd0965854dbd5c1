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
//! half as many as naps would fit), it naps for one window and compares the two windows'
//! thread CPU time per unit of work (messages received, delivered and passed over the
//! mesh). It keeps napping only while that costs at least [`SAVING_PERCENT_MIN`] less
//! than parking and gets at least [`WORK_KEPT_PERCENT_MIN`] of parking's work per second
//! done (a flood must not be slowed down), measures a parked window again every
//! [`RECHECK`] (the load may have changed), and after a nap window that did not pay waits
//! before it tries again, twice as long after each further one (up to [`BACKOFF_MAX`]).
//! Naps come only after a turn whose work took less than a nap and handled fewer than
//! [`BUSY_TURN_WORK`] messages, so a busy shard never naps, and not while a mesh link to
//! or from the shard backs up (under a flood a napping shard would hold its peers back).
//! An idle shard parks as before, and a message waits at most one nap longer.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use glommio::{Latency, Shares};

use crate::metrics::{Counter, ShardProbe};

/// How long each measurement of parking or napping lasts.
const WINDOW: Duration = Duration::from_millis(50);

/// How often a napping shard measures parking again, and how long a shard whose nap did
/// not pay parks before it tries again (doubling up to [`BACKOFF_MAX`] while trials do
/// not pay).
const RECHECK: Duration = Duration::from_secs(1);

/// Units of work (see [`work_done`]) in one turn from which the shard takes no nap after
/// it: batches this big form without napping.
const BUSY_TURN_WORK: u64 = 128;

/// Work per second (see [`work_done`]) from which a parked shard tries no naps: near
/// saturation a trial that slows it for a window leaves a queue that a flood never lets
/// drain, and batches form without napping anyway.
const TRIAL_WORK_PER_SEC_MAX: u64 = 1_000_000;

/// Longest wait between trials that did not pay.
const BACKOFF_MAX: Duration = Duration::from_secs(32);

/// How much less CPU per unit of work a nap window must cost than the parked window
/// before it, in percent, for the shard to keep napping.
const SAVING_PERCENT_MIN: u128 = 10;

/// How much of the parked window's work per second a nap window must do, in percent.
const WORK_KEPT_PERCENT_MIN: u128 = 90;

/// The timer that marks the executor's next turn: expired by then, never waited for.
const TURN_TIMER: Duration = Duration::from_micros(1);

/// Timer slack of a napping shard's thread, ns.
const NAP_TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// Spawns the nap task on the current executor, in a task queue of its own; each nap is
/// counted in `probe`, and no nap is taken while `backed_up` says work is queueing up
/// elsewhere for this shard (a peer's mesh link). `nap` zero: no task.
pub fn spawn(nap: Duration, probe: Arc<ShardProbe>, backed_up: impl Fn() -> bool + 'static) {
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
    glommio::spawn_local_into(run(nap, probe, backed_up), queue)
        .expect("the nap task queue was just created")
        .detach();
}

async fn run(nap: Duration, probe: Arc<ShardProbe>, backed_up: impl Fn() -> bool) {
    // Wake-ups per window from which napping may pay: half as many as naps would fit.
    let wakes_min = (WINDOW.as_nanos() / nap.as_nanos() / 2) as u64;
    let mut backoff = RECHECK;
    loop {
        let parked = park_for(WINDOW, &probe).await;
        if parked.wakes <= wakes_min
            || parked.work == 0
            || parked.work_per_sec() > TRIAL_WORK_PER_SEC_MAX
        {
            continue;
        }
        let mut napped = nap_for(WINDOW, nap, &probe, &backed_up).await;
        if !pays(&napped, &parked) {
            // A trial that does not pay costs up to a window of slower work: under a
            // load where napping never pays, try less and less often.
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = RECHECK;
        // Napping pays: go on, and look at parking again now and then.
        loop {
            let recent = nap_for(RECHECK, nap, &probe, &backed_up).await;
            napped = if recent.wall >= WINDOW {
                recent
            } else {
                napped
            };
            let parked = park_for(WINDOW, &probe).await;
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
    /// Units of work done: messages received, delivered, sent and received over the mesh.
    work: u64,
}

impl Usage {
    fn work_per_sec(&self) -> u64 {
        (u128::from(self.work) * 1_000_000_000 / self.wall.as_nanos().max(1)) as u64
    }
}

/// Whether `napped` cost at least [`SAVING_PERCENT_MIN`] less CPU per unit of work than
/// `parked` while doing at least [`WORK_KEPT_PERCENT_MIN`] of its work per second.
fn pays(napped: &Usage, parked: &Usage) -> bool {
    if napped.work == 0 || parked.work == 0 {
        return false;
    }
    let (nw, pw) = (u128::from(napped.work), u128::from(parked.work));
    let (nc, pc) = (napped.cpu.as_nanos(), parked.cpu.as_nanos());
    let (nt, pt) = (napped.wall.as_nanos().max(1), parked.wall.as_nanos().max(1));
    // nc / nw <= pc / pw * (1 - saving), and nw / nt >= pw / pt * kept.
    let cheaper = nc * pw * 100 <= pc * nw * (100 - SAVING_PERCENT_MIN);
    let kept = nw * pt * 100 >= pw * nt * WORK_KEPT_PERCENT_MIN;
    cheaper && kept
}

/// Where the shard stands at the start of a window.
struct Mark {
    cpu: Duration,
    wakes: u64,
    work: u64,
    at: Instant,
}

fn mark(probe: &ShardProbe) -> Mark {
    Mark {
        cpu: thread_cpu(),
        wakes: voluntary_switches(),
        work: work_done(probe),
        at: Instant::now(),
    }
}

fn since(start: &Mark, probe: &ShardProbe) -> Usage {
    Usage {
        cpu: thread_cpu().saturating_sub(start.cpu),
        wall: start.at.elapsed(),
        wakes: voluntary_switches().saturating_sub(start.wakes),
        work: work_done(probe).saturating_sub(start.work),
    }
}

/// Messages this shard has received from clients, delivered, and sent and received over
/// the mesh: what its CPU time is spent on.
fn work_done(probe: &ShardProbe) -> u64 {
    let by_qos = |counters: &[Counter; 3]| -> u64 { counters.iter().map(|c| c.get()).sum() };
    by_qos(&probe.messages_received_by_qos)
        + by_qos(&probe.messages_delivered_by_qos)
        + probe.mesh_messages_sent_total.get()
        + probe.mesh_messages_received_total.get()
}

/// Lets the shard park as glommio does for `window`, and measures it.
async fn park_for(window: Duration, probe: &ShardProbe) -> Usage {
    let start = mark(probe);
    glommio::timer::sleep(window).await;
    since(&start, probe)
}

/// Naps between turns for `window` (ending early once turns have come up empty for a
/// [`WINDOW`]), and measures it.
async fn nap_for(
    window: Duration,
    nap: Duration,
    probe: &ShardProbe,
    backed_up: &impl Fn() -> bool,
) -> Usage {
    let start = mark(probe);
    let mut last_work = start.at;
    let mut yielded_at = start.at;
    let mut work_at_yield = start.work;
    let mut turn = Timer::new(TURN_TIMER);
    // Resets the counters, so the first turn counts from here.
    let _ = glommio::executor().executor_stats();
    loop {
        let now = Instant::now();
        if now - start.at >= window {
            break;
        }
        // One of the tasks counted is this one.
        if glommio::executor().executor_stats().tasks_executed() > 1 {
            last_work = now;
        } else if now - last_work >= WINDOW {
            // Nothing to do for a while: parking costs nothing then.
            break;
        }
        // A turn that took as long as a nap, or handled a batch this big, had work
        // enough: nap only after short, small ones, and not while a peer's messages back
        // up on the way here.
        let turn_work = work_done(probe).saturating_sub(work_at_yield);
        if now - yielded_at < nap && turn_work < BUSY_TURN_WORK && !backed_up() {
            std::thread::sleep(nap);
            probe.naps_total.inc();
        }
        yielded_at = Instant::now();
        work_at_yield = work_done(probe);
        turn.reset(TURN_TIMER);
        next_turn(&mut turn).await;
    }
    since(&start, probe)
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

/// Returns on the executor's next turn (once it has reaped completions, timers and
/// channel messages again): `timer`, just set to [`TURN_TIMER`], fires there.
async fn next_turn(timer: &mut Timer) {
    let mut waited = false;
    poll_fn(|cx| loop {
        match std::pin::Pin::new(&mut *timer).poll(cx) {
            Poll::Pending => {
                waited = true;
                return Poll::Pending;
            }
            Poll::Ready(_) if waited => return Poll::Ready(()),
            // Expired before its first poll: set it again, so a turn really passes.
            Poll::Ready(_) => timer.reset(TURN_TIMER),
        }
    })
    .await
}
