//! `portcullis ratelimit-service` on a real Redis: the protocol (buckets, burst,
//! several windows taken all or nothing, rule files, bad calls), and the gateway's
//! tier-limiter `global` policy through it, including Redis down and slow.

mod common;

use std::time::Duration;

use common::*;
use portcullis_clients::GrpcCluster;
use portcullis_engine::{GrpcCallRequest, GrpcStatus, HeaderMap};
use portcullis_rls::{
    Code, METHOD, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, SERVICE, Unit,
};
use portcullis_testbed::redis::RedisServer;
use prost::Message;
use serde_json::json;

fn redis() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

fn call_raw(service: &str, message: Vec<u8>) -> Result<Vec<u8>, GrpcStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = GrpcCluster::new(service, Duration::from_secs(1)).unwrap();
    rt.block_on(cluster.call(GrpcCallRequest {
        service: SERVICE.into(),
        method: METHOD.into(),
        initial_metadata: HeaderMap::new(),
        message,
        timeout: Duration::from_secs(2),
    }))
    .map(|r| r.message)
}

fn call(service: &str, req: &RateLimitRequest) -> Result<RateLimitResponse, GrpcStatus> {
    call_raw(service, req.encode_to_vec())
        .map(|m| RateLimitResponse::decode(&m[..]).expect("a RateLimitResponse"))
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "test".into(),
        descriptors,
        hits_addend: 1,
    }
}

fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

#[test]
fn buckets_in_redis_hold_the_burst_then_refuse_with_the_time_until_a_token() {
    let redis = redis();
    let svc = RatelimitService::start(&redis.url(), &[]);
    // 10 per minute with a burst of 12: twelve pass at once, the 13th waits 6 s for
    // the next token (a token every 6 s).
    let req = request(vec![RateLimitDescriptor::limited(
        &[("tier", "free"), ("identity", "ada"), ("burst", "12")],
        10,
        Unit::Minute,
    )]);
    for i in 0..12 {
        let r = call(&svc.url(), &req).unwrap();
        assert!(ok(&r), "hit {i}: {r:?}");
        assert_eq!(r.statuses[0].limit_remaining, 11 - i);
        let limit = r.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (10, Unit::Minute as i32)
        );
    }
    let r = call(&svc.url(), &req).unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    let wait = r.statuses[0].duration_until_reset.as_ref().unwrap();
    assert!(
        (5..=6).contains(&wait.seconds),
        "a token every 6 s, so the wait is at most 6 s: {wait:?}"
    );
    // Another identity has its own bucket.
    let other = request(vec![RateLimitDescriptor::limited(
        &[("tier", "free"), ("identity", "bob")],
        10,
        Unit::Minute,
    )]);
    assert!(ok(&call(&svc.url(), &other).unwrap()));
}

#[test]
fn a_request_takes_from_every_window_or_from_none() {
    let redis = redis();
    let svc = RatelimitService::start(&redis.url(), &[]);
    let id = [("identity", "carol")];
    let req = |second: u32| {
        request(vec![
            RateLimitDescriptor::limited(&[id[0], ("window", "second")], second, Unit::Second),
            RateLimitDescriptor::limited(&[id[0], ("window", "hour")], 100, Unit::Hour),
        ])
    };
    for _ in 0..2 {
        assert!(ok(&call(&svc.url(), &req(2)).unwrap()));
    }
    // The second-window bucket is empty: refused, and the hour bucket keeps its 98.
    let r = call(&svc.url(), &req(2)).unwrap();
    assert!(!ok(&r));
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert_eq!(r.statuses[1].limit_remaining, 98);
    // Refills continuously: after 600 ms at 2/s one token is back.
    std::thread::sleep(Duration::from_millis(600));
    let r = call(&svc.url(), &req(2)).unwrap();
    assert!(ok(&r), "{r:?}");
    assert_eq!(r.statuses[1].limit_remaining, 97);
}

