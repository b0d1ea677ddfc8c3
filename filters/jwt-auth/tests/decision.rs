//! The decision, natively: every algorithm verifies with its own key type, every
//! confusion fails, claims are checked with the skew.

use jwt_auth::auth::{Check, Keys, verify};
use jwt_auth::config::Config;
use jwt_auth::error::{Denial, Invalid};
use jwt_auth::extract::{Found, Location};
use jwt_mint::{Key, b64, hmac_sign, jwks, raw};
use serde_json::{Value, json};

const NOW: u64 = 1_767_225_600;

fn config(keys: &[&Key], extra: Value) -> Config {
    let mut p = json!({"issuer": "https://idp.test", "audiences": ["api"], "local_jwks": jwks(keys),
        "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA","HS256","HS384","HS512"]});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    let doc = json!({"providers": {"idp": p}});
    Config::parse(Some(doc.to_string().as_bytes())).unwrap_or_else(|e| panic!("{e}"))
}

fn claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "api", "sub": "ada", "iat": NOW - 10, "exp": NOW + 300})
}

fn check(c: &Config, token: &str) -> Result<(), Denial> {
    let found = Found {
        token: token.into(),
        location: Location::Header("authorization".into()),
        providers: vec![0],
    };
    match verify(c, &found, &|_| Keys::NotYet, false, NOW) {
        Check::Ok(_) => Ok(()),
        Check::Deny(d) => Err(d),
        Check::NeedKeys { .. } => panic!("local keys"),
    }
}

#[test]
fn every_algorithm_verifies_with_its_key_type() {
    let rsa = Key::rsa("rsa");
    let (e256, e384, ed, hs) = (
        Key::ec256("e256"),
        Key::ec384("e384"),
        Key::ed25519("ed"),
        Key::hmac("hs", 64),
    );
    let c = config(&[&rsa, &e256, &e384, &ed, &hs], json!({}));
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        assert_eq!(check(&c, &rsa.sign(alg, claims())), Ok(()), "{alg}");
    }
    assert_eq!(check(&c, &e256.sign("ES256", claims())), Ok(()));
    assert_eq!(check(&c, &e384.sign("ES384", claims())), Ok(()));
    assert_eq!(check(&c, &ed.sign("EdDSA", claims())), Ok(()));
    for alg in ["HS256", "HS384", "HS512"] {
        assert_eq!(check(&c, &hs.sign(alg, claims())), Ok(()), "{alg}");
    }
}

