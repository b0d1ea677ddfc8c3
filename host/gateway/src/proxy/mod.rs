//! One request through the gateway: route it, run its filters, proxy it to the
//! service, run the response back through the filters, log it.
//!
//! The gateway's own errors are JSON and carry the request id: 404 (no route), 413
//! (body over the service's limit), 431 (headers over the listener's limits), 502
//! (upstream refused or reset), 504 (upstream timeout). An upstream's own status,
//! 5xx included, passes through unchanged and is logged as `upstream_status`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use portcullis_engine::{Filter, Flow, HeaderMap, HttpStream, LocalReply, RequestInfo};

use crate::access_log::{Entry, rfc3339};
use crate::upstream::{BoxError, UpstreamBody};
use crate::worker::WorkerState;

/// The client's response body. Not `Send`: a worker's requests stay on its thread.
pub type GwBody = std::pin::Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;

/// What the worker knows of the connection a request came on.
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    pub listener: usize,
}

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
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

    fn contains(&self, name: &str) -> bool {
        HOP_BY_HOP.contains(&name) || self.named.iter().any(|n| n == name)
    }

    fn strip(&self, headers: &mut http::HeaderMap) {
        for h in HOP_BY_HOP
            .iter()
            .copied()
            .chain(self.named.iter().map(String::as_str))
        {
            headers.remove(h);
        }
    }
}

pub fn json_error(status: u16, message: &str, request_id: &str) -> LocalReply {
    let mut headers = HeaderMap::new();
    headers.add("content-type", "application/json");
    let body = serde_json::json!({ "message": message, "request_id": request_id }).to_string();
    LocalReply {
        status,
        details: message.into(),
        body: body.into_bytes(),
        headers,
        grpc_status: -1,
    }
}

/// What the gateway answers when a filter keeps a request paused past the request's
/// deadline (the service's `timeout_ms` from the start).
const FILTER_TIMEOUT: &str = "a filter did not let the request go on in time";

/// Runs a filter phase until `deadline` at the latest: a filter that pauses and never
/// resumes is answered 504, not waited on for ever.
async fn within(
    deadline: Instant,
    id: &str,
    phase: impl std::future::Future<Output = Flow>,
) -> Flow {
    match tokio::time::timeout_at(deadline.into(), phase).await {
        Ok(flow) => flow,
        Err(_) => Flow::Reply(json_error(504, FILTER_TIMEOUT, id)),
    }
}

/// A request id: the client's when it is sane, else 16 random bytes in hex.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_owned();
        }
    }
    // Unique, not secret: a fast generator seeded from the OS per thread.
    format!("{:032x}", fastrand::u128(..))
}

fn full(body: Vec<u8>) -> GwBody {
    Box::pin(Full::new(Bytes::from(body)).map_err(|e| match e {}))
}

fn empty() -> GwBody {
    Box::pin(Empty::new().map_err(|e| match e {}))
}

