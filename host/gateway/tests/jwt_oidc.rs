//! `jwt-auth` end to end against a real OpenID provider (npm `oidc-provider`, started
//! here on loopback): access tokens it issues (RS256, ES256, EdDSA) pass through the
//! filter in our gateway and in Envoy, both fetching the provider's real JWKS; keys it
//! rotates are picked up.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use serde_json::json;

const RESOURCES: [&str; 3] = [
    "urn:portcullis:rs256",
    "urn:portcullis:es256",
    "urn:portcullis:eddsa",
];

struct Idp {
    child: Child,
    port: u16,
}

impl Idp {
    fn start(port: u16, keys: &std::path::Path) -> Idp {
        Idp::start_with(port, keys, "[]")
    }

    /// With extra clients (`IDP_CLIENTS`: JSON client metadata).
    fn start_with(port: u16, keys: &std::path::Path, clients: &str) -> Idp {
        let dir = portcullis_testbed::workspace_dir().join("testbed/idp");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test IdP is not installed: run `npm install --prefix testbed/idp` (cargo xtask test does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("idp.mjs"))
            .env("IDP_PORT", port.to_string())
            .env("IDP_KEYS", keys)
            .env("IDP_CLIENT_SECRET", "test-secret")
            .env("IDP_CLIENTS", clients)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs (Node.js 20+ is needed)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "the IdP did not start: {line}");
        // Keep reading: the provider prints notices later (revocation does), and a
        // closed pipe kills it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Idp { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client-credentials access token for `resource` (its algorithm).
    fn token(&self, resource: &str) -> String {
        self.token_for("api-client", "test-secret", resource)
    }

    /// A client-credentials access token of client `id` (for no resource server when
    /// `resource` is empty).
    fn token_for(&self, id: &str, secret: &str, resource: &str) -> String {
        use base64::Engine;
        let mut body = "grant_type=client_credentials&scope=orders:read".to_owned();
        if !resource.is_empty() {
            body.push_str(&format!("&resource={resource}"));
        }
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        );
        let r = send(
            &self.issuer(),
            "POST",
            "/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
            ],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "token endpoint: {}", r.body);
        r.json()["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jwt_config(issuer: &str) -> serde_json::Value {
    json!({
        "providers": {"idp": {
            "issuer": issuer,
            "audiences": RESOURCES,
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "remote_jwks": {"cluster": "idp", "path": "/jwks", "cache_duration_seconds": 300, "refetch_interval_seconds": 1},
            "consumer": {"id_claim": "sub"}
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    })
}

fn through(base: &str, token: &str) -> Res {
    send(
        base,
        "GET",
        "/orders",
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .unwrap()
}

/// jwt-auth on `config` in front of `upstream`, with the IdP on `idp_port`, in our
/// gateway (two workers) and in Envoy.
fn both_hosts(
    idp_port: u16,
    upstream: std::net::SocketAddr,
    config: &serde_json::Value,
) -> (Gateway, Envoy) {
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
access_log: "off"
workers: 2
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: idp, url: "http://127.0.0.1:{idp_port}" }}
filters:
  - {{ name: jwt, wasm: "{}", config: {config} }}
routes:
  - {{ name: api, match: {{ paths: [/] }}, service: echo, filters: [jwt], strip_path: false }}
"#,
        wasm("jwt_auth")
    ));
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .filter(WasmFilter::new(
                "jwt",
                portcullis_testbed::wasm("jwt_auth"),
                &config.to_string(),
            ))
            .cluster(
                "idp",
                std::net::SocketAddr::from(([127, 0, 0, 1], idp_port)),
            ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (gw, envoy)
}

#[test]
fn provider_tokens_pass_in_our_gateway_and_in_envoy_and_rotation_is_picked_up() {
    let dir = TempDir::new();
    let keys = dir.0.join("idp-keys.json");
    let port = free_port();
    let idp = Idp::start(port, &keys);
    let upstream = echo();
    let config = jwt_config(&idp.issuer());

    let (gw, envoy) = both_hosts(port, upstream, &config);
    let envoy_url = format!("http://{}", envoy.listener);

    for resource in RESOURCES {
        let token = idp.token(resource);
        for (host, base) in [("portcullis", gw.url()), ("envoy", envoy_url.clone())] {
            let r = through(&base, &token);
            assert_eq!(r.status, 200, "{resource} through {host}: {}", r.body);
            assert_eq!(
                r.upstream_header("x-consumer-id").as_deref(),
                Some("api-client"),
                "{host}"
            );
        }
    }
    assert_eq!(through(&gw.url(), "not-a-token").status, 401);
    assert_eq!(through(&envoy_url, "not-a-token").status, 401);

    // The IdP restarts with new keys: tokens with new key ids must pass once the
    // filter refetches the JWKS for the unknown kid.
    drop(idp);
    std::fs::remove_file(&keys).unwrap();
    let idp = Idp::start(port, &keys);
    std::thread::sleep(Duration::from_millis(1100)); // past the refetch interval
    for resource in RESOURCES {
        let token = idp.token(resource);
        for (host, base) in [("portcullis", gw.url()), ("envoy", envoy_url.clone())] {
            let r = through(&base, &token);
            assert_eq!(
                r.status, 200,
                "rotated {resource} through {host}: {}",
                r.body
            );
        }
    }
}

