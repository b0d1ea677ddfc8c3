//! The gateway end to end: the real binary on loopback in front of real upstreams.

mod common;

use std::time::Duration;

use common::*;

fn single_route(upstream: std::net::SocketAddr, service_extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:{{PORT}}
admin:
  address: 127.0.0.1:{{ADMIN}}
access_log: "{{DIR}}/access.log"
workers: 2
services:
  - name: backend
    url: http://{upstream}
{service_extra}
routes:
  - name: all
    match: {{ paths: [/] }}
    service: backend
"#
    )
}

fn access_log(gw: &Gateway) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.0.join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn most_specific_route_wins_and_no_match_is_a_json_404() {
    let (a, b, c) = (echo(), echo(), echo());
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
workers: 1
access_log: "off"
services:
  - {{ name: a, url: "http://{a}" }}
  - {{ name: b, url: "http://{b}" }}
  - {{ name: c, url: "http://{c}" }}
routes:
  - {{ name: orders, match: {{ paths: [/orders] }}, service: a, strip_path: false }}
  - {{ name: orders-v2, match: {{ paths: [/orders], methods: [POST], headers: {{ x-version: "2" }} }}, service: b, strip_path: false }}
  - {{ name: api-host, match: {{ hosts: [api.example.com], paths: [/] }}, service: c }}
"#
    ));
    let which = |r: &Res| r.upstream_header("host").unwrap_or_default();
    assert_eq!(which(&get(&gw, "/orders/1", &[])), a.to_string());
    let r = send(&gw.url(), "POST", "/orders", &[("x-version", "2")], b"{}").unwrap();
    assert_eq!(which(&r), b.to_string());
    assert_eq!(
        which(&get(&gw, "/orders/1", &[("host", "api.example.com")])),
        c.to_string(),
        "host beats path"
    );
    let r = get(&gw, "/nothing", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "no route matched this request");
    assert!(
        r.json()["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}

#[test]
fn strip_path_and_preserve_host_follow_kong() {
    let up = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: s, url: "http://{up}" }}]
routes:
  - {{ name: stripped, match: {{ paths: [/api] }}, service: s }}
  - {{ name: kept, match: {{ paths: [/keep] }}, service: s, strip_path: false, preserve_host: true }}
"#
    ));
    let r = get(&gw, "/api/orders?x=1", &[("host", "shop.test")]);
    assert_eq!(r.json()["path"], "/orders?x=1");
    assert_eq!(r.upstream_header("host").as_deref(), Some(&*up.to_string()));
    let r = get(&gw, "/keep/it", &[("host", "shop.test")]);
    assert_eq!(r.json()["path"], "/keep/it");
    assert_eq!(r.upstream_header("host").as_deref(), Some("shop.test"));
}

#[test]
fn forwarding_headers_are_set_and_hop_by_hop_headers_removed() {
    let gw = Gateway::start(&single_route(echo(), ""));
    let r = get(
        &gw,
        "/x",
        &[
            ("connection", "x-secret"),
            ("x-secret", "s"),
            ("te", "trailers"),
            ("x-request-id", "abc-123"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-secret"), None, "named in Connection");
    assert_eq!(r.upstream_header("te"), None);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("gateway.test")
    );
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("abc-123")
    );
    // Without a Connection header, the fixed list alone.
    let r = get(
        &gw,
        "/x",
        &[
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eDp5"),
            ("x-kept", "1"),
        ],
    );
    assert_eq!(r.upstream_header("keep-alive"), None);
    assert_eq!(r.upstream_header("proxy-authorization"), None);
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("1"));
    let r = get(&gw, "/x", &[]);
    assert_eq!(
        r.upstream_header("x-request-id").map(|s| s.len()),
        Some(32),
        "generated when absent"
    );
}

