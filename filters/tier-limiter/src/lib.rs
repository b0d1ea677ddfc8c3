//! `tier-limiter`: token-bucket rate limits per consumer tier (free / standard /
//! premium ...), several windows at once (second, minute, hour, day), exact across the
//! workers of one host through shared data with compare-and-swap.
//!
//! [`config`] holds the plans, [`bucket`] the token arithmetic, [`slots`] where buckets
//! live, [`address`] who a client is by its address, [`identity`] how long an identity
//! may be, [`headers`] what clients are told; the proxy-wasm glue is wasm32 only.

pub mod address;
pub mod bucket;
pub mod config;
pub mod global;
pub mod headers;
pub mod identity;
pub mod slots;

#[cfg(target_arch = "wasm32")]
mod filter;
