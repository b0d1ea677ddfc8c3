//! The response body on its way to the client when no filter needs it: streamed as is,
//! counted, cut at the service's size limit and read timeout, and logged when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::upstream::BoxError;

/// Called once with the bytes sent and, when the body did not end well, why.
pub type OnEnd = Box<dyn FnOnce(u64, Option<String>)>;

pub struct Tracked {
    inner: Incoming,
    sent: u64,
    limit: u64,
    read_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    on_end: Option<OnEnd>,
}

impl Tracked {
    pub fn new(inner: Incoming, limit: u64, read_timeout: Duration, on_end: OnEnd) -> Tracked {
        Tracked {
            inner,
            sent: 0,
            limit,
            read_timeout,
            idle: Box::pin(tokio::time::sleep(read_timeout)),
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, error: Option<String>) {
        if let Some(f) = self.on_end.take() {
            f(self.sent, error);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    this.end(Some("upstream response body timed out".into()));
                    return Poll::Ready(Some(Err("upstream response body timed out".into())));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Some(format!("upstream response body failed: {e}")));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                    if this.sent > this.limit {
                        this.end(Some("upstream response too large".into()));
                        return Poll::Ready(Some(Err("upstream response too large".into())));
                    }
                }
                let deadline = tokio::time::Instant::now() + this.read_timeout;
                this.idle.as_mut().reset(deadline);
                if this.inner.is_end_stream() {
                    this.end(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Dropped before the end: the client went away.
        self.end(Some("client went away".into()));
    }
}

use std::future::Future;
