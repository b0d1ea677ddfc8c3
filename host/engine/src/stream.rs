//! One request through a chain of filters, phase by phase, as Envoy's filter manager
//! runs it: request callbacks in chain order, response callbacks in reverse order, a
//! paused filter holding its phase until it continues or replies, and `on_log`,
//! `on_done`, `on_delete` at the end.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::abi::Action;
use crate::filter::{Filter, Health};
use crate::headers::HeaderMap;
use crate::state::Phase;
use crate::types::{FailurePolicy, LocalReply, RequestInfo};
use crate::vm::{Fault, Vm};

/// What the embedder does after a phase.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on: send what the filters left in the headers or body.
    Continue,
    /// A filter is buffering this body and did not pass anything on yet; after
    /// `request_headers`, a filter that waits for the body holds the headers (see
    /// [`HttpStream::request_body_held`]).
    Buffering,
    /// Answer the client with this instead.
    Reply(LocalReply),
}

/// A filter's live context for this request.
#[derive(Clone, Copy)]
struct Live {
    /// The context id in the filter's VM.
    id: u32,
    /// The VM generation the context was created in: a reloaded VM no longer has it.
    generation: u64,
}

struct Slot {
    filter: Filter,
    /// `None` when the filter is skipped (failed open) for this request.
    ctx: Option<Live>,
    /// Body bytes this filter is holding (it paused on a chunk before the end).
    held: Vec<u8>,
}

pub struct HttpStream {
    slots: Vec<Slot>,
    info: Arc<RequestInfo>,
    /// The request's filter state, shared by its filters.
    properties: crate::state::StreamProperties,
    /// A filter that failed closed before the request began: its 503.
    failed_at_start: Option<LocalReply>,
    finished: bool,
    replied: bool,
    /// How large a filter may make the request and the response body it rewrites
    /// (`None`: the engine's `body_bytes`).
    body_limits: Option<(usize, usize)>,
    /// The filter holding the request headers while it reads the body (it paused in
    /// `on_request_headers` with `allow_on_headers_stop_iteration`), and the headers
    /// as they were before it, for a holder that fails open.
    headers_held: Option<(usize, Option<Before<HeaderMap>>)>,
    /// A response chunk waiting for the filter that paused on it
    /// ([`HttpStream::response_body_now`]).
    body_waiting: Option<BodyWait>,
    /// Headers waiting for the filter that paused on them
    /// ([`HttpStream::request_headers_now`], [`HttpStream::response_headers_now`]).
    headers_waiting: Option<HeadersWait>,
}

/// The reply for a request that met a failed filter.
fn failure_reply(filter: &str, request_id: &str) -> LocalReply {
    LocalReply::json(
        503,
        "wasm_fail_stream",
        &format!("filter {filter} is unavailable"),
        request_id,
    )
}

impl HttpStream {
    /// Creates the request's context in every filter of the chain.
    pub fn new(chain: &[Filter], info: RequestInfo) -> HttpStream {
        let info = Arc::new(info);
        let properties = crate::state::StreamProperties::default();
        let mut failed_at_start = None;
        let mut slots = Vec::with_capacity(chain.len());
        for filter in chain {
            filter.reload_if_failed();
            let root = filter.root_context_id();
            let ctx = match filter
                .with_vm(|vm| vm.create_http_context(root, info.clone(), properties.clone()))
            {
                Some(Ok(id)) => Some(Live {
                    id,
                    generation: filter.generation(),
                }),
                _ => {
                    if filter.policy() != FailurePolicy::FailOpen && failed_at_start.is_none() {
                        failed_at_start = Some(failure_reply(filter.name(), &info.id));
                    }
                    None
                }
            };
            slots.push(Slot {
                filter: filter.clone(),
                ctx,
                held: Vec::new(),
            });
        }
        HttpStream {
            slots,
            info,
            properties,
            failed_at_start,
            finished: false,
            replied: false,
            body_limits: None,
            headers_held: None,
            body_waiting: None,
            headers_waiting: None,
        }
    }

    /// Bounds the request and response bodies filters rewrite with
    /// `set_buffer_bytes` (the gateway: what the service accepts from the client and
    /// from the upstream). Without it the engine's `body_bytes` bounds both.
    pub fn with_body_limits(mut self, request: u64, response: u64) -> HttpStream {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        self.body_limits = Some((size(request), size(response)));
        self
    }

    pub fn info(&self) -> &RequestInfo {
        &self.info
    }

