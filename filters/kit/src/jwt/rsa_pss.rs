//! RSASSA-PSS signature verification (RFC 8017 §8.1.2 with EMSA-PSS-VERIFY, §9.1.2), the
//! PS256/384/512 of JWS: MGF1 with the token's hash, and a salt exactly as long as the
//! hash (RFC 7518 §3.5). The public exponent is applied by [`PublicExp`], as for
//! RS256; the `rsa` crate's own PSS path raises the signature to `e` with its
//! constant-time exponentiation, about twice the work, on 32-bit limbs.
//!
//! Signature, key and message are public, so nothing here needs to be constant time.

use sha2::Digest;

use super::modexp::PublicExp;

/// Whether `sig` is `key`'s PSS signature of the digest `m_hash` made with hash `D`.
pub fn verify<D: Digest>(key: &PublicExp, m_hash: &[u8], sig: &[u8]) -> bool {
    let h_len = <D as Digest>::output_size();
    let s_len = h_len;
    // RSAVP1, then EM = I2OSP(m, emLen) with emBits = modBits - 1: when modBits is
    // 1 mod 8, EM is one octet shorter than n and the first octet of m must be 0.
    let Some(m) = key.apply(sig) else {
        return false;
    };
    let em_bits = key.bits() - 1;
    let em_len = em_bits.div_ceil(8);
    let (lead, em) = m.split_at(m.len() - em_len);
    if lead.iter().any(|b| *b != 0) {
        return false;
    }
    // EMSA-PSS-VERIFY, steps 2 to 6.
    if m_hash.len() != h_len || em_len < h_len + s_len + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let h = &rest[..h_len];
    let top = 0xffu8 >> (8 * em_len - em_bits);
    if masked_db[0] & !top != 0 {
        return false;
    }
    // Steps 7 to 10: DB = maskedDB xor MGF1(H), then PS (zeros) || 0x01 || salt.
    let mut db = masked_db.to_vec();
    mgf1_xor::<D>(h, &mut db);
    db[0] &= top;
    let ps_len = em_len - h_len - s_len - 2;
    if db[..ps_len].iter().any(|b| *b != 0) || db[ps_len] != 1 {
        return false;
    }
    // Steps 11 to 14: H = Hash(0x00 x 8 || mHash || salt).
    let salt = &db[ps_len + 1..];
    let expected = D::new()
        .chain_update([0u8; 8])
        .chain_update(m_hash)
        .chain_update(salt)
        .finalize();
    expected.as_slice() == h
}