/// `Connection` names the client's own hop-by-hop headers, never the gateway's: the
/// forwarding headers, the request id and the identity an auth filter set survive a
/// client that nominates them.
#[test]
fn a_client_cannot_make_the_gateway_drop_its_own_headers_through_connection() {
    let up = echo();
    let auth = serde_json::json!({"consumers": [{"id": "c-ada", "username": "ada",
        "keys": [key_auth::directory::hash_string(b"ada-key")]}]});
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: s, url: "http://{up}" }}]
filters: [{{ name: keys, wasm: "{}", config: {auth} }}]
routes:
  - {{ name: keyed, match: {{ path_separated_prefixes: [/keyed] }}, service: s, filters: [keys] }}
  - {{ name: all, match: {{ paths: [/] }}, service: s }}
"#,
        wasm("key_auth")
    ));
    let ours = "x-real-ip, x-forwarded-for, x-forwarded-proto, x-forwarded-host, \
                x-forwarded-port, x-request-id, x-consumer-id, x-consumer-username, \
                x-credential-identifier, x-secret";
    for path in ["/x", "/keyed/x"] {
        let r = get(
            &gw,
            path,
            &[
                ("connection", ours),
                ("x-secret", "s"),
                ("apikey", "ada-key"),
            ],
        );
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let h = |n: &str| r.upstream_header(n);
        assert_eq!(h("x-secret"), None, "{path}: the client's own header goes");
        assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"), "{path}");
        assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{path}");
        assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"), "{path}");
        assert_eq!(
            h("x-forwarded-host").as_deref(),
            Some("gateway.test"),
            "{path}"
        );
        assert_eq!(
            h("x-forwarded-port").as_deref(),
            Some(&*gw.port.to_string()),
            "{path}"
        );
        assert_eq!(h("x-request-id").map(|s| s.len()), Some(32), "{path}");
        if path == "/keyed/x" {
            assert_eq!(h("x-consumer-id").as_deref(), Some("c-ada"));
            assert_eq!(h("x-consumer-username").as_deref(), Some("ada"));
        }
    }
}

#[test]
fn refused_upstream_is_502_and_timeout_is_504_both_logged_as_ours() {
    let gw = Gateway::start(&single_route(refused(), ""));
    let r = get(&gw, "/x", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["message"], "upstream connection failed");
    let log = access_log(&gw);
    assert_eq!(log[0]["status"], 502);
    assert!(log[0]["upstream_status"].is_null());

    let gw = Gateway::start(&single_route(
        slow(Duration::from_secs(5)),
        "    read_timeout_ms: 300",
    ));
    let r = get(&gw, "/x", &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["message"], "upstream timed out");
}

/// The query can carry an API key, an access token or an authorization code: it stays
/// out of the access log, valid or not, and whatever the filters do with it.
#[test]
fn the_access_log_keeps_the_query_out() {
    let gw = Gateway::start(&single_route(echo(), ""));
    let r = get(
        &gw,
        "/orders?apikey=SECRET-KEY&access_token=SECRET-TOKEN",
        &[],
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let log = std::fs::read_to_string(gw.dir.0.join("access.log")).unwrap();
    assert!(!log.contains("SECRET"), "{log}");
    let e = &access_log(&gw)[0];
    assert_eq!(e["path"], "/orders");
}

#[test]
fn upstream_500_passes_through_and_is_logged_as_upstream_status() {
    let gw = Gateway::start(&single_route(echo(), ""));
    let r = get(&gw, "/status/500", &[]);
    assert_eq!(r.status, 500);
    assert!(
        r.body.contains("\"path\":\"/status/500\""),
        "the upstream's own body: {}",
        r.body
    );
    std::thread::sleep(Duration::from_millis(100));
    let log = access_log(&gw);
    let e = log.last().unwrap();
    assert_eq!(e["status"], 500);
    assert_eq!(e["upstream_status"], 500);
    assert_eq!(e["route"], "all");
    assert_eq!(e["service"], "backend");
    assert!(e["error"].is_null());
}

#[test]
fn oversized_body_is_413_and_oversized_headers_431() {
    let gw = Gateway::start(&single_route(echo(), "    max_request_body_bytes: 1000"));
    let r = send(&gw.url(), "POST", "/x", &[], &vec![b'a'; 5000]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["message"], "request body too large");
    let r = send(&gw.url(), "POST", "/x", &[], &vec![b'a'; 900]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"].as_str().map(str::len), Some(900));
    let big = "v".repeat(70 * 1024);
    let r = get(&gw, "/x", &[("x-big", &big)]);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["message"], "request headers too large");
}

#[test]
fn bad_configs_are_refused_listing_every_error() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{ name: public, address: "not-an-address" }]
services: [{ name: s, url: "http://127.0.0.1:1" }]
filters:
  - { name: f, wasm: /no/such/file.wasm }
  - { name: g, wasm: /no/such/file.wasm, singleton: true }
