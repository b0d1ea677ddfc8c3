//! Differential: a corpus of tokens made at run time, valid and hostile, decided by our
//! `jwt-auth` filter running in Envoy and by Envoy's native `jwt_authn` configured with
//! the same provider. The decisions must match, except where `KNOWN_DIFFERENCES` says
//! why ours is right.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jwt_mint::{Key, b64, hmac_sign, jwks, raw};
use portcullis_clients::HttpCluster;
use portcullis_engine::{HeaderMap, HttpCallRequest};
use portcullis_envoy::{Envoy, EnvoyConfig, WasmFilter};
use portcullis_testbed::wasm;
use serde_json::{Value, json};

/// (token name, why the decisions differ).
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "crit unknown",
        "RFC 7515 4.1.11: a recipient that does not understand a critical header parameter must reject the JWS; jwt_authn ignores `crit`",
    ),
    (
        "issued in the future",
        "an `iat` beyond the clock skew means a broken or forged issuer clock; jwt_authn does not check `iat`",
    ),
];

fn spawn_echo() -> SocketAddr {
    portcullis_echo::spawn_thread().expect("echo upstream starts")
}

fn corpus(now: u64, rsa: &Key, ec: &Key, ed: &Key, hs: &Key, ec384: &Key) -> Vec<(String, String)> {
    let base = json!({"iss": "https://idp.test", "aud": "orders-api", "sub": "user-1", "iat": now - 10, "exp": now + 600});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let mut t: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| t.push((name.to_owned(), token));
    // Valid, every algorithm.
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        add(&format!("valid {alg}"), rsa.sign(alg, base.clone()));
    }
    add("valid ES256", ec.sign("ES256", base.clone()));
    add("valid ES384", ec384.sign("ES384", base.clone()));
    add("valid EdDSA", ed.sign("EdDSA", base.clone()));
    for alg in ["HS256", "HS384", "HS512"] {
        add(&format!("valid {alg}"), hs.sign(alg, base.clone()));
    }
    add(
        "valid, no kid",
        rsa.sign_with_header(json!({"alg": "RS256"}), base.clone()),
    );
    add(
        "valid, aud list",
        ec.sign("ES256", with(json!({"aud": ["x", "orders-api"]}))),
    );
    add(
        "valid, exp in skew",
        ec.sign("ES256", with(json!({"exp": now - 30}))),
    );
    add(
        "valid, nbf in skew",
        ec.sign("ES256", with(json!({"nbf": now + 30}))),
    );
    add(
        "valid, no iat",
        ec.sign("ES256", with(json!({"iat": null}))),
    );
    add(
        "valid, extra claims",
        ec.sign(
            "ES256",
            with(json!({"scope": "a b", "nested": {"x": [1, 2]}})),
        ),
    );
    add(
        "valid, typ at+jwt",
        rsa.sign_with_header(
            json!({"alg": "RS256", "kid": rsa.kid, "typ": "at+jwt"}),
            base.clone(),
        ),
    );
    // Time.
    add(
        "expired",
        ec.sign("ES256", with(json!({"exp": now - 3600}))),
    );
    add(
        "expired beyond skew",
        ec.sign("ES256", with(json!({"exp": now - 61}))),
    );
    add(
        "not yet valid",
        ec.sign("ES256", with(json!({"nbf": now + 3600}))),
    );
    add("no exp", ec.sign("ES256", with(json!({"exp": null}))));
    add(
        "issued in the future",
        ec.sign("ES256", with(json!({"iat": now + 3600, "exp": now + 7200}))),
    );
    add(
        "exp as string",
        ec.sign("ES256", with(json!({"exp": "tomorrow"}))),
    );
    add(
        "nbf as string",
        ec.sign("ES256", with(json!({"nbf": "now"}))),
    );
    // Issuer and audience.
    add(
        "wrong issuer",
        ec.sign("ES256", with(json!({"iss": "https://evil.test"}))),
    );
    add(
        "issuer with slash",
        ec.sign("ES256", with(json!({"iss": "https://idp.test/"}))),
    );
    add("no issuer", ec.sign("ES256", with(json!({"iss": null}))));
    add(
        "wrong audience",
        ec.sign("ES256", with(json!({"aud": "billing"}))),
    );
    add("no audience", ec.sign("ES256", with(json!({"aud": null}))));
    add(
        "audience list without ours",
        ec.sign("ES256", with(json!({"aud": ["a", "b"]}))),
    );
    // Signatures and keys.
    let other = Key::rsa("r1");
    add(
        "signed by another key, same kid",
        other.sign("RS256", base.clone()),
    );
    add(
        "unknown kid",
        Key::ec256("ghost").sign("ES256", base.clone()),
    );
    let good = ec.sign("ES256", base.clone());
    let parts: Vec<&str> = good.split('.').collect();
    add(
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(with(json!({"sub": "admin"})).to_string().as_bytes()),
            parts[2]
        ),
    );
    add(
        "truncated signature",
        format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]),
    );
    add("empty signature", format!("{}.{}.", parts[0], parts[1]));
    add(
        "signature of zeros",
        format!("{}.{}.{}", parts[0], parts[1], b64(&[0u8; 64])),
    );
    add(
        "swapped header",
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES384","kid":"e1"}"#),
            parts[1],
            parts[2]
        ),
    );
    // Algorithm confusion.
    add("alg none", raw(r#"{"alg":"none"}"#, &base.to_string(), b""));
    add(
        "alg none with kid",
        raw(r#"{"alg":"none","kid":"r1"}"#, &base.to_string(), b""),
    );
    add("alg NONE", raw(r#"{"alg":"NONE"}"#, &base.to_string(), b""));
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"r1"}"#),
        b64(base.to_string().as_bytes())
    );
    let secret = rsa.jwk().to_string();
    add(
        "HS256 with the RSA JWK as secret",
        format!(
            "{input}.{}",
            b64(&hmac_sign("HS256", secret.as_bytes(), input.as_bytes()))
        ),
    );
    let n = rsa.jwk()["n"].as_str().unwrap().to_owned();
    add(
        "HS256 with the RSA modulus as secret",
        format!(
            "{input}.{}",
            b64(&hmac_sign("HS256", n.as_bytes(), input.as_bytes()))
        ),
    );
    add(
        "RS256 header, EC key id",
        ec.sign_with_header(json!({"alg": "ES256", "kid": "e1"}), base.clone())
            .replacen(
                &b64(br#"{"alg":"ES256","kid":"e1"}"#),
                &b64(br#"{"alg":"RS256","kid":"e1"}"#),
                1,
            ),
    );
    add(
        "ES256 header on an Ed25519 key",
        ed.sign_with_header(json!({"alg": "EdDSA", "kid": "d1"}), base.clone())
            .replacen(
                &b64(br#"{"alg":"EdDSA","kid":"d1"}"#),
                &b64(br#"{"alg":"ES256","kid":"d1"}"#),
                1,
            ),
    );
    add(
        "unknown alg",
        raw(r#"{"alg":"XS256"}"#, &base.to_string(), b"sig"),
    );
    add(
        "alg missing",
        raw(r#"{"kid":"e1"}"#, &base.to_string(), b"sig"),
    );
    // Malformed.
    add("two parts", format!("{}.{}", parts[0], parts[1]));
    add("four parts", format!("{good}.x"));
    add("not base64", format!("{}.{}.***", parts[0], parts[1]));
    add("header not json", raw("not json", &base.to_string(), b"s"));
    add(
        "payload not json",
        raw(r#"{"alg":"ES256","kid":"e1"}"#, "not json", b"s"),
    );
    add(
        "payload is an array",
        raw(r#"{"alg":"ES256","kid":"e1"}"#, "[1,2]", b"s"),
    );
    add(
        "header is a string",
        raw(r#""ES256""#, &base.to_string(), b"s"),
    );
    add("garbage", "garbage".into());
    add(
        "crit unknown",
        rsa.sign_with_header(
            json!({"alg": "RS256", "kid": "r1", "crit": ["exp"], "exp": 1}),
            base.clone(),
        ),
    );
    add(
        "kid is a number",
        rsa.sign_with_header(json!({"alg": "RS256", "kid": 1}), base.clone()),
    );
    t
}

fn status(client: &HttpCluster, rt: &tokio::runtime::Runtime, token: &str) -> u16 {
    let mut h = HeaderMap::new();
    h.add(":method", "GET");
    h.add(":path", "/orders");
    h.add(":authority", "gateway.test");
    h.add("authorization", format!("Bearer {token}"));
    let req = HttpCallRequest {
        headers: h,
        body: Vec::new(),
        trailers: HeaderMap::new(),
        timeout: Duration::from_secs(10),
    };
    let r = rt.block_on(client.call(req)).expect("envoy answers");
    r.headers
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn our_filter_in_envoy_decides_as_envoys_jwt_authn() {
    let (rsa, ec, ed, hs, ec384) = (
        Key::rsa("r1"),
        Key::ec256("e1"),
        Key::ed25519("d1"),
        Key::hmac("h1", 64),
        Key::ec384("e3"),
    );
    let set = jwks(&[&rsa, &ec, &ed, &hs, &ec384]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let echo = spawn_echo();

    let ours = json!({
        "providers": {"idp": {
            "issuer": "https://idp.test", "audiences": ["orders-api"], "local_jwks": set,
            "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA","HS256","HS384","HS512"],
            "clock_skew_seconds": 60, "require_expiration": true, "max_token_bytes": 65536
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]
    });
    let wasm_envoy = Envoy::start(&EnvoyConfig::new(echo).filter(WasmFilter::new(
        "jwt",
        wasm("jwt_auth"),
        &ours.to_string(),
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    let native = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": "https://idp.test", "audiences": ["orders-api"],
                "local_jwks": {"inline_string": set.to_string()},
                "clock_skew_seconds": 60, "require_expiration": true
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
        }
    });
    let native_envoy = Envoy::start(&EnvoyConfig::new(echo).native_filter(native))
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = HttpCluster::new(
        &format!("http://{}", wasm_envoy.listener),
        Duration::from_secs(1),
        None,
    )
    .unwrap();
    let b = HttpCluster::new(
        &format!("http://{}", native_envoy.listener),
        Duration::from_secs(1),
        None,
    )
    .unwrap();

    let tokens = corpus(now, &rsa, &ec, &ed, &hs, &ec384);
    assert!(
        tokens.len() >= 50,
        "a corpus of at least 50 tokens: {}",
        tokens.len()
    );
    let mut differences = Vec::new();
    let mut differing = Vec::new();
    let mut allowed = 0;
    for (name, token) in &tokens {
        let (ours, theirs) = (status(&a, &rt, token), status(&b, &rt, token));
        if ours == 200 {
            allowed += 1;
        }
        let same = (ours == 200) == (theirs == 200);
        if !same {
            differing.push(name.clone());
        }
        if !same && !KNOWN_DIFFERENCES.iter().any(|(n, _)| n == name) {
            differences.push(format!("{name}: ours {ours}, jwt_authn {theirs}"));
        }
    }
    assert!(
        allowed >= 15,
        "the corpus has valid tokens that pass: {allowed}"
    );
    for (name, _) in KNOWN_DIFFERENCES {
        assert!(
            differing.iter().any(|d| d == name),
            "`{name}` is listed as a difference but both decide alike now"
        );
    }
    assert!(
        differences.is_empty(),
        "decisions differ:\n{}\n(wasm Envoy log: {})",
        differences.join("\n"),
        wasm_envoy.log_text()
    );
}
