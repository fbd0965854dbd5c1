//! `runtime::lasting` allocates on a heap of its own, so that what idle connections keep
//! does not share pages with what serving connections allocate and free (PERF.md,
//! "Idle connections: smaller, and apart from the serving ones"). Checked with mimalloc
//! as this test's global allocator, as in the broker.

use std::ffi::c_void;

use libmimalloc_sys::{mi_heap_contains_block, mi_heap_get_default};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Whether `p` came from this thread's default heap.
fn on_default_heap<T>(p: &T) -> bool {
    // SAFETY: asks about a live block of this process.
    unsafe { mi_heap_contains_block(mi_heap_get_default(), (p as *const T).cast::<c_void>()) }
}

#[test]
fn lasting_allocations_come_from_another_heap_and_the_default_comes_back() {
    let before = Box::new([1u8; 320]);
    let kept = shardmq::runtime::lasting(|| Box::new([2u8; 320]));
    let after = Box::new([3u8; 320]);
    assert!(on_default_heap(&*before));
    assert!(
        !on_default_heap(&*kept),
        "a lasting object is off the default heap"
    );
    assert!(
        on_default_heap(&*after),
        "the default heap is back after the call"
    );

    let panicked = std::panic::catch_unwind(|| {
        shardmq::runtime::lasting(|| -> Box<[u8; 64]> { panic!("inside") })
    });
    assert!(panicked.is_err());
    let after_panic = Box::new([4u8; 320]);
    assert!(
        on_default_heap(&*after_panic),
        "the default heap is back after a panic"
    );

    // Freed by the global allocator like any other object; the heap stays for the next.
    drop(kept);
    let again = shardmq::runtime::lasting(|| Box::new([5u8; 320]));
    assert!(!on_default_heap(&*again));
    std::hint::black_box((before, after, after_panic, again));
}
