//! One request through the gateway, in named phases over one request context (the
//! [`Exchange`]):
//!
//! 1. **accept**: the request id, the access-log entry, the listener's header limits;
//! 2. **normalize**: the path (RFC 3986, once, for routing, the filters and the
//!    upstream), the host, the client's hop-by-hop headers, then forwarding headers
//!    and identity headers at the edge;
//! 3. **route**: the route and its service, the deadline, a declared body too large;
//! 4. **request filters**: the route's chain on the request head (a route without
//!    filters is the empty chain: nothing runs, nothing is converted);
//! 5. **upstream**: the request sent to the service, its body through the filters;
//! 6. **response filters**: the chain on the response head, in reverse order, then
//!    the body through [`body::ResponseBody`];
//! 7. **log**: `on_log` in the filters, the access log line and the metrics, once,
//!    however the request ends.
//!
//! Any phase may stop the request with a [`Stop`]; the gateway's own errors are JSON
//! and carry the request id: 400 (bad path or header), 404 (no route), 413 (body over
//! the service's limit), 431 (headers over the listener's limits), 502 (upstream
//! refused or reset), 504 (upstream timeout). An upstream's own status, 5xx included,
//! passes through unchanged and is logged as `upstream_status`.

mod body;
mod stop;
mod watch;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use portcullis_engine::{Filter, Flow, HeaderMap, HttpStream, RequestInfo};

pub use stop::{Stop, json_error};

use crate::access_log::{Entry, rfc3339};
use crate::config::Route;
use crate::state::WorkerState;
use crate::upstream::{BoxError, ServiceClient, UpstreamBody};

/// The client's response body. Not `Send`: a worker's requests stay on its thread.
pub type GwBody = std::pin::Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;

/// What the worker knows of the connection a request came on.
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    pub listener: usize,
}

pub async fn handle(
    state: Rc<WorkerState>,
    conn: Rc<Conn>,
    req: http::Request<Incoming>,
) -> http::Response<GwBody> {
    let (mut parts, mut body) = req.into_parts();
    let mut x = Exchange::accept(state, &parts);
    if let Err(stop) = x.normalize_and_route(&conn, &mut parts) {
        return x.answer(stop).await;
    }
    let end_of_stream = body.is_end_stream();
    if let Err(stop) = x
        .request_filters(&conn, &mut parts, &mut body, end_of_stream)
        .await
    {
        return x.answer(stop).await;
    }
    let response = match x.upstream(parts, body).await {
        Ok(r) => r,
        Err(stop) => return x.answer(stop).await,
    };
    x.response(response).await
}

/// The request's log and timing: what the access log and the metrics get at its end.
pub(crate) struct Ctx {
    start: Instant,
    /// When the request must be over: the start plus the service's `timeout_ms`, once
    /// the route has chosen the service.
    deadline: Instant,
    started_at: std::time::SystemTime,
    entry: Entry,
    state: Rc<WorkerState>,
}

impl Ctx {
    /// The log phase: the metrics and the access log line.
    fn finish(mut self, status: u16) {
        let elapsed = self.start.elapsed();
        let route = self.entry.route.as_deref().unwrap_or("(none)");
        self.state
            .shared
            .metrics
            .record(route, status, elapsed.as_secs_f64());
        if let Some(log) = &self.state.shared.access_log {
            self.entry.status = status;
            self.entry.time = rfc3339(self.started_at);
            self.entry.total_ms = ms(elapsed);
            log.write(&self.entry);
        }
    }

    /// Counts and logs a stop.
    fn record(&mut self, stop: &Stop) {
        if let (Some(kind), Some(service)) = (stop.metric(), self.entry.service.as_deref()) {
            self.state.shared.metrics.upstream_error(service, kind);
        }
        self.entry.error = Some(stop.log_error());
    }
}

/// The chain's side of a request on a route with filters.
pub(crate) struct Filters {
    stream: HttpStream,
    /// The request head as the filters see it (pseudo-headers first).
    request: HeaderMap,
    /// The response head as the filters left it, for `on_log`.
    response: HeaderMap,
    /// The body a filter that held the headers read before letting them go.
    released: Option<Released>,
}

/// What the filters let go with the headers after a filter held them for the body.
struct Released {
    /// The body bytes that passed every filter, sent upstream first.
    bytes: Vec<u8>,
    /// Whether the client's body ended meanwhile.
    ended: bool,
    /// The bytes read from the client.
    read: u64,
}

