//! `tier-limiter`, local policy: the cost of a request through it in our host (one
//! identity, two windows, shared data with CAS), against a no-op filter.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{no_clusters, quiet_engine, request_info, ten_headers, wasm};
use portcullis_engine::{Filter, Flow, HeaderMap, HttpStream, PluginSpec};
use serde_json::json;
use tokio::task::LocalSet;

fn bench(c: &mut Criterion) {
    let engine = quiet_engine();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = LocalSet::new();
    let start = |name: &str, config: String| {
        let module = engine.load_file(&wasm(name)).expect("loads");
        let _g = local.enter();
        let _r = rt.enter();
        vec![
            Filter::start(
                &engine,
                PluginSpec::new(name, module, config),
                no_clusters(),
            )
            .expect("starts"),
        ]
    };
    // Limits high enough never to refuse: the cost of counting, not of refusing.
    let config = json!({
        "identify_by": ["consumer", "header:x-api-key", "ip"],
        "tiers": {"free": {"second": 1e9, "hour": 1e12}},
        "default_tier": "free"
    })
    .to_string();
    let chains = [
        ("noop", start("noop_filter", String::new())),
        ("local_two_windows", start("tier_limiter", config)),
    ];
    let mut group = c.benchmark_group("limiter");
    for (name, chain) in &chains {
        group.bench_function(format!("{name}_full_request_in_host"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(local.run_until(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut h = ten_headers();
                        h.set("x-api-key", "client-1");
                        let mut resp: HeaderMap = [
                            (":status", "200"),
                            ("server", "upstream"),
                            ("content-type", "application/json"),
                        ]
                        .into_iter()
                        .collect();
                        let mut stream = HttpStream::new(chain, request_info());
                        assert_eq!(stream.request_headers(&mut h, true).await, Flow::Continue);
                        assert_eq!(
                            stream.response_headers(&mut resp, true).await,
                            Flow::Continue
                        );
                        stream.finish(&mut h, &mut resp);
                    }
                    start.elapsed()
                }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
