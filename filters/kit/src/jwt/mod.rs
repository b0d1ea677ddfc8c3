//! JWT verification shared by the filters that check tokens (`jwt-auth` for bearer
//! access tokens, `oidc` for ID tokens, logout tokens and bearer pass-through): parsing a
//! compact JWS ([`token`]), JWKS keys bound to the one algorithm family each may serve
//! and signature checks ([`keys`]), registered-claim rules ([`claims`]) and the
//! consumer-identity headers a verified token gives ([`consumer`]).
//!
//! Only compiled with the `jwt` feature, so filters that verify nothing do not carry
//! the crypto crates.

pub mod claims;
pub mod consumer;
pub mod keys;
pub mod modexp;
pub mod rsa_pkcs1;
pub mod rsa_pss;
#[cfg(test)]
mod rsa_test_keys;
pub mod sign;
pub mod token;

use keys::{Alg, KeySet};
use token::Token;

/// Why a token cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("token is too large")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token has a critical header parameter we do not understand")]
    UnknownCrit,
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("no key matches the token")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token has expired")]
    Expired,
    #[error("token has no expiration")]
    NoExpiration,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token lifetime is longer than allowed")]
    LifetimeTooLong,
    #[error("malformed claim: {0}")]
    BadClaim(&'static str),
    #[error("more than one token in the request")]
    Multiple,
}

/// Checks the signature of a parsed token with `set`: the token's `alg` must be in
/// `allowed`, and only keys that fit that algorithm (type, the JWK's own `alg`, the
/// token's `kid` when it names one) are tried. No claim is looked at here.
pub fn verify_signature(token: &Token<'_>, allowed: &[Alg], set: &KeySet) -> Result<Alg, Invalid> {
    let alg = Alg::parse(&token.alg)
        .filter(|a| allowed.contains(a))
        .ok_or(Invalid::AlgorithmNotAllowed)?;
    let mut candidates = set.candidates(alg, token.kid.as_deref()).peekable();
    if candidates.peek().is_none() {
        return Err(Invalid::UnknownKey);
    }
    if candidates.any(|k| k.verify(alg, token.signed.as_bytes(), &token.signature)) {
        Ok(alg)
    } else {
        Err(Invalid::BadSignature)
    }
}
