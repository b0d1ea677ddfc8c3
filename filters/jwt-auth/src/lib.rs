//! `jwt-auth`: bearer JWT validation against the IdP's JWKS, safe against the known
//! token attacks.
//!
//! The policy is plain Rust, tested natively: [`config`] (what the operator wrote),
//! [`extract`] (where the token is), [`token`] (parsing), [`keys`] (JWKS and
//! signatures), [`claims`], [`auth`] (the decision and the verified-token cache). The
//! proxy-wasm glue in `filter` (wasm32 only) moves bytes between the host and them,
//! fetches and shares the JWKS, and answers.

pub mod auth;
pub mod claims;
pub mod config;
pub mod error;
pub mod extract;
pub mod keys;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod filter;
