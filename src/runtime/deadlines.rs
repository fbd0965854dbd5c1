//! Deadlines of many tasks, watched with one timer.
//!
//! glommio keeps each charged timer in its reactor's table by id, and that table
//! never gives its room back: a storm of N connections, each in its CONNECT phase
//! under a timer of its own, leaves the shard a table of N entries for the rest of its
//! life (28 bytes a connection at 15,000). [`within`] keeps the deadline in this
//! thread's tables instead, watched by one task sleeping on one timer until the
//! earliest; the tables give their room back as they empty.
//!
//! A future that finishes (or is dropped) before its deadline takes its waker out at
//! once: a waker keeps its task's memory, and a connection parked a moment after its
//! CONNECT would otherwise hold its finished task until the deadline. Only the
//! deadline's place in the heap (its time and token) stays until the time comes.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use super::tokens::{TokenMint, TokenTable, Tokened};

/// A [`within`] whose deadline came first.
#[derive(Debug, PartialEq, Eq)]
pub struct Expired;

/// Runs `fut` until it finishes or `deadline` passes, whichever comes first; the
/// future is dropped at the deadline.
pub async fn within<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Expired> {
    let mut fut = pin!(fut);
    // Borrowed by the closure, not moved: a `move` closure would capture the token
    // field alone (a copy), and the guard dropped here would hold none.
    let mut armed = Armed(None);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Expired));
        }
        // A task's waker does not change between polls (one task, one executor).
        if armed.0.is_none() {
            armed.0 = Some(arm(deadline, cx.waker().clone()));
        }
        Poll::Pending
    })
    .await
}

/// The token of an armed deadline: disarmed when the [`within`] holding it ends.
struct Armed(Option<u64>);

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(token) = self.0 {
            DEADLINES.with(|d| d.take(token));
        }
    }
}

thread_local! {
    static DEADLINES: Rc<Deadlines> = Rc::new(Deadlines::default());
}

/// This thread's armed deadlines and the task watching them.
#[derive(Default)]
struct Deadlines {
    /// The deadlines in time order, by token; a token no longer in `armed` was disarmed.
    heap: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    tokens: RefCell<TokenMint>,
    /// The tasks to wake, by token.
    armed: RefCell<TokenTable<Waiting>>,
    /// The watcher runs (spawned at the first deadline).
    watched: Cell<bool>,
    /// What the watcher sleeps until; `None` while the heap is empty.
    sleeps_until: Cell<Option<Instant>>,
    /// An earlier deadline arrived: the watcher must sleep shorter.
    rearm: Cell<bool>,
    watcher: Cell<Option<Waker>>,
    /// Times the watcher woke and looked (a figure for the tests).
    passes: Cell<u64>,
}

/// A task waiting for a deadline.
struct Waiting {
    token: u64,
    waker: Waker,
}

impl Tokened for Waiting {
    fn token(&self) -> u64 {
        self.token
    }
}

impl Deadlines {
    fn is_armed(&self, token: u64) -> bool {
        self.armed.borrow().get(token).is_some()
    }

    /// Takes deadline `token` out, if still armed: its waker goes now.
    fn take(&self, token: u64) -> Option<Waker> {
        let waiting = self.armed.borrow_mut().remove(token)?;
        self.tokens.borrow_mut().release(token);
        Some(waiting.waker)
    }
}

/// Wakes `waker` at `at`, unless disarmed before; returns the deadline's token.
fn arm(at: Instant, waker: Waker) -> u64 {
    DEADLINES.with(|d| {
        // One deadline per connection at a time, and a shard holds at most
        // `CONNECTIONS_PER_SHARD_LIMIT` connections: within a token's slots.
        let token = d
            .tokens
            .borrow_mut()
            .mint()
            .expect("fewer deadlines armed than a token can index");
        d.armed.borrow_mut().insert(Waiting { token, waker });
        d.heap.borrow_mut().push(Reverse((at, token)));
        if !d.watched.replace(true) {
            glommio::spawn_local(watch(Rc::clone(d))).detach();
        }
        if d.sleeps_until.get().is_none_or(|until| at < until) {
            d.rearm.set(true);
            if let Some(w) = d.watcher.take() {
                w.wake();
            }
        }
        token
    })
}

