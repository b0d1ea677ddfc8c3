//! The response body on its way to the client, one implementation for every route:
//! read from the upstream frame by frame as the client reads it (no task, no channel),
//! through the filters' body and trailers callbacks when the route has filters (no
//! future unless a filter pauses on the body's end or on the trailers), counted, cut at the
//! service's size limit, at its read timeout between frames and at the request's
//! deadline, and logged when it ends, however it ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use portcullis_engine::{Flow, HeaderMap};

use super::stop::FILTER_TIMEOUT;
use super::watch::Watched;
use super::{Ctx, Filters};
use crate::upstream::BoxError;

/// A chunk back from the filters: them, the chunk as they left it, the trailers that
/// follow it, whether it ends the body, and their verdict.
type Filtered = (Filters, Vec<u8>, Option<http::HeaderMap>, bool, Flow);

/// What `poll_frame` answers.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

pub struct ResponseBody {
    /// The upstream body, under the watch that takes it away at the deadline from a
    /// client that stopped reading (and so stopped polling this).
    inner: Watched,
    /// Fires at the read timeout after the last frame, or at the deadline if sooner;
    /// while a filter holds a chunk, at the deadline.
    idle: Pin<Box<tokio::time::Sleep>>,
    /// `idle` is set to the deadline for a filter holding a chunk.
    idle_for_filters: bool,
    read_timeout: Duration,
    deadline: Instant,
    max: u64,
    received: u64,
    status: u16,
    /// The request's ending (its log and its filters' `on_log`); `None` once ended.
    end: Option<(Ctx, Option<Filters>)>,
    /// A chunk in the filters' hands.
    step: Option<Pin<Box<dyn Future<Output = Filtered>>>>,
    /// Frames ready for the client: data, then trailers.
    out: VecDeque<Frame<Bytes>>,
    /// The upstream body is over (ended, failed or cut): nothing more is read.
    done: bool,
}

impl ResponseBody {
    pub(super) fn new(
        inner: Incoming,
        ctx: Ctx,
        filters: Option<Filters>,
        status: u16,
        max: u64,
        read_timeout: Duration,
    ) -> ResponseBody {
        let deadline = ctx.deadline;
        ResponseBody {
            inner: Watched::new(inner, deadline),
            idle: Box::pin(tokio::time::sleep_until(next_wake(read_timeout, deadline))),
            idle_for_filters: false,
            read_timeout,
            deadline,
            max,
            received: 0,
            status,
            end: Some((ctx, filters)),
            step: None,
            out: VecDeque::new(),
            done: false,
        }
    }

    /// Ends the request once: the filters' `on_log`, the access log line, the metrics.
    fn end(&mut self, error: Option<String>) {
        if let Some((mut ctx, filters)) = self.end.take() {
            if error.is_some() {
                ctx.entry.error = error;
            }
            if let Some(f) = filters {
                f.finish();
            }
            ctx.finish(self.status);
        }
    }

    /// Cuts the body: the client sees the stream fail, the log says why.
    fn fail(&mut self, metric: Option<&'static str>, message: String) -> Polled {
        if let (Some(kind), Some((ctx, _))) = (metric, &self.end)
            && let Some(service) = ctx.entry.service.as_deref()
        {
            ctx.state.shared.metrics.upstream_error(service, kind);
        }
        self.done = true;
        self.out.clear();
        self.step = None;
        self.end(Some(message.clone()));
        Poll::Ready(Some(Err(message.into())))
    }

    fn has_filters(&self) -> bool {
        matches!(&self.end, Some((_, Some(_))))
    }

    /// Hands a chunk to the filters' response body callbacks. The verdict comes at
    /// once unless a filter pauses on the last chunk: only then does a future hold the
    /// filters until it lets go.
    fn filter(&mut self, mut chunk: Vec<u8>, eos: bool) -> Option<Polled> {
        let (_, slot) = self.end.as_mut()?;
        let filters = slot.as_mut()?;
        if let Some(verdict) = filters.stream.response_body_now(&mut chunk, eos) {
            return self.filtered(chunk, None, eos, verdict);
        }
        let mut filters = slot.take()?;
        // No timer of its own: a filter holding the chunk is bounded by `idle`, set to
        // the deadline then.
        self.step = Some(Box::pin(async move {
            let verdict = filters.stream.response_body_resume(&mut chunk).await;
            (filters, chunk, None, eos, verdict)
        }));
        None
    }

    /// Hands the upstream's trailers to the filters' trailers callbacks (Envoy's
    /// order: a filter holding body bytes for the end lets them go after its
    /// callback, and they go out before the trailers). Rare enough to take a future.
    fn filter_trailers(&mut self, trailers: http::HeaderMap) {
        let Some(mut filters) = self.end.as_mut().and_then(|(_, f)| f.take()) else {
            return;
        };
        self.step = Some(Box::pin(async move {
            let mut map = HeaderMap::from_http(&[], trailers);
            let mut released = Vec::new();
            let verdict = filters
                .stream
                .response_trailers(&mut map, &mut released)
                .await;
            // A trailer hyper cannot send is left out; none left, no trailers frame.
            let trailers = Some(map.take_fields()).filter(|t| !t.is_empty());
            (filters, released, trailers, true, verdict)
        }));
    }

