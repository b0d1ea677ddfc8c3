//! s^e mod n for RSA signature verification, laid out for wasm32.
//!
//! wasm has a 32x32->64-bit multiplication and nothing wider, and no add-with-carry.
//! A bignum with 32-bit limbs (crypto-bigint's, on wasm32) must split every 64-bit
//! product and carry between limbs at each step. Here a limb holds 28 bits, so a
//! product is under 2^56 and a whole column of a product (up to 255 of them: moduli up
//! to 7140 bits) adds up in one u64 with no carry handling: the inner loop is a load,
//! a load, a multiply and an add. Montgomery reduction is interleaved column by column
//! (product scanning), and R = 2^(28 L) > 4n, so no step subtracts n until the last.
//! In wasm the dot products run on SIMD (`i64x2.extmul` of four 32-bit limbs into two
//! 64-bit lanes), enabled for these functions only: the same flag for the whole
//! filter makes LLVM vectorize P-256's field code badly (ES256 590 -> 660 us).
//!
//! Everything here is variable time. That is sound for verification only: the
//! signature, the modulus and the exponent are all public.

use crypto_bigint::{BoxedUint, NonZero};

const W: u32 = 28;
const MASK: u32 = (1 << W) - 1;
/// Columns of up to 2 x 255 products of 56 bits cannot overflow the u64 sums below.
const MAX_LIMBS: usize = 255;

/// A public RSA key prepared for [`PublicExp::apply`].
pub struct PublicExp {
    /// n in little-endian 28-bit limbs, and the same limbs in reverse order, so that
    /// every column of a product is a dot product of two slices read forwards.
    n: Box<[u32]>,
    n_rev: Box<[u32]>,
    /// -n^-1 mod 2^28.
    n0inv: u32,
    /// R^2 mod n, reversed, to bring a value into Montgomery form in one product.
    r2_rev: Box<[u32]>,
    /// The exponent, big-endian, without leading zero bytes.
    e: Box<[u8]>,
    /// Length of n in bytes: the length of a signature and of the result.
    k: usize,
    /// Length of n in bits.
    bits: usize,
}

impl std::fmt::Debug for PublicExp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicExp({} bytes)", self.k)
    }
}

/// Sum of x[i] * y[i], in two lanes of 64-bit sums (i64x2.extmul). Its arithmetic is
/// the scalar one's below, which the native property tests check; in wasm the test
/// bed's RSA test checks it through the built filter.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
#[inline]
fn dot(x: &[u32], y: &[u32]) -> u64 {
    use core::arch::wasm32::*;
    debug_assert_eq!(x.len(), y.len());
    // Four limbs of each side: four products, into two accumulators of two lanes.
    let step = |acc: &mut [v128; 2], a: &[u32; 4], b: &[u32; 4]| {
        let va = u32x4(a[0], a[1], a[2], a[3]);
        let vb = u32x4(b[0], b[1], b[2], b[3]);
        acc[0] = u64x2_add(acc[0], u64x2_extmul_low_u32x4(va, vb));
        acc[1] = u64x2_add(acc[1], u64x2_extmul_high_u32x4(va, vb));
    };
    let mut acc = [u64x2_splat(0); 2];
    // Sixteen products per loop iteration: the engine checks for interruption at every
    // loop head (RS256: 4 per iteration 103 us, 8 83 us, 16 78 us in our host).
    let (x4, x_rest) = x.as_chunks::<4>();
    let (y4, y_rest) = y.as_chunks::<4>();
    let (x16, x4) = x4.as_chunks::<4>();
    let (y16, y4) = y4.as_chunks::<4>();
    for (a, b) in x16.iter().zip(y16) {
        for (a, b) in a.iter().zip(b) {
            step(&mut acc, a, b);
        }
    }
    for (a, b) in x4.iter().zip(y4) {
        step(&mut acc, a, b);
    }
    let lanes = u64x2_add(acc[0], acc[1]);
    let sum = u64x2_extract_lane::<0>(lanes) + u64x2_extract_lane::<1>(lanes);
    sum + x_rest
        .iter()
        .zip(y_rest)
        .map(|(a, b)| u64::from(*a) * u64::from(*b))
        .sum::<u64>()
}