#[test]
fn claim_rules_on_the_providers_tokens_decide_alike_in_our_gateway_and_in_envoy() {
    let dir = TempDir::new();
    let keys = dir.0.join("idp-keys.json");
    let port = free_port();
    let client = |id: &str, extra: serde_json::Value| {
        let mut c = json!({"client_id": id, "client_secret": format!("{id}-secret"),
            "grant_types": ["client_credentials"], "redirect_uris": [], "response_types": [],
            "scope": "orders:read"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let clients = json!([
        client(
            "ops-client",
            json!({"groups": ["ops", "staff"], "org": {"tier": "premium"}})
        ),
        client("plain-client", json!({})),
    ]);
    let idp = Idp::start_with(port, &keys, &clients.to_string());
    let upstream = echo();
    let mut config = jwt_config(&idp.issuer());
    config["rules"] = json!([
        {"match": {"prefix": "/ops"}, "requires": {"provider": "idp", "claims": [
            {"claim": "groups", "contains": "ops"}
        ]}},
        {"match": {"prefix": "/premium"}, "requires": {"provider": "idp", "claims": [
            {"claim": "org.tier", "one_of": ["premium", "enterprise"]}
        ]}},
        {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
    ]);
    let (gw, envoy) = both_hosts(port, upstream, &config);
    let ops = idp.token_for("ops-client", "ops-client-secret", RESOURCES[0]);
    let plain = idp.token_for("plain-client", "plain-client-secret", RESOURCES[0]);
    for (host, base) in [
        ("portcullis", gw.url()),
        ("envoy", format!("http://{}", envoy.listener)),
    ] {
        let at = |path: &str, token: &str| {
            send(
                &base,
                "GET",
                path,
                &[("authorization", &format!("Bearer {token}"))],
                b"",
            )
            .unwrap()
        };
        for (path, token, status) in [
            ("/ops/deploy", &ops, 200),
            ("/ops/deploy", &plain, 403),
            ("/premium", &ops, 200),
            ("/premium", &plain, 403),
            ("/orders", &plain, 200),
        ] {
            let r = at(path, token);
            assert_eq!(r.status, status, "{path} through {host}: {}", r.body);
            if status == 403 {
                assert_eq!(
                    r.json()["message"],
                    "the token's claims do not satisfy this route's rules",
                    "{host}"
                );
                assert_eq!(r.headers.get_str("www-authenticate"), None, "{host}");
            }
        }
    }
}

#[test]
fn opaque_tokens_are_introspected_at_the_provider_in_our_gateway_and_in_envoy() {
    let dir = TempDir::new();
    let keys = dir.0.join("idp-keys.json");
    let port = free_port();
    // `app` gets opaque access tokens (bound to no resource server); `rs` is the
    // gateway's own client at the introspection endpoint.
    let clients = json!([
        {"client_id": "app", "client_secret": "app-secret", "grant_types": ["client_credentials"],
            "redirect_uris": [], "response_types": [], "scope": "orders:read", "userinfo_tokens": true},
        {"client_id": "rs", "client_secret": "rs-secret", "grant_types": [],
            "redirect_uris": [], "response_types": []},
    ]);
    let idp = Idp::start_with(port, &keys, &clients.to_string());
    let upstream = echo();
    let config = json!({
        "providers": {"idp": {
            "issuer": idp.issuer(),
            "introspection": {"cluster": "idp", "path": "/token/introspection",
                "authority": format!("127.0.0.1:{port}"), "client_id": "rs",
                "client_secret": "rs-secret", "cache_ttl_seconds": 1},
            "consumer": {"id_claim": "client_id"}
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp", "scopes": ["orders:read"]}}]
    });
    let (gw, envoy) = both_hosts(port, upstream, &config);
    let token = idp.token_for("app", "app-secret", "");
    assert_eq!(token.split('.').count(), 1, "an opaque token: {token}");
    for (host, base) in [
        ("portcullis", gw.url()),
        ("envoy", format!("http://{}", envoy.listener)),
    ] {
        let r = through(&base, &token);
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(
            r.upstream_header("x-consumer-id").as_deref(),
            Some("app"),
            "{host}"
        );
        let r = through(&base, "not-a-token-the-idp-issued");
        assert_eq!(r.status, 401, "{host}: {}", r.body);
        assert!(
            r.headers
                .get_str("www-authenticate")
                .unwrap_or("")
                .contains("invalid_token"),
            "{host}"
        );
    }
    // Revoked at the IdP (RFC 7009): refused once the cached answer (1 s) ends.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "app:app-secret")
    );
    let r = send(
        &idp.issuer(),
        "POST",
        "/token/revocation",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic),
        ],
        format!("token={token}").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "revocation: {}", r.body);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for (host, base) in [
        ("portcullis", gw.url()),
        ("envoy", format!("http://{}", envoy.listener)),
    ] {
        let r = through(&base, &token);
        assert_eq!(r.status, 401, "{host}: revoked, {}", r.body);
    }
}

/// A counter of the gateway's filters, from its admin endpoint.
fn gateway_counter(gw: &Gateway, name: &str) -> u64 {
    let m = send(
        &format!("http://127.0.0.1:{}", gw.admin),
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .unwrap();
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("portcullis_filter_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn introspection_is_discovered_authenticated_by_private_key_jwt_and_asked_once_per_token_at_a_time()
{
    let dir = TempDir::new();
    let keys = dir.0.join("idp-keys.json");
    let port = free_port();
    // The gateway's client at the IdP authenticates with a key pair made now: the IdP
    // registers the public half, the filter holds the private one.
    let rs_key = jwt_mint::Key::ec256("rs-key");
    let clients = json!([
        {"client_id": "app", "client_secret": "app-secret", "grant_types": ["client_credentials"],
            "redirect_uris": [], "response_types": [], "scope": "orders:read", "userinfo_tokens": true},
        {"client_id": "rs", "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256", "jwks": {"keys": [rs_key.jwk()]},
            "grant_types": [], "redirect_uris": [], "response_types": []},
    ]);
    let idp = Idp::start_with(port, &keys, &clients.to_string());
    let upstream = echo();
    // No path: the endpoint comes from the issuer's discovery document.
    let config = json!({
        "providers": {"idp": {
            "issuer": idp.issuer(),
            "introspection": {"cluster": "idp", "authority": format!("127.0.0.1:{port}"),
                "client_id": "rs", "client_auth": "private_key_jwt",
                "client_jwk": rs_key.private_jwk().unwrap()},
            "consumer": {"id_claim": "client_id"}
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp", "scopes": ["orders:read"]}}]
    });
    let (gw, envoy) = both_hosts(port, upstream, &config);
    let gateway_calls = || gateway_counter(&gw, "jwt_auth_introspections");
    let envoy_calls = || {
        envoy
            .stat("wasmcustom.jwt_auth_introspections")
            .unwrap_or(0)
    };
    let hosts: [(&str, String, &dyn Fn() -> u64, u64); 2] = [
        ("portcullis", gw.url(), &gateway_calls, 2),
        (
            "envoy",
            format!("http://{}", envoy.listener),
            &envoy_calls,
            1,
        ),
    ];
    for (host, base, calls, vms) in hosts {
        // Until the first tick has discovered the endpoint: 503 with Retry-After.
        let warm = idp.token_for("app", "app-secret", "");
        let started = std::time::Instant::now();
        let r = loop {
            let r = through(&base, &warm);
            if r.status != 503 || started.elapsed() > Duration::from_secs(10) {
                break r;
            }
            assert!(r.headers.get_str("retry-after").is_some(), "{host}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(
            r.upstream_header("x-consumer-id").as_deref(),
            Some("app"),
            "{host}"
        );

        // Twelve requests at once with a token no VM has seen: one introspection per VM.
        let token = idp.token_for("app", "app-secret", "");
        let before = calls();
        let barrier = std::sync::Barrier::new(12);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        through(&base, &token).status
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(statuses.iter().all(|s| *s == 200), "{host}: {statuses:?}");
        let made = calls() - before;
        assert!(
            (1..=vms).contains(&made),
            "{host}: {made} introspections of one token for 12 requests on {vms} VM(s)"
        );
    }
}
