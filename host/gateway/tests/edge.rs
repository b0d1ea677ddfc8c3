//! The gateway's edge, attacked as a client would with nothing but crafted requests:
//! path tricks against a protected route behind a public one, forged forwarding
//! headers, a client's own identity headers. In our gateway and in Envoy with the
//! shipped edge settings.

mod common;

use common::*;
use jwt_mint::{Key, jwks};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use serde_json::json;

/// Requests that try to reach `/orders/42` (protected) through `/health` (public).
const TRICKS: &[&[u8]] = &[
    b"/health/../orders/42",
    b"/health/./../orders/42",
    b"/health/%2e%2e/orders/42",
    b"/health/%2E%2e/orders/42",
    b"/health/.%2e/orders/42",
    b"/health//../orders/42",
    b"/health/..//orders/42",
    b"//health/../orders/42",
    b"/health/..%2forders/42",
    b"/health%2F..%2Forders%2F42",
    b"/health/..%5corders/42",
    b"/health/..%5Corders%5C42",
    b"/health\\..\\orders\\42",
    b"/health/..;/orders/42",
    b"/health;/../orders/42",
    b"/health;x=1/../orders/42",
    b"/health/%2e%2e;/orders/42",
    b"/health/.;/../orders/42",
    b"/health/%00/../../orders/42",
    b"/health/%2e%2e%00/orders/42",
    b"/health/%c0%ae%c0%ae/orders/42",
    b"/health/%e0%80%ae%e0%80%ae/orders/42",
    b"/health/%c0%af../orders/42",
    b"/health/%252e%252e/orders/42",
    b"/healthcare/../orders/42",
    b"/healthcare",
    b"/health/../../orders/42",
    b"/health/%2e/../orders/42",
    b"/HEALTH/../orders/42",
];

fn auth_config(key: &Key, public_rule: bool) -> serde_json::Value {
    let mut rules = vec![json!({"match": {"prefix": "/"}, "requires": {"provider": "idp"}})];
    if public_rule {
        rules.insert(0, json!({"match": {"path_separated_prefix": "/health"}}));
    }
    json!({
        "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": jwks(&[key]), "algorithms": ["ES256"]}},
        "rules": rules
    })
}

/// A token the provider of [`auth_config`] accepts.
fn token_of(key: &Key) -> String {
    key.sign(
        "ES256",
        json!({"iss": "https://idp.test", "sub": "u1", "exp": 4_102_444_800u64}),
    )
}

/// Sends every trick without a token: each is refused, or reaches the upstream on a
/// path that even a lax reading keeps under `/health`.
fn assert_no_trick_passes(host: &str, addr: &str) {
    let mut refused = 0;
    for trick in TRICKS {
        let shown = String::from_utf8_lossy(trick);
        let (status, body) = raw_get(addr, trick, &[]);
        if (200..300).contains(&status) {
            let seen: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("{host}: {shown}: not from the echo upstream: {body}"));
            let path = seen["path"].as_str().unwrap_or("");
            let lax = lax_reading(path);
            assert!(
                lax == "/health" || lax.starts_with("/health/"),
                "{host}: {shown} reached the upstream as {path} (read as {lax}) without a token"
            );
        } else {
            assert!(
                (400..500).contains(&status),
                "{host}: {shown}: {status} {body}"
            );
            refused += 1;
        }
    }
    assert!(
        refused > TRICKS.len() / 2,
        "{host}: most tricks are refused"
    );
}

/// The controls: the public path is public, the protected one needs a token and
/// passes with one. Without them the trick test could pass for a broken setup.
fn assert_controls(host: &str, addr: &str, token: &str) {
    assert_eq!(raw_get(addr, b"/health", &[]).0, 200, "{host}");
    assert_eq!(raw_get(addr, b"/health/live", &[]).0, 200, "{host}");
    assert_eq!(raw_get(addr, b"/orders/42", &[]).0, 401, "{host}");
    let bearer = format!("Bearer {token}");
    let (status, body) = raw_get(addr, b"/orders/42", &[("authorization", &bearer)]);
    assert_eq!(status, 200, "{host}: {body}");
}