impl Filters {
    /// `on_log`, `on_done`, `on_delete` in every filter.
    fn finish(mut self) {
        self.stream.finish(&mut self.request, &mut self.response);
    }
}

/// What routing chose.
struct Routed {
    route: Arc<Route>,
    /// The route's matched prefix (`strip_path` removes it).
    prefix: String,
    host: String,
    /// The normalized path; after the filters, the path they left.
    path: String,
    /// The client as the edge settled it (the peer, or a trusted proxy's client).
    client: SocketAddr,
}

/// One request's context through the phases.
struct Exchange {
    ctx: Ctx,
    id: String,
    routed: Option<Routed>,
    /// `None` for a route without filters (and before the request-filters phase).
    filters: Option<Filters>,
}

impl Exchange {
    /// Phase 1, accept: the request id and the log entry.
    fn accept(state: Rc<WorkerState>, parts: &http::request::Parts) -> Exchange {
        let start = Instant::now();
        let id = request_id(&parts.headers);
        let path = parts.uri.path();
        Exchange {
            ctx: Ctx {
                start,
                deadline: start + Duration::from_secs(60),
                started_at: std::time::SystemTime::now(),
                entry: Entry {
                    request_id: id.clone(),
                    method: parts.method.to_string(),
                    path: path.to_owned(),
                    ..Entry::default()
                },
                state,
            },
            id,
            routed: None,
            filters: None,
        }
    }

    fn service(&self) -> Option<&ServiceClient> {
        let routed = self.routed.as_ref()?;
        self.ctx.state.services.get(routed.route.service)
    }

    /// Phases 1 to 3: the listener's limits, the path, the host, the edge headers, the
    /// route and its service.
    fn normalize_and_route(
        &mut self,
        conn: &Conn,
        parts: &mut http::request::Parts,
    ) -> Result<(), Stop> {
        let state = self.ctx.state.clone();
        self.ctx.entry.client = conn.peer.to_string();
        let listener = &state.listeners[conn.listener];
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if parts.headers.len() > listener.max_headers_count
            || header_bytes > listener.max_headers_bytes
        {
            return Err(Stop::client(431, "request headers too large"));
        }
        let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = crate::path::normalize(raw, listener.escaped_slashes)
            .map_err(|e| Stop::client(400, e.to_string()))?
            .into_owned();
        // The query stays out of the log: it carries API keys, access tokens and
        // authorization codes as often as anything else.
        self.ctx.entry.path = path.split('?').next().unwrap_or_default().to_owned();
        // RFC 9112 3.2: a request with more than one Host is refused; the authority of
        // an absolute-form target (and HTTP/2's :authority) is the host.
        if parts.headers.get_all(http::header::HOST).iter().count() > 1 {
            return Err(Stop::client(400, "more than one Host header"));
        }
        let host = match (parts.uri.authority(), parts.headers.get(http::header::HOST)) {
            (Some(a), _) => Some(a.as_str()),
            (None, Some(h)) => h.to_str().ok(),
            // RFC 9112 3.2: an HTTP/1.1 request must name its host (empty when it has
            // none); an HTTP/1.0 one need not, and HTTP/2 names it in `:authority`.
            (None, None) if parts.version == http::Version::HTTP_11 => {
                return Err(Stop::client(
                    400,
                    "an HTTP/1.1 request without a Host header",
                ));
            }
            (None, None) => Some(""),
        };
        // Anything but `host[:port]` could match a wildcard route by its suffix
        // (`evil.com/.example.com`) and reach the upstream in X-Forwarded-Host; a
        // trailing dot would miss the host's route while naming the same host.
        let host = match host.and_then(crate::edge::normalize_host) {
            Some(h) => h.into_owned(),
            None => return Err(Stop::client(400, "the Host is not a valid host[:port]")),
        };
        // The client's hop-by-hop headers go before the gateway writes its own: a
        // `Connection` header can name only what the client sent, never the
        // forwarding headers, the request id or a filter's identity headers.
        HopByHop::of(&parts.headers).strip(&mut parts.headers);
        let peer = crate::edge::forwarding(
            &mut parts.headers,
            conn.peer,
            conn.local,
            conn.tls,
            &host,
            &listener.trusted_proxies,
        );
        if !peer.trusted {
            crate::edge::strip_identity(&mut parts.headers, &state.identity_headers);
        }

        // A trusted proxy's identity headers are still here, but only a route that
        // keeps them may match on them (the configuration refuses the rest): routing
        // sees the request as the route will forward it.
        let facts = crate::router::RequestFacts {
            host: &host,
            path: &path,
            method: parts.method.as_str(),
            headers: &parts.headers,
        };
        let Some(matched) = state.router.route(&facts) else {
            return Err(
                Stop::client(404, "no route matched this request").detail("no route".into())
            );
        };
        let route = matched.route.clone();
        let prefix = matched.prefix.into_owned();
        // Upstreams that drop `;parameters` (Tomcat, Spring, Jetty) serve the path
        // without them: when that path takes another route, which route's filters
        // guard the request would depend on who reads it (Envoy-style: refuse).
        if let Some(plain) = crate::path::without_params(&path) {
            let cut = crate::router::RequestFacts {
                path: &plain,
                ..facts
            };
            if !state
                .router
                .route(&cut)
                .is_some_and(|m| Arc::ptr_eq(m.route, &route))
            {
                return Err(Stop::client(
                    400,
                    "the request path has ; parameters that change its route",
                ));
            }
        }
        if peer.trusted && !route.trust_identity_headers {
            crate::edge::strip_identity(&mut parts.headers, &state.identity_headers);
        }
        let svc = &state.services[route.service];
        self.ctx.entry.route = Some(route.name.clone());
        self.ctx.entry.service = Some(svc.service.name.clone());
        self.ctx.deadline = self.ctx.start + svc.service.timeout;
        let too_large =
            declared_length(&parts.headers).is_some_and(|n| n > svc.service.max_request_body);
        self.routed = Some(Routed {
            route,
            prefix,
            host,
            path,
            client: peer.client,
        });
        if too_large {
            return Err(Stop::client(413, "request body too large"));
        }
        Ok(())
    }