    /// What the filters' verdict on a chunk sends the client; `Some` when it cuts the
    /// body.
    fn filtered(
        &mut self,
        chunk: Vec<u8>,
        trailers: Option<http::HeaderMap>,
        eos: bool,
        verdict: Flow,
    ) -> Option<Polled> {
        match verdict {
            // Headers are gone already: a reply now can only cut the body.
            Flow::Reply(_) => {
                Some(self.fail(None, "a filter replied after the response began".into()))
            }
            Flow::Buffering if !eos => None,
            _ => {
                self.emit(Bytes::from(chunk), trailers, eos);
                None
            }
        }
    }

    /// Queues what goes to the client.
    fn emit(&mut self, data: Bytes, trailers: Option<http::HeaderMap>, eos: bool) {
        if let Some((ctx, _)) = &mut self.end {
            ctx.entry.bytes_out += data.len() as u64;
        }
        if !data.is_empty() {
            self.out.push_back(Frame::data(data));
        }
        if let Some(t) = trailers {
            self.out.push_back(Frame::trailers(t));
        }
        if eos {
            // Logged as the last frames are handed over: a client that has them all
            // may not poll again.
            self.done = true;
            self.end(None);
        }
    }
}

/// Why a body the watch took away at the deadline fails.
const SLOW_CLIENT: &str = "the client read the response too slowly: cut at the request's deadline";

/// When to give up waiting for the next frame.
fn next_wake(read_timeout: Duration, deadline: Instant) -> tokio::time::Instant {
    (Instant::now() + read_timeout).min(deadline).into()
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                this.end(None);
                return Poll::Ready(None);
            }
            if let Some(step) = this.step.as_mut() {
                let Poll::Ready((filters, chunk, trailers, eos, verdict)) = step.as_mut().poll(cx)
                else {
                    if !this.idle_for_filters {
                        this.idle_for_filters = true;
                        this.idle.as_mut().reset(this.deadline.into());
                    }
                    // A filter holding the body past the deadline cuts it, as a timeout.
                    if this.idle.as_mut().poll(cx).is_ready() {
                        return this.fail(Some("timeout"), FILTER_TIMEOUT.into());
                    }
                    return Poll::Pending;
                };
                this.step = None;
                if std::mem::take(&mut this.idle_for_filters) {
                    let wake = next_wake(this.read_timeout, this.deadline);
                    this.idle.as_mut().reset(wake);
                }
                if let Some((_, slot)) = &mut this.end {
                    *slot = Some(filters);
                }
                if let Some(cut) = this.filtered(chunk, trailers, eos, verdict) {
                    return cut;
                }
                continue;
            }
            let polled = this
                .inner
                .body()
                .as_mut()
                .map(|b| Pin::new(b).poll_frame(cx));
            let Some(polled) = polled else {
                return this.fail(Some("timeout"), SLOW_CLIENT.into());
            };
            let frame = match polled {
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        return this
                            .fail(Some("timeout"), "upstream response body timed out".into());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => None,
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(None, format!("upstream response body failed: {e}"));
                }
                Poll::Ready(Some(Ok(frame))) => Some(frame),
            };
            let wake = next_wake(this.read_timeout, this.deadline);
            this.idle.as_mut().reset(wake);
            let (data, trailers, eos) = match frame {
                None => (Bytes::new(), None, true),
                Some(f) => match f.into_data() {
                    Ok(d) => {
                        let eos = this.inner.body().as_ref().is_none_or(Body::is_end_stream);
                        (d, None, eos)
                    }
                    Err(f) => (Bytes::new(), f.into_trailers().ok(), true),
                },
            };
            this.received += data.len() as u64;
            if this.received > this.max {
                return this.fail(
                    Some("response_too_large"),
                    "upstream response too large".into(),
                );
            }
            match (trailers, this.has_filters()) {
                // A trailers frame carries no data.
                (Some(t), true) => this.filter_trailers(t),
                (None, true) => {
                    // No copy when the chunk's bytes are its own.
                    if let Some(cut) = this.filter(Vec::from(data), eos) {
                        return cut;
                    }
                }
                (trailers, false) => this.emit(data, trailers, eos),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty() && self.step.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the body's length; without them it is the upstream's.
        if self.has_filters() || self.step.is_some() {
            SizeHint::default()
        } else {
            let body = self.inner.body();
            body.as_ref().map(Body::size_hint).unwrap_or_default()
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before its end (the client went away, even mid-step): the request
        // still ends and is logged.
        self.end(Some("client went away".into()));
    }
}