#[test]
fn algorithm_confusion_fails() {
    let rsa = Key::rsa("rsa");
    let c = config(&[&rsa], json!({}));
    let bad_sig = Err(Denial::Invalid(Invalid::BadSignature));
    let unknown = Err(Denial::Invalid(Invalid::UnknownKey));
    // alg none, with and without a signature.
    let none = raw(r#"{"alg":"none","kid":"rsa"}"#, &claims().to_string(), b"");
    assert_eq!(
        check(&c, &none),
        Err(Denial::Invalid(Invalid::AlgorithmNotAllowed))
    );
    let none2 = raw(r#"{"alg":"None"}"#, &claims().to_string(), b"x");
    assert_eq!(
        check(&c, &none2),
        Err(Denial::Invalid(Invalid::AlgorithmNotAllowed))
    );
    // HS256 signed with the RSA public key's JWK bytes and its modulus as the secret.
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"rsa"}"#),
        b64(claims().to_string().as_bytes())
    );
    for secret in [
        rsa.jwk().to_string().into_bytes(),
        rsa.jwk()["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let forged = format!(
            "{input}.{}",
            b64(&hmac_sign("HS256", &secret, input.as_bytes()))
        );
        assert_eq!(
            check(&c, &forged),
            unknown,
            "an HS token never meets an RSA key"
        );
    }
    // ES256 header on an RSA signature; RS256 header with a PS256 signature.
    let es = rsa
        .sign_with_header(json!({"alg": "RS256", "kid": "rsa"}), claims())
        .replacen(
            &b64(br#"{"alg":"RS256","kid":"rsa"}"#),
            &b64(br#"{"alg":"ES256","kid":"rsa"}"#),
            1,
        );
    assert_eq!(check(&c, &es), unknown);
    let ps = rsa.sign_with_header(json!({"alg": "PS256", "kid": "rsa"}), claims());
    let as_rs = ps.replacen(
        &b64(br#"{"alg":"PS256","kid":"rsa"}"#),
        &b64(br#"{"alg":"RS256","kid":"rsa"}"#),
        1,
    );
    assert_eq!(check(&c, &as_rs), bad_sig);
    // A key whose JWK names RS256 refuses PS256 tokens.
    let mut pinned = jwks(&[&rsa]);
    pinned["keys"][0]["alg"] = json!("RS256");
    let c2 = Config::parse(Some(json!({"providers": {"idp": {"local_jwks": pinned, "issuer": "https://idp.test", "audiences": ["api"]}}}).to_string().as_bytes())).unwrap();
    assert_eq!(check(&c2, &rsa.sign("PS256", claims())), unknown);
    assert_eq!(check(&c2, &rsa.sign("RS256", claims())), Ok(()));
}

#[test]
fn a_provider_allow_list_limits_algorithms() {
    let rsa = Key::rsa("rsa");
    let c = config(&[&rsa], json!({"algorithms": ["PS256"]}));
    assert_eq!(
        check(&c, &rsa.sign("RS256", claims())),
        Err(Denial::Invalid(Invalid::AlgorithmNotAllowed))
    );
    assert_eq!(check(&c, &rsa.sign("PS256", claims())), Ok(()));
}

#[test]
fn signature_tampering_fails() {
    let k = Key::ec256("k");
    let c = config(&[&k], json!({}));
    let t = k.sign("ES256", claims());
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    parts[1] = b64(
        json!({"iss": "https://idp.test", "aud": "api", "sub": "admin", "exp": NOW + 300})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        check(&c, &parts.join(".")),
        Err(Denial::Invalid(Invalid::BadSignature))
    );
    let other = Key::ec256("k");
    assert_eq!(
        check(&c, &other.sign("ES256", claims())),
        Err(Denial::Invalid(Invalid::BadSignature))
    );
}

#[test]
fn time_claims_use_the_skew() {
    let k = Key::ed25519("k");
    let c = config(&[&k], json!({"clock_skew_seconds": 60}));
    let with = |extra: Value| {
        let mut cl = claims();
        for (a, b) in extra.as_object().unwrap() {
            cl[a] = b.clone();
        }
        check(&c, &k.sign("EdDSA", cl))
    };
    assert_eq!(with(json!({"exp": NOW - 30})), Ok(()), "within the skew");
    assert_eq!(
        with(json!({"exp": NOW - 61})),
        Err(Denial::Invalid(Invalid::Expired))
    );
    assert_eq!(with(json!({"nbf": NOW + 30})), Ok(()));
    assert_eq!(
        with(json!({"nbf": NOW + 61})),
        Err(Denial::Invalid(Invalid::NotYetValid))
    );
    assert_eq!(
        with(json!({"iat": NOW + 61})),
        Err(Denial::Invalid(Invalid::IssuedInFuture))
    );
    assert_eq!(
        with(json!({"exp": "tomorrow"})),
        Err(Denial::Invalid(Invalid::BadClaim("exp")))
    );
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        check(&c, &k.sign("EdDSA", no_exp.clone())),
        Err(Denial::Invalid(Invalid::NoExpiration))
    );
    let lenient = config(&[&k], json!({"require_expiration": false}));
    assert_eq!(check(&lenient, &k.sign("EdDSA", no_exp)), Ok(()));
    let short = config(&[&k], json!({"max_lifetime_seconds": 100}));
    assert_eq!(
        check(&short, &k.sign("EdDSA", claims())),
        Err(Denial::Invalid(Invalid::LifetimeTooLong))
    );
}

#[test]
fn issuer_is_exact_and_audience_intersects() {
    let k = Key::ec384("k");
    let c = config(&[&k], json!({"audiences": ["api", "other"]}));
    let with = |extra: Value| {
        let mut cl = claims();
        for (a, b) in extra.as_object().unwrap() {
            cl[a] = b.clone();
        }
        check(&c, &k.sign("ES384", cl))
    };
    assert_eq!(with(json!({"aud": ["x", "other"]})), Ok(()));
    assert_eq!(with(json!({"aud": "nope"})), Err(Denial::Audience));
    assert_eq!(
        with(json!({"iss": "https://idp.test/"})),
        Err(Denial::Invalid(Invalid::Issuer))
    );
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    let err = |doc: Value| {
        Config::parse(Some(doc.to_string().as_bytes()))
            .unwrap_err()
            .to_string()
    };
    let k = Key::ec256("k");
    assert!(
        err(json!({"providers": {"p": {"local_jwks": jwks(&[&k]), "algorithms": ["RS257"]}}}))
            .contains("providers.p.algorithms")
    );
    assert!(
        err(json!({"providers": {"p": {"local_jwks": jwks(&[&k]), "algorithms": ["none"]}}}))
            .contains("none")
    );
    assert!(
        err(json!({"providers": {"p": {"local_jwks": {"keys": [{"kty": "RSA", "n": "!"}]}}}}))
            .contains("providers.p.local_jwks")
    );
    assert!(err(json!({"providers": {"p": {"local_jwks": jwks(&[&k])}}, "rules": [{"match": {"prefix": "/"}, "requires": {"any": ["q"]}}]})).contains("unknown provider `q`"));
    let short = Key::hmac("s", 16);
    assert!(
        err(json!({"providers": {"p": {"local_jwks": jwks(&[&short]), "algorithms": ["HS256"]}}}))
            .contains("at least 32 bytes")
    );
    assert!(
        err(json!({"providers": {"p": {}}}))
            .contains("one of remote_jwks, local_jwks or introspection")
    );
}

fn routed(rules: Value) -> Config {
    let k = Key::ec256("k");
    let doc = json!({"providers": {"idp": {"local_jwks": jwks(&[&k])}}, "rules": rules});
    Config::parse(Some(doc.to_string().as_bytes())).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_path_separated_prefix_matches_whole_segments() {
    let c = routed(json!([
        {"match": {"path_separated_prefix": "/health"}},
        {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
    ]));
    for (path, rule) in [
        ("/health", 0),
        ("/health/", 0),
        ("/health/live", 0),
        ("/health?verbose=1", 0),
        ("/healthcare", 1),
        ("/health-admin", 1),
        ("/healt", 1),
        ("/", 1),
    ] {
        assert_eq!(c.route(path, "GET"), Ok(Some(rule)), "{path}");
    }
}

#[test]
fn a_path_whose_lax_reading_picks_another_rule_is_refused() {
    use jwt_auth::error::PathRefusal;
    let c = routed(json!([
        {"match": {"path_separated_prefix": "/health"}},
        {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
    ]));
    for trick in [
        "/health/../orders/42",
        "/health/%2e%2e/orders",
        "/health/..;/orders",
        "/health/%2E%2E%2Forders",
        "/health//../orders",
        "/health/%252e%252e/orders",
        "/health/;/../orders",
    ] {
        assert_eq!(
            c.route(trick, "GET"),
            Err(PathRefusal::Ambiguous),
            "{trick}"
        );
    }
    // Read either way, these need a token: no ambiguity to refuse.
    for needs_token in ["/health\\..\\orders", "/orders/%2e%2e/orders", "/a/./b"] {
        assert_eq!(c.route(needs_token, "GET"), Ok(Some(1)), "{needs_token}");
    }
    // Encoded, but the same rule either way.
    assert_eq!(c.route("/health/%6cive", "GET"), Ok(Some(0)));
    // The same tricks behind a plain prefix.
    let c = routed(json!([
        {"match": {"prefix": "/public"}},
        {"match": {"prefix": "/"}, "requires": {"provider": "idp"}}
    ]));
    assert_eq!(
        c.route("/public/..;/admin", "GET"),
        Err(PathRefusal::Ambiguous)
    );
    assert_eq!(c.route("/public/x", "GET"), Ok(Some(0)));
}

#[test]
fn a_request_without_a_usable_path_is_refused() {
    use jwt_auth::error::PathRefusal;
    use kit::path::PathError;
    let c = routed(json!([{"match": {"prefix": "/"}, "requires": {"provider": "idp"}}]));
    for (target, why) in [
        ("", PathError::Missing),
        ("?a=b", PathError::Missing),
        ("*", PathError::NotAbsolute),
        ("orders", PathError::NotAbsolute),
        ("/a%00", PathError::Control),
    ] {
        assert_eq!(
            c.route(target, "GET"),
            Err(PathRefusal::Invalid(why)),
            "{target}"
        );
    }
    let d = Denial::Path(PathRefusal::Ambiguous);
    assert_eq!((d.status(), d.reason()), (400, "path"));
    assert_eq!(d.www_authenticate("r"), None);
}

#[test]
fn a_path_separated_prefix_is_checked_at_load() {
    let err = |m: Value| {
        let k = Key::ec256("k");
        let doc =
            json!({"providers": {"idp": {"local_jwks": jwks(&[&k])}}, "rules": [{"match": m}]});
        Config::parse(Some(doc.to_string().as_bytes()))
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    };
    for (m, says) in [
        (
            json!({"path_separated_prefix": "/a", "prefix": "/a"}),
            "prefix",
        ),
        (json!({"path_separated_prefix": "/a", "path": "/a"}), "path"),
        (json!({"path_separated_prefix": "a"}), "must start with /"),
        (
            json!({"path_separated_prefix": "/a/"}),
            "must not end with /",
        ),
        (json!({"path_separated_prefix": "/"}), "must not end with /"),
        (json!({"path_separated_prefix": "/a?b"}), "?"),
        (json!({}), "path_separated_prefix"),
    ] {
        let e = err(m.clone());
        assert!(e.contains("rules[0].match") && e.contains(says), "{m}: {e}");
    }
}
