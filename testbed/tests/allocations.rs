//! What a filter costs the host in allocations: in the steady state, a filter's
//! context for one request (made, given the request and response heads and body,
//! then `on_log`, `on_done`, `on_delete`) allocates nothing on the host's heap. The
//! engine reuses the contexts' slab, the wake-up signals and the maps it moves in and
//! out; a filter added to a chain adds callbacks, not allocations.
//!
//! Counted on the test's own thread (the filters run on it), by a global allocator
//! that counts and then defers to the system's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use portcullis_testbed::{Request, TestBed, wasm};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count() {
    // `try_with`: a thread being torn down has no counter left, and is not counted.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A bed of `n` no-op filters, warmed up.
fn noops(n: usize) -> TestBed {
    let mut builder = TestBed::new();
    for _ in 0..n {
        builder = builder.filter(wasm("noop_filter"), "");
    }
    let mut bed = builder.build().expect("no-op filters start");
    for _ in 0..200 {
        send(&mut bed);
    }
    bed
}

fn send(bed: &mut TestBed) {
    let response = bed.send(
        Request::post("/orders/42?expand=items", b"{\"qty\":1}".to_vec())
            .header("authorization", "Bearer abc")
            .header("accept", "application/json"),
    );
    assert_eq!(response.status, 200);
}

/// Allocations on this thread for `requests` requests through `bed`.
fn allocations_for(bed: &mut TestBed, requests: u64) -> u64 {
    let before = allocations();
    for _ in 0..requests {
        send(bed);
    }
    allocations() - before
}

#[test]
fn a_filter_in_the_chain_allocates_nothing_per_request_in_the_steady_state() {
    let (mut one, mut three) = (noops(1), noops(3));
    let requests = 1_000;
    let with_one = allocations_for(&mut one, requests);
    let with_three = allocations_for(&mut three, requests);
    // The test bed itself (the request, the scripted upstream, the response) allocates
    // the same for both chains; what two more filters add is theirs.
    assert!(with_one > 0, "the counter counts: the test bed allocates");
    assert_eq!(
        with_three.saturating_sub(with_one),
        0,
        "two more no-op filters allocated {} times in {requests} requests \
         ({with_one} with one filter, {with_three} with three)",
        with_three.saturating_sub(with_one)
    );
}
