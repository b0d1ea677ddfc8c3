//! Parsing a compact JWS: three base64url segments, a JSON header and payload. All the
//! checks that cost no crypto happen here, before any key is touched: size, segment
//! count, strict base64url, JSON objects, `alg`, `crit`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::Invalid;

/// A parsed, not yet verified token.
#[derive(Debug, Clone)]
pub struct Token<'a> {
    /// `header.payload`: the bytes the signature covers.
    pub signed: &'a str,
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    pub signature: Vec<u8>,
    /// The payload segment as sent (base64url), for `forward_payload_header`.
    pub payload_b64: &'a str,
}

/// Header parameters we understand, so a `crit` listing one of them is acceptable
/// (RFC 7515 4.1.11: a critical extension we do not understand must reject).
const UNDERSTOOD_CRIT: [&str; 0] = [];

pub fn parse(token: &str, max_bytes: usize) -> Result<Token<'_>, Invalid> {
    if token.len() > max_bytes {
        return Err(Invalid::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::Malformed("a JWT has three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(Invalid::Malformed("empty header or payload"));
    }
    let header = decode_object(h, "header")?;
    let claims = decode_object(p, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Invalid::Malformed("signature is not base64url"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Invalid::Malformed("header has no alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Invalid::Malformed("kid is not a string")),
    };
    if let Some(crit) = header.get("crit") {
        let Value::Array(names) = crit else {
            return Err(Invalid::Malformed("crit is not an array"));
        };
        if names.is_empty()
            || names
                .iter()
                .any(|n| !n.as_str().is_some_and(|n| UNDERSTOOD_CRIT.contains(&n)))
        {
            return Err(Invalid::UnknownCrit);
        }
    }
    // JWE (five parts) was refused above; `zip` or `enc` would mean encryption.
    if header.contains_key("enc") || header.contains_key("zip") {
        return Err(Invalid::Malformed(
            "encrypted or compressed tokens are not accepted",
        ));
    }
    Ok(Token {
        signed: &token[..h.len() + 1 + p.len()],
        alg,
        kid,
        claims,
        signature,
        payload_b64: p,
    })
}

fn decode_object(segment: &str, what: &'static str) -> Result<Map<String, Value>, Invalid> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| {
        Invalid::Malformed(match what {
            "header" => "header is not base64url",
            _ => "payload is not base64url",
        })
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Invalid::Malformed(match what {
            "header" => "header is not a JSON object",
            _ => "payload is not a JSON object",
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(r#"{"sub":"a"}"#),
            b64("sig")
        );
        let p = parse(&t, 8192).unwrap();
        assert_eq!(p.alg, "RS256");
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["sub"], "a");
        assert_eq!(p.signature, b"sig");
        assert!(t.starts_with(p.signed) && p.signed.matches('.').count() == 1);
    }

    #[test]
    fn refuses_what_is_not_a_jws() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let c = b64(r#"{}"#);
        for bad in [
            String::new(),
            "a.b".into(),
            format!("{h}.{c}.x.y"),
            format!("{h}.{c}.###"),
            format!("{h}.{}.", b64("[1]")),
            format!("{}.{c}.", b64(r#"{"kid":"x"}"#)),
            format!("{}.{c}.", b64(r#"{"alg":"RS256","crit":["exp"]}"#)),
            format!("{}.{c}.", b64(r#"{"alg":"RS256","enc":"A128GCM"}"#)),
            format!("{h}=.{c}.",),
            format!(".{c}."),
        ] {
            assert!(parse(&bad, 8192).is_err(), "{bad}");
        }
        assert_eq!(
            parse(&"a".repeat(9000), 8192).unwrap_err(),
            Invalid::TooLarge
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\\\PC{0,300}") {
            let _ = parse(&s, 8192);
        }

        #[test]
        fn arbitrary_segments_never_panic(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,80}", c in "[A-Za-z0-9_-]{0,80}") {
            let _ = parse(&format!("{a}.{b}.{c}"), 8192);
        }
    }
}
