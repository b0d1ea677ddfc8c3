//! What every Portcullis filter shares, in plain Rust with no proxy-wasm glue:
//! parsing a filter's JSON configuration, the identity-header contract between
//! filters (DESIGN.md, "Identity contract"), and the JSON body of local replies.
#![deny(unsafe_code)]

pub mod config;
#[cfg(target_arch = "wasm32")]
pub mod glue;
pub mod identity;
pub mod ratelimit;
pub mod reply;
