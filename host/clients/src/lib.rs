//! Real connections behind the clusters filters reach: an HTTP client for
//! `http_call` (pooled keep-alive, per-call timeout, Envoy's failure mapping) and
//! `grpc_call`, over TLS where the service says so.
#![forbid(unsafe_code)]

pub mod grpc_cluster;
pub mod http_cluster;
pub mod tls;

pub use grpc_cluster::GrpcCluster;
pub use http_cluster::HttpCluster;
