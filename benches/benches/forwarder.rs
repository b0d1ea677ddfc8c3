//! `header-forwarder`: the cost of a request through a 10-operation configuration in
//! our host, against the same request through a no-op filter.

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
                rt.block_on(local.run_until(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut h = ten_headers();
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
