//! The test bed itself: one worker's chain of filters on a virtual clock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;
use portcullis_engine::{
    Clock, Engine, EngineConfig, FailurePolicy, Filter, Flow, GrpcCallRequest, GrpcCallResponse,
    GrpcStatus, HeaderMap, HostLimits, HttpCallRequest, HttpStream, Limit, LogRecord, ManualClock,
    PluginSpec, RequestInfo, StartError, VmLimits, abi::LogLevel, metrics::MetricValue,
};
use tokio::task::LocalSet;

use crate::clusters::{BedClusters, Cluster, Reply};

/// Where built filters are: `$PORTCULLIS_WASM_DIR`, else the workspace's
/// `target/wasm32-wasip1/release`.
pub fn wasm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PORTCULLIS_WASM_DIR") {
        return PathBuf::from(d);
    }
    workspace_dir().join("target/wasm32-wasip1/release")
}

/// The checkout being tested, found when the test runs: the nearest folder holding
/// `Cargo.lock` above the package cargo runs the test in (or above the current
/// folder). Not `env!("CARGO_MANIFEST_DIR")`: checkouts share one target directory,
/// and cargo does not rebuild a test because another checkout's path is baked in it.
pub fn workspace_dir() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    let found = start.ancestors().find(|d| d.join("Cargo.lock").is_file());
    found.map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

/// A binary of the workspace that cargo built beside the running test or benchmark
/// (`target/<profile>/<name>`), found when it runs, for the same reason as
/// [`workspace_dir`] (`env!("CARGO_BIN_EXE_…")` is baked in too).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("a folder");
    // Tests and benchmarks run from `target/<profile>/deps`.
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("the profile's folder")
    } else {
        dir
    };
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with cargo (`cargo test` builds a package's binaries for its tests)",
        bin.display()
    );
    bin
}

/// The path of a built filter, e.g. `wasm("jwt_auth")`. Panics with the command to
/// run when it has not been built.
pub fn wasm(name: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the filters first with `cargo xtask build`",
        p.display()
    );
    p
}

/// A request to send through the chain.
#[derive(Clone, Debug)]
pub struct Request {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The body as the client sends it, chunk by chunk (empty: `body` in one chunk).
    pub chunks: Vec<Vec<u8>>,
    /// Trailers after the body (the body's last chunk then does not end the stream).
    pub trailers: Option<HeaderMap>,
    pub source: SocketAddr,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        let mut headers = HeaderMap::new();
        headers.add(":method", method);
        headers.add(":scheme", "http");
        headers.add(":authority", "gateway.test");
        headers.add(":path", path);
        Request {
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            trailers: None,
            source: SocketAddr::from(([127, 0, 0, 1], 40000)),
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Request {
        Request::new("POST", path).body(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.add(name, value);
        self
    }

    /// A header whose value is raw bytes (obs-text, which HTTP allows and Envoy
    /// passes on), not necessarily UTF-8.
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Request {
        self.headers.add(name, value);
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self.chunks.clear();
        self
    }

    /// The body sent in these chunks, each through the filters' body callback.
    pub fn in_chunks(mut self, chunks: Vec<Vec<u8>>) -> Request {
        self.body = chunks.concat();
        self.chunks = chunks;
        self
    }

    /// Adds a trailer: the request then ends with trailers, not with its body.
    pub fn trailer(mut self, name: &str, value: &str) -> Request {
        self.trailers
            .get_or_insert_with(HeaderMap::new)
            .add(name, value);
        self
    }

    pub fn from_address(mut self, source: SocketAddr) -> Request {
        self.source = source;
        self
    }
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The request's trailers as the filters left them (none: the request had none).
    pub trailers: Option<HeaderMap>,
}

/// What the client got, and what reached the upstream (`None`: the request was
/// answered by a filter or the host).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub upstream: Option<UpstreamRequest>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `key=value` lines of a conformance-filter report.
    pub fn report(&self, key: &str) -> Option<String> {
        self.text().lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_owned)
        })
    }

    /// A header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.upstream
            .as_ref()?
            .headers
            .get_str(name)
            .map(str::to_owned)
    }
}

type Upstream = Box<dyn Fn(&UpstreamRequest) -> (u16, HeaderMap, Vec<u8>)>;

/// A filter of the chain as the builder collects it.
struct BedFilter {
    wasm: PathBuf,
    config: String,
    policy: FailurePolicy,
    limits: VmLimits,
    name: Option<String>,
    vm_id: Option<String>,
    holds_headers_for_body: bool,
}