    /// Phase 4: the request head as it goes upstream (Host gone, the request id set, as
    /// Envoy's connection manager does before its filters run; hop-by-hop headers went
    /// in normalize), then the route's filters on it. The filters' header map is made
    /// only when the route has filters.
    async fn request_filters(
        &mut self,
        conn: &Conn,
        parts: &mut http::request::Parts,
        body: &mut Incoming,
        end_of_stream: bool,
    ) -> Result<(), Stop> {
        let state = self.ctx.state.clone();
        let Some(routed) = self.routed.as_mut() else {
            return Err(Stop::client(404, "no route matched this request"));
        };
        parts.headers.remove(http::header::HOST);
        if let Ok(v) = http::HeaderValue::from_str(&self.id) {
            parts.headers.insert(X_REQUEST_ID.clone(), v);
        }
        let chain: &[Filter] = &state.chains[routed.route.index];
        if !chain.is_empty() {
            let svc = &state.services[routed.route.service].service;
            let scheme = if conn.tls { "https" } else { "http" };
            let info = RequestInfo {
                id: self.id.clone(),
                protocol: match parts.version {
                    http::Version::HTTP_2 => "HTTP/2".into(),
                    http::Version::HTTP_10 => "HTTP/1.0".into(),
                    _ => "HTTP/1.1".into(),
                },
                scheme: scheme.into(),
                source: Some(routed.client),
                destination: Some(conn.local),
                start_unix_ns: self
                    .ctx
                    .started_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                method: parts.method.to_string(),
                path: routed.path.clone(),
                host: routed.host.clone(),
            };
            // A body a filter rewrites may grow to what the service accepts, no further.
            let stream = HttpStream::new(chain, info)
                .with_body_limits(svc.max_request_body, svc.max_response_body);
            // The filters work on the request's own map, moved in with the
            // pseudo-headers beside it.
            let request = HeaderMap::from_http(
                &[
                    (":method", parts.method.as_str()),
                    (":path", &routed.path),
                    (":authority", &routed.host),
                    (":scheme", scheme),
                ],
                std::mem::take(&mut parts.headers),
            );
            let filters = self.filters.insert(Filters {
                stream,
                request,
                response: HeaderMap::new(),
                released: None,
            });
            // Usually settled at once; only a filter that pauses makes a future, and
            // the deadline's timer, for the rest.
            let flow = match filters
                .stream
                .request_headers_now(&mut filters.request, end_of_stream)
            {
                Some(flow) => flow,
                None => {
                    let rest = filters.stream.headers_resume(&mut filters.request);
                    within(self.ctx.deadline, rest).await?
                }
            };
            match flow {
                Flow::Reply(r) => return Err(Stop::Filter(r)),
                // A filter holds the headers while it reads the body.
                Flow::Buffering => {
                    let limit = svc.max_request_body;
                    let held =
                        hold_for_body(&mut filters.stream, &mut filters.request, body, limit);
                    filters.released = Some(
                        tokio::time::timeout_at(self.ctx.deadline.into(), held)
                            .await
                            .map_err(|_| Stop::filter_timeout())??,
                    );
                }
                Flow::Continue => {}
            }
            // What the filters left goes upstream. The log phase reads the request's
            // map after hyper's client has taken the request: the upstream gets a copy
            // (hyper's values are shared, not copied).
            let request = &filters.request;
            if request.is_changed() {
                routed.path = request.get_str(":path").unwrap_or("/").to_owned();
                parts.method = http::Method::from_bytes(request.get(":method").unwrap_or(b"GET"))
                    .map_err(|e| {
                    Stop::client(400, format!("the request cannot be forwarded: {e}"))
                })?;
                if let Some((name, _)) = request.uncarried().next() {
                    return Err(Stop::client(
                        400,
                        format!(
                            "the request cannot be forwarded: a filter set header `{}`, which HTTP cannot carry",
                            name.escape_debug()
                        ),
                    ));
                }
            }
            parts.headers = request.fields().clone();
        }
        self.ctx.entry.consumer = parts
            .headers
            .get(&X_CONSUMER_USERNAME)
            .or_else(|| parts.headers.get(&X_CONSUMER_ID))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(())
    }