/// Turns a header map from the filters into an HTTP response.
fn to_response(headers: &HeaderMap, body: GwBody) -> http::Response<GwBody> {
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut resp = http::Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    for (k, v) in headers.iter() {
        if k.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

struct Ctx {
    start: Instant,
    /// When the request must be over: the start plus the service's `timeout_ms`, once
    /// the route has chosen the service.
    deadline: Instant,
    started_at: std::time::SystemTime,
    entry: Entry,
    state: Rc<WorkerState>,
}

impl Ctx {
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
}

/// Records the gateway's own refusal (an upstream-error metric when `kind` says so, the
/// access log's `error`) and builds its JSON reply.
fn refusal(
    ctx: &mut Ctx,
    kind: Option<&'static str>,
    status: u16,
    message: &str,
    id: &str,
) -> LocalReply {
    if let (Some(kind), Some(service)) = (kind, ctx.entry.service.as_deref()) {
        ctx.state.shared.metrics.upstream_error(service, kind);
    }
    ctx.entry.error = Some(message.to_owned());
    json_error(status, message, id)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Answers with a gateway error (through the filters' response phase when a stream
/// exists, as Envoy runs local replies through the encoder filters).
async fn reply(
    ctx: Ctx,
    stream: Option<HttpStream>,
    reply: LocalReply,
    mut req_headers: HeaderMap,
) -> http::Response<GwBody> {
    let (mut headers, body) = match stream {
        Some(mut s) => {
            // The filters see the reply's response; one that pauses on it for ever is
            // cut short and the reply goes out as it was.
            let plain = (reply.response_headers(), reply.body.clone());
            let (mut h, b) =
                tokio::time::timeout_at(ctx.deadline.into(), s.encode_local_reply(reply))
                    .await
                    .unwrap_or(plain);
            s.finish(&mut req_headers, &mut h);
            (h, b)
        }
        None => (reply.response_headers(), reply.body),
    };
    headers.set("content-length", body.len().to_string());
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut ctx = ctx;
    ctx.entry.bytes_out = body.len() as u64;
    ctx.finish(status);
    to_response(&headers, full(body))
}

pub async fn handle(
    state: Rc<WorkerState>,
    conn: Rc<Conn>,
    req: http::Request<Incoming>,
) -> http::Response<GwBody> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let id = request_id(&parts.headers);
    let raw_path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut ctx = Ctx {
        start,
        deadline: start + Duration::from_secs(60),
        started_at: std::time::SystemTime::now(),
        entry: Entry {
            request_id: id.clone(),
            method: parts.method.to_string(),
            path: raw_path.clone(),
            client: conn.peer.to_string(),
            ..Entry::default()
        },
        state: state.clone(),
    };

    let listener = &state.listeners[conn.listener];
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if parts.headers.len() > listener.max_headers_count || header_bytes > listener.max_headers_bytes
    {
        ctx.entry.error = Some("request headers too large".into());
        return reply(
            ctx,
            None,
            json_error(431, "request headers too large", &id),
            HeaderMap::new(),
        )
        .await;
    }
    // One path for routing, the filters and the upstream.
    let path = match crate::path::normalize(&raw_path, listener.escaped_slashes) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            let message = e.to_string();
            ctx.entry.error = Some(message.clone());
            return reply(ctx, None, json_error(400, &message, &id), HeaderMap::new()).await;
        }
    };
    ctx.entry.path.clone_from(&path);
    // RFC 9112 3.2: a request with more than one Host is refused; the authority of an
    // absolute-form target (and HTTP/2's :authority) is the host.
    if parts.headers.get_all(http::header::HOST).iter().count() > 1 {
        ctx.entry.error = Some("more than one Host header".into());
        return reply(
            ctx,
            None,
            json_error(400, "more than one Host header", &id),
            HeaderMap::new(),
        )
        .await;
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
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

    let facts = crate::router::RequestFacts {
        host: &host,
        path: &path,
        method: parts.method.as_str(),
        headers: &parts.headers,
    };
    let Some(matched) = state.router.route(&facts) else {
        ctx.entry.error = Some("no route".into());
        return reply(
            ctx,
            None,
            json_error(404, "no route matched this request", &id),
            HeaderMap::new(),
        )
        .await;
    };
    let route = matched.route.clone();
    let prefix = matched.prefix.to_owned();
    if peer.trusted && !route.trust_identity_headers {
        crate::edge::strip_identity(&mut parts.headers, &state.identity_headers);
    }
    let svc = &state.services[route.service];
    ctx.entry.route = Some(route.name.clone());
    ctx.entry.service = Some(svc.service.name.clone());
    ctx.deadline = start + svc.service.timeout;

    if declared_length(&parts.headers).is_some_and(|n| n > svc.service.max_request_body) {
        ctx.entry.error = Some("request body too large".into());
        return reply(
            ctx,
            None,
            json_error(413, "request body too large", &id),
            HeaderMap::new(),
        )
        .await;
    }

    if state.chains[route.index].is_empty() {
        return direct(
            ctx,
            state.clone(),
            parts,
            body,
            route,
            prefix,
            id,
            host,
            path,
        )
        .await;
    }

    // The request as filters see it: pseudo-headers first, hop-by-hop headers gone,
    // forwarding headers (settled at the edge) and the request id set, as Envoy's
    // connection manager does before its filters run.
    let scheme = if conn.tls { "https" } else { "http" };
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 8);
    headers.add(":method", parts.method.as_str());
    headers.add(":path", &path);
    headers.add(":authority", &host);
    headers.add(":scheme", scheme);
    let hop = HopByHop::of(&parts.headers);
    for (k, v) in &parts.headers {
        let k = k.as_str();
        if k == "host" || hop.contains(k) {
            continue;
        }
        headers.add(k, v);
    }
    headers.set("x-request-id", id.as_str());

    let chain: &[Filter] = &state.chains[route.index];
    let mut body = body;
    let end_of_stream = body.is_end_stream();
    let mut stream = if chain.is_empty() {
        None
    } else {
        let info = RequestInfo {
            id: id.clone(),
            protocol: match parts.version {
                http::Version::HTTP_2 => "HTTP/2".into(),
                http::Version::HTTP_10 => "HTTP/1.0".into(),
                _ => "HTTP/1.1".into(),
            },
            scheme: scheme.into(),
            source: Some(peer.client),
            destination: Some(conn.local),
            start_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            method: parts.method.to_string(),
            path: path.clone(),
            host: host.clone(),
        };
        // A body a filter rewrites may grow to what the service accepts, no further.
        Some(
            HttpStream::new(chain, info)
                .with_body_limits(svc.service.max_request_body, svc.service.max_response_body),
        )
    };
    if let Some(s) = &mut stream {
        let mut flow = within(
            ctx.deadline,
            &id,
            s.request_headers(&mut headers, end_of_stream),
        )
        .await;
        if let Some(r) = s.take_failure() {
            flow = Flow::Reply(r);
        }
        if let Flow::Reply(r) = flow {
            ctx.entry.error = Some(format!("answered by a filter: {}", r.details));
            return reply(ctx, stream, r, headers).await;
        }
    }
    ctx.entry.consumer = headers
        .get_str("x-consumer-username")
        .or_else(|| headers.get_str("x-consumer-id"))
        .map(str::to_owned);

    // The upstream request.
    let authority = svc.next_authority().clone();
    let up_path = strip_prefix(&route, &prefix, headers.get_str(":path").unwrap_or("/"));
    let uri = match http::Uri::builder()
        .scheme(svc.service.scheme.clone())
        .authority(authority.clone())
        .path_and_query(up_path.as_str())
        .build()
    {
        Ok(u) => u,
        Err(_) => {
            return reply(
                ctx,
                stream,
                json_error(400, "the request path is not valid", &id),
                headers,
            )
            .await;
        }
    };
    let method = http::Method::from_bytes(headers.get(":method").unwrap_or(b"GET"))
        .unwrap_or(http::Method::GET);
    let upstream_host = if route.preserve_host {
        host.clone()
    } else {
        authority.to_string()
    };
    // The map is built in place (a request builder moves its whole state per header).
    let mut up_headers = http::HeaderMap::with_capacity(headers.len() + 1);
    let mut bad_header = None;
    match http::HeaderValue::from_str(&upstream_host) {
        Ok(v) => {
            up_headers.insert(http::header::HOST, v);
        }
        Err(e) => bad_header = Some(e.to_string()),
    }
    for (k, v) in headers.iter() {
        if k.starts_with(':') {
            continue;
        }
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            (Ok(name), Ok(value)) => {
                up_headers.append(name, value);
            }
            (Err(e), _) => bad_header = Some(e.to_string()),
            (_, Err(e)) => bad_header = Some(e.to_string()),
        }
    }
    if let Some(e) = bad_header {
        return reply(
            ctx,
            stream,
            json_error(400, &format!("the request cannot be forwarded: {e}"), &id),
            headers,
        )
        .await;
    }

    let limit = svc.service.max_request_body;
    let (body_tx, up_body): (
        Option<http_body_util::channel::Sender<Bytes, BoxError>>,
        UpstreamBody,
    ) = if end_of_stream {
        (None, Empty::new().map_err(|e| match e {}).boxed_unsync())
    } else {
        let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        (Some(tx), rx.boxed_unsync())
    };
    let mut up_req = http::Request::new(up_body);
    *up_req.method_mut() = method;
    *up_req.uri_mut() = uri;
    *up_req.headers_mut() = up_headers;

    let header_deadline = svc.service.read_timeout.min(svc.service.timeout);
    let upstream_start = Instant::now();
    let deadline = ctx.deadline;
    let sent = {
        // With filters and a body, the upstream request starts only once the filters
        // let the body's first bytes go (or its end): a filter that decides on the body
        // (a signature, oidc's back-channel logout) answers before the upstream has
        // seen anything of the request, head included. It waits no longer than the
        // request's deadline.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let held = (stream.is_some() && !end_of_stream).then_some(released);
        let send = async {
            if let Some(released) = held {
                match tokio::time::timeout_at(deadline.into(), released).await {
                    Ok(Ok(())) => {}
                    // The pump ended without letting anything go: its outcome decides.
                    Ok(Err(_)) => std::future::pending::<()>().await,
                    Err(_) => return None,
                }
            }
            Some(tokio::time::timeout(header_deadline, svc.client.request(up_req)).await)
        };
        tokio::pin!(send);
        let pump = pump_request(stream.as_mut(), &mut body, body_tx, limit, release);
        tokio::pin!(pump);
        let mut pumping = !end_of_stream;
        loop {
            tokio::select! {
                r = &mut send => break r.map_or(Sent::Held, Sent::Response),
                p = &mut pump, if pumping => {
                    pumping = false;
                    match p {
                        Pumped::Done(n) => ctx.entry.bytes_in = n,
                        Pumped::Reply(r) => break Sent::Reply(r),
                        Pumped::TooLarge => break Sent::TooLarge,
                        Pumped::ClientGone => break Sent::ClientGone,
                    }
                }
            }
        }
    };
    ctx.entry.upstream_ms = Some(ms(upstream_start.elapsed()));
    let resp = match sent {
        Sent::Response(Ok(Ok(resp))) => resp,
        Sent::Response(Err(_)) => {
            let r = refusal(&mut ctx, Some("timeout"), 504, "upstream timed out", &id);
            return reply(ctx, stream, r, headers).await;
        }
        Sent::Response(Ok(Err(e))) => {
            let r = send_failure(&mut ctx, &e, &id);
            return reply(ctx, stream, r, headers).await;
        }
        Sent::Held => {
            ctx.entry.error = Some(FILTER_TIMEOUT.into());
            return reply(ctx, stream, json_error(504, FILTER_TIMEOUT, &id), headers).await;
        }
        Sent::Reply(r) => {
            ctx.entry.error = Some(format!("answered by a filter: {}", r.details));
            return reply(ctx, stream, r, headers).await;
        }
        Sent::TooLarge => {
            let r = refusal(
                &mut ctx,
                Some("body_too_large"),
                413,
                "request body too large",
                &id,
            );
            return reply(ctx, stream, r, headers).await;
        }
        Sent::ClientGone => {
            ctx.entry.error = Some("client closed the request body".into());
            return reply(
                ctx,
                stream,
                json_error(400, "the request body ended early", &id),
                headers,
            )
            .await;
        }
    };

    let (rparts, rbody) = resp.into_parts();
    ctx.entry.upstream_status = Some(rparts.status.as_u16());
    let mut rh = HeaderMap::with_capacity(rparts.headers.len() + 8);
    rh.add(":status", rparts.status.as_str());
    let hop = HopByHop::of(&rparts.headers);
    for (k, v) in &rparts.headers {
        if hop.contains(k.as_str()) {
            continue;
        }
        rh.add(k.as_str(), v);
    }
    if declared_length(&rparts.headers).is_some_and(|n| n > svc.service.max_response_body) {
        let r = refusal(
            &mut ctx,
            Some("response_too_large"),
            502,
            "upstream response too large",
            &id,
        );
        return reply(ctx, stream, r, headers).await;
    }
    let rbody_eos = rbody.is_end_stream();
    if let Some(s) = &mut stream {
        let flow = within(ctx.deadline, &id, s.response_headers(&mut rh, rbody_eos)).await;
        if let Flow::Reply(r) = flow {
            ctx.entry.error = Some(format!("answered by a filter: {}", r.details));
            let h = r.response_headers();
            return finish_now(ctx, stream, headers, h, r.body);
        }
    }
    let status = rh
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    if rbody_eos {
        return finish_now(ctx, stream, headers, rh, Vec::new());
    }
    // Stream the body back through the filters; the request is logged when it ends.
    let mut response = to_response(&rh, empty());
    let pump = Pump {
        deadline: ctx.deadline,
        ctx: Some(ctx),
        stream,
        req_headers: headers,
        resp_headers: rh,
        body: rbody,
        max: svc.service.max_response_body,
        read_timeout: svc.service.read_timeout,
        status,
        total: 0,
    };
    *response.body_mut() = Box::pin(PumpBody {
        pump: Some(pump),
        step: None,
    });
    response
}

