//! JWT compact parsing (`kit::jwt::token::parse`), then the signature and claim checks
//! a filter runs on what it parsed.
//!
//! Odd first byte: the rest is a token as a client would send it. Whatever it is, a
//! token that parses must be exactly its three segments (`signed` is `header.payload`
//! as sent, the signature re-encodes to the third segment: no second spelling of one
//! token), and no token made without the key verifies.
//!
//! Even first byte: the rest is header and payload JSON (split at the first NUL),
//! signed here with the key: parse(sign(h, p)) must give back p and verify.
#![no_main]

use std::sync::OnceLock;

use kit::jwt::claims::{self, Rules};
use kit::jwt::keys::{Alg, KeySet, parse_jwks};
use kit::jwt::{Invalid, token, verify_signature};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const MAX: usize = 16 * 1024;
const ALL: [Alg; 12] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
    Alg::HS256,
    Alg::HS384,
    Alg::HS512,
];

/// A fresh HMAC key per run (nothing secret in the repository) and its key set.
fn key() -> &'static (Vec<u8>, KeySet) {
    static KEY: OnceLock<(Vec<u8>, KeySet)> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut secret = vec![0u8; 64];
        getrandom::fill(&mut secret).expect("the system's randomness");
        let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "k": jwt_mint::b64(&secret)}]});
        let (set, skipped) =
            parse_jwks(jwks.to_string().as_bytes(), true).expect("our own JWKS parses");
        assert!(skipped.is_empty());
        (secret, set)
    })
}

fn rules(audiences: &[String]) -> Rules<'_> {
    Rules {
        issuer: Some("https://idp.example"),
        audiences,
        skew: 60,
        require_expiration: true,
        max_lifetime: Some(3600),
    }
}

fn check_claims(claims: &Map<String, Value>) {
    let aud = vec!["api".to_string()];
    let now = 1_700_000_000;
    if let Ok(Some(until)) = claims::check(&rules(&aud), claims, now) {
        assert!(until > now, "accepted claims must not be expired");
        assert_eq!(claims.get("iss"), Some(&json!("https://idp.example")));
    }
}

fn arbitrary_token(s: &str) {
    let Ok(t) = token::parse(s, MAX) else {
        return;
    };
    let mut parts = s.split('.');
    let (h, p, sig) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    assert!(parts.next().is_none(), "a parsed token has three segments");
    assert_eq!(t.signed, &s[..h.len() + 1 + p.len()]);
    assert_eq!(t.payload_b64, p);
    assert_eq!(
        jwt_mint::b64(&t.signature),
        sig,
        "the signature segment has one spelling"
    );
    // Made without the key: nothing may verify, whatever the alg and kid say.
    assert!(matches!(
        verify_signature(&t, &ALL, &key().1),
        Err(Invalid::AlgorithmNotAllowed | Invalid::UnknownKey | Invalid::BadSignature)
    ));
    check_claims(&t.claims);
}

fn signed_round_trip(data: &[u8]) {
    let (h, p) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"{}"[..], data),
    };
    let Ok(Value::Object(mut header)) = serde_json::from_slice::<Value>(h) else {
        return;
    };
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(p) else {
        return;
    };
    // What the signer controls and we refuse by design is taken out, so the token
    // must be accepted.
    for k in ["crit", "enc", "zip"] {
        header.remove(k);
    }
    header.insert("alg".into(), json!("HS256"));
    header.insert("kid".into(), json!("k1"));
    let header_text = Value::Object(header).to_string();
    let payload_text = Value::Object(payload.clone()).to_string();
    let signed = format!(
        "{}.{}",
        jwt_mint::b64(header_text.as_bytes()),
        jwt_mint::b64(payload_text.as_bytes())
    );
    let sig = jwt_mint::hmac_sign("HS256", &key().0, signed.as_bytes());
    let compact = format!("{signed}.{}", jwt_mint::b64(&sig));
    if compact.len() > MAX {
        assert_eq!(token::parse(&compact, MAX).err(), Some(Invalid::TooLarge));
        return;
    }
    let t = token::parse(&compact, MAX).expect("a token we signed parses");
    // The claims of the text we signed: serde_json (without `float_roundtrip`) may
    // read a long decimal one unit in the last place off, so its own output of a
    // float need not read back to the value it printed.
    let Ok(Value::Object(sent)) = serde_json::from_str::<Value>(&payload_text) else {
        panic!("our own payload text is a JSON object");
    };
    assert_eq!(t.claims, sent);
    if !portcullis_fuzz::has_float(&Value::Object(payload.clone())) {
        assert_eq!(t.claims, payload);
    }
    assert_eq!(t.kid.as_deref(), Some("k1"));
    assert_eq!(verify_signature(&t, &[Alg::HS256], &key().1), Ok(Alg::HS256));
    // The same token under any other allowed set without HS256 is refused.
    assert_eq!(
        verify_signature(&t, &ALL[..9], &key().1),
        Err(Invalid::AlgorithmNotAllowed)
    );
    check_claims(&t.claims);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        if let Ok(s) = std::str::from_utf8(rest) {
            arbitrary_token(s);
        }
    } else {
        signed_round_trip(rest);
    }
});
