//! `jwt-auth` in the test bed: the built filter on the real host engine, a virtual
//! clock for time claims, scripted JWKS replies for rotation and outages.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use jwt_mint::{Key, jwks};
use portcullis_testbed::{CallFailure, MetricValue, Reply, Request, TestBed, wasm};
use serde_json::{Value, json};

/// The test bed's clock starts at 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://idp.test", "aud": "orders-api", "sub": "user-1", "preferred_username": "ada",
        "groups": ["eng", "ops"], "tier": "premium", "email": "ada@example.com", "scope": "orders:read profile",
        "iat": T0, "exp": T0 + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn provider(keys: Value, extra: Value) -> Value {
    let mut p = json!({
        "issuer": "https://idp.test",
        "audiences": ["orders-api"],
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "from_params": ["access_token"],
        "forward_payload_header": "x-jwt-payload",
        "claim_to_headers": [{"claim": "email", "header": "x-user-email"}],
        "consumer": {"id_claim": "sub", "username_claim": "preferred_username", "groups_claim": "groups", "tier_claim": "tier"}
    });
    p.as_object_mut()
        .unwrap()
        .extend(keys.as_object().unwrap().clone());
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

fn local(key: &Key, extra: Value) -> String {
    json!({
        "providers": {"idp": provider(json!({"local_jwks": jwks(&[key])}), extra)},
        "rules": [
            {"match": {"prefix": "/health"}},
            {"match": {"prefix": "/public"}, "requires": {"provider": "idp"}, "allow_missing": true},
            {"match": {"prefix": "/admin"}, "requires": {"provider": "idp", "scopes": ["orders:admin"]}},
            {"match": {"prefix": "/"}, "requires": {"any": ["idp"]}}
        ]
    })
    .to_string()
}

/// The filter alone, with the local key `key` and `extra`.
fn local_bed(key: &Key, extra: Value) -> TestBed {
    TestBed::new()
        .filter(wasm("jwt_auth"), local(key, extra))
        .build()
        .unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn a_valid_token_passes_with_verified_identity_and_spoofed_headers_replaced() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    let token = key.sign("ES256", claims(json!({})));
    let res = bed.send(
        Request::get("/orders")
            .header("authorization", &bearer(&token))
            .header("x-consumer-id", "admin")
            .header("x-consumer-tier", "free")
            .header("x-user-email", "spoof@evil.test"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("x-consumer-id").as_deref(),
        Some("user-1")
    );
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("ada")
    );
    assert_eq!(
        res.upstream_header("x-consumer-groups").as_deref(),
        Some("eng,ops")
    );
    assert_eq!(
        res.upstream_header("x-consumer-tier").as_deref(),
        Some("premium")
    );
    assert_eq!(
        res.upstream_header("x-credential-identifier").as_deref(),
        Some("https://idp.test")
    );
    assert_eq!(
        res.upstream_header("x-user-email").as_deref(),
        Some("ada@example.com")
    );
    assert_eq!(
        res.upstream_header("x-jwt-payload").as_deref(),
        Some(token.split('.').nth(1).unwrap())
    );
    assert_eq!(
        res.upstream_header("authorization"),
        None,
        "forward is false: the token is stripped"
    );
    let up = res.upstream.unwrap();
    assert_eq!(
        up.headers.get_all("x-consumer-id").count(),
        1,
        "the client's value is gone, not merely shadowed"
    );
}

#[test]
fn without_a_token_identity_headers_are_still_removed() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    let res = bed.send(
        Request::get("/health")
            .header("x-consumer-id", "admin")
            .header("x-consumer-tier", "premium"),
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("x-consumer-id"), None);
    assert_eq!(res.upstream_header("x-consumer-tier"), None);
    let res = bed.send(Request::get("/public/x").header("x-consumer-id", "admin"));
    assert_eq!(res.status, 200, "allow_missing");
    assert_eq!(res.upstream_header("x-consumer-id"), None);
}

#[test]
fn forward_true_keeps_the_token_for_the_upstream() {
    let key = Key::ed25519("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({"forward": true})))
        .build()
        .unwrap();
    let token = key.sign("EdDSA", claims(json!({})));
    let res = bed.send(Request::get("/orders").header("authorization", &bearer(&token)));
    assert_eq!(res.upstream_header("authorization"), Some(bearer(&token)));
}

#[test]
fn replies_follow_rfc_6750() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    let res = bed.send(Request::get("/orders").header("x-request-id", "rid-7"));
    assert_eq!(res.status, 401);
    assert_eq!(
        res.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );
    assert_eq!(res.json()["request_id"], "rid-7");
    assert!(res.upstream.is_none());

    let res = bed.send(Request::get("/orders").header("authorization", "Bearer not.a.jwt"));
    assert_eq!(res.status, 401);
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    let wrong_aud = key.sign("ES256", claims(json!({"aud": "billing"})));
    let res = bed.send(Request::get("/orders").header("authorization", &bearer(&wrong_aud)));
    assert_eq!(res.status, 403, "valid token, wrong audience: 403 as Envoy");

    let token = key.sign("ES256", claims(json!({})));
    let res = bed.send(Request::get("/admin/x").header("authorization", &bearer(&token)));
    assert_eq!(res.status, 403);
    let www = res.header("www-authenticate").unwrap();
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("orders:admin"),
        "{www}"
    );
    let admin = key.sign("ES256", claims(json!({"scope": "orders:admin"})));
    assert_eq!(
        bed.send(Request::get("/admin/x").header("authorization", &bearer(&admin)))
            .status,
        200
    );
}

