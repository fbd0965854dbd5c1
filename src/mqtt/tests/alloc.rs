//! The PUBLISH hot path allocates nothing: a per-thread counting allocator watches decode
//! and encode of a v5 PUBLISH without user properties.
//!
//! The allocator is installed for the crate's unit-test binary only; it forwards to the
//! system allocator and counts per thread, so tests running in parallel do not disturb
//! each other's counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;

use super::*;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // try_with: the slot may be gone while a thread is being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

fn v5_publish_bytes() -> Vec<u8> {
    let props: &[u8] = &[
        0x02, 0, 0, 0, 30, // message expiry
        0x23, 0, 3, // topic alias
        0x09, 0, 2, 1, 2, // correlation data
        0x03, 0, 1, b'j', // content type
    ];
    let mut body = vec![0, 5, b's', b'/', b'x', b'/', b'y', 0, 42, props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(&[0xAA; 64]);
    frame(0x32, &body)
}

#[test]
fn publish_decode_and_encode_do_not_allocate() {
    let bytes = v5_publish_bytes();
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(&bytes);
    buf.extend_from_slice(&bytes);
    let limits = DecodeLimits::default();
    // The first split turns the buffer into a shared one (one allocation per buffer).
    let first = decode(&mut buf, Some(Protocol::V5), &limits).expect("valid");
    assert!(first.is_some());

    let (count, second) = allocations_during(|| decode(&mut buf, Some(Protocol::V5), &limits));
    let Ok(Some(Packet::Publish(publish))) = second else {
        panic!("not a PUBLISH: {second:?}")
    };
    assert_eq!(count, 0, "decode allocated");
    assert_eq!(publish.properties.topic_alias, Some(3));

    let mut out = BytesMut::with_capacity(4096);
    let packet = Packet::Publish(publish);
    let (count, n) = allocations_during(|| encode(&packet, Protocol::V5, &mut out));
    assert_eq!(count, 0, "encode allocated");
    assert_eq!(n, Ok(bytes.len()));
    assert_eq!(&out[..], &bytes[..]);

    let Packet::Publish(publish) = &packet else {
        unreachable!()
    };
    let (count, n) = allocations_during(|| publish.encode(Protocol::V5, &mut out));
    assert_eq!((count, n), (0, Ok(bytes.len())));
    assert_eq!(publish.encoded_len(Protocol::V5), Ok(bytes.len()));
}

#[test]
fn the_counter_sees_allocations() {
    let (count, v) = allocations_during(|| vec![1u8; 10]);
    assert!(count >= 1 && v.len() == 10);
}
