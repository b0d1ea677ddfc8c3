//! `grpc_call` over a real HTTP/2 connection (cleartext h2c) to one cluster: unary
//! calls with the length-prefixed gRPC framing, `grpc-timeout` deadlines, and status
//! codes from the trailers.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_engine::{GrpcCallRequest, GrpcCallResponse, GrpcStatus, HeaderMap, LocalFuture};

#[derive(Clone, Debug)]
pub struct GrpcCluster {
    authority: http::uri::Authority,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The largest answer body taken (as [`crate::HttpCluster::max_body`]); past it
    /// the call fails with RESOURCE_EXHAUSTED, as gRPC's own size limit does.
    max_body: usize,
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
        Ok(GrpcCluster {
            authority,
            client,
            max_body: 16 << 20,
        })
    }

    /// Fails a call whose answer is longer than `bytes`.
    pub fn max_body(mut self, bytes: u64) -> GrpcCluster {
        self.max_body = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
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
        let collected = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
                true => GrpcStatus {
                    code: GrpcStatus::RESOURCE_EXHAUSTED,
                    message: format!("an answer past {} bytes", self.max_body),
                },
                false => unavailable(e.to_string()),
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An h2c server on loopback answering every call with a gRPC message of `len`
    /// bytes.
    async fn answering(len: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |_req| async move {
                    let mut framed = vec![0u8];
                    framed.extend_from_slice(&(len as u32).to_be_bytes());
                    framed.resize(5 + len, b'm');
                    let body = http_body_util::StreamBody::new(futures_lite::stream::iter([
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(
                            framed,
                        ))),
                        Ok(hyper::body::Frame::trailers(
                            [(
                                http::HeaderName::from_static("grpc-status"),
                                http::HeaderValue::from_static("0"),
                            )]
                            .into_iter()
                            .collect(),
                        )),
                    ]));
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service),
                );
            }
        });
        addr
    }

    fn call() -> GrpcCallRequest {
        GrpcCallRequest {
            service: "test.Svc".into(),
            method: "Get".into(),
            initial_metadata: HeaderMap::new(),
            message: b"q".to_vec(),
            timeout: Duration::from_secs(5),
        }
    }

    /// An answer past the cluster's limit fails the call instead of being held whole.
    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_past_the_limit_fails_the_call() {
        let addr = answering(2 << 20).await;
        let url = format!("http://{addr}");
        let small = GrpcCluster::new(&url, Duration::from_secs(1))
            .unwrap()
            .max_body(1 << 20);
        let err = small.call(call()).await.unwrap_err();
        assert_eq!(err.code, GrpcStatus::RESOURCE_EXHAUSTED, "{}", err.message);
        let large = GrpcCluster::new(&url, Duration::from_secs(1)).unwrap();
        let ok = large.call(call()).await.unwrap();
        assert_eq!(ok.message.len(), 2 << 20);
    }
}
