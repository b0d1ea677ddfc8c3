//! `key-auth` in the test bed: Kong key-auth's answers, where keys are looked for,
//! `hide_credentials`, keys kept only as digests, consumers fetched from a key
//! service, and the chain with tier-limiter and header-forwarder unchanged.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use key_auth::directory::hash_string;
use portcullis_testbed::{CallFailure, Reply, Request, TestBed, wasm};
use serde_json::json;

/// Two consumers; the keys are made here and only their digests are configured.
fn consumers() -> serde_json::Value {
    json!([
        {"id": "c-ada", "username": "ada", "groups": ["ops", "billing"], "tier": "premium",
         "keys": [hash_string(b"ada-key-1"), {"id": "ada-ci", "hash": hash_string(b"ada-key-2")}]},
        {"id": "c-bob", "username": "bob", "tier": "free", "keys": [hash_string(b"bob-key")]}
    ])
}

fn bed(extra: serde_json::Value) -> TestBed {
    let mut config = json!({"consumers": consumers()});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    TestBed::new()
        .filter(wasm("key_auth"), config.to_string())
        .build()
        .unwrap()
}

#[test]
fn kongs_answers_for_a_missing_an_invalid_and_a_good_key() {
    let mut bed = bed(json!({}));
    // Kong key-auth: 401 "No API key found in request", WWW-Authenticate: Key.
    let res = bed.send(Request::get("/orders"));
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["message"], "No API key found in request");
    assert_eq!(
        res.header("www-authenticate"),
        Some("Key realm=\"portcullis\"")
    );
    // Kong 3: 401 "Invalid authentication credentials".
    let res = bed.send(Request::get("/orders").header("apikey", "guess"));
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["message"], "Invalid authentication credentials");
    // A key's digest is not a key.
    let res = bed.send(Request::get("/orders").header("apikey", &hash_string(b"ada-key-1")));
    assert_eq!(res.status, 401);

    let res = bed.send(
        Request::get("/orders")
            .header("apikey", "ada-key-1")
            .header("x-consumer-id", "c-root")
            .header("x-consumer-tier", "enterprise"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let up = |n: &str| res.upstream_header(n);
    assert_eq!(up("x-consumer-id").as_deref(), Some("c-ada"));
    assert_eq!(up("x-consumer-username").as_deref(), Some("ada"));
    assert_eq!(up("x-consumer-groups").as_deref(), Some("ops,billing"));
    assert_eq!(up("x-consumer-tier").as_deref(), Some("premium"));
    assert_eq!(
        up("x-credential-identifier").as_deref(),
        Some(&hash_string(b"ada-key-1")[..23])
    );
    // Not hidden by default (Kong's default), so the upstream still has it.
    assert_eq!(up("apikey").as_deref(), Some("ada-key-1"));

    let res = bed.send(Request::get("/orders?apikey=ada-key-2"));
    assert_eq!(res.status, 200);
    assert_eq!(
        res.upstream_header("x-credential-identifier").as_deref(),
        Some("ada-ci")
    );

    // A client's own identity headers never pass.
    let res = bed.send(
        Request::get("/orders")
            .header("apikey", "bob-key")
            .header("x-consumer-groups", "admin"),
    );
    assert_eq!(res.upstream_header("x-consumer-groups"), None);
    assert_eq!(
        res.upstream_header("x-consumer-username").as_deref(),
        Some("bob")
    );

    for (reason, n) in [("missing", 1), ("invalid", 2)] {
        assert_eq!(
            bed.metric(&format!("key_auth_denied_{reason}"))
                .map(|m| m.count()),
            Some(n),
            "{reason}"
        );
    }
    assert_eq!(bed.metric("key_auth_allowed").map(|m| m.count()), Some(3));
    // No key, good or bad, is ever logged.
    for key in ["ada-key-1", "ada-key-2", "guess", "bob-key"] {
        assert!(!bed.logged(key), "{key} logged");
    }
}

#[test]
fn more_than_one_key_is_refused_wherever_they_are() {
    let mut bed = bed(json!({"key_in_cookie": true}));
    for req in [
        Request::get("/x")
            .header("apikey", "ada-key-1")
            .header("apikey", "bob-key"),
        Request::get("/x?apikey=bob-key").header("apikey", "ada-key-1"),
        Request::get("/x?apikey=ada-key-1&apikey=ada-key-1"),
        Request::get("/x")
            .header("cookie", "apikey=bob-key")
            .header("apikey", "ada-key-1"),
    ] {
        let res = bed.send(req);
        assert_eq!(res.status, 401);
        assert_eq!(res.json()["message"], "Duplicate API key found");
    }
}

#[test]
fn hide_credentials_takes_the_key_out_of_the_header_the_query_and_the_cookie() {
    let mut bed =
        bed(json!({"key_names": ["x-api-key"], "key_in_cookie": true, "hide_credentials": true}));
    let res = bed.send(Request::get("/x").header("X-Api-Key", "ada-key-1"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("x-api-key"), None);
    let res = bed.send(Request::get("/x?a=1&x-api-key=ada-key-1&b=2"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header(":path").as_deref(), Some("/x?a=1&b=2"));
    let res = bed.send(Request::get("/x").header("cookie", "s=1; x-api-key=ada-key-1; t=2"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("cookie").as_deref(), Some("s=1; t=2"));
    let res = bed.send(Request::get("/x").header("cookie", "x-api-key=ada-key-1"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("cookie"), None);
}

#[test]
fn claim_rules_on_the_consumer_refuse_with_kongs_acl_answer() {
    let mut bed = bed(json!({"claims": [{"claim": "groups", "contains": "ops"}]}));
    assert_eq!(
        bed.send(Request::get("/x").header("apikey", "ada-key-1"))
            .status,
        200
    );
    let res = bed.send(Request::get("/x").header("apikey", "bob-key"));
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["message"], "You cannot consume this service");
    assert_eq!(res.header("www-authenticate"), None);
}

#[test]
fn a_bad_configuration_is_refused_and_names_the_field() {
    for (config, says) in [
        (
            json!({"consumers": [{"id": "a", "keys": ["in-clear"]}]}),
            "consumers[0].keys[0]",
        ),
        (json!({}), "no key at all"),
    ] {
        let err = TestBed::new()
            .filter(wasm("key_auth"), config.to_string())
            .build()
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(says), "{err}");
    }
}

/// Consumers from a key service, scripted here: what it holds and whether it answers.
fn with_service(doc: Rc<RefCell<serde_json::Value>>, up: Rc<Cell<bool>>) -> TestBed {
    let config = json!({
        "consumers": [{"id": "c-local", "keys": [hash_string(b"local-key")]}],
        "key_service": {"cluster": "keys", "path": "/consumers", "refresh_seconds": 30,
            "max_stale_seconds": 100}
    });
    TestBed::new()
        .filter(wasm("key_auth"), config.to_string())
        .cluster("keys", move |req| {
            assert_eq!(req.headers.get_str(":path"), Some("/consumers"));
            if !up.get() {
                return Reply::Fail(CallFailure::ConnectFailed("refused".into()));
            }
            Reply::json(&doc.borrow())
        })
        .build()
        .unwrap()
}

#[test]
fn consumers_from_a_key_service_are_fetched_refreshed_and_kept_when_it_fails() {
    let doc = Rc::new(RefCell::new(
        json!({"consumers": [{"id": "c-svc", "tier": "standard", "keys": [hash_string(b"svc-key-1")]}]}),
    ));
    let up = Rc::new(Cell::new(false));
    let mut bed = with_service(doc.clone(), up.clone());
    let get = |bed: &mut TestBed, key: &str| bed.send(Request::get("/x").header("apikey", key));
    // The configuration's keys work at once; a key that may be the service's cannot be
    // told apart from a bad one before a first fetch: 503, Retry-After.
    assert_eq!(get(&mut bed, "local-key").status, 200);
    bed.advance(Duration::from_secs(1));
    let res = get(&mut bed, "svc-key-1");
    assert_eq!(res.status, 503);
    assert_eq!(res.header("retry-after"), Some("10"));
    up.set(true);
    bed.advance(Duration::from_secs(11));
    let res = get(&mut bed, "svc-key-1");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.upstream_header("x-consumer-tier").as_deref(),
        Some("standard")
    );
    assert_eq!(get(&mut bed, "svc-key-2").status, 401);

    // Rotated at the service: seen after the refresh.
    doc.borrow_mut()["consumers"][0]["keys"] = json!([hash_string(b"svc-key-2")]);
    assert_eq!(get(&mut bed, "svc-key-2").status, 401);
    bed.advance_in_steps(Duration::from_secs(31), Duration::from_secs(1));
    assert_eq!(get(&mut bed, "svc-key-2").status, 200);
    assert_eq!(get(&mut bed, "svc-key-1").status, 401);

    // The service down, or answering garbage: what was fetched keeps serving.
    up.set(false);
    bed.advance_in_steps(Duration::from_secs(31), Duration::from_secs(1));
    assert_eq!(get(&mut bed, "svc-key-2").status, 200);
    up.set(true);
    *doc.borrow_mut() = json!({"consumers": [{"id": "x", "keys": ["in-clear"]}]});
    bed.advance_in_steps(Duration::from_secs(31), Duration::from_secs(1));
    assert_eq!(get(&mut bed, "svc-key-2").status, 200);
    assert!(
        bed.metric("key_auth_fetch_failures")
            .map(|m| m.count())
            .unwrap_or(0)
            >= 2
    );
    assert!(bed.logged("fetching consumers failed"));
    // Failing for longer than max_stale_seconds (100): what was fetched no longer
    // counts, so a key revoked meanwhile cannot keep working; the configuration's do.
    bed.advance_in_steps(Duration::from_secs(60), Duration::from_secs(1));
    let res = get(&mut bed, "svc-key-2");
    assert_eq!(res.status, 503);
    assert_eq!(res.header("retry-after"), Some("10"));
    assert_eq!(get(&mut bed, "local-key").status, 200);
}

#[test]
fn tier_limiter_and_header_forwarder_work_behind_it_unchanged() {
    let auth = json!({"consumers": consumers(), "hide_credentials": true});
    let limiter =
        json!({"tiers": {"free": {"second": 2}, "premium": {"second": 5}}, "default_tier": "free"});
    let mut bed = TestBed::new()
        .filter(wasm("key_auth"), auth.to_string())
        .filter(wasm("tier_limiter"), limiter.to_string())
        .filter(
            wasm("header_forwarder"),
            json!({"forward_authorization": true, "request": {"add": {"headers": {"x-who": "$(consumer.username)"}}}})
                .to_string(),
        )
        .build()
        .unwrap();
    let burst = |bed: &mut TestBed, key: &str| {
        (0..8)
            .filter(|_| bed.send(Request::get("/x").header("apikey", key)).status == 200)
            .count()
    };
    // Each consumer's own tier, counted per consumer.
    assert_eq!(burst(&mut bed, "bob-key"), 2);
    assert_eq!(burst(&mut bed, "ada-key-1"), 5);
    bed.advance(Duration::from_secs(1));
    let res = bed.send(Request::get("/x").header("apikey", "ada-key-2"));
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("x-who").as_deref(), Some("ada"));
    // The key is hidden, and never turned into a bearer token.
    assert_eq!(res.upstream_header("apikey"), None);
    assert_eq!(res.upstream_header("authorization"), None);
}

#[test]
fn a_request_id_that_is_not_utf8_is_answered_not_a_crash() {
    // HTTP allows obs-text in a value, and Envoy passes a client's x-request-id on;
    // the SDK's string getter panicked on it, failing the VM for every later request.
    let mut bed = bed(json!({}));
    let res = bed.send(Request::get("/x").header_bytes("x-request-id", b"id-\xff\xfe"));
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["message"], "No API key found in request");
    assert_eq!(res.json()["request_id"], "id-\u{fffd}\u{fffd}");
    assert_eq!(
        bed.send(Request::get("/x").header("apikey", "ada-key-1"))
            .status,
        200
    );
}
