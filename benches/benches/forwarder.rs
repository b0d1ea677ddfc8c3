//! `header-forwarder`: the cost of a request through a 10-operation configuration in
//! our host, against the same request through a no-op filter.

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{Harness, ten_headers};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let h = Harness::default();
    // Ten operations over both phases, templates included.
    let ten_ops = json!({
        "request": {
            "remove": {"headers": ["cookie", "x-internal"]},
            "rename": {"headers": {"accept-encoding": "x-original-accept-encoding"}},
            "replace": {"headers": {"user-agent": "portcullis"}},
            "add": {"headers": {"x-consumer": "$(consumer.username)", "x-request-path": "$(request.path)"}},
            "append": {"headers": {"x-forwarded-by": "portcullis"}}
        },
        "response": {
            "remove": {"headers": ["server"]},
            "add": {"headers": {"x-request-id": "$(request.id)"}},
            "append": {"headers": {"x-served-by": "portcullis"}}
        },
        "forward_authorization": true
    })
    .to_string();
    let chains = [
        ("noop", h.chain("noop_filter", String::new())),
        ("ten_operations", h.chain("header_forwarder", ten_ops)),
    ];
    let mut group = c.benchmark_group("forwarder");
    for (name, chain) in &chains {
        group.bench_function(format!("{name}_full_request_in_host"), |b| {
            b.iter_custom(|iters| h.full_requests(chain, iters, ten_headers))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
