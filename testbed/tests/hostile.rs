//! Hostile filters: each case asserts what the client gets and that the host keeps
//! serving the next request.

use std::time::Duration;

use portcullis_testbed::modules::{MINIMAL_PROLOGUE, wat_module as wat};
use portcullis_testbed::{
    FailurePolicy, GrpcCallResponse, HostLimits, Limit, Reply, Request, TestBed, VmLimits, wasm,
};

fn bed(policy: FailurePolicy) -> TestBed {
    TestBed::new()
        .filter(wasm("conformance_filter"), r#"{"upstream": "echo"}"#)
        .named("hostile")
        .failure_policy(policy)
        .limits(VmLimits {
            memory_bytes: 64 << 20,
            callback_timeout: Duration::from_millis(200),
            ..VmLimits::default()
        })
        .cluster("echo", |_| Reply::status(200, &[], "ok"))
        .build()
        .expect("starts")
}

/// The case fails the request with 503 and, under `reload`, the next request is
/// served by a fresh VM.
fn fails_then_recovers(case: &str) -> TestBed {
    let mut bed = bed(FailurePolicy::Reload);
    let res = bed.send(Request::get(&format!("/case/{case}")));
    assert_eq!(res.status, 503, "{case}: {}", res.text());
    assert!(res.upstream.is_none());
    assert_eq!(res.json()["message"], "filter hostile is unavailable");
    let next = bed.send(Request::get("/plain"));
    assert_eq!(next.status, 200, "{case}: the host serves the next request");
    assert_eq!(bed.filter(0).reloads(), 1);
    bed
}

#[test]
fn a_trap_in_request_headers_fails_the_request_only() {
    let bed = fails_then_recovers("trap");
    assert!(
        bed.logged("panic in on_request_headers"),
        "the filter's panic message is logged"
    );
}

#[test]
fn an_endless_loop_is_cut_at_the_callback_deadline() {
    let bed = fails_then_recovers("loop");
    assert!(bed.logged("ran longer than its limit of 200 ms"));
}

#[test]
fn a_memory_bomb_stops_at_the_memory_limit() {
    let bed = fails_then_recovers("memory-bomb");
    assert!(
        bed.logged("memory allocation of"),
        "the allocator's failure is logged: {:?}",
        bed.logs()
    );
}

#[test]
fn a_panic_inside_on_http_call_response_fails_the_paused_request() {
    let bed = fails_then_recovers("panic-in-callback");
    assert!(bed.logged("failed in proxy_on_http_call_response"));
}

#[test]
fn fail_closed_answers_503_from_then_on() {
    let mut bed = bed(FailurePolicy::FailClosed);
    assert_eq!(bed.send(Request::get("/case/trap")).status, 503);
    for _ in 0..3 {
        let res = bed.send(Request::get("/plain"));
        assert_eq!(res.status, 503);
        assert!(res.upstream.is_none());
    }
    assert!(bed.logged("failed in proxy_on_request_headers"));
}

#[test]
fn fail_open_lets_requests_through_without_the_filter() {
    let mut bed = bed(FailurePolicy::FailOpen);
    let res = bed.send(Request::get("/case/trap"));
    assert_eq!(res.status, 200, "the failing request itself goes on");
    assert!(res.upstream.is_some());
    let res = bed.send(Request::get("/case/local-reply"));
    assert_eq!(res.status, 200, "the filter is skipped from then on");
}

/// A filter that fails open after changing the request must not leave its changes,
/// nor an emptied header map, to the rest of the chain: the next filters and the
/// upstream get the request as it was before it.
#[test]
fn fail_open_passes_on_the_request_as_it_was_before_the_failing_filter() {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), r#"{"upstream": "echo"}"#)
        .named("hostile")
        .failure_policy(FailurePolicy::FailOpen)
        .filter(
            wasm("header_forwarder"),
            r#"{"forward_authorization": true}"#,
        )
        .cluster("echo", |_| Reply::status(200, &[], "ok"))
        .upstream(|req| {
            let mut h = portcullis_testbed::HeaderMap::new();
            h.add(":status", "200");
            h.add("x-upstream", "1");
            (200, h, req.body.clone())
        })
        .build()
        .expect("starts");
    let res =
        bed.send(Request::post("/case/tamper-then-trap", "the body").header("x-keep", "kept"));
    assert_eq!(res.status, 200, "{}", res.text());
    let up = res.upstream.as_ref().expect("reached the upstream");
    assert_eq!(up.headers.get_str(":path"), Some("/case/tamper-then-trap"));
    assert_eq!(up.headers.get_str("x-keep"), Some("kept"));
    assert_eq!(up.headers.get_str("x-tampered"), None);
    assert_eq!(up.body, b"the body");
    assert_eq!(
        up.headers.get_str("authorization"),
        None,
        "the credential property the failing filter forged is gone"
    );
}

