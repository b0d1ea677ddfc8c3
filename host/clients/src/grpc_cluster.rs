//! `grpc_call` over a real HTTP/2 connection (cleartext h2c) to one cluster: unary
//! calls with the length-prefixed gRPC framing, `grpc-timeout` deadlines, and status
//! codes from the trailers.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_engine::{GrpcCallRequest, GrpcCallResponse, GrpcStatus, HeaderMap, LocalFuture};

#[derive(Clone, Debug)]
pub struct GrpcCluster {
    authority: http::uri::Authority,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl GrpcCluster {
    /// `url`: `http://host:port` (spoken as h2c with prior knowledge).
    pub fn new(url: &str, connect_timeout: Duration) -> Result<GrpcCluster, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad cluster url `{url}`: {e}"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("cluster url `{url}` has no host"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "cluster url `{url}`: gRPC calls go over h2c (http://) only"
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Ok(GrpcCluster { authority, client })
    }

    pub fn call(
        &self,
        request: GrpcCallRequest,
    ) -> LocalFuture<Result<GrpcCallResponse, GrpcStatus>> {
        let this = self.clone();
        Box::pin(async move {
            let deadline = request.timeout;
            if deadline.is_zero() {
                return this.send(request).await;
            }
            tokio::time::timeout(deadline, this.send(request))
                .await
                .unwrap_or_else(|_| {
                    Err(GrpcStatus {
                        code: GrpcStatus::DEADLINE_EXCEEDED,
                        message: "deadline exceeded".into(),
                    })
                })
        })
    }

    async fn send(&self, request: GrpcCallRequest) -> Result<GrpcCallResponse, GrpcStatus> {
        let unavailable = |m: String| GrpcStatus {
            code: GrpcStatus::UNAVAILABLE,
            message: m,
        };
        let internal = |m: String| GrpcStatus {
            code: GrpcStatus::INTERNAL,
            message: m,
        };
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(format!("/{}/{}", request.service, request.method))
            .build()
            .map_err(|e| internal(format!("bad service or method name: {e}")))?;
        let mut framed = Vec::with_capacity(5 + request.message.len());
        framed.push(0);
        framed.extend_from_slice(&(request.message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&request.message);
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if !request.timeout.is_zero() {
            builder = builder.header(
                "grpc-timeout",
                format!("{}m", request.timeout.as_millis().max(1)),
            );
        }
        for (k, v) in request.initial_metadata.iter() {
            builder = builder.header(k, v);
        }
        let req = builder
            .body(Full::new(Bytes::from(framed)))
            .map_err(|e| internal(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let mut initial = HeaderMap::new();
        for (k, v) in &parts.headers {
            initial.add(k.as_str(), v.as_bytes());
        }
        if parts.status != http::StatusCode::OK {
            return Err(unavailable(format!("HTTP status {}", parts.status)));
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        // A trailers-only answer carries grpc-status in the headers.
        let status_of = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        };
        let code = status_of(&trailers)
            .or_else(|| status_of(&parts.headers))
            .unwrap_or(GrpcStatus::INTERNAL);
        if code != 0 {
            let message = trailers
                .get("grpc-message")
                .or_else(|| parts.headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(GrpcStatus { code, message });
        }
        let mut data = collected.to_bytes();
        if data.remaining() < 5 {
            return Err(internal("response has no gRPC message".into()));
        }
        let compressed = data.get_u8();
        let len = data.get_u32() as usize;
        if compressed != 0 || data.remaining() < len {
            return Err(internal("malformed or compressed gRPC message".into()));
        }
        let message = data.slice(..len).to_vec();
        let mut trailing = HeaderMap::new();
        for (k, v) in &trailers {
            trailing.add(k.as_str(), v.as_bytes());
        }
        Ok(GrpcCallResponse {
            initial_metadata: initial,
            message,
            trailing_metadata: trailing,
        })
    }
}
