//! The host engine's own cost: a request through a no-op filter (10 headers into
//! `on_request_headers` and back, then the response and the end of the request), and
//! the start of a VM (instantiate, `_initialize`, `on_vm_start`, `on_configure`).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{no_clusters, quiet_engine, request_info, ten_headers, wasm};
use portcullis_engine::{Filter, Flow, HeaderMap, HttpStream, PluginSpec};
use tokio::task::LocalSet;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn per_request(c: &mut Criterion) {
    let engine = quiet_engine();
    let module = engine
        .load_file(&wasm("noop_filter"))
        .expect("noop filter loads");
    let rt = runtime();
    let local = LocalSet::new();
    let filter = {
        let _g = local.enter();
        let _r = rt.enter();
        Filter::start(
            &engine,
            PluginSpec::new("noop", module, Vec::new()),
            no_clusters(),
        )
        .expect("starts")
    };
    let chain = vec![filter];
    let mut group = c.benchmark_group("host");
    group.bench_function("request_headers_noop_10_headers", |b| {
        b.iter_custom(|iters| {
            rt.block_on(local.run_until(async {
                let mut stream = HttpStream::new(&chain, request_info());
                let mut headers = ten_headers();
                let start = Instant::now();
                for _ in 0..iters {
                    let flow = stream.request_headers(&mut headers, true).await;
                    debug_assert_eq!(flow, Flow::Continue);
                }
                start.elapsed()
            }))
        })
    });
    group.bench_function("full_request_noop_10_headers", |b| {
        b.iter_custom(|iters| {
            rt.block_on(local.run_until(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut headers = ten_headers();
                    let mut response: HeaderMap =
                        [(":status", "200"), ("content-type", "application/json")]
                            .into_iter()
                            .collect();
                    let start = Instant::now();
                    let mut stream = HttpStream::new(&chain, request_info());
                    stream.request_headers(&mut headers, true).await;
                    stream.response_headers(&mut response, true).await;
                    stream.finish(&mut headers, &mut response);
                    total += start.elapsed();
                }
                total
            }))
        })
    });
    group.finish();
}

fn vm_start(c: &mut Criterion) {
    let engine = quiet_engine();
    let rt = runtime();
    let local = LocalSet::new();
    let mut group = c.benchmark_group("host");
    for name in ["noop_filter", "jwt_auth"] {
        let module = engine.load_file(&wasm(name)).expect("filter loads");
        group.bench_function(format!("vm_start_{name}"), |b| {
            let _g = local.enter();
            let _r = rt.enter();
            b.iter(|| {
                Filter::start(
                    &engine,
                    PluginSpec::new(name, module.clone(), b"{}".to_vec()),
                    no_clusters(),
                )
                .expect("starts")
            })
        });
    }
    group.bench_function("module_load_from_cache_jwt_auth", |b| {
        let bytes = std::fs::read(wasm("jwt_auth")).expect("read");
        b.iter(|| engine.load(&bytes).expect("loads"))
    });
    group.finish();
}

criterion_group!(benches, per_request, vm_start);
criterion_main!(benches);