    /// Phase 5: the request to the service. Its body goes through the filters chunk by
    /// chunk when there are filters, else straight through, cut at the service's limit.
    async fn upstream(
        &mut self,
        mut parts: http::request::Parts,
        body: Incoming,
    ) -> Result<http::Response<Incoming>, Stop> {
        let state = self.ctx.state.clone();
        let Some(routed) = self.routed.as_ref() else {
            return Err(Stop::client(404, "no route matched this request"));
        };
        let svc = &state.services[routed.route.service];
        let authority = svc.next_authority().clone();
        let up_path = upstream_path(
            svc.service.base_path.as_deref(),
            &routed.route,
            &routed.prefix,
            &routed.path,
        )
        .ok_or_else(|| Stop::client(400, "the request path is ambiguous"))?;
        let uri = http::Uri::builder()
            .scheme(svc.service.scheme.clone())
            .authority(authority.clone())
            .path_and_query(up_path.as_str())
            .build()
            .map_err(|_| Stop::client(400, "the request path is not valid"))?;
        let host = if routed.route.preserve_host {
            http::HeaderValue::from_str(&routed.host)
        } else {
            http::HeaderValue::from_str(authority.as_str())
        }
        .map_err(|e| Stop::client(400, format!("the request cannot be forwarded: {e}")))?;
        parts.headers.insert(http::header::HOST, host);
        parts.uri = uri;
        // The upstream connection's protocol is the service's, not the client's; what
        // hyper's server attached to the client's request stays here.
        parts.version = http::Version::default();
        parts.extensions.clear();

        let started = Instant::now();
        let released = self.filters.as_mut().and_then(|f| f.released.take());
        if let Some(r) = &released {
            self.ctx.entry.bytes_in = r.read;
        }
        let sent = match (self.filters.as_mut(), body.is_end_stream()) {
            // The client's body ended while a filter held the headers: what it let go is all.
            (_, _) if released.as_ref().is_some_and(|r| r.ended) => {
                let bytes = released.map(|r| Bytes::from(r.bytes)).unwrap_or_default();
                let req = http::Request::from_parts(
                    parts,
                    Full::new(bytes).map_err(|e| match e {}).boxed_unsync(),
                );
                send(svc, req).await
            }
            (_, true) => {
                let req = http::Request::from_parts(
                    parts,
                    Empty::new().map_err(|e| match e {}).boxed_unsync(),
                );
                send(svc, req).await
            }
            (None, false) => {
                let limited = http_body_util::Limited::new(
                    body,
                    usize::try_from(svc.service.max_request_body).unwrap_or(usize::MAX),
                );
                let req = http::Request::from_parts(parts, limited.boxed_unsync());
                send(svc, req).await
            }
            (Some(filters), false) => {
                let sent = send_filtered(
                    svc,
                    parts,
                    body,
                    &mut filters.stream,
                    released,
                    self.ctx.deadline,
                )
                .await;
                self.ctx.entry.upstream_ms = Some(ms(started.elapsed()));
                return sent.map(|(response, bytes_in)| {
                    self.ctx.entry.bytes_in = bytes_in;
                    response
                });
            }
        };
        self.ctx.entry.upstream_ms = Some(ms(started.elapsed()));
        sent
    }