wasm_services:
  - { name: w, wasm: /no/such/file.wasm, failure_policy: fail_open }
routes:
  - { name: first, match: { paths: [/a], methods: [get] }, service: s }
  - { name: second, match: { paths: [/a], methods: [GET] }, service: s }
  - { name: third, match: { paths: [/b] }, service: nope, filters: [ghost] }
  - { name: fourth, match: { regex_paths: ['/x(?=y)'] }, service: s }
  - { name: fifth, match: { regex_paths: ['/a{1000}{1000}'] }, service: s }
  - { name: sixth, match: { regex_paths: ['/x)|(/admin'] }, service: s }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "listener `public`: address `not-an-address`",
        "routes `first` and `second` have identical match rules",
        "route `third`: unknown service `nope`",
        "route `third`: unknown filter `ghost`",
        "filter `f`: wasm `/no/such/file.wasm`",
        // One schema for filters and wasm services; each refuses the other's fields.
        "filter `g`: `singleton` is a wasm service's field",
        "wasm service `w`: `failure_policy` is a filter's field",
        // PCRE's look-around has no linear-time match; a pattern too large to compile
        // within the limit is refused too.
        "route `fourth`: regex path `/x(?=y)`",
        "route `fifth`: regex path `/a{1000}{1000}`",
        // It would close the anchoring group and match /admin anywhere in a path.
        "route `sixth`: regex path `/x)|(/admin`",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
}

/// Found with the `gateway_yaml` fuzz target: limits so large that converting them
/// to bytes overflowed (a panic in a debug build, a silently wrapped limit in release:
/// a header limit of 0 KiB, a 1 MiB VM). They are refused, naming the field.
#[test]
fn limits_too_large_to_convert_are_refused() {
    let dir = TempDir::new();
    let path = dir.0.join("huge.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{ name: public, address: "127.0.0.1:1", max_request_headers_kb: 18014398509481985 }]
filters: [{ name: f, wasm: /no/such/file.wasm, memory_limit_mb: 17592186044417 }]
"#,
    )
    .expect("write the configuration");
    let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run portcullis validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    for needle in [
        "listener `public`: max_request_headers_kb 18014398509481985 is too large",
        "filter `f`: memory_limit_mb 17592186044417 is too large",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
}

#[test]
fn validate_runs_each_filters_own_configuration_check() {
    let dir = TempDir::new();
    let path = dir.0.join("g.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
services: [{{ name: s, url: "http://127.0.0.1:1" }}]
filters: [{{ name: picky, wasm: "{}", config: {{ reject: true }} }}]
routes: [{{ name: r, service: s, filters: [picky] }}]
"#,
            wasm("conformance_filter")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("filter `picky` rejected its configuration")
            && err.contains("configuration says reject"),
        "{err}"
    );
}

/// Configuration errors name their place: the YAML's file, line and column with the
/// field's path, and inside a filter's own configuration the path of the field.
#[test]
fn configuration_errors_name_file_line_column_and_field_path() {
    let dir = TempDir::new();
    let path = dir.0.join("typo.yaml");
    std::fs::write(
        &path,
        "listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nservices:\n  - name: s\n    url: http://127.0.0.1:1\n    timeout_ms: five\n",
    )
    .expect("write the configuration");
    let validate = |path: &std::path::Path| {
        let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
            .args(["validate", "--config"])
            .arg(path)
            .output()
            .expect("run portcullis validate");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = validate(&path);
    let at = format!(
        "{}:5:17: services[0].timeout_ms: invalid type",
        path.display()
    );
    assert!(err.contains(&at), "missing `{at}` in:\n{err}");

    let path = dir.0.join("filter.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
services: [{{ name: s, url: "http://127.0.0.1:1" }}]
filters:
  - name: auth
    wasm: "{}"
    config: {{ providers: {{ ping: {{ issuer: "https://idp", introspect: {{}} }} }} }}
routes: [{{ name: r, service: s, filters: [auth] }}]
"#,
            wasm("jwt_auth")
        ),
    )
    .expect("write the configuration");
    let err = validate(&path);
    assert!(
        err.contains("providers.ping.introspect") && err.contains("unknown field"),
        "{err}"
    );
}

/// The conformance filter on every path, in front of an echo service `backend` (with
/// `service_fields` added to it).
fn conformance_gateway(service_fields: &str) -> Gateway {
    let up = echo();
    Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: backend, url: "http://{up}"{service_fields} }}]