/// Sum of x[i] * y[i]. The caller keeps the terms few enough not to overflow.
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn dot(x: &[u32], y: &[u32]) -> u64 {
    debug_assert_eq!(x.len(), y.len());
    let term = |a: &u32, b: &u32| u64::from(*a) * u64::from(*b);
    // Four products per iteration: wasm engines check for interruption at every loop
    // head, and LLVM does not unroll this loop for wasm by itself.
    let (xs, x_rest) = x.as_chunks::<4>();
    let (ys, y_rest) = y.as_chunks::<4>();
    let mut sum = 0;
    for (a, b) in xs.iter().zip(ys) {
        sum += term(&a[0], &b[0]) + term(&a[1], &b[1]) + term(&a[2], &b[2]) + term(&a[3], &b[3]);
    }
    sum + x_rest
        .iter()
        .zip(y_rest)
        .map(|(a, b)| term(a, b))
        .sum::<u64>()
}

/// Little-endian 28-bit limbs of a big-endian integer, `l` of them; `None` if it does
/// not fit.
fn to_limbs(be: &[u8], l: usize) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(l + 1);
    let (mut acc, mut bits) = (0u64, 0);
    for byte in be.iter().rev() {
        acc |= u64::from(*byte) << bits;
        bits += 8;
        if bits >= W {
            out.push(acc as u32 & MASK);
            acc >>= W;
            bits -= W;
        }
    }
    out.push(acc as u32);
    while out.len() > l {
        if out.pop() != Some(0) {
            return None;
        }
    }
    out.resize(l, 0);
    Some(out)
}