pub struct TestBedBuilder {
    filters: Vec<BedFilter>,
    clusters: BedClusters,
    upstream: Option<Upstream>,
    start: Duration,
    host_limits: HostLimits,
}

impl TestBed {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> TestBedBuilder {
        TestBedBuilder {
            filters: Vec::new(),
            clusters: BedClusters::default(),
            upstream: None,
            // 2026-01-01T00:00:00Z: a fixed, realistic wall clock.
            start: Duration::from_secs(1_767_225_600),
            host_limits: HostLimits::default(),
        }
    }
}

impl TestBedBuilder {
    /// Adds a filter to the chain with its JSON configuration.
    pub fn filter(mut self, wasm: PathBuf, config: impl Into<String>) -> Self {
        self.filters.push(BedFilter {
            wasm,
            config: config.into(),
            policy: FailurePolicy::FailClosed,
            limits: VmLimits::default(),
            name: None,
            vm_id: None,
            holds_headers_for_body: false,
        });
        self
    }

    /// Adds a filter given as module bytes (a WAT test module, say).
    pub fn filter_bytes(self, wasm: &[u8], config: impl Into<String>) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-testbed-{}-{}.wasm",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, wasm).expect("temp dir is writable");
        self.filter(path, config)
    }

    /// Sets the failure policy of the filter added last.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        if let Some(f) = self.filters.last_mut() {
            f.policy = policy;
        }
        self
    }

    /// Sets the VM limits of the filter added last.
    pub fn limits(mut self, limits: VmLimits) -> Self {
        if let Some(f) = self.filters.last_mut() {
            f.limits = limits;
        }
        self
    }

    /// Lets the filter added last hold only the headers when it pauses in
    /// `on_request_headers`, and still get the body (Envoy's
    /// `allow_on_headers_stop_iteration`).
    pub fn allow_on_headers_stop_iteration(mut self) -> Self {
        if let Some(f) = self.filters.last_mut() {
            f.holds_headers_for_body = true;
        }
        self
    }

    /// Sets the `vm_id` of the filter added last (default: its name). Filters with the
    /// same `vm_id` and module (and limits and failure policy) share one VM, with a
    /// root context each.
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        if let Some(f) = self.filters.last_mut() {
            f.vm_id = Some(vm_id.to_owned());
        }
        self
    }

    /// The engine's limits on what filters make the host hold.
    pub fn host_limits(mut self, limits: HostLimits) -> Self {
        self.host_limits = limits;
        self
    }

    /// Names the plugin added last (its `plugin_name`, root id and vm id).
    pub fn named(mut self, name: &str) -> Self {
        if let Some(f) = self.filters.last_mut() {
            f.name = Some(name.to_owned());
        }
        self
    }

    /// A cluster whose `http_call` answers come from a script.
    pub fn cluster(
        mut self,
        name: &str,
        script: impl Fn(&HttpCallRequest) -> Reply + 'static,
    ) -> Self {
        self.clusters
            .clusters
            .insert(name.into(), Cluster::Script(Box::new(script)));
        self
    }

    /// A cluster that is a real service at `url` (e.g. `http://127.0.0.1:9000`).
    pub fn cluster_url(mut self, name: &str, url: &str) -> Self {
        self.clusters
            .clusters
            .insert(name.into(), Cluster::Url(url.into()));
        self
    }

    /// A cluster whose `grpc_call` answers come from a script.
    pub fn grpc_cluster(
        mut self,
        name: &str,
        script: impl Fn(&GrpcCallRequest) -> Result<GrpcCallResponse, GrpcStatus> + 'static,
    ) -> Self {
        self.clusters
            .clusters
            .insert(name.into(), Cluster::Grpc(Box::new(script)));
        self
    }

    /// What the upstream answers (default: 200 and a JSON echo of the request).
    pub fn upstream(
        mut self,
        f: impl Fn(&UpstreamRequest) -> (u16, HeaderMap, Vec<u8>) + 'static,
    ) -> Self {
        self.upstream = Some(Box::new(f));
        self
    }

    /// Starts every filter. A filter that rejects its configuration is an error.
    pub fn build(self) -> Result<TestBed, StartError> {
        let (clock, manual) = Clock::manual(self.start);
        let logs: Arc<Mutex<Vec<LogRecord>>> = Arc::default();
        let sink = logs.clone();
        let engine = Engine::new(EngineConfig {
            clock,
            log: Arc::new(move |r| sink.lock().push(r)),
            log_level: LogLevel::Trace,
            limits: self.host_limits.clone(),
            ..EngineConfig::default()
        })
        .map_err(|e| StartError::Instantiate {
            plugin: "(engine)".into(),
            reason: e.to_string(),
        })?;
        let mut clusters = self.clusters;
        clusters
            .connect_real()
            .map_err(|reason| StartError::Instantiate {
                plugin: "(clusters)".into(),
                reason,
            })?;
        let clusters = Rc::new(clusters);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::Instantiate {
                plugin: "(runtime)".into(),
                reason: e.to_string(),
            })?;
        let local = LocalSet::new();
        let mut specs = Vec::new();
        for (i, f) in self.filters.into_iter().enumerate() {
            let path = f.wasm;
            let name = f.name.unwrap_or_else(|| {
                format!(
                    "{}-{i}",
                    path.file_stem()
                        .map_or("filter".into(), |s| s.to_string_lossy().into_owned())
                )
            });
            let module = engine
                .load_file(&path)
                .map_err(|e| StartError::Instantiate {
                    plugin: name.clone(),
                    reason: e.to_string(),
                })?;
            let mut spec = PluginSpec::new(name, module, f.config.into_bytes());
            spec.failure_policy = f.policy;
            spec.limits = f.limits;
            spec.allow_on_headers_stop_iteration = f.holds_headers_for_body;
            if let Some(vm_id) = f.vm_id {
                spec.vm_id = vm_id;
            }
            specs.push(spec);
        }
        // Filters of the same vm_id and module share a VM, as in the gateway.
        let chain = {
            let _guard = local.enter();
            let _rt = runtime.enter();
            Filter::start_all(&engine, specs, clusters.clone())
                .map_err(|mut errors| errors.remove(0))?
        };
        Ok(TestBed {
            engine,
            clock: manual,
            logs,
            clusters,
            chain,
            runtime,
            local,
            upstream: self.upstream.unwrap_or_else(|| Box::new(echo)),
            next_id: 0,
        })
    }
}