#[test]
fn descriptors_without_a_limit_use_the_rule_files_or_are_not_limited() {
    let redis = redis();
    let dir = TempDir::new();
    let rules = dir.0.join("rules.yaml");
    std::fs::write(
        &rules,
        "domain: test\ndescriptors:\n  - key: plan\n    value: tiny\n    descriptors:\n      - key: identity\n        rate_limit: { unit: hour, requests_per_unit: 2 }\n",
    )
    .unwrap();
    let svc = RatelimitService::start(&redis.url(), &["--rules", rules.to_str().unwrap()]);
    let plain = |pairs: &[(&str, &str)]| request(vec![RateLimitDescriptor::of(pairs)]);
    let tiny = plain(&[("plan", "tiny"), ("identity", "dan")]);
    assert!(ok(&call(&svc.url(), &tiny).unwrap()));
    assert!(ok(&call(&svc.url(), &tiny).unwrap()));
    assert!(!ok(&call(&svc.url(), &tiny).unwrap()));
    let free = plain(&[("plan", "unlisted"), ("identity", "dan")]);
    for _ in 0..5 {
        let r = call(&svc.url(), &free).unwrap();
        assert!(ok(&r));
        assert!(r.statuses[0].current_limit.is_none());
    }
    // A limit of zero refuses everything.
    let zero = request(vec![RateLimitDescriptor::limited(
        &[("k", "v")],
        0,
        Unit::Second,
    )]);
    assert!(!ok(&call(&svc.url(), &zero).unwrap()));
}

#[test]
fn bad_calls_and_bad_rule_files_get_clear_errors() {
    let redis = redis();
    let svc = RatelimitService::start(&redis.url(), &[]);
    let status = call_raw(&svc.url(), vec![0xff, 0x01, 0x02]).unwrap_err();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT: {status:?}");
    let status = call(&svc.url(), &request(vec![])).unwrap_err();
    assert_eq!(status.code, 3);
    assert!(status.message.contains("no descriptors"), "{status:?}");
    // Still serving after those.
    let fine = request(vec![RateLimitDescriptor::limited(
        &[("k", "v")],
        5,
        Unit::Second,
    )]);
    assert!(ok(&call(&svc.url(), &fine).unwrap()));

    let dir = TempDir::new();
    let rules = dir.0.join("bad.yaml");
    std::fs::write(
        &rules,
        "domain: d\ndescriptors: [{key: k, rate_limit: {unit: fortnight, requests_per_unit: 1}}]",
    )
    .unwrap();
    let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
        .args([
            "ratelimit-service",
            "--redis",
            &redis.url(),
            "--listen",
            "127.0.0.1:0",
            "--rules",
        ])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("fortnight"),
        "{err}"
    );
}

fn global_gateway(service: &str, failure_mode: &str, second: u32) -> Gateway {
    limited_gateway(
        service,
        json!({
            "identify_by": ["header:x-api-key"],
            "tiers": {"t": {"second": second}},
            "default_tier": "t",
            "policy": "global",
            "global": {"cluster": "ratelimit", "domain": "gw", "timeout_ms": 50, "failure_mode": failure_mode}
        }),
    )
}

/// A gateway whose one route has the tier-limiter with `config`, and the service.
fn limited_gateway(service: &str, config: serde_json::Value) -> Gateway {
    let upstream = echo();
    Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: ratelimit, url: "{service}" }}
filters: [{{ name: limits, wasm: "{}", config: {config} }}]
routes: [{{ name: api, service: echo, filters: [limits] }}]
"#,
        wasm("tier_limiter")
    ))
}

fn statuses(gw: &Gateway, key: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| get(gw, "/", &[("x-api-key", key)]).status)
        .collect()
}

