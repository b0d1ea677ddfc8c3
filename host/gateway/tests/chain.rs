//! The chain jwt-auth → header-forwarder end to end, in our gateway and in Envoy, with
//! the echo upstream showing exactly what the upstream received.

mod common;

use common::*;
use jwt_mint::{Key, jwks};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use serde_json::json;

#[test]
fn identity_is_replaced_by_verified_values_and_the_credential_forwarded_in_both_hosts() {
    let key = Key::ec256("k1");
    let upstream = echo();
    let auth = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": jwks(&[&key]), "algorithms": ["ES256"],
            "consumer": {"id_claim": "sub", "username_claim": "preferred_username", "tier_claim": "tier"}}},
        "rules": [{"match": {"prefix": "/health"}}, {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let forward = json!({
        "request": {"remove": {"headers": ["x-internal"]}, "add": {"headers": {"x-consumer": "$(consumer.username)", "x-path": "$(request.path)"}}},
        "response": {"remove": {"headers": ["server"]}, "add": {"headers": {"x-request-id": "$(request.id)"}}},
        "forward_authorization": true
    });
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters:
  - {{ name: auth, wasm: "{}", config: {auth} }}
  - {{ name: forward, wasm: "{}", config: {forward} }}
routes: [{{ name: api, match: {{ paths: [/] }}, service: echo, filters: [auth, forward], strip_path: false }}]
"#,
        wasm("jwt_auth"),
        wasm("header_forwarder")
    ));
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .filter(WasmFilter::new(
                "auth",
                portcullis_testbed::wasm("jwt_auth"),
                &auth.to_string(),
            ))
            .filter(WasmFilter::new(
                "forward",
                portcullis_testbed::wasm("header_forwarder"),
                &forward.to_string(),
            )),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let token = key.sign("ES256", json!({"iss": "https://idp.test", "sub": "u1", "preferred_username": "ada", "tier": "premium", "exp": 4_102_444_800u64}));
    for (host, base) in [
        ("portcullis", gw.url()),
        ("envoy", format!("http://{}", envoy.listener)),
    ] {
        let r = send(
            &base,
            "GET",
            "/orders/7",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-consumer-username", "mallory"),
                ("x-consumer-tier", "enterprise"),
                ("x-consumer-id", "admin"),
                ("x-internal", "secret"),
                ("x-request-id", "rid-42"),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(
            r.upstream_header("x-consumer-username").as_deref(),
            Some("ada"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-consumer-tier").as_deref(),
            Some("premium"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-consumer-id").as_deref(),
            Some("u1"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-consumer").as_deref(),
            Some("ada"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-path").as_deref(),
            Some("/orders/7"),
            "{host}"
        );
        assert_eq!(r.upstream_header("x-internal"), None, "{host}");
        assert_eq!(
            r.upstream_header("authorization"),
            Some(format!("Bearer {token}")),
            "{host}: the verified credential"
        );
        assert_eq!(r.headers.get_str("x-request-id"), Some("rid-42"), "{host}");
        let all_ids = r.json()["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0] == "x-consumer-id")
            .count();
        assert_eq!(
            all_ids, 1,
            "{host}: one identity, not the client's next to ours"
        );
        // Without a token: spoofed identity is still removed on an open route.
        let r = send(
            &base,
            "GET",
            "/health",
            &[("x-consumer-tier", "enterprise")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.upstream_header("x-consumer-tier"), None, "{host}");
    }
}
