//! Services over https. The upstream here is a second gateway listening on TLS with a
//! certificate made at run time; the gateway under test trusts it through the
//! service's `ca_file`, refuses it without, and names every TLS configuration error at
//! load.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use jwt_mint::{Key, jwks};
use serde_json::json;

/// A gateway on TLS in front of `up`, and its certificate's PEM.
fn tls_front_of(up: std::net::SocketAddr) -> (Gateway, String) {
    let (gw, cert) = tls_gateway_in_front_of(up);
    (gw, cert.cert.pem())
}

/// The gateway under test: service `s` at `url` (with `ca_file` when given), and a
/// plain route `/plain` to an echo upstream.
fn front(url: &str, ca_file: Option<&std::path::Path>, extra: &str) -> Result<Gateway, String> {
    let ca = ca_file.map_or(String::new(), |p| format!(", ca_file: \"{}\"", p.display()));
    Gateway::try_start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services:
  - {{ name: s, url: "{url}"{ca} }}
  - {{ name: plain, url: "http://{}" }}
{extra}
routes:
  - {{ name: plain, match: {{ paths: [/plain] }}, service: plain }}
  - {{ name: r, match: {{ paths: [/] }}, service: s }}
"#,
        echo()
    ))
}

#[test]
fn a_service_over_https_is_reached_when_its_certificate_is_trusted() {
    let (up, pem) = tls_front_of(echo());
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let gw = front(&format!("https://localhost:{}", up.port), Some(&ca), "").unwrap();
    let res = get(&gw, "/hello", &[]);
    assert_eq!(res.status, 200, "{}", res.body);
    // The echo upstream behind the TLS gateway saw the request.
    assert!(res.body.contains("/hello"), "{}", res.body);
}

#[test]
fn an_untrusted_certificate_is_a_502_and_the_gateway_keeps_serving() {
    let (up, _) = tls_front_of(echo());
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = TempDir::new();
    let ca = dir.0.join("other.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let gw = front(&format!("https://localhost:{}", up.port), Some(&ca), "").unwrap();
    let res = get(&gw, "/hello", &[]);
    assert_eq!(res.status, 502, "{}", res.body);
    assert!(
        res.body.contains("upstream TLS handshake failed"),
        "{}",
        res.body
    );
    assert_eq!(get(&gw, "/plain", &[]).status, 200);
}

#[test]
fn tls_configuration_errors_are_named_at_load() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.pem");
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (url, ca, expected) in [
        (
            "http://127.0.0.1:1",
            Some(&empty),
            "ca_file is for https urls",
        ),
        ("https://localhost:1", Some(&missing), "missing.pem"),
        ("https://localhost:1", Some(&empty), "no certificate in it"),
        (
            "ftp://localhost:1",
            None,
            "expected http://HOST:PORT or https://HOST:PORT",
        ),
    ] {
        let err = front(url, ca.map(|p| p.as_path()), "")
            .err()
            .unwrap_or_default();
        assert!(err.contains(expected), "{url}: {err}");
    }
    let mixed = Gateway::try_start(
        r#"
listeners: [{ name: main, address: "127.0.0.1:{PORT}" }]
services: [{ name: s, urls: ["http://127.0.0.1:1", "https://localhost:2"] }]
routes: [{ name: r, match: { paths: [/] }, service: s }]
"#,
    )
    .err()
    .unwrap_or_default();
    assert!(mixed.contains("mix http and https"), "{mixed}");
}

/// jwt-auth fetches its JWKS with `http_call` from a service over https.
#[test]
fn http_call_reaches_a_cluster_over_https() {
    let key = Key::ec256("k1");
    let jwks_up = answering(Duration::ZERO, Bytes::from(jwks(&[&key]).to_string()));
    let (up, pem) = tls_front_of(jwks_up);
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let config = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["ES256"],
            "remote_jwks": {"cluster": "idp", "path": "/jwks"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services:
  - {{ name: idp, url: "https://localhost:{}", ca_file: "{}" }}
  - {{ name: api, url: "http://{}" }}
filters: [{{ name: jwt, wasm: "{}", config: {config} }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: api, filters: [jwt] }}]
"#,
        up.port,
        ca.display(),
        echo(),
        wasm("jwt_auth"),
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key.sign(
        "ES256",
        json!({"iss": "https://idp.test", "aud": "api", "sub": "user-1", "iat": now, "exp": now + 600}),
    );
    let res = get(
        &gw,
        "/orders",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        res.upstream_header("x-consumer-id").as_deref(),
        Some("user-1"),
        "{}",
        res.body
    );
}

/// An https upstream that accepts the connection and never answers the handshake is a
/// timeout like any other, not a hung request.
#[test]
fn a_silent_tls_upstream_times_out() {
    let silent = background(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = l.accept().await.unwrap();
                held.push(s);
            }
        });
        addr
    });
    let dir = TempDir::new();
    let (_, ca, _) = localhost_cert(&dir);
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: s, url: "https://localhost:{}", ca_file: "{}", read_timeout_ms: 300, timeout_ms: 600 }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: s }}]
"#,
        silent.port(),
        ca.display()
    ));
    let started = std::time::Instant::now();
    let res = get(&gw, "/hello", &[]);
    assert_eq!(res.status, 504, "{}", res.body);
    assert!(started.elapsed() < Duration::from_secs(5));
}
