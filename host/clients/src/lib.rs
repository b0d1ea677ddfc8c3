//! Real connections behind the clusters filters reach: an HTTP client for
//! `http_call` (pooled keep-alive, per-call timeout, Envoy's failure mapping), and the
//! echo upstream that tests and the demo put behind the gateway.
#![forbid(unsafe_code)]

pub mod echo;
pub mod grpc_cluster;
pub mod http_cluster;
pub mod tls;

pub use grpc_cluster::GrpcCluster;
pub use http_cluster::HttpCluster;
