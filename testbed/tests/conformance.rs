//! Host conformance: the conformance filter exercises each host call in our engine,
//! and the answers must be Envoy's (the same cases run in real Envoy in
//! `envoy/tests/parity.rs`).

use std::time::Duration;

use portcullis_testbed::{CallFailure, MetricValue, Reply, Request, TestBed, wasm};

fn config() -> String {
    r#"{"upstream": "echo", "blackhole": "blackhole", "refused": "refused"}"#.to_owned()
}

fn bed() -> TestBed {
    TestBed::new()
        .filter(wasm("conformance_filter"), config())
        .named("conformance")
        .cluster("echo", |_| {
            Reply::status(200, &[("x-from", "echo")], "hello")
        })
        .cluster("blackhole", |_| Reply::Never)
        .cluster("refused", |_| {
            Reply::Fail(CallFailure::ConnectFailed("connection refused".into()))
        })
        .build()
        .expect("conformance filter starts")
}

#[test]
fn header_calls_change_what_the_upstream_receives() {
    let mut bed = bed();
    let res = bed.send(
        Request::get("/case/headers")
            .header("x-replace", "old")
            .header("x-remove", "gone")
            .header("x-multi", "first")
            .header("x-multi", "second"),
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("x-added").as_deref(), Some("1"));
    assert_eq!(res.upstream_header("x-replace").as_deref(), Some("new"));
    assert_eq!(res.upstream_header("x-remove"), None);
    assert_eq!(
        res.upstream_header("x-seen-multi").as_deref(),
        Some("first"),
        "a get returns the first value"
    );
    assert_eq!(
        res.upstream_header("x-missing-is-none").as_deref(),
        Some("true")
    );
}

#[test]
fn set_header_map_pairs_replaces_the_whole_map() {
    let mut bed = bed();
    let res = bed.send(
        Request::get("/case/pairs")
            .header("x-drop-me", "1")
            .header("x-keep", "2"),
    );
    let up = res.upstream.expect("reached upstream");
    assert_eq!(up.headers.get_str("x-drop-me"), None);
    assert_eq!(up.headers.get_str("x-keep"), Some("2"));
    assert_eq!(up.headers.get_str("x-from-pairs"), Some("yes"));
    assert_eq!(up.headers.get_str(":path"), Some("/case/pairs"));
}

#[test]
fn local_reply_passes_through_the_senders_response_callback() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/local-reply"));
    assert_eq!(res.status, 403);
    assert_eq!(res.text(), "denied");
    assert_eq!(res.header("x-reason"), Some("case"));
    assert_eq!(res.header("x-saw-response"), Some("local-reply"));
    assert!(res.upstream.is_none());
}

#[test]
fn properties_are_envoys_attributes() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/props?a=1&b=2").header("x-request-id", "rid-1"));
    let r = |k: &str| {
        res.report(k)
            .unwrap_or_else(|| panic!("no {k} in {}", res.text()))
    };
    assert_eq!(r("request.path"), "/case/props?a=1&b=2");
    assert_eq!(r("request.url_path"), "/case/props");
    assert_eq!(r("request.query"), "a=1&b=2");
    assert_eq!(r("request.host"), "gateway.test");
    assert_eq!(r("request.method"), "GET");
    assert_eq!(r("request.scheme"), "http");
    assert_eq!(r("request.protocol"), "HTTP/1.1");
    assert_eq!(r("request.id.present"), "true");
    assert_eq!(r("request.time.len"), "8");
    assert_eq!(r("source.address.ip"), "127.0.0.1");
    assert_eq!(r("destination.port.present"), "true");
    assert_eq!(r("plugin_name"), "conformance");
    assert_eq!(r("plugin_root_id"), "conformance");
    assert_eq!(r("plugin_vm_id"), "conformance");
    assert_eq!(r("unknown"), "<none>");
}