#[test]
fn two_tokens_in_one_request_are_refused() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    let token = key.sign("ES256", claims(json!({})));
    let res = bed.send(
        Request::get(&format!("/orders?access_token={token}"))
            .header("authorization", &bearer(&token)),
    );
    assert_eq!(res.status, 401);
    assert!(
        res.json()["message"]
            .as_str()
            .unwrap()
            .contains("more than one token")
    );
}

#[test]
fn forward_false_takes_the_token_out_of_the_query_and_the_cookie() {
    // Before, only a token in a header was taken out: one in the query or a cookie went
    // on to the upstream (and its access logs) although `forward` is false.
    let key = Key::ec256("k1");
    let mut bed = local_bed(&key, json!({"from_cookies": ["tok"]}));
    let token = key.sign("ES256", claims(json!({})));
    for (path, left) in [
        (
            format!("/orders?a=1&access_token={token}&b=2"),
            "/orders?a=1&b=2",
        ),
        (format!("/orders?access_token={token}"), "/orders"),
        (format!("/orders?access%5Ftoken={token}"), "/orders"),
    ] {
        let res = bed.send(Request::get(&path));
        assert_eq!(res.status, 200, "{path}: {}", res.text());
        assert_eq!(
            res.upstream_header(":path").as_deref(),
            Some(left),
            "{path}"
        );
        assert_eq!(
            res.upstream_header("x-consumer-id").as_deref(),
            Some("user-1")
        );
    }
    let res = bed.send(
        Request::get("/orders?a=1")
            .header("cookie", &format!("s=1; tok={token}; t=2"))
            .header("cookie", "other=3"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let up = res.upstream.unwrap();
    let cookies: Vec<String> = up
        .headers
        .get_all("cookie")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(cookies, ["s=1; t=2", "other=3"]);
    assert_eq!(up.headers.get_str(":path"), Some("/orders?a=1"));
    let res = bed.send(Request::get("/orders").header("cookie", &format!("tok={token}")));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.upstream_header("cookie"), None);
    // With forward, the token stays where it was.
    let mut bed = local_bed(&key, json!({"from_cookies": ["tok"], "forward": true}));
    let path = format!("/orders?access_token={token}");
    let res = bed.send(Request::get(&path));
    assert_eq!(res.upstream_header(":path"), Some(path));
}

#[test]
fn a_lookalike_parameter_or_cookie_beside_a_token_is_a_second_token() {
    // Before, `Authorization: Bearer A` with `?access%5Ftoken=B` passed as one token:
    // the identity headers said A, while an upstream that decodes parameter names (or
    // ignores their case, or splits at `;`) read B, which nobody verified.
    let key = Key::ec256("k1");
    let mut bed = local_bed(&key, json!({"from_cookies": ["tok"]}));
    let a = key.sign("ES256", claims(json!({})));
    let b = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let with_a = |r: Request| r.header("authorization", &bearer(&a));
    let requests = [
        with_a(Request::get(&format!("/orders?access%5Ftoken={b}"))),
        with_a(Request::get(&format!("/orders?ACCESS_TOKEN={b}"))),
        with_a(Request::get(&format!("/orders?Access-Token={b}"))),
        with_a(Request::get(&format!("/orders?x=1;access_token={b}"))),
        with_a(Request::get("/orders").header("cookie", &format!("TOK={b}"))),
        with_a(Request::get("/orders").header("cookie", &format!("s=1; tok ={b}"))),
        Request::get(&format!("/orders?access_token={a}&ACCESS_TOKEN={b}")),
        Request::get(&format!("/orders?access_token={a};access_token={b}")),
    ];
    for req in requests {
        let path = req.headers.get_str(":path").unwrap_or("").to_owned();
        let res = bed.send(req);
        assert_eq!(res.status, 401, "{path}: {}", res.text());
        assert!(res.upstream.is_none(), "{path}");
        assert!(
            res.json()["message"]
                .as_str()
                .unwrap()
                .contains("more than one token"),
            "{path}: {}",
            res.text()
        );
    }
    // A lookalike alone is no token, and an empty one is nothing.
    assert_eq!(
        bed.send(Request::get(&format!("/orders?ACCESS_TOKEN={b}")))
            .status,
        401
    );
    let res = bed.send(with_a(Request::get("/orders?ACCESS_TOKEN=&page=2")));
    assert_eq!(res.status, 200, "{}", res.text());
}

#[test]
fn a_group_with_a_comma_or_a_control_character_is_left_out_of_x_consumer_groups() {
    // Before, `groups: ["dev,admin"]` became `x-consumer-groups: dev,admin`, and an
    // upstream that splits the header at commas (Kong's convention) saw `admin`.
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    for (groups, want) in [
        (json!(["dev,admin"]), None),
        (json!("dev,admin"), None),
        (json!(["eng", "dev,admin", "ops"]), Some("eng,ops")),
        (json!(["eng", "a\tb", "x\u{7f}", "ops\u{0}"]), Some("eng")),
        (
            json!(["eng", ["ops", "admin"], {"a": "b"}, null, 7]),
            Some("eng,7"),
        ),
        (json!("eng"), Some("eng")),
    ] {
        let token = key.sign("ES256", claims(json!({"groups": groups})));
        let res = bed.send(
            Request::get("/orders")
                .header("authorization", &bearer(&token))
                .header("x-consumer-groups", "admin"),
        );
        assert_eq!(res.status, 200, "{groups}: {}", res.text());
        assert_eq!(
            res.upstream_header("x-consumer-groups").as_deref(),
            want,
            "{groups}"
        );
        assert_eq!(
            res.upstream_header("x-consumer-id").as_deref(),
            Some("user-1")
        );
    }
}

#[test]
fn oversized_tokens_are_refused_before_any_crypto() {
    let key = Key::ec256("k1");
    let mut bed = local_bed(&key, json!({"max_token_bytes": 512}));
    let big = key.sign("ES256", claims(json!({"pad": "x".repeat(600)})));
    let res = bed.send(Request::get("/orders").header("authorization", &bearer(&big)));
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["message"], "token is too large");
}

