//! What every Portcullis filter shares, in plain Rust with no proxy-wasm glue:
//! parsing a filter's JSON configuration, the identity-header contract between
//! filters (docs/architecture.md, "Contracts between filters"), the JSON body of local replies, the lax
//! reading of request paths a filter checks its routing against, a credential's place in the
//! query or a cookie as lenient servers read them, claim rules, and (with the `jwt`
//! feature) JWT and JWKS verification for the filters that check tokens.
#![deny(unsafe_code)]

pub mod bytes;
pub mod claim_rule;
pub mod config;
pub mod credential;
#[cfg(target_arch = "wasm32")]
pub mod glue;
pub mod identity;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod path;
pub mod reply;