/// A fail-open filter holding body bytes when its VM fails under it (another plugin
/// of the same VM traps on a later chunk) passes what it held on first: the upstream
/// gets the whole body in order (the held bytes used to be dropped).
#[test]
fn bytes_held_by_a_filter_whose_vm_fails_under_it_go_on_in_order() {
    let mut bed = TestBed::new()
        .filter(
            wasm("conformance_filter"),
            r#"{"upstream": "one", "trap_on_body_chunk": 2}"#,
        )
        .named("trapper")
        .vm_id("shared")
        .failure_policy(FailurePolicy::FailOpen)
        .filter(wasm("conformance_filter"), r#"{"upstream": "one"}"#)
        .named("holder")
        .vm_id("shared")
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .expect("starts");
    assert!(bed.filter(0).shares_vm_with(bed.filter(1)));
    // The holder keeps "ab"; the trapper fails on "cd", taking the holder's VM down.
    let res = bed.send(
        Request::new("POST", "/case/body-until-end")
            .in_chunks(vec![b"ab".to_vec(), b"cd".to_vec()]),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let up = res.upstream.as_ref().expect("the request went upstream");
    assert_eq!(up.body, b"abcd");
}

#[test]
fn plugins_sharing_a_vm_fail_with_it_and_come_back_with_it() {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), r#"{"upstream": "one"}"#)
        .named("a")
        .vm_id("shared")
        .failure_policy(FailurePolicy::Reload)
        .filter(wasm("conformance_filter"), r#"{"upstream": "two"}"#)
        .named("b")
        .vm_id("shared")
        .failure_policy(FailurePolicy::Reload)
        .build()
        .expect("starts");
    assert!(bed.filter(0).shares_vm_with(bed.filter(1)));
    assert_eq!(bed.filter(1).root_context_id(), 2);
    let res = bed.send(Request::get("/case/vm-counter"));
    assert_eq!(res.header("x-vm-counter-a"), Some("1"));
    assert_eq!(res.header("x-vm-counter-b"), Some("2"));
    // `a` traps: the VM goes, and `b` with it; the next request starts a fresh VM
    // with both root contexts (and fresh memory: the count starts again).
    let res = bed.send(Request::get("/case/trap"));
    assert_eq!(res.status, 503);
    assert!(matches!(
        bed.filter(1).health(),
        portcullis_engine::Health::Failed(_)
    ));
    let res = bed.send(Request::get("/case/vm-counter"));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-vm-counter-a"), Some("1"));
    assert_eq!(res.header("x-vm-counter-b"), Some("2"));
    assert_eq!(bed.filter(1).reloads(), 1);
    // A plugin of another policy is not in that VM.
    let bed = TestBed::new()
        .filter(wasm("conformance_filter"), "")
        .vm_id("shared")
        .filter(wasm("conformance_filter"), "")
        .vm_id("shared")
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .expect("starts");
    assert!(!bed.filter(0).shares_vm_with(bed.filter(1)));
}

#[test]
fn a_filter_failing_while_it_holds_the_headers_leaves_the_request_as_it_came_or_fails_it() {
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
        let mut bed = TestBed::new()
            .filter(wasm("conformance_filter"), r#"{"upstream": "echo"}"#)
            .named("hostile")
            .failure_policy(policy)
            .allow_on_headers_stop_iteration()
            .build()
            .expect("starts");
        // The filter adds a header, holds the headers, then changes the body and panics
        // in its body callback.
        let res = bed.send(Request::post("/case/hold-headers-then-trap", "the body"));
        assert!(
            bed.logged("panic after changing"),
            "{policy:?}: the filter did fail"
        );
        if policy == FailurePolicy::FailClosed {
            assert_eq!(res.status, 503, "{}", res.text());
            assert!(res.upstream.is_none());
            continue;
        }
        assert_eq!(res.status, 200, "{}", res.text());
        let up = res.upstream.as_ref().expect("the request went on");
        assert_eq!(up.body, b"the body");
        assert_eq!(up.headers.get_str("x-tampered"), None);
        assert_eq!(
            up.headers.get_str(":path"),
            Some("/case/hold-headers-then-trap")
        );
    }
}

#[test]
fn fail_open_keeps_the_body_and_the_response_a_failing_filter_changed() {
    for (case, check) in [
        ("tamper-body-then-trap", "body"),
        ("tamper-response-then-trap", "response"),
    ] {
        let mut bed = TestBed::new()
            .filter(wasm("conformance_filter"), r#"{"upstream": "echo"}"#)
            .named("hostile")
            .failure_policy(FailurePolicy::FailOpen)
            .cluster("echo", |_| Reply::status(200, &[], "ok"))
            .upstream(|req| {
                let mut h = portcullis_testbed::HeaderMap::new();
                h.add(":status", "200");
                h.add("x-upstream", "1");
                (200, h, req.body.clone())
            })
            .build()
            .expect("starts");
        let res = bed.send(Request::post(&format!("/case/{case}"), "the body"));
        assert!(
            bed.logged("panic after changing"),
            "{case}: the filter did fail"
        );
        assert_eq!(res.status, 200, "{case}: {}", res.text());
        match check {
            "body" => assert_eq!(
                res.upstream.as_ref().map(|u| u.body.clone()),
                Some(b"the body".to_vec()),
                "{case}"
            ),
            _ => {
                assert_eq!(res.header("x-upstream"), Some("1"), "{case}");
                assert_eq!(res.body, b"the body", "{case}");
            }
        }
    }
}

/// The issue's report: a failing `fail_open` filter placed before jwt-auth must not
/// let a request without a token through.
#[test]
fn a_fail_open_filter_failing_before_jwt_auth_does_not_bypass_it() {
    let key = jwt_mint::Key::ec256("k1");
    let auth = serde_json::json!({
        "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": jwt_mint::jwks(&[&key]), "algorithms": ["ES256"]}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    for case in ["trap", "tamper-then-trap"] {
        let mut bed = TestBed::new()
            .filter(wasm("conformance_filter"), r#"{"upstream": "echo"}"#)
            .named("hostile")
            .failure_policy(FailurePolicy::FailOpen)
            .filter(wasm("jwt_auth"), auth.to_string())
            .cluster("echo", |_| Reply::status(200, &[], "ok"))
            .build()
            .expect("starts");
        let res = bed.send(Request::get(&format!("/case/{case}")));
        assert!(
            bed.logged("conformance: panic"),
            "{case}: the filter did fail"
        );
        assert_eq!(res.status, 401, "{case}: {}", res.text());
        assert!(res.upstream.is_none(), "{case}");
    }
}

#[test]
fn out_of_bounds_pointers_and_lengths_are_invalid_memory_access() {
    let mut bed = bed(FailurePolicy::FailClosed);
    let res = bed.send(Request::get("/case/oob"));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.report("bad_key_ptr").as_deref(),
        Some("InvalidMemoryAccess")
    );
    assert_eq!(
        res.report("bad_key_len").as_deref(),
        Some("InvalidMemoryAccess")
    );
    assert_eq!(
        res.report("bad_return_ptr").as_deref(),
        Some("InvalidMemoryAccess")
    );
    assert_eq!(
        res.report("bad_log").as_deref(),
        Some("InvalidMemoryAccess")
    );
    assert_eq!(bed.send(Request::get("/plain")).status, 200);
}

#[test]
fn a_header_map_claiming_billions_of_pairs_is_read_as_empty_as_envoy_does() {
    let mut bed = bed(FailurePolicy::FailClosed);
    let res = bed.send(Request::get("/case/hostile-map"));
    assert_eq!(res.report("set_pairs").as_deref(), Some("Ok"));
    assert_eq!(res.report("headers_left").as_deref(), Some("0"));
    assert_eq!(res.report("http_call").as_deref(), Some("BadArgument"));
    assert_eq!(bed.send(Request::get("/plain")).status, 200);
}

#[test]
fn a_huge_header_map_is_carried_without_harm() {
    let mut bed = bed(FailurePolicy::FailClosed);
    let res = bed.send(Request::get("/case/huge-headers"));
    assert_eq!(res.status, 200);
    let up = res.upstream.expect("upstream");
    assert!(up.headers.len() > 2000);
    assert_eq!(
        up.headers.get_str("x-count-after"),
        Some(&*(up.headers.len() - 1).to_string())
    );
    assert_eq!(bed.send(Request::get("/plain")).status, 200);
}

#[test]
fn an_invalid_filter_status_is_a_broken_abi_reply() {
    let module = wat(&format!(
        r#"(export "proxy_abi_version_0_2_1" (func $abi)) (func $abi)
        {MINIMAL_PROLOGUE}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 7))"#
    ));
    let mut bed = TestBed::new()
        .filter_bytes(&module, "")
        .failure_policy(FailurePolicy::Reload)
        .build()
        .unwrap();
    let res = bed.send(Request::get("/"));
    assert_eq!(res.status, 503);
    assert!(bed.logged("returned 7, which is not a filter status"));
}

#[test]
fn an_allocator_returning_memory_outside_the_module_fails_the_request() {
    let module = wat(r#"
        (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
        (export "proxy_abi_version_0_2_1" (func $abi)) (func $abi)
        (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0x7ffffff0))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (drop (call $pairs (i32.const 0) (i32.const 16) (i32.const 20)))
          (i32.const 0))"#);
    let mut bed = TestBed::new().filter_bytes(&module, "").build().unwrap();
    assert_eq!(bed.send(Request::get("/")).status, 503);
    assert!(bed.logged("outside its memory"), "{:?}", bed.logs());
}

#[test]
fn an_abi_0_2_0_module_and_unknown_proxy_imports_still_load() {
    let module = wat(&format!(
        r#"(import "env" "proxy_continue_request" (func $cont (result i32)))
        (import "env" "proxy_from_the_future" (func $future (param i32) (result i32)))
        (export "proxy_abi_version_0_2_0" (func $abi)) (func $abi)
        {MINIMAL_PROLOGUE}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          ;; an unknown proxy_* import answers Unimplemented (12)
          (if (i32.ne (call $future (i32.const 1)) (i32.const 12)) (then unreachable))
          (i32.const 0))"#
    ));
    let mut bed = TestBed::new().filter_bytes(&module, "").build().unwrap();
    assert_eq!(bed.send(Request::get("/")).status, 200);
}

#[test]
fn an_import_no_proxy_host_provides_is_refused_by_name() {
    let module = wat(&format!(
        r#"(import "env" "open_a_socket" (func (param i32) (result i32)))
        (export "proxy_abi_version_0_2_1" (func $abi)) (func $abi)
        {MINIMAL_PROLOGUE}"#
    ));
    let err = TestBed::new()
        .filter_bytes(&module, "")
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("env.open_a_socket"), "{err}");
}

