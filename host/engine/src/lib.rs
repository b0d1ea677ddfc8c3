//! `portcullis-engine`: a proxy-wasm ABI 0.2.1 host on wasmtime that behaves as Envoy
//! 1.40 does for everything a filter can observe.
//!
//! How to use it: build one [`Engine`] per process; [`Engine::load`] a `.wasm` once;
//! on each worker thread (inside a tokio `LocalSet`) start a [`Filter`] per plugin
//! from a [`PluginSpec`], and drive each request through the chain with an
//! [`HttpStream`]. The embedder supplies [`Clusters`] for `http_call` / `grpc_call`.
#![deny(unsafe_code)]

pub mod abi;
pub mod clock;
mod contexts;
mod engine;
mod filter;
pub mod headers;
mod imports;
pub mod limits;
pub mod metrics;
mod properties;
pub mod shared;
mod state;
mod stream;
pub mod types;
mod vm;

pub use clock::{Clock, ManualClock};
pub use engine::{CompiledModule, EPOCH_PERIOD, Engine, EngineConfig, EngineError};
pub use filter::{Clusters, Filter, Health, LocalFuture};
pub use headers::HeaderMap;
pub use limits::{HostLimits, Limit};
pub use stream::{Flow, HttpStream};
pub use types::*;
pub use vm::{Fault, PluginSpec, StartError, VmLimits};
