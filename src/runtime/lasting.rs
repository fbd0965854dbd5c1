//! A heap of its own for what a connection keeps while it idles.
//!
//! A connection allocates most of its memory while it serves (buffers, tasks, streams,
//! decoded packets) and gives it back once it is parked; what it keeps (its session,
//! its link, its loop state) is a few small objects. Allocated from the same heap, the
//! kept objects of thousands of connections arriving together sit in the same pages as
//! the serving ones' short-lived objects of the same sizes, and those pages stay
//! resident, mostly empty, once the short-lived ones are gone. [`lasting`] runs an
//! allocation on a second mimalloc heap of the shard's thread, whose pages hold only
//! such objects.
//!
//! Only the allocation moves: the object is freed by the global allocator as any other,
//! from whichever heap it came (mimalloc frees a block into its own page, from any
//! thread). With another global allocator (the unit tests) the switch changes nothing.

use std::cell::Cell;

use libmimalloc_sys::{mi_heap_new, mi_heap_set_default, mi_heap_t};

thread_local! {
    /// This thread's heap for lasting objects, once asked for. Never deleted: it lives
    /// as long as the thread (mimalloc hands a finished thread's pages on).
    static HEAP: Cell<*mut mi_heap_t> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f`, whose allocations come from this thread's heap of lasting objects. Keep
/// `f` to the allocation of what lasts: everything it allocates lands there. It cannot
/// `.await`, so no other task's allocations do.
pub fn lasting<R>(f: impl FnOnce() -> R) -> R {
    let heap = HEAP.with(|h| {
        if h.get().is_null() {
            // SAFETY: makes a heap owned by this thread.
            h.set(unsafe { mi_heap_new() });
        }
        h.get()
    });
    if heap.is_null() {
        return f();
    }
    /// Puts the thread's previous default heap back, also if `f` panics.
    struct Restore(*mut mi_heap_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: the heap this thread used before, still alive.
            unsafe { mi_heap_set_default(self.0) };
        }
    }
    // SAFETY: `heap` belongs to this thread and is never deleted.
    let _restore = Restore(unsafe { mi_heap_set_default(heap) });
    f()
}