    /// Phase 6: the response head through the filters (reverse order), then the body,
    /// streamed; the request is logged when the body ends.
    async fn response(mut self, response: http::Response<Incoming>) -> http::Response<GwBody> {
        let (mut rparts, rbody) = response.into_parts();
        self.ctx.entry.upstream_status = Some(rparts.status.as_u16());
        HopByHop::of(&rparts.headers).strip(&mut rparts.headers);
        let Some(svc) = self.service() else {
            return self
                .answer(Stop::client(404, "no route matched this request"))
                .await;
        };
        let (max, read_timeout) = (svc.service.max_response_body, svc.service.read_timeout);
        if declared_length(&rparts.headers).is_some_and(|n| n > max) {
            let stop = Stop::upstream("response_too_large", 502, "upstream response too large");
            return self.answer(stop).await;
        }
        let end_of_stream = rbody.is_end_stream();
        if let Some(filters) = self.filters.as_mut() {
            let mut head = HeaderMap::from_http(
                &[(":status", rparts.status.as_str())],
                std::mem::take(&mut rparts.headers),
            );
            let flow = match filters
                .stream
                .response_headers_now(&mut head, end_of_stream)
            {
                Some(flow) => Ok(flow),
                None => within(self.ctx.deadline, filters.stream.headers_resume(&mut head)).await,
            };
            let stop = match flow {
                Ok(Flow::Reply(r)) => Some(Stop::Filter(r)),
                Err(stop) => Some(stop),
                Ok(_) => None,
            };
            if let Some(stop) = stop {
                // The filters have had their response phase: the reply goes out as is.
                self.ctx.record(&stop);
                let reply = stop.into_reply(&self.id);
                return self.finish(reply.response_headers(), reply.body);
            }
            if head.is_changed() {
                rparts.status = head
                    .get_str(":status")
                    .and_then(|s| s.parse().ok())
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .unwrap_or(http::StatusCode::BAD_GATEWAY);
            }
            // A header hyper cannot send is left out (the response is on its way; a
            // request's is a 400 instead). The log phase keeps the map: the client
            // gets a copy.
            rparts.headers = head.fields().clone();
            filters.response = head;
        }
        let status = rparts.status.as_u16();
        if end_of_stream {
            if let Some(f) = self.filters.take() {
                f.finish();
            }
            self.ctx.finish(status);
            return http::Response::from_parts(rparts, empty());
        }
        let body =
            body::ResponseBody::new(rbody, self.ctx, self.filters, status, max, read_timeout);
        http::Response::from_parts(rparts, Box::pin(body))
    }

    /// The gateway answers itself: through the filters' response phase when the
    /// request has filters (as Envoy runs local replies through the encoder filters),
    /// then the log phase.
    async fn answer(mut self, stop: Stop) -> http::Response<GwBody> {
        self.ctx.record(&stop);
        let reply = stop.into_reply(&self.id);
        let (headers, body) = match self.filters.as_mut() {
            Some(f) => {
                // The filters see the reply's response; one that pauses on it for ever
                // is cut short and the reply goes out as it was.
                let plain = (reply.response_headers(), reply.body.clone());
                tokio::time::timeout_at(
                    self.ctx.deadline.into(),
                    f.stream.encode_local_reply(reply),
                )
                .await
                .unwrap_or(plain)
            }
            None => (reply.response_headers(), reply.body),
        };
        self.finish(headers, body)
    }

    /// The log phase for a response the gateway holds whole.
    fn finish(mut self, mut headers: HeaderMap, body: Vec<u8>) -> http::Response<GwBody> {
        headers.set("content-length", body.len().to_string());
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        self.ctx.entry.bytes_out = body.len() as u64;
        let response = to_response(&headers, if body.is_empty() { empty() } else { full(body) });
        if let Some(mut f) = self.filters.take() {
            f.response = headers;
            f.finish();
        }
        self.ctx.finish(status);
        response
    }
}

