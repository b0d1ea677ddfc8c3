//! `jwt-auth`: the cost of a request through the filter in our host, by algorithm,
//! with the verified-token cache and without it, and the same verification compiled
//! natively.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use jwt_auth::auth::{Check, Keys, verify};
use jwt_auth::config::Config;
use jwt_auth::extract::{Found, Location};
use jwt_mint::{Key, jwks};
use portcullis_benches::{no_clusters, quiet_engine, request_info, ten_headers, wasm};
use portcullis_engine::{Filter, Flow, HttpStream, PluginSpec};
use serde_json::json;
use tokio::task::LocalSet;

fn config(keys: &[&Key], cache_entries: usize) -> String {
    json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"], "local_jwks": jwks(keys),
            "algorithms": ["RS256", "ES256", "EdDSA"]}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}],
        "cache_entries": cache_entries
    })
    .to_string()
}

fn bench(c: &mut Criterion) {
    let keys = [
        ("RS256", Key::rsa("rs")),
        ("ES256", Key::ec256("es")),
        ("EdDSA", Key::ed25519("ed")),
    ];
    let refs: Vec<&Key> = keys.iter().map(|(_, k)| k).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": "https://idp.test", "aud": "api", "sub": "user-1", "iat": now, "exp": now + 3600});

    let engine = quiet_engine();
    let module = engine.load_file(&wasm("jwt_auth")).expect("jwt_auth loads");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = LocalSet::new();
    let start = |cache: usize| {
        let _g = local.enter();
        let _r = rt.enter();
        Filter::start(
            &engine,
            PluginSpec::new("jwt", module.clone(), config(&refs, cache)),
            no_clusters(),
        )
        .expect("starts")
    };
    let cached = vec![start(1000)];
    let uncached = vec![start(0)];
    let native = Config::parse(Some(config(&refs, 0).as_bytes())).unwrap();

    let noop_module = engine.load_file(&wasm("noop_filter")).expect("noop loads");
    let noop = {
        let _g = local.enter();
        let _r = rt.enter();
        vec![
            Filter::start(
                &engine,
                PluginSpec::new("noop", noop_module, Vec::new()),
                no_clusters(),
            )
            .expect("starts"),
        ]
    };
    let mut group = c.benchmark_group("jwt");
    // The same request through a no-op filter: what the harness and the host cost, so
    // the difference is the filter's own work.
    let mut noop_headers = ten_headers();
    noop_headers.set("authorization", "Bearer x");
    group.bench_function("baseline_noop_in_host", |b| {
        b.iter_custom(|iters| {
            rt.block_on(local.run_until(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut h = noop_headers.clone();
                    let mut stream = HttpStream::new(&noop, request_info());
                    let flow = stream.request_headers(&mut h, true).await;
                    assert_eq!(flow, Flow::Continue);
                }
                start.elapsed()
            }))
        })
    });
    for (alg, key) in &keys {
        let token = key.sign(alg, claims.clone());
        let mut headers = ten_headers();
        headers.set("authorization", format!("Bearer {token}"));
        for (name, chain) in [("cached", &cached), ("uncached", &uncached)] {
            group.bench_function(format!("{alg}_{name}_in_host"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(local.run_until(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut h = headers.clone();
                            let mut stream = HttpStream::new(chain, request_info());
                            let flow = stream.request_headers(&mut h, true).await;
                            assert_eq!(flow, Flow::Continue);
                        }
                        start.elapsed()
                    }))
                })
            });
        }
        let found = Found {
            token: token.clone(),
            location: Location::Header("authorization".into()),
            providers: vec![0],
        };
        group.bench_function(format!("{alg}_uncached_native"), |b| {
            b.iter(|| {
                assert!(matches!(
                    verify(&native, &found, &|_| Keys::NotYet, false, now),
                    Check::Ok(_)
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