#[test]
fn path_tricks_never_reach_a_protected_route_without_a_token_in_both_hosts() {
    let key = Key::ec256("k1");
    let token = token_of(&key);
    let upstream = echo();

    // The quickstart's shape: one route, the public prefix is a jwt-auth rule.
    let auth = auth_config(&key, true);
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters: [{{ name: auth, wasm: "{}", config: {auth} }}]
routes: [{{ name: api, match: {{ paths: [/] }}, service: echo, filters: [auth], strip_path: false }}]
"#,
        wasm("jwt_auth")
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    assert_controls("portcullis, rules", &addr, &token);
    assert_no_trick_passes("portcullis, rules", &addr);

    // The public prefix as a gateway route of its own, without filters.
    let auth = auth_config(&key, false);
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters: [{{ name: auth, wasm: "{}", config: {auth} }}]
routes:
  - {{ name: health, match: {{ path_separated_prefixes: [/health] }}, service: echo, strip_path: false }}
  - {{ name: api, match: {{ paths: [/] }}, service: echo, filters: [auth], strip_path: false }}
"#,
        wasm("jwt_auth")
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    assert_controls("portcullis, routes", &addr, &token);
    assert_no_trick_passes("portcullis, routes", &addr);

    // Envoy with the shipped edge settings and the same filter and rules.
    let envoy = Envoy::start(&EnvoyConfig::new(upstream).filter(WasmFilter::new(
        "auth",
        portcullis_testbed::wasm("jwt_auth"),
        &auth_config(&key, true).to_string(),
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = envoy.listener.to_string();
    assert_controls("envoy", &addr, &token);
    assert_no_trick_passes("envoy", &addr);
}

#[test]
fn the_upstream_gets_the_normalized_path_and_bad_paths_are_400() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:{{PORT}}" }}
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
routes: [{{ name: api, match: {{ paths: [/] }}, service: echo, strip_path: false }}]
"#
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    let path_of = |target: &[u8]| {
        let (status, body) = raw_get(&addr, target, &[]);
        assert_eq!(status, 200, "{}: {body}", String::from_utf8_lossy(target));
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(path_of(b"/a/./b/../c//d?x=/../%2f"), "/a/c/d?x=/../%2f");
    assert_eq!(path_of(b"/%7eada/%41%3a%3f"), "/~ada/A%3A%3F");
    for (target, why) in [
        (&b"/../etc/passwd"[..], "climbs above the root"),
        (b"/a/%2e%2e/%2e%2e/b", "climbs above the root"),
        (b"/a%2fb", "encoded slash"),
        (b"/a%5Cb", "encoded slash"),
        (b"/a%zzb", "invalid percent-encoding"),
        (b"/a%00b", "NUL or control"),
        (b"/a%c0%afb", "not UTF-8"),
        (b"/a\\b", "backslash"),
        (b"/a/..;/b", "dot segment with parameters"),
    ] {
        let (status, body) = raw_get(&addr, target, &[]);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(target));
        assert!(body.contains(why), "{body}");
        assert!(body.contains("request_id"), "{body}");
    }
}

#[test]
fn the_escaped_slash_action_is_per_listener() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:{{PORT}}", escaped_slashes: keep }}
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
routes:
  - {{ name: files, match: {{ path_separated_prefixes: [/files] }}, service: echo, strip_path: false }}
"#
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    let (status, body) = raw_get(&addr, b"/files/a%2fb", &[]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["path"], "/files/a%2Fb", "kept, as one segment");
    let bad = Gateway::try_start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}", escaped_slashes: sometimes }}]
services: [{{ name: echo, url: "http://{upstream}" }}]
"#
    ));
    assert!(bad.is_err_and(|e| e.contains("escaped_slashes")));
}

