//! `jwt-auth`: the cost of a request through the filter in our host, by algorithm,
//! with the verified-token cache and without it, and the same verification compiled
//! natively; and RS256's modular exponentiation alone, natively, ours against
//! crypto-bigint's.

use std::hint::black_box;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd, Resize};
use jwt_auth::auth::{Check, Keys, verify};
use jwt_auth::config::Config;
use jwt_auth::extract::{Found, Location};
use jwt_mint::{Key, jwks};
use portcullis_benches::{Answering, no_clusters, quiet_engine, request_info, ten_headers, wasm};
use portcullis_engine::{Filter, Flow, HttpStream, PluginSpec};
use serde_json::json;
use tokio::task::LocalSet;

fn config(keys: &[&Key], cache_entries: usize) -> String {
    config_requiring(keys, cache_entries, json!({"provider": "idp"}))
}

fn config_requiring(keys: &[&Key], cache_entries: usize, requires: serde_json::Value) -> String {
    json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"], "local_jwks": jwks(keys),
            "algorithms": ["RS256", "PS256", "ES256", "EdDSA"]}},
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "cache_entries": cache_entries
    })
    .to_string()
}

/// Claim rules of the usual kind: a group, a nested claim among values, and one that
/// must be absent.
fn claim_rules() -> serde_json::Value {
    json!([
        {"claim": "groups", "contains": "ops"},
        {"any": [{"claim": "org.tier", "one_of": ["premium", "enterprise"]}, {"claim": "tier", "equals": "gold"}]},
        {"none": [{"claim": "groups", "contains": "suspended"}]}
    ])
}

/// `iters` requests with `headers` through `chain`, each admitted; their time.
fn requests(
    rt: &tokio::runtime::Runtime,
    local: &LocalSet,
    chain: &[Filter],
    headers: &portcullis_engine::HeaderMap,
    iters: u64,
) -> std::time::Duration {
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
}

