//! The shipped examples: each validates, and the quickstart holds against the attacks
//! the hardening issue found in it with nothing but curl.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

use serde_json::json;

fn examples() -> PathBuf {
    portcullis_testbed::workspace_dir().join("examples")
}

#[test]
fn every_example_configuration_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(portcullis_testbed::built_binary("portcullis"))
                .args(["validate", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

/// `examples/quickstart.yaml` as `cargo xtask demo` runs it, on free ports, with the
/// demo IdP (`jwt_mint::demo`, what `demo-idp serve` runs) on a key made now.
#[test]
fn the_quickstart_holds_against_the_attacks_found_in_it() {
    let dir = TempDir::new();
    let key = jwt_mint::demo::signing_key(&dir.0);
    let upstream = echo();
    let idp = jwt_mint::demo::spawn(dir.0.clone());
    let wasm_dir = portcullis_testbed::wasm_dir();
    let yaml = std::fs::read_to_string(examples().join("quickstart.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9901", "127.0.0.1:{ADMIN}")
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace("127.0.0.1:9001", &idp.to_string())
        .replace(
            "../target/wasm32-wasip1/release",
            &wasm_dir.display().to_string(),
        );
    let gw = Gateway::start(&yaml);
    let addr = format!("127.0.0.1:{}", gw.port);
    let token = key.sign(
        "ES256",
        json!({"iss": "https://demo-idp.portcullis.local", "aud": "demo-api", "sub": "ada",
            "preferred_username": "ada", "tier": "premium", "exp": 4_102_444_800u64}),
    );
    let bearer = format!("Bearer {token}");

    // What the README promises.
    let (status, body) = raw_get(&addr, b"/orders/42", &[("authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw_get(&addr, b"/orders/42", &[]).0, 401);
    assert_eq!(raw_get(&addr, b"/health", &[]).0, 200);
    // The claim rule on /admin: a token without the admin group is 403, one with it
    // passes.
    let (status, body) = raw_get(&addr, b"/admin/stats", &[("authorization", &bearer)]);
    assert_eq!(status, 403, "{body}");
    let admin = key.sign(
        "ES256",
        json!({"iss": "https://demo-idp.portcullis.local", "aud": "demo-api", "sub": "root",
            "groups": ["admin"], "tier": "premium", "exp": 4_102_444_800u64}),
    );
    let (status, body) = raw_get(
        &addr,
        b"/admin/stats",
        &[("authorization", &format!("Bearer {admin}"))],
    );
    assert_eq!(status, 200, "{body}");

    // An opaque token of the demo IdP (`cargo xtask token --opaque`): introspected, and
    // the same claim rule holds for it.
    let opaque = |groups: &[&str]| {
        let now = jwt_mint::demo::now();
        jwt_mint::demo::mint_opaque(
            &dir.0,
            &json!({"iss": "https://demo-idp.portcullis.local", "aud": "demo-api", "sub": "bob",
                "preferred_username": "bob", "tier": "standard", "groups": groups,
                "scope": "orders:read", "iat": now, "exp": now + 600}),
        )
    };
    let plain = format!("Bearer {}", opaque(&["demo"]));
    let r = get(&gw, "/orders/42", &[("authorization", &plain)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-consumer-id").as_deref(), Some("bob"));
    assert_eq!(r.upstream_header("x-plan").as_deref(), Some("standard"));
    assert_eq!(
        raw_get(&addr, b"/admin/stats", &[("authorization", &plain)]).0,
        403
    );
    let admin = format!("Bearer {}", opaque(&["admin"]));
    assert_eq!(
        raw_get(&addr, b"/admin/stats", &[("authorization", &admin)]).0,
        200
    );
    assert_eq!(
        raw_get(
            &addr,
            b"/orders/42",
            &[("authorization", "Bearer opq_never_issued")]
        )
        .0,
        401
    );

    // `curl --path-as-is` tricks and the plain-prefix hole, without a token.
    for trick in [
        &b"/health/../orders/42"[..],
        b"/health/%2e%2e/orders/42",
        b"/health/%2E%2e/orders/42",
        b"/health/..;/orders/42",
        b"/health/..%2forders/42",
        b"/healthcare/orders/42",
        b"/healthcare",
    ] {
        let (status, body) = raw_get(&addr, trick, &[]);
        assert!(
            status == 400 || status == 401,
            "{}: {status} {body}",
            String::from_utf8_lossy(trick)
        );
    }

    // Forged forwarding and identity headers, with a valid token.
    let r = get(
        &gw,
        "/orders/42",
        &[
            ("authorization", &bearer),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-consumer-id", "admin"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("gateway.test")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.upstream_header("x-consumer-id").as_deref(), Some("ada"));
}