fn finish_now(
    mut ctx: Ctx,
    stream: Option<HttpStream>,
    mut req: HeaderMap,
    mut rh: HeaderMap,
    body: Vec<u8>,
) -> http::Response<GwBody> {
    if let Some(s) = stream {
        s.finish(&mut req, &mut rh);
    }
    let status = rh
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    ctx.entry.bytes_out = body.len() as u64;
    ctx.finish(status);
    let b = if body.is_empty() { empty() } else { full(body) };
    to_response(&rh, b)
}

enum Sent {
    Response(
        Result<
            Result<http::Response<Incoming>, hyper_util::client::legacy::Error>,
            tokio::time::error::Elapsed,
        >,
    ),
    Reply(LocalReply),
    /// The filters held the body past the request's deadline.
    Held,
    TooLarge,
    ClientGone,
}

enum Pumped {
    Done(u64),
    Reply(LocalReply),
    TooLarge,
    ClientGone,
}

/// Moves the request body to the upstream, chunk by chunk, through the filters;
/// `release` fires when the filters first let something go (a chunk, or the end).
async fn pump_request(
    mut stream: Option<&mut HttpStream>,
    body: &mut Incoming,
    tx: Option<http_body_util::channel::Sender<Bytes, BoxError>>,
    limit: u64,
    release: tokio::sync::oneshot::Sender<()>,
) -> Pumped {
    let mut release = Some(release);
    let Some(mut tx) = tx else {
        return Pumped::Done(0);
    };
    let mut total = 0u64;
    loop {
        let frame = match body.frame().await {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(_)) => {
                tx.abort("client body error".into());
                return Pumped::ClientGone;
            }
        };
        let (mut chunk, eos) = match frame {
            None => (Vec::new(), true),
            Some(f) => match f.into_data() {
                Ok(d) => {
                    let eos = body.is_end_stream();
                    (d.to_vec(), eos)
                }
                // Trailers: passed on as the end of the body.
                Err(_) => (Vec::new(), true),
            },
        };
        total += chunk.len() as u64;
        if total > limit {
            tx.abort("request body too large".into());
            return Pumped::TooLarge;
        }
        if let Some(s) = stream.as_deref_mut() {
            match s.request_body(&mut chunk, eos).await {
                Flow::Reply(r) => {
                    tx.abort("answered by a filter".into());
                    return Pumped::Reply(r);
                }
                Flow::Buffering => continue,
                Flow::Continue => {}
            }
            if let Some(r) = s.take_failure() {
                tx.abort("filter failed".into());
                return Pumped::Reply(r);
            }
        }
        if let Some(r) = release.take() {
            let _ = r.send(());
        }
        if !chunk.is_empty() && tx.send_data(Bytes::from(chunk)).await.is_err() {
            return Pumped::Done(total);
        }
        if eos {
            return Pumped::Done(total);
        }
    }
}

