//! Signing a JWT with a private key given as a JWK: the client assertion of
//! `private_key_jwt` client authentication (RFC 7523, OpenID Connect Core 9). ES256
//! (RFC 6979 deterministic signatures: no randomness needed), EdDSA (Ed25519) and
//! RS256 (PKCS#1 v1.5, keys of 2048 bits or more).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::keys::b64;

/// A private key that signs. Its `Debug` shows no key material.
pub struct SigningKey {
    kid: Option<String>,
    key: Private,
}

enum Private {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
    Rs256(
        Box<(
            rsa::PrivateKey,
            rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>,
        )>,
    ),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A private JWK: `{"kty": "EC", "crv": "P-256", "d", "x", "y"}` or
    /// `{"kty": "OKP", "crv": "Ed25519", "d", "x"}`, with an optional `kid` (sent in the
    /// JWT header) and `alg` (which must then fit the key). The public half, when
    /// given, must be the private key's.
    pub fn from_jwk(jwk: &Value) -> Result<SigningKey, String> {
        let field = |f: &str| jwk.get(f).and_then(Value::as_str);
        let kid = field("kid").map(str::to_owned);
        let key = match (field("kty"), field("crv")) {
            (Some("EC"), Some("P-256")) => {
                let d = b64(jwk, "d")?;
                let key = p256::ecdsa::SigningKey::from_slice(&d)
                    .map_err(|_| "`d` is not a P-256 private key".to_owned())?;
                if jwk.get("x").is_some() || jwk.get("y").is_some() {
                    let point = key.verifying_key().to_sec1_point(false);
                    let bytes = point.as_bytes();
                    if bytes.get(1..33) != Some(&b64(jwk, "x")?[..])
                        || bytes.get(33..65) != Some(&b64(jwk, "y")?[..])
                    {
                        return Err("`x`/`y` are not the public half of `d`".into());
                    }
                }
                Private::Es256(key)
            }
            (Some("OKP"), Some("Ed25519")) => {
                let d: [u8; 32] = b64(jwk, "d")?
                    .try_into()
                    .map_err(|_| "`d` is not an Ed25519 private key (32 bytes)".to_owned())?;
                let key = ed25519_dalek::SigningKey::from_bytes(&d);
                if jwk.get("x").is_some() && b64(jwk, "x")? != key.verifying_key().to_bytes() {
                    return Err("`x` is not the public half of `d`".into());
                }
                Private::EdDsa(key)
            }
            (Some("RSA"), _) => {
                let big = |f: &str| b64(jwk, f).map(|b| rsa::BoxedUint::from_be_slice_vartime(&b));
                let (n, e, d) = (big("n")?, big("e")?, big("d")?);
                let primes = vec![big("p")?, big("q")?];
                if n.bit_width_vartime() < 2048 {
                    return Err("an RSA key must have 2048 bits or more".into());
                }
                let key = rsa::PrivateKey::from_components(n, e, d, primes)
                    .map_err(|e| format!("not a usable RSA private key: {e}"))?;
                let signer = rsa::pkcs1v15::SigningKey::new(key.clone());
                Private::Rs256(Box::new((key, signer)))
            }
            _ => return Err("not an RSA, EC P-256 or OKP Ed25519 private JWK".into()),
        };
        let k = SigningKey { kid, key };
        match field("alg") {
            Some(alg) if alg != k.alg() => Err(format!(
                "`alg` {alg} does not fit the key, which signs {}",
                k.alg()
            )),
            _ => Ok(k),
        }
    }

