//! RSA keys for the tests of `rsa_pkcs1` and `rsa_pss`, made at run time (never
//! committed): 2048 and 3072 bits, and 2049, for which PSS's encoded message is one
//! octet shorter than the modulus.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::modexp::PublicExp;

pub struct TestKey {
    /// The signer.
    pub mint: jwt_mint::Key,
    /// The `rsa` crate's public key, the reference our decisions are compared with.
    pub public: rsa::PublicKey,
    /// Ours.
    pub exp: PublicExp,
    /// The modulus and the private exponent, big-endian, for signatures made by hand.
    pub n: Vec<u8>,
    pub d: Vec<u8>,
}

pub fn keys() -> &'static [TestKey] {
    static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [2048, 3072, 2049]
            .into_iter()
            .map(|bits| {
                let mint = jwt_mint::Key::rsa_bits("k", bits);
                let jwk = mint.jwk();
                let part = |name: &str| {
                    URL_SAFE_NO_PAD
                        .decode(jwk[name].as_str().expect("an RSA JWK member"))
                        .expect("base64url")
                };
                let jwt_mint::Secret::Rsa(private) = &mint.secret else {
                    unreachable!("rsa_bits makes an RSA key")
                };
                let d = rsa::traits::PrivateKeyParts::d(private.as_ref())
                    .to_be_bytes()
                    .to_vec();
                let (n, e) = (part("n"), part("e"));
                let public = rsa::PublicKey::new(
                    rsa::BoxedUint::from_be_slice_vartime(&n),
                    rsa::BoxedUint::from_be_slice_vartime(&e),
                )
                .expect("a usable key");
                let exp = PublicExp::new(&n, &e).expect("a usable key");
                TestKey {
                    mint,
                    public,
                    exp,
                    n,
                    d,
                }
            })
            .collect()
    })
}
