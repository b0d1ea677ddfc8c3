//! `header-forwarder` in the test bed, alone and behind `jwt-auth`.

use jwt_mint::{Key, jwks};
use portcullis_testbed::{HeaderMap, MetricValue, Request, TestBed, wasm};
use serde_json::json;

fn bed(config: serde_json::Value) -> TestBed {
    TestBed::new()
        .filter(wasm("header_forwarder"), config.to_string())
        .build()
        .unwrap()
}

#[test]
fn every_operation_in_kongs_order() {
    let mut bed = bed(json!({"request": {
        "remove": {"headers": ["x-internal"], "querystring": ["debug"]},
        "rename": {"headers": {"x-legacy": "x-modern"}},
        "replace": {"headers": {"host": "orders.internal", "x-modern": "replaced"}},
        "add": {"headers": {"x-added": "1", "x-modern": "not-added"}, "querystring": {"src": "gw"}},
        "append": {"headers": {"x-modern": "appended"}}
    }, "forward_authorization": false}));
    let res = bed.send(
        Request::get("/orders?debug=1&x=2")
            .header("x-internal", "secret")
            .header("x-legacy", "old"),
    );
    let up = res.upstream.unwrap();
    assert_eq!(up.headers.get_str("x-internal"), None);
    assert_eq!(up.headers.get_str("x-legacy"), None);
    assert_eq!(
        up.headers.get_all("x-modern").collect::<Vec<_>>(),
        vec![&b"replaced"[..], b"appended"]
    );
    assert_eq!(up.headers.get_str("x-added"), Some("1"));
    assert_eq!(up.headers.get_str(":authority"), Some("orders.internal"));
    assert_eq!(up.headers.get_str(":path"), Some("/orders?x=2&src=gw"));
}

#[test]
fn each_template_source() {
    let mut bed = bed(json!({"request": {"add": {"headers": {
        "x-h": "$(headers.x-in)", "x-q": "$(query.page)", "x-path": "$(request.path)", "x-method": "$(request.method)",
        "x-host": "$(request.host)", "x-id": "$(request.id)", "x-src": "$(source.address)", "x-who": "$(consumer.username)/$(consumer.tier)"
    }}}, "forward_authorization": false}));
    let res = bed.send(
        Request::get("/a/b?page=3")
            .header("x-in", "hello")
            .header("x-request-id", "rid-1")
            .header("x-consumer-username", "ada")
            .header("x-consumer-tier", "gold"),
    );
    let h = |n: &str| res.upstream_header(n);
    assert_eq!(h("x-h").as_deref(), Some("hello"));
    assert_eq!(h("x-q").as_deref(), Some("3"));
    assert_eq!(h("x-path").as_deref(), Some("/a/b"));
    assert_eq!(h("x-method").as_deref(), Some("GET"));
    assert_eq!(h("x-host").as_deref(), Some("gateway.test"));
    assert_eq!(h("x-id").as_deref(), Some("rid-1"));
    assert_eq!(h("x-src").as_deref(), Some("127.0.0.1:40000"));
    assert_eq!(
        h("x-who"),
        None,
        "without an auth filter the identity headers are the client's: not a consumer"
    );
}

#[test]
fn a_missing_value_skips_the_header_or_leaves_it_empty_as_configured() {
    let mut skip = bed(
        json!({"request": {"add": {"headers": {"x-tier": "$(consumer.tier)"}}}, "forward_authorization": false}),
    );
    assert_eq!(skip.send(Request::get("/")).upstream_header("x-tier"), None);
    let mut empty = bed(
        json!({"missing": "empty", "request": {"add": {"headers": {"x-tier": "$(consumer.tier)"}}}, "forward_authorization": false}),
    );
    assert_eq!(
        empty
            .send(Request::get("/"))
            .upstream_header("x-tier")
            .as_deref(),
        Some("")
    );
}

#[test]
fn injection_through_a_template_is_refused_with_a_metric_and_a_log_line() {
    let mut bed = bed(
        json!({"request": {"add": {"headers": {"x-echo": "$(headers.x-user)"}}}, "forward_authorization": false}),
    );
    for evil in ["ada\r\nx-consumer-id: admin", "ada\nx", "ada\u{0}x"] {
        let mut req = Request::get("/");
        req.headers.add("x-user", evil.as_bytes().to_vec());
        let res = bed.send(req);
        assert_eq!(res.status, 200, "the request goes on");
        assert_eq!(res.upstream_header("x-echo"), None, "{evil:?}");
    }
    assert_eq!(
        bed.metric("header_forwarder_injection_blocked"),
        Some(MetricValue::Counter(3))
    );
    assert!(bed.logged("not setting `x-echo`"));
}

#[test]
fn response_templates_use_values_copied_in_the_request_phase() {
    let mut bed = TestBed::new()
        .filter(
            wasm("header_forwarder"),
            json!({"response": {"remove": {"headers": ["server"]}, "add": {"headers": {"x-request-id": "$(request.id)", "x-for": "$(consumer.username)"}},
                "rename": {"headers": {"x-upstream-secret": "x-public"}}}, "forward_authorization": false})
            .to_string(),
        )
        .upstream(|_| {
            let mut h = HeaderMap::new();
            h.add(":status", "200");
            h.add("server", "echo/1.0");
            h.add("x-upstream-secret", "s");
            (200, h, b"ok".to_vec())
        })
        .build()
        .unwrap();
    let res = bed.send(Request::get("/").header("x-request-id", "rid-9"));
    assert_eq!(res.header("server"), None);
    assert_eq!(res.header("x-request-id"), Some("rid-9"));
    assert_eq!(res.header("x-for"), None, "no verified consumer");
    assert_eq!(res.header("x-public"), Some("s"));
    assert!(
        !bed.logged("panicked"),
        "no request header was read in the response phase"
    );
}