/// A client's forwarding and identity headers on routes with and without filters.
#[test]
fn a_client_cannot_set_forwarding_or_identity_headers() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
identity_headers: [x-user-email, X_Tenant_Id]
services: [{{ name: echo, url: "http://{upstream}" }}]
filters: [{{ name: noop, wasm: "{}" }}]
routes:
  - {{ name: plain, match: {{ path_separated_prefixes: [/plain] }}, service: echo, strip_path: false }}
  - {{ name: filtered, match: {{ path_separated_prefixes: [/filtered] }}, service: echo, filters: [noop], strip_path: false }}
"#,
        wasm("noop_filter")
    ));
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
        ("x-real-ip", "6.6.6.6"),
        ("x-consumer-id", "admin"),
        ("x-consumer-username", "admin"),
        ("x-consumer-groups", "admins"),
        ("x-consumer-tier", "premium"),
        ("x-credential-identifier", "forged"),
        ("x-anonymous-consumer", "false"),
        ("x-user-email", "ceo@example.com"),
        // The underscore spelling, which CGI-style upstreams read as the same header.
        ("x_consumer_id", "admin"),
        ("x_credential_identifier", "forged"),
        ("x_user_email", "ceo@example.com"),
        // Configured as `X_Tenant_Id`: the same header in any spelling.
        ("x-tenant-id", "acme"),
        ("x_tenant_id", "acme"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x_forwarded_host", "evil.example"),
        ("x-forwarded_proto", "https"),
        ("x_forwarded_port", "443"),
        ("x_real_ip", "6.6.6.6"),
    ];
    for path in ["/plain/x", "/filtered/x"] {
        let r = get(&gw, path, &forged);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let h = |n: &str| r.upstream_header(n);
        assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{path}");
        assert_eq!(
            h("x-forwarded-host").as_deref(),
            Some("gateway.test"),
            "{path}"
        );
        assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"), "{path}");
        assert_eq!(
            h("x-forwarded-port").as_deref(),
            Some(&*gw.port.to_string()),
            "{path}"
        );
        assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"), "{path}");
        for (name, _) in &forged[4..] {
            if *name != "x-real-ip" {
                assert_eq!(h(name), None, "{path}: {name} reached the upstream");
            }
        }
    }
}

/// Behind a trusted proxy the chain is extended and the client's address taken from
/// it; identity headers survive only on a route that trusts them.
#[test]
fn forwarding_headers_are_believed_from_trusted_proxies_only() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}", trusted_proxies: ["127.0.0.0/8", "10.0.0.0/8"] }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
routes:
  - {{ name: inner, match: {{ path_separated_prefixes: [/inner] }}, service: echo, strip_path: false, trust_identity_headers: true }}
  - {{ name: api, match: {{ paths: [/] }}, service: echo, strip_path: false }}
"#
    ));
    let sent = [
        ("x-forwarded-for", "198.51.100.7, 10.1.2.3"),
        ("x-forwarded-host", "shop.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-consumer-id", "u-1"),
        // Never believed, so never passed on: an upstream could read it as the other.
        ("x_forwarded_host", "evil.example"),
    ];
    let r = get(&gw, "/api", &sent);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("198.51.100.7, 10.1.2.3, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(r.upstream_header("x_forwarded_host"), None);
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        r.upstream_header("x-real-ip").as_deref(),
        Some("198.51.100.7")
    );
    assert_eq!(
        r.upstream_header("x-consumer-id"),
        None,
        "a route that does not trust identity headers drops them even from a proxy"
    );
    let r = get(&gw, "/inner/x", &sent);
    assert_eq!(r.upstream_header("x-consumer-id").as_deref(), Some("u-1"));

    let bad = Gateway::try_start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}", trusted_proxies: ["10.0.0.0/40"] }}]
services: [{{ name: echo, url: "http://{upstream}" }}]
"#
    ));
    assert!(bad.is_err_and(|e| e.contains("trusted_proxies")));
}