/// Wakes every task whose deadline passed, then sleeps until the next deadline or
/// until an earlier one is armed. Deadlines disarmed meanwhile go as soon as they reach
/// the front, whatever their time: a storm of connections, each done with its CONNECT
/// long before its deadline, costs one pass when the first deadline comes, not a wake
/// per connection.
async fn watch(d: Rc<Deadlines>) {
    loop {
        d.passes.set(d.passes.get() + 1);
        let now = Instant::now();
        let next = loop {
            let due = {
                let mut heap = d.heap.borrow_mut();
                match heap.peek() {
                    Some(&Reverse((at, token))) if at <= now || !d.is_armed(token) => {
                        heap.pop().map(|Reverse(due)| due)
                    }
                    Some(&Reverse((at, _))) => break Some(at),
                    None => break None,
                }
            };
            if let Some(waker) = due.and_then(|(_, token)| d.take(token)) {
                waker.wake();
            }
        };
        {
            // The room a storm of connections took goes back once they are through.
            let mut heap = d.heap.borrow_mut();
            if heap.capacity() > 64 && heap.len() < heap.capacity() / 4 {
                let keep = 2 * heap.len();
                heap.shrink_to(keep);
            }
        }
        d.sleeps_until.set(next);
        d.rearm.set(false);
        let mut timer =
            next.map(|at| glommio::timer::Timer::new(at.saturating_duration_since(now)));
        poll_fn(|cx| {
            if d.rearm.get() {
                return Poll::Ready(());
            }
            if let Some(timer) = timer.as_mut() {
                if Pin::new(timer).poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            d.watcher.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(make)
            .expect("executor")
            .join()
            .expect("executor ran")
    }

    #[test]
    fn a_finished_future_returns_its_output() {
        let out = run(|| async {
            within(Instant::now() + Duration::from_secs(30), async {
                glommio::yield_if_needed().await;
                7
            })
            .await
        });
        assert_eq!(out, Ok(7));
    }

    #[test]
    fn a_stalled_future_is_dropped_at_its_deadline_not_before() {
        let (out, waited) = run(|| async {
            let start = Instant::now();
            let out = within(
                start + Duration::from_millis(50),
                std::future::pending::<()>(),
            )
            .await;
            (out, start.elapsed())
        });
        assert_eq!(out, Err(Expired));
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
    }

    #[test]
    fn an_earlier_deadline_armed_later_still_comes_first() {
        let (early, late) = run(|| async {
            let start = Instant::now();
            let late = glommio::spawn_local(async move {
                let out =
                    within(start + Duration::from_secs(3), std::future::pending::<()>()).await;
                (out, start.elapsed())
            });
            // The watcher now sleeps until the late deadline.
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let early = within(
                start + Duration::from_millis(60),
                std::future::pending::<()>(),
            )
            .await;
            let early = (early, start.elapsed());
            (early, late.await)
        });
        assert_eq!(early.0, Err(Expired));
        assert!(
            early.1 < Duration::from_secs(3),
            "the early deadline waited for the late one: {:?}",
            early.1
        );
        assert_eq!(late.0, Err(Expired));
        assert!(late.1 >= Duration::from_secs(3), "{:?}", late.1);
    }

    #[test]
    fn a_future_done_before_its_deadline_lets_go_of_its_task_at_once() {
        let (armed_while, armed_after) = run(|| async {
            let far = Instant::now() + Duration::from_secs(60);
            let waiting = glommio::spawn_local(async move {
                within(far, glommio::timer::sleep(Duration::from_millis(20))).await
            });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let armed_while = DEADLINES.with(|d| d.armed.borrow().len());
            assert_eq!(waiting.await, Ok(()));
            // And one dropped before its deadline.
            let dropped =
                glommio::spawn_local(
                    async move { within(far, std::future::pending::<()>()).await },
                );
            glommio::timer::sleep(Duration::from_millis(5)).await;
            drop(dropped.cancel());
            glommio::timer::sleep(Duration::from_millis(5)).await;
            (armed_while, DEADLINES.with(|d| d.armed.borrow().len()))
        });
        assert_eq!(armed_while, 1);
        assert_eq!(
            armed_after, 0,
            "a waker (and so its task) kept until the deadline"
        );
    }

    #[test]
    fn deadlines_disarmed_early_cost_the_watcher_no_wake_each() {
        let passes = run(|| async {
            let start = Instant::now();
            let mut tasks = Vec::new();
            // 500 deadlines 1 ms apart, each future done long before its own.
            for i in 0..500u64 {
                tasks.push(glommio::spawn_local(async move {
                    let at = start + Duration::from_millis(100 + i);
                    within(at, glommio::timer::sleep(Duration::from_millis(1))).await
                }));
            }
            for t in tasks {
                assert_eq!(t.await, Ok(()));
            }
            let before = DEADLINES.with(|d| d.passes.get());
            glommio::timer::sleep(Duration::from_millis(700)).await;
            DEADLINES.with(|d| {
                assert!(d.heap.borrow().is_empty(), "every disarmed deadline went");
                d.passes.get() - before
            })
        });
        assert!(
            passes <= 5,
            "the watcher woke {passes} times for 500 disarmed deadlines"
        );
    }

    #[test]
    fn the_heap_gives_its_room_back() {
        let (peak, after) = run(|| async {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..2_000 {
                tasks.push(glommio::spawn_local(async move {
                    within(
                        start + Duration::from_millis(300),
                        std::future::pending::<()>(),
                    )
                    .await
                }));
            }
            // Every task's first poll: each armed its deadline.
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let peak = DEADLINES.with(|d| d.heap.borrow().capacity());
            for t in tasks {
                assert_eq!(t.await, Err(Expired));
            }
            // One more pass of the watcher after the last wake.
            within(
                Instant::now() + Duration::from_millis(10),
                std::future::pending::<()>(),
            )
            .await
            .unwrap_err();
            glommio::timer::sleep(Duration::from_millis(10)).await;
            (peak, DEADLINES.with(|d| d.heap.borrow().capacity()))
        });
        assert!(peak >= 2_000, "{peak}");
        assert!(after < peak / 8, "{after} of {peak}");
    }
}
