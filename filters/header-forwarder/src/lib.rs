//! `header-forwarder`: forward the verified credential and identity upstream, and
//! transform request and response headers (and the query string) the way Kong's
//! request-transformer and response-transformer do.
//!
//! [`config`] holds the operations, [`template`] the `$(source.name)` values, [`ops`]
//! applies a phase to a header list; the proxy-wasm glue (wasm32 only) reads each
//! header map once and writes it once.

pub mod config;
pub mod ops;
pub mod template;

#[cfg(target_arch = "wasm32")]
mod filter;