#[test]
fn the_gateway_limits_through_the_service_and_redis_outages_follow_the_failure_mode() {
    let mut redis = redis();
    let svc = RatelimitService::start(&redis.url(), &["--redis-timeout-ms", "30"]);
    let open = global_gateway(&svc.url(), "open", 3);
    let closed = global_gateway(&svc.url(), "closed", 3);

    // Working: three per second per key, counted in Redis.
    let s = statuses(&open, "k1", 4);
    assert_eq!(s, vec![200, 200, 200, 429], "open node");
    let s = statuses(&closed, "k2", 4);
    assert_eq!(s, vec![200, 200, 200, 429], "closed node");
    let refused = get(&open, "/", &[("x-api-key", "k1")]);
    assert_eq!(refused.status, 429);
    assert!(refused.headers.get_str("retry-after").is_some());

    // Redis slow (paused for 1.5 s, longer than the service's 30 ms): open lets
    // through, closed answers 503; both keep serving.
    redis.pause(1500).unwrap();
    assert_eq!(statuses(&open, "k3", 5), vec![200; 5], "slow redis, open");
    assert_eq!(
        statuses(&closed, "k4", 3),
        vec![503; 3],
        "slow redis, closed"
    );
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        statuses(&closed, "k5", 4),
        vec![200, 200, 200, 429],
        "redis answers again"
    );

    // Redis down.
    redis.stop();
    assert_eq!(statuses(&open, "k6", 5), vec![200; 5], "redis down, open");
    assert_eq!(
        statuses(&closed, "k7", 3),
        vec![503; 3],
        "redis down, closed"
    );
    assert!(
        open.logged("let through (failure_mode open)"),
        "the open node logs the failure:\n{}",
        open.stderr_text()
    );
    // Back up (empty): limits apply again once the service has reconnected.
    redis.resume_process().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(&closed, "/", &[("x-api-key", "k8")]).status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service reconnects:\n{}",
            svc.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(statuses(&closed, "k8", 3), vec![200, 200, 429]);
}

#[test]
fn a_client_cannot_turn_the_global_limit_off_with_a_huge_key() {
    // Two windows carry the identity twice: a 40 KB key made a request past the
    // service's 64 KiB limit, every call failed, and `failure_mode: open` let each
    // request through uncounted. A long identity is now counted by its digest.
    let redis = redis();
    let svc = RatelimitService::start(&redis.url(), &[]);
    let gw = limited_gateway(
        &svc.url(),
        json!({
            "identify_by": ["header:x-api-key"],
            "tiers": {"t": {"second": 3, "hour": 1000}},
            "default_tier": "t",
            "policy": "global",
            "global": {"cluster": "ratelimit", "domain": "gw", "timeout_ms": 500, "failure_mode": "open"}
        }),
    );
    let huge = "k".repeat(40_000);
    assert_eq!(
        statuses(&gw, &huge, 4),
        vec![200, 200, 200, 429],
        "{}",
        gw.stderr_text()
    );
    // Another huge key that differs in its last byte has buckets of its own.
    let other = format!("{}j", &huge[1..]);
    assert_eq!(statuses(&gw, &other, 1), vec![200]);
    assert!(
        !gw.logged("let through (failure_mode open)"),
        "no call failed:\n{}",
        gw.stderr_text()
    );
}

#[test]
fn our_filter_in_envoy_limits_through_the_service_too() {
    let redis = redis();
    let svc = RatelimitService::start(&redis.url(), &[]);
    let config = json!({
        "identify_by": ["header:x-api-key"],
        "tiers": {"t": {"second": 3}},
        "default_tier": "t",
        "policy": "global",
        "global": {"cluster": "ratelimit", "domain": "envoy-wasm", "timeout_ms": 200, "failure_mode": "closed"}
    });
    let envoy = portcullis_envoy::Envoy::start(
        &portcullis_envoy::EnvoyConfig::new(echo())
            .grpc_cluster("ratelimit", svc.addr)
            .filter(portcullis_envoy::WasmFilter::new(
                "limits",
                portcullis_testbed::wasm("tier_limiter"),
                &config.to_string(),
            )),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", envoy.listener);
    let got: Vec<u16> = (0..4)
        .map(|_| {
            send(&base, "GET", "/", &[("x-api-key", "e1")], b"")
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(got, vec![200, 200, 200, 429]);
}
