//! JWKS parsing and signature verification. A key is built once per JWKS (RSA keys
//! precompute their Montgomery parameters), and each algorithm is bound to the one key
//! type it may use: `none`, an HS token checked against an RSA key, an ES256 token
//! against a P-384 key, and every other confusion fail here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde_json::Value;

macro_rules! hmac_verify {
    ($d:ty, $key:expr, $msg:expr, $sig:expr) => {{
        match <hmac::Hmac<$d> as KeyInit>::new_from_slice($key) {
            Ok(mut mac) => {
                mac.update($msg);
                // Constant-time comparison.
                mac.verify_slice($sig).is_ok()
            }
            Err(_) => false,
        }
    }};
}

macro_rules! rsa_pkcs1 {
    ($d:ty, $key:expr, $msg:expr, $sig:expr) => {{
        use sha2::Digest;
        let scheme = rsa::Pkcs1v15Sign::new::<$d>();
        crate::jwt::rsa_pkcs1::verify($key, &scheme.prefix, &<$d>::digest($msg), $sig)
    }};
}

macro_rules! rsa_pss {
    ($d:ty, $key:expr, $msg:expr, $sig:expr) => {{
        use sha2::Digest;
        crate::jwt::rsa_pss::verify::<$d>($key, &<$d>::digest($msg), $sig)
    }};
}

/// The algorithms a provider may allow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    pub const ASYMMETRIC: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    /// Shortest HMAC key the algorithm allows (RFC 7518 3.2: at least the hash size).
    pub fn min_hmac_bytes(self) -> Option<usize> {
        match self {
            Alg::HS256 => Some(32),
            Alg::HS384 => Some(48),
            Alg::HS512 => Some(64),
            _ => None,
        }
    }
}

pub enum Material {
    Rsa(super::modexp::PublicExp),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Material::Rsa(..) => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::Ed25519(_) => "OKP Ed25519",
            Material::Hmac(_) => "oct",
        })
    }
}

#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when the JWK names one: then only that algorithm may use it.
    pub alg: Option<Alg>,
    pub material: Material,
}

impl Jwk {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.material, alg) {
            (
                Material::Rsa(..),
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) => true,
            (Material::P256(_), Alg::ES256)
            | (Material::P384(_), Alg::ES384)
            | (Material::Ed25519(_), Alg::EdDSA) => true,
            (Material::Hmac(k), a) => a.min_hmac_bytes().is_some_and(|min| k.len() >= min),
            _ => false,
        }
    }

    /// Verifies `signature` over `signed` with this key. The caller checked `fits`.
    pub fn verify(&self, alg: Alg, signed: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match (&self.material, alg) {
            (Material::Rsa(k), Alg::RS256) => rsa_pkcs1!(sha2::Sha256, k, signed, signature),
            (Material::Rsa(k), Alg::RS384) => rsa_pkcs1!(sha2::Sha384, k, signed, signature),
            (Material::Rsa(k), Alg::RS512) => rsa_pkcs1!(sha2::Sha512, k, signed, signature),
            (Material::Rsa(k), Alg::PS256) => rsa_pss!(sha2::Sha256, k, signed, signature),
            (Material::Rsa(k), Alg::PS384) => rsa_pss!(sha2::Sha384, k, signed, signature),
            (Material::Rsa(k), Alg::PS512) => rsa_pss!(sha2::Sha512, k, signed, signature),
            (Material::P256(k), Alg::ES256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify(signed, &s).is_ok()),
            (Material::P384(k), Alg::ES384) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify(signed, &s).is_ok()),
            // Strict (RFC 8032 with canonical S, no small-order R or A).
            (Material::Ed25519(k), Alg::EdDSA) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(signed, &s).is_ok()),
            (Material::Hmac(k), Alg::HS256) => hmac_verify!(sha2::Sha256, k, signed, signature),
            (Material::Hmac(k), Alg::HS384) => hmac_verify!(sha2::Sha384, k, signed, signature),
            (Material::Hmac(k), Alg::HS512) => hmac_verify!(sha2::Sha512, k, signed, signature),
            _ => false,
        }
    }
}

/// A provider's keys.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

impl KeySet {
    /// The keys a token signed with `alg` (and naming `kid`, when it does) may be
    /// checked with.
    pub fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Jwk> {
        self.keys
            .iter()
            .filter(move |k| k.fits(alg) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
    }
}

/// A JWKS document that cannot be used at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("JWKS is not a JSON object with a `keys` array")]
    NotAJwks,
    #[error("JWKS key {index}: {reason}")]
    BadKey { index: usize, reason: String },
}

/// Parses a JWKS. `strict`: any key we cannot use is an error (inline configuration);
/// otherwise such keys are skipped and reported (a fetched JWKS may list keys for
/// other uses or algorithms this filter does not serve).
pub fn parse_jwks(bytes: &[u8], strict: bool) -> Result<(KeySet, Vec<String>), JwksError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwksError::NotAJwks)?;
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err(JwksError::NotAJwks);
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, k) in list.iter().enumerate() {
        match parse_jwk(k) {
            Ok(Some(jwk)) => keys.push(jwk),
            Ok(None) => skipped.push(format!("key {index}: not a signing key")),
            Err(reason) if strict => return Err(JwksError::BadKey { index, reason }),
            Err(reason) => skipped.push(format!("key {index}: {reason}")),
        }
    }
    Ok((KeySet { keys }, skipped))
}

/// A JWK's base64url field, decoded.
pub(crate) fn b64(k: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = k
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing `{field}`"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("`{field}` is not base64url"))
}