fn bench(c: &mut Criterion) {
    let keys = [
        ("RS256", Key::rsa("rs")),
        ("PS256", Key::rsa("ps")),
        ("ES256", Key::ec256("es")),
        ("EdDSA", Key::ed25519("ed")),
    ];
    let refs: Vec<&Key> = keys.iter().map(|(_, k)| k).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": "https://idp.test", "aud": "api", "sub": "user-1", "iat": now, "exp": now + 3600,
        "groups": ["eng", "ops"], "org": {"tier": "premium"}});

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
    let with_rules = {
        let _g = local.enter();
        let _r = rt.enter();
        let requires = json!({"provider": "idp", "claims": claim_rules()});
        vec![
            Filter::start(
                &engine,
                PluginSpec::new(
                    "jwt",
                    module.clone(),
                    config_requiring(&refs, 1000, requires),
                ),
                no_clusters(),
            )
            .expect("starts"),
        ]
    };
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
        b.iter_custom(|iters| requests(&rt, &local, &noop, &noop_headers, iters))
    });
    for (alg, key) in &keys {
        let token = key.sign(alg, claims.clone());
        let mut headers = ten_headers();
        headers.set("authorization", format!("Bearer {token}"));
        // A cached token with claim rules against one without: what the rules cost.
        let chains: &[(&str, &Vec<Filter>)] = if *alg == "ES256" {
            &[
                ("cached", &cached),
                ("uncached", &uncached),
                ("cached_claim_rules", &with_rules),
            ]
        } else {
            &[("cached", &cached), ("uncached", &uncached)]
        };
        for (name, chain) in chains {
            group.bench_function(format!("{alg}_{name}_in_host"), |b| {
                b.iter_custom(|iters| requests(&rt, &local, chain, &headers, iters))
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

/// s^e mod n for an RS256 signature, natively: `kit::jwt::modexp` (28-bit limbs laid
/// out for wasm, what the filter runs) against square-and-multiply on crypto-bigint's
/// Montgomery arithmetic with its native 64-bit limbs (what the filter ran before).
/// Their difference is what the wasm layout costs a native build, so the
/// `RS256_uncached_native` above can be read against the fastest native code too.
fn modexp_native(c: &mut Criterion) {
    let key = Key::rsa("rs");
    let jwk = key.jwk();
    let part = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().expect("an RSA JWK"))
            .expect("base64url")
    };
    let (n, e) = (part("n"), part("e"));
    let sig = key.signature("RS256", b"payload");
    let ours = kit::jwt::modexp::PublicExp::new(&n, &e).expect("a usable key");
    let modulus = BoxedUint::from_be_slice_vartime(&n);
    let params = BoxedMontyParams::new_vartime(Odd::new(modulus.clone()).expect("odd"));
    let s = BoxedUint::from_be_slice_vartime(&sig).resize(modulus.bits_precision());
    let e = BoxedUint::from_be_slice_vartime(&e);
    let theirs = |s: &BoxedUint| {
        let base = BoxedMontyForm::new(s.clone(), &params);
        let mut acc = base.clone();
        for i in (0..e.bit_width() - 1).rev() {
            acc = acc.square();
            if e.bit_vartime(i) {
                acc = acc.mul(&base);
            }
        }
        acc.retrieve().to_be_bytes()
    };
    let expected = theirs(&s);
    assert_eq!(
        ours.apply(&sig).as_deref(),
        Some(&expected[expected.len() - n.len()..])
    );
    let mut group = c.benchmark_group("jwt");
    group.bench_function("RS256_modexp_native_ours", |b| {
        b.iter(|| ours.apply(black_box(&sig)))
    });
    group.bench_function("RS256_modexp_native_crypto_bigint", |b| {
        b.iter(|| theirs(black_box(&s)))
    });
    group.finish();
}

/// The claim rules above, evaluated natively on a token's claims.
fn claim_rules_native(c: &mut Criterion) {
    let list: Vec<kit::claim_rule::ClaimRuleConfig> =
        serde_json::from_value(claim_rules()).expect("rules");
    let rule = kit::claim_rule::ClaimRule::compile_all(&list)
        .expect("valid")
        .expect("some");
    let claims = json!({"sub": "user-1", "groups": ["eng", "ops"], "org": {"tier": "premium"},
        "scope": "orders:read", "iat": 1, "exp": 2});
    let claims = claims.as_object().expect("an object").clone();
    assert!(rule.holds(&claims));
    let mut group = c.benchmark_group("jwt");
    group.bench_function("claim_rules_native", |b| {
        b.iter(|| black_box(&rule).holds(black_box(&claims)))
    });
    group.finish();
}

/// An opaque token introspected once, then served from the cache, against a cached
/// ES256 JWT: the issue asks that the two cost about the same.
fn introspected_cached(c: &mut Criterion) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = Key::ec256("es");
    let engine = quiet_engine();
    let module = engine.load_file(&wasm("jwt_auth")).expect("jwt_auth loads");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = LocalSet::new();
    let introspection = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"],
            "introspection": {"cluster": "idp", "path": "/introspect", "client_id": "rs",
                "client_secret": "s", "cache_ttl_seconds": 3600}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    })
    .to_string();
    let answer = json!({"active": true, "iss": "https://idp.test", "aud": "api", "sub": "user-1",
        "scope": "orders:read", "iat": now, "exp": now + 3600})
    .to_string();
    let (introspecting, jwt) = {
        let _g = local.enter();
        let _r = rt.enter();
        let start = |config: String, clusters: std::rc::Rc<dyn portcullis_engine::Clusters>| {
            vec![
                Filter::start(
                    &engine,
                    PluginSpec::new("jwt", module.clone(), config),
                    clusters,
                )
                .expect("starts"),
            ]
        };
        (
            start(
                introspection,
                std::rc::Rc::new(Answering {
                    name: "idp",
                    answer,
                }),
            ),
            start(config(&[&key], 1000), no_clusters()),
        )
    };
    let mut opaque = ten_headers();
    opaque.set("authorization", "Bearer 2YotnFZFEjr1zCsicMWpAA");
    let mut signed = ten_headers();
    signed.set(
        "authorization",
        format!(
            "Bearer {}",
            key.sign(
                "ES256",
                json!({"iss": "https://idp.test", "aud": "api", "sub": "user-1",
                "iat": now, "exp": now + 3600})
            )
        ),
    );
    let mut group = c.benchmark_group("jwt");
    for (name, chain, headers) in [
        ("introspected_cached_in_host", &introspecting, &opaque),
        ("ES256_cached_again_in_host", &jwt, &signed),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| requests(&rt, &local, chain, &headers, iters))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench,
    modexp_native,
    claim_rules_native,
    introspected_cached
);
criterion_main!(benches);