#[test]
fn a_cached_token_still_fails_when_it_expires() {
    let key = Key::ec256("k1");
    let mut bed = local_bed(&key, json!({"clock_skew_seconds": 0}));
    let token = key.sign("ES256", claims(json!({"exp": T0 + 30})));
    let send = |bed: &mut TestBed| {
        bed.send(Request::get("/orders").header("authorization", &bearer(&token)))
            .status
    };
    assert_eq!(send(&mut bed), 200);
    assert_eq!(send(&mut bed), 200);
    // The hot counters reach the host on the next tick.
    assert_eq!(
        bed.metric("jwt_auth_cache_hits"),
        Some(MetricValue::Counter(0))
    );
    bed.advance(Duration::from_secs(1));
    assert_eq!(
        bed.metric("jwt_auth_cache_hits"),
        Some(MetricValue::Counter(1))
    );
    bed.advance(Duration::from_secs(31));
    assert_eq!(send(&mut bed), 401, "expired, cache or not");
    assert_eq!(
        bed.metric("jwt_auth_denied_expired"),
        Some(MetricValue::Counter(1))
    );
    assert_eq!(
        bed.metric("jwt_auth_allowed"),
        Some(MetricValue::Counter(2))
    );
}

fn remote(extra: Value) -> String {
    json!({
        "providers": {"idp": provider(json!({"remote_jwks": {"cluster": "idp", "path": "/jwks", "cache_duration_seconds": 600, "refetch_interval_seconds": 30}}), extra)},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    })
    .to_string()
}

/// A scripted IdP whose JWKS can change and which can go down.
struct Idp {
    jwks: Rc<std::cell::RefCell<Value>>,
    down: Rc<Cell<bool>>,
    fetches: Rc<Cell<u32>>,
}

fn bed_with_idp(first: &Key) -> (TestBed, Idp) {
    let idp = Idp {
        jwks: Rc::new(std::cell::RefCell::new(jwks(&[first]))),
        down: Rc::default(),
        fetches: Rc::default(),
    };
    let (j, d, f) = (idp.jwks.clone(), idp.down.clone(), idp.fetches.clone());
    let bed = TestBed::new()
        .filter(wasm("jwt_auth"), remote(json!({})))
        .cluster("idp", move |req| {
            assert_eq!(req.headers.get_str(":path"), Some("/jwks"));
            f.set(f.get() + 1);
            if d.get() {
                Reply::Fail(CallFailure::ConnectFailed("refused".into()))
            } else {
                Reply::json(&j.borrow())
            }
        })
        .build()
        .unwrap();
    (bed, idp)
}

#[test]
fn remote_keys_are_fetched_on_first_use_and_shared() {
    let key = Key::rsa("r1");
    let (mut bed, idp) = bed_with_idp(&key);
    let token = key.sign("RS256", claims(json!({})));
    let res = bed.send(Request::get("/orders").header("authorization", &bearer(&token)));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(idp.fetches.get(), 1);
    let other = key.sign("RS256", claims(json!({"sub": "user-2"})));
    assert_eq!(
        bed.send(Request::get("/orders").header("authorization", &bearer(&other)))
            .status,
        200
    );
    assert_eq!(idp.fetches.get(), 1, "the JWKS is kept in shared data");
    assert!(bed.shared_data("jwt-auth/jwt_auth-0/idp/jwks").is_some());
}

