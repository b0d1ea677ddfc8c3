//! Byte-string helpers for the filters' per-VM caches, shaped for wasm: the standard
//! `memcmp` is a byte-wise loop there, and SipHash over a whole token costs as much as
//! the lookup it serves.

/// Equality of two byte strings, eight bytes at a time.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let word = |c: &[u8]| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    ca.zip(cb).all(|(x, y)| word(x) == word(y)) && ra == rb
}

/// A bucket key from the length and last 16 bytes (FNV-1a): for values that end in a
/// signature or an AEAD tag, which are random. Only picks a bucket; a match is always
/// decided by [`same`] on the whole value, so two values sharing a bucket cost a
/// comparison and never stand in for each other.
pub fn tail_hash(v: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ v.len() as u64;
    for &x in &v[v.len().saturating_sub(16)..] {
        h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn word_equality_examples() {
        for (a, b) in [
            ("", ""),
            ("abcdefgh", "abcdefgh"),
            ("abcdefghi", "abcdefghj"),
            ("abcdefgh1", "abcdefgh"),
        ] {
            assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
        }
        let x = "k1.".to_owned() + &"A".repeat(3000);
        let mut y = x.clone().into_bytes();
        y[1500] = b'B';
        assert!(!same(x.as_bytes(), &y));
    }

    proptest! {
        #[test]
        fn same_is_equality(a in proptest::collection::vec(any::<u8>(), 0..64),
                            flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            prop_assert!(same(&a, &a));
            let mut b = a.clone();
            if !b.is_empty() {
                let i = flip.index(b.len());
                b[i] ^= 1 << bit;
                prop_assert!(!same(&a, &b));
            }
            let mut c = a.clone();
            c.push(0);
            prop_assert!(!same(&a, &c));
        }

        #[test]
        fn same_agrees_with_eq(a in proptest::collection::vec(0u8..3, 0..24),
                               b in proptest::collection::vec(0u8..3, 0..24)) {
            prop_assert_eq!(same(&a, &b), a == b);
        }
    }
}