/// The default upstream: 200 with a JSON echo of what arrived.
fn echo(req: &UpstreamRequest) -> (u16, HeaderMap, Vec<u8>) {
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let body =
        serde_json::json!({ "headers": headers, "body": String::from_utf8_lossy(&req.body) });
    let mut h = HeaderMap::new();
    h.add(":status", "200");
    h.add("content-type", "application/json");
    h.add("server", "echo");
    (200, h, body.to_string().into_bytes())
}

pub struct TestBed {
    engine: Engine,
    clock: Arc<ManualClock>,
    logs: Arc<Mutex<Vec<LogRecord>>>,
    clusters: Rc<BedClusters>,
    chain: Vec<Filter>,
    runtime: tokio::runtime::Runtime,
    local: LocalSet,
    upstream: Upstream,
    next_id: u64,
}

impl TestBed {
    /// Sends a request through the chain and, unless a filter answers, to the upstream.
    pub fn send(&mut self, request: Request) -> Response {
        let info = self.info(&request);
        let chain = self.chain.clone();
        let upstream = &self.upstream;
        let fut = run(chain, info, request, upstream);
        let _rt = self.runtime.enter();
        self.runtime.block_on(self.local.run_until(fut))
    }

    /// Sends requests at once, as concurrent clients: each runs through the chain until
    /// it pauses (on a call, or on another request) before the next starts, and all of
    /// them finish together. The responses come in the order of `requests`.
    pub fn send_all(&mut self, requests: Vec<Request>) -> Vec<Response> {
        let infos: Vec<RequestInfo> = requests.iter().map(|r| self.info(r)).collect();
        let mut runs: Vec<Pin<Box<dyn Future<Output = Response> + '_>>> = Vec::new();
        let upstream = &self.upstream;
        for (request, info) in requests.into_iter().zip(infos) {
            runs.push(Box::pin(run(self.chain.clone(), info, request, upstream)));
        }
        let _rt = self.runtime.enter();
        self.runtime.block_on(self.local.run_until(join_all(runs)))
    }

    fn info(&mut self, request: &Request) -> RequestInfo {
        self.next_id += 1;
        request_info(&self.engine, self.next_id, request)
    }

    /// Moves the virtual clock forward, firing each filter's ticks as they fall due.
    pub fn advance(&mut self, by: Duration) {
        self.advance_in_steps(by, Duration::from_millis(10));
    }

