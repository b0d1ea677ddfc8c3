//! The gRPC side: unary `ShouldRateLimit` on cleartext HTTP/2 (prior knowledge, as
//! Envoy's gRPC clusters and our gateway's `grpc_call` speak it). A call's body is
//! one length-prefixed message; the answer is one message and `grpc-status` in the
//! trailers, or a trailers-only error.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_rls::{METHOD, RateLimitRequest, SERVICE};
use prost::Message;
use tokio::net::TcpListener;

use crate::{Failure, Service};

/// The largest request message accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A unary answer: at most one data frame, then trailers.
#[derive(Debug)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

fn grpc_response() -> http::response::Builder {
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
}

/// A trailers-only answer with a status (the message percent-encoded as gRPC wants).
pub fn failure(f: &Failure) -> Response<GrpcBody> {
    let mut msg = String::with_capacity(f.message.len());
    for b in f.message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            msg.push(b as char);
        } else {
            msg.push_str(&format!("%{b:02X}"));
        }
    }
    grpc_response()
        .header("grpc-status", f.code.to_string())
        .header(
            "grpc-message",
            HeaderValue::from_str(&msg).unwrap_or(HeaderValue::from_static("error")),
        )
        .body(GrpcBody {
            data: None,
            trailers: None,
        })
        .unwrap_or_else(|_| {
            Response::new(GrpcBody {
                data: None,
                trailers: None,
            })
        })
}

fn ok(message: &impl Message) -> Response<GrpcBody> {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer of the right capacity cannot fail.
    let _ = message.encode(&mut buf);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    grpc_response()
        .body(GrpcBody {
            data: Some(buf.freeze()),
            trailers: Some(trailers),
        })
        .unwrap_or_else(|_| {
            Response::new(GrpcBody {
                data: None,
                trailers: None,
            })
        })
}

/// The request message from a call body: one uncompressed length-prefixed message.
pub fn decode_call(body: &[u8]) -> Result<RateLimitRequest, Failure> {
    let bad = |m: &str| Failure::new(Failure::INVALID_ARGUMENT, m);
    if body.len() < 5 {
        return Err(bad("the call body is shorter than a gRPC message prefix"));
    }
    if body[0] != 0 {
        return Err(Failure::new(
            Failure::UNIMPLEMENTED,
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len != body.len() - 5 {
        return Err(bad("the message length does not match the call body"));
    }
    RateLimitRequest::decode(&body[5..]).map_err(|e| bad(&format!("not a RateLimitRequest: {e}")))
}

async fn handle(service: Arc<Service>, req: Request<Incoming>) -> Response<GrpcBody> {
    let want = format!("/{SERVICE}/{METHOD}");
    if req.uri().path() != want {
        return failure(&Failure::new(
            Failure::UNIMPLEMENTED,
            format!("no method {}", req.uri().path()),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_MESSAGE + 5)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let code = if e.is::<http_body_util::LengthLimitError>() {
                Failure::RESOURCE_EXHAUSTED
            } else {
                Failure::INVALID_ARGUMENT
            };
            return failure(&Failure::new(code, format!("reading the call: {e}")));
        }
    };
    let call = match decode_call(&body) {
        Ok(c) => c,
        Err(f) => return failure(&f),
    };
    match service.should_rate_limit(&call).await {
        Ok(answer) => ok(&answer),
        Err(f) => failure(&f),
    }
}

/// Serves calls on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, service: Arc<Service>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(handle(service, req).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_bodies_must_be_one_whole_uncompressed_message() {
        let msg = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![],
            hits_addend: 1,
        }
        .encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        assert_eq!(decode_call(&body).unwrap().domain, "d");
        assert_eq!(
            decode_call(&body[..3]).unwrap_err().code,
            Failure::INVALID_ARGUMENT
        );
        assert_eq!(
            decode_call(&body[..body.len() - 1]).unwrap_err().code,
            Failure::INVALID_ARGUMENT
        );
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(
            decode_call(&compressed).unwrap_err().code,
            Failure::UNIMPLEMENTED
        );
        let mut garbage = vec![0, 0, 0, 0, 3];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            decode_call(&garbage).unwrap_err().code,
            Failure::INVALID_ARGUMENT
        );
    }
}