#[test]
fn a_module_without_the_abi_marker_is_refused() {
    let module = wat(MINIMAL_PROLOGUE);
    let err = TestBed::new()
        .filter_bytes(&module, "")
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("proxy_abi_version"), "{err}");
}

#[test]
fn three_modules_without_the_sdk_that_answer_at_once_pass_requests_untouched() {
    // The module `compare` measures the host's own cost with: it must really run
    // through every phase and leave the request and the response as they were.
    let module = portcullis_testbed::modules::bare_noop();
    let mut bed = TestBed::new()
        .filter_bytes(&module, "")
        .named("a")
        .filter_bytes(&module, "")
        .named("b")
        .filter_bytes(&module, "")
        .named("c")
        .build()
        .expect("three bare modules start");
    for _ in 0..3 {
        let res = bed.send(Request::post("/orders", "the body").header("x-tag", "t1"));
        assert_eq!(res.status, 200, "{}", res.text());
        let up = res.upstream.expect("the request reached the upstream");
        assert_eq!(up.body, b"the body");
        assert_eq!(up.headers.get_str("x-tag"), Some("t1"));
    }
}

#[test]
fn a_trap_while_configuring_is_a_start_error_not_a_crash() {
    let module = wat(
        r#"(export "proxy_abi_version_0_2_1" (func $abi)) (func $abi)
        (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
        (func (export "proxy_on_configure") (param i32 i32) (result i32) unreachable)"#,
    );
    let err = TestBed::new()
        .filter_bytes(&module, "")
        .named("boom")
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("boom") && err.contains("proxy_on_configure"),
        "{err}"
    );
}

