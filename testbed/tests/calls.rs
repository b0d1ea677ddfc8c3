//! `calls-filter`, the benchmarks' pricing filter: it makes exactly the host calls its
//! configuration lists, and refuses a configuration it does not understand.

use portcullis_testbed::{Request, TestBed, wasm};
use serde_json::json;

#[test]
fn listed_calls_take_effect_and_nothing_else_changes() {
    let calls = json!({"calls": ["headers", "header authorization", "time", "property request/path",
        "shared_set k v", "shared_get k", "set_header x-consumer-id user-1",
        "set_property portcullis.credential tok", "remove_header x-gone", "copy 64"],
        "setup": ["shared_set at-start yes"],
        "response_calls": ["headers", "set_header x-answered yes", "remove_header x-secret"]});
    let mut bed = TestBed::new()
        .filter(wasm("calls_filter"), calls.to_string())
        // The property is seen by the next filter: header-forwarder forwards it.
        .filter(
            wasm("header_forwarder"),
            json!({"forward_authorization": true}).to_string(),
        )
        .build()
        .unwrap();
    let res = bed.send(
        Request::get("/o")
            .header("x-kept", "1")
            .header("x-gone", "1"),
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.upstream_header("x-gone"), None);
    assert_eq!(res.headers.get_str("x-answered"), Some("yes"));
    assert_eq!(
        res.upstream_header("x-consumer-id").as_deref(),
        Some("user-1")
    );
    assert_eq!(
        res.upstream_header("authorization").as_deref(),
        Some("Bearer tok")
    );
    assert_eq!(res.upstream_header("x-kept").as_deref(), Some("1"));
    assert_eq!(bed.shared_data("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(bed.shared_data("at-start").as_deref(), Some(&b"yes"[..]));
}

#[test]
fn no_calls_is_a_no_op_and_unknown_calls_are_refused() {
    for config in ["", "{}", r#"{"calls": []}"#] {
        let mut bed = TestBed::new()
            .filter(wasm("calls_filter"), config.to_string())
            .build()
            .unwrap();
        let res = bed.send(Request::get("/o").header("x-kept", "1"));
        assert_eq!(
            res.upstream_header("x-kept").as_deref(),
            Some("1"),
            "{config:?}"
        );
    }
    for config in [
        r#"{"calls": ["teleport"]}"#,
        r#"{"calls": "headers"}"#,
        "not json",
        r#"{"calls": ["set_header x"]}"#,
        r#"{"calls": ["copy many"]}"#,
    ] {
        assert!(
            TestBed::new()
                .filter(wasm("calls_filter"), config.to_string())
                .build()
                .is_err(),
            "{config:?} refused"
        );
    }
}
