//! `header-forwarder`: the cost of a request through a 10-operation configuration in
//! our host, against the same request through a no-op filter.

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
        ("noop", start("noop_filter", String::new())),
        ("ten_operations", start("header_forwarder", ten_ops)),
    ];
    let mut group = c.benchmark_group("forwarder");
    for (name, chain) in &chains {
        group.bench_function(format!("{name}_full_request_in_host"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(local.run_until(full_requests(chain, iters, ten_headers)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