#[test]
fn keys_are_refreshed_on_a_tick_once_and_rotation_is_picked_up() {
    let (k1, k2) = (Key::ec256("k1"), Key::ec256("k2"));
    let (mut bed, idp) = bed_with_idp(&k1);
    bed.advance(Duration::from_secs(2));
    assert_eq!(idp.fetches.get(), 1, "fetched by a tick before any request");
    *idp.jwks.borrow_mut() = jwks(&[&k2]);
    bed.advance(Duration::from_secs(599));
    assert_eq!(
        idp.fetches.get(),
        2,
        "refreshed once when the cache duration ran out"
    );
    let t2 = k2.sign("ES256", claims(json!({"iat": T0 + 600, "exp": T0 + 1200})));
    assert_eq!(
        bed.send(Request::get("/orders").header("authorization", &bearer(&t2)))
            .status,
        200
    );
    assert_eq!(
        bed.metric("jwt_auth_jwks_fetches"),
        Some(MetricValue::Counter(2))
    );
}

#[test]
fn an_unknown_kid_triggers_at_most_one_refetch_per_interval() {
    let (k1, k2) = (Key::ec256("k1"), Key::ec256("k2"));
    let (mut bed, idp) = bed_with_idp(&k1);
    let t1 = k1.sign("ES256", claims(json!({})));
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&t1)))
            .status,
        200
    );
    assert_eq!(idp.fetches.get(), 1);
    // The IdP rotates; a token with the new kid arrives before the next refresh.
    *idp.jwks.borrow_mut() = jwks(&[&k1, &k2]);
    let t2 = k2.sign("ES256", claims(json!({})));
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&t2)))
            .status,
        200
    );
    assert_eq!(idp.fetches.get(), 2, "one refetch for the new kid");
    let ghost = Key::ec256("ghost").sign("ES256", claims(json!({})));
    for _ in 0..5 {
        assert_eq!(
            bed.send(Request::get("/o").header("authorization", &bearer(&ghost)))
                .status,
            401
        );
    }
    assert_eq!(
        idp.fetches.get(),
        2,
        "no refetch storm: the last one was less than 30 s ago"
    );
    bed.advance(Duration::from_secs(31));
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&ghost)))
            .status,
        401
    );
    assert_eq!(idp.fetches.get(), 3, "one more after the interval");
}

#[test]
fn keys_unavailable_is_503_with_retry_after_and_stale_keys_serve_during_an_outage() {
    let key = Key::ec256("k1");
    let (mut bed, idp) = bed_with_idp(&key);
    idp.down.set(true);
    let token = key.sign("ES256", claims(json!({})));
    let res = bed.send(Request::get("/o").header("authorization", &bearer(&token)));
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.header("retry-after"), Some("10"));
    assert!(
        res.header("www-authenticate").is_none(),
        "not an authentication failure"
    );
    idp.down.set(false);
    bed.advance(Duration::from_secs(11));
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&token)))
            .status,
        200
    );
    // Down again past the cache duration: the stale JWKS keeps serving.
    idp.down.set(true);
    bed.advance(Duration::from_secs(700));
    let fresh = key.sign("ES256", claims(json!({"iat": T0 + 700, "exp": T0 + 1300})));
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&fresh)))
            .status,
        200
    );
    assert!(
        bed.metric("jwt_auth_jwks_failures")
            .is_some_and(|m| m.count() >= 1)
    );
}

#[test]
fn with_no_keys_cached_one_fetch_is_in_flight_whatever_the_number_of_requests() {
    // Before, each request that found no keys dispatched its own JWKS fetch: while the
    // IdP was down or slow, every request added a call (up to 1000 in flight per VM).
    let key = Key::ec256("k1");
    let config = |timeout_ms: u64| {
        json!({
            "providers": {"idp": provider(json!({"remote_jwks": {"cluster": "idp", "path": "/jwks",
                "timeout_ms": timeout_ms}}), json!({}))},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
        })
        .to_string()
    };
    let token = bearer(&key.sign("ES256", claims(json!({}))));
    let burst = |n: usize| -> Vec<Request> {
        (0..n)
            .map(|_| Request::get("/orders").header("authorization", &token))
            .collect()
    };
    // An IdP that never answers: one call, and every request gets the 503 once it
    // times out.
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config(200))
        .cluster("idp", |_| Reply::Never)
        .build()
        .unwrap();
    let responses = bed.send_all(burst(50));
    assert_eq!(bed.calls().len(), 1, "one JWKS fetch, not one per request");
    for res in &responses {
        assert_eq!(res.status, 503, "{}", res.text());
        assert_eq!(res.header("retry-after"), Some("10"));
    }
    // Past the retry pause, one more fetch (the tick's or a request's), never a storm.
    bed.advance(Duration::from_secs(11));
    let responses = bed.send_all(burst(20));
    assert!(responses.iter().all(|r| r.status == 503));
    assert_eq!(bed.calls().len(), 2);
    // An IdP that answers: the burst waits for the one fetch and passes.
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config(5000))
        .cluster("idp", move |_| Reply::json(&jwks(&[&key])))
        .build()
        .unwrap();
    let responses = bed.send_all(burst(50));
    assert_eq!(bed.calls().len(), 1);
    for res in &responses {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(
            res.upstream_header("x-consumer-id").as_deref(),
            Some("user-1")
        );
    }
}