#[test]
fn shared_data_compare_and_swap() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/shared-cas"));
    assert_eq!(res.report("missing_is_none").as_deref(), Some("true"));
    assert_eq!(res.report("first").as_deref(), Some("v1"));
    assert_eq!(res.report("wrong_cas").as_deref(), Some("Err(CasMismatch)"));
    assert_eq!(res.report("right_cas").as_deref(), Some("Ok(())"));
    assert_eq!(
        res.report("stale_cas").as_deref(),
        Some("Err(CasMismatch)"),
        "a used CAS is stale"
    );
    assert_eq!(res.report("now").as_deref(), Some("v3"));
}

#[test]
fn http_call_to_an_unknown_cluster_or_without_path_is_bad_argument() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/http-call-unknown-cluster"));
    assert_eq!(res.report("result").as_deref(), Some("Err(BadArgument)"));
    let res = bed.send(Request::get("/case/http-call-missing-path"));
    assert_eq!(res.report("result").as_deref(), Some("Err(BadArgument)"));
    assert!(bed.calls().is_empty(), "no call was sent");
}

#[test]
fn http_call_answer_reaches_the_calling_context() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/http-call"));
    assert_eq!(res.report("status").as_deref(), Some("200"));
    assert_eq!(res.report("body_nonempty").as_deref(), Some("true"));
    let calls = bed.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "echo");
    assert_eq!(calls[0].1.headers.get_str(":path"), Some("/from-call"));
}

#[test]
fn paused_request_resumes_with_headers_added_in_the_callback() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/http-call-resume"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("x-call-status").as_deref(), Some("200"));
}

#[test]
fn http_call_timeout_is_a_504_response() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/http-call-timeout"));
    assert_eq!(res.report("status").as_deref(), Some("504"));
    assert_eq!(res.report("headers").as_deref(), Some("true"));
}

#[test]
fn http_call_refused_connection_is_a_503_response() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/http-call-refused"));
    assert_eq!(res.report("status").as_deref(), Some("503"));
}

#[test]
fn request_headers_are_refused_during_the_response() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/request-headers-in-response"));
    assert_eq!(res.header("x-request-header-status"), Some("BadArgument"));
}

#[test]
fn response_phase_sees_the_status_and_can_remove_headers() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/response-phase"));
    assert_eq!(res.header("x-status-seen"), Some("200"));
    assert_eq!(res.header("server"), None);
}

#[test]
fn grpc_call_to_an_unknown_cluster_is_parse_failure() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/grpc-unknown-cluster"));
    assert_eq!(res.report("status").as_deref(), Some("ParseFailure"));
}

#[test]
fn metrics_follow_envoy_semantics_and_are_readable_by_the_embedder() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/metrics"));
    assert_eq!(
        res.report("same_id").as_deref(),
        Some("false"),
        "every definition gets its own id, as in Envoy"
    );
    assert_eq!(res.report("counter_positive").as_deref(), Some("true"));
    assert_eq!(res.report("gauge").as_deref(), Some("40"));
    assert_eq!(
        res.report("histogram_get").as_deref(),
        Some("Some(BadArgument)")
    );
    assert_eq!(
        bed.metric("conformance_requests"),
        Some(MetricValue::Counter(3))
    );
    assert_eq!(bed.metric("conformance_hist").map(|m| m.count()), Some(1));
}

#[test]
fn body_is_buffered_and_replaced() {
    let mut bed = bed();
    let res = bed.send(Request::post("/case/body", "hello body"));
    assert_eq!(res.upstream.expect("upstream").body, b"HELLO BODY");
}

#[test]
fn logs_and_stdout_reach_the_log_sink() {
    let mut bed = bed();
    bed.send(Request::get("/case/log"));
    assert!(bed.logged("hello from the log case"));
    assert!(bed.logged("hello from stdout"));
}

#[test]
fn wasi_clock_follows_the_virtual_clock_and_ticks_fire_on_it() {
    let mut bed = TestBed::new()
        .filter(
            wasm("conformance_filter"),
            r#"{"upstream":"echo","tick_ms":100}"#,
        )
        .cluster("echo", |_| Reply::status(200, &[], ""))
        .build()
        .unwrap();
    let res = bed.send(Request::get("/case/time"));
    assert_eq!(res.report("after_2020").as_deref(), Some("true"));
    assert_eq!(bed.shared_data("ticks"), None);
    bed.advance(Duration::from_millis(1000));
    assert_eq!(
        bed.shared_data("ticks").as_deref(),
        Some(&b"10"[..]),
        "one tick per 100 ms of virtual time"
    );
}