/// Routing sees the request as it will be forwarded: a route that does not keep a
/// trusted proxy's identity headers cannot be chosen by one, because its match rules
/// may not name one (the header would be gone by the time the request left). Such a
/// route only ever matched a value nobody verified: a client behind the proxy sending
/// `x-consumer-username: admin` took it, and the header was stripped after.
#[test]
fn routes_match_identity_headers_only_where_they_are_kept() {
    let upstream = echo();
    let config = |staff: &str| {
        format!(
            r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}", trusted_proxies: ["127.0.0.0/8"] }}]
access_log: "off"
identity_headers: [X_User_Email]
services: [{{ name: echo, url: "http://{upstream}" }}]
routes:
  - {{ name: staff, {staff}, service: echo, strip_path: false }}
  - {{ name: api, match: {{ paths: [/] }}, service: echo, strip_path: false }}
"#
        )
    };
    for rule in [
        "x-consumer-username: admin",
        "X-Consumer-Groups: admins",
        "x_consumer_id: admin",
        "x-credential-identifier: admin",
        "x-anonymous-consumer: \"false\"",
        "x-user-email: ceo@example.com",
    ] {
        let refused = Gateway::try_start(&config(&format!(
            "match: {{ paths: [/], headers: {{ {rule} }} }}"
        )));
        let Err(e) = refused else {
            panic!("a route matching `{rule}` without trust_identity_headers started");
        };
        assert!(
            e.contains("route `staff`") && e.contains("trust_identity_headers"),
            "{rule}: {e}"
        );
    }
    // A route that keeps a trusted proxy's identity headers may route on them: what it
    // matched is what the upstream gets.
    let gw = Gateway::start(&config(
        "match: { paths: [/], headers: { x-consumer-username: admin } }, trust_identity_headers: true",
    ));
    let r = get(&gw, "/x", &[("x-consumer-username", "admin")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-consumer-username").as_deref(),
        Some("admin")
    );
    let r = get(&gw, "/x", &[]);
    assert_eq!(r.upstream_header("x-consumer-username"), None);
}

/// A route marked `trust_identity_headers` does not trust a client that is not a
/// trusted proxy.
#[test]
fn trusting_identity_headers_needs_a_trusted_peer() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}", trusted_proxies: ["10.0.0.0/8"] }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
routes:
  - {{ name: inner, match: {{ paths: [/] }}, service: echo, trust_identity_headers: true }}
