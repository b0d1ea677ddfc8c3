//! A filter's memory stays flat over many requests (no leak per request in the guest
//! or in the host's per-request state).

use jwt_mint::{Key, jwks};
use portcullis_testbed::{Request, TestBed, wasm};
use serde_json::json;

#[test]
fn jwt_auth_and_header_forwarder_memory_is_flat_over_many_requests() {
    let key = Key::ec256("k1");
    let auth = json!({"providers": {"idp": {"local_jwks": jwks(&[&key]), "algorithms": ["ES256"], "consumer": {"tier_claim": "tier"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]});
    let fwd = json!({"request": {"add": {"headers": {"x-tier": "$(consumer.tier)"}}}, "response": {"add": {"headers": {"x-id": "$(request.id)"}}}});
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), auth.to_string())
        .filter(wasm("header_forwarder"), fwd.to_string())
        .build()
        .unwrap();
    let token = format!(
        "Bearer {}",
        key.sign(
            "ES256",
            json!({"sub": "u", "tier": "gold", "exp": 4_102_444_800u64})
        )
    );
    let mut send = |n: usize| {
        for _ in 0..n {
            assert_eq!(
                bed.send(Request::get("/x").header("authorization", &token))
                    .status,
                200
            );
        }
    };
    send(2_000);
    let (a, b) = (bed.filter(0).memory_bytes(), bed.filter(1).memory_bytes());
    let mut bed2 = bed;
    for _ in 0..20_000 {
        assert_eq!(
            bed2.send(Request::get("/x").header("authorization", &token))
                .status,
            200
        );
    }
    assert_eq!(bed2.filter(0).memory_bytes(), a, "jwt-auth's memory grew");
    assert_eq!(
        bed2.filter(1).memory_bytes(),
        b,
        "header-forwarder's memory grew"
    );
    assert_eq!(bed2.filter(0).live_contexts(), 0);
}