// Host limits: what a filter may make the host hold outside its own memory. Each case
// asks for more than a limit allows; the call is refused with the ABI's status, the
// refusal is counted per filter and limit and logged (at most a line a second).

const MIB: usize = 1 << 20;

fn limited(limits: HostLimits) -> TestBed {
    TestBed::new()
        .host_limits(limits)
        .filter(
            wasm("conformance_filter"),
            r#"{"upstream": "echo", "blackhole": "blackhole", "grpc": "grpc"}"#,
        )
        .named("hostile")
        .cluster("echo", |_| Reply::status(200, &[], "ok"))
        .cluster("blackhole", |_| Reply::Never)
        .grpc_cluster("grpc", |_| Ok(GrpcCallResponse::default()))
        .build()
        .expect("starts")
}

/// The report of a `limit-*` case: (calls accepted, calls refused, first refusal).
fn tally(res: &portcullis_testbed::Response) -> (usize, usize, String) {
    let n = |k: &str| {
        res.report(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{k}` in {}", res.text()))
    };
    (
        n("ok"),
        n("refused"),
        res.report("status").unwrap_or_default(),
    )
}

#[test]
fn a_shared_data_value_past_value_bytes_is_refused_as_a_failed_cas() {
    let mut bed = limited(HostLimits::default());
    let res = bed.send(Request::get(&format!(
        "/case/limit-shared?n=3&size={}",
        4 * MIB + 1
    )));
    assert_eq!(tally(&res), (0, 3, "CasMismatch".into()), "{}", res.text());
    assert!(bed.shared_keys().is_empty(), "nothing was stored");
    assert_eq!(bed.refusals(Limit::ValueBytes), 3);
    assert_eq!(
        bed.count_logged("host limit value_bytes (4194304) reached"),
        1,
        "one line for three refusals in the same second: {:?}",
        bed.logs()
    );
    // At the limit is allowed.
    let res = bed.send(Request::get(&format!(
        "/case/limit-shared?size={}",
        4 * MIB
    )));
    assert_eq!(tally(&res), (1, 0, "none".into()));
    assert_eq!(bed.send(Request::get("/plain")).status, 200);
}

#[test]
fn a_shared_data_key_past_key_bytes_is_refused() {
    let mut bed = limited(HostLimits::default());
    let res = bed.send(Request::get("/case/limit-shared?key_size=4097"));
    assert_eq!(tally(&res), (0, 1, "CasMismatch".into()));
    assert_eq!(bed.refusals(Limit::KeyBytes), 1);
    assert!(bed.logged("host limit key_bytes (4096) reached"));
    let res = bed.send(Request::get("/case/limit-shared?key_size=4096"));
    assert_eq!(tally(&res), (1, 0, "none".into()));
}

/// The issue's filter: 20 values of 1 MiB per request. A vm_id's shared data stops
/// at `shared_data_bytes`; values already stored can still be overwritten.
#[test]
fn shared_data_of_a_vm_id_stops_at_shared_data_bytes_and_says_so_once_a_second() {
    let mut bed = limited(HostLimits {
        shared_data_bytes: 8 * MIB,
        ..HostLimits::default()
    });
    let mut stored = 0;
    for _ in 0..3 {
        let res = bed.send(Request::get(&format!("/case/limit-shared?n=20&size={MIB}")));
        stored += tally(&res).0;
    }
    // Seven values and their keys fit in 8 MiB; the eighth would not.
    assert_eq!(stored, 7);
    assert_eq!(bed.shared_keys().len(), 7);
    assert_eq!(bed.refusals(Limit::SharedDataBytes), 53);
    assert_eq!(bed.count_logged("host limit shared_data_bytes"), 1);
    bed.advance(Duration::from_secs(1));
    bed.send(Request::get(&format!("/case/limit-shared?size={MIB}")));
    assert_eq!(bed.count_logged("host limit shared_data_bytes"), 2);
    assert!(
        bed.logged("52 more refused since the last line"),
        "{:?}",
        bed.logs()
    );
    // A value written over with one of the same size needs no more room.
    let full = bed.send(Request::get(&format!(
        "/case/limit-shared?n=7&size={MIB}&tag=t"
    )));
    assert_eq!(tally(&full).0, 0, "the table is full");
    let keys = bed.shared_keys();
    let key = String::from_utf8_lossy(&keys[0]).into_owned();
    let tag = key
        .strip_prefix("flood-")
        .and_then(|k| k.rsplit_once('-'))
        .map(|(t, _)| t.to_owned())
        .expect("keys are flood-<tag>-<i>");
    let res = bed.send(Request::get(&format!(
        "/case/limit-shared?n=7&size={MIB}&tag={tag}"
    )));
    assert_eq!(tally(&res).0, 7, "{}", res.text());
}

#[test]
fn shared_data_keys_of_a_vm_id_stop_at_shared_data_keys() {
    let mut bed = limited(HostLimits {
        shared_data_keys: 50,
        ..HostLimits::default()
    });
    let res = bed.send(Request::get("/case/limit-shared?n=60&size=1"));
    assert_eq!(tally(&res), (50, 10, "CasMismatch".into()));
    assert_eq!(bed.refusals(Limit::SharedDataKeys), 10);
    assert!(bed.logged("host limit shared_data_keys (50) reached"));
}

#[test]
fn properties_of_a_request_stop_at_property_bytes() {
    let mut bed = limited(HostLimits {
        property_bytes: 64 * 1024,
        ..HostLimits::default()
    });
    // Six paths of 7 bytes and values of 10 000 (and 64 bytes each besides) fit in
    // 64 KiB; the seventh does not.
    for _ in 0..2 {
        let res = bed.send(Request::get("/case/limit-property?n=10&size=10000"));
        assert_eq!(
            tally(&res),
            (6, 4, "InternalFailure".into()),
            "{}",
            res.text()
        );
    }
    assert_eq!(bed.refusals(Limit::PropertyBytes), 8);
    assert!(bed.logged("host limit property_bytes (65536) reached"));
    let res = bed.send(Request::get("/case/limit-property?path_size=4097"));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::KeyBytes), 1);
    // Each property counts 64 bytes besides its path and value, so empty ones are not
    // free: paths of 7 to 10 bytes, about 890 fit in 64 KiB (all 5000 did before).
    let res = bed.send(Request::get("/case/limit-property?n=5000&size=0"));
    let (ok, refused, status) = tally(&res);
    assert!((850..=900).contains(&ok), "{ok} set");
    assert_eq!((refused, status.as_str()), (5000 - ok, "InternalFailure"));
}

#[test]
fn a_header_map_a_filter_grows_stops_at_header_bytes() {
    let mut bed = limited(HostLimits {
        header_bytes: 64 * 1024,
        ..HostLimits::default()
    });
    // Names of 11 bytes with values of 10 000, each entry counting 32 bytes more: six
    // fit in 64 KiB beside the request's own headers, the seventh does not.
    for _ in 0..2 {
        let res = bed.send(Request::get("/case/limit-headers?n=10&size=10000"));
        assert_eq!(
            tally(&res),
            (6, 4, "InternalFailure".into()),
            "{}",
            res.text()
        );
        let bytes: usize = res.report("map_bytes").unwrap().parse().unwrap();
        assert!((60_066..=64 * 1024).contains(&bytes), "{bytes}");
    }
    assert_eq!(bed.refusals(Limit::HeaderBytes), 8);
    assert!(bed.logged("host limit header_bytes (65536) reached"));
    // One name replaced twenty times holds one value: nothing is refused, though what
    // was written adds up to three times the limit.
    let res = bed.send(Request::get(
        "/case/limit-headers?op=replace&n=20&size=10000",
    ));
    assert_eq!(tally(&res), (20, 0, "none".into()), "{}", res.text());
    // A whole map is refused past the limit, and taken within it (the request's own
    // headers replaced).
    let res = bed.send(Request::get("/case/limit-headers?op=pairs&n=7&size=10000"));
    assert_eq!(
        tally(&res),
        (0, 1, "InternalFailure".into()),
        "{}",
        res.text()
    );
    let res = bed.send(Request::get("/case/limit-headers?op=pairs&n=6&size=10000"));
    assert_eq!(tally(&res), (1, 0, "none".into()), "{}", res.text());
    assert_eq!(res.report("map_bytes").as_deref(), Some("60066"));
    assert_eq!(bed.refusals(Limit::HeaderBytes), 9);
}

/// A filter that sets `source.address` or `request.path` as properties cannot make
/// itself or a later filter read them in place of the real ones (a forged client
/// address would dodge tier-limiter's per-address limits).
#[test]
fn properties_cannot_forge_built_in_attributes() {
    let mut bed = limited(HostLimits::default());
    let res = bed.send(Request::get("/case/spoof-attributes"));
    assert_eq!(res.report("source").as_deref(), Some("127.0.0.1:40000"));
    assert_eq!(
        res.report("request").as_deref(),
        Some("/case/spoof-attributes")
    );
}

/// Entries with an empty name and value count against `header_bytes` too: without
/// that, a filter could add millions of them for free.
#[test]
fn empty_header_entries_count_against_header_bytes() {
    let mut bed = limited(HostLimits {
        header_bytes: 64 * 1024,
        ..HostLimits::default()
    });
    let res = bed.send(Request::get("/case/limit-headers?op=empty&n=5000"));
    let (ok, refused, status) = tally(&res);
    // 2048 entries of 32 bytes, less the request's own headers.
    assert!((2000..2048).contains(&ok), "{ok} added");
    assert_eq!((refused, status.as_str()), (5000 - ok, "InternalFailure"));
    let entries: usize = res.report("map_entries").unwrap().parse().unwrap();
    assert!(entries < 2048, "{entries} entries");
}

/// A map of a million entries, half pseudo-headers and half fields, set at once, then
/// the pseudo-header replaced: each is one pass over the map. Adding the pairs one by
/// one looked the side list up for each field (2.5 * 10^11 steps), and the replacement
/// removed the other 499 999 `:x` one at a time, moving the list each time: either
/// held the worker for hours inside one host call, where no deadline reaches.
#[test]
fn a_crowded_header_map_is_built_and_replaced_in_linear_time() {
    // Room for the filter's own work on a busy machine: the deadline does not bound
    // host calls, which this measures.
    let mut bed = TestBed::new()
        .host_limits(HostLimits {
            header_bytes: 64 * MIB,
            ..HostLimits::default()
        })
        .filter(wasm("conformance_filter"), "{}")
        .limits(VmLimits {
            memory_bytes: 512 * MIB,
            callback_timeout: Duration::from_secs(60),
            ..VmLimits::default()
        })
        .build()
        .expect("starts");
    let started = std::time::Instant::now();
    let res = bed.send(Request::get("/case/limit-headers?op=crowd&n=500000"));
    assert_eq!(tally(&res), (2, 0, "none".into()), "{}", res.text());
    // One `:x` left, the 500 000 fields, and the request's own headers.
    let entries: usize = res.report("map_entries").unwrap().parse().unwrap();
    assert_eq!(entries, 500_001);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_local_reply_past_the_body_or_header_limits_is_refused() {
    let mut bed = limited(HostLimits {
        body_bytes: MIB,
        header_bytes: 64 * 1024,
        ..HostLimits::default()
    });
    // At the limits, the reply goes out as the filter made it (its long details cut).
    let res = bed.send(Request::get(&format!(
        "/case/limit-reply?size={MIB}&n=6&header_size=10000&details=100000"
    )));
    assert_eq!(res.status, 299, "{}", res.text());
    assert_eq!(res.body.len(), MIB);
    assert_eq!(res.header("x-reply-005").map(str::len), Some(10_000));
    // A byte more of body, or a header more: refused before anything is copied; the
    // filter's report goes out instead.
    let res = bed.send(Request::get(&format!("/case/limit-reply?size={}", MIB + 1)));
    assert_eq!(res.status, 200);
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::BodyBytes), 1);
    let res = bed.send(Request::get("/case/limit-reply?n=7&header_size=10000"));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::HeaderBytes), 1);
    assert!(bed.logged("send_local_response with headers of 70147 bytes refused"));
}

#[test]
fn a_body_a_filter_grows_stops_at_the_body_limit() {
    let mut bed = limited(HostLimits {
        body_bytes: MIB,
        ..HostLimits::default()
    });
    let res = bed.send(Request::post(
        &format!("/case/limit-body?size={}", MIB - 2),
        "abc",
    ));
    assert_eq!(res.report("status").as_deref(), Some("InternalFailure"));
    assert_eq!(res.report("body_len").as_deref(), Some("3"));
    assert_eq!(bed.refusals(Limit::BodyBytes), 1);
    assert!(bed.logged("host limit body_bytes (1048576) reached"));
    let res = bed.send(Request::post(
        &format!("/case/limit-body?size={}", MIB - 3),
        "abc",
    ));
    assert_eq!(res.report("status").as_deref(), Some("Ok"));
    assert_eq!(res.report("body_len"), Some(MIB.to_string()));
}

#[test]
fn calls_in_flight_stop_at_calls_per_request() {
    let mut bed = limited(HostLimits::default());
    let res = bed.send(Request::get("/case/limit-calls?n=40"));
    assert_eq!(tally(&res), (32, 8, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::CallsPerRequest), 8);
    assert!(bed.logged("host limit calls_per_request (32) reached"));
    let res = bed.send(Request::get("/case/limit-grpc?n=40"));
    assert_eq!(tally(&res), (32, 8, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::CallsPerRequest), 16);
}

#[test]
fn calls_in_flight_stop_at_calls_per_vm_and_answered_calls_free_their_place() {
    let mut bed = limited(HostLimits {
        calls_per_request: 4,
        calls_per_vm: 10,
        ..HostLimits::default()
    });
    // Calls without a timeout to a service that never answers stay in flight.
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let res = bed.send(Request::get(
            "/case/limit-calls?n=4&cluster=blackhole&timeout=0",
        ));
        accepted.push(tally(&res).0);
    }
    assert_eq!(accepted, [4, 4, 2]);
    assert_eq!(bed.refusals(Limit::CallsPerVm), 2);
    assert!(bed.logged("host limit calls_per_vm (10) reached"));

    // Calls that are answered give their place back: a filter making one call per
    // request never meets the limit.
    let mut bed = limited(HostLimits {
        calls_per_request: 4,
        calls_per_vm: 10,
        ..HostLimits::default()
    });
    for i in 0..50 {
        let res = bed.send(Request::get("/case/http-call-resume"));
        assert_eq!(
            res.upstream_header("x-call-status").as_deref(),
            Some("200"),
            "{i}"
        );
        let res = bed.send(Request::get("/case/limit-grpc?n=1"));
        assert_eq!(tally(&res).0, 1, "{i}");
        bed.poll();
    }
    assert_eq!(bed.refusals(Limit::CallsPerVm), 0);
}

#[test]
fn a_call_past_call_bytes_is_refused() {
    let mut bed = limited(HostLimits::default());
    let res = bed.send(Request::get(&format!("/case/limit-calls?size={}", MIB + 1)));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    let res = bed.send(Request::get(&format!("/case/limit-grpc?size={}", MIB + 1)));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::CallBytes), 2);
    assert!(bed.logged("host limit call_bytes (1048576) reached"));
    assert!(bed.calls().is_empty() && bed.grpc_calls().is_empty());
    let res = bed.send(Request::get(&format!("/case/limit-calls?size={}", MIB / 2)));
    assert_eq!(tally(&res), (1, 0, "none".into()));
}

#[test]
fn queued_bytes_of_a_vm_id_stop_at_queue_bytes() {
    let mut bed = limited(HostLimits {
        queue_bytes: 4 * MIB,
        value_bytes: MIB,
        ..HostLimits::default()
    });
    let res = bed.send(Request::get(&format!("/case/limit-queue?n=6&size={MIB}")));
    assert_eq!(res.report("register").as_deref(), Some("Ok"));
    assert_eq!(tally(&res), (4, 2, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::QueueBytes), 2);
    assert!(bed.logged("host limit queue_bytes (4194304) reached"));
    // Another queue of the same vm_id shares the budget.
    let res = bed.send(Request::get("/case/limit-queue?n=1&size=1&name=other"));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    let res = bed.send(Request::get(&format!(
        "/case/limit-queue?n=1&size={}&name=big",
        MIB + 1
    )));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::ValueBytes), 1);
}

#[test]
fn a_full_queue_drops_its_oldest_item_and_says_so() {
    let mut bed = limited(HostLimits {
        queue_items: 5,
        ..HostLimits::default()
    });
    let res = bed.send(Request::get("/case/limit-queue?n=8&size=10"));
    assert_eq!(tally(&res), (8, 0, "none".into()));
    assert_eq!(bed.refusals(Limit::QueueItems), 3);
    assert!(bed.logged("host limit queue_items (5) reached"));
}

#[test]
fn queues_of_a_vm_id_stop_at_queues() {
    let mut bed = limited(HostLimits {
        queues: 3,
        ..HostLimits::default()
    });
    // The filter registered its own queue at start: two more fit.
    let res = bed.send(Request::get("/case/limit-queues?n=5"));
    assert_eq!(tally(&res), (2, 3, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::Queues), 3);
    assert!(bed.logged("host limit queues (3) reached"));
    // Registering a queue that exists needs no room.
    let res = bed.send(Request::get("/case/limit-queue?n=0&name=conformance"));
    assert_eq!(res.report("register").as_deref(), Some("Ok"));
    let res = bed.send(Request::get("/case/limit-queue?n=0&name_size=4097"));
    assert_eq!(res.report("register").as_deref(), Some("InternalFailure"));
    assert_eq!(bed.refusals(Limit::KeyBytes), 1);
}

#[test]
fn metric_names_of_a_vm_id_stop_at_metrics() {
    let mut bed = limited(HostLimits {
        metrics: 20,
        ..HostLimits::default()
    });
    let res = bed.send(Request::get("/case/limit-metrics?n=30&tag=a"));
    assert_eq!(tally(&res), (20, 10, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::Metrics), 10);
    assert!(bed.logged("host limit metrics (20) reached"));
    // Names it has are defined again freely.
    let res = bed.send(Request::get("/case/limit-metrics?n=20&tag=a"));
    assert_eq!(tally(&res), (20, 0, "none".into()));
    let res = bed.send(Request::get("/case/limit-metrics?name_size=1025"));
    assert_eq!(tally(&res), (0, 1, "InternalFailure".into()));
    assert_eq!(bed.refusals(Limit::MetricNameBytes), 1);
}

#[test]
fn a_table_grown_past_table_elements_is_refused() {
    let module = wat(r#"
        (export "proxy_abi_version_0_2_1" (func $abi)) (func $abi)
        (memory (export "memory") 1)
        (table 8 funcref)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
        (func (export "proxy_on_context_create") (param i32 i32))
        ;; Grows the table by a million elements; a refused grow answers -1 and the
        ;; request goes on, a granted one traps.
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (if (i32.ne (table.grow (ref.null func) (i32.const 1000000)) (i32.const -1))
            (then unreachable))
          (i32.const 0))"#);
    let mut bed = TestBed::new()
        .filter_bytes(&module, "")
        .named("tables")
        .build()
        .expect("starts");
    assert_eq!(bed.send(Request::get("/")).status, 200);
    assert_eq!(bed.refusals(Limit::TableElements), 1);
    assert!(
        bed.logged("host limit table_elements (10000) reached"),
        "{:?}",
        bed.logs()
    );
    // A module that declares a table past the limit does not start.
    let module = wat(r#"
        (export "proxy_abi_version_0_2_1" (func $abi)) (func $abi)
        (memory (export "memory") 1)
        (table 2000000 funcref)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))"#);
    let err = TestBed::new()
        .filter_bytes(&module, "")
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("could not start"), "{err}");
}

#[test]
fn a_memory_bomb_is_counted_at_the_memory_limit() {
    let bed = fails_then_recovers("memory-bomb");
    assert!(bed.refusals(Limit::Memory) >= 1);
    assert!(bed.logged("host limit memory reached"), "{:?}", bed.logs());
}

/// A failed VM's calls still in flight are cancelled with it (`reload`), and the
/// queues it registered no longer name it: nothing of the dead VM stays behind, even
/// a call without a timeout that would never end.
#[test]
fn a_failed_vm_leaves_no_call_or_queue_owner_behind() {
    let mut bed = TestBed::new()
        .filter(
            wasm("conformance_filter"),
            r#"{"upstream": "echo", "blackhole": "blackhole"}"#,
        )
        .named("hostile")
        .failure_policy(FailurePolicy::Reload)
        .cluster("echo", |_| Reply::status(200, &[], "ok"))
        .cluster("blackhole", |_| Reply::Never)
        .build()
        .expect("starts");
    let res = bed.send(Request::get(
        "/case/limit-calls?n=5&cluster=blackhole&timeout=0",
    ));
    assert_eq!(tally(&res).0, 5);
    let res = bed.send(Request::get("/case/limit-queue?n=0&name=flood"));
    assert_eq!(res.report("register").as_deref(), Some("Ok"));
    bed.poll();
    assert_eq!(bed.filter(0).pending_calls(), 5);
    assert!(bed.queue_has_owner("flood"));
    assert_eq!(bed.send(Request::get("/case/trap")).status, 503);
    bed.poll();
    assert_eq!(bed.filter(0).pending_calls(), 0);
    assert!(
        !bed.queue_has_owner("flood"),
        "the queue stays, its dead owner goes"
    );
    assert_eq!(bed.send(Request::get("/plain")).status, 200);
    assert_eq!(bed.filter(0).reloads(), 1);
}

/// Cancelling calls that were never made is `NotFound`, as the ABI says for an unknown
/// call: the host keeps no note of such tokens (a filter cancelling every number it can
/// think of must not grow the host's state).
#[test]
fn cancelling_a_call_that_was_never_made_is_not_found() {
    let mut bed = limited(HostLimits::default());
    let res = bed.send(Request::get("/case/limit-grpc-cancel?n=1000"));
    assert_eq!(tally(&res), (0, 1000, "NotFound".into()), "{}", res.text());
    assert_eq!(bed.send(Request::get("/plain")).status, 200);
}

/// A log line is cut at `log_bytes`, before it is copied whole: through `proxy_log`,
/// and through WASI `fd_write`, where a few bytes of iovecs pointing again and again
/// at one buffer would otherwise make the host assemble a line of any size.
#[test]
fn a_log_line_past_log_bytes_is_cut() {
    let mut bed = limited(HostLimits::default());
    let longest = |bed: &TestBed| {
        bed.logs()
            .iter()
            .filter(|r| r.message.starts_with("lll"))
            .map(|r| r.message.len())
            .max()
            .unwrap_or(0)
    };
    // 1000 iovecs of 64 KiB: a 64 MiB line from 8 KB of arguments.
    let res = bed.send(Request::get("/case/limit-log?iovs=1000&size=65536"));
    assert_eq!(res.report("status").as_deref(), Some("0"), "{}", res.text());
    let cut = longest(&bed);
    assert!((64 * 1024..64 * 1024 + 100).contains(&cut), "{cut} bytes");
    let res = bed.send(Request::get("/case/limit-log?size=200000"));
    assert_eq!(res.report("status").as_deref(), Some("0"));
    assert_eq!(longest(&bed), cut);
    assert_eq!(bed.refusals(Limit::LogBytes), 2);
    assert!(bed.logged("host limit log_bytes (65536) reached"));
    // At the limit a line is whole.
    bed.send(Request::get("/case/limit-log?size=65536"));
    assert!(bed.logs().iter().any(|r| r.message.len() == 65536));
    assert_eq!(bed.refusals(Limit::LogBytes), 2);
}
