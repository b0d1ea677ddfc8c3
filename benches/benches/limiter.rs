//! `tier-limiter`, local policy: the cost of a request through it in our host (one
//! identity, two windows, shared data with CAS), against a no-op filter.

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{Harness, ten_headers};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let h = Harness::default();
    // Limits high enough never to refuse: the cost of counting, not of refusing.
    let config = json!({
        "identify_by": ["consumer", "header:x-api-key", "ip"],
        "tiers": {"free": {"second": 1e9, "hour": 1e12}},
        "default_tier": "free"
    })
    .to_string();
    let chains = [
        ("noop", h.chain("noop_filter", String::new())),
        ("local_two_windows", h.chain("tier_limiter", config)),
    ];
    let mut group = c.benchmark_group("limiter");
    for (name, chain) in &chains {
        group.bench_function(format!("{name}_full_request_in_host"), |b| {
            b.iter_custom(|iters| {
                h.full_requests(chain, iters, || {
                    let mut headers = ten_headers();
                    headers.set("x-api-key", "client-1");
                    headers
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
