//! The chain of the end-to-end comparison (jwt-auth with a cached token → tier-limiter
//! local → header-forwarder) in our host alone, against one no-op filter: what the
//! three filters and the host's per-filter work cost, without sockets or HTTP.

use criterion::{Criterion, criterion_group, criterion_main};
use jwt_mint::{Key, jwks};
use portcullis_benches::{Harness, ten_headers};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let h = Harness::default();
    let key = Key::ec256("es");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = key.sign(
        "ES256",
        json!({"iss": "https://idp.bench", "aud": "api", "sub": "user-1", "tier": "premium", "iat": now, "exp": now + 3600}),
    );
    let auth = json!({
        "providers": {"idp": {"issuer": "https://idp.bench", "audiences": ["api"], "local_jwks": jwks(&[&key]),
            "algorithms": ["ES256"], "consumer": {"id_claim": "sub", "tier_claim": "tier"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let limits = json!({
        "identify_by": ["consumer", "ip"],
        "tiers": {"premium": {"second": 1e9, "hour": 1e12}},
        "default_tier": "premium"
    });
    let forward = json!({
        "request": {"remove": {"headers": ["x-internal"]},
                    "add": {"headers": {"x-consumer": "$(consumer.id)", "x-plan": "$(consumer.tier)"}}},
        "response": {"remove": {"headers": ["server"]}},
        "forward_authorization": true
    });
    let mut chain = h.chain("jwt_auth", auth.to_string());
    chain.extend(h.chain("tier_limiter", limits.to_string()));
    chain.extend(h.chain("header_forwarder", forward.to_string()));
    let noop = h.chain("noop_filter", String::new());
    let request = || {
        let mut headers = ten_headers();
        headers.set("authorization", format!("Bearer {token}"));
        headers
    };
    let mut group = c.benchmark_group("chain");
    for (name, chain) in [("noop", &noop), ("jwt_limiter_forwarder", &chain)] {
        group.bench_function(format!("{name}_full_request_in_host"), |b| {
            b.iter_custom(|iters| h.full_requests(chain, iters, request))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