#[test]
fn a_jwks_that_is_not_json_or_has_no_key_is_not_stored() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), remote(json!({})))
        .cluster("idp", |_| Reply::status(200, &[], "<html>login</html>"))
        .build()
        .unwrap();
    let token = key.sign("ES256", claims(json!({})));
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&token)))
            .status,
        503
    );
    assert!(bed.logged("JWKS fetch of `idp` failed"));
}

#[test]
fn hostile_tokens_never_crash_the_filter() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    let good = key.sign("ES256", claims(json!({})));
    let hostile = [
        String::new(),
        ".".repeat(5),
        "a.b.c".into(),
        jwt_mint::raw("{", "{}", b""),
        jwt_mint::raw(r#"{"alg":"ES256"}"#, "[]", b"x"),
        jwt_mint::raw(r#"{"alg":["ES256"]}"#, "{}", b"x"),
        jwt_mint::raw(r#"{"alg":"ES256","kid":7}"#, "{}", b"x"),
        jwt_mint::raw(r#"{"alg":"ES256"}"#, r#"{"exp":1e400}"#, &[0; 64]),
        jwt_mint::raw(r#"{"alg":"ES256"}"#, r#"{"exp":-1}"#, &[0; 64]),
        format!("{good}x"),
        good.replace('.', ".."),
        "\u{0}\u{1}".into(),
    ];
    for t in hostile {
        let res = bed.send(Request::get("/o").header("authorization", &format!("Bearer {t}")));
        assert!(res.status == 401, "{t:?}: {}", res.status);
    }
    assert_eq!(
        bed.send(Request::get("/o").header("authorization", &bearer(&good)))
            .status,
        200
    );
}

/// RS256/384/512 and PS256/384/512 run our own modular exponentiation
/// (`kit::jwt::modexp`, SIMD in wasm) and padding checks: key sizes from the smallest
/// usual to the largest the rsa crate takes, through the built filter. A genuine
/// signature passes; one bit flipped, or the same claims signed by another key under
/// the same kid, do not.
#[test]
fn rsa_signatures_of_every_key_size_and_hash_are_checked_in_wasm() {
    for bits in [2048, 3072, 4096] {
        let key = Key::rsa_bits("k1", bits);
        let impostor = Key::rsa_bits("k1", bits);
        let mut bed = TestBed::new()
            .filter(
                wasm("jwt_auth"),
                local(
                    &key,
                    json!({"algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]}),
                ),
            )
            .build()
            .unwrap();
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            let good = key.sign(alg, claims(json!({})));
            let send = |bed: &mut TestBed, t: &str| {
                bed.send(Request::get("/o").header("authorization", &bearer(t)))
                    .status
            };
            assert_eq!(send(&mut bed, &good), 200, "{bits}-bit {alg}");
            // A bit in the middle of the signature, far from base64's padding bits.
            let mut flipped = good.clone().into_bytes();
            let at = good.rfind('.').unwrap() + (good.len() - good.rfind('.').unwrap()) / 2;
            flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
            let flipped = String::from_utf8(flipped).unwrap();
            assert_eq!(send(&mut bed, &flipped), 401, "{bits}-bit {alg} flipped");
            let forged = impostor.sign(alg, claims(json!({})));
            assert_eq!(send(&mut bed, &forged), 401, "{bits}-bit {alg} other key");
        }
    }
}

#[test]
fn guest_memory_stays_flat_while_cached_tokens_expire() {
    // Twenty clients, each with its own ~3 KB token, come back after their cache entry
    // has expired, round after round: the cache must hold at most its bound, not one
    // more copy of each token per expiry.
    let key = Key::ec256("k1");
    let config = json!({
        "providers": {"idp": provider(json!({"local_jwks": jwks(&[&key])}), json!({}))},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}],
        "cache_ttl_seconds": 1
    });
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config.to_string())
        .build()
        .unwrap();
    let pad = "p".repeat(2000);
    let tokens: Vec<String> = (0..20)
        .map(|i| {
            bearer(&key.sign(
                "ES256",
                claims(json!({"sub": format!("client-{i}"), "pad": pad, "exp": T0 + 100_000})),
            ))
        })
        .collect();
    let round = |bed: &mut TestBed| {
        for t in &tokens {
            let res = bed.send(Request::get("/orders").header("authorization", t));
            assert_eq!(res.status, 200, "{}", res.text());
        }
        bed.advance(Duration::from_secs(2));
    };
    // The allocator takes its last page somewhere in the first rounds (round 18 or 38,
    // as the code's layout falls), then never another: settle well past that.
    for _ in 0..50 {
        round(&mut bed);
    }
    let settled = bed.filter(0).memory_bytes();
    for _ in 0..200 {
        round(&mut bed);
    }
    assert_eq!(
        bed.filter(0).memory_bytes(),
        settled,
        "jwt-auth's memory grew while tokens expired"
    );
    assert_eq!(
        bed.metric("jwt_auth_allowed"),
        Some(MetricValue::Counter(20 * 250))
    );
}

#[test]
fn a_token_does_not_choose_its_credential_identifier() {
    // A provider that pins no issuer accepts any `iss`: the credential downstream
    // filters see is the provider, never what the token says.
    let key = Key::ec256("k1");
    let config = json!({
        "providers": {"partner": {"local_jwks": jwks(&[&key]), "algorithms": ["ES256"]}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "partner"}}]
    });
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config.to_string())
        .build()
        .unwrap();
    for iss in [Some("https://idp.test"), Some("admin"), None] {
        let mut c = claims(json!({}));
        match iss {
            Some(i) => c["iss"] = json!(i),
            None => {
                c.as_object_mut().unwrap().remove("iss");
            }
        }
        let res = bed.send(
            Request::get("/orders")
                .header("authorization", &bearer(&key.sign("ES256", c)))
                .header("x-credential-identifier", "spoofed"),
        );
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(
            res.upstream_header("x-credential-identifier").as_deref(),
            Some("partner"),
            "iss {iss:?}"
        );
    }
}

