//! Keys and tokens made at run time (nothing secret is ever committed): a signing key
//! of each kind with its public JWK, tokens signed with any JWS algorithm, and the raw
//! pieces hostile tokens are made of.
//!
//! ```
//! let key = jwt_mint::Key::ec256("k1");
//! let jwks = jwt_mint::jwks(&[&key]);
//! let token = key.sign("ES256", serde_json::json!({"sub": "ada", "exp": 4102444800u64}));
//! assert_eq!(token.split('.').count(), 3);
//! # let _ = jwks;
//! ```
#![allow(clippy::unwrap_used)] // a test and demo tool: a failed key generation is fatal

/// The demo IdP behind `demo-idp` and `cargo xtask demo`.
pub mod demo;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b
}

pub enum Secret {
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_compact::KeyPair),
    Hmac(Vec<u8>),
}

/// A signing key with its `kid`.
pub struct Key {
    pub kid: String,
    pub secret: Secret,
}

impl Key {
    pub fn rsa(kid: &str) -> Key {
        Self::rsa_bits(kid, 2048)
    }

    pub fn rsa_bits(kid: &str, bits: usize) -> Key {
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        let k = rsa::PrivateKey::new(&mut rng, bits).unwrap();
        Key {
            kid: kid.into(),
            secret: Secret::Rsa(Box::new(k)),
        }
    }

