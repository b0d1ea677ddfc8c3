//! tier-limiter accuracy under overload: about twice the limit for 30 s through our
//! gateway with 2 workers and through Envoy with --concurrency 2; the admitted count
//! must be within 1% of the ideal (limit x time + capacity).

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use portcullis_clients::HttpCluster;
use portcullis_engine::{HeaderMap, HttpCallRequest};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use serde_json::json;

const LIMIT: f64 = 50.0;
const RATE: f64 = 100.0;

fn seconds() -> u64 {
    std::env::var("PORTCULLIS_LIMIT_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Sends RATE requests per second for `secs`; returns (admitted, refused, others, elapsed).
fn overload(base: &str, secs: u64) -> (u64, u64, u64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let client = HttpCluster::new(base, Duration::from_secs(2)).unwrap();
    let counts = Rc::new((Cell::new(0u64), Cell::new(0u64), Cell::new(0u64)));
    let start = Instant::now();
    let total = (RATE * secs as f64) as u64;
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..total {
            tick.tick().await;
            let (client, counts) = (client.clone(), counts.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let mut h = HeaderMap::new();
                h.add(":method", "GET");
                h.add(":path", "/");
                h.add(":authority", "limits.test");
                h.add("x-api-key", "one-client");
                let req = HttpCallRequest {
                    headers: h,
                    body: Vec::new(),
                    trailers: HeaderMap::new(),
                    timeout: Duration::from_secs(5),
                };
                match client
                    .call(req)
                    .await
                    .ok()
                    .and_then(|r| r.headers.get_str(":status").map(str::to_owned))
                    .as_deref()
                {
                    Some("200") => counts.0.set(counts.0.get() + 1),
                    Some("429") => counts.1.set(counts.1.get() + 1),
                    _ => counts.2.set(counts.2.get() + 1),
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    (
        counts.0.get(),
        counts.1.get(),
        counts.2.get(),
        start.elapsed().as_secs_f64(),
    )
}

fn check(host: &str, (admitted, refused, others, elapsed): (u64, u64, u64, f64), secs: u64) {
    // Requests were sent over (total - 1) / RATE seconds; the bucket starts full.
    let sending = ((RATE * secs as f64) - 1.0) / RATE;
    let ideal = LIMIT * sending + LIMIT;
    let error = (admitted as f64 - ideal) / ideal;
    eprintln!(
        "{host}: admitted {admitted}, refused {refused}, other {others}, ideal {ideal:.0}, error {:+.2}% over {elapsed:.1} s",
        error * 100.0
    );
    assert_eq!(others, 0, "{host}: every request got 200 or 429");
    assert!(
        error.abs() <= 0.01,
        "{host}: admitted {admitted} against an ideal of {ideal:.0} ({:+.2}%)",
        error * 100.0
    );
}

#[test]
fn admitted_requests_stay_within_one_percent_of_the_ideal_in_both_hosts() {
    let secs = seconds();
    let upstream = echo();
    let config = json!({"tiers": {"t": {"second": LIMIT}}, "default_tier": "t", "identify_by": ["header:x-api-key"]});
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
workers: 2
services: [{{ name: echo, url: "http://{upstream}" }}]
filters: [{{ name: limits, wasm: "{}", config: {config} }}]
routes: [{{ name: api, service: echo, filters: [limits] }}]
"#,
        wasm("tier_limiter")
    ));
    check("portcullis, 2 workers", overload(&gw.url(), secs), secs);
    drop(gw);
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .concurrency(2)
            .filter(WasmFilter::new(
                "limits",
                portcullis_testbed::wasm("tier_limiter"),
                &config.to_string(),
            )),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    check(
        "envoy, --concurrency 2",
        overload(&format!("http://{}", envoy.listener), secs),
        secs,
    );
}