/// Phase 5 with filters and a body: the body goes through the filters chunk by chunk
/// while the request is sent. The upstream request starts only once the filters let
/// the body's first bytes go (or its end): a filter that decides on the body (a
/// signature, oidc's back-channel logout) answers before the upstream has seen
/// anything of the request, head included. It waits no longer than the deadline.
async fn send_filtered(
    svc: &ServiceClient,
    parts: http::request::Parts,
    mut body: Incoming,
    stream: &mut HttpStream,
    held: Option<Released>,
    deadline: Instant,
) -> Result<(http::Response<Incoming>, u64), Stop> {
    let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
    let req = http::Request::from_parts(parts, rx.boxed_unsync() as UpstreamBody);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let sending = async {
        match tokio::time::timeout_at(deadline.into(), released).await {
            Ok(Ok(())) => {}
            // The pump ended without letting anything go: its outcome decides.
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => return Err(Stop::filter_timeout()),
        }
        send(svc, req).await
    };
    tokio::pin!(sending);
    let limit = svc.service.max_request_body;
    let pump = pump_request(stream, &mut body, tx, limit, release, held);
    tokio::pin!(pump);
    let mut bytes_in = 0;
    let mut pumping = true;
    loop {
        tokio::select! {
            r = &mut sending => return r.map(|response| (response, bytes_in)),
            p = &mut pump, if pumping => {
                pumping = false;
                bytes_in = p?;
            }
        }
    }
}

/// Sends `req` to the service: its response head within the service's read timeout
/// (and no later than its whole timeout), or why not.
async fn send(
    svc: &ServiceClient,
    req: http::Request<UpstreamBody>,
) -> Result<http::Response<Incoming>, Stop> {
    let header_deadline = svc.service.read_timeout.min(svc.service.timeout);
    match tokio::time::timeout(header_deadline, svc.client.request(req)).await {
        Ok(Ok(response)) => Ok(response),
        Err(_) => Err(Stop::upstream("timeout", 504, "upstream timed out")),
        Ok(Err(e)) => Err(stop::send_failure(&e)),
    }
}

/// Moves the request body to the upstream, chunk by chunk, through the filters;
/// `release` fires when the filters first let something go (a chunk, or the end).
/// The bytes read, or why the request stops.
async fn pump_request(
    stream: &mut HttpStream,
    body: &mut Incoming,
    mut tx: http_body_util::channel::Sender<Bytes, BoxError>,
    limit: u64,
    release: tokio::sync::oneshot::Sender<()>,
    released: Option<Released>,
) -> Result<u64, Stop> {
    let mut release = Some(release);
    let mut total = 0u64;
    if let Some(r) = released {
        // The filters already let these go, with the headers.
        total = r.read;
        if let Some(release) = release.take() {
            let _ = release.send(());
        }
        if !r.bytes.is_empty() && tx.send_data(Bytes::from(r.bytes)).await.is_err() {
            return Ok(total);
        }
    }
    loop {
        let frame = body.frame().await;
        let ClientFrame {
            mut chunk,
            eos,
            trailers,
        } = match client_chunk(frame, body, &mut total, limit) {
            Ok(c) => c,
            Err(stop) => {
                tx.abort(stop.log_error().into());
                return Err(stop);
            }
        };
        let flow = match trailers {
            // The filters see the trailers (and let go of any body they held for the
            // end the trailers bring); the trailers themselves are not forwarded: the
            // upstream connection is HTTP/1.1, which carries none it was not told of.
            Some(t) => {
                let mut map = HeaderMap::from_http(&[], t);
                stream.request_trailers(&mut map, &mut chunk).await
            }
            None => stream.request_body(&mut chunk, eos).await,
        };
        match flow {
            Flow::Reply(r) => {
                tx.abort("answered by a filter".into());
                return Err(Stop::Filter(r));
            }
            Flow::Buffering => continue,
            Flow::Continue => {}
        }
        if let Some(r) = release.take() {
            let _ = r.send(());
        }
        if !chunk.is_empty() && tx.send_data(Bytes::from(chunk)).await.is_err() {
            return Ok(total);
        }
        if eos {
            return Ok(total);
        }
    }
}