    pub fn ec256(kid: &str) -> Key {
        loop {
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&random(32)) {
                return Key {
                    kid: kid.into(),
                    secret: Secret::P256(k),
                };
            }
        }
    }

    pub fn ec384(kid: &str) -> Key {
        loop {
            if let Ok(k) = p384::ecdsa::SigningKey::from_slice(&random(48)) {
                return Key {
                    kid: kid.into(),
                    secret: Secret::P384(k),
                };
            }
        }
    }

    pub fn ed25519(kid: &str) -> Key {
        let seed = ed25519_compact::Seed::from_slice(&random(32)).unwrap();
        Key {
            kid: kid.into(),
            secret: Secret::Ed25519(ed25519_compact::KeyPair::from_seed(seed)),
        }
    }

    pub fn hmac(kid: &str, bytes: usize) -> Key {
        Key {
            kid: kid.into(),
            secret: Secret::Hmac(random(bytes)),
        }
    }

    /// An EC P-256 key from a private JWK (with `d`), as `private_jwk` writes it.
    pub fn from_private_jwk(jwk: &Value) -> Option<Key> {
        let d = URL_SAFE_NO_PAD.decode(jwk.get("d")?.as_str()?).ok()?;
        let kid = jwk.get("kid")?.as_str()?.to_owned();
        match jwk.get("crv")?.as_str()? {
            "P-256" => Some(Key {
                kid,
                secret: Secret::P256(p256::ecdsa::SigningKey::from_slice(&d).ok()?),
            }),
            _ => None,
        }
    }

    /// The private JWK of an RSA, EC P-256 or Ed25519 key (for keeping a demo key on disk,
    /// or configuring a client's `private_key_jwt` key).
    pub fn private_jwk(&self) -> Option<Value> {
        let mut j = self.jwk();
        let d = match &self.secret {
            Secret::P256(k) => k.to_bytes().to_vec(),
            Secret::Ed25519(k) => k.sk.seed().to_vec(),
            Secret::Rsa(k) => {
                use rsa::traits::PrivateKeyParts;
                let primes = k.primes();
                j["p"] = json!(b64(&primes[0].to_be_bytes_trimmed_vartime()));
                j["q"] = json!(b64(&primes[1].to_be_bytes_trimmed_vartime()));
                k.d().to_be_bytes_trimmed_vartime().to_vec()
            }
            _ => return None,
        };
        j["d"] = json!(b64(&d));
        Some(j)
    }

    /// The public JWK (for HMAC, the secret itself, as JWKS `oct` keys are).
    pub fn jwk(&self) -> Value {
        let mut j = match &self.secret {
            Secret::Rsa(k) => {
                use rsa::traits::PublicKeyParts;
                let p = k.to_public_key();
                json!({"kty": "RSA", "n": b64(&p.n().to_be_bytes_trimmed_vartime()), "e": b64(&p.e().to_be_bytes_trimmed_vartime())})
            }
            Secret::P256(k) => {
                let pt = k.verifying_key().to_sec1_point(false);
                let b = pt.as_bytes();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&b[1..33]), "y": b64(&b[33..65])})
            }
            Secret::P384(k) => {
                let pt = k.verifying_key().to_sec1_point(false);
                let b = pt.as_bytes();
                json!({"kty": "EC", "crv": "P-384", "x": b64(&b[1..49]), "y": b64(&b[49..97])})
            }
            Secret::Ed25519(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.pk.as_ref())}),
            Secret::Hmac(s) => json!({"kty": "oct", "k": b64(s)}),
        };
        j["kid"] = json!(self.kid);
        j["use"] = json!("sig");
        j
    }

    /// The same JWK, naming the one algorithm it may be used with.
    pub fn jwk_with_alg(&self, alg: &str) -> Value {
        let mut j = self.jwk();
        j["alg"] = json!(alg);
        j
    }

    /// A token with header `{"alg", "kid", "typ": "JWT"}` and these claims.
    pub fn sign(&self, alg: &str, claims: Value) -> String {
        self.sign_with_header(json!({"alg": alg, "kid": self.kid, "typ": "JWT"}), claims)
    }

    /// A token with exactly this header (its `alg` chooses the signature).
    pub fn sign_with_header(&self, header: Value, claims: Value) -> String {
        let alg = header["alg"].as_str().unwrap_or("").to_owned();
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.signature(&alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    /// The raw signature of `input` with `alg`, using this key.
    pub fn signature(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        use sha2::Digest;
        match (&self.secret, alg) {
            (Secret::Rsa(k), "RS256") => k
                .sign(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                    &sha2::Sha256::digest(input),
                )
                .unwrap(),
            (Secret::Rsa(k), "RS384") => k
                .sign(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    &sha2::Sha384::digest(input),
                )
                .unwrap(),
            (Secret::Rsa(k), "RS512") => k
                .sign(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                    &sha2::Sha512::digest(input),
                )
                .unwrap(),
            (Secret::Rsa(k), "PS256") => pss::<sha2::Sha256>(k, input),
            (Secret::Rsa(k), "PS384") => pss::<sha2::Sha384>(k, input),
            (Secret::Rsa(k), "PS512") => pss::<sha2::Sha512>(k, input),
            (Secret::P256(k), _) => {
                let s: p256::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            (Secret::P384(k), _) => {
                let s: p384::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            (Secret::Ed25519(k), _) => k.sk.sign(input, None).to_vec(),
            (Secret::Hmac(s), a) => hmac_sign(a, s, input),
            (Secret::Rsa(_), a) => panic!("an RSA key does not sign {a}"),
        }
    }
}

fn pss<D: sha2::Digest + sha2::digest::FixedOutputReset + 'static>(
    k: &rsa::PrivateKey,
    input: &[u8],
) -> Vec<u8> {
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    k.sign_with_rng(&mut rng, rsa::pss::Pss::<D>::new(), &D::digest(input))
        .unwrap()
}

/// HMAC of `input` under `secret` with `alg` (HS256/384/512): also how an attacker
/// signs with a public key's bytes in an algorithm-confusion attempt.
pub fn hmac_sign(alg: &str, secret: &[u8], input: &[u8]) -> Vec<u8> {
    macro_rules! mac {
        ($d:ty) => {{
            let mut m = <hmac::Hmac<$d> as KeyInit>::new_from_slice(secret).unwrap();
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        "HS384" => mac!(sha2::Sha384),
        "HS512" => mac!(sha2::Sha512),
        _ => mac!(sha2::Sha256),
    }
}

/// A JWKS of the keys' public JWKs.
pub fn jwks(keys: &[&Key]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// A token from raw parts: header and payload JSON text, and signature bytes.
pub fn raw(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(payload.as_bytes()),
        b64(signature)
    )
}