/// The response body through the filters' body callbacks, produced as the client
/// reads it (no task, no channel): each frame is one step of [`Pump::next`], which owns
/// the request's state while it runs and hands it back.
struct Pump {
    ctx: Option<Ctx>,
    stream: Option<HttpStream>,
    req_headers: HeaderMap,
    resp_headers: HeaderMap,
    body: Incoming,
    max: u64,
    read_timeout: Duration,
    deadline: Instant,
    status: u16,
    total: u64,
}

type Step = (Pump, Option<Result<Frame<Bytes>, BoxError>>);

impl Pump {
    /// Ends the request: `on_log` and friends, the access log line.
    fn end(&mut self, error: Option<String>) {
        if let Some(mut ctx) = self.ctx.take() {
            if error.is_some() {
                ctx.entry.error = error;
            }
            if let Some(s) = self.stream.take() {
                s.finish(&mut self.req_headers, &mut self.resp_headers);
            }
            let status = self.status;
            ctx.finish(status);
        }
    }

    fn fail(mut self, kind: Option<&'static str>, message: &str) -> Step {
        if let (Some(kind), Some(ctx)) = (kind, &self.ctx) {
            if let Some(service) = ctx.entry.service.as_deref() {
                ctx.state.shared.metrics.upstream_error(service, kind);
            }
        }
        self.end(Some(message.to_owned()));
        (self, Some(Err(message.to_owned().into())))
    }

