//! `oidc`: the per-request cost of an existing session in our host (read the cookie,
//! open it or find it in the session cache, check expiry, idle time and revocation,
//! set the token and identity headers, strip our cookie), against the same request
//! through a no-op filter. The session cookie is sealed natively with the same code
//! the filter uses.

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use oidc::config::Config;
use oidc::session::{SESSION, Session, seal};
use portcullis_benches::{Harness, ten_headers};
use serde_json::json;

fn config(cache_entries: usize) -> String {
    json!({
        "issuer": "https://idp.example.com",
        "client_id": "web",
        "client_secret": "web-secret",
        "redirect_uri": "https://app.example.com/callback",
        "idp_cluster": "idp",
        "session": {"secrets": [{"id": "k1", "secret": "a-benchmark-secret-of-at-least-32-chars"}],
            "cache_entries": cache_entries},
        "upstream_id_token_header": null,
        "consumer": {"id_claim": "sub", "username_claim": "preferred_username", "groups_claim": "groups", "tier_claim": "tier"}
    })
    .to_string()
}

fn bench(c: &mut Criterion) {
    let h = Harness::default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // A realistic session: RS256-sized access and ID tokens (~800 and ~1000 bytes).
    let session = Session {
        id: "Zm9vYmFyYmF6cXV4cXV1eDEy".into(),
        sub: "248289761001".into(),
        idp_sid: Some("08a5019c-17e1-4977-8f42-65a12843ea02".into()),
        created: now,
        expires: now + 8 * 3600,
        seen: now,
        access_token: format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            "a".repeat(400),
            "s".repeat(342)
        ),
        access_expires: now + 3600,
        refresh_token: Some("r".repeat(43)),
        id_token: format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            "b".repeat(600),
            "s".repeat(342)
        ),
        identity: vec![
            ("x-consumer-id".into(), "248289761001".into()),
            ("x-consumer-username".into(), "ada".into()),
            ("x-consumer-groups".into(), "eng,ops".into()),
            ("x-consumer-tier".into(), "premium".into()),
            (
                "x-credential-identifier".into(),
                "https://idp.example.com".into(),
            ),
        ],
    };
    let keys = Config::parse(Some(config(0).as_bytes()))
        .expect("config")
        .keys;
    let cookie = seal(&keys, SESSION, &session).expect("seal");
    let headers = || {
        let mut hd = ten_headers();
        hd.remove("authorization");
        hd.set(
            "cookie",
            format!("theme=dark; __Host-portcullis_session={cookie}"),
        );
        hd
    };
    eprintln!("session cookie: {} bytes", cookie.len());
    let chains = [
        ("baseline_noop", h.chain("noop_filter", String::new())),
        ("session_cached", h.chain("oidc", config(1000))),
        (
            "session_decrypted_every_request",
            h.chain("oidc", config(0)),
        ),
    ];
    let mut group = c.benchmark_group("oidc");
    for (name, chain) in &chains {
        group.bench_function(format!("{name}_full_request_in_host"), |b| {
            b.iter_custom(|iters| h.full_requests(chain, iters, headers))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
