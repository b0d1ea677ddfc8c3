//! A filter's context for a request costs no allocation once its VM has served a few
//! requests: a request through three no-op filters allocates no more than one through
//! one. Counted by this test binary's own allocator, on the test's thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use portcullis_testbed::{Request, TestBed, wasm};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations of one request (after warm-up) through `n` no-op filters.
fn allocations_per_request(n: usize) -> usize {
    let mut builder = TestBed::new();
    for _ in 0..n {
        builder = builder.filter(wasm("noop_filter"), "");
    }
    let mut bed = builder.build().expect("the bed starts");
    let request = || Request::get("/orders/1");
    for _ in 0..50 {
        assert_eq!(bed.send(request()).status, 200);
    }
    const ROUNDS: usize = 200;
    let mut total = 0;
    for _ in 0..ROUNDS {
        let req = request();
        COUNT.with(|c| c.set(0));
        COUNTING.with(|on| on.set(true));
        let res = bed.send(req);
        COUNTING.with(|on| on.set(false));
        total += COUNT.with(Cell::get);
        assert_eq!(res.status, 200);
    }
    total / ROUNDS
}

#[test]
fn a_filters_context_costs_no_allocation_in_the_steady_state() {
    let one = allocations_per_request(1);
    let three = allocations_per_request(3);
    assert_eq!(
        three, one,
        "allocations per request: {one} through one no-op filter, {three} through three"
    );
}
