//! Executor threads that are nudged every period, so a shard never sleeps with work
//! queued for long, not even before its first task ran.
//!
//! glommio 0.9's executor loop cannot tell "preempted before any task ran" from "nothing
//! to run". Each turn it reaps completions, arms the preempt timer, then asks
//! `need_preempt()` before running the first task queue; if the timer already fired (the
//! thread was descheduled for longer than the timer between the two steps, common on a
//! loaded host) or a wake-up eventfd read completed late in the latency ring, the turn
//! reports "ran nothing" and the loop parks the thread in `io_uring_enter`, although a
//! task queue is runnable. That work is the shard's own, so no completion and no other
//! thread is coming to end the park: a shard that does this while the others wait for it
//! over the mesh (at start, at the recovery barrier) or before its first task stops for
//! good. That was the start-up stick: about one start in 100–150 under load ended in
//! `start_timeout_ms`.
//!
//! The runtime therefore runs each executor on a thread of its own ([`spawn`]) that is
//! registered here before the executor exists, and one process-wide thread sends every
//! registered thread `SIGURG` once per [`PERIOD`]. The handler does nothing; the point is
//! the interrupted system call: a parked executor's `io_uring_enter` returns `EINTR`,
//! which glommio treats as a wake-up, and its next turn runs the queued work. A thread
//! that is running when the signal arrives loses a few hundred nanoseconds to the handler;
//! every other system call on an executor thread is restarted (`SA_RESTART`). The cost on
//! an idle shard is one wake-up per period.
//!
//! Why a signal and not a task waker from another thread: a waker exists only once a task
//! has run, which leaves exactly the first park uncovered, and it re-queues one task
//! where a signal needs no cooperation from the executor at all.

use std::future::Future;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

/// The longest an executor can sleep with runnable work.
pub const PERIOD: Duration = Duration::from_millis(100);

/// The signal that ends a park. Its default action is to be ignored, so a stray one (from
/// another tool, or after a thread left the registry) harms nothing.
const NUDGE: libc::c_int = libc::SIGURG;

/// Runs `fut_gen()`'s future on a new executor built from `builder`, on a thread named
/// `name` that is nudged every [`PERIOD`] for as long as the executor runs. The thread's
/// result is the future's output, or why the executor could not be built.
pub fn spawn<G, F, T>(
    builder: LocalExecutorBuilder,
    name: String,
    fut_gen: G,
) -> Result<JoinHandle<Result<T, String>>, String>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let nudger = nudger()?;
    let thread = std::thread::Builder::new().name(name.clone());
    thread
        .spawn(move || {
            let _nudged = nudger.enter();
            let executor = builder
                .make()
                .map_err(|e| format!("cannot create the executor of {name}: {e}"))?;
            // fut_gen runs inside the executor: what it builds may need the executor.
            Ok(executor.run(async move { fut_gen().await }))
        })
        .map_err(|e| format!("cannot start an executor thread: {e}"))
}

/// The process's nudging thread and the threads it nudges.
struct Nudger {
    /// The kernel thread ids of the executor threads now running.
    threads: Mutex<Vec<libc::pid_t>>,
    /// Signalled when the first thread registers, so an idle process's nudger sleeps.
    registered: Condvar,
}

/// Starts the nudger and installs the signal's handler, once per process.
fn nudger() -> Result<&'static Nudger, String> {
    static NUDGER: OnceLock<Result<&'static Nudger, String>> = OnceLock::new();
    NUDGER
        .get_or_init(|| {
            install_handler()?;
            let nudger: &'static Nudger = Box::leak(Box::new(Nudger {
                threads: Mutex::new(Vec::new()),
                registered: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("shard-nudge".into())
                .spawn(move || nudger.run())
                .map_err(|e| format!("cannot start the executor nudging thread: {e}"))?;
            Ok(nudger)
        })
        .clone()
}

impl Nudger {
    /// Registers the calling thread until the returned guard drops.
    fn enter(&'static self) -> Registered {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.push(tid);
        self.registered.notify_one();
        Registered { nudger: self, tid }
    }

    /// Every period, signals each registered thread; waits while there is none.
    fn run(&self) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        loop {
            std::thread::sleep(PERIOD);
            let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
            while threads.is_empty() {
                threads = self
                    .registered
                    .wait(threads)
                    .unwrap_or_else(|e| e.into_inner());
            }
            // Under the lock: a thread leaves the registry before it exits, so its id
            // cannot have been reused by another thread here.
            for &tid in threads.iter() {
                // SAFETY: tgkill only sends a signal; the handler is installed.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, NUDGE) };
            }
        }
    }
}

/// An executor thread's place in the registry; leaving it is the thread's last act.
struct Registered {
    nudger: &'static Nudger,
    tid: libc::pid_t,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut threads = self
            .nudger
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        threads.retain(|&t| t != self.tid);
    }
}

extern "C" fn on_nudge(_: libc::c_int) {}

/// Installs the do-nothing handler: without one the signal is discarded without
/// interrupting anything.
fn install_handler() -> Result<(), String> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is
    // async-signal-safe (it does nothing) and lives for the whole process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_nudge as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(NUDGE, &action, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot install the executor nudge handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::Placement;
    use std::sync::mpsc;

    /// A preempt timer of 20 µs is about as long as one turn of the executor loop in a
    /// debug build, so now and then the timer has fired before a turn's first task: the
    /// turn runs nothing and the executor parks with its one task runnable. Spawned by
    /// glommio itself, 10,000 yields hung in every try here (no wake-up ever comes);
    /// nudged, they finish in well under a second, each park cut short within a period.
    #[test]
    fn an_executor_parked_with_runnable_work_goes_on() {
        const YIELDS: u32 = 10_000;
        let builder =
            LocalExecutorBuilder::new(Placement::Unbound).preempt_timer(Duration::from_micros(20));
        let handle = spawn(builder, "nudge-test".into(), || async {
            let mut yields = 0;
            while yields < YIELDS {
                futures_lite::future::yield_now().await;
                yields += 1;
            }
            yields
        })
        .expect("spawn the executor");
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || done.send(handle.join()));
        // Each stuck turn costs at most one period; 60 s allows 600 of them.
        match finished.recv_timeout(Duration::from_secs(60)) {
            Ok(joined) => {
                let yields = joined.expect("the executor thread").expect("the executor");
                assert_eq!(yields, YIELDS);
            }
            Err(_) => panic!("the executor is still parked with runnable work after 60 s"),
        }
    }

    /// The registry holds exactly the executor threads that run: a thread is in it while
    /// its executor runs and leaves it when the executor ends, so no signal can reach a
    /// thread id that was reused.
    #[test]
    fn an_executor_thread_leaves_the_registry_when_it_ends() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let handle = spawn(
            LocalExecutorBuilder::new(Placement::Unbound),
            "nudge-registry".into(),
            move || async move {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let nudged = nudger()
                    .expect("nudger")
                    .threads
                    .lock()
                    .unwrap()
                    .contains(&tid);
                let _ = tid_tx.send((tid, nudged));
            },
        )
        .expect("spawn the executor");
        let (tid, nudged) = tid_rx.recv().expect("the thread's id");
        assert!(nudged, "a running executor thread is not nudged");
        handle.join().expect("thread").expect("executor");
        let nudger = nudger().expect("nudger");
        let threads = nudger.threads.lock().unwrap();
        assert!(
            !threads.contains(&tid),
            "{tid} still registered: {threads:?}"
        );
    }
}