    /// Moves the virtual clock forward `by` in steps of `step`, firing each filter's
    /// tick once per step at most (a tick missed within a step is not replayed, as on
    /// a busy host): days of virtual time in a few thousand polls, for soak tests.
    /// [`TestBed::advance`] is this with 10 ms steps.
    pub fn advance_in_steps(&mut self, by: Duration, step: Duration) {
        let step = step.max(Duration::from_millis(1));
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            self.clock.advance(d);
            left -= d;
            self.poll();
        }
    }

    /// Lets background work run: answers to calls, ticks due now, queue notifications.
    pub fn poll(&mut self) {
        let chain = self.chain.clone();
        let _rt = self.runtime.enter();
        self.runtime.block_on(self.local.run_until(async move {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            for f in &chain {
                f.run_due_ticks();
            }
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }));
    }

    /// Runs background work for `d` of real time (calls to real services, timeouts).
    pub fn wait_real(&mut self, d: Duration) {
        let _rt = self.runtime.enter();
        self.runtime
            .block_on(self.local.run_until(tokio::time::sleep(d)));
    }

    pub fn now_unix(&self) -> Duration {
        Duration::from_nanos(self.engine.clock().realtime_ns())
    }

    pub fn logs(&self) -> Vec<LogRecord> {
        self.logs.lock().clone()
    }

    /// Whether some log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.lock().iter().any(|r| r.message.contains(text))
    }

    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        self.engine.metrics().get(name)
    }

    /// How many host calls of the chain's filters the host refused at `limit`.
    pub fn refusals(&self, limit: Limit) -> u64 {
        self.chain
            .iter()
            .map(|f| self.engine.metrics().refused(f.name(), limit))
            .sum()
    }

    /// Log lines that contain `text`.
    pub fn count_logged(&self, text: &str) -> usize {
        self.logs
            .lock()
            .iter()
            .filter(|r| r.message.contains(text))
            .count()
    }

    /// Every shared-data key of the chain's first filter's `vm_id`.
    pub fn shared_keys(&self) -> Vec<Vec<u8>> {
        self.chain
            .first()
            .map(|f| self.engine.shared_data().keys(&f.spec().vm_id))
            .unwrap_or_default()
    }

    /// Whether the queue `name` of the chain's first filter's `vm_id` has an owner (a
    /// live VM that registered it) to notify.
    pub fn queue_has_owner(&self, name: &str) -> bool {
        self.chain
            .first()
            .is_some_and(|f| self.engine.queues().has_owner(&f.spec().vm_id, name))
    }

    /// A shared-data value of the chain's first filter's `vm_id`.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        let vm_id = &self.chain.first()?.spec().vm_id;
        self.engine
            .shared_data()
            .get(vm_id, key.as_bytes())
            .ok()
            .map(|(v, _)| v.to_vec())
    }

    /// A shared-data value of the `vm_id` of the chain's filter `filter` (0 first).
    pub fn shared_data_of(&self, filter: usize, key: &str) -> Option<Vec<u8>> {
        let vm_id = &self.chain.get(filter)?.spec().vm_id;
        self.engine
            .shared_data()
            .get(vm_id, key.as_bytes())
            .ok()
            .map(|(v, _)| v.to_vec())
    }

    /// Every `http_call` the filters made: (cluster, request).
    pub fn calls(&self) -> Vec<(String, HttpCallRequest)> {
        self.clusters.calls.borrow().clone()
    }

    pub fn grpc_calls(&self) -> Vec<(String, GrpcCallRequest)> {
        self.clusters.grpc_calls.borrow().clone()
    }

    pub fn filter(&self, i: usize) -> &Filter {
        &self.chain[i]
    }

    /// What the chain's filter `i` holds now, in its VM and in the host.
    pub fn held(&self, i: usize) -> Held {
        let f = &self.chain[i];
        let vm_id = &f.spec().vm_id;
        let shared = self.engine.shared_data();
        let queues = self.engine.queues().held(vm_id);
        Held {
            memory_bytes: f.memory_bytes(),
            live_contexts: f.live_contexts(),
            pending_calls: f.pending_calls(),
            shared_keys: shared.keys(vm_id).len(),
            shared_bytes: shared.bytes(vm_id),
            queues: queues.queues,
            queued_items: queues.items,
            queued_bytes: queues.bytes,
            metrics: self.engine.metrics().created_by(vm_id),
        }
    }
}