#[test]
fn a_request_without_a_path_is_refused_not_let_through() {
    let key = Key::ec256("k1");
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), local(&key, json!({})))
        .build()
        .unwrap();
    let mut req = Request::get("/orders").header("x-request-id", "no-path");
    req.headers.remove(":path");
    let res = bed.send(req);
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.upstream.is_none());
    assert_eq!(res.json()["message"], "the request has no path");
    assert_eq!(res.json()["request_id"], "no-path");
    assert_eq!(
        bed.metric("jwt_auth_denied_path"),
        Some(MetricValue::Counter(1))
    );
}

#[test]
fn path_tricks_never_reach_a_protected_route_without_a_token() {
    let key = Key::ec256("k1");
    // A public prefix beside the protected rest, written both ways.
    for public in [
        json!({"prefix": "/health"}),
        json!({"path_separated_prefix": "/health"}),
    ] {
        let config = json!({
            "providers": {"idp": provider(json!({"local_jwks": jwks(&[&key])}), json!({}))},
            "rules": [
                {"match": public},
                {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
            ]
        });
        let mut bed = TestBed::new()
            .filter(wasm("jwt_auth"), config.to_string())
            .build()
            .unwrap();
        for path in ["/health", "/health/live", "/health?x=1"] {
            assert_eq!(bed.send(Request::get(path)).status, 200, "{public}: {path}");
        }
        for trick in [
            "/health/../orders/42",
            "/health/%2e%2e/orders",
            "/health/..;/orders",
            "/health/%2E%2E%2Forders",
            "/health\\..\\orders",
            "/health//../orders",
            "/health/%252e%252e/orders",
            "/health/%5c..%5corders",
        ] {
            let res = bed.send(Request::get(trick));
            assert!(
                res.upstream.is_none(),
                "{public}: {trick} reached the upstream"
            );
            assert!(
                [400, 401].contains(&res.status),
                "{public}: {trick}: {}",
                res.status
            );
            if res.status == 400 {
                assert_eq!(
                    res.json()["message"],
                    "the request path is ambiguous",
                    "{trick}"
                );
            }
        }
        assert!(
            bed.metric("jwt_auth_denied_path")
                .is_some_and(|m| m.count() >= 6),
            "{public}"
        );
        // With a token, a path that reads alike either way passes.
        let token = bearer(&key.sign("ES256", claims(json!({}))));
        let res = bed.send(Request::get("/orders/%34%32").header("authorization", &token));
        assert_eq!(res.status, 200, "{}", res.text());
    }
    // Only the segment-bounded prefix keeps `/healthcare` protected.
    let config = json!({
        "providers": {"idp": provider(json!({"local_jwks": jwks(&[&key])}), json!({}))},
        "rules": [
            {"match": {"path_separated_prefix": "/health"}},
            {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
        ]
    });
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config.to_string())
        .build()
        .unwrap();
    assert_eq!(bed.send(Request::get("/healthcare")).status, 401);
}

#[test]
fn claim_rules_decide_per_route_after_the_scopes() {
    let key = Key::ec256("k1");
    let config = json!({
        "providers": {"idp": provider(json!({"local_jwks": jwks(&[&key])}), json!({}))},
        "rules": [
            // Kong's acl: members of ops, unless suspended.
            {"match": {"prefix": "/ops"}, "requires": {"provider": "idp", "claims": [
                {"claim": "groups", "contains": "ops"},
                {"none": [{"claim": "groups", "contains": "suspended"}]}
            ]}},
            // Nested claims, and `any`.
            {"match": {"prefix": "/premium"}, "requires": {"provider": "idp", "scopes": ["orders:read"], "claims": [
                {"any": [{"claim": "org.tier", "one_of": ["premium", "enterprise"]}, {"claim": "tier", "equals": "premium"}]}
            ]}},
            {"match": {"prefix": "/staff"}, "requires": {"provider": "idp", "scopes": ["orders:admin"], "claims": [
                {"claim": "groups", "contains": "staff"}
            ]}},
            {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
        ]
    })
    .to_string();
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config)
        .build()
        .unwrap();
    let mut send = |path: &str, extra: Value| {
        let token = key.sign("ES256", claims(extra));
        bed.send(Request::get(path).header("authorization", &bearer(&token)))
    };
    // ops is in groups (["eng", "ops"] by default).
    let res = send("/ops/deploy", json!({}));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("x-consumer-id").as_deref(),
        Some("user-1")
    );
    // Not in ops: 403 with a JSON message, no insufficient_scope (this is no scope).
    let res = send("/ops/deploy", json!({"groups": ["eng"]}));
    assert_eq!(res.status, 403);
    assert_eq!(res.header("www-authenticate"), None);
    assert_eq!(
        res.json()["message"],
        "the token's claims do not satisfy this route's rules"
    );
    assert!(res.upstream.is_none());
    assert_eq!(
        send("/ops/deploy", json!({"groups": ["ops", "suspended"]})).status,
        403
    );
    // A claim of the wrong shape does not pass: a string is not a list of groups, but
    // a space-separated string holds words.
    assert_eq!(send("/ops/deploy", json!({"groups": "ops"})).status, 200);
    assert_eq!(send("/ops/deploy", json!({"groups": "opsx"})).status, 403);
    assert_eq!(
        send("/ops/deploy", json!({"groups": {"ops": true}})).status,
        403
    );
    // Nested claim or the top-level one.
    assert_eq!(
        send(
            "/premium",
            json!({"tier": "free", "org": {"tier": "enterprise"}})
        )
        .status,
        200
    );
    assert_eq!(
        send("/premium", json!({"tier": "free", "org": {"tier": "free"}})).status,
        403
    );
    assert_eq!(send("/premium", json!({})).status, 200);
    // Scopes are checked first, and say so.
    let res = send("/staff", json!({"groups": ["staff"]}));
    assert_eq!(res.status, 403);
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(
        send(
            "/staff",
            json!({"groups": ["staff"], "scope": "orders:admin"})
        )
        .status,
        200
    );
    assert_eq!(send("/staff", json!({"scope": "orders:admin"})).status, 403);
    // The other routes are not touched by those rules.
    assert_eq!(send("/orders", json!({"groups": []})).status, 200);
    assert_eq!(
        bed.metric("jwt_auth_denied_claims"),
        Some(MetricValue::Counter(6))
    );
}

