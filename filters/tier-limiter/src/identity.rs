//! Who is counted, kept short. An identity can be as long as the header it came from
//! (an API key, a token's subject); sent as it is, a long one would make the global
//! policy's request larger than the rate-limit service accepts, and every such request
//! would then fail, and with `failure_mode: open` go through uncounted. An identity
//! longer than [`MAX_IDENTITY_BYTES`] is counted by its SHA-256 instead.

use sha2::{Digest, Sha256};

/// The longest identity counted as it is.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// `identity`, or `sha256/` and the hex digest of it when it is longer than
/// [`MAX_IDENTITY_BYTES`]. No other identity is `sha256/` and hex digits only: the
/// address's starts `ip:`, a consumer's `consumer:`, a header's holds a `:` or a `#`
/// after the header's name.
pub fn bounded(identity: String) -> String {
    if identity.len() <= MAX_IDENTITY_BYTES {
        return identity;
    }
    let mut out = String::from("sha256/");
    push_hex(&mut out, &Sha256::digest(identity.as_bytes()));
    out
}

/// Appends `bytes` in lower-case hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_short_identity_is_kept_and_a_long_one_is_its_digest() {
        assert_eq!(bounded("x-api-key:k1".into()), "x-api-key:k1");
        let at_limit = "a".repeat(MAX_IDENTITY_BYTES);
        assert_eq!(bounded(at_limit.clone()), at_limit);
        let long = format!("x-api-key:{}", "k".repeat(40_000));
        let d = bounded(long.clone());
        assert_eq!(d.len(), 7 + 64);
        assert!(d.starts_with("sha256/"));
        assert_eq!(bounded(long), d, "the same identity, the same digest");
    }

    proptest! {
        #[test]
        fn hex_is_two_lower_case_digits_a_byte(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = String::from("x#");
            push_hex(&mut out, &bytes);
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(out, format!("x#{expected}"));
        }

        #[test]
        fn two_long_identities_that_differ_are_counted_apart(
            a in proptest::collection::vec(any::<u8>(), MAX_IDENTITY_BYTES + 1..1000),
            flip in any::<prop::sample::Index>(),
        ) {
            let a = String::from_utf8_lossy(&a).into_owned();
            let mut b = a.clone().into_bytes();
            let i = flip.index(b.len());
            b[i] = if b[i] == b'x' { b'y' } else { b'x' };
            let b = String::from_utf8_lossy(&b).into_owned();
            prop_assume!(a != b);
            prop_assert_ne!(bounded(a), bounded(b));
        }

        #[test]
        fn a_bounded_identity_is_never_longer_than_the_limit_or_the_digest(
            s in ".{0,600}",
        ) {
            let out = bounded(s.clone());
            prop_assert!(out.len() <= MAX_IDENTITY_BYTES.max(7 + 64));
            if s.len() <= MAX_IDENTITY_BYTES {
                prop_assert_eq!(out, s);
            }
        }
    }
}
