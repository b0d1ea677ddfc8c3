//! Property test of the host's reading of guest memory: a filter calls host functions
//! with arbitrary pointers, lengths and numbers. Whatever they are, the host answers
//! with a status or fails only that filter's request; it never panics, and the next
//! request is served.

use std::cell::RefCell;
use std::time::Duration;

use portcullis_testbed::{FailurePolicy, Reply, Request, TestBed, VmLimits, wasm};
use proptest::prelude::*;

const FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_define_metric",
    "proxy_register_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_effective_context",
    "proxy_continue_stream",
    "fd_write",
    "random_get",
];

thread_local! {
    static BED: RefCell<TestBed> = RefCell::new(
        TestBed::new()
            .filter(wasm("conformance_filter"), r#"{"upstream": "echo"}"#)
            .failure_policy(FailurePolicy::Reload)
            .limits(VmLimits { memory_bytes: 32 << 20, callback_timeout: Duration::from_millis(500), ..VmLimits::default() })
            .cluster("echo", |_| Reply::status(200, &[], "ok"))
            .build()
            .expect("starts"),
    );
}

/// Pointers and lengths near the interesting edges: small, inside a typical filter
/// memory, at the 4 GiB wrap, and anything at all.
fn arg() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..64,
        0u32..2_000_000,
        (u32::MAX - 64)..=u32::MAX,
        any::<u32>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_host_call_arguments_never_harm_the_host(
        function in proptest::sample::select(FUNCTIONS),
        args in proptest::collection::vec(arg(), 10),
    ) {
        BED.with(|bed| {
            let mut bed = bed.borrow_mut();
            let list: Vec<String> = args.iter().map(u32::to_string).collect();
            let res = bed.send(Request::get("/case/raw").header("x-call", function).header("x-args", &list.join(",")));
            // A status report, the filter's own (random) local reply, or a 503 for a
            // filter that broke itself: all are answers.
            prop_assert!((100..=599).contains(&res.status), "{function} {args:?}: {}", res.status);
            if let Some(status) = res.report("status") {
                prop_assert!(status.parse::<u32>().is_ok(), "{function}: {status}");
            }
            let next = bed.send(Request::get("/plain"));
            prop_assert_eq!(next.status, 200, "the next request is served after {} {:?}", function, args);
            Ok(())
        })?;
    }
}
