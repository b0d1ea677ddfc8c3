//! `jwt-auth`: bearer JWT validation against the IdP's JWKS, safe against the known
//! token attacks.
//!
//! The policy is plain Rust, tested natively: [`config`] (what the operator wrote),
//! [`extract`] (where the token is), [`token`] (parsing) and [`keys`] (JWKS and
//! signatures), both from `kit::jwt`, [`claims`], [`auth`] (the decision and the verified-token cache). The
//! proxy-wasm glue in `filter` (wasm32 only) moves bytes between the host and them,
//! fetches and shares the JWKS, and answers.

pub mod auth;
pub mod claims;
pub mod config;
pub mod error;
pub mod extract;
/// JWKS parsing and signature checks, shared with `oidc` through `kit`.
pub use kit::jwt::keys;
/// Compact-JWS parsing, shared with `oidc` through `kit`.
pub use kit::jwt::token;

#[cfg(target_arch = "wasm32")]
mod filter;
