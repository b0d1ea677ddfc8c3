//! RSASSA-PKCS1-v1_5 signature verification (RFC 8017 §8.2.2), the RS256/384/512 of
//! JWS, with the public exponent applied by [`PublicExp`] (square-and-multiply on
//! Montgomery arithmetic laid out for wasm) instead of the `rsa` crate's `verify`.
//!
//! Why not the crate's: it raises the signature to `e` with a constant-time 4-bit-window
//! exponentiation, which for e = 65537 precomputes a table of 14 products and scans it
//! in constant time for every window: about 35 Montgomery operations where 16
//! squarings and one multiplication are enough, each on 32-bit limbs that wasm handles
//! poorly (see `modexp`). Signature and exponent are public, so a variable-time
//! exponentiation leaks nothing. Every other step is the crate's, in the same order:
//! length of S, s < n, I2OSP, then EM compared with
//! 0x00 || 0x01 || PS || 0x00 || DigestInfo || H.

use super::modexp::PublicExp;

/// Whether `sig` is `key`'s PKCS#1 v1.5 signature of the digest `hashed`, whose hash
/// has the DigestInfo `prefix`.
pub fn verify(key: &PublicExp, prefix: &[u8], hashed: &[u8], sig: &[u8]) -> bool {
    let k = key.size();
    // Steps 1 and 2: S is k octets and s = OS2IP(S) is below n; then
    // EM = I2OSP(s^e mod n, k).
    let Some(em) = key.apply(sig) else {
        return false;
    };
    let t_len = prefix.len() + hashed.len();
    if k < t_len + 11 {
        return false;
    }
    em[0] == 0
        && em[1] == 1
        && em[2..k - t_len - 1].iter().all(|b| *b == 0xff)
        && em[k - t_len - 1] == 0
        && &em[k - t_len..k - hashed.len()] == prefix
        && &em[k - hashed.len()..] == hashed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::rsa_test_keys::{TestKey, keys};
    use proptest::prelude::*;
    use sha2::Digest;

    /// Our answer and the crate's `verify` for the same input, by JWS algorithm.
    fn both(alg: &str, key: &TestKey, msg: &[u8], sig: &[u8]) -> (bool, bool) {
        macro_rules! pair {
            ($d:ty) => {{
                let hashed = <$d>::digest(msg);
                let scheme = rsa::Pkcs1v15Sign::new::<$d>();
                let ours = verify(&key.exp, &scheme.prefix, &hashed, sig);
                (ours, key.public.verify(scheme, &hashed, sig).is_ok())
            }};
        }
        match alg {
            "RS256" => pair!(sha2::Sha256),
            "RS384" => pair!(sha2::Sha384),
            _ => pair!(sha2::Sha512),
        }
    }

    #[test]
    fn genuine_signatures_verify_for_every_hash_and_size() {
        for key in keys() {
            for alg in ["RS256", "RS384", "RS512"] {
                let sig = key.mint.signature(alg, b"payload");
                assert_eq!(both(alg, key, b"payload", &sig), (true, true), "{alg}");
                // Signed with another hash: refused by both.
                let other = if alg == "RS256" { "RS512" } else { "RS256" };
                let sig = key.mint.signature(other, b"payload");
                assert_eq!(both(alg, key, b"payload", &sig), (false, false));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Tampered signatures, other messages, truncated, lengthened or random
        /// signatures: exactly the crate's decision every time.
        #[test]
        fn decisions_match_the_rsa_crate(
            which in 0usize..3,
            alg in prop::sample::select(vec!["RS256", "RS384", "RS512"]),
            msg in prop::collection::vec(any::<u8>(), 0..64),
            flip in any::<(usize, u8)>(),
            mode in 0u8..6,
            random in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            let key = &keys()[which];
            let mut sig = key.mint.signature(alg, &msg);
            let mut signed = msg.clone();
            match mode {
                0 => {}
                1 => { let i = flip.0 % sig.len(); sig[i] ^= flip.1 | 1; }
                2 => signed.push(0),
                3 => { sig.pop(); }
                4 => sig.push(flip.1),
                _ => sig = random,
            }
            let (ours, theirs) = both(alg, key, &signed, &sig);
            prop_assert_eq!(ours, theirs);
            prop_assert_eq!(ours, mode == 0);
        }
    }
}