    /// The JWS algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Private::Es256(_) => "ES256",
            Private::EdDsa(_) => "EdDSA",
            Private::Rs256(_) => "RS256",
        }
    }

    /// The public JWK (what the IdP registers for the client).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.key {
            Private::Es256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                let b = point.as_bytes();
                json!({"kty": "EC", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&b[1..33]), "y": URL_SAFE_NO_PAD.encode(&b[33..65])})
            }
            Private::EdDsa(k) => json!({"kty": "OKP", "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(k.verifying_key().to_bytes())}),
            Private::Rs256(k) => {
                use rsa::traits::PublicKeyParts;
                json!({"kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(k.0.n().to_be_bytes_trimmed_vartime()),
                    "e": URL_SAFE_NO_PAD.encode(k.0.e().to_be_bytes_trimmed_vartime())})
            }
        };
        jwk["alg"] = json!(self.alg());
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// A compact JWS of `claims`, with `alg`, `typ: JWT` and the key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.key {
            Private::Es256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(signed.as_bytes());
                s.to_bytes().to_vec()
            }
            Private::EdDsa(k) => {
                use ed25519_dalek::Signer;
                k.sign(signed.as_bytes()).to_bytes().to_vec()
            }
            Private::Rs256(k) => {
                use rsa::signature::{SignatureEncoding, Signer};
                k.1.sign(signed.as_bytes()).to_vec()
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The claims of a client assertion (RFC 7523 3): the client as `iss` and `sub`, the
/// token endpoint as `aud`, a fresh `jti`, issued now and good for `lifetime` seconds.
pub fn client_assertion_claims(
    client_id: &str,
    audience: &str,
    jti: &str,
    now: u64,
    lifetime: u64,
) -> Value {
    json!({"iss": client_id, "sub": client_id, "aud": audience, "jti": jti,
        "iat": now, "exp": now + lifetime})
}

/// The two form fields of `private_key_jwt` client authentication (RFC 7523 2.2) for
/// `client_id` at `audience` (the issuer or the endpoint's URL): a fresh random `jti`,
/// good for 60 seconds. Err when no randomness can be had.
pub fn client_assertion_fields(
    key: &SigningKey,
    client_id: &str,
    audience: &str,
    now: u64,
) -> Result<[(&'static str, String); 2], getrandom::Error> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti)?;
    let claims =
        client_assertion_claims(client_id, audience, &URL_SAFE_NO_PAD.encode(jti), now, 60);
    Ok([
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        ("client_assertion", key.sign(&claims)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::keys::{Alg, parse_jwks};
    use crate::jwt::{token, verify_signature};
    use jwt_mint::Key;
    use proptest::prelude::*;

    fn verifies(jwt: &str, public: &Value, alg: Alg) -> bool {
        let set = json!({"keys": [public]}).to_string();
        let (keys, _) = parse_jwks(set.as_bytes(), true).unwrap();
        let t = token::parse(jwt, 16 * 1024).unwrap();
        verify_signature(&t, &[alg], &keys).is_ok()
    }

    #[test]
    fn what_it_signs_verifies_with_the_public_half_and_names_its_key() {
        for (key, alg) in [
            (Key::ec256("client-es"), Alg::ES256),
            (Key::ed25519("client-ed"), Alg::EdDSA),
            (Key::rsa("client-rs"), Alg::RS256),
        ] {
            let private = key.private_jwk().unwrap();
            let k = SigningKey::from_jwk(&private).unwrap();
            assert!(!format!("{k:?}").contains(private["d"].as_str().unwrap()));
            let claims = client_assertion_claims("web", "https://idp.test/token", "j1", 100, 60);
            let jwt = k.sign(&claims);
            assert!(verifies(&jwt, &key.jwk(), alg), "{alg:?}");
            assert!(verifies(&jwt, &k.public_jwk(), alg), "{alg:?}");
            let t = token::parse(&jwt, 16 * 1024).unwrap();
            assert_eq!(t.kid.as_deref(), key.jwk()["kid"].as_str());
            assert_eq!(t.claims["aud"], "https://idp.test/token");
            assert_eq!(t.claims["exp"], 160);
            // Another key's public half does not verify it.
            let other = Key::ec256("other");
            assert!(!verifies(&jwt, &other.jwk(), Alg::ES256));
        }
    }

    #[test]
    fn keys_that_cannot_sign_or_do_not_match_are_refused() {
        let ec = Key::ec256("k").private_jwk().unwrap();
        let mut wrong_x = ec.clone();
        wrong_x["x"] = Key::ec256("j").private_jwk().unwrap()["x"].clone();
        let mut wrong_alg = ec.clone();
        wrong_alg["alg"] = json!("RS256");
        let public_only = Key::ec256("k").jwk();
        for (jwk, says) in [
            (wrong_x, "public half"),
            (wrong_alg, "does not fit"),
            (public_only, "missing `d`"),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB", "p": "AQAB", "q": "AQAB"}),
                "2048 bits or more",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "d": "AAAA"}),
                "not a P-256 private key",
            ),
            (
                json!({"kty": "oct", "k": "c2VjcmV0"}),
                "not an RSA, EC P-256",
            ),
            (json!("a string"), "not an RSA, EC P-256"),
        ] {
            let e = SigningKey::from_jwk(&jwk).unwrap_err();
            assert!(e.contains(says), "{jwk}: {e}");
        }
    }

    proptest! {
        /// Any claims sign and verify; a changed payload or signature never verifies.
        #[test]
        fn signatures_bind_the_payload(
            sub in "\\PC{0,40}",
            n in any::<u64>(),
            flip in 0usize..64,
        ) {
            let key = Key::ec256("p");
            let k = SigningKey::from_jwk(&key.private_jwk().unwrap()).unwrap();
            let jwt = k.sign(&json!({"sub": sub, "n": n}));
            prop_assert!(verifies(&jwt, &key.jwk(), Alg::ES256));
            let (signed, sig) = jwt.rsplit_once('.').unwrap();
            let other = k.sign(&json!({"sub": sub, "n": n.wrapping_add(1)}));
            let (other_signed, _) = other.rsplit_once('.').unwrap();
            let swapped = format!("{}.{}", other_signed, sig);
            prop_assert!(!verifies(&swapped, &key.jwk(), Alg::ES256));
            let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let i = flip % raw.len();
            raw[i] ^= 1;
            let tampered = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&raw));
            prop_assert!(!verifies(&tampered, &key.jwk(), Alg::ES256));
        }
    }
}