/// While a filter holds the request headers (`allow_on_headers_stop_iteration`): the
/// body read and fed to the filters until they let the headers go, bounded by the
/// service's body limit. A filter that resumes after a call is seen at once, not at
/// the client's next bytes.
async fn hold_for_body(
    stream: &mut HttpStream,
    headers: &mut HeaderMap,
    body: &mut Incoming,
    limit: u64,
) -> Result<Released, Stop> {
    let mut read = 0u64;
    loop {
        let signal = stream.held_signal();
        let woken = async {
            match signal {
                Some(s) => s.notified().await,
                None => std::future::pending().await,
            }
        };
        // `None`: the holder was woken (it resumed or replied), no new bytes.
        let frame = tokio::select! {
            f = body.frame() => Some(f),
            () = woken => None,
        };
        let (mut chunk, eos, trailers) = match frame {
            None => (Vec::new(), false, None),
            Some(f) => {
                let f = client_chunk(f, body, &mut read, limit)?;
                (f.chunk, f.eos, f.trailers)
            }
        };
        let flow = match trailers {
            // Trailers go to the holder, which may let the headers go on them, and
            // then through the rest of the chain, as in Envoy (they are not
            // forwarded upstream).
            Some(t) => {
                let mut map = HeaderMap::from_http(&[], t);
                stream
                    .request_trailers_held(headers, &mut map, &mut chunk)
                    .await
            }
            None => stream.request_body_held(headers, &mut chunk, eos).await,
        };
        match flow {
            Flow::Reply(r) => return Err(Stop::Filter(r)),
            Flow::Continue => {
                return Ok(Released {
                    bytes: chunk,
                    ended: eos,
                    read,
                });
            }
            // At the end of the body every filter has let go or replied: holding on
            // would read past the end for ever.
            Flow::Buffering if eos => {
                return Err(Stop::client(500, "a filter held the request past its end"));
            }
            Flow::Buffering => {}
        }
    }
}

/// A frame of the client's body: a chunk and whether it ends the body, or the
/// trailers that end it. Counted into `read` against the service's `limit`.
struct ClientFrame {
    chunk: Vec<u8>,
    eos: bool,
    trailers: Option<http::HeaderMap>,
}

/// The client's next frame as a [`ClientFrame`], or why the request stops (400 for a
/// body that failed, 413 past the limit).
fn client_chunk(
    frame: Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>,
    body: &Incoming,
    read: &mut u64,
    limit: u64,
) -> Result<ClientFrame, Stop> {
    let (chunk, eos, trailers) = match frame {
        None => (Vec::new(), true, None),
        Some(Err(_)) => {
            return Err(Stop::client(400, "the request body ended early")
                .detail("client closed the request body".into()));
        }
        Some(Ok(f)) => match f.into_data() {
            Ok(d) => (d.to_vec(), body.is_end_stream(), None),
            Err(f) => (Vec::new(), true, f.into_trailers().ok()),
        },
    };
    *read += chunk.len() as u64;
    if *read > limit {
        return Err(Stop::upstream(
            "body_too_large",
            413,
            "request body too large",
        ));
    }
    Ok(ClientFrame {
        chunk,
        eos,
        trailers,
    })
}

/// Runs a filter phase until `deadline` at the latest: a filter that pauses and never
/// resumes is answered 504, not waited on for ever.
async fn within(
    deadline: Instant,
    phase: impl std::future::Future<Output = Flow>,
) -> Result<Flow, Stop> {
    tokio::time::timeout_at(deadline.into(), phase)
        .await
        .map_err(|_| Stop::filter_timeout())
}

// The names the gateway itself reads and writes on every request, parsed once.
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static X_CONSUMER_USERNAME: http::HeaderName = http::HeaderName::from_static("x-consumer-username");
static X_CONSUMER_ID: http::HeaderName = http::HeaderName::from_static("x-consumer-id");

/// A request id: the client's when it is sane, else 16 random bytes in hex.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(v) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 200
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_owned();
    }
    // Unique, not secret: a fast generator seeded from the OS per thread.
    format!("{:032x}", fastrand::u128(..))
}

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
static HOP_BY_HOP: [http::HeaderName; 8] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// The hop-by-hop headers of one message: the fixed list plus those its
/// `Connection` header names.
struct HopByHop {
    named: Vec<String>,
}

impl HopByHop {
    fn of(headers: &http::HeaderMap) -> HopByHop {
        let mut named = Vec::new();
        for v in headers.get_all(http::header::CONNECTION) {
            if let Ok(v) = v.to_str() {
                named.extend(
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty()),
                );
            }
        }
        HopByHop { named }
    }

    fn strip(&self, headers: &mut http::HeaderMap) {
        // Usually there is none: one look at each name the message has is cheaper than
        // a lookup (parse and hash) of each listed name.
        if self.named.is_empty() && !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
            return;
        }
        for h in &HOP_BY_HOP {
            headers.remove(h);
        }
        for h in &self.named {
            headers.remove(h.as_str());
        }
    }
}

fn full(body: Vec<u8>) -> GwBody {
    Box::pin(Full::new(Bytes::from(body)).map_err(|e| match e {}))
}

fn empty() -> GwBody {
    Box::pin(Empty::new().map_err(|e| match e {}))
}

