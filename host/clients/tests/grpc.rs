//! `grpc_call` over real h2c connections to a loopback gRPC server.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_clients::GrpcCluster;
use portcullis_engine::{GrpcCallRequest, GrpcStatus, HeaderMap};

type Body =
    StreamBody<futures_lite::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A gRPC server: `/svc.S/Echo` answers the request message reversed; `/svc.S/Fail`
/// answers status 8 (RESOURCE_EXHAUSTED); `/svc.S/Slow` answers after 2 s.
async fn server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let timeout = req
                            .headers()
                            .get("grpc-timeout")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let msg = &body[5..];
                        let mut trailers = http::HeaderMap::new();
                        let mut frames = Vec::new();
                        match path.as_str() {
                            "/svc.S/Echo" => {
                                let mut out = msg.to_vec();
                                out.reverse();
                                let mut framed = vec![0u8];
                                framed.extend_from_slice(&(out.len() as u32).to_be_bytes());
                                framed.extend_from_slice(&out);
                                frames.push(Ok(Frame::data(Bytes::from(framed))));
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                trailers.insert(
                                    "x-timeout-seen",
                                    timeout.unwrap_or_default().parse().unwrap(),
                                );
                            }
                            "/svc.S/Slow" => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                trailers.insert("grpc-status", "0".parse().unwrap());
                            }
                            _ => {
                                trailers.insert("grpc-status", "8".parse().unwrap());
                                trailers.insert("grpc-message", "over quota".parse().unwrap());
                            }
                        }
                        frames.push(Ok(Frame::trailers(trailers)));
                        let body: Body = StreamBody::new(futures_lite::stream::iter(frames));
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn call(method: &str, message: &[u8], timeout: Duration) -> GrpcCallRequest {
    GrpcCallRequest {
        service: "svc.S".into(),
        method: method.into(),
        initial_metadata: HeaderMap::new(),
        message: message.to_vec(),
        timeout,
    }
}

#[tokio::test]
async fn unary_call_status_and_deadline() {
    let addr = server().await;
    let c = GrpcCluster::new(&format!("http://{addr}"), Duration::from_secs(1)).unwrap();
    let ok = c
        .call(call("Echo", b"abc", Duration::from_millis(1500)))
        .await
        .unwrap();
    assert_eq!(ok.message, b"cba");
    assert_eq!(
        ok.trailing_metadata.get_str("x-timeout-seen"),
        Some("1500m"),
        "the deadline travels as grpc-timeout"
    );
    let err = c
        .call(call("Fail", b"", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GrpcStatus {
            code: 8,
            message: "over quota".into()
        }
    );
    let slow = c
        .call(call("Slow", b"", Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(slow.code, GrpcStatus::DEADLINE_EXCEEDED);
    let refused = GrpcCluster::new("http://127.0.0.1:1", Duration::from_millis(200)).unwrap();
    assert_eq!(
        refused
            .call(call("Echo", b"", Duration::from_secs(1)))
            .await
            .unwrap_err()
            .code,
        GrpcStatus::UNAVAILABLE
    );
}
