//! Hostile filters: each case asserts what the client gets and that the host keeps
//! serving the next request.

use std::time::Duration;

use portcullis_testbed::{FailurePolicy, Reply, Request, TestBed, VmLimits, wasm};

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
        .filter(wasm("header_forwarder"), r#"{"forward_authorization": true}"#)
        .cluster("echo", |_| Reply::status(200, &[], "ok"))
        .upstream(|req| {
            let mut h = portcullis_testbed::HeaderMap::new();
            h.add(":status", "200");
            h.add("x-upstream", "1");
            (200, h, req.body.clone())
        })
        .build()
        .expect("starts");
    let res = bed.send(
        Request::post("/case/tamper-then-trap", "the body").header("x-keep", "kept"),
    );
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
        assert!(bed.logged("panic after changing"), "{case}: the filter did fail");
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
        assert!(bed.logged("conformance: panic"), "{case}: the filter did fail");
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

const MINIMAL_PROLOGUE: &str = r#"
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
"#;

fn wat(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {body})")).expect("valid WAT")
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