#[test]
fn a_claim_rule_written_wrong_is_refused_at_start_with_its_place() {
    let key = Key::ec256("k1");
    let config = json!({
        "providers": {"idp": provider(json!({"local_jwks": jwks(&[&key])}), json!({}))},
        "rules": [
            {"match": {"prefix": "/"}, "requires": {"provider": "idp", "claims": [
                {"claim": "groups", "contains": "ops"},
                {"any": [{"claim": "tier"}]}
            ]}}
        ]
    })
    .to_string();
    let err = TestBed::new()
        .filter(wasm("jwt_auth"), config)
        .build()
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("rules[0].requires.claims[1].any[0]") && text.contains("needs one of"),
        "{text}"
    );
}

/// A provider that checks opaque tokens at an introspection endpoint (RFC 7662),
/// scripted here: which tokens are active, and whether it answers at all.
fn introspecting(active: Rc<std::cell::RefCell<Vec<&'static str>>>, up: Rc<Cell<bool>>) -> TestBed {
    let config = json!({
        "providers": {"opaque": {
            "issuer": "https://idp.test",
            "audiences": ["orders-api"],
            "introspection": {"cluster": "idp", "path": "/introspect", "client_id": "rs",
                "client_secret": "rs secret", "cache_ttl_seconds": 60, "negative_cache_seconds": 10},
            "consumer": {"id_claim": "sub", "username_claim": "client_id"}
        }},
        "rules": [
            {"match": {"prefix": "/admin"}, "requires": {"provider": "opaque", "scopes": ["orders:admin"]}},
            {"match": {"prefix": "/ops"}, "requires": {"provider": "opaque", "claims": [{"claim": "groups", "contains": "ops"}]}},
            {"match": {"prefix": "/"}, "requires": {"provider": "opaque"}}
        ]
    })
    .to_string();
    TestBed::new()
        .filter(wasm("jwt_auth"), config)
        .cluster("idp", move |req| {
            if !up.get() {
                return Reply::Fail(CallFailure::ConnectFailed("refused".into()));
            }
            let form: std::collections::BTreeMap<String, String> =
                form_urlencoded::parse(&req.body).into_owned().collect();
            let token = form.get("token").cloned().unwrap_or_default();
            if active.borrow().contains(&token.as_str()) {
                Reply::json(
                    &json!({"active": true, "sub": "svc-1", "client_id": "billing",
                    "scope": "orders:read", "iss": "https://idp.test", "aud": "orders-api",
                    "groups": ["ops"], "iat": T0, "exp": T0 + 3600, "token_type": "Bearer"}),
                )
            } else {
                Reply::json(&json!({"active": false}))
            }
        })
        .build()
        .unwrap()
}

