//! `portcullis`: the standalone gateway. A hyper + tokio reverse proxy that routes
//! requests Kong-style (services, routes, filters) and runs each route's chain of
//! proxy-wasm filters in the Portcullis engine: on each worker thread one VM per
//! `vm_id` and module, with a root context per filter.
//!
//! How to use it: `portcullis run --config gateway.yaml` (see `examples/` and the
//! README); `portcullis validate --config gateway.yaml` checks a configuration fully.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod downstream;
pub mod edge;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod router;
pub mod run;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod worker;
