//! `key-auth` end to end, in our gateway and in Envoy: keys from the configuration and
//! from a key service (a real HTTP service on loopback), Kong key-auth's answers, and
//! the chain key-auth → tier-limiter → header-forwarder with the two others unchanged.

mod common;

use std::time::Duration;

use common::*;
use key_auth::directory::hash_string;
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use serde_json::json;

#[test]
fn api_keys_identify_consumers_for_the_limiter_and_the_forwarder_in_both_hosts() {
    let upstream = echo();
    // The key service holds only digests of keys made here.
    let doc = json!({"consumers": [{"id": "c-svc", "username": "svc", "tier": "free",
        "keys": [{"id": "svc-1", "hash": hash_string(b"svc-key")}]}]});
    let service = answering(Duration::ZERO, doc.to_string().into());
    let auth = json!({
        "consumers": [{"id": "c-ada", "username": "ada", "groups": ["ops"], "tier": "premium",
            "keys": [hash_string(b"ada-key")]}],
        "key_service": {"cluster": "keys", "path": "/consumers", "refresh_seconds": 60},
        "hide_credentials": true
    });
    let limit =
        json!({"tiers": {"free": {"hour": 3}, "premium": {"hour": 100}}, "default_tier": "free"});
    let forward = json!({"forward_authorization": true,
        "request": {"add": {"headers": {"x-who": "$(consumer.username)"}}}});
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
workers: 2
services:
  - {{ name: echo, url: "http://{upstream}" }}
  - {{ name: keys, url: "http://{service}" }}
filters:
  - {{ name: keys, wasm: "{}", config: {auth} }}
  - {{ name: limit, wasm: "{}", config: {limit} }}
  - {{ name: forward, wasm: "{}", config: {forward} }}
routes: [{{ name: api, match: {{ paths: [/] }}, service: echo, filters: [keys, limit, forward], strip_path: false }}]
"#,
        wasm("key_auth"),
        wasm("tier_limiter"),
        wasm("header_forwarder")
    ));
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream)
            .filter(WasmFilter::new(
                "keys",
                portcullis_testbed::wasm("key_auth"),
                &auth.to_string(),
            ))
            .filter(WasmFilter::new(
                "limit",
                portcullis_testbed::wasm("tier_limiter"),
                &limit.to_string(),
            ))
            .filter(WasmFilter::new(
                "forward",
                portcullis_testbed::wasm("header_forwarder"),
                &forward.to_string(),
            ))
            .cluster("keys", service),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (host, base) in [
        ("portcullis", gw.url()),
        ("envoy", format!("http://{}", envoy.listener)),
    ] {
        let get =
            |path: &str, headers: &[(&str, &str)]| send(&base, "GET", path, headers, b"").unwrap();
        // Kong key-auth's answers (docs.konghq.com/hub/kong-inc/key-auth): 401 with
        // "No API key found in request" (below: "Invalid authentication credentials").
        let r = get("/orders", &[]);
        assert_eq!(r.status, 401, "{host}");
        assert_eq!(r.json()["message"], "No API key found in request", "{host}");
        assert_eq!(
            r.headers.get_str("www-authenticate"),
            Some("Key realm=\"portcullis\""),
            "{host}"
        );

        // A key of the configuration, and spoofed identity removed.
        let r = get(
            "/orders",
            &[("apikey", "ada-key"), ("x-consumer-tier", "enterprise")],
        );
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(
            r.upstream_header("x-consumer-id").as_deref(),
            Some("c-ada"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-consumer-groups").as_deref(),
            Some("ops"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-consumer-tier").as_deref(),
            Some("premium"),
            "{host}"
        );
        assert_eq!(r.upstream_header("x-who").as_deref(), Some("ada"), "{host}");
        assert_eq!(r.upstream_header("apikey"), None, "{host}: hidden");
        assert_eq!(
            r.upstream_header("authorization"),
            None,
            "{host}: no bearer made of a key"
        );

        // A key of the service, once the first tick has fetched it (503 until then).
        let started = std::time::Instant::now();
        let r = loop {
            let r = get("/orders?apikey=svc-key&page=2", &[]);
            if r.status != 503 || started.elapsed() > Duration::from_secs(10) {
                break r;
            }
            assert!(r.headers.get_str("retry-after").is_some(), "{host}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(
            r.upstream_header("x-consumer-id").as_deref(),
            Some("c-svc"),
            "{host}"
        );
        assert_eq!(
            r.upstream_header("x-credential-identifier").as_deref(),
            Some("svc-1"),
            "{host}"
        );
        assert_eq!(
            r.json()["path"],
            "/orders?page=2",
            "{host}: the key left the query"
        );
        // Now that the service's keys are known, a key in neither is invalid.
        let r = get("/orders", &[("apikey", "not-a-key")]);
        assert_eq!(r.status, 401, "{host}");
        assert_eq!(
            r.json()["message"],
            "Invalid authentication credentials",
            "{host}"
        );

        // The free tier's hourly budget (3) holds for this consumer across workers:
        // one spent above, two more, then 429.
        let statuses: Vec<u16> = (0..5)
            .map(|_| get("/orders", &[("apikey", "svc-key")]).status)
            .collect();
        assert_eq!(statuses, [200, 200, 429, 429, 429], "{host}");
    }
}

#[test]
fn key_hash_prints_the_digest_the_configuration_holds_and_makes_fresh_keys() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let hash = |key: &str| {
        let mut child = Command::new(portcullis_testbed::built_binary("portcullis"))
            .arg("key-hash")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(key.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(
        hash("ada-key\n"),
        (true, format!("{}\n", hash_string(b"ada-key")))
    );
    assert!(!hash("\n").0, "no key, no digest");
    let out = Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["key-hash", "--new"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].len(), 64, "256 bits in hex");
    assert_eq!(lines[1], hash_string(lines[0].as_bytes()));
}
