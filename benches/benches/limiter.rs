//! `tier-limiter`, local policy: the cost of a request through it in our host (one
//! identity, two windows, shared data with CAS), against a no-op filter.

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{full_requests, no_clusters, quiet_engine, ten_headers, wasm};
use portcullis_engine::{Filter, PluginSpec};
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
                rt.block_on(local.run_until(full_requests(chain, iters, || {
                    let mut h = ten_headers();
                    h.set("x-api-key", "client-1");
                    h
                })))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