/// A filter that puts an item back in its queue from `on_queue_ready` gets one call
/// per poll: the host delivers the notifications there were when it began, and the
/// rest at its next poll. It delivered until the channel ran dry, which it never did:
/// the worker hung.
#[test]
fn a_queue_refilled_from_its_own_callback_does_not_hold_the_worker() {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), r#"{"requeue": true}"#)
        .named("conformance")
        .build()
        .expect("starts");
    let res = bed.send(Request::get("/case/enqueue"));
    assert_eq!(res.report("enqueue").as_deref(), Some("Some(Ok(()))"));
    let calls = |bed: &mut TestBed| {
        bed.send(Request::get("/case/shared-get?key=queue-ready-calls"))
            .text()
    };
    for n in 1..=3 {
        bed.poll();
        assert_eq!(calls(&mut bed), n.to_string());
    }
}

#[test]
fn shared_queue_notifies_its_registrant() {
    let mut bed = bed();
    let res = bed.send(Request::get("/case/enqueue"));
    assert_eq!(res.report("resolved").as_deref(), Some("true"));
    assert_eq!(res.report("enqueue").as_deref(), Some("Some(Ok(()))"));
    bed.poll();
    let res = bed.send(Request::get("/case/queue-last"));
    assert_eq!(res.report("value").as_deref(), Some("item-1"));
}

#[test]
fn a_rejected_configuration_names_the_filter_and_carries_its_log() {
    let err = TestBed::new()
        .filter(wasm("conformance_filter"), r#"{"reject": true}"#)
        .named("picky")
        .build()
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("picky"), "{msg}");
    assert!(msg.contains("configuration says reject"), "{msg}");
}

/// A filter that logs in a loop while it starts: the host keeps only the last lines
/// for the error (it kept all 100 000, and printed them in one line).
#[test]
fn a_rejected_configuration_carries_only_its_last_log_lines() {
    let err = TestBed::new()
        .filter(
            wasm("conformance_filter"),
            r#"{"reject": true, "log_flood": 100000}"#,
        )
        .named("chatty")
        .build()
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.len() < 10_000, "{} bytes", msg.len());
    assert!(msg.contains("earlier lines not kept"), "{msg}");
    assert!(msg.contains("configuration says reject"), "{msg}");
    assert!(msg.contains("99999 fff"), "the last line is kept: {msg}");
}

#[test]
fn a_root_context_makes_grpc_calls_on_its_ticks_and_gets_the_answers() {
    let mut bed = TestBed::new()
        .filter(
            wasm("conformance_filter"),
            r#"{"grpc": "probe", "tick_ms": 100, "tick_grpc": true}"#,
        )
        .named("conformance")
        .grpc_cluster("probe", |req| {
            assert_eq!(
                (req.service.as_str(), req.method.as_str()),
                ("portcullis.test.Probe", "Ping")
            );
            let mut answer = portcullis_testbed::GrpcCallResponse::default();
            answer.message = [b"pong to ".as_slice(), &req.message].concat();
            Ok(answer)
        })
        .build()
        .expect("starts");
    assert_eq!(bed.shared_data("tick-grpc"), None, "no tick yet");
    bed.advance(Duration::from_millis(150));
    assert_eq!(bed.grpc_calls().len(), 1);
    assert_eq!(
        bed.shared_data("tick-grpc").as_deref(),
        Some(b"status=0 message=pong to ping".as_slice())
    );
}

/// A filter that pauses on the last chunk of the response body keeps the body in the
/// host until its call is answered; what it does to the body then is what the filter
/// before it (the next in response order) is given, and that filter may pause on it
/// again. Two filters each append their call's answer.
#[test]
fn a_response_body_waits_for_a_call_then_goes_through_the_rest_of_the_chain() {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), config())
        .named("outer")
        .filter(wasm("conformance_filter"), config())
        .named("inner")
        .cluster("echo", |_| Reply::status(200, &[], "answer"))
        .upstream(|_| {
            let mut h = portcullis_testbed::HeaderMap::new();
            h.add(":status", "200");
            (200, h, b"from-upstream".to_vec())
        })
        .build()
        .expect("the chain starts");
    let res = bed.send(Request::get("/case/response-body-wait-for-call"));
    assert_eq!(res.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        "from-upstream|call=200|call=200"
    );
}