"#
    ));
    let r = get(&gw, "/x", &[("x-consumer-id", "admin")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-consumer-id"), None);
}

#[test]
fn envoy_drops_a_clients_forwarding_and_identity_headers_before_its_filters() {
    let upstream = echo();
    let envoy = Envoy::start(&EnvoyConfig::new(upstream).filter(WasmFilter::new(
        "noop",
        portcullis_testbed::wasm("noop_filter"),
        "",
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    let r = get_url(
        &format!("http://{}", envoy.listener),
        "/x",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-consumer-id", "admin"),
            ("x-credential-identifier", "forged"),
            ("x_consumer_id", "admin"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x_consumer_id"),
        None,
        "the underscore spelling"
    );
    // Envoy writes its own address for a loopback peer: one address, not the forgery.
    let xff = r.upstream_header("x-forwarded-for").unwrap_or_default();
    assert!(!xff.contains("6.6.6.6") && !xff.contains(','), "{xff}");
    assert_eq!(r.upstream_header("x-forwarded-host"), None);
    assert_eq!(r.upstream_header("x-consumer-id"), None);
    assert_eq!(r.upstream_header("x-credential-identifier"), None);
}

fn get_url(base: &str, path: &str, headers: &[(&str, &str)]) -> Res {
    send(base, "GET", path, headers, b"").unwrap()
}

/// A Host that is not `host[:port]` is a 400, not a name a wildcard route matches by
/// its suffix and the upstream gets in `X-Forwarded-Host`.
#[test]
fn a_host_that_is_not_host_and_port_is_400() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
routes:
  - {{ name: wild, match: {{ hosts: ["*.example.com"], paths: [/] }}, service: echo, preserve_host: true }}
  - {{ name: api, match: {{ paths: [/] }}, service: echo }}
"#
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    let with_host = |target: &str, host: &[u8]| {
        let mut req = format!("GET {target} HTTP/1.1\r\nconnection: close\r\nhost: ").into_bytes();
        req.extend_from_slice(host);
        req.extend_from_slice(b"\r\n\r\n");
        raw_http(&addr, &req)
    };
    for host in [
        &b"evil.com/.example.com"[..],
        b"a#.example.com",
        b"a?.example.com",
        b"evil.com,.example.com",
        b"evil.com;.example.com",
        b"a%2f.example.com",
        b"user@a.example.com",
        b"a b.example.com",
        b"\xffa.example.com",
        b"a.example.com:80x",
        b"a.example.com:",
        b"a.example.com:80:80",
        b"a.example.com:123456",
        b":80",
        b"[::1",
        b"[a.example.com]",
        b"[::1]x",
    ] {
        let (status, body) = with_host("/x", host);
        let shown = String::from_utf8_lossy(host);
        assert_eq!(status, 400, "{shown}: {body}");
        assert!(body.contains("Host"), "{shown}: {body}");
    }
    // HTTP/1.1 must name its host (RFC 9112 3.2); HTTP/1.0 need not.
    let (status, body) = raw_http(&addr, b"GET /x HTTP/1.1\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("without a Host"), "{body}");
    let (status, body) = raw_http(&addr, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    // The absolute form's authority is the host: its userinfo too.
    let (status, body) = with_host("http://user@a.example.com/x", b"a.example.com");
    assert_eq!(status, 400, "{body}");

    for (host, route_host) in [
        (&b"a.example.com"[..], "a.example.com"),
        (b"A_b-1.Example.COM:8080", "A_b-1.Example.COM:8080"),
        (b"127.0.0.1:80", ""),
        (b"[::1]:8080", ""),
        (b"", ""),
    ] {
        let (status, body) = with_host("/x", host);
        let shown = String::from_utf8_lossy(host);
        assert_eq!(status, 200, "{shown}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        let got_host = seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == "host")
            .map(|p| p[1].as_str().unwrap().to_owned());
        if !route_host.is_empty() {
            assert_eq!(got_host.as_deref(), Some(route_host), "{shown}: preserved");
        }
    }
}

/// A fully-qualified Host (`admin.example.com.`, with the root's dot) names the same
/// host as `admin.example.com` to DNS and to most upstreams: it takes that host's route,
/// auth filter included, never the catch-all beside it.
#[test]
fn a_trailing_dot_host_takes_the_hosts_route() {
    let key = Key::ec256("k1");
    let token = token_of(&key);
    let upstream = echo();
    let auth = auth_config(&key, false);
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters: [{{ name: auth, wasm: "{}", config: {auth} }}]
routes:
  - {{ name: admin, match: {{ hosts: [admin.example.com], paths: [/] }}, service: echo, filters: [auth], preserve_host: true }}
  - {{ name: wild, match: {{ hosts: ["*.internal.example.com"], paths: [/] }}, service: echo, filters: [auth] }}
  - {{ name: ops, match: {{ hosts: [ops.example.com.], paths: [/] }}, service: echo, filters: [auth] }}
  - {{ name: public, match: {{ paths: [/] }}, service: echo }}
"#,
        wasm("jwt_auth")
    ));
    let addr = format!("127.0.0.1:{}", gw.port);
    let with_host = |target: &str, host: &str, extra: &str| {
        raw_http(
            &addr,
            format!("GET {target} HTTP/1.1\r\nconnection: close\r\nhost: {host}\r\n{extra}\r\n")
                .as_bytes(),
        )
    };
    // The controls: the protected hosts need a token, any other host is public.
    assert_eq!(with_host("/x", "admin.example.com", "").0, 401);
    assert_eq!(with_host("/x", "a.internal.example.com", "").0, 401);
    assert_eq!(with_host("/x", "other.example.com", "").0, 200);
    // A host configured with the dot is the same host.
    assert_eq!(with_host("/x", "ops.example.com", "").0, 401);
    for host in [
        "admin.example.com.",
        "ADMIN.example.com.",
        "admin.example.com.:8080",
        "admin.example.com..",
        "admin.example.com..:8080",
        "a.internal.example.com.",
        "a.internal.example.com.:443",
        "ops.example.com.",
    ] {
        let (status, body) = with_host("/x", host, "");
        assert!(
            status == 401 || status == 400,
            "{host} took the public route: {status} {body}"
        );
        // The authority of an absolute-form target is the host too.
        let (status, body) = with_host(&format!("http://{host}/x"), "other.example.com", "");
        assert!(
            status == 401 || status == 400,
            "http://{host}/x took the public route: {status} {body}"
        );
    }
    // With a token it passes, and the upstream sees the name without the dot, as
    // routing did.
    let bearer = format!("authorization: Bearer {token}\r\n");
    let (status, body) = with_host("/x", "admin.example.com.:8080", &bearer);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let header = |name: &str| {
        seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == name)
            .map(|p| p[1].as_str().unwrap().to_owned())
    };
    assert_eq!(header("host").as_deref(), Some("admin.example.com:8080"));
    assert_eq!(
        header("x-forwarded-host").as_deref(),
        Some("admin.example.com:8080")
    );
    // A lone dot is no host name.
    assert_eq!(with_host("/x", ".", "").0, 400);
    assert_eq!(with_host("/x", ".:80", "").0, 400);
}

/// Requests that try to reach `/admin/stats` (a route with an auth filter) through the
/// public catch-all, with `;` parameters that Tomcat, Spring or Jetty drop.
const PARAM_TRICKS: &[&[u8]] = &[
    b"/admin;x/stats",
    b"/admin;/stats",
    b"/admin;jsessionid=1/stats",
    b"/admin;x",
    b"/;/admin/stats",
    b"/;x=1/admin/stats",
    b"/;/;/admin",
    b"/admin%3Bx/stats",
    b"/%3B/admin/stats",
    b"/%3b/admin/stats",
    b"/x/..;/admin/stats",
    b"/;/x/../admin/stats",
];

#[test]
fn parameters_that_would_change_the_route_are_400() {
    let key = Key::ec256("k1");
    let upstream = echo();
    let auth = auth_config(&key, false);
    for admin in ["path_separated_prefixes: [/admin]", "paths: [/admin]"] {
        let gw = Gateway::start(&format!(
            r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters: [{{ name: auth, wasm: "{}", config: {auth} }}]
routes:
  - {{ name: admin, match: {{ {admin} }}, service: echo, filters: [auth], strip_path: false }}
  - {{ name: api, match: {{ paths: [/] }}, service: echo, strip_path: false }}
"#,
            wasm("jwt_auth")
        ));
        let addr = format!("127.0.0.1:{}", gw.port);
        // The controls, and parameters that keep the route pass as they came.
        assert_eq!(raw_get(&addr, b"/admin/stats", &[]).0, 401, "{admin}");
        assert_eq!(raw_get(&addr, b"/admin/stats;v=1", &[]).0, 401, "{admin}");
        for public in [&b"/other"[..], b"/cart;jsessionid=1/items", b"/a;b=c/d?x=;"] {
            let (status, body) = raw_get(&addr, public, &[]);
            assert_eq!(status, 200, "{admin}: {body}");
        }
        for trick in PARAM_TRICKS {
            let shown = String::from_utf8_lossy(trick);
            let (status, body) = raw_get(&addr, trick, &[]);
            if (200..300).contains(&status) {
                let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
                let lax = lax_reading(seen["path"].as_str().unwrap_or(""));
                assert!(
                    lax != "/admin" && !lax.starts_with("/admin/"),
                    "{admin}: {shown} reached the upstream without a token (read as {lax})"
                );
            } else {
                assert!(
                    (400..500).contains(&status),
                    "{admin}: {shown}: {status} {body}"
                );
            }
        }
        let (status, body) = raw_get(&addr, b"/;/admin/stats", &[]);
        assert_eq!(status, 400, "{admin}: {body}");
        assert!(body.contains("parameters"), "{body}");
    }
}
