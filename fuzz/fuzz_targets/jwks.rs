//! JWKS parsing (`kit::jwt::keys::parse_jwks`), strict (inline configuration) and lax
//! (a fetched document), and every key it keeps put to work.
//!
//! Strict and lax must agree (strict accepts exactly the documents where lax skips
//! nothing it would refuse), a key that names its `alg` serves no other, and no key
//! from any document verifies a signature nobody made with it.
#![no_main]

use kit::jwt::keys::{Alg, JwksError, parse_jwks};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let lax = parse_jwks(data, false);
    let strict = parse_jwks(data, true);
    match (&lax, &strict) {
        (Err(JwksError::NotAJwks), Err(JwksError::NotAJwks)) => return,
        (Err(e), _) => panic!("lax parsing refuses only non-JWKS documents, got {e:?}"),
        (Ok(_), Err(JwksError::NotAJwks)) => panic!("strict and lax disagree on the shape"),
        (Ok((_, skipped)), Err(JwksError::BadKey { index, .. })) => {
            assert!(
                skipped.iter().any(|s| s.starts_with(&format!("key {index}:"))),
                "a key strict refuses is one lax skips"
            );
        }
        (Ok((lax_set, lax_skipped)), Ok((strict_set, strict_skipped))) => {
            assert_eq!(lax_set.keys.len(), strict_set.keys.len());
            assert_eq!(lax_skipped, strict_skipped);
            assert!(
                lax_skipped.iter().all(|s| s.ends_with("not a signing key")),
                "strict keeps going only past keys for other uses"
            );
        }
    }
    let Ok((set, _)) = lax else { return };
    let signed = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJmdXp6In0";
    let short = &data[..data.len().min(64)];
    for k in &set.keys {
        for alg in ALL {
            if !k.fits(alg) {
                continue;
            }
            if let Some(own) = k.alg {
                assert_eq!(own, alg, "a key that names its alg serves only that one");
            }
            assert!(set.candidates(alg, None).any(|c| std::ptr::eq(c, k)));
            for sig in [data, short, &[0u8; 512][..], &[0xffu8; 512][..]] {
                assert!(
                    !k.verify(alg, signed, sig),
                    "a signature nobody made verifies with {alg:?} and {k:?}"
                );
            }
        }
    }
});
