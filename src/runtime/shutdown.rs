//! The shutdown latch of one shard.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A one-way latch: false until shutdown starts, then true forever.
#[derive(Default)]
pub struct Shutdown {
    stopping: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Shutdown {
    /// Starts shutdown (idempotent) and wakes every waiter.
    pub fn trigger(&self) {
        if !self.stopping.replace(true) {
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Whether shutdown has started.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Resolves once shutdown has started. For a handful of long-lived waiters (accept
    /// loops, the metrics server), not per connection.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.stopping.get() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
