//! `tier-limiter` with the global policy: the filter asks a rate-limit service over
//! Envoy's protocol (scripted here; the real service comes with the rest of issue 6).

use std::cell::RefCell;
use std::rc::Rc;

use portcullis_rls::{Code, DescriptorStatus, Duration, RateLimitRequest, RateLimitResponse};
use portcullis_testbed::{GrpcCallResponse, GrpcStatus, MetricValue, Request, TestBed, wasm};
use prost::Message;
use serde_json::json;

fn config(failure_mode: &str) -> String {
    json!({
        "identify_by": ["header:x-api-key"],
        "tiers": {"free": {"second": 5, "hour": 1000}},
        "default_tier": "free",
        "policy": "global",
        "global": {"cluster": "ratelimit", "domain": "edge", "timeout_ms": 50, "failure_mode": failure_mode}
    })
    .to_string()
}

fn answer(code: Code, remaining: &[u32], reset_secs: i64) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code as i32,
        statuses: remaining
            .iter()
            .map(|r| DescriptorStatus {
                code: if *r == 0 {
                    Code::OverLimit as i32
                } else {
                    Code::Ok as i32
                },
                current_limit: None,
                limit_remaining: *r,
                duration_until_reset: Some(Duration {
                    seconds: reset_secs,
                    nanos: 0,
                }),
            })
            .collect(),
    }
    .encode_to_vec()
}

#[test]
fn the_service_is_asked_with_one_descriptor_per_window_and_its_answer_applies() {
    let seen: Rc<RefCell<Vec<RateLimitRequest>>> = Rc::default();
    let log = seen.clone();
    let over = Rc::new(std::cell::Cell::new(false));
    let flag = over.clone();
    let mut bed = TestBed::new()
        .filter(wasm("tier_limiter"), config("open"))
        .grpc_cluster("ratelimit", move |req| {
            assert_eq!(
                (req.service.as_str(), req.method.as_str()),
                (
                    "envoy.service.ratelimit.v3.RateLimitService",
                    "ShouldRateLimit"
                )
            );
            log.borrow_mut()
                .push(RateLimitRequest::decode(&req.message[..]).unwrap());
            let message = if flag.get() {
                answer(Code::OverLimit, &[0, 900], 2)
            } else {
                answer(Code::Ok, &[4, 999], 1)
            };
            Ok(GrpcCallResponse {
                message,
                ..GrpcCallResponse::default()
            })
        })
        .build()
        .unwrap();
    let ok = bed.send(Request::get("/").header("x-api-key", "k1"));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-remaining-second"), Some("4"));
    assert_eq!(ok.header("x-ratelimit-remaining-hour"), Some("999"));
    let req = seen.borrow()[0].clone();
    assert_eq!(req.domain, "edge");
    assert_eq!(req.hits_addend, 1);
    assert_eq!(req.descriptors.len(), 2);
    assert_eq!(req.descriptors[0].entries[1].value, "x-api-key:k1");
    assert_eq!(
        req.descriptors[0].limit.as_ref().unwrap().requests_per_unit,
        5
    );
    over.set(true);
    let no = bed.send(Request::get("/").header("x-api-key", "k1"));
    assert_eq!(no.status, 429);
    assert_eq!(no.header("retry-after"), Some("2"));
    assert!(no.upstream.is_none());
}

#[test]
fn failure_mode_open_lets_requests_through_and_closed_refuses_them() {
    let down = |_: &portcullis_testbed::GrpcCallRequest| {
        Err(GrpcStatus {
            code: GrpcStatus::UNAVAILABLE,
            message: "down".into(),
        })
    };
    let mut open = TestBed::new()
        .filter(wasm("tier_limiter"), config("open"))
        .grpc_cluster("ratelimit", down)
        .build()
        .unwrap();
    assert_eq!(
        open.send(Request::get("/").header("x-api-key", "k")).status,
        200
    );
    assert_eq!(
        open.metric("tier_limiter_global_failures"),
        Some(MetricValue::Counter(1))
    );
    assert!(open.logged("failure_mode open"));
    let mut closed = TestBed::new()
        .filter(wasm("tier_limiter"), config("closed"))
        .grpc_cluster("ratelimit", down)
        .build()
        .unwrap();
    let res = closed.send(Request::get("/").header("x-api-key", "k"));
    assert_eq!(res.status, 503);
    assert_eq!(res.json()["message"], "rate-limit service unavailable");
    // A garbled answer is a failure too, never a crash.
    let mut garbled = TestBed::new()
        .filter(wasm("tier_limiter"), config("closed"))
        .grpc_cluster("ratelimit", |_| {
            Ok(GrpcCallResponse {
                message: vec![0xff, 0xff, 0x01],
                ..GrpcCallResponse::default()
            })
        })
        .build()
        .unwrap();
    assert_eq!(
        garbled
            .send(Request::get("/").header("x-api-key", "k"))
            .status,
        503
    );
    // No such cluster: the call cannot even be made.
    let mut missing = TestBed::new()
        .filter(wasm("tier_limiter"), config("open"))
        .build()
        .unwrap();
    assert_eq!(
        missing
            .send(Request::get("/").header("x-api-key", "k"))
            .status,
        200
    );
    assert!(missing.logged("cannot call cluster `ratelimit`"));
}

#[test]
fn a_global_policy_needs_its_service() {
    let err = TestBed::new()
        .filter(
            wasm("tier_limiter"),
            json!({"tiers": {"t": {"second": 1}}, "default_tier": "t", "policy": "global"})
                .to_string(),
        )
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("global"), "{err}");
}