    async fn next(mut self) -> Step {
        loop {
            let wait = self
                .read_timeout
                .min(self.deadline.saturating_duration_since(Instant::now()));
            let frame = match tokio::time::timeout(wait, self.body.frame()).await {
                Err(_) => return self.fail(Some("timeout"), "upstream response body timed out"),
                Ok(None) => None,
                Ok(Some(Ok(f))) => Some(f),
                Ok(Some(Err(e))) => {
                    return self.fail(None, &format!("upstream response body failed: {e}"));
                }
            };
            let (mut chunk, eos, trailers) = match frame {
                None => (Vec::new(), true, None),
                Some(f) => match f.into_data() {
                    Ok(d) => (d.to_vec(), self.body.is_end_stream(), None),
                    Err(f) => (Vec::new(), true, f.into_trailers().ok()),
                },
            };
            self.total += chunk.len() as u64;
            if self.total > self.max {
                return self.fail(Some("response_too_large"), "upstream response too large");
            }
            if let Some(s) = &mut self.stream {
                // A filter holding the body past the deadline cuts it, as a timeout.
                let left = self.deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, s.response_body(&mut chunk, eos)).await {
                    Err(_) => return self.fail(Some("timeout"), FILTER_TIMEOUT),
                    Ok(Flow::Buffering) => continue,
                    // Headers are gone already: a reply now can only cut the body.
                    Ok(Flow::Reply(_)) => {
                        return self.fail(None, "a filter replied after the response began");
                    }
                    Ok(Flow::Continue) => {}
                }
            }
            if let Some(ctx) = &mut self.ctx {
                ctx.entry.bytes_out += chunk.len() as u64;
            }
            if eos {
                // Data, then trailers, then the end: the end comes on the next step.
                let last = if !chunk.is_empty() {
                    Some(Ok(Frame::data(Bytes::from(chunk))))
                } else {
                    trailers.map(|t| Ok(Frame::trailers(t)))
                };
                self.end(None);
                return (self, last);
            }
            if !chunk.is_empty() {
                return (self, Some(Ok(Frame::data(Bytes::from(chunk)))));
            }
        }
    }
}