fn parse_jwk(k: &Value) -> Result<Option<Jwk>, String> {
    let Value::Object(_) = k else {
        return Err("not a JSON object".into());
    };
    if let Some(u) = k.get("use")
        && u.as_str() != Some("sig")
    {
        return Ok(None);
    }
    let kid = match k.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    let alg = match k.get("alg").map(|a| a.as_str()) {
        None => None,
        Some(Some(a)) => Some(Alg::parse(a).ok_or_else(|| format!("unsupported alg `{a}`"))?),
        Some(None) => return Err("`alg` is not a string".into()),
    };
    let kty = k
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing `kty`")?;
    let crv = k.get("crv").and_then(Value::as_str);
    let material = match (kty, crv) {
        ("RSA", _) => {
            let (n, e) = (b64(k, "n")?, b64(k, "e")?);
            // The rsa crate's checks of size and exponent, then our own form of the key.
            rsa::PublicKey::new(
                rsa::BoxedUint::from_be_slice_vartime(&n),
                rsa::BoxedUint::from_be_slice_vartime(&e),
            )
            .map_err(|e| format!("unusable RSA key: {e}"))?;
            Material::Rsa(super::modexp::PublicExp::new(&n, &e).ok_or("unusable RSA key")?)
        }
        ("EC", Some("P-256")) => Material::P256(
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1(&b64(k, "x")?, &b64(k, "y")?, 32)?)
                .map_err(|_| "not a point on P-256")?,
        ),
        ("EC", Some("P-384")) => Material::P384(
            p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1(&b64(k, "x")?, &b64(k, "y")?, 48)?)
                .map_err(|_| "not a point on P-384")?,
        ),
        ("OKP", Some("Ed25519")) => Material::Ed25519(
            <[u8; 32]>::try_from(b64(k, "x")?.as_slice())
                .ok()
                .and_then(|x| ed25519_dalek::VerifyingKey::from_bytes(&x).ok())
                .ok_or("bad Ed25519 key")?,
        ),
        ("oct", _) => {
            let secret = b64(k, "k")?;
            if let Some(a) = alg {
                let min = a
                    .min_hmac_bytes()
                    .ok_or_else(|| format!("an oct key cannot be used with {}", a.name()))?;
                if secret.len() < min {
                    return Err(format!(
                        "{} needs a key of at least {min} bytes, this one has {}",
                        a.name(),
                        secret.len()
                    ));
                }
            }
            Material::Hmac(secret)
        }
        (kty, crv) => {
            return Err(format!(
                "unsupported key type {kty}{}",
                crv.map(|c| format!(" / {c}")).unwrap_or_default()
            ));
        }
    };
    let jwk = Jwk { kid, alg, material };
    if let Some(a) = alg
        && !jwk_type_matches(&jwk, a)
    {
        return Err(format!(
            "alg {} does not match the key type {:?}",
            a.name(),
            jwk.material
        ));
    }
    Ok(Some(jwk))
}

fn jwk_type_matches(jwk: &Jwk, alg: Alg) -> bool {
    matches!(
        (&jwk.material, alg),
        (
            Material::Rsa(..),
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
        ) | (Material::P256(_), Alg::ES256)
            | (Material::P384(_), Alg::ES384)
            | (Material::Ed25519(_), Alg::EdDSA)
            | (Material::Hmac(_), Alg::HS256 | Alg::HS384 | Alg::HS512)
    )
}

/// An uncompressed SEC1 point from JWK coordinates of the curve's size.
fn sec1(x: &[u8], y: &[u8], size: usize) -> Result<Vec<u8>, String> {
    if x.len() != size || y.len() != size {
        return Err(format!("EC coordinates must be {size} bytes"));
    }
    let mut p = Vec::with_capacity(1 + 2 * size);
    p.push(4);
    p.extend_from_slice(x);
    p.extend_from_slice(y);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_for_one_algorithm_refuses_others() {
        let jwks = br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI", "alg": "HS256", "kid": "h"}]}"#;
        let (set, _) = parse_jwks(jwks, true).unwrap();
        assert!(set.keys[0].fits(Alg::HS256));
        assert!(!set.keys[0].fits(Alg::HS384));
        assert!(!set.keys[0].fits(Alg::RS256));
    }

    #[test]
    fn strict_parsing_names_the_bad_key_and_lenient_parsing_skips_it() {
        let jwks = br#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}, {"kty": "oct", "k": "c2VjcmV0", "use": "enc"}]}"#;
        assert!(matches!(
            parse_jwks(jwks, true),
            Err(JwksError::BadKey { index: 0, .. })
        ));
        let (set, skipped) = parse_jwks(jwks, false).unwrap();
        assert!(set.keys.is_empty());
        assert_eq!(skipped.len(), 2);
        assert_eq!(parse_jwks(b"[]", false).unwrap_err(), JwksError::NotAJwks);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_jwks_text_never_panics(s in "\\PC{0,400}") {
            let _ = parse_jwks(s.as_bytes(), false);
            let _ = parse_jwks(s.as_bytes(), true);
        }

        #[test]
        fn arbitrary_key_fields_never_panic(
            kty in proptest::sample::select(vec!["RSA", "EC", "OKP", "oct", "x"]),
            crv in proptest::sample::select(vec!["P-256", "P-384", "Ed25519", "P-521"]),
            a in "[A-Za-z0-9_-]{0,400}",
            b in "[A-Za-z0-9_-]{0,120}",
            alg in proptest::sample::select(vec!["RS256", "ES256", "EdDSA", "HS256", "none", "PS512"]),
        ) {
            let doc = serde_json::json!({"keys": [{"kty": kty, "crv": crv, "n": a, "e": b, "x": a, "y": b, "k": a, "alg": alg}]});
            let _ = parse_jwks(doc.to_string().as_bytes(), false);
        }
    }
}