/// A filter that holds the request body until its end gets the trailers instead of an
/// end of body; the bytes it held go upstream once its trailers callback continues
/// (they were lost before), then the trailers as it changed them.
#[test]
fn trailers_release_the_body_a_filter_held_for_its_end() {
    let mut bed = bed();
    let res = bed.send(
        Request::new("POST", "/case/body-until-end")
            .in_chunks(vec![b"ab".to_vec(), b"cd".to_vec()])
            .trailer("x-checksum", "1"),
    );
    assert_eq!(res.status, 200);
    let up = res.upstream.as_ref().expect("the request went upstream");
    assert_eq!(up.body, b"abcd");
    let trailers = up.trailers.as_ref().expect("trailers went upstream");
    assert_eq!(trailers.get_str("x-checksum"), Some("1"));
    assert_eq!(trailers.get_str("x-trailers-seen"), Some("1"));
    assert_eq!(
        trailers.get_str("x-held-body"),
        Some("abcd"),
        "the trailers callback reads the body the filter held"
    );
}

/// A filter failing open in its trailers callback leaves the trailers as they were
/// before it (they used to go upstream empty), and the request goes on.
#[test]
fn a_filter_failing_open_in_its_trailers_callback_leaves_them_as_they_came() {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), config())
        .named("conformance")
        .failure_policy(portcullis_testbed::FailurePolicy::FailOpen)
        .cluster("echo", |_| Reply::status(200, &[], "hello"))
        .build()
        .expect("conformance filter starts");
    let res = bed.send(
        Request::new("POST", "/case/trap-in-trailers")
            .in_chunks(vec![b"ab".to_vec()])
            .trailer("x-checksum", "1"),
    );
    assert_eq!(res.status, 200);
    let up = res.upstream.as_ref().expect("the request went upstream");
    assert_eq!(up.body, b"ab");
    let trailers = up.trailers.as_ref().expect("trailers went upstream");
    assert_eq!(trailers.get_str("x-checksum"), Some("1"));
}

/// While a filter holds the request headers for the body
/// (`allow_on_headers_stop_iteration`), trailers go to it as in Envoy: it may still
/// change the headers and read the body it held, and its continuing lets the headers,
/// the body and the trailers go on. (The engine once gave the trailers to the filters
/// after the holder before any headers, then ended the body without them.)
#[test]
fn trailers_while_a_filter_holds_the_headers_reach_it_and_let_the_headers_go() {
    let mut bed = TestBed::new()
        .filter(wasm("conformance_filter"), config())
        .named("conformance")
        .allow_on_headers_stop_iteration()
        .cluster("echo", |_| Reply::status(200, &[], "hello"))
        .build()
        .expect("conformance filter starts");
    let res = bed.send(
        Request::new("POST", "/case/headers-wait-for-body")
            .header("x-kept", "1")
            .in_chunks(vec![b"ab".to_vec(), b"cd".to_vec()])
            .trailer("x-t", "1"),
    );
    assert_eq!(res.status, 200);
    let up = res.upstream.as_ref().expect("the request went upstream");
    assert_eq!(up.headers.get_str("x-kept"), Some("1"));
    // The holder's trailers callback ran while it held the headers and the body.
    assert_eq!(up.headers.get_str("x-trailers-at-holder"), Some("1"));
    assert_eq!(up.headers.get_str("x-body-at-trailers"), Some("abcd"));
    assert_eq!(
        up.headers.get_str("x-body-seen"),
        None,
        "the body never ended"
    );
    assert_eq!(up.body, b"abcd");
    let trailers = up.trailers.as_ref().expect("the trailers went on");
    assert_eq!(trailers.get_str("x-t"), Some("1"));
}