    /// Runs `on_request_headers` through the chain. The headers are the filters' to
    /// change; on `Continue` they are what goes upstream. `Buffering`: a filter that
    /// may hold the headers while it reads the body (`allow_on_headers_stop_iteration`,
    /// as Envoy's StopIteration) paused on them; feed the body with
    /// [`HttpStream::request_body_held`] until it answers `Continue`.
    pub async fn request_headers(&mut self, headers: &mut HeaderMap, end_of_stream: bool) -> Flow {
        let now = self.request_headers_now(headers, end_of_stream);
        self.headers_settled(now, headers).await
    }

    /// A header phase's verdict: the one its `_now` step gave, or, when a filter
    /// paused, the one after it resumed and the rest of the chain ran.
    async fn headers_settled(&mut self, now: Option<Flow>, headers: &mut HeaderMap) -> Flow {
        match now {
            Some(flow) => flow,
            None => self.headers_resume(headers).await,
        }
    }

    /// [`HttpStream::request_headers`] without a future, for the usual case where no
    /// filter makes the headers wait: the verdict at once. `None`: a filter paused on
    /// them and has them in its hands; [`HttpStream::headers_resume`] waits for it and
    /// runs the rest of the chain, and must come next.
    pub fn request_headers_now(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Option<Flow> {
        if let Some(reply) = self.failed_at_start.take() {
            let flow = self.reply(reply);
            return Some(self.outcome(flow));
        }
        self.headers_now(Phase::Request, headers, end_of_stream, None)
    }

    /// Finishes the headers [`HttpStream::request_headers_now`] or
    /// [`HttpStream::response_headers_now`] left waiting: waits for the filter that
    /// paused on them, then runs the filters after it.
    pub async fn headers_resume(&mut self, headers: &mut HeaderMap) -> Flow {
        let flow = match self.headers_waiting.take() {
            Some(wait) => self.headers_finish(wait, headers).await,
            None => Flow::Continue,
        };
        self.outcome(flow)
    }

    fn headers_now(
        &mut self,
        phase: Phase,
        headers: &mut HeaderMap,
        eos: bool,
        code: Option<u16>,
    ) -> Option<Flow> {
        match self.headers_walk(phase, 0, headers, eos, code) {
            Ok(flow) => Some(self.outcome(flow)),
            Err(wait) => {
                self.headers_waiting = Some(wait);
                None
            }
        }
    }

    /// The headers through the steps `from..` of `phase`'s walk without waiting: the
    /// verdict, or where a filter that paused on them must be waited for (they are then
    /// in its hands). A filter that may hold the request headers for the body and
    /// pauses holds them (`Buffering`).
    fn headers_walk(
        &mut self,
        phase: Phase,
        from: usize,
        headers: &mut HeaderMap,
        eos: bool,
        code: Option<u16>,
    ) -> Result<Flow, HeadersWait> {
        let field = headers_of(phase);
        for k in from..self.slots.len() {
            let i = self.walk_index(phase, k);
            if self.ctx_of(i).is_none() {
                continue;
            }
            let n = headers.len() as u32;
            let before = self.before(i, headers);
            let map = std::mem::take(headers);
            let may_hold =
                phase == Phase::Request && !eos && self.slots[i].filter.holds_headers_for_body();
            let now = self.call_now(
                i,
                phase,
                |c| {
                    if phase == Phase::Response {
                        c.response_code = code;
                    }
                    *field(c) = Some(map);
                },
                |vm, id| match phase {
                    Phase::Request => vm.on_request_headers(id, n, eos),
                    _ => vm.on_response_headers(id, n, eos),
                },
                |c| field(c).take(),
                may_hold,
            );
            let Ok((settled, back)) = now else {
                return Err(HeadersWait {
                    phase,
                    k,
                    eos,
                    code,
                    before,
                });
            };
            if let Settled::Held = settled {
                // The holder keeps the map: it may change the headers from its body
                // callbacks and call answers until it lets them go.
                self.headers_held = Some((i, before));
                return Ok(Flow::Buffering);
            }
            *headers = match back.unwrap_or_else(|| self.in_ctx(i, |c| field(c).take())) {
                Some(h) => h,
                None => self.restore(before),
            };
            if let Settled::Stop(flow) = settled {
                return Ok(flow);
            }
        }
        Ok(Flow::Continue)
    }

    /// Waits for the filter a header walk stopped at, then walks the rest of the chain
    /// (and waits again for any later filter that pauses).
    async fn headers_finish(&mut self, mut wait: HeadersWait, headers: &mut HeaderMap) -> Flow {
        let field = headers_of(wait.phase);
        loop {
            let i = self.walk_index(wait.phase, wait.k);
            let settled = self.wait_out(i, wait.phase).await;
            *headers = match self.in_ctx(i, |c| field(c).take()) {
                Some(h) => h,
                None => self.restore(wait.before.take()),
            };
            if let Settled::Stop(flow) = settled {
                return flow;
            }
            match self.headers_walk(wait.phase, wait.k + 1, headers, wait.eos, wait.code) {
                Ok(flow) => return flow,
                Err(next) => wait = next,
            }
        }
    }

    /// One chunk of the request body while a filter holds the headers (after
    /// `request_headers` answered `Buffering`): the chunk goes through the filters up
    /// to the holder; once the holder lets it go (its body callback continues, or it
    /// resumes), the headers go through the rest of the chain and then the body.
    /// `Continue`: the headers are final and `chunk` is what goes upstream first;
    /// `Buffering`: still held, give the next chunk. An empty chunk before the end
    /// only checks whether the holder resumed meanwhile (see
    /// [`HttpStream::held_signal`]). Without a holder it is [`HttpStream::request_body`].
    pub async fn request_body_held(
        &mut self,
        headers: &mut HeaderMap,
        chunk: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Flow {
        let flow = self
            .request_body_held_inner(headers, chunk, end_of_stream)
            .await;
        self.outcome(flow)
    }

    async fn request_body_held_inner(
        &mut self,
        headers: &mut HeaderMap,
        chunk: &mut Vec<u8>,
        eos: bool,
    ) -> Flow {
        let mut from = 0;
        while let Some(h) = self.headers_held.as_ref().map(|(h, _)| *h) {
            let flow = if chunk.is_empty() && !eos && from > 0 {
                // Nothing to hand the next holder yet.
                return Flow::Buffering;
            } else if chunk.is_empty() && !eos {
                // A wake-up, not data: the holder's body callback is not called again.
                match self.resumed_while_held(h) {
                    Some(Settled::Continue) => {
                        *chunk = std::mem::take(&mut self.slots[h].held);
                        Flow::Continue
                    }
                    Some(Settled::Stop(flow)) => return flow,
                    _ => return Flow::Buffering,
                }
            } else {
                self.body_through(Phase::Request, from, h + 1, chunk, eos)
                    .await
            };
            if flow != Flow::Continue {
                return flow;
            }
            // The holder let go: its headers go on to the rest of the chain (whose
            // body follows).
            match self.let_headers_go(h, headers).await {
                Ok(next) => from = next,
                Err(reply) => return reply,
            }
        }
        if chunk.is_empty() && !eos {
            return Flow::Continue;
        }
        let n = self.slots.len();
        self.body_through(Phase::Request, from, n, chunk, eos).await
    }

    /// The filter `h` holding the headers let them go: they go through the rest of the
    /// chain, which may hold them again further on. `Ok`: where the rest of the
    /// request's walk starts; `Err`: a reply.
    async fn let_headers_go(&mut self, h: usize, headers: &mut HeaderMap) -> Result<usize, Flow> {
        let before = self.headers_held.take().and_then(|(_, b)| b);
        *headers = match self.in_ctx(h, |c| c.request_headers.take()) {
            Some(map) => map,
            None => self.restore(before),
        };
        let flow = match self.headers_walk(Phase::Request, h + 1, headers, false, None) {
            Ok(flow) => flow,
            Err(wait) => self.headers_finish(wait, headers).await,
        };
        match flow {
            Flow::Continue | Flow::Buffering => Ok(h + 1),
            reply => Err(reply),
        }
    }

    /// The signal the filter holding the headers is woken by when it resumes or
    /// replies (`None` when no filter holds them): an embedder waiting for the next
    /// body chunk waits on it too, then calls [`HttpStream::request_body_held`] with
    /// an empty chunk, so a filter that resumes after a call does not wait for the
    /// client's next bytes.
    pub fn held_signal(&self) -> Option<Arc<Notify>> {
        let h = self.headers_held.as_ref()?.0;
        Some(self.signal_of(h).unwrap_or_else(|| {
            // The holder's VM is gone: wake the waiter at once, to find that out.
            let now = Arc::new(Notify::new());
            now.notify_one();
            now
        }))
    }

    /// Whether the filter holding the headers resumed or replied since its last
    /// callback (`None`: it still holds them).
    fn resumed_while_held(&mut self, h: usize) -> Option<Settled> {
        if self.ctx_of(h).is_none() {
            return Some(self.failed(h));
        }
        match self.since_callback(h, Phase::Request) {
            Err(settled) => Some(settled),
            Ok(resumed) => resumed.then_some(Settled::Continue),
        }
    }

    /// What filter `i` did since its callback returned: replied, closed the stream or
    /// failed (`Err`, what that means for the request), or whether it resumed `phase`.
    fn since_callback(&mut self, i: usize, phase: Phase) -> Result<bool, Settled> {
        let seen = self.in_ctx(i, |c| {
            Some((c.local_reply.take(), c.take_resumed(phase), c.close))
        });
        let Some((reply, resumed, closed)) = seen else {
            return Err(self.failed(i));
        };
        if let Some(reply) = reply {
            return Err(Settled::Stop(self.reply(reply)));
        }
        if closed {
            return Err(Settled::Stop(self.reply(reset_reply(&self.info.id))));
        }
        Ok(resumed)
    }

    /// Runs `on_request_body` through the chain with one chunk. A filter that pauses
    /// before the end holds the bytes (`Flow::Buffering`); at the end it must resume.
    /// Once the headers went on (`request_headers` answered `Continue`).
    pub async fn request_body(&mut self, chunk: &mut Vec<u8>, end_of_stream: bool) -> Flow {
        let n = self.slots.len();
        let flow = self
            .body_through(Phase::Request, 0, n, chunk, end_of_stream)
            .await;
        self.outcome(flow)
    }

    /// Runs `on_request_trailers` through the chain; the trailers are the filters' to
    /// change. Body bytes a filter held (it paused on a chunk, waiting for an end the
    /// trailers bring instead) go on once its trailers callback lets the request go:
    /// through the filters after it, and out in `body`, which the embedder sends
    /// before the trailers (as Envoy passes a filter's buffered body on before its
    /// trailers).
    pub async fn request_trailers(&mut self, trailers: &mut HeaderMap, body: &mut Vec<u8>) -> Flow {
        let flow = self.trailers_through(Phase::Request, trailers, body).await;
        self.outcome(flow)
    }

    /// The request's trailers while a filter holds the headers (after
    /// `request_headers` answered `Buffering`), as Envoy gives them: through the
    /// filters up to the holder, whose trailers callback may let the headers go (or
    /// reply); the headers then go through the rest of the chain, the body bytes held
    /// so far after them, and the trailers last. A later filter may hold the headers
    /// again, and the same follows for it. `Continue`: the headers are final, and
    /// `body` is what goes upstream before the trailers. Without a holder it is
    /// [`HttpStream::request_trailers`].
    pub async fn request_trailers_held(
        &mut self,
        headers: &mut HeaderMap,
        trailers: &mut HeaderMap,
        body: &mut Vec<u8>,
    ) -> Flow {
        let flow = self
            .request_trailers_held_inner(headers, trailers, body)
            .await;
        self.outcome(flow)
    }

    async fn request_trailers_held_inner(
        &mut self,
        headers: &mut HeaderMap,
        trailers: &mut HeaderMap,
        body: &mut Vec<u8>,
    ) -> Flow {
        let n = self.slots.len();
        let mut from = 0;
        loop {
            // Up to the filter holding the headers, or to the end of the chain.
            let holder = self.headers_held.as_ref().map(|(h, _)| *h);
            let to = holder.map_or(n, |h| h + 1);
            // What came out of the filters before goes through these first.
            if from > 0 && !body.is_empty() {
                match self
                    .body_through(Phase::Request, from, to, body, false)
                    .await
                {
                    Flow::Continue | Flow::Buffering => {}
                    reply => return reply,
                }
            }
            match self
                .trailers_range(Phase::Request, from, to, trailers, body)
                .await
            {
                Flow::Continue => {}
                reply => return reply,
            }
            let Some(h) = holder else {
                return Flow::Continue;
            };
            // The holder's trailers callback let the request go: its headers go on.
            match self.let_headers_go(h, headers).await {
                Ok(next) => from = next,
                Err(reply) => return reply,
            }
        }
    }

    /// Runs `on_response_trailers` through the chain in reverse order; as
    /// [`HttpStream::request_trailers`], held body bytes come out in `body`.
    pub async fn response_trailers(
        &mut self,
        trailers: &mut HeaderMap,
        body: &mut Vec<u8>,
    ) -> Flow {
        let flow = self.trailers_through(Phase::Response, trailers, body).await;
        self.outcome(flow)
    }

    async fn trailers_through(
        &mut self,
        phase: Phase,
        trailers: &mut HeaderMap,
        body: &mut Vec<u8>,
    ) -> Flow {
        if phase == Phase::Request && self.headers_held.is_some() {
            // The embedder gives these to `request_trailers_held`: here they would
            // reach filters that never saw the headers.
            return self.reply(LocalReply::json(
                500,
                "trailers_while_headers_held",
                "request trailers came while a filter held the headers",
                &self.info.id,
            ));
        }
        let n = self.slots.len();
        self.trailers_range(phase, 0, n, trailers, body).await
    }

    /// The trailers through the `from..to` steps of `phase`'s walk; body bytes a
    /// filter held go on through the steps after it, up to `to`, and out in `body`.
    async fn trailers_range(
        &mut self,
        phase: Phase,
        from: usize,
        to: usize,
        trailers: &mut HeaderMap,
        body: &mut Vec<u8>,
    ) -> Flow {
        let limit = self.body_limit(phase);
        for k in from..to {
            let i = self.walk_index(phase, k);
            // The body this filter held for an end the trailers bring instead: its
            // trailers callback may read and change it, as Envoy hands a filter its
            // buffered body there.
            let mut held = std::mem::take(&mut self.slots[i].held);
            if self.ctx_of(i).is_some() {
                let count = trailers.len() as u32;
                let data = (std::mem::take(trailers), held);
                let before = self.before(i, &data);
                let (map, body_held) = data;
                let (field, callback) = trailers_of(phase);
                let now = self.call_now(
                    i,
                    phase,
                    |c| {
                        *field(c) = Some(map);
                        c.body = Some(body_held);
                        c.body_limit = limit;
                    },
                    |vm, id| callback(vm, id, count),
                    |c| Some((field(c).take(), c.body.take())),
                    false,
                );
                let (outcome, back) = self.waited(i, phase, now).await;
                let back = back
                    .unwrap_or_else(|| self.in_ctx(i, |c| Some((field(c).take(), c.body.take()))));
                (*trailers, held) = match back {
                    Some((Some(t), b)) => (t, b.unwrap_or_default()),
                    // The filter failed: as they were before it if it fails open.
                    _ => self.restore(before),
                };
                if let Settled::Stop(flow) = outcome {
                    return flow;
                }
            }
            // What this filter held goes on now (also when its VM failed open).
            if held.is_empty() {
                continue;
            }
            match self.body_through(phase, k + 1, to, &mut held, false).await {
                Flow::Continue => body.append(&mut held),
                // A later filter holds it now, until the trailers reach it.
                Flow::Buffering => {}
                reply => return reply,
            }
        }
        Flow::Continue
    }

    /// How large filters may make a body of `phase` (`None`: the engine's `body_bytes`).
    fn body_limit(&self, phase: Phase) -> Option<usize> {
        self.body_limits.map(|(request, response)| match phase {
            Phase::Request => request,
            _ => response,
        })
    }

    /// Runs `on_response_headers` through the chain in reverse order.
    pub async fn response_headers(&mut self, headers: &mut HeaderMap, end_of_stream: bool) -> Flow {
        let now = self.response_headers_now(headers, end_of_stream);
        self.headers_settled(now, headers).await
    }

    /// [`HttpStream::response_headers`] without a future, as
    /// [`HttpStream::request_headers_now`]: `None` when a filter paused on them;
    /// [`HttpStream::headers_resume`] must come next.
    pub fn response_headers_now(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Option<Flow> {
        let code = headers.get_str(":status").and_then(|s| s.parse().ok());
        self.headers_now(Phase::Response, headers, end_of_stream, code)
    }

    /// Runs `on_response_body` through the chain in reverse order with one chunk.
    pub async fn response_body(&mut self, chunk: &mut Vec<u8>, end_of_stream: bool) -> Flow {
        match self.response_body_now(chunk, end_of_stream) {
            Some(flow) => flow,
            None => self.response_body_resume(chunk).await,
        }
    }

    /// [`HttpStream::response_body`] without a future, for the usual case where no
    /// filter makes the chunk wait: the verdict at once. `None`: a filter paused on the
    /// last chunk and has it in its hands; [`HttpStream::response_body_resume`] waits
    /// for it and runs the rest of the chain, and must come next.
    pub fn response_body_now(&mut self, chunk: &mut Vec<u8>, end_of_stream: bool) -> Option<Flow> {
        let n = self.slots.len();
        match self.body_walk(Phase::Response, 0, n, chunk, end_of_stream) {
            Ok(flow) => Some(self.outcome(flow)),
            Err(wait) => {
                self.body_waiting = Some(wait);
                None
            }
        }
    }

    /// Finishes a chunk [`HttpStream::response_body_now`] left waiting: waits for the
    /// filter that paused on it, then runs the filters after it.
    pub async fn response_body_resume(&mut self, chunk: &mut Vec<u8>) -> Flow {
        let flow = match self.body_waiting.take() {
            Some(wait) => self.body_finish(Phase::Response, wait, chunk).await,
            None => Flow::Continue,
        };
        self.outcome(flow)
    }

    /// Sends a local reply back through every filter's response callbacks (Envoy runs
    /// a local reply through the encoder filters, the sender included), and returns
    /// the headers and body the client gets.
    pub async fn encode_local_reply(&mut self, reply: LocalReply) -> (HeaderMap, Vec<u8>) {
        let mut headers = reply.response_headers();
        let mut body = reply.body;
        let eos = body.is_empty();
        // A filter replying again here is ignored: the first reply stands.
        let _ = self.response_headers(&mut headers, eos).await;
        if !eos {
            let _ = self.response_body(&mut body, true).await;
        }
        headers.set("content-length", body.len().to_string());
        (headers, body)
    }

    /// One chunk through filters `from..to` (request bodies in chain order, response
    /// bodies in reverse: `from..to` counts from the chain's end for them).
    async fn body_through(
        &mut self,
        phase: Phase,
        from: usize,
        to: usize,
        chunk: &mut Vec<u8>,
        eos: bool,
    ) -> Flow {
        match self.body_walk(phase, from, to, chunk, eos) {
            Ok(flow) => flow,
            Err(wait) => self.body_finish(phase, wait, chunk).await,
        }
    }

    /// Waits for the filter a walk stopped at, then walks the rest of the chain (and
    /// waits again for any later filter that pauses).
    async fn body_finish(&mut self, phase: Phase, wait: BodyWait, chunk: &mut Vec<u8>) -> Flow {
        let mut wait = wait;
        loop {
            let i = self.walk_index(phase, wait.k);
            let settled = self.wait_out(i, phase).await;
            if let Some(flow) = self.body_settled(i, settled, None, wait.before, chunk) {
                return flow;
            }
            match self.body_walk(phase, wait.k + 1, wait.to, chunk, wait.eos) {
                Ok(flow) => return flow,
                Err(next) => wait = next,
            }
        }
    }

    /// Filter index of the `k`-th step of a walk in `phase`'s order.
    fn walk_index(&self, phase: Phase, k: usize) -> usize {
        if phase == Phase::Request {
            k
        } else {
            self.slots.len() - 1 - k
        }
    }

    /// One chunk through filters `from..to` without waiting: the verdict, or where a
    /// filter that paused on the last chunk must be waited for (the chunk is then in
    /// its hands).
    fn body_walk(
        &mut self,
        phase: Phase,
        from: usize,
        to: usize,
        chunk: &mut Vec<u8>,
        eos: bool,
    ) -> Result<Flow, BodyWait> {
        let limit = self.body_limit(phase);
        for k in from..to {
            let i = self.walk_index(phase, k);
            if self.ctx_of(i).is_none() {
                // A filter whose VM failed under it (failing open) no longer holds
                // anything: what it held goes on first, in order.
                let mut held = std::mem::take(&mut self.slots[i].held);
                if !held.is_empty() {
                    held.append(chunk);
                    *chunk = held;
                }
                continue;
            }
            // The chunk itself when the filter holds nothing (no copy), else appended to
            // what it holds.
            let mut buf = std::mem::take(&mut self.slots[i].held);
            if buf.is_empty() {
                buf = std::mem::take(chunk);
            } else {
                buf.append(chunk);
            }
            let before = self.before(i, &buf);
            let size = buf.len() as u32;
            let place = |c: &mut crate::state::HttpCtx| {
                c.body = Some(buf);
                c.body_limit = limit;
            };
            let call = move |vm: &mut Vm, id| match phase {
                Phase::Request => vm.on_request_body(id, size, eos),
                _ => vm.on_response_body(id, size, eos),
            };
            match self.call_now(i, phase, place, call, |c| c.body.take(), !eos) {
                Ok((settled, back)) => {
                    if let Some(flow) = self.body_settled(i, settled, back, before, chunk) {
                        return Ok(flow);
                    }
                }
                Err(Waits) => {
                    return Err(BodyWait { k, to, eos, before });
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// What filter `i`'s settled body callback leaves: the chunk passed on (`None`),
    /// held, or the phase's end.
    fn body_settled(
        &mut self,
        i: usize,
        settled: Settled,
        back: Option<Option<Vec<u8>>>,
        before: Option<Before<Vec<u8>>>,
        chunk: &mut Vec<u8>,
    ) -> Option<Flow> {
        let buf = match back.unwrap_or_else(|| self.in_ctx(i, |c| c.body.take())) {
            Some(b) => b,
            None => self.restore(before),
        };
        match settled {
            Settled::Continue => {
                *chunk = buf;
                None
            }
            Settled::Held => {
                self.slots[i].held = buf;
                Some(Flow::Buffering)
            }
            Settled::Stop(flow) => Some(flow),
        }
    }

    /// What [`HttpStream::call_now`] settled, or, when the filter paused a phase it
    /// may not hold, what waiting for it settles (the data then still to be taken).
    async fn waited<T>(
        &mut self,
        i: usize,
        phase: Phase,
        now: Result<(Settled, Option<Option<T>>), Waits>,
    ) -> (Settled, Option<Option<T>>) {
        match now {
            Ok(done) => done,
            Err(Waits) => (self.wait_out(i, phase).await, None),
        }
    }

    /// Places data in filter `i`'s context and runs its callback; a pause comes back
    /// as `Held` when `may_hold`, else as `Err(Waits)`: the filter must be waited for
    /// ([`HttpStream::waited`]). The usual case, a callback that continues at once
    /// without replying or closing the stream, is settled in the same visit to the VM,
    /// which then also hands back the data with `take` (the second value; `None`: take
    /// it back after settling).
    fn call_now<T>(
        &mut self,
        i: usize,
        phase: Phase,
        place: impl FnOnce(&mut crate::state::HttpCtx),
        call: impl FnOnce(&mut Vm, u32) -> Result<Action, Fault>,
        take: impl FnOnce(&mut crate::state::HttpCtx) -> Option<T>,
        may_hold: bool,
    ) -> Result<(Settled, Option<Option<T>>), Waits> {
        let Some(Live { id, .. }) = self.slots[i].ctx else {
            return Ok((self.failed(i), None));
        };
        let result = self.slots[i].filter.with_vm(|vm| {
            if let Some(c) = vm.ctx(id) {
                c.phase = phase;
                place(c);
            }
            let action = call(vm, id)?;
            let back = match vm.ctx(id) {
                Some(c) if action == Action::Continue && c.local_reply.is_none() && !c.close => {
                    // As `since_callback` would: a resume of this phase during the
                    // callback is spent.
                    c.take_resumed(phase);
                    Some(take(c))
                }
                _ => None,
            };
            Ok((action, back))
        });
        let action = match result {
            Some(Ok((_, Some(back)))) => return Ok((Settled::Continue, Some(back))),
            Some(Ok((action, None))) => action,
            _ => return Ok((self.failed(i), None)),
        };
        match self.settle_now(i, phase, action, may_hold) {
            Some(settled) => Ok((settled, None)),
            None => Err(Waits),
        }
    }

    /// What a callback's `action` means for the request, when that is known without
    /// waiting: `None` when filter `i` paused a phase it may not hold.
    fn settle_now(
        &mut self,
        i: usize,
        phase: Phase,
        action: Action,
        may_hold: bool,
    ) -> Option<Settled> {
        let resumed = match self.since_callback(i, phase) {
            Ok(resumed) => resumed,
            Err(settled) => return Some(settled),
        };
        if action == Action::Continue || resumed {
            return Some(Settled::Continue);
        }
        if may_hold {
            return Some(Settled::Held);
        }
        None
    }

    /// Waits until filter `i`, paused in `phase`, resumes, replies or fails.
    async fn wait_out(&mut self, i: usize, phase: Phase) -> Settled {
        loop {
            // The signal is fetched only now: a request whose filters never pause
            // holds none of them.
            let Some(signal) = self.signal_of(i) else {
                return self.failed(i);
            };
            signal.notified().await;
            if let Some(settled) = self.settle_now(i, phase, Action::Pause, false) {
                return settled;
            }
        }
    }

    fn failed(&mut self, i: usize) -> Settled {
        self.slots[i].ctx = None;
        let filter = self.slots[i].filter.clone();
        if filter.policy() == FailurePolicy::FailOpen {
            return Settled::Continue;
        }
        let reply = failure_reply(filter.name(), &self.info.id);
        Settled::Stop(self.reply(reply))
    }

    fn reply(&mut self, reply: LocalReply) -> Flow {
        self.replied = true;
        Flow::Reply(reply)
    }

    /// What filter `i` is given, kept aside when the filter fails open: if it fails
    /// while holding the data, the rest of the chain and the upstream get the request
    /// exactly as it was before that filter (its data and the request's filter state),
    /// not what a dying VM left of it.
    fn before<T: Clone>(&self, i: usize, data: &T) -> Option<Before<T>> {
        (self.slots[i].filter.policy() == FailurePolicy::FailOpen).then(|| Before {
            data: data.clone(),
            properties: self.properties.lock().clone(),
        })
    }

    /// The data as it was before a filter that failed (see [`HttpStream::before`]);
    /// empty when the filter was not failing open, since the request then ends.
    fn restore<T: Default>(&self, before: Option<Before<T>>) -> T {
        match before {
            Some(b) => {
                *self.properties.lock() = b.properties;
                b.data
            }
            None => T::default(),
        }
    }

    /// The live context of filter `i`, if its VM still is the one it was created in.
    fn ctx_of(&mut self, i: usize) -> Option<Live> {
        let slot = &mut self.slots[i];
        let ctx = slot.ctx?;
        if slot.filter.generation() != ctx.generation || slot.filter.health() != Health::Running {
            // The VM failed under a paused or earlier phase of this request.
            slot.ctx = None;
            if slot.filter.policy() != FailurePolicy::FailOpen
                && self.failed_at_start.is_none()
                && !self.replied
            {
                self.failed_at_start = Some(failure_reply(slot.filter.name(), &self.info.id));
            }
            return None;
        }
        Some(ctx)
    }

    /// `f` on filter `i`'s context for this request, if its VM still is the one the
    /// context was made in: the data a callback handed back, or the context's signal.
    fn in_ctx<T>(
        &self,
        i: usize,
        f: impl FnOnce(&mut crate::state::HttpCtx) -> Option<T>,
    ) -> Option<T> {
        let slot = &self.slots[i];
        let ctx = slot.ctx.as_ref()?;
        if slot.filter.generation() != ctx.generation {
            return None;
        }
        let mut vm = slot.filter.vm().borrow_mut();
        vm.as_mut()?.ctx(ctx.id).and_then(f)
    }

    /// What wakes filter `i`'s context when it resumes or replies after a pause.
    fn signal_of(&self, i: usize) -> Option<Arc<Notify>> {
        self.in_ctx(i, |c| Some(c.signal.clone()))
    }

    /// A phase's result with any failure found on the way folded in: a fail-closed
    /// filter whose VM died under this request (found when its turn came and it was
    /// skipped) turns the phase's `Continue` into its 503, so an embedder that acts on
    /// the result cannot forget it.
    fn outcome(&mut self, flow: Flow) -> Flow {
        if matches!(flow, Flow::Reply(_)) {
            return flow;
        }
        match self.failed_at_start.take() {
            Some(reply) => self.reply(reply),
            None => flow,
        }
    }

    /// Ends the request: `on_log` (which may read both header maps), `on_done` and
    /// `on_delete` in every filter.
    pub fn finish(mut self, request_headers: &mut HeaderMap, response_headers: &mut HeaderMap) {
        self.finish_inner(request_headers, response_headers);
    }

    fn finish_inner(&mut self, request_headers: &mut HeaderMap, response_headers: &mut HeaderMap) {
        if self.finished {
            return;
        }
        self.finished = true;
        for slot in &mut self.slots {
            let Some(Live { id, generation }) = slot.ctx.take() else {
                continue;
            };
            if slot.filter.generation() != generation {
                continue;
            }
            let (rq, rs) = (
                std::mem::take(request_headers),
                std::mem::take(response_headers),
            );
            let back = slot.filter.with_vm(|vm| {
                if let Some(c) = vm.ctx(id) {
                    c.request_headers = Some(rq);
                    c.response_headers = Some(rs);
                }
                vm.finish_http_context(id)
            });
            if let Some(Ok((a, b))) = back {
                *request_headers = a;
                *response_headers = b;
            }
        }
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        // A request dropped midway (client gone) still ends its contexts.
        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        self.finish_inner(&mut a, &mut b);
    }
}

struct Before<T> {
    data: T,
    properties: crate::state::Properties,
}

enum Settled {
    Continue,
    Held,
    Stop(Flow),
}

/// Where one of a phase's header maps sits in a filter's context.
type MapField = fn(&mut crate::state::HttpCtx) -> &mut Option<HeaderMap>;
/// The callback that gets a phase's trailers.
type TrailersCallback = fn(&mut Vm, u32, u32) -> Result<Action, Fault>;

/// Where a phase's trailers sit in a filter's context, and the callback that gets them.
fn trailers_of(phase: Phase) -> (MapField, TrailersCallback) {
    match phase {
        Phase::Request => (|c| &mut c.request_trailers, Vm::on_request_trailers),
        _ => (|c| &mut c.response_trailers, Vm::on_response_trailers),
    }
}

/// A filter paused on the last chunk of a body and must be waited for.
struct Waits;

/// Where a header walk through the chain stopped to wait for a filter: its `k`-th
/// step of `phase`, and what the walk was given.
struct HeadersWait {
    phase: Phase,
    k: usize,
    eos: bool,
    /// The response's status, given to each filter as the response code.
    code: Option<u16>,
    before: Option<Before<HeaderMap>>,
}

/// Where a phase's headers sit in a filter's context.
fn headers_of(phase: Phase) -> MapField {
    match phase {
        Phase::Request => |c| &mut c.request_headers,
        _ => |c| &mut c.response_headers,
    }
}

/// Where a body chunk's walk through the chain stopped to wait for a filter: its
/// `k`-th step of `..to`, at the body's end or not, and what the filter was given.
struct BodyWait {
    k: usize,
    to: usize,
    eos: bool,
    before: Option<Before<Vec<u8>>>,
}

fn reset_reply(request_id: &str) -> LocalReply {
    // proxy_close_stream resets the stream in Envoy; a client sees the connection
    // closed. We answer 502 with the gateway's JSON body so the reset is visible.
    LocalReply::json(
        502,
        "wasm_close_stream",
        "the request was reset by a filter",
        request_id,
    )
}