#[test]
fn opaque_tokens_are_introspected_cached_and_refused_once_revoked() {
    let active = Rc::new(std::cell::RefCell::new(vec!["opaque-1"]));
    let up = Rc::new(Cell::new(true));
    let mut bed = introspecting(active.clone(), up.clone());
    let get = |bed: &mut TestBed, path: &str, token: &str| {
        bed.send(Request::get(path).header("authorization", &bearer(token)))
    };
    let res = get(&mut bed, "/orders", "opaque-1");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("x-consumer-id").as_deref(),
        Some("svc-1")
    );
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("billing")
    );
    let calls = bed.calls();
    assert_eq!(calls.len(), 1);
    let (cluster, req) = &calls[0];
    assert_eq!(cluster, "idp");
    assert_eq!(req.headers.get_str(":method"), Some("POST"));
    assert_eq!(req.headers.get_str(":path"), Some("/introspect"));
    // client_secret_basic: id and secret form-encoded, then base64.
    assert_eq!(
        req.headers.get_str("authorization"),
        Some(
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("rs:rs+secret")
            )
            .as_str()
        )
    );
    assert_eq!(
        String::from_utf8_lossy(&req.body),
        "token=opaque-1&token_type_hint=access_token"
    );
    // Cached: no second call; scopes and claim rules apply to its claims.
    assert_eq!(get(&mut bed, "/orders", "opaque-1").status, 200);
    assert_eq!(get(&mut bed, "/ops", "opaque-1").status, 200);
    let res = get(&mut bed, "/admin", "opaque-1");
    assert_eq!(res.status, 403);
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(bed.calls().len(), 1);

    // Unknown: 401 invalid_token, and asked again only after the negative TTL.
    let res = get(&mut bed, "/orders", "never-issued");
    assert_eq!(res.status, 401);
    assert!(
        res.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(get(&mut bed, "/orders", "never-issued").status, 401);
    assert_eq!(bed.calls().len(), 2);
    bed.advance(Duration::from_secs(11));
    assert_eq!(get(&mut bed, "/orders", "never-issued").status, 401);
    assert_eq!(bed.calls().len(), 3);

    // Revoked at the IdP: still served from the cache until its entry ends (60 s),
    // then refused.
    active.borrow_mut().clear();
    assert_eq!(get(&mut bed, "/orders", "opaque-1").status, 200);
    bed.advance(Duration::from_secs(61));
    assert_eq!(get(&mut bed, "/orders", "opaque-1").status, 401);

    // The endpoint unreachable: 503 with Retry-After, nothing cached.
    up.set(false);
    active.borrow_mut().push("opaque-2");
    let res = get(&mut bed, "/orders", "opaque-2");
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.header("retry-after"), Some("10"));
    up.set(true);
    assert_eq!(get(&mut bed, "/orders", "opaque-2").status, 200);
    assert_eq!(
        bed.metric("jwt_auth_denied_inactive").map(|m| m.count()),
        Some(4)
    );
}

#[test]
fn a_failing_discovery_is_tried_again_after_a_pause_not_every_tick() {
    let up = Rc::new(Cell::new(false));
    let answering = up.clone();
    let config = json!({
        "providers": {"opaque": {
            "issuer": "https://idp.test",
            "introspection": {"cluster": "idp", "client_id": "rs", "client_secret": "s"},
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "opaque"}}]
    })
    .to_string();
    let mut bed = TestBed::new()
        .filter(wasm("jwt_auth"), config)
        .cluster("idp", move |req| {
            let path = req.headers.get_str(":path").unwrap_or("").to_owned();
            if !answering.get() {
                return Reply::status(503, &[], "down");
            }
            if path == "/.well-known/openid-configuration" {
                return Reply::json(&json!({"issuer": "https://idp.test",
                    "introspection_endpoint": "https://idp.test/oauth/introspect"}));
            }
            Reply::json(
                &json!({"active": true, "sub": "svc", "iss": "https://idp.test",
                "exp": T0 + 3600}),
            )
        })
        .build()
        .unwrap();
    let discoveries = |bed: &TestBed| {
        bed.calls()
            .iter()
            .filter(|(_, r)| {
                r.headers.get_str(":path") == Some("/.well-known/openid-configuration")
            })
            .count()
    };
    // Until the endpoint is known: 503 with Retry-After.
    let res = bed.send(Request::get("/x").header("authorization", &bearer("opaque-1")));
    assert_eq!(res.status, 503);
    bed.advance_in_steps(Duration::from_secs(5), Duration::from_secs(1));
    assert_eq!(discoveries(&bed), 1, "one try, then a pause");
    up.set(true);
    bed.advance_in_steps(Duration::from_secs(7), Duration::from_secs(1));
    assert_eq!(discoveries(&bed), 2);
    let res = bed.send(Request::get("/x").header("authorization", &bearer("opaque-1")));
    assert_eq!(res.status, 200, "{}", res.text());
    let (_, last) = bed.calls().pop().unwrap();
    assert_eq!(last.headers.get_str(":path"), Some("/oauth/introspect"));
}