/// Turns a whole response head from the filters or a local reply into hyper's.
fn to_response(headers: &HeaderMap, body: GwBody) -> http::Response<GwBody> {
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut resp = http::Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    // What hyper cannot send is left out.
    *resp.headers_mut() = headers.fields().clone();
    resp
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The upstream request's path, as Kong 3 makes it (its router's "v0" path handling):
/// `strip_path` removes the matched prefix, then the service's path goes before what
/// is left. `path` carries the query, which is kept as it is. `None` when the join
/// made a dot segment (`/api../x` stripped of `/api` under `/svc` is `/svc/../x`,
/// and `..;x` is `..` to Tomcat): the edge refuses those in requests, and a prefix
/// that ends inside a segment must not bring one back.
fn upstream_path(base: Option<&str>, route: &Route, prefix: &str, path: &str) -> Option<String> {
    let (req, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let base = base.unwrap_or("/");
    let stripped = route.strip_path && !prefix.is_empty() && prefix != "/";
    let post = if stripped {
        req.strip_prefix(prefix).unwrap_or(req)
    } else {
        req
    };
    let mut out = if stripped {
        if let Some(b) = base.strip_suffix('/') {
            if post.is_empty() {
                if base == "/" || req.ends_with('/') {
                    base.to_owned()
                } else {
                    b.to_owned()
                }
            } else if post.starts_with('/') {
                format!("{b}{post}")
            } else {
                format!("{base}{post}")
            }
        } else if post.is_empty() {
            if req.len() > 1 && req.ends_with('/') {
                format!("{base}/")
            } else {
                base.to_owned()
            }
        } else if post.starts_with('/') {
            format!("{base}{post}")
        } else {
            format!("{base}/{post}")
        }
    } else if base == "/" {
        req.to_owned()
    } else if let Some(b) = base.strip_suffix('/') {
        format!("{b}{req}")
    } else if req == "/" {
        base.to_owned()
    } else {
        format!("{base}{req}")
    };
    if out.is_empty() {
        out.push('/');
    }
    let dot = |seg: &str| {
        let name = seg.split(';').next().unwrap_or(seg);
        name == "." || name == ".."
    };
    if out.split('/').any(dot) {
        return None;
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

#[cfg(test)]
mod upstream_path_tests {
    use super::upstream_path;

    fn route(strip: bool) -> crate::config::Route {
        crate::config::Route {
            index: 0,
            name: "r".into(),
            matches: Default::default(),
            service: 0,
            filters: vec![],
            strip_path: strip,
            preserve_host: false,
            trust_identity_headers: false,
            regexes: vec![],
        }
    }

    #[test]
    fn the_service_path_and_strip_path_give_kongs_upstream_paths() {
        // Kong's own examples (its router's v0 path handling): service path, route
        // prefix, strip_path, request path -> upstream path.
        for (base, prefix, strip, req, want) in [
            (None, "/v1", true, "/v1/x", "/x"),
            (None, "/v1", true, "/v1", "/"),
            (None, "/v1", false, "/v1/x?q=1", "/v1/x?q=1"),
            (Some("/api"), "/v1", true, "/v1", "/api"),
            (Some("/api"), "/v1", true, "/v1/", "/api/"),
            (Some("/api"), "/v1", true, "/v1/x", "/api/x"),
            (Some("/api"), "/v1", true, "/v1x", "/api/x"),
            (Some("/api"), "/v1", false, "/v1/x", "/api/v1/x"),
            (Some("/api"), "/v1", false, "/", "/api"),
            (Some("/api/"), "/v1", true, "/v1/x?a=b", "/api/x?a=b"),
            (Some("/api/"), "/v1", true, "/v1", "/api"),
            (Some("/api/"), "/v1", false, "/v1/x", "/api/v1/x"),
            (Some("/api"), "", true, "/x", "/api/x"),
        ] {
            assert_eq!(
                upstream_path(base, &route(strip), prefix, req).as_deref(),
                Some(want),
                "{base:?} {prefix} strip={strip} {req}"
            );
        }
        // A prefix that ends inside a segment cannot make a dot segment.
        for req in ["/api../admin", "/api..;x/admin", "/api./x", "/api.."] {
            assert_eq!(
                upstream_path(Some("/svc"), &route(true), "/api", req),
                None,
                "{req}"
            );
            assert_eq!(
                upstream_path(None, &route(true), "/api", req),
                None,
                "{req}"
            );
        }
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}