filters: [{{ name: conformance, wasm: "{}", config: {{ upstream: backend }} }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: backend, filters: [conformance], strip_path: false }}]
"#,
        wasm("conformance_filter")
    ))
}

#[test]
fn filters_reach_services_with_http_call() {
    let gw = conformance_gateway("");
    let r = get(&gw, "/case/http-call-resume", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-call-status").as_deref(), Some("200"));
    let r = get(&gw, "/case/local-reply", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "denied");
}

/// An `http_call` answer is held only up to the service's `max_response_body_bytes`:
/// a longer one fails the call (the filter sees a reset) instead of being read whole
/// into memory, however much a key service or an IdP sends.
#[test]
fn an_http_call_answer_past_the_services_body_limit_fails_the_call() {
    let gw = conformance_gateway(", max_response_body_bytes: 64");
    let r = get(&gw, "/case/http-call", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("status=reset"), "{}", r.body);
    let gw = conformance_gateway("");
    let r = get(&gw, "/case/http-call", &[]);
    assert!(r.body.contains("status=200"), "{}", r.body);
}

/// A filter that pauses and never resumes, in the request or in the response phase,
/// is answered 504 once the service's timeout has passed; the gateway goes on serving.
#[test]
fn a_filter_that_never_resumes_is_a_504_not_a_hung_request() {
    let gw = conformance_gateway(", timeout_ms: 400");
    for case in ["/case/pause-forever", "/case/pause-response-forever"] {
        let started = std::time::Instant::now();
        let r = get(&gw, case, &[]);
        assert_eq!(r.status, 504, "{case}: {}", r.body);
        assert!(
            r.body
                .contains("a filter did not let the request go on in time"),
            "{}",
            r.body
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{case}");
    }
    // Paused on the response body: the head has gone out, so the body is cut short
    // (a failed read for the client) instead of never ending.
    let started = std::time::Instant::now();
    assert!(send(&gw.url(), "GET", "/case/pause-body-forever", &[], b"").is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(get(&gw, "/case/headers", &[]).status, 200);
}

/// A filter that pauses on the last chunk of the response body (here on a call to the
/// service) holds the body until the answer: the client then gets the body as it
/// changed it, after the filter before it in the chain (next in response order) paused
/// on it and changed it too.
#[test]
fn a_response_body_held_for_a_call_reaches_the_client_changed_by_each_filter() {
    let up = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: backend, url: "http://{up}" }}]
filters:
  - {{ name: outer, wasm: "{w}", config: {{ upstream: backend }} }}
  - {{ name: inner, wasm: "{w}", config: {{ upstream: backend }} }}
routes: [{{ name: r, match: {{ paths: [/] }}, service: backend, filters: [outer, inner], strip_path: false }}]
"#,
        w = wasm("conformance_filter")
    ));
    let r = get(&gw, "/case/response-body-wait-for-call", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.ends_with("}|call=200|call=200"),
        "the echo's body with both answers appended: {}",
        r.body
    );
}

/// A client's request trailers reach the filters' `on_request_trailers`, as in Envoy
/// (they used to end the body instead): the conformance filter answers from them.
/// Without trailers, the same request goes upstream.
#[test]
fn request_trailers_reach_the_filters() {
    let gw = conformance_gateway("");
    let addr = format!("127.0.0.1:{}", gw.port);
    let (status, body) = raw_http(
        &addr,
        b"POST /case/trailers-reply HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
          transfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx-t: 1\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("trailers=1") && body.contains("x-t=1"),
        "{body}"
    );
    let (status, body) = raw_http(
        &addr,
        b"POST /case/trailers-reply HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
          transfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"body\":\"ab\""),
        "the echo's answer: {body}"
    );
}