#[test]
fn identity_headers_cannot_be_written_nor_read_unverified() {
    // Before, header-forwarder accepted an identity header as a target, and
    // `$(headers.x-consumer-id)` copied whatever the client sent: behind an auth filter
    // that skips a route (or none), the upstream got an identity nobody verified.
    for (config, field) in [
        (
            json!({"request": {"add": {"headers": {"x-consumer-id": "$(headers.x-user)"}}}}),
            "request.add.headers.x-consumer-id",
        ),
        (
            json!({"request": {"rename": {"headers": {"x-org": "x-credential-identifier"}}}}),
            "request.rename.headers.x-org",
        ),
        (
            json!({"request": {"add": {"headers": {"x-user": "$(headers.x-consumer-username)"}}}}),
            "request.add.headers.x-user",
        ),
    ] {
        let err = TestBed::new()
            .filter(wasm("header_forwarder"), config.to_string())
            .build()
            .err()
            .unwrap_or_else(|| panic!("{config} was accepted"));
        let text = err.to_string();
        assert!(text.contains(field), "{config}: {text}");
    }
}

fn chain(forward: bool) -> (TestBed, Key) {
    let key = Key::ec256("k1");
    let auth = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "local_jwks": jwks(&[&key]), "algorithms": ["ES256"], "forward": forward,
            "consumer": {"id_claim": "sub", "username_claim": "preferred_username", "tier_claim": "tier"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let forwarder = json!({"request": {
        "rename": {"headers": {"authorization": "x-original-authorization"}},
        "add": {"headers": {"x-consumer": "$(consumer.username)", "x-tier": "$(consumer.tier)"}}
    }, "response": {"add": {"headers": {"x-served-for": "$(consumer.username)"}}}, "forward_authorization": true});
    let bed = TestBed::new()
        .filter(wasm("jwt_auth"), auth.to_string())
        .filter(wasm("header_forwarder"), forwarder.to_string())
        .build()
        .unwrap();
    (bed, key)
}

#[test]
fn behind_jwt_auth_identity_comes_from_the_token_not_the_client() {
    let (mut bed, key) = chain(false);
    let token = key.sign("ES256", json!({"iss": "https://idp.test", "sub": "u1", "preferred_username": "ada", "tier": "premium", "exp": 4_102_444_800u64}));
    let res = bed.send(
        Request::get("/")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-consumer-username", "mallory")
            .header("x-consumer-tier", "enterprise"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.upstream_header("x-consumer").as_deref(), Some("ada"));
    assert_eq!(res.upstream_header("x-tier").as_deref(), Some("premium"));
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("ada")
    );
    assert_eq!(
        res.header("x-served-for"),
        Some("ada"),
        "response templates see the verified consumer"
    );
    // jwt-auth stripped the token (forward: false); forward_authorization puts the
    // verified credential back for the upstream.
    assert_eq!(
        res.upstream_header("authorization"),
        Some(format!("Bearer {token}"))
    );
}

#[test]
fn forward_authorization_never_passes_a_client_replacement() {
    let key = Key::ec256("k1");
    let auth = json!({
        "providers": {"idp": {"local_jwks": jwks(&[&key]), "algorithms": ["ES256"], "forward": true, "from_params": ["access_token"], "from_headers": []}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    // The client authenticates with a query parameter and sends its own Authorization.
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), auth.to_string())
        .filter(
            wasm("header_forwarder"),
            json!({"forward_authorization": true}).to_string(),
        )
        .build()
        .unwrap();
    let token = key.sign("ES256", json!({"sub": "u1", "exp": 4_102_444_800u64}));
    let res = bed.send(
        Request::get(&format!("/?access_token={token}"))
            .header("authorization", "Bearer forged-by-client"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("authorization"),
        Some(format!("Bearer {token}"))
    );
}

#[test]
fn response_remove_add_and_append_without_reading_the_map() {
    let mut bed = TestBed::new()
        .filter(
            wasm("header_forwarder"),
            json!({"response": {"remove": {"headers": ["server"]}, "add": {"headers": {"x-kept": "ours", "x-new": "$(request.id)", "x-echo": "$(headers.x-user)"}},
                "append": {"headers": {"x-trace": "gw"}}}, "forward_authorization": false})
            .to_string(),
        )
        .upstream(|_| {
            let mut h = HeaderMap::new();
            h.add(":status", "200");
            h.add("server", "echo/1.0");
            h.add("x-kept", "theirs");
            h.add("x-trace", "upstream");
            (200, h, b"ok".to_vec())
        })
        .build()
        .unwrap();
    let mut req = Request::get("/").header("x-request-id", "rid-3");
    req.headers.add("x-user", b"a\r\nb".to_vec());
    let res = bed.send(req);
    assert_eq!(res.header("server"), None);
    assert_eq!(res.header("x-kept"), Some("theirs"), "add only when absent");
    assert_eq!(res.header("x-new"), Some("rid-3"));
    assert_eq!(res.headers.get_all("x-trace").count(), 2, "append adds");
    assert_eq!(
        res.header("x-echo"),
        None,
        "an injection attempt is not set"
    );
    assert_eq!(
        bed.metric("header_forwarder_injection_blocked"),
        Some(MetricValue::Counter(1))
    );
}