/// What one filter holds at a moment: its VM's linear memory, and what it makes the
/// host hold outside the VM (the figures the host's limits bound), for tests that
/// watch them over time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Linear memory of the VM (wasm memory only grows).
    pub memory_bytes: usize,
    /// HTTP contexts alive in the VM (0 between requests).
    pub live_contexts: usize,
    /// `http_call`s and `grpc_call`s in flight.
    pub pending_calls: usize,
    /// Shared-data keys of the filter's `vm_id`, and their keys' and values' bytes.
    pub shared_keys: usize,
    pub shared_bytes: usize,
    /// Shared queues the `vm_id` registered, and the items and bytes queued in them.
    pub queues: usize,
    pub queued_items: usize,
    pub queued_bytes: usize,
    /// Metric names the `vm_id` defined (metrics live as long as the host).
    pub metrics: usize,
}

/// What the host knows of a request besides its headers; `n` numbers its id.
fn request_info(engine: &Engine, n: u64, request: &Request) -> RequestInfo {
    RequestInfo {
        id: request
            .headers
            .get_str("x-request-id")
            .map_or_else(|| format!("testbed-{n}"), str::to_owned),
        protocol: "HTTP/1.1".into(),
        scheme: "http".into(),
        source: Some(request.source),
        destination: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        start_unix_ns: engine.clock().realtime_ns(),
        method: request.headers.get_str(":method").unwrap_or("").into(),
        path: request.headers.get_str(":path").unwrap_or("").into(),
        host: request.headers.get_str(":authority").unwrap_or("").into(),
    }
}

/// Runs futures together to the end of the last: their outputs in order.
async fn join_all<T>(mut runs: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = runs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (run, out) in runs.iter_mut().zip(done.iter_mut()) {
            if out.is_none()
                && let Poll::Ready(v) = run.as_mut().poll(cx)
            {
                *out = Some(v);
            }
        }
        if done.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

async fn run(
    chain: Vec<Filter>,
    info: RequestInfo,
    request: Request,
    upstream: &Upstream,
) -> Response {
    let mut stream = HttpStream::new(&chain, info);
    let mut headers = request.headers;
    let mut chunks = if request.chunks.is_empty() && !request.body.is_empty() {
        vec![request.body]
    } else {
        request.chunks
    };
    let mut trailers = request.trailers;
    let eos = chunks.is_empty() && trailers.is_none();
    let mut flow = stream.request_headers(&mut headers, eos).await;
    // A filter holding the headers while it reads the body.
    let mut held = flow == Flow::Buffering;
    // What the filters let through, chunk by chunk, as a host sends it upstream.
    let mut body = Vec::new();
    let last = chunks.len();
    for (i, chunk) in chunks.iter_mut().enumerate() {
        if matches!(flow, Flow::Reply(_)) {
            break;
        }
        let end = i + 1 == last && trailers.is_none();
        flow = if held {
            stream.request_body_held(&mut headers, chunk, end).await
        } else {
            stream.request_body(chunk, end).await
        };
        if flow == Flow::Continue {
            held = false;
            body.append(chunk);
        }
    }
    if let Some(t) = trailers.as_mut()
        && !matches!(flow, Flow::Reply(_))
    {
        // Bytes the filters held for an end of body the trailers brought instead.
        let mut released = Vec::new();
        flow = if held {
            stream
                .request_trailers_held(&mut headers, t, &mut released)
                .await
        } else {
            stream.request_trailers(t, &mut released).await
        };
        body.append(&mut released);
    }
    let (mut resp_headers, resp_body, upstream_req) = match flow {
        Flow::Reply(reply) => {
            let (h, b) = stream.encode_local_reply(reply).await;
            (h, b, None)
        }
        Flow::Continue | Flow::Buffering => {
            let sent = UpstreamRequest {
                headers: headers.clone(),
                body: body.clone(),
                trailers: trailers.clone(),
            };
            let (_status, mut h, mut b) = upstream(&sent);
            let eos = b.is_empty();
            match stream.response_headers(&mut h, eos).await {
                Flow::Reply(reply) => {
                    let r = reply.response_headers();
                    (r, reply.body, Some(sent))
                }
                _ => {
                    if !eos && let Flow::Reply(reply) = stream.response_body(&mut b, true).await {
                        h = reply.response_headers();
                        b = reply.body;
                    }
                    (h, b, Some(sent))
                }
            }
        }
    };
    let status = resp_headers
        .get_str(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    stream.finish(&mut headers, &mut resp_headers);
    Response {
        status,
        headers: resp_headers,
        body: resp_body,
        upstream: upstream_req,
    }
}