/// out ^= MGF1(seed, out.len()) with hash `D` (RFC 8017 B.2.1).
fn mgf1_xor<D: Digest>(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(<D as Digest>::output_size())) {
        let mask = D::new()
            .chain_update(seed)
            .chain_update(counter.to_be_bytes())
            .finalize();
        for (o, m) in chunk.iter_mut().zip(mask.as_slice()) {
            *o ^= m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::rsa_test_keys::{TestKey, keys};
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
    use crypto_bigint::{BoxedUint, Odd, Resize};
    use proptest::prelude::*;

    /// EMSA-PSS-ENCODE by hand, with any salt length (the signers we have always use
    /// the hash's length) and any separator before the salt (0x01 is right), as the
    /// integer m, in as many octets as n.
    fn encode<D: Digest>(key: &TestKey, msg: &[u8], salt: &[u8], separator: u8) -> Vec<u8> {
        let (h_len, em_bits) = (<D as Digest>::output_size(), key.exp.bits() - 1);
        let em_len = em_bits.div_ceil(8);
        let m_hash = D::digest(msg);
        let h = D::new()
            .chain_update([0u8; 8])
            .chain_update(&m_hash)
            .chain_update(salt)
            .finalize();
        let mut db = vec![0u8; em_len - h_len - 1];
        let ps_len = db.len() - salt.len() - 1;
        db[ps_len] = separator;
        db[ps_len + 1..].copy_from_slice(salt);
        mgf1_xor::<D>(&h, &mut db);
        db[0] &= 0xff >> (8 * em_len - em_bits);
        let lead = vec![0; key.n.len() - em_len];
        [lead.as_slice(), &db, h.as_slice(), &[0xbc]].concat()
    }

    /// m^d mod n, the signature of the encoded message m; `None` for m not below n.
    fn sign_raw(key: &TestKey, m: &[u8]) -> Option<Vec<u8>> {
        let n = BoxedUint::from_be_slice_vartime(&key.n);
        let params = BoxedMontyParams::new_vartime(Odd::new(n.clone()).expect("odd"));
        let m = BoxedUint::from_be_slice_vartime(m).resize(n.bits_precision());
        if m >= n {
            return None;
        }
        let d = BoxedUint::from_be_slice_vartime(&key.d);
        let s = BoxedMontyForm::new(m, &params)
            .pow(&d)
            .retrieve()
            .to_be_bytes();
        Some(s[s.len() - key.n.len()..].to_vec())
    }

    fn sign_with_salt<D: Digest>(key: &TestKey, msg: &[u8], salt: &[u8], separator: u8) -> Vec<u8> {
        sign_raw(key, &encode::<D>(key, msg, salt, separator)).expect("EM is below n")
    }

    /// A well-formed encoding with a bit set above emBits (the top bit of EM for a
    /// 2048-bit n, the octet before EM for a 2049-bit one): refused by both. Such an m
    /// is below n for about half the messages; those are the ones signed.
    #[test]
    fn bits_above_em_bits_are_refused() {
        for key in keys() {
            let em_bits = key.exp.bits() - 1;
            let mut signed = 0;
            for i in 0u8..32 {
                let mut m = encode::<sha2::Sha256>(key, &[i], &[7; 32], 1);
                let at = key.n.len() - em_bits.div_ceil(8);
                if em_bits % 8 == 0 {
                    m[0] = 1;
                } else {
                    m[at] |= 0x80 >> (8 * em_bits.div_ceil(8) - em_bits - 1);
                }
                let Some(sig) = sign_raw(key, &m) else {
                    continue;
                };
                let (ours, theirs, _) = both("PS256", key, &[i], &sig, (usize::MAX, 1));
                assert_eq!(
                    (ours, theirs),
                    (false, false),
                    "{} bits, message {i}",
                    key.exp.bits()
                );
                signed += 1;
            }
            assert!(signed > 0, "{} bits: no such m below n", key.exp.bits());
        }
    }

    /// Our decision and the `rsa` crate's (salt as long as the hash) for one input.
    /// `salt_len` usize::MAX checks `sig`; any other makes a signature by hand.
    fn both(
        alg: &str,
        key: &TestKey,
        msg: &[u8],
        sig: &[u8],
        (salt_len, separator): (usize, u8),
    ) -> (bool, bool, Vec<u8>) {
        macro_rules! pair {
            ($d:ty) => {{
                let hashed = <$d>::digest(msg);
                let made = if salt_len == usize::MAX {
                    sig.to_vec()
                } else {
                    sign_with_salt::<$d>(key, msg, &vec![0x5a; salt_len], separator)
                };
                let ours = verify::<$d>(&key.exp, &hashed, &made);
                let theirs = key
                    .public
                    .verify(rsa::pss::Pss::<$d>::new(), &hashed, &made)
                    .is_ok();
                (ours, theirs, made)
            }};
        }
        match alg {
            "PS256" => pair!(sha2::Sha256),
            "PS384" => pair!(sha2::Sha384),
            _ => pair!(sha2::Sha512),
        }
    }

    #[test]
    fn genuine_signatures_verify_for_every_hash_and_size() {
        for key in keys() {
            for alg in ["PS256", "PS384", "PS512"] {
                let sig = key.mint.signature(alg, b"payload");
                let (ours, theirs, _) = both(alg, key, b"payload", &sig, (usize::MAX, 1));
                assert_eq!((ours, theirs), (true, true), "{alg} {}", key.exp.bits());
                // Signed with another hash: refused by both.
                let other = if alg == "PS256" { "PS512" } else { "PS256" };
                let sig = key.mint.signature(other, b"payload");
                let (ours, theirs, _) = both(alg, key, b"payload", &sig, (usize::MAX, 1));
                assert_eq!((ours, theirs), (false, false), "{alg} signed {other}");
                // Made by hand: accepted with the hash's salt length only.
                let h_len = match alg {
                    "PS256" => 32,
                    "PS384" => 48,
                    _ => 64,
                };
                for salt in [0, 20, h_len - 1, h_len, h_len + 1] {
                    let (ours, theirs, _) = both(alg, key, b"payload", &[], (salt, 1));
                    let right = salt == h_len;
                    assert_eq!((ours, theirs), (right, right), "{alg} salt {salt}");
                }
                // The right salt behind a wrong separator.
                for separator in [0, 2, 0x81] {
                    let (ours, theirs, _) = both(alg, key, b"payload", &[], (h_len, separator));
                    assert_eq!(
                        (ours, theirs),
                        (false, false),
                        "{alg} separator {separator}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Tampered signatures, other messages, truncated, lengthened or random
        /// signatures, and signatures with other salt lengths: exactly the crate's
        /// decision every time.
        #[test]
        fn decisions_match_the_rsa_crate(
            which in 0usize..3,
            alg in prop::sample::select(vec!["PS256", "PS384", "PS512"]),
            msg in prop::collection::vec(any::<u8>(), 0..64),
            flip in any::<(usize, u8)>(),
            mode in 0u8..7,
            salt_len in prop::sample::select(vec![0usize, 20, 32, 48, 64, 65]),
            random in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            let key = &keys()[which];
            let mut sig = key.mint.signature(alg, &msg);
            let mut signed = msg.clone();
            let mut salt = usize::MAX;
            match mode {
                0 => {}
                1 => { let i = flip.0 % sig.len(); sig[i] ^= flip.1 | 1; }
                2 => signed.push(0),
                3 => { sig.pop(); }
                4 => sig.push(flip.1),
                5 => salt = salt_len,
                _ => sig = random,
            }
            let (ours, theirs, _) = both(alg, key, &signed, &sig, (salt, 1));
            prop_assert_eq!(ours, theirs);
            let h_len = match alg { "PS256" => 32, "PS384" => 48, _ => 64 };
            prop_assert_eq!(ours, mode == 0 || (mode == 5 && salt_len == h_len));
        }
    }
}