/// An upstream that answers 200 at once, then drips a chunk every 100 ms for ever.
fn dripping() -> std::net::SocketAddr {
    raw_upstream(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        loop {
            if s.write_all(b"2\r\nx\n\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The service's `timeout_ms` bounds the whole exchange, response body included, on
/// every route: an upstream that keeps a body dripping (each chunk well within the
/// read timeout) is cut at the deadline, counted and logged as a timeout. (Routes
/// without filters once had a body of their own, bounded only by the read timeout.)
#[test]
fn a_response_body_that_never_ends_is_cut_at_the_deadline() {
    let gw = Gateway::start(&single_route(
        dripping(),
        "    read_timeout_ms: 2000\n    timeout_ms: 700",
    ));
    let started = std::time::Instant::now();
    let (status, _) = raw_http(
        &format!("127.0.0.1:{}", gw.port),
        b"GET /drip HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "the head went out before the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the body ended: {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = access_log(&gw);
    let e = log.last().expect("the request is logged");
    assert_eq!(e["error"], "upstream response body timed out", "{e}");
    let admin = format!("http://127.0.0.1:{}", gw.admin);
    let m = send(&admin, "GET", "/metrics", &[], b"").expect("metrics");
    assert!(
        m.body
            .contains("portcullis_upstream_errors_total{service=\"backend\",kind=\"timeout\"} 1"),
        "{}",
        m.body
    );
}

#[test]
fn admin_serves_metrics_health_and_readiness() {
    let gw = Gateway::start(&single_route(echo(), ""));
    get(&gw, "/x", &[]);
    let admin = format!("http://127.0.0.1:{}", gw.admin);
    let m = send(&admin, "GET", "/metrics", &[], b"").unwrap();
    assert!(
        m.body
            .contains("portcullis_requests_total{route=\"all\",status=\"200\"} 1"),
        "{}",
        m.body
    );
    assert_eq!(
        send(&admin, "GET", "/healthz", &[], b"").unwrap().status,
        200
    );
    assert_eq!(send(&admin, "GET", "/ready", &[], b"").unwrap().status, 200);
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let (a, b) = (echo(), echo());
    let mut gw = Gateway::start(&single_route(a, ""));
    assert_eq!(
        get(&gw, "/x", &[]).upstream_header("host").unwrap(),
        a.to_string()
    );
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        text.replace(&a.to_string(), &b.to_string()),
    )
    .unwrap();
    gw.signal("-HUP");
    let start = std::time::Instant::now();
    while !gw.logged("reloaded") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get(&gw, "/x", &[]).upstream_header("host").unwrap(),
        b.to_string(),
        "new config serves"
    );
    std::fs::write(gw.config_path(), "listeners: [oops").unwrap();
    gw.signal("-HUP");
    let start = std::time::Instant::now();
    while !gw.logged("reload refused") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gw.logged("reload refused"), "{}", gw.stderr_text());
    assert_eq!(
        get(&gw, "/x", &[]).upstream_header("host").unwrap(),
        b.to_string(),
        "old config keeps serving"
    );
    assert!(gw.wait_exit(Duration::from_millis(10)).is_none());
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_zero() {
    let mut gw = Gateway::start(&single_route(slow(Duration::from_millis(800)), ""));
    let url = gw.url();
    let in_flight = std::thread::spawn(move || send(&url, "GET", "/slow", &[], b""));
    std::thread::sleep(Duration::from_millis(200));
    gw.signal("-TERM");
    let r = in_flight
        .join()
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status}");
}

#[test]
fn the_shipped_examples_validate() {
    let dir = portcullis_testbed::workspace_dir().join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = std::process::Command::new(portcullis_testbed::built_binary("portcullis"))
                .args(["validate", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn ticks_and_shared_queue_notifications_run_on_the_real_clock() {
    let up = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
workers: 1
services: [{{ name: backend, url: "http://{up}" }}]
filters: [{{ name: conformance, wasm: "{}", config: {{ upstream: backend, tick_ms: 50 }} }}]
routes: [{{ name: r, match: {{ paths: [/] }}, service: backend, filters: [conformance], strip_path: false }}]
"#,
        wasm("conformance_filter")
    ));
    let r = get(&gw, "/case/enqueue", &[]);
    assert!(r.body.contains("enqueue=Some(Ok(()))"), "{}", r.body);
    std::thread::sleep(Duration::from_millis(400));
    let r = get(&gw, "/case/queue-last", &[]);
    assert!(
        r.body.contains("value=item-1"),
        "the registrant was notified: {}",
        r.body
    );
    let r = get(&gw, "/case/ticks", &[]);
    let ticks: u64 = r
        .body
        .trim()
        .strip_prefix("value=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(ticks >= 4, "ticks every 50 ms: {ticks} after ~400 ms");
}

/// The filters work on the request's own header map: every way of changing it must
/// reach the upstream, a map no filter touched must pass exactly as it came
/// (duplicates and their order included), and what a filter set that HTTP cannot
/// carry never goes out.
#[test]
fn what_filters_change_reaches_the_upstream_and_an_untouched_request_passes_as_it_came() {
    let upstream = echo();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:{{PORT}}" }}]
access_log: "off"
services: [{{ name: echo, url: "http://{upstream}" }}]
filters:
  - {{ name: conformance, wasm: "{}" }}
  - {{ name: noop, wasm: "{}" }}
routes:
  - {{ name: changed, match: {{ hosts: [changed.test] }}, service: echo, filters: [noop, conformance, noop], strip_path: false }}
  - {{ name: untouched, match: {{ hosts: [untouched.test] }}, service: echo, filters: [noop, noop], strip_path: false }}
  - {{ name: plain, match: {{ hosts: [plain.test] }}, service: echo, strip_path: false }}
"#,
        wasm("conformance_filter"),
        wasm("noop_filter"),
    ));
    let base = [
        ("x-replace", "old"),
        ("x-remove", "gone"),
        ("x-multi", "first"),
        ("x-multi", "second"),
        ("x-drop-me", "1"),
        ("x-keep", "2"),
    ];
    let with_host = |host: &'static str| {
        let mut h = vec![("host", host)];
        h.extend(base);
        h
    };
    // add, replace, remove (proxy_add/replace/remove_header_map_value)
    let r = get(&gw, "/case/headers", &with_host("changed.test"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-added").as_deref(), Some("1"));
    assert_eq!(r.upstream_header("x-replace").as_deref(), Some("new"));
    assert_eq!(r.upstream_header("x-remove"), None);
    // the whole map replaced (proxy_set_header_map_pairs)
    let r = get(&gw, "/case/pairs", &with_host("changed.test"));
    assert_eq!(r.upstream_header("x-from-pairs").as_deref(), Some("yes"));
    assert_eq!(r.upstream_header("x-drop-me"), None);
    assert_eq!(r.upstream_header("x-keep").as_deref(), Some("2"));
    // A request header HTTP cannot carry (CR LF in its value): refused, never sent.
    let r = get(&gw, "/case/uncarried-header", &with_host("changed.test"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("x-bad"), "{}", r.body);
    assert_eq!(r.upstream_header("x-injected"), None);
    // Response headers HTTP cannot carry: left out, the rest of the response goes.
    let r = get(
        &gw,
        "/case/uncarried-response-header",
        &with_host("changed.test"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get_str("x-saw-response"),
        Some("uncarried-response-header")
    );
    assert_eq!(r.headers.get("x-bad"), None);
    assert_eq!(r.headers.get("x-injected"), None);
    assert_eq!(r.headers.get("bad name"), None);
    // untouched: the upstream sees what it sees on a route without filters
    let headers_of = |host: &'static str| {
        let r = get(&gw, "/any", &with_host(host));
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        doc["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                !["x-request-id", "host", "x-forwarded-host"].contains(&p[0].as_str().unwrap())
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(headers_of("untouched.test"), headers_of("plain.test"));
}