struct PumpBody {
    pump: Option<Pump>,
    step: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Step>>>>,
}

impl Body for PumpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.step.is_none() {
            match this.pump.take() {
                Some(p) if p.ctx.is_some() => this.step = Some(Box::pin(p.next())),
                Some(p) => {
                    this.pump = Some(p);
                    return std::task::Poll::Ready(None);
                }
                None => return std::task::Poll::Ready(None),
            }
        }
        let Some(step) = this.step.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready((pump, item)) => {
                this.step = None;
                this.pump = Some(pump);
                std::task::Poll::Ready(item)
            }
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // Dropped before its end (the client went away, even mid-step): the request
        // still ends and is logged.
        self.end(Some("client went away".into()));
    }
}

/// A route without filters: the request and response pass through hyper's own header
/// maps and bodies, with no copy into a filter's header map and no body task.
#[allow(clippy::too_many_arguments)]
async fn direct(
    mut ctx: Ctx,
    state: Rc<WorkerState>,
    mut parts: http::request::Parts,
    body: Incoming,
    route: std::sync::Arc<crate::config::Route>,
    prefix: String,
    id: String,
    host: String,
    path: String,
) -> http::Response<GwBody> {
    let svc = &state.services[route.service];
    let mut headers = std::mem::take(&mut parts.headers);
    HopByHop::of(&headers).strip(&mut headers);
    headers.remove(http::header::HOST);
    let set = |h: &mut http::HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(&mut headers, "x-request-id", &id);
    let authority = svc.next_authority().clone();
    let up_path = strip_prefix(&route, &prefix, &path);
    let Ok(uri) = http::Uri::builder()
        .scheme(svc.service.scheme.clone())
        .authority(authority.clone())
        .path_and_query(up_path.as_str())
        .build()
    else {
        return reply(
            ctx,
            None,
            json_error(400, "the request path is not valid", &id),
            HeaderMap::new(),
        )
        .await;
    };
    let upstream_host = if route.preserve_host {
        host
    } else {
        authority.to_string()
    };
    set(&mut headers, "host", &upstream_host);
    let up_body: UpstreamBody = if body.is_end_stream() {
        Empty::new().map_err(|e| match e {}).boxed_unsync()
    } else {
        http_body_util::Limited::new(body, svc.service.max_request_body as usize).boxed_unsync()
    };
    let mut up_req = http::Request::new(up_body);
    *up_req.method_mut() = parts.method;
    *up_req.uri_mut() = uri;
    *up_req.headers_mut() = headers;

    let header_deadline = svc.service.read_timeout.min(svc.service.timeout);
    let upstream_start = Instant::now();
    let sent = tokio::time::timeout(header_deadline, svc.client.request(up_req)).await;
    ctx.entry.upstream_ms = Some(ms(upstream_start.elapsed()));
    let resp = match sent {
        Ok(Ok(resp)) => resp,
        Err(_) => {
            let r = refusal(&mut ctx, Some("timeout"), 504, "upstream timed out", &id);
            return reply(ctx, None, r, HeaderMap::new()).await;
        }
        Ok(Err(e)) => {
            let r = send_failure(&mut ctx, &e, &id);
            return reply(ctx, None, r, HeaderMap::new()).await;
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    let status = rparts.status.as_u16();
    ctx.entry.upstream_status = Some(status);
    HopByHop::of(&rparts.headers).strip(&mut rparts.headers);
    if declared_length(&rparts.headers).is_some_and(|n| n > svc.service.max_response_body) {
        let r = refusal(
            &mut ctx,
            Some("response_too_large"),
            502,
            "upstream response too large",
            &id,
        );
        return reply(ctx, None, r, HeaderMap::new()).await;
    }
    if rbody.is_end_stream() {
        ctx.finish(status);
        return http::Response::from_parts(rparts, empty());
    }
    let service = svc.service.name.clone();
    let on_end: crate::body::OnEnd = Box::new(move |sent, error| {
        if let Some(e) = &error {
            if e.contains("timed out") {
                ctx.state.shared.metrics.upstream_error(&service, "timeout");
            }
        }
        ctx.entry.bytes_out = sent;
        ctx.entry.error = error;
        ctx.finish(status);
    });
    let tracked = crate::body::Tracked::new(
        rbody,
        svc.service.max_response_body,
        svc.service.read_timeout,
        on_end,
    );
    http::Response::from_parts(rparts, Box::pin(tracked))
}

/// Kong's `strip_path`: the matched prefix is removed before proxying.
fn strip_prefix(route: &crate::config::Route, prefix: &str, path: &str) -> String {
    if route.strip_path && !prefix.is_empty() && prefix != "/" {
        if let Some(rest) = path.strip_prefix(prefix) {
            return if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            };
        }
    }
    path.to_owned()
}

/// A failed upstream request as the gateway answers it: 413 when our own request-body
/// limit cut it, else 502 (refused or reset), with the metric and the log's reason.
fn send_failure(ctx: &mut Ctx, e: &hyper_util::client::legacy::Error, id: &str) -> LocalReply {
    if caused_by_body_limit(e) {
        return refusal(
            ctx,
            Some("body_too_large"),
            413,
            "request body too large",
            id,
        );
    }
    if let Some(cause) = tls_failure(e) {
        let r = refusal(ctx, Some("tls"), 502, "upstream TLS handshake failed", id);
        ctx.entry.error = Some(format!("upstream TLS handshake failed: {cause}"));
        return r;
    }
    let (kind, message) = if e.is_connect() {
        ("connect", "upstream connection failed")
    } else {
        ("reset", "upstream connection reset")
    };
    let r = refusal(ctx, Some(kind), 502, message, id);
    ctx.entry.error = Some(format!("{message}: {e}"));
    r
}

/// The TLS error behind a failed upstream connection (an untrusted or mismatched
/// certificate, a protocol failure), for the access log.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // The connector reports it inside io::Errors, whose `source` skips the error
        // they wrap: follow the wrapped one.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
