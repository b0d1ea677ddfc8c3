//! `key-auth`: API keys, the job of Kong's `key-auth` plugin, on the same identity
//! contract as `jwt-auth` and `oidc` (docs/architecture.md).
//!
//! The policy is plain Rust, tested natively: [`config`] (what the operator wrote),
//! [`directory`] (consumers and their keys, kept only as SHA-256 digests, from the
//! configuration or fetched from a service) and [`extract`] (where the key is, and the
//! request without it). The proxy-wasm glue in `filter` (wasm32 only) moves bytes
//! between the host and them, fetches and shares the fetched consumers, and answers.

pub mod config;
pub mod directory;
pub mod extract;

#[cfg(target_arch = "wasm32")]
mod filter;