/// The `k`-byte big-endian encoding of little-endian 28-bit limbs that fit in it.
fn to_be_bytes(limbs: &[u32], k: usize) -> Vec<u8> {
    let mut le = Vec::with_capacity(limbs.len() * 4);
    let (mut acc, mut bits) = (0u64, 0);
    for limb in limbs {
        acc |= u64::from(*limb) << bits;
        bits += W;
        while bits >= 8 {
            le.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    le.push(acc as u8);
    le.resize(k.max(le.len()), 0);
    debug_assert!(le[k..].iter().all(|b| *b == 0));
    le.truncate(k);
    le.reverse();
    le
}

fn reversed(x: &[u32], out: &mut [u32]) {
    for (o, v) in out.iter_mut().zip(x.iter().rev()) {
        *o = *v;
    }
}

/// a >= b, for limbs of the same length.
fn ge(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// a -= b, for a >= b.
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u32;
    for (x, y) in a.iter_mut().zip(b) {
        let d = x.wrapping_sub(*y).wrapping_sub(borrow);
        borrow = d >> 31;
        *x = d & MASK;
    }
}

impl PublicExp {
    /// Prepares the key (n, e), both big-endian. `None` for an even or one-limb n, an
    /// exponent below 2, or n larger than this layout takes.
    pub fn new(n_be: &[u8], e_be: &[u8]) -> Option<PublicExp> {
        let n_be = &n_be[n_be.iter().take_while(|b| **b == 0).count()..];
        let e_be = &e_be[e_be.iter().take_while(|b| **b == 0).count()..];
        let n_bits = n_be.len() * 8 - n_be.first()?.leading_zeros() as usize;
        // R > 4n keeps every intermediate result below 2n.
        let l = (n_bits + 2).div_ceil(W as usize);
        if n_be.last()? & 1 == 0 || !(2..=MAX_LIMBS).contains(&l) || e_be.is_empty() || e_be == [1]
        {
            return None;
        }
        let n = to_limbs(n_be, l)?;
        // Newton's iteration doubles the correct low bits of n^-1 mod 2^32 each round:
        // n0 is odd, so n0 itself is right to 3 bits, and 5 rounds give 32 (> 28).
        let mut inv = n[0];
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        let n0inv = inv.wrapping_neg() & MASK;
        // R^2 mod n, once per key, with crypto-bigint.
        let r2_bits = 2 * W * l as u32;
        let modulus = NonZero::new(BoxedUint::from_be_slice_vartime(n_be)).into_option()?;
        let r2 = BoxedUint::one_with_precision(r2_bits + 1)
            .shl_vartime(r2_bits)?
            .rem_vartime(&modulus);
        let r2 = to_limbs(&r2.to_be_bytes(), l)?;
        let mut r2_rev = vec![0; l];
        reversed(&r2, &mut r2_rev);
        let mut n_rev = vec![0; l];
        reversed(&n, &mut n_rev);
        Some(PublicExp {
            n: n.into(),
            n_rev: n_rev.into(),
            n0inv,
            r2_rev: r2_rev.into(),
            e: e_be.into(),
            k: n_be.len(),
            bits: n_bits,
        })
    }

    /// Length of n in bytes.
    pub fn size(&self) -> usize {
        self.k
    }

    /// Length of n in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// out = p R^-1 mod n for the 2L-limb product p whose column k (the sum of its
    /// limb products a[i] b[k-i], i from `lo` = max(0, k+1-L)) is `column(k, lo)`:
    /// Montgomery reduction interleaved column by column. Below 2n for p below 4n^2,
    /// since R > 4n. `m` is scratch.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    #[inline]
    fn reduce(&self, column: impl Fn(usize, usize) -> u128, m: &mut [u32], out: &mut [u32]) {
        let l = self.n.len();
        let mut acc: u128 = 0;
        for k in 0..l {
            // Column k of m n: m[i] n[k-i] for i in 0..k; m[k] is chosen to clear it.
            acc += column(k, 0);
            acc += u128::from(dot(&m[..k], &self.n_rev[l - 1 - k..l - 1]));
            let mk = (acc as u32).wrapping_mul(self.n0inv) & MASK;
            m[k] = mk;
            acc += u128::from(u64::from(mk) * u64::from(self.n[0]));
            debug_assert_eq!(acc as u32 & MASK, 0);
            acc >>= W;
        }
        for k in l..2 * l - 1 {
            let lo = k + 1 - l;
            acc += column(k, lo);
            acc += u128::from(dot(&m[lo..], &self.n_rev[..l - lo]));
            out[k - l] = acc as u32 & MASK;
            acc >>= W;
        }
        debug_assert!(acc >> W == 0);
        out[l - 1] = acc as u32;
    }

    /// out = a b R^-1 mod n, below 2n for a and b below 2n. `b_rev` is b reversed.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn mul(&self, a: &[u32], b_rev: &[u32], m: &mut [u32], out: &mut [u32]) {
        let l = self.n.len();
        // a[i] b[k-i] = a[i] b_rev[l-1-k+i], for i from lo to min(k, l-1); lo >= k+1-l
        // keeps the start from underflowing.
        let column = |k: usize, lo: usize| {
            let hi = k.min(l - 1);
            u128::from(dot(&a[lo..=hi], &b_rev[l - 1 + lo - k..=l - 1 + hi - k]))
        };
        self.reduce(column, m, out);
    }

    /// out = a^2 R^-1 mod n, below 2n for a below 2n. `a_rev` is a reversed.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn square(&self, a: &[u32], a_rev: &[u32], m: &mut [u32], out: &mut [u32]) {
        let l = self.n.len();
        // Twice a[i] a[k-i] for i < k-i, plus a[k/2]^2 for even k.
        let column = |k: usize, lo: usize| {
            let h = k.div_ceil(2);
            // a[k-i] = a_rev[l-1-k+i]; lo >= k+1-l keeps the start from underflowing.
            let start = l - 1 + lo - k;
            let pairs = dot(&a[lo..h], &a_rev[start..start + h - lo]);
            let middle = if k.is_multiple_of(2) {
                u64::from(a[k / 2]) * u64::from(a[k / 2])
            } else {
                0
            };
            u128::from(2 * pairs + middle)
        };
        self.reduce(column, m, out);
    }

    /// s^e mod n as `size()` big-endian bytes, for s given as `size()` big-endian
    /// bytes; `None` if s has another length or is not below n (RFC 8017 §5.2.2).
    pub fn apply(&self, s: &[u8]) -> Option<Vec<u8>> {
        let l = self.n.len();
        if s.len() != self.k {
            return None;
        }
        let s = to_limbs(s, l)?;
        if ge(&s, &self.n) {
            return None;
        }
        let mut m = vec![0; l];
        // base = s R mod n (below 2n), and reversed for the multiplications by it.
        let mut base = vec![0; l];
        self.mul(&s, &self.r2_rev, &mut m, &mut base);
        let mut base_rev = vec![0; l];
        reversed(&base, &mut base_rev);
        // Square-and-multiply from the bit below the top one.
        let mut acc = base.clone();
        let mut rev = vec![0; l];
        let mut next = vec![0; l];
        let top = 7 - self.e[0].leading_zeros();
        let bits = (0..top).rev().map(|b| self.e[0] >> b & 1 == 1).chain(
            self.e[1..]
                .iter()
                .flat_map(|byte| (0..8).rev().map(move |b| byte >> b & 1 == 1)),
        );
        for bit in bits {
            reversed(&acc, &mut rev);
            self.square(&acc, &rev, &mut m, &mut next);
            std::mem::swap(&mut acc, &mut next);
            if bit {
                self.mul(&acc, &base_rev, &mut m, &mut next);
                std::mem::swap(&mut acc, &mut next);
            }
        }
        // Out of Montgomery form: a product by 1, which lands at or below n; equal to
        // n only for s = 0, which the subtraction makes 0.
        let mut one_rev = vec![0; l];
        one_rev[l - 1] = 1;
        self.mul(&acc, &one_rev, &mut m, &mut next);
        if ge(&next, &self.n) {
            sub_in_place(&mut next, &self.n);
        }
        Some(to_be_bytes(&next, self.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
    use crypto_bigint::{Odd, Resize};
    use proptest::prelude::*;

    /// s^e mod n by crypto-bigint's own modular exponentiation.
    fn reference(n: &[u8], e: &[u8], s: &[u8]) -> Vec<u8> {
        let n = BoxedUint::from_be_slice_vartime(n);
        let params = BoxedMontyParams::new_vartime(Odd::new(n.clone()).unwrap());
        let s = BoxedUint::from_be_slice_vartime(s).resize(n.bits_precision());
        let e = BoxedUint::from_be_slice_vartime(e);
        let bytes = BoxedMontyForm::new(s, &params)
            .pow(&e)
            .retrieve()
            .to_be_bytes();
        let k = n.bit_width().div_ceil(8) as usize;
        bytes[bytes.len() - k..].to_vec()
    }

    /// An odd modulus of exactly `bits` bits from random bytes.
    fn modulus(bits: usize, mut bytes: Vec<u8>) -> Vec<u8> {
        let k = bits.div_ceil(8);
        bytes.resize(k, 0x5a);
        let top = bits - 8 * (k - 1);
        bytes[0] &= ((1u16 << top) - 1) as u8;
        bytes[0] |= 1 << (top - 1);
        bytes[k - 1] |= 1;
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any odd modulus of 57 to 4200 bits, any base below it, small and large
        /// exponents: the same result as crypto-bigint.
        #[test]
        fn matches_crypto_bigint(
            bits in 57usize..4200,
            n_bytes in prop::collection::vec(any::<u8>(), 525..526),
            s_bytes in prop::collection::vec(any::<u8>(), 525..526),
            e in prop::sample::select(vec![3u64, 17, 65537, 0xffff_ffff, u64::MAX]),
        ) {
            let n = modulus(bits, n_bytes);
            let k = n.len();
            // s below n: n with its top byte lowered, mixed with the random bytes.
            let mut s: Vec<u8> = s_bytes[..k].to_vec();
            s[0] = n[0].saturating_sub(1).min(s[0]);
            let e = e.to_be_bytes();
            let exp = PublicExp::new(&n, &e).expect("an odd modulus");
            prop_assert_eq!(exp.apply(&s), Some(reference(&n, &e, &s)));
        }

        /// Extreme values: 0, 1, n-1, and s = n or above (refused).
        #[test]
        fn edges(bits in 57usize..4200, n_bytes in prop::collection::vec(any::<u8>(), 525..526)) {
            let n = modulus(bits, n_bytes);
            let k = n.len();
            let exp = PublicExp::new(&n, &[1, 0, 1]).expect("an odd modulus");
            let mut zero = vec![0; k];
            prop_assert_eq!(exp.apply(&zero), Some(zero.clone()));
            zero[k - 1] = 1;
            prop_assert_eq!(exp.apply(&zero), Some(zero.clone()));
            let mut below = n.clone();
            below[k - 1] -= 1;
            prop_assert_eq!(exp.apply(&below), Some(reference(&n, &[1, 0, 1], &below)));
            prop_assert_eq!(exp.apply(&n), None);
            prop_assert_eq!(exp.apply(&vec![0xff; k]), None);
            prop_assert_eq!(exp.apply(&n[1..]), None);
        }
    }

    #[test]
    fn unusable_keys_are_refused() {
        assert!(PublicExp::new(&[0x80, 0, 0, 0, 0, 0, 0, 0x02], &[1, 0, 1]).is_none());
        assert!(PublicExp::new(&[0x80, 0, 0, 0, 0, 0, 0, 0x03], &[1]).is_none());
        assert!(PublicExp::new(&[0x80, 0, 0, 0, 0, 0, 0, 0x03], &[]).is_none());
        assert!(PublicExp::new(&[], &[3]).is_none());
        assert!(PublicExp::new(&[0, 0, 7], &[3]).is_none());
        assert!(PublicExp::new(&vec![0xff; 1000], &[3]).is_none());
        assert!(PublicExp::new(&[0, 0x80, 0, 0, 0, 0, 0, 0, 0x03], &[0, 3]).is_some());
    }
}
