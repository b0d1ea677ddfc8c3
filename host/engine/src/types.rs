//! Plain data that crosses the line between the engine and its embedder.

use std::net::SocketAddr;
use std::time::Duration;

use crate::headers::HeaderMap;

/// What the host knows of a request beyond its headers: Envoy's `request.*`,
/// `source.*` and `destination.*` properties come from here.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub id: String,
    /// "HTTP/1.1", "HTTP/2"
    pub protocol: String,
    pub scheme: String,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// Arrival time, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// `:method`, `:path` and `:authority` as the request arrived.
    pub method: String,
    pub path: String,
    pub host: String,
}

/// A reply a filter (or the host, for a failed filter) sends instead of the upstream's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: HeaderMap,
    /// -1 when not a gRPC reply.
    pub grpc_status: i32,
}

impl LocalReply {
    /// A reply of the product's own (the engine's or the gateway's): `status` and the
    /// JSON error body every local reply carries, `{"message": ..., "request_id": ...}`;
    /// `details` is what the access log records as the reason.
    pub fn json(status: u16, details: &str, message: &str, request_id: &str) -> LocalReply {
        let mut headers = HeaderMap::new();
        let (name, value) = portcullis_reply::CONTENT_TYPE_JSON;
        headers.add(name, value);
        LocalReply {
            status,
            details: details.into(),
            body: portcullis_reply::json_body(message, Some(request_id)),
            headers,
            grpc_status: -1,
        }
    }

    /// The headers a client receives: `:status`, the filter's own headers, and a
    /// content type and length for the body (`text/plain` when the filter set none, as
    /// Envoy's local replies do).
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.add(":status", self.status.to_string());
        for (k, v) in self.headers.iter() {
            h.add(k, v);
        }
        if !self.body.is_empty() && h.get("content-type").is_none() {
            h.add("content-type", "text/plain");
        }
        h.set("content-length", self.body.len().to_string());
        h
    }
}

/// A request a filter sends with `proxy_http_call`.
#[derive(Clone, Debug)]
pub struct HttpCallRequest {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct HttpCallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// Why an `http_call` got no response from its cluster. Envoy turns a timeout into a
/// `:status 504` response and a refused connection into `:status 503`; a reset after
/// that reaches the filter as a call with no headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    Timeout,
    ConnectFailed(String),
    Reset(String),
}

/// A unary call a filter makes with `proxy_grpc_call`.
#[derive(Clone, Debug)]
pub struct GrpcCallRequest {
    pub service: String,
    pub method: String,
    pub initial_metadata: HeaderMap,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct GrpcCallResponse {
    pub initial_metadata: HeaderMap,
    pub message: Vec<u8>,
    pub trailing_metadata: HeaderMap,
}

/// A gRPC status other than OK, with its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: String,
}

impl GrpcStatus {
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// How a failed VM is treated (Envoy's `failure_policy`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Every request through the filter gets 503 from then on (Envoy's default).
    #[default]
    FailClosed,
    /// Requests go on as if the filter were not in the chain.
    FailOpen,
    /// The request that hit the failure gets 503; a fresh VM serves the next ones.
    Reload,
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail_closed" => Ok(FailurePolicy::FailClosed),
            "fail_open" => Ok(FailurePolicy::FailOpen),
            "reload" => Ok(FailurePolicy::Reload),
            other => Err(format!(
                "unknown failure_policy `{other}` (fail_closed, fail_open or reload)"
            )),
        }
    }
}

/// One line a filter logged (through `proxy_log` or WASI stdout/stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub plugin: String,
    pub level: crate::abi::LogLevel,
    pub message: String,
}
